//! A finished table: its rows with what produced them (`OUT/<name>.json`), and its markdown
//! and HTML cells.

use super::rows::ResultRow;
use crate::config::TrainConfig;
use crate::eval::pct_mean_std;
use crate::features::folds::FoldVal;
use crate::stats::{PairedTest, mean_std};
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// A finished table with what produced it (`OUT/<name>.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Table {
    pub title: String,
    pub first_column: String,
    /// The command line that produced it.
    pub command: String,
    pub train: TrainConfig,
    /// With leave-one-out folds: where their validation came from (absent in older tables).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fold_val: Option<FoldVal>,
    pub rows: Vec<ResultRow>,
    /// When, where and on what it was made (absent in older tables).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card: Option<super::card::RunCard>,
}

/// `"+1.23 (p = 0.004**)"`: a paired difference in points with its p-value ([`PairedTest::p`]) and marker.
fn paired_cell(t: &Option<PairedTest>) -> String {
    match t {
        Some(t) => format!("{:+.2} ({}{})", 100.0 * t.diff, crate::stats::p_value(t.p()), crate::stats::significance_marker(t.p())),
        None => "".into(),
    }
}

/// What each column of a table means (the report lists them under it), in column order of
/// [`Table::cells`] after the first.
pub const COLUMNS: &[(&str, &str)] = &[
    ("Acc-1 (%)", "test top-1 accuracy, mean ± std over runs (folds × seeds); the model of each run is the epoch with the best val top-1"),
    ("95% CI", "t-interval of that mean over the runs, cut to [0, 100] (marked ‡ where cut); n/a with one run"),
    ("Acc-5 (%)", "test top-5 accuracy, mean ± std over runs"),
    ("Acc-1 per held-out group", "leave-one-out tables: each fold's test top-1 (mean over seeds), the fold named by the group it tests on"),
    (
        "vs baseline",
        "difference in test top-1 points from the baseline row on the same test images (each image's accuracy averaged over seeds), with its p-value: the larger of a paired bootstrap's (10,000 resamples) and an exact McNemar test's (on each image's majority-of-seeds correctness); * p < 0.05, ** p < 0.01, *** p < 0.001",
    ),
    ("vs +EMA", "the same against the +EMA row (EMA with the ITA loss: Table 1's ITA row)"),
    (
        "heads EMA / CDR Acc-1",
        "rows with both branches: the test top-1 of the EMA branch's own classifier and of the CDR branch's own classifier (the fused row's Acc-1 combines them)",
    ),
    (
        "cos(x_CDR, x_s)",
        "mean cosine between x_CDR, the text feature the CDR samples from the image (Eq. 21-23), and the true text feature x_s of the test image: how well the reconstruction reconstructs (1 = exactly)",
    ),
    ("val Acc-1 (%)", "best validation top-1 of each run (the epoch kept), mean ± std"),
    ("train time/epoch", "wall time of one epoch's training steps, mean over epochs and runs"),
];

/// `"88.54 ± 0.45"` in percent, or the value alone for one run (a std of one run is no spread).
fn mean_std_cell(xs: &[f64]) -> String {
    match xs {
        [x] => format!("{:.2}", 100.0 * x),
        _ => pct_mean_std(xs),
    }
}

/// An accuracy's 95% interval in percent, cut to the possible range (a t-interval over few runs
/// can pass it; `‡` marks a cut end), or `n/a` for one run.
fn ci_cell((lo, hi): (f64, f64), runs: usize) -> String {
    if runs < 2 {
        return "n/a (1 run)".into();
    }
    let cut = |x: f64| if (0.0..=1.0).contains(&x) { format!("{:.1}", 100.0 * x) } else { format!("{:.1}‡", 100.0 * x.clamp(0.0, 1.0)) };
    format!("[{}, {}]", cut(lo), cut(hi))
}

/// `"55.1 / 60.2"`-style list of percentages, or empty.
fn pct_list(xs: &[f64]) -> String {
    xs.iter().map(|x| format!("{:.1}", 100.0 * x)).collect::<Vec<_>>().join(" / ")
}

/// The statistics under every table.
pub const FOOTNOTE: &str = "Acc: mean ± std over runs (the seeds, of every fold with --leave-one-out; the mean alone for one run); 95% CI: t-interval of that mean (‡ cut to [0, 100]). vs baseline / vs +EMA (ITA): \
     difference in top-1 points on the same test images (per-image accuracy averaged over seeds; with folds, the mean of the folds' differences, as Acc is), \
     p-value: the larger of a paired bootstrap's (resampled within each fold) and an exact McNemar test's (each image right or wrong by the majority of seeds, all folds' images; * p < 0.05, ** p < 0.01, *** p < 0.001; a difference with p ≥ 0.05 is no difference).";

impl Table {
    /// The header and the cells of every row, shared by the markdown and HTML renderings.
    pub fn cells(&self) -> (Vec<String>, Vec<Vec<String>>) {
        let folds: Vec<String> = self.rows.first().map(|r| r.folds.iter().map(|f| f.trim_start_matches("fold-").to_string()).collect()).unwrap_or_default();
        let mut head: Vec<String> = vec![self.first_column.clone(), "Acc-1 (%)".into(), "95% CI".into(), "Acc-5 (%)".into()];
        if !folds.is_empty() {
            head.push(format!("Acc-1 per held-out group ({})", folds.join(" / ")));
        }
        head.extend([
            "vs baseline".into(),
            if self.rows.iter().any(|r| r.key == "ema" && r.row != "+EMA") { "vs +EMA (ITA)".into() } else { "vs +EMA".into() },
            "heads EMA / CDR Acc-1".into(),
            "cos(x_CDR, x_s)".into(),
            "val Acc-1 (%)".into(),
            "train time/epoch".into(),
        ]);
        let rows = self
            .rows
            .iter()
            .map(|r| {
                let mut c = vec![r.row.clone(), mean_std_cell(&r.test_top1), ci_cell(r.ci95_top1, r.test_top1.len()), mean_std_cell(&r.test_top5)];
                if !folds.is_empty() {
                    c.push(pct_list(&r.fold_top1()));
                }
                let heads = match (r.ema_head_top1.is_empty(), r.cdr_head_top1.is_empty()) {
                    (false, false) => format!("{:.2} / {:.2}", 100.0 * mean_std(&r.ema_head_top1).0, 100.0 * mean_std(&r.cdr_head_top1).0),
                    _ => "".into(),
                };
                let cos = if r.test_cosine.is_empty() { String::new() } else { format!("{:.3}", mean_std(&r.test_cosine).0) };
                c.extend([
                    paired_cell(&r.vs_baseline),
                    paired_cell(&r.vs_ema),
                    heads,
                    cos,
                    mean_std_cell(&r.val_top1),
                    crate::words::duration(r.train_seconds_per_epoch),
                ]);
                c
            })
            .collect();
        (head, rows)
    }

    /// [`FOOTNOTE`], and that top-5 cannot miss when the cache has 5 classes or fewer.
    pub fn footnote(&self) -> String {
        match self.card.as_ref().and_then(|c| crate::eval::trivial_top5(c.classes)) {
            Some(note) => format!("{FOOTNOTE} {note}."),
            None => FOOTNOTE.to_string(),
        }
    }

    /// The rows as a markdown table under the title, with a legend for the statistics.
    pub fn markdown(&self) -> String {
        let (head, rows) = self.cells();
        let mut s = format!("{}\n\n| {} |\n|{}\n", self.title, head.join(" | "), "---|".repeat(head.len()));
        for r in rows {
            s += &format!("| {} |\n", r.join(" | "));
        }
        s + &format!("\n{}\n", self.footnote())
    }

    /// Writes `dir/<name>.md` and `dir/<name>.json`.
    pub fn write(&self, dir: &Path, name: &str) -> Result<()> {
        crate::fsutil::write_atomic(&dir.join(format!("{name}.md")), self.markdown().as_bytes())?;
        crate::fsutil::write_atomic(&dir.join(format!("{name}.json")), serde_json::to_string_pretty(self)?.as_bytes())
    }

    /// Reads `dir/<name>.json`, if present.
    pub fn read(dir: &Path, name: &str) -> Result<Option<Table>> {
        let p = dir.join(format!("{name}.json"));
        if !p.exists() {
            return Ok(None);
        }
        crate::fsutil::read_json(&p).map(Some)
    }
}
