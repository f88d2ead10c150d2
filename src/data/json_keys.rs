//! JSON for the manifest check's messages: a JSON object's keys as written, repeats included
//! (the check names a field given twice, which a parsed `serde_json::Value` would silently keep
//! once), a value's kind, and serde_json's errors without their line.

use serde_json::Value;

/// The keys of a JSON object in order, a repeated one as often as it appears (a parsed
/// [`Value`] keeps only the last).
pub(super) struct Keys(pub(super) Vec<String>);

impl<'de> serde::Deserialize<'de> for Keys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Keys;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> std::result::Result<Keys, A::Error> {
                let mut keys = vec![];
                while let Some(k) = map.next_key::<String>()? {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    keys.push(k);
                }
                Ok(Keys(keys))
            }
        }
        d.deserialize_map(Visit)
    }
}

/// A JSON value's kind, for messages.
pub(super) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// serde_json's message without its ` at line L column C` (a manifest line is one line).
pub(super) fn json_error(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    let msg = msg.rsplit_once(" at line ").map_or(msg.as_str(), |(m, _)| m);
    format!("not a JSON object: {msg} at column {}", e.column())
}

/// Whether a manifest line is a comment (`#`, `//`, `/*`), which JSON Lines does not have.
pub(super) fn is_comment(line: &str) -> bool {
    ["#", "//", "/*"].iter().any(|c| line.trim_start().starts_with(c))
}

/// What to add to [`json_error`] for a line that is an object but for a comma JSON does not
/// allow: one the line parses without. Empty for any other line.
pub(super) fn comma_hint(line: &str) -> &'static str {
    let t = line.trim();
    let object = |s: &str| matches!(serde_json::from_str::<Value>(s), Ok(Value::Object(_)));
    let before_brace = t.strip_suffix('}').map(str::trim_end).and_then(|b| b.strip_suffix(','));
    match () {
        _ if !t.starts_with('{') => "",
        _ if t.strip_suffix(',').is_some_and(object) => ": JSON Lines puts no comma after a line's closing `}`",
        _ if t.strip_suffix(',').is_some_and(|b| object(&format!("{b}}}"))) => ": the line ends with a comma where its closing `}` belongs",
        _ if before_brace.is_some_and(|b| object(&format!("{b}}}"))) => ": JSON allows no comma before the closing `}`",
        _ => "",
    }
}
