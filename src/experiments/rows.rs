//! A table's results: every run of a row, its accuracies over folds and seeds, and its paired
//! tests against the baseline and +EMA rows.

use super::arms::Arm;
use crate::eval::EvalResult;
use crate::model::marnet::{MarnetConfig, Variant};
use crate::stats::{PairedTest, mean_std};
use serde::{Deserialize, Serialize};

/// What one run of a row reported on its test split.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunResult {
    /// Fold folder name (`fold-apple`), empty without folds.
    pub fold: String,
    pub seed: u64,
    pub test: Option<EvalResult>,
    pub val_top1: f64,
    /// Per test row: top-1 right (for the paired tests; not written to the table JSON).
    #[serde(skip)]
    pub hits: Vec<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResultRow {
    pub key: String,
    pub row: String,
    pub config: MarnetConfig,
    pub seeds: Vec<u64>,
    /// Fold folder names in run order (empty: the cache's own splits).
    #[serde(default)]
    pub folds: Vec<String>,
    /// Test top-1 / top-5 per run, fold-major (every seed of the first fold, then the next).
    pub test_top1: Vec<f64>,
    pub test_top5: Vec<f64>,
    pub val_top1: Vec<f64>,
    /// The EMA and CDR heads' own test top-1 per run, for rows that have them.
    #[serde(default)]
    pub ema_head_top1: Vec<f64>,
    #[serde(default)]
    pub cdr_head_top1: Vec<f64>,
    /// Mean cosine of x_CDR to the true x_s on test, per run (rows with a reconstruction).
    #[serde(default)]
    pub test_cosine: Vec<f64>,
    /// 95% t-interval of the mean test top-1 over the runs (folds x seeds).
    #[serde(default)]
    pub ci95_top1: (f64, f64),
    /// Paired comparisons of top-1 on the same test images (scores averaged over seeds; with
    /// folds, the mean of the folds' differences, as `test_top1`'s mean is).
    #[serde(default)]
    pub vs_baseline: Option<PairedTest>,
    #[serde(default)]
    pub vs_ema: Option<PairedTest>,
    /// Mean wall time of an epoch's training steps, and their sum over every epoch of every run.
    pub train_seconds_per_epoch: f64,
    #[serde(default)]
    pub train_seconds: f64,
    #[serde(skip)]
    pub runs: Vec<RunResult>,
}

/// Resamples of the paired bootstrap.
const BOOTSTRAP_REPS: usize = 10_000;

impl ResultRow {
    pub(super) fn new(arm: &Arm, seeds: &[u64], runs: Vec<RunResult>, epoch_seconds: &[f64]) -> Self {
        let pick = |f: &dyn Fn(&EvalResult) -> Option<f64>| -> Vec<f64> { runs.iter().filter_map(|r| r.test.as_ref().and_then(f)).collect() };
        let mut folds: Vec<String> = runs.iter().map(|r| r.fold.clone()).filter(|f| !f.is_empty()).collect();
        folds.dedup();
        let test_top1 = pick(&|t| Some(t.final_head.top1));
        Self {
            key: arm.key.clone(),
            row: arm.row.clone(),
            config: arm.cfg.clone(),
            seeds: seeds.to_vec(),
            folds,
            ci95_top1: crate::stats::ci95(&test_top1),
            test_top1,
            test_top5: pick(&|t| Some(t.final_head.top5)),
            val_top1: runs.iter().map(|r| r.val_top1).collect(),
            ema_head_top1: pick(&|t| t.ema_head.map(|a| a.top1)),
            cdr_head_top1: pick(&|t| t.cdr_head.map(|a| a.top1)),
            test_cosine: pick(&|t| t.reconstruction.map(|r| r.cosine)),
            vs_baseline: None,
            vs_ema: None,
            train_seconds_per_epoch: mean_std(epoch_seconds).0,
            train_seconds: epoch_seconds.iter().sum(),
            runs,
        }
    }

    /// Per test image (over all folds), the share of seeds whose top-1 was right; and the number
    /// of test images of each fold.
    fn image_scores(&self) -> (Vec<f64>, Vec<usize>) {
        let seeds = self.seeds.len().max(1);
        let (mut out, mut sizes) = (vec![], vec![]);
        for fold_runs in self.runs.chunks(seeds) {
            let n = fold_runs[0].hits.len();
            out.extend((0..n).map(|i| fold_runs.iter().filter(|r| r.hits[i]).count() as f64 / fold_runs.len() as f64));
            sizes.push(n);
        }
        (out, sizes)
    }

    /// Mean test top-1 of each fold (over seeds).
    pub fn fold_top1(&self) -> Vec<f64> {
        self.test_top1.chunks(self.seeds.len().max(1)).map(|c| mean_std(c).0).collect()
    }
}

/// Fills each row's paired tests against the rows keyed `baseline` and `ema`, when present.
pub(super) fn add_paired_tests(rows: &mut [ResultRow]) {
    let scores: Vec<(Vec<f64>, Vec<usize>)> = rows.iter().map(ResultRow::image_scores).collect();
    let find = |key: &str| rows.iter().position(|r| r.key == key);
    let (base, ema) = (find("baseline"), find(Variant::Ema.name()));
    for (i, row) in rows.iter_mut().enumerate() {
        // Fold by fold, as the accuracies are averaged (a fold with no test image has no place).
        let test = |j: Option<usize>| {
            let ((a, sizes), (b, other)) = (&scores[i], &scores[j?]);
            let usable = j != Some(i) && !a.is_empty() && a.len() == b.len() && sizes == other && !sizes.contains(&0);
            usable.then(|| crate::stats::paired_test_in_groups(a, b, sizes, BOOTSTRAP_REPS, 0))
        };
        (row.vs_baseline, row.vs_ema) = (test(base), test(ema));
    }
}
