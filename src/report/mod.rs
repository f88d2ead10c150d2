//! `marnet report`: tables, figures and one self-contained HTML page from a finished `ablate`,
//! `compare` or `demo` folder (its `ablation.json` / `comparison.json` and run folders).
//!
//! - `tables.md`, `tables.json`: Table 1 / Table 2 style, mean ± std over runs.
//! - `fig3_tsne`: t-SNE of x_v and of x_CDR (the MARNet run) for a few classes.
//! - `fig4_examples`, `fig4_confidence`: top-5 probabilities of the baseline and of the CDR
//!   head for some test images (half where their top-1 differ), and the histogram of their max
//!   probability on the test set.
//! - `curves`: loss terms and val top-1 per epoch of every row, mean ± std over its runs.
//! - `folds` (leave-one-out tables): each row's test top-1 per held-out group, 95% intervals.
//! - `report.html`: all of it, opening on the run card and a summary in words (`card.rs`),
//!   Figure 4's images as thumbnails (`thumbs.rs`), the configuration last.

mod card;
mod escape;
mod figures;
pub mod html;
mod options;
pub mod plots;
mod stats;
mod thumbs;
pub mod tsne;

pub use options::ReportOptions;
pub use stats::{ExampleRecord, FigureStats};

use crate::checkpoint::Checkpoint;
use crate::experiments::Table;
use anyhow::{Result, ensure};
use candle_core::Device;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Writes `DIR/report/` from the saved results in `dir`, all of it or, on failure, none (the
/// previous report stays); returns the report folder.
pub fn write(dir: &Path, opts: &ReportOptions, dev: &Device) -> Result<PathBuf> {
    ensure!(dir.is_dir(), "{}: no such folder; pass the --out folder of `marnet ablate`, `compare` or `demo`", dir.display());
    plots::use_font(&opts.font(None)?)?;
    let mut tables = vec![];
    for name in ["ablation", "comparison"] {
        if let Some(t) = Table::read(dir, name)? {
            tables.push((name.to_string(), t));
        }
    }
    if tables.is_empty() {
        // A run, or a folder inside a table: say which folder the report is made from.
        let table = dir
            .ancestors()
            .skip(1)
            .take(4)
            .filter(|d| !d.as_os_str().is_empty())
            .find(|d| ["ablation.json", "comparison.json"].iter().any(|t| d.join(t).is_file()));
        let why = match (dir.join("best").is_dir() || dir.join("last").is_dir(), table) {
            (_, Some(t)) => format!("this folder is inside the table in {}: `marnet report {}`", t.display(), t.display()),
            (true, None) => {
                format!("this is a training run: `marnet eval --model {}` scores it; report draws the tables of `ablate`, `compare` or `demo`", dir.display())
            }
            (false, None) => "run `marnet ablate`, `compare` or `demo` first, and pass its --out folder".into(),
        };
        anyhow::bail!("{}: no ablation.json or comparison.json; {why}", dir.display());
    }
    // Written whole into `report.tmp` and swapped in: a report that fails leaves the last one.
    let out = dir.join("report");
    crate::fsutil::replace_dir(&out, |tmp| write_into(dir, &tables, opts, tmp, dev))?;
    Ok(out)
}

/// Writes the report of the tables of `dir` into the folder `out`.
fn write_into(dir: &Path, tables: &[(String, Table)], opts: &ReportOptions, out: &Path, dev: &Device) -> Result<()> {
    let bar = crate::progress::bar(opts.progress, 4, "steps", "report: tables");
    let md: String = tables.iter().map(|(_, t)| t.markdown() + "\n").collect();
    crate::fsutil::write_atomic(&out.join("tables.md"), md.as_bytes())?;
    let json: BTreeMap<&str, &Table> = tables.iter().map(|(n, t)| (n.as_str(), t)).collect();
    crate::fsutil::write_atomic(&out.join("tables.json"), serde_json::to_string_pretty(&json)?.as_bytes())?;
    bar.inc(1);

    let mut stats = FigureStats::default();
    let first = |key: &str| figures::run_dirs(dir, key, tables, false);
    let open = |key: &str| -> Option<Checkpoint> { first(key).first().and_then(|d| Checkpoint::open(d, dev).ok()) };
    let (marnet, base) = (open("marnet"), open("baseline"));
    bar.set_message("report: t-SNE");
    let marnet_folds: Vec<Checkpoint> = first("marnet").iter().map(|d| Checkpoint::open(d, dev)).collect::<Result<_>>()?;
    match marnet_folds.is_empty() {
        false => figures::tsne_figure(&marnet_folds, opts, &mut stats, out, dev)?,
        true => stats.skipped.push(("fig3_tsne".into(), "no MARNet run in this folder (the table has no `marnet` row)".into())),
    }
    bar.inc(1);
    bar.set_message("report: confidence");
    match (&base, &marnet) {
        (Some(b), Some(m)) => figures::confidence_figures(b, m, opts, &mut stats, out, dev)?,
        _ => {
            let why = "needs both a baseline and a MARNet run (rows `baseline` and `marnet`)".to_string();
            stats.skipped.extend([("fig4_examples".into(), why.clone()), ("fig4_confidence".into(), why)]);
        }
    }
    if let Some(m) = &marnet {
        thumbs::add(m, &mut stats.examples);
    }
    bar.inc(1);
    bar.set_message("report: curves");
    figures::curves_figure(dir, tables, out)?;
    if !figures::folds_figure(tables, out)? {
        stats.skipped.push(("folds".into(), "not a leave-one-out table (`--leave-one-out` tests on every group in turn)".into()));
    }
    bar.inc(1);
    bar.finish_and_clear();
    crate::fsutil::write_atomic(&out.join("figures.json"), serde_json::to_string_pretty(&stats)?.as_bytes())?;
    let demo = crate::fsutil::read_json::<serde_json::Value>(&dir.join("demo.json")).ok();
    html::write(out, tables, &stats, demo.as_ref())
}
