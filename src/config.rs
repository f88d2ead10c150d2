//! Run settings, each declared once as a clap `Args` with its default: how a model is trained
//! ([`TrainConfig`], saved in every checkpoint) and how a trained model runs at inference
//! ([`Inference`], carried by runs and bundles alike).

use crate::model::cdr::SamplerConfig;
use crate::optim::AdamWConfig;
use serde::{Deserialize, Serialize};

/// Rows per forward pass when evaluating a split (the default of `--eval-batch`).
pub const EVAL_BATCH: usize = 500;

/// Training hyper-parameters (all saved with every checkpoint).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct TrainConfig {
    /// Passes over the training rows (the model is selected on val after each).
    #[arg(long, default_value_t = 10, value_parser = crate::options::at_least_one::<usize>)]
    pub epochs: usize,
    /// Training rows per optimiser step.
    #[arg(long, default_value_t = 64, value_parser = crate::options::at_least_one::<usize>)]
    pub batch: usize,
    #[command(flatten)]
    pub optim: AdamWConfig,
    /// Clip the global gradient norm to this (0: off).
    #[arg(long, default_value_t = 0.0, value_parser = crate::options::non_negative)]
    pub clip_grad: f64,
    /// Seed of everything random in the run: initial weights, batch order, diffusion steps and
    /// noise, the val carve-out (--val-fraction) and the sampling noise of val and test.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Fraction of train held out for model selection when the cache has no `val`.
    #[arg(long, default_value_t = 0.1, value_parser = crate::options::fraction)]
    pub val_fraction: f64,
    /// Sampler used for validation and test evaluation.
    #[command(flatten)]
    pub sampler: SamplerConfig,
    /// Rows per forward pass in validation and test.
    #[arg(long, default_value_t = EVAL_BATCH, value_parser = crate::options::at_least_one::<usize>)]
    pub eval_batch: usize,
    /// Draw batches as blocks of K rows of one class (CAN's class-aware sampling, for `--align
    /// cdd`); 0: plain shuffling.
    #[serde(default)]
    #[arg(long, default_value_t = 0)]
    pub per_class: usize,
}

impl TrainConfig {
    /// How validation and test run: the sampler, the training seed, `eval_batch` rows a pass.
    pub fn inference(&self) -> Inference {
        Inference { sampler: self.sampler, seed: self.seed, batch: self.eval_batch }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        crate::options::defaults()
    }
}

/// How a trained model runs at inference: how x_CDR is sampled, the seed of the sampling noise
/// (each image's stream is [`crate::rng::image_noise`] of it), and rows per forward pass of the
/// heads. Runs carry theirs in their training config ([`TrainConfig::inference`]), bundles in
/// `bundle.json`; `eval` and `export` take it as flags.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct Inference {
    #[command(flatten)]
    pub sampler: SamplerConfig,
    /// Seed of the sampling noise (with each image's key: same image, same answer).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Rows per forward pass of the heads.
    #[serde(default = "eval_batch")]
    #[arg(long = "eval-batch", value_name = "EVAL_BATCH", default_value_t = EVAL_BATCH, value_parser = crate::options::at_least_one::<usize>)]
    pub batch: usize,
}

fn eval_batch() -> usize {
    EVAL_BATCH
}

impl Default for Inference {
    fn default() -> Self {
        crate::options::defaults()
    }
}
