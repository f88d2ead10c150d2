//! Argument groups that several commands share, and what they turn into.

use anyhow::Result;
use clap::Args;
use marnet::align::Alignment;
use marnet::checkpoint::TrainConfig;
use marnet::features::FeatureCache;
use marnet::model::cdr::{Activation, CdrTrainInput, SampleAverage, SamplerConfig, SamplerMode};
use marnet::model::diffusion::ScheduleConfig;
use marnet::model::fusion::Fusion;
use marnet::model::marnet::{LossWeights, MarnetConfig, Variant};
use marnet::optim::AdamWConfig;
use std::path::{Path, PathBuf};

#[derive(Args, Clone)]
pub struct ModelArgs {
    /// How x_EMA and x_CDR are fused (eq. 24).
    #[arg(long, value_enum, default_value = "concat")]
    pub fusion: Fusion,
    /// EMA's alignment loss (the paper: ita; team-tokens needs a cache with token features:
    /// `extract --tokens` or `synth --tokens`).
    #[arg(long, value_enum, default_value = "ita")]
    pub align: Alignment,
    /// EMA shared-space dimension d.
    #[arg(long, default_value_t = 256)]
    pub d: usize,
    /// Denoiser MLP width.
    #[arg(long, default_value_t = 1024)]
    pub hidden: usize,
    /// Time-embedding dimension.
    #[arg(long, default_value_t = 128)]
    pub temb: usize,
    /// Denoiser nonlinearity.
    #[arg(long, value_enum, default_value = "silu")]
    pub act: Activation,
    /// Diffusion steps T.
    #[arg(long = "T", default_value_t = 50)]
    pub t_steps: usize,
    /// Linear beta schedule start (given for T = 1000, scaled by 1000/T).
    #[arg(long, default_value_t = 1e-4)]
    pub beta_start: f64,
    #[arg(long, default_value_t = 0.02)]
    pub beta_end: f64,
    /// Weight of the EMA cross-entropy (eq. 13).
    #[arg(long, default_value_t = 1.0)]
    a1: f64,
    /// Weight of the ITA loss (eq. 13).
    #[arg(long, default_value_t = 1.0)]
    pub beta: f64,
    /// Weight of the CDR cross-entropy (eq. 20).
    #[arg(long, default_value_t = 1.0)]
    a2: f64,
    /// Weight of the reconstruction error (eq. 20); eq. 19 is the squared L2 norm per sample
    /// in standardised text units (gamma = 1/Ds gives a per-dimension mean instead).
    #[arg(long, default_value_t = 1.0)]
    pub gamma: f64,
    /// What the CDR and fused classifiers see in training: `noise` (the prediction at t = T from
    /// pure noise, x_v alone, as at inference), `sampled` (a DDIM sample from noise, gradient
    /// through its last step only) or `onestep` (the denoised x_s^t, which still holds the text).
    #[arg(long, value_enum, default_value = "noise")]
    pub cdr_train_input: CdrTrainInput,
    /// DDIM steps of `--cdr-train-input sampled`.
    #[arg(long, default_value_t = 4)]
    pub cdr_train_steps: usize,
    /// Add a linear image-only classifier's logits to the EMA and fused heads (a residual path
    /// around the d-dimensional EMA bottleneck).
    #[arg(long)]
    pub residual: bool,
    /// MARNet: after training, fit on validation how much the prediction leans on the fused
    /// head: `(1 - w) p_EMA + w p_fused`, w in {0, 0.1, ..., 1} (ties: more fusion).
    #[arg(long)]
    pub gate: bool,
}

impl ModelArgs {
    pub fn config(&self, variant: Variant, dv: usize, ds: usize, classes: usize) -> MarnetConfig {
        MarnetConfig {
            fusion: self.fusion,
            align: self.align,
            d: self.d,
            hidden: self.hidden,
            temb: self.temb,
            act: self.act,
            schedule: ScheduleConfig { steps: self.t_steps, beta_start: self.beta_start, beta_end: self.beta_end },
            weights: LossWeights { a1: self.a1, beta: self.beta, a2: self.a2, gamma: self.gamma },
            cdr_train_input: self.cdr_train_input,
            cdr_train_steps: self.cdr_train_steps,
            residual: self.residual,
            gate: self.gate,
            ..MarnetConfig::new(variant, dv, ds, classes)
        }
    }
}

#[derive(Args, Clone)]
pub struct TableArgs {
    /// Feature cache folder (needs a test split).
    #[arg(long)]
    pub cache: PathBuf,
    /// Folder for the runs (`OUT/<row>/seed<k>`) and the table.
    #[arg(long)]
    pub out: PathBuf,
    /// Number of seeds (0..N).
    #[arg(long, default_value_t = 3)]
    pub seeds: u64,
    /// Leave-one-vendor-out: every group of rows (the first path component of the row ids: the
    /// vendor, for the emoji datasets) is the test split once, whatever split the cache put it
    /// in; runs go to OUT/fold-<vendor>/. The table reports each fold and the mean.
    #[arg(long)]
    pub leave_one_out: bool,
    /// With --leave-one-out, where validation comes from: `in-style` (one image each of 20% of
    /// the training rows' classes) or `group` (every image of the next training vendor: a style
    /// the model has not trained on, for choosing settings that must transfer).
    #[arg(long, value_enum, default_value = "in-style")]
    pub fold_val: marnet::folds::FoldVal,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub train: TrainArgs,
}

impl TableArgs {
    pub fn open(&self, variant: Variant) -> Result<(FeatureCache, MarnetConfig)> {
        let cache = FeatureCache::open(&self.cache)?;
        let base = self.model.config(variant, cache.train.dv, cache.train.ds, cache.num_classes());
        Ok((cache, base))
    }

    /// The table's settings: `what` and `first_column` head it, `file` names its files.
    pub fn spec(&self, what: &str, first_column: &str, file: &str) -> marnet::experiments::TableSpec {
        marnet::experiments::TableSpec {
            what: what.into(),
            first_column: first_column.into(),
            file: file.into(),
            out: self.out.clone(),
            seeds: (0..self.seeds).collect(),
            leave_one_out: self.leave_one_out,
            fold_val: self.fold_val,
            train: self.train.config(),
            command: std::env::args().collect::<Vec<_>>().join(" "),
        }
    }
}

#[derive(Args, Clone)]
pub struct ReportArgs {
    /// TrueType font for the figures [default: DejaVuSans.ttf in the assets folder, found as
    /// for `extract --assets`].
    #[arg(long)]
    pub font: Option<PathBuf>,
    /// Classes in the t-SNE figure (Fig. 3), and rows per class at most.
    #[arg(long, default_value_t = 5)]
    pub tsne_classes: usize,
    #[arg(long, default_value_t = 100)]
    pub tsne_per_class: usize,
    /// Test images in the top-5 figure (Fig. 4).
    #[arg(long, default_value_t = 6)]
    pub examples: usize,
}

impl ReportArgs {
    /// The options, with the font found in `assets` (or as `--assets` would be) unless given.
    pub fn options(&self, assets: Option<&Path>, progress: bool) -> Result<marnet::report::ReportOptions> {
        Ok(marnet::report::ReportOptions {
            font: match &self.font {
                Some(f) => f.clone(),
                None => marnet::assets::resolve(assets)?.join(marnet::assets::FONT),
            },
            tsne_classes: self.tsne_classes,
            tsne_per_class: self.tsne_per_class,
            examples: self.examples,
            progress,
        })
    }
}

#[derive(Args, Clone)]
pub struct SamplerArgs {
    /// Reverse process: `ancestral` (the paper, eq. 21-23) or `ddim` (deterministic).
    #[arg(long, value_enum, default_value = "ancestral")]
    pub sampler: SamplerMode,
    /// Reverse steps (a strided subsequence of 1..=T).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Draws of x_CDR per image.
    #[arg(long, default_value_t = 1)]
    pub samples: usize,
    /// How the draws combine: `probs` averages class probabilities (the posterior predictive),
    /// `features` averages the sampled features and classifies once.
    #[arg(long, value_enum, default_value = "probs")]
    pub average: SampleAverage,
}

impl SamplerArgs {
    pub fn config(&self) -> SamplerConfig {
        SamplerConfig { mode: self.sampler, steps: self.steps, samples: self.samples, average: self.average }
    }
}

#[derive(Args, Clone)]
pub struct TrainArgs {
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// AdamW decoupled weight decay.
    #[arg(long, default_value_t = 0.01)]
    pub weight_decay: f64,
    /// Clip the global gradient norm to this (0: off).
    #[arg(long, default_value_t = 0.0)]
    pub clip_grad: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Fraction of train held out for model selection when the cache has no `val`.
    #[arg(long, default_value_t = 0.1)]
    pub val_fraction: f64,
    #[arg(long, default_value_t = marnet::eval::EVAL_BATCH)]
    pub eval_batch: usize,
    #[command(flatten)]
    pub sampler: SamplerArgs,
}

impl TrainArgs {
    pub fn config(&self) -> TrainConfig {
        TrainConfig {
            epochs: self.epochs,
            batch: self.batch,
            optim: AdamWConfig { lr: self.lr, weight_decay: self.weight_decay, ..Default::default() },
            clip_grad: self.clip_grad,
            seed: self.seed,
            val_fraction: self.val_fraction,
            sampler: self.sampler.config(),
            eval_batch: self.eval_batch,
        }
    }
}
