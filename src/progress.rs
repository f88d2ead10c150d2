//! The one progress-bar style of every long step: `msg [=====>    ] pos/len unit rate eta`.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar over `len` `unit`s labelled `msg`; hidden when `show` is false (`--quiet`).
pub fn bar(show: bool, len: u64, unit: &str, msg: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let template = format!("{{msg}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{per_sec}} eta {{eta}}");
    let bar = ProgressBar::new(len);
    bar.set_style(ProgressStyle::with_template(&template).expect("valid template").progress_chars("=> "));
    bar.set_message(msg.to_string());
    bar
}
