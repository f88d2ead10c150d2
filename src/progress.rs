//! The one progress-bar style of every long step: `msg [=====>    ] pos/len unit rate eta` on a
//! terminal; where stderr is a file or a pipe (`nohup`, a cluster job's log, CI) the same
//! figures as a plain line every [`LOG_EVERY`], which a log keeps readable.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle, TermLike};
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a progress line goes to a stderr that is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(30);

/// A bar over `len` `unit`s labelled `msg`; hidden when `show` is false (`--quiet`).
pub fn bar(show: bool, len: u64, unit: &str, msg: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let terminal = std::io::stderr().is_terminal();
    let template = match terminal {
        true => format!("{{msg}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{rate}} eta {{eta}}"),
        false => format!("{{msg}}: {{pos}}/{{len}} {unit} ({{percent}}%), {{rate}}, {{spent}} so far, eta {{eta}}"),
    };
    let style = ProgressStyle::with_template(&template).expect("valid template").progress_chars("=> ");
    let bar = ProgressBar::with_draw_target(Some(len), if terminal { ProgressDrawTarget::stderr() } else { log_target() });
    let style = style.with_key("rate", |s: &ProgressState, w: &mut dyn std::fmt::Write| _ = write!(w, "{}/s", rate(s.per_sec())));
    bar.set_style(style.with_key("spent", |s: &ProgressState, w: &mut dyn std::fmt::Write| _ = write!(w, "{}", spent(s.elapsed()))));
    bar.set_message(msg.to_string());
    bar
}

/// Time spent to the second (`45s`, `1m39s`, `2h05m07s`): indicatif's own `{elapsed}` rounds to
/// one unit (99 s showed as `2m`).
fn spent(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, min, sec) => format!("{min}m{sec:02}s"),
        (h, min, sec) => format!("{h}h{min:02}m{sec:02}s"),
    }
}

/// A rate with three significant digits at most (`37.8`, `1520`, `0.412`).
fn rate(per_sec: f64) -> String {
    match per_sec {
        r if r >= 100.0 => format!("{r:.0}"),
        r if r >= 10.0 => format!("{r:.1}"),
        r if r >= 1.0 => format!("{r:.2}"),
        r => format!("{r:.3}"),
    }
}

fn log_target() -> ProgressDrawTarget {
    ProgressDrawTarget::term_like_with_hz(Box::new(LogLines { last: Mutex::new(Instant::now()) }), 1)
}

/// Progress as whole lines on stderr, one every [`LOG_EVERY`] (none for work done sooner).
#[derive(Debug)]
struct LogLines {
    last: Mutex<Instant>,
}

impl TermLike for LogLines {
    fn width(&self) -> u16 {
        200
    }
    fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.write_str(s)
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        let line = s.trim();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if !line.is_empty() && last.elapsed() >= LOG_EVERY {
            *last = Instant::now();
            // Not `eprintln!`, which panics when stderr is a closed pipe.
            drop(writeln!(std::io::stderr(), "{line}"));
        }
        Ok(())
    }
    fn clear_line(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rates_keep_three_digits() {
        assert_eq!([37.8035, 1520.4, 4.123_45, 0.412_34].map(super::rate), ["37.8", "1520", "4.12", "0.412"]);
    }

    #[test]
    fn time_spent_is_shown_to_the_second() {
        let shown = [45, 62, 99, 7507].map(|s| super::spent(std::time::Duration::from_secs(s)));
        assert_eq!(shown, ["45s", "1m02s", "1m39s", "2h05m07s"]);
    }
}
