//! Your own dataset as a JSON Lines manifest, checked in one pass before any work.
//!
//! One JSON object a line; [`HELP`] has the fields, as `extract --help` shows them.
//!
//! Every problem is reported at once, each as `file:line: what is wrong (what to do)`: lines that
//! are not JSON objects, unknown or missing fields, wrong types, an unknown split, empty text, an
//! image that is missing, empty, truncated or whose header does not decode, the same image listed
//! twice or in two splits, labels that differ only in case, spaces or Unicode form, classes
//! without training rows, `group` on some lines only. A UTF-8 byte order mark is ignored.

use super::dataset::{Dataset, Sample};
use super::image_check::file_problem;
use super::json_keys::{Keys, comma_hint, is_comment, json_error, kind};
use super::problems::Problems;
use anyhow::{Context, Result};
use rayon::prelude::*;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use unicode_normalization_alignments::UnicodeNormalization;

/// The manifest's format, as `extract --help` shows it.
pub const HELP: &str = "\
Manifest (--dataset manifest --root FILE.jsonl): one JSON object a line, e.g.
  {\"image\": \"photos/a.jpg\", \"label\": \"ramen\", \"text\": \"noodles, pork, egg\", \"split\": \"train\"}
  {\"image\": \"photos/b.jpg\", \"label\": \"pho\", \"text\": [\"rice noodles\", \"beef\"], \"split\": \"train\"}
  {\"image\": \"photos/c.jpg\", \"label\": \"ramen\", \"split\": \"test\"}
  image  path of the image, relative to the manifest's folder (or absolute); also the row's id
  label  class name (a string); the classes are the sorted distinct labels
  text   a string or a list of strings (joined with \", \"); required on train rows, optional on val/test
  split  train, val or test; without val rows, `train` holds out --val-fraction of train (seeded)
  group  optional, on every line or none: the row's domain (camera, site, vendor) for
         --leave-one-out; without it the group is the first folder of the image path
Other keys are errors. The whole file is checked before any work (every image found, its header
decoded and its data complete, no image twice, every class with training rows) and every problem
is listed with its line. A manifest of test rows only makes a cache for `eval --cache`.";

/// The fields a manifest line may have.
pub const FIELDS: [&str; 5] = ["image", "label", "text", "split", "group"];

/// What a val or test split with text on some rows only means.
const PARTIAL_TEXT: &str =
    "the cache keeps no text of the SPLIT split, so the reconstruction metric and --leave-one-out cannot use it; give those rows their text";

/// One line as read: its fields, or nothing if the line had problems of its own.
struct Row {
    line: usize,
    image: String,
    label: String,
    text: Option<String>,
    split: String,
    group: Option<String>,
    /// The line names a `group` (even an unusable one).
    has_group: bool,
}

/// A manifest line, for messages.
const EXAMPLE: &str = r#"{"image": "a.jpg", "label": "ramen", "text": "noodles, egg", "split": "train"}"#;

/// What to do about a required field that is missing or given as an empty string.
fn empty_fix(key: &str) -> &'static str {
    match key {
        "image" => "give the image file's path",
        "label" => "give the class name, or leave the line out",
        "split" => "give train, val or test",
        _ => "give a value, or leave the key out",
    }
}

/// A line's image, and its split where that is usable: every line that names an image, problems
/// or not, so that an image listed twice is reported in the same pass as the lines' other problems.
struct Listed {
    line: usize,
    image: String,
    label: Option<String>,
    split: Option<String>,
}

/// The fields of one line, every problem of the line reported; `None` when the line has no usable
/// image, label or split (the other checks then leave it out). Its image goes to `listed`.
fn parse_line(obj: &Map<String, Value>, line: usize, p: &mut Problems, listed: &mut Vec<Listed>) -> Option<Row> {
    for key in obj.keys().filter(|k| !FIELDS.contains(&k.as_str())) {
        p.at(line, format!("unknown field `{key}` (the fields are {})", FIELDS.join(", ")));
    }
    let string = |key: &str, required: bool, p: &mut Problems| -> Option<String> {
        match obj.get(key) {
            None if required => p.at(line, format!("`{key}` is missing; {}", empty_fix(key))),
            None => {}
            Some(Value::String(s)) if s.trim().is_empty() => p.at(line, format!("`{key}` is empty; {}", empty_fix(key))),
            Some(Value::String(s)) => return Some(s.clone()),
            Some(v) => p.at(line, format!("`{key}` must be a string, not {}", kind(v))),
        }
        None
    };
    let image = string("image", true, p);
    let label = string("label", true, p);
    let split = string("split", true, p);
    let group = string("group", false, p);
    let split = match split {
        Some(s) if !["train", "val", "test"].contains(&s.as_str()) => {
            let meant = match s.trim().to_lowercase().as_str() {
                "train" | "training" => Some("train"),
                "val" | "valid" | "validation" | "dev" => Some("val"),
                "test" | "testing" => Some("test"),
                _ => None,
            };
            let hint = meant.map_or(String::new(), |m| format!(": write `{m}`"));
            p.at(line, format!("split `{s}` is not train, val or test{hint}"));
            None
        }
        s => s,
    };
    if let Some(image) = &image {
        listed.push(Listed { line, image: image.clone(), label: label.clone(), split: split.clone() });
    }
    if let Some(g) = group.as_deref().filter(|g| g.contains(['/', '\\']) || *g == "." || *g == "..") {
        p.at(line, format!("group `{g}` cannot name a folder (it names the fold's run folder): no `/`, `\\`, `.` or `..`"));
    }
    let text = match obj.get("text") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Array(items)) => match items.iter().position(|v| !v.is_string()) {
            None => Some(items.iter().filter_map(Value::as_str).map(str::trim).filter(|s| !s.is_empty()).collect::<Vec<_>>().join(", ")),
            Some(i) => {
                let fix = if items[i].is_number() || items[i].is_boolean() { ": quote it" } else { "" };
                p.at(line, format!("`text` must be a string or a list of strings; its item {} is {}{fix}", i + 1, kind(&items[i])));
                None
            }
        },
        Some(v) => {
            p.at(line, format!("`text` must be a string or a list of strings, not {}", kind(v)));
            None
        }
    };
    match (&text, split.as_deref()) {
        (Some(t), _) if t.trim().is_empty() => p.at(line, "`text` is empty (training rows need their text; leave `text` out on a val or test row without one)"),
        (None, Some("train")) if !obj.contains_key("text") => p.at(line, "training rows need `text` (the text seen only in training)"),
        _ => {}
    }
    if let Some(l) = label.as_deref().filter(|l| l.trim() != *l) {
        p.at(line, format!("label `{l}` has spaces at its ends (it would be a class of its own); remove them"));
    }
    Some(Row { line, image: image?, label: label?, text, split: split?, group, has_group: obj.contains_key("group") })
}

/// Reports files with the same bytes (the same photo saved under two names) in two splits, or
/// in two groups (a leave-one-group-out fold would test on a photo it trained on): the sizes
/// first, then the contents of the files whose size occurs in more than one split or group.
fn same_bytes_in_two_splits(rows: &[Row], files: &[PathBuf], p: &mut Problems) {
    // A file at the manifest's top has no folder for a group: all such rows are one group here.
    let group = |r: &Row| match (&r.group, r.image.split_once('/')) {
        (Some(g), _) => g.clone(),
        (None, Some((folder, _))) => folder.to_string(),
        (None, None) => String::new(),
    };
    let places: Vec<(String, String)> = rows.iter().map(|r| (r.split.clone(), group(r))).collect();
    let sizes: Vec<Option<u64>> = files.iter().map(|f| std::fs::metadata(f).ok().map(|m| m.len())).collect();
    let mut places_of: HashMap<u64, Vec<&(String, String)>> = HashMap::new();
    for (place, s) in places.iter().zip(&sizes) {
        if let Some(s) = s {
            places_of.entry(*s).or_default().push(place);
        }
    }
    let suspect = |s: &Option<u64>| s.is_some_and(|s| places_of[&s].iter().any(|x| *x != places_of[&s][0]));
    let candidates: Vec<usize> = (0..rows.len()).filter(|&i| suspect(&sizes[i])).collect();
    let hashes: Vec<Option<u64>> = candidates.par_iter().map(|&i| std::fs::read(&files[i]).ok().map(crate::rng::fnv1a)).collect();
    let mut first: HashMap<(u64, u64), usize> = HashMap::new();
    for (&i, h) in candidates.iter().zip(hashes) {
        let (Some(h), Some(size)) = (h, sizes[i]) else { continue };
        let Some(&j) = first.get(&(size, h)) else {
            first.insert((size, h), i);
            continue;
        };
        let (r, o) = (&rows[i], &rows[j]);
        // The same file under two spellings is reported as such by the path check.
        if places[i] != places[j] && files[i].canonicalize().ok() != files[j].canonicalize().ok() {
            let (what, here, there) = match o.split == r.split {
                false => ("the same photo in two splits makes the score meaningless", r.split.clone(), o.split.clone()),
                true => {
                    ("with --leave-one-out a fold would test on a photo it trained on", format!("group `{}`", places[i].1), format!("group `{}`", places[j].1))
                }
            };
            p.at(r.line, format!("image `{}` ({here}) has the same bytes as `{}` ({there}, line {}): {what}; keep one", r.image, o.image, o.line));
        }
    }
}

/// Up to five line numbers, and how many more.
fn line_list(lines: &[usize]) -> String {
    let shown: Vec<String> = lines.iter().take(5).map(|l| l.to_string()).collect();
    let more = if lines.len() > 5 { format!(" and {} more", lines.len() - 5) } else { String::new() };
    format!("line{} {}{more}", if lines.len() == 1 { "" } else { "s" }, shown.join(", "))
}

/// Reads the manifest at `path` and checks all of it; `check_images`: also that every image
/// exists and its header decodes (off with `extract --skip-bad`, which leaves such images out).
/// Rows may be all test (a cache for `eval --cache`): then no class needs training rows.
pub fn manifest(path: &Path, check_images: bool) -> Result<Dataset> {
    let root = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    anyhow::ensure!(
        !path.is_dir(),
        "{}: a folder; --root takes the manifest file (JSON Lines, one row a line), whose folder the image paths are relative to",
        path.display()
    );
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read the manifest", path.display()))?;
    let bytes = bytes.strip_prefix("\u{feff}".as_bytes()).unwrap_or(&bytes);
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let line = bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count() + 1;
            anyhow::bail!("{}:{line}: not UTF-8 text; save the manifest as UTF-8", path.display());
        }
    };
    if text.trim_start().starts_with('[') && matches!(serde_json::from_str::<Value>(text), Ok(Value::Array(_))) {
        anyhow::bail!(
            "{}: this is one JSON array; a manifest is JSON Lines: one object a line, without the surrounding [ ] and the commas between objects",
            path.display()
        );
    }
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    if let Some(first) = lines.first().filter(|l| !l.starts_with('{') && (l.contains(',') || l.contains('\t')) && !lines.iter().any(|l| l.starts_with('{'))) {
        let shown: String = first.chars().take(60).collect();
        anyhow::bail!("{}: this looks like CSV or TSV (line 1: `{shown}`); a manifest is JSON Lines, one object a line: {EXAMPLE}", path.display());
    }
    if lines.first() == Some(&"{") {
        anyhow::bail!(
            "{}: this looks like pretty-printed JSON (line 1 is `{{` alone); a manifest is JSON Lines, one whole object a line: {EXAMPLE}",
            path.display()
        );
    }
    let mut p = Problems { file: path, list: vec![] };
    // Python's dict quoting: one problem for all such lines (each would fail alike).
    let single_quoted: Vec<usize> = text.lines().enumerate().filter(|(_, l)| l.trim().starts_with("{'")).map(|(i, _)| i + 1).collect();
    if !single_quoted.is_empty() {
        let also = if single_quoted.len() > 1 { format!(" (also {})", line_list(&single_quoted[1..])) } else { String::new() };
        p.at(
            single_quoted[0],
            format!("strings quoted with '{also} (as Python prints a dict); JSON takes double quotes, \"image\": \"a.jpg\" (json.dumps writes them)"),
        );
    }
    let (mut rows, mut listed) = (vec![], vec![]);
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(obj)) => {
                if let Ok(Keys(mut keys)) = serde_json::from_str::<Keys>(line) {
                    keys.sort();
                    for k in keys.windows(2).filter(|w| w[0] == w[1]).map(|w| &w[0]) {
                        p.at(i + 1, format!("`{k}` is given more than once (JSON keeps the last); keep one"));
                    }
                }
                rows.extend(parse_line(&obj, i + 1, &mut p, &mut listed))
            }
            Ok(v) => p.at(i + 1, format!("expected a JSON object {{\"image\": ..., \"label\": ..., \"text\": ..., \"split\": ...}}, found {}", kind(&v))),
            Err(_) if line.trim().starts_with("{'") => {}
            Err(_) if is_comment(line) => p.at(i + 1, "JSON Lines has no comments: delete this line (blank lines are skipped)".to_string()),
            Err(e) => p.at(i + 1, format!("{}{}", json_error(&e), comma_hint(line))),
        }
    }
    if rows.is_empty() && p.list.is_empty() {
        p.whole(format!("no rows; write one JSON object a line: {EXAMPLE}"));
    }
    let resolved: Vec<PathBuf> = rows.iter().map(|r| root.join(&r.image)).collect();
    // Every line's image as a path, the lines with problems of their own too.
    let paths: Vec<PathBuf> = listed.iter().map(|r| root.join(&r.image)).collect();
    if check_images {
        let found: Vec<Option<String>> = paths.par_iter().map(|f| file_problem(f)).collect();
        let missing = found.iter().filter(|f| f.as_deref().is_some_and(|w| w.starts_with("not found"))).count();
        // None found: one line says why, and the first few rows show it.
        let none_found = missing == listed.len() && missing > 1;
        for (r, problem) in listed.iter().zip(found).take(if none_found { 3 } else { usize::MAX }) {
            if let Some(why) = problem {
                p.at(r.line, format!("image `{}` {why}", r.image));
            }
        }
        let backslashed: Vec<usize> = listed.iter().zip(&paths).filter(|(r, f)| r.image.contains('\\') && !f.exists()).map(|(r, _)| r.line).collect();
        if !backslashed.is_empty() {
            p.whole(format!("image paths with \\ ({}): write them with / (a Windows path is one file name here)", line_list(&backslashed)));
        }
        if none_found {
            let cwd = std::env::current_dir().unwrap_or_default();
            let here = match listed.iter().all(|r| Path::new(&r.image).is_file()) {
                true => format!("; they are there relative to the current folder, {}: write them relative to the manifest's folder", cwd.display()),
                false => String::new(),
            };
            let listed = if missing > 3 { " (the first 3 are listed)" } else { "" };
            p.whole(format!("none of the {missing} images was found{listed}: the paths are relative to the manifest's folder, {}{here}", root.display()));
        }
        same_bytes_in_two_splits(&rows, &resolved, &mut p);
    }
    // The same file twice, however its path is written (lines with other problems too).
    let mut first_line: HashMap<PathBuf, &Listed> = HashMap::new();
    for (r, f) in listed.iter().zip(&paths) {
        let key = f.canonicalize().unwrap_or_else(|_| f.clone());
        match first_line.get(&key) {
            Some(o) => match (&o.split, &r.split) {
                (Some(a), Some(b)) if a != b => p.at(
                    r.line,
                    format!("image `{}` is in {a} (line {}) and in {b}: an image in two splits makes the score meaningless; keep it in one", r.image, o.line),
                ),
                _ => {
                    let labels = match (&o.label, &r.label) {
                        (Some(a), Some(b)) if a != b => format!(" with two labels, `{a}` and `{b}`"),
                        _ => String::new(),
                    };
                    p.at(r.line, format!("image `{}` is listed twice{labels} (lines {} and {}); keep one line", r.image, o.line, r.line))
                }
            },
            None => {
                first_line.insert(key, r);
            }
        }
    }
    let mut classes: BTreeMap<&str, (bool, Vec<usize>)> = BTreeMap::new();
    for r in &rows {
        let c = classes.entry(&r.label).or_default();
        c.0 |= r.split == "train";
        c.1.push(r.line);
    }
    let mut by_case: BTreeMap<String, Vec<(&str, usize)>> = BTreeMap::new();
    for (name, (_, lines)) in &classes {
        let nfc: String = name.trim().nfc().map(|(c, _)| c).collect();
        by_case.entry(nfc.to_lowercase()).or_default().push((name, lines[0]));
    }
    for spellings in by_case.values_mut().filter(|v| v.len() > 1) {
        spellings.sort_by_key(|(_, line)| *line);
        // Where the forms differ, say which is which: the two look the same on screen.
        let forms = spellings.iter().any(|(n, _)| n.nfc().any(|(_, change)| change != 0));
        let form = |n: &str| match (forms, n.nfc().any(|(_, change)| change != 0)) {
            (false, _) => "",
            (true, true) => ", letters and accents apart",
            (true, false) => ", letters with their accents",
        };
        let listed: Vec<String> = spellings.iter().map(|(n, l)| format!("`{n}` (line {l}{})", form(n))).collect();
        p.at(spellings[1].1, format!("labels {} differ only in case, spaces or Unicode form (é as one character or as e + accent, as macOS folder names hold it): they would be separate classes; use one spelling", listed.join(" and ")));
    }
    if rows.iter().any(|r| r.split == "train") {
        for (name, (_, lines)) in classes.iter().filter(|(_, (trained, _))| !trained) {
            p.at(lines[0], format!("class `{name}` has no training rows ({}): add training images of it, or correct the label", line_list(lines)));
        }
        if classes.len() == 1 {
            p.whole(format!("every row has label `{}`: a classifier needs at least two classes", rows[0].label));
        }
    }
    let without: Vec<usize> = rows.iter().filter(|r| !r.has_group).map(|r| r.line).collect();
    if !without.is_empty() && without.len() < rows.len() {
        p.at(without[0], format!("`group` is set on some lines but not on {}: set it on every line or on none", line_list(&without)));
    }
    p.into_result()?;
    // Allowed, but often a typo that made a class of its own: said once, not refused.
    let single: Vec<String> =
        classes.iter().filter(|(_, (trained, lines))| *trained && lines.len() == 1).map(|(n, (_, l))| format!("`{n}` (line {})", l[0])).collect();
    if !single.is_empty() {
        let more = if single.len() > 5 { format!(" and {} more", single.len() - 5) } else { String::new() };
        let what = if single.len() == 1 { "class" } else { "each of the classes" };
        eprintln!("note: {}: one row only of {what} {}{more}; if a label is a typo, correct it", path.display(), single[..single.len().min(5)].join(", "));
    }
    let groups: std::collections::BTreeSet<&str> = rows.iter().filter_map(|r| r.group.as_deref()).collect();
    for split in ["val", "test"] {
        let (with, without): (Vec<&Row>, Vec<&Row>) = rows.iter().filter(|r| r.split == split).partition(|r| r.text.is_some());
        let (n, lines) = (without.len(), line_list(&without.iter().map(|r| r.line).collect::<Vec<_>>()));
        if with.is_empty() && n > 0 && groups.len() > 1 {
            eprintln!(
                "note: {}: the {split} rows have no text: train and eval need none there, but --leave-one-out trains on every group in turn and needs every row's text",
                path.display()
            );
        } else if !with.is_empty() && n > 0 {
            let verb = if n == 1 { "has" } else { "have" };
            eprintln!(
                "note: {}: {n} of the {} {split} rows {verb} no text ({lines}): {}",
                path.display(),
                with.len() + n,
                PARTIAL_TEXT.replace("SPLIT", split)
            );
        }
    }
    let names: Vec<String> = classes.keys().map(|c| c.to_string()).collect();
    let mut ds = Dataset { name: format!("manifest({})", path.display()), classes: names, train: vec![], val: vec![], test: vec![] };
    for (r, image) in rows.into_iter().zip(resolved) {
        let label = ds.classes.binary_search(&r.label).expect("every label is a class") as u32;
        let s = Sample { id: r.image, image, label, text: r.text, group: r.group, origin: format!("{}:{}", path.display(), r.line) };
        match r.split.as_str() {
            "train" => ds.train.push(s),
            "val" => ds.val.push(s),
            _ => ds.test.push(s),
        }
    }
    Ok(ds)
}
