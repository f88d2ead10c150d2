//! A finished table: its rows with what produced them (`OUT/<name>.json`), and its markdown
//! and HTML cells.

use super::ResultRow;
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
}

/// `"+1.23 (p=0.004**)"`: a paired difference in points with its bootstrap p-value and marker.
fn paired_cell(t: &Option<PairedTest>) -> String {
    match t {
        Some(t) => format!("{:+.2} (p={:.3}{})", 100.0 * t.diff, t.p_bootstrap, crate::stats::significance_marker(t.p_bootstrap)),
        None => "".into(),
    }
}

/// `"55.1 / 60.2"`-style list of percentages, or empty.
fn pct_list(xs: &[f64]) -> String {
    xs.iter().map(|x| format!("{:.1}", 100.0 * x)).collect::<Vec<_>>().join(" / ")
}

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
            "vs +EMA".into(),
            "heads EMA / CDR Acc-1".into(),
            "cos(x_CDR, x_s)".into(),
            "val Acc-1 (%)".into(),
            "train s/epoch".into(),
        ]);
        let rows = self
            .rows
            .iter()
            .map(|r| {
                let mut c = vec![
                    r.row.clone(),
                    pct_mean_std(&r.test_top1),
                    // An accuracy's interval, cut to the possible range (a t-interval over few runs can pass it).
                    format!("[{:.1}, {:.1}]", (100.0 * r.ci95_top1.0).max(0.0), (100.0 * r.ci95_top1.1).min(100.0)),
                    pct_mean_std(&r.test_top5),
                ];
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
                    pct_mean_std(&r.val_top1),
                    format!("{:.2}", r.train_seconds_per_epoch),
                ]);
                c
            })
            .collect();
        (head, rows)
    }

    /// The rows as a markdown table under the title, with a legend for the statistics.
    pub fn markdown(&self) -> String {
        let (head, rows) = self.cells();
        let mut s = format!("{}\n\n| {} |\n|{}\n", self.title, head.join(" | "), "---|".repeat(head.len()));
        for r in rows {
            s += &format!("| {} |\n", r.join(" | "));
        }
        s + "\nAcc: mean ± std over runs (folds × seeds); 95% CI: t-interval of that mean. vs baseline / vs +EMA: \
             difference in top-1 points on the same test images (per-image accuracy averaged over seeds), \
             paired bootstrap p-value (* p < 0.05, ** p < 0.01).\n"
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
