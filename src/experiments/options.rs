//! A table's settings as flags, declared once for the command line (`ablate`, `compare`) and the
//! Python module (`marnet.ablate`).

use super::spec::{Existing, TableSpec};
use crate::config::TrainConfig;
use crate::features::FeatureCache;
use crate::model::marnet::{MarnetConfig, ModelOptions, Variant};
use anyhow::Result;
use clap::Args;
use std::path::Path;

/// `--seed` of `TrainConfig` does less in a table: every run trains with its own seed 0..N-1
/// (`--seeds`).
const TABLE_SEED: &str = "With --leave-one-out --fold-val in-style: seed of the choice of each fold's validation \
                          images, the same for every run (each run's weights, batch order, noise and any val \
                          carve-out follow its own seed, 0..N-1 of --seeds); otherwise unused";

#[derive(Args, Clone)]
#[command(mut_arg("seed", |a| a.help(TABLE_SEED)))]
pub struct TableOptions {
    /// Runs per table row, with training seeds 0..N-1 (each seeds a run's weights, batch order,
    /// diffusion noise and any val carve-out); the table reports their mean ± std.
    #[arg(long, default_value_t = 3, value_parser = crate::options::at_least_one::<u64>)]
    pub seeds: u64,
    /// Leave-one-group-out: every group of rows (a manifest's `group` field, e.g. camera or site;
    /// without it, the first path component of the row ids: the vendor, for the emoji datasets)
    /// is the test split once, whatever split the cache put it in; runs go to
    /// OUT/fold-<group>/. The table reports each fold and the mean.
    #[arg(long)]
    pub leave_one_out: bool,
    /// With --leave-one-out, where validation comes from: `in-style` (a seeded 20% of the fold's
    /// training rows, one image of each class in turn; your own val rows train) or `group` (every
    /// image of the next training group: a style the model has not trained on, for choosing
    /// settings that must transfer).
    #[arg(long, value_enum, default_value = "in-style", requires = "leave_one_out")]
    pub fold_val: crate::features::folds::FoldVal,
    /// Replace what a table made with other settings left in --out: its runs made with other
    /// settings are trained again and the table is written as asked; nothing else is deleted.
    /// Without it such a folder is refused, naming what differs (the same settings reuse its
    /// finished runs and train only what is missing or stale).
    #[arg(long)]
    pub force: bool,
    /// Train only this task's share of the table's runs (every n-th of folds x rows x seeds) and
    /// write no table, for a job array: `i/n` (i counts from 0: `0/4` to `3/4`), or `env` (a
    /// Slurm array task's index and count) or `env/N` (also a Kubernetes Indexed Job's
    /// JOB_COMPLETION_INDEX, of N). Then the same
    /// command without --task reuses the finished runs, trains what is missing, and writes the
    /// table. Tasks never share a run folder; a killed task rerun as it was resumes its run.
    #[arg(long, value_name = "i/n|env|env/N", value_parser = crate::options::task_slice)]
    pub task: Option<String>,
    #[command(flatten)]
    pub model: ModelOptions,
    #[command(flatten)]
    pub train: TrainConfig,
}

impl TableOptions {
    /// The rows' common model for `cache`, as `variant`.
    pub fn base(&self, cache: &FeatureCache, variant: Variant) -> MarnetConfig {
        self.model.config(variant, cache.train.dv, cache.train.ds, cache.num_classes())
    }

    /// The table's settings: `what` and `first_column` head it, `file` names its files in `out`,
    /// `command` is recorded with it.
    pub fn spec(&self, out: &Path, what: &str, first_column: &str, file: &str, command: String) -> Result<TableSpec> {
        if self.train.seed != 0 && !(self.leave_one_out && self.fold_val == crate::features::folds::FoldVal::InStyle) {
            eprintln!(
                "note: --seed {} is unused here (it picks --leave-one-out's in-style validation images); the runs train with {} (--seeds)",
                self.train.seed,
                if self.seeds == 1 { "seed 0".to_string() } else { format!("seeds 0..{}", self.seeds - 1) }
            );
        }
        Ok(TableSpec {
            what: what.into(),
            first_column: first_column.into(),
            file: file.into(),
            out: out.to_path_buf(),
            seeds: (0..self.seeds).collect(),
            leave_one_out: self.leave_one_out,
            fold_val: self.fold_val,
            train: self.train.clone(),
            command,
            existing: if self.force { Existing::Replace } else { Existing::Refuse },
            task: self.task.as_deref().map(|t| crate::cluster::TaskSlice::resolve(t, "--task")).transpose()?,
        })
    }
}
