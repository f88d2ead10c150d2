//! Table 2: the ablation rows trained on one cache with the same budget, mean ± std over seeds.

use crate::checkpoint::TrainConfig;
use crate::eval::{mean_std, pct_mean_std};
use crate::features::FeatureCache;
use crate::model::marnet::{MarnetConfig, Variant};
use crate::train::{Verbosity, train};
use anyhow::{Context, Result};
use candle_core::Device;
use serde::Serialize;
use std::path::Path;

#[derive(Debug, Clone, Serialize)]
pub struct AblationRow {
    pub variant: Variant,
    pub row: String,
    pub seeds: Vec<u64>,
    pub test_top1: Vec<f64>,
    pub test_top5: Vec<f64>,
    pub val_top1: Vec<f64>,
    pub epoch_seconds: f64,
}

/// Trains every variant in `variants` for each seed into `out/<variant>/seed<k>` and returns the
/// rows. `base` supplies everything but the variant. Runs already finished are resumed, not redone.
pub fn ablate(
    cache: &FeatureCache,
    base: &MarnetConfig,
    train_cfg: &TrainConfig,
    variants: &[Variant],
    seeds: &[u64],
    out: &Path,
    verbosity: Verbosity,
    dev: &Device,
) -> Result<Vec<AblationRow>> {
    let mut rows = Vec::new();
    for &variant in variants {
        let cfg = MarnetConfig { variant, ..base.clone() };
        let mut row = AblationRow {
            variant,
            row: variant.table_row().to_string(),
            seeds: seeds.to_vec(),
            test_top1: vec![],
            test_top5: vec![],
            val_top1: vec![],
            epoch_seconds: 0.0,
        };
        let mut secs = vec![];
        for &seed in seeds {
            let tc = TrainConfig { seed, ..train_cfg.clone() };
            let dir = out.join(variant.name()).join(format!("seed{seed}"));
            let state = train(cache, &cfg, &tc, &dir, true, verbosity, dev)
                .with_context(|| format!("training {} (seed {seed})", variant.name()))?;
            let test = state.test.context("the cache has no test split")?;
            row.test_top1.push(test.final_head.top1);
            row.test_top5.push(test.final_head.top5);
            row.val_top1.push(state.best_val_top1);
            secs.extend(state.history.iter().map(|h| h.train_seconds));
        }
        row.epoch_seconds = mean_std(&secs).0;
        if verbosity == Verbosity::Progress {
            eprintln!("{}: test top1 {}", row.row, pct_mean_std(&row.test_top1));
        }
        rows.push(row);
    }
    Ok(rows)
}

/// The Table-2-like markdown table.
pub fn markdown(rows: &[AblationRow], title: &str) -> String {
    let mut s = format!("{title}\n\n| Module | Acc-1 (%) | Acc-5 (%) | val Acc-1 (%) | train s/epoch |\n|---|---|---|---|---|\n");
    for r in rows {
        s += &format!(
            "| {} | {} | {} | {} | {:.2} |\n",
            r.row,
            pct_mean_std(&r.test_top1),
            pct_mean_std(&r.test_top5),
            pct_mean_std(&r.val_top1),
            r.epoch_seconds
        );
    }
    s
}
