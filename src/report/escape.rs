//! Text made safe inside the page's HTML.

/// `s` with `&`, `<`, `>` and `"` as HTML entities.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}
