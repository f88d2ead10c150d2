//! The paper's tables: several model configurations ("arms") trained on one cache with the same
//! budget, each over several seeds, reported as mean ± std on the test split.
//! Table 2 is the ablation (variants); Table 1 compares alignment losses.

use crate::align::Alignment;
use crate::checkpoint::TrainConfig;
use crate::eval::{mean_std, pct_mean_std};
use crate::features::FeatureCache;
use crate::model::marnet::{MarnetConfig, Variant};
use crate::train::{Verbosity, train};
use anyhow::{Context, Result};
use candle_core::Device;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One row of a table: a configuration, its folder name and its label.
#[derive(Debug, Clone)]
pub struct Arm {
    pub key: String,
    pub row: String,
    pub cfg: MarnetConfig,
}

/// Table 2: the given variants (all five if empty), each as configured in `base`.
pub fn ablation_arms(base: &MarnetConfig, variants: &[Variant]) -> Vec<Arm> {
    let variants = if variants.is_empty() { &Variant::ALL[..] } else { variants };
    variants
        .iter()
        .map(|&v| Arm { key: v.name().into(), row: v.table_row().into(), cfg: MarnetConfig { variant: v, ..base.clone() } })
        .collect()
}

/// Table 1: the visual baseline, EMA with each alignment loss, and full MARNet (with ITA).
pub fn alignment_arms(base: &MarnetConfig, aligns: &[Alignment]) -> Vec<Arm> {
    let aligns = if aligns.is_empty() { &Alignment::ALL[..] } else { aligns };
    let mut arms = vec![Arm {
        key: "baseline".into(),
        row: "Visual baseline".into(),
        cfg: MarnetConfig { variant: Variant::Baseline, ..base.clone() },
    }];
    for &a in aligns {
        arms.push(Arm {
            // EMA with ITA is the ablation's +EMA row: same folder, trained once.
            key: if a == Alignment::Ita { Variant::Ema.name().into() } else { format!("align-{}", a.name()) },
            row: a.table_row().into(),
            cfg: MarnetConfig { variant: Variant::Ema, align: a, ..base.clone() },
        });
    }
    arms.push(Arm {
        key: "marnet".into(),
        row: "MARNet".into(),
        cfg: MarnetConfig { variant: Variant::Marnet, align: Alignment::Ita, ..base.clone() },
    });
    arms
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResultRow {
    pub key: String,
    pub row: String,
    pub config: MarnetConfig,
    pub seeds: Vec<u64>,
    pub test_top1: Vec<f64>,
    pub test_top5: Vec<f64>,
    pub val_top1: Vec<f64>,
    /// Mean wall time of an epoch's training steps.
    pub train_seconds_per_epoch: f64,
}

/// Trains every arm for each seed into `out/<key>/seed<k>`. Finished runs are resumed (a no-op),
/// so an interrupted table picks up where it stopped.
pub fn run_arms(
    cache: &FeatureCache,
    arms: &[Arm],
    train_cfg: &TrainConfig,
    seeds: &[u64],
    out: &Path,
    verbosity: Verbosity,
    dev: &Device,
) -> Result<Vec<ResultRow>> {
    let mut rows = Vec::new();
    for arm in arms {
        let mut row = ResultRow {
            key: arm.key.clone(),
            row: arm.row.clone(),
            config: arm.cfg.clone(),
            seeds: seeds.to_vec(),
            test_top1: vec![],
            test_top5: vec![],
            val_top1: vec![],
            train_seconds_per_epoch: 0.0,
        };
        let mut secs = vec![];
        for &seed in seeds {
            let tc = TrainConfig { seed, ..train_cfg.clone() };
            let dir = out.join(&arm.key).join(format!("seed{seed}"));
            let state = train(cache, &arm.cfg, &tc, &dir, true, verbosity, dev)
                .with_context(|| format!("training {} (seed {seed})", arm.key))?;
            let test = state.test.context("the cache has no test split")?;
            row.test_top1.push(test.final_head.top1);
            row.test_top5.push(test.final_head.top5);
            row.val_top1.push(state.best_val_top1);
            secs.extend(state.history.iter().map(|h| h.train_seconds));
        }
        row.train_seconds_per_epoch = mean_std(&secs).0;
        if verbosity == Verbosity::Progress {
            eprintln!("{}: test top1 {}", row.row, pct_mean_std(&row.test_top1));
        }
        rows.push(row);
    }
    Ok(rows)
}

/// A finished table with what produced it (`OUT/<name>.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Table {
    pub title: String,
    pub first_column: String,
    /// The command line that produced it.
    pub command: String,
    pub train: TrainConfig,
    pub rows: Vec<ResultRow>,
}

impl Table {
    /// The rows as a markdown table under the title.
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "{}\n\n| {} | Acc-1 (%) | Acc-5 (%) | val Acc-1 (%) | train s/epoch |\n|---|---|---|---|---|\n",
            self.title, self.first_column
        );
        for r in &self.rows {
            s += &format!(
                "| {} | {} | {} | {} | {:.2} |\n",
                r.row,
                pct_mean_std(&r.test_top1),
                pct_mean_std(&r.test_top5),
                pct_mean_std(&r.val_top1),
                r.train_seconds_per_epoch
            );
        }
        s
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
