//! `marnet predict`: a bundle run over image files, folders and list files, with the result
//! per file as a table, JSON Lines or CSV. A file that cannot be read gets an error row; the
//! others are still predicted.

use crate::bundle::{ClassProb, Predictor};
use crate::data::image::Prepared;
use anyhow::{Context, Result};
use rayon::prelude::*;
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};

/// File extensions taken from folders.
pub const IMAGE_EXTENSIONS: [&str; 4] = ["png", "jpg", "jpeg", "webp"];

fn is_image(p: &Path) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// The images under `dir` (recursively, sorted) into `out`; the other files (not hidden) into
/// `others`.
fn walk(dir: &Path, out: &mut Vec<PathBuf>, others: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<PathBuf> =
        std::fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out, others)?;
        } else if is_image(&p) {
            out.push(p);
        } else if !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
            others.push(p);
        }
    }
    Ok(())
}

/// Expands the command line's inputs: folders recursively (image extensions only, sorted), a
/// `.txt`/`.lst` file as one path per line (relative to the list's folder), anything else as
/// an image path (a missing one is kept and fails as that file's error). A missing input that
/// names a folder or a list (`photos/`, `photos`, `list.txt`: a trailing separator, no
/// extension, .txt or .lst) is an error, all of them named at once; so is finding no image at
/// all, naming every input and what is looked for.
pub fn collect_inputs(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let missing: Vec<String> = inputs
        .iter()
        .filter(|p| {
            let ext = p.extension().and_then(|e| e.to_str());
            !p.exists() && (p.as_os_str().to_string_lossy().ends_with(std::path::MAIN_SEPARATOR) || matches!(ext, None | Some("txt" | "lst")))
        })
        .map(|p| format!("`{}`", p.display()))
        .collect();
    anyhow::ensure!(missing.is_empty(), "no such file or folder: {}", missing.join(", "));
    let (mut out, mut others) = (Vec::new(), Vec::new());
    for p in inputs {
        let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
        if p.is_dir() {
            walk(p, &mut out, &mut others)?;
        } else if ext == "txt" || ext == "lst" {
            let text = std::fs::read_to_string(p).with_context(|| format!("{}: cannot read list", p.display()))?;
            let base = p.parent().unwrap_or(Path::new("."));
            let listed: Vec<PathBuf> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(|l| base.join(l)).collect();
            anyhow::ensure!(
                listed.is_empty() || listed.iter().any(|f| f.exists()),
                "{}: none of its {} lines names an existing file: a .txt or .lst input is read as a list of image paths, one a line, relative to its folder (the first: `{}`)",
                p.display(),
                listed.len(),
                listed[0].display()
            );
            out.extend(listed);
        } else {
            out.push(p.clone());
        }
    }
    if let Some(first) = others.first() {
        let what = if others.len() == 1 { "file" } else { "files" };
        eprintln!("note: left out {} {what} in folders not ending in .{}, e.g. {}", others.len(), IMAGE_EXTENSIONS.join(", ."), first.display());
    }
    if out.is_empty() {
        let searched: Vec<String> = inputs.iter().map(|p| format!("`{}`", p.display())).collect();
        anyhow::bail!(
            "no images found in {}: folders are searched (with their subfolders) for files ending in .{}, and list files (.txt, .lst) give one image path per line",
            searched.join(", "),
            IMAGE_EXTENSIONS.join(", .")
        );
    }
    Ok(out)
}

/// One input's result.
#[derive(Debug, Clone, Serialize)]
pub struct FileResult {
    pub path: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top: Option<Vec<ClassProb>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Predicts every file in batches of `batch`, decoding each batch in parallel.
pub fn predict_files(pred: &Predictor, files: &[PathBuf], k: usize, batch: usize, progress: bool) -> Result<Vec<FileResult>> {
    anyhow::ensure!(k >= 1 && batch >= 1, "the classes per image and the batch must be at least 1");
    let bar = crate::progress::bar(progress, files.len() as u64, "images", "predict");
    let pre = pred.preprocess();
    let mut out = Vec::with_capacity(files.len());
    for chunk in files.chunks(batch) {
        let prepared: Vec<Result<Prepared>> = chunk.par_iter().map(|p| pre.prepare_file(p)).collect();
        let ok: Vec<&Prepared> = prepared.iter().filter_map(|r| r.as_ref().ok()).collect();
        let mut tops = pred.top_k(&ok, k)?.into_iter();
        for (path, r) in chunk.iter().zip(&prepared) {
            let (top, error) = match r {
                Ok(_) => (tops.next(), None),
                Err(e) => (None, Some(format!("{e:#}"))),
            };
            out.push(FileResult { path: path.clone(), top, error });
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(out)
}

/// How `predict` prints its results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns: file, then `class (prob%)` for each of the top k.
    Table,
    /// One JSON object per file: `{"path", "top": [{"class", "index", "prob"}]}` or `{"path", "error"}`.
    Jsonl,
    /// `path,rank,class,index,prob,error`, one row per (file, rank).
    Csv,
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

/// Writes `results` in `format`.
pub fn write_results(results: &[FileResult], format: Format, w: &mut impl Write) -> Result<()> {
    match format {
        Format::Jsonl => {
            for r in results {
                writeln!(w, "{}", serde_json::to_string(r)?)?;
            }
        }
        Format::Csv => {
            writeln!(w, "path,rank,class,index,prob,error")?;
            for r in results {
                let path = csv_field(&r.path.display().to_string());
                match (&r.top, &r.error) {
                    (Some(top), _) => {
                        for (rank, c) in top.iter().enumerate() {
                            writeln!(w, "{path},{},{},{},{:.6},", rank + 1, csv_field(&c.class), c.index, c.prob)?;
                        }
                    }
                    (None, e) => writeln!(w, "{path},,,,,{}", csv_field(e.as_deref().unwrap_or("")))?,
                }
            }
        }
        Format::Table => {
            let width = results.iter().map(|r| r.path.display().to_string().len()).max().unwrap_or(4).max(4);
            for r in results {
                let cells = match (&r.top, &r.error) {
                    (Some(top), _) => top.iter().map(|c| format!("{} ({:.1}%)", c.class, 100.0 * c.prob)).collect::<Vec<_>>().join("  "),
                    // The path is the row's first column: not again at the error's start.
                    (None, e) => format!("ERROR {}", e.as_deref().map(|e| e.strip_prefix(&format!("{}: ", r.path.display())).unwrap_or(e)).unwrap_or("")),
                };
                writeln!(w, "{:width$}  {cells}", r.path.display())?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_commas_and_quotes() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("plain"), "plain");
    }

    #[test]
    fn inputs_expand_folders_and_lists() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        std::fs::create_dir_all(d.join("a/b")).unwrap();
        for f in ["a/2.png", "a/b/1.JPG", "a/notes.md"] {
            std::fs::write(d.join(f), "").unwrap();
        }
        std::fs::write(d.join("list.txt"), "x.webp\n# comment\n\na/2.png\n").unwrap();
        let got = collect_inputs(&[d.join("a"), d.join("list.txt"), d.join("missing.png")]).unwrap();
        let want: Vec<PathBuf> = ["a/2.png", "a/b/1.JPG", "x.webp", "a/2.png", "missing.png"].iter().map(|f| d.join(f)).collect();
        assert_eq!(got, want);
        // A text file given as an input is read as a list: one naming no file at all is refused.
        std::fs::write(d.join("notes.txt"), "milk\neggs\n").unwrap();
        let e = collect_inputs(&[d.join("notes.txt")]).unwrap_err().to_string();
        assert!(e.contains("notes.txt: none of its 2 lines names an existing file: a .txt or .lst input is read as a list of image paths"), "{e}");
    }

    #[test]
    fn finding_no_image_is_an_error_naming_what_was_searched() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        std::fs::create_dir_all(d.join("empty")).unwrap();
        std::fs::write(d.join("notes.md"), "").unwrap();
        std::fs::write(d.join("list.txt"), "# nothing\n\n").unwrap();
        let e = collect_inputs(&[d.to_path_buf(), d.join("list.txt")]).unwrap_err().to_string();
        for want in [format!("`{}`", d.display()), format!("`{}`", d.join("list.txt").display()), ".png, .jpg, .jpeg, .webp".into()] {
            assert!(e.contains(&want), "{want} not in: {e}");
        }
    }

    /// A mistyped folder (or list) is named as missing, every one at once, not read as an image.
    #[test]
    fn missing_folders_are_named_at_once() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let e = collect_inputs(&[d.join("nophotos/"), d.join("typo"), d.join("gone.png"), d.join("gone.bmp"), d.join("l.txt")]).unwrap_err().to_string();
        assert!(e.starts_with("no such file or folder:"), "{e}");
        for want in ["nophotos/`", "typo`", "l.txt`"] {
            assert!(e.contains(want), "{want} not in: {e}");
        }
        assert!(!e.contains("gone."), "a missing file stays that file's own error: {e}");
    }
}
