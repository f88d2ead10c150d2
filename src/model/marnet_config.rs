//! The MARNet head's configuration: which row of the paper's Table 2 (`Variant`), the loss
//! weights of eq. 13, 20 and 24, and the command-line options that build a [`MarnetConfig`].

use super::cdr::{Activation, CdrConfig, CdrTrainInput};
use super::diffusion::ScheduleConfig;
use super::fusion::Fusion;
use crate::align::Alignment;
use crate::align::team_tokens::TokenDims;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    /// Linear classifier on x_v.
    Baseline,
    /// + EMA: alignment (ITA) and a classifier on x_EMA.
    Ema,
    /// + MLP: the denoiser-shaped MLP mapping x_v to x_s, no diffusion.
    Mlp,
    /// + CDR: the conditional diffusion reconstruction alone.
    Cdr,
    /// EMA + CDR + fusion: full MARNet.
    Marnet,
}

impl Variant {
    pub const ALL: [Variant; 5] = [Variant::Baseline, Variant::Ema, Variant::Mlp, Variant::Cdr, Variant::Marnet];

    pub fn name(self) -> &'static str {
        match self {
            Variant::Baseline => "baseline",
            Variant::Ema => "ema",
            Variant::Mlp => "mlp",
            Variant::Cdr => "cdr",
            Variant::Marnet => "marnet",
        }
    }

    /// The row label used in Table 2.
    pub fn table_row(self) -> &'static str {
        match self {
            Variant::Baseline => "Baseline",
            Variant::Ema => "+EMA",
            Variant::Mlp => "+MLP",
            Variant::Cdr => "+CDR(MLP)",
            Variant::Marnet => "+Fusion (MARNet)",
        }
    }

    pub fn has_ema(self) -> bool {
        matches!(self, Variant::Ema | Variant::Marnet)
    }

    pub fn is_diffusive(self) -> bool {
        matches!(self, Variant::Cdr | Variant::Marnet)
    }
}

/// Loss weights of eq. 13 and 20: `a1 CE_ema + beta ITA + a2 CE_cdr + gamma MSE + CE_fused`
/// (flags `--ema-ce-weight`, `--align-weight`, `--cdr-ce-weight`, `--mse-weight`; the paper's
/// symbols `--a1`, `--beta`, `--a2`, `--gamma` remain as aliases).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct LossWeights {
    /// Loss weight a1 (alpha_1, eq. 13) of the EMA head's cross-entropy.
    #[arg(long = "ema-ce-weight", visible_alias = "a1", value_name = "A1", default_value_t = 1.0, value_parser = crate::options::non_negative)]
    pub a1: f64,
    /// Loss weight beta (eq. 13) of the alignment loss, whichever --align chooses (ITA in the
    /// paper). Not the diffusion noise schedule (that is --beta-start/--beta-end).
    #[arg(long = "align-weight", visible_alias = "beta", value_name = "BETA", default_value_t = 1.0, value_parser = crate::options::non_negative)]
    pub beta: f64,
    /// Loss weight a2 (alpha_2, eq. 20) of the CDR head's cross-entropy.
    #[arg(long = "cdr-ce-weight", visible_alias = "a2", value_name = "A2", default_value_t = 1.0, value_parser = crate::options::non_negative)]
    pub a2: f64,
    /// Loss weight gamma (eq. 20) of the reconstruction error (MSE, eq. 19: the squared L2 norm
    /// per sample in standardised text units; gamma = 1/Ds gives a per-dimension mean instead).
    #[arg(long = "mse-weight", visible_alias = "gamma", value_name = "GAMMA", default_value_t = 1.0, value_parser = crate::options::non_negative)]
    pub gamma: f64,
}

impl Default for LossWeights {
    fn default() -> Self {
        crate::options::defaults()
    }
}

/// The model's options, declared once with their defaults (the command line's flags): what
/// [`MarnetConfig`] holds besides the variant and the sizes the feature cache fixes.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct ModelOptions {
    /// How x_EMA and x_CDR are fused (eq. 24).
    #[arg(long, value_enum, default_value = "concat")]
    pub fusion: Fusion,
    /// EMA's alignment loss (the paper: ita; team-tokens needs a cache with token features:
    /// `extract --tokens` or `synth --tokens`).
    #[arg(long, value_enum, default_value = "ita")]
    pub align: Alignment,
    /// Dimension d of EMA's shared space, into which x_v and x_s are projected and aligned.
    #[arg(long = "dim", visible_alias = "d", value_name = "D", default_value_t = 256, value_parser = crate::options::at_least_one::<usize>)]
    pub d: usize,
    /// Width of the CDR denoiser MLP's hidden layers.
    #[arg(long, default_value_t = 1024, value_parser = crate::options::at_least_one::<usize>)]
    pub hidden: usize,
    /// Width of the denoiser's sinusoidal embedding of the diffusion step t (even).
    #[arg(long = "time-embedding-dim", visible_alias = "temb", value_name = "N", default_value_t = 128, value_parser = crate::options::positive_even)]
    pub temb: usize,
    /// Nonlinearity between the denoiser's layers.
    #[arg(long = "activation", visible_alias = "act", value_enum, default_value = "silu")]
    pub act: Activation,
    #[command(flatten)]
    pub schedule: ScheduleConfig,
    #[command(flatten)]
    pub weights: LossWeights,
    /// What the CDR and fused classifiers see in training: `noise` (the prediction at t = T from
    /// pure noise, x_v alone, as at inference), `sampled` (a DDIM sample from noise, gradient
    /// through its last step only) or `onestep` (the denoised x_s^t, which still holds the text).
    #[arg(long, value_enum, default_value = "noise")]
    pub cdr_train_input: CdrTrainInput,
    /// DDIM steps of `--cdr-train-input sampled`.
    #[arg(long, default_value_t = 4, value_parser = crate::options::at_least_one::<usize>)]
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

impl ModelOptions {
    /// The configuration of `variant` on features of these sizes.
    pub fn config(&self, variant: Variant, dv: usize, ds: usize, classes: usize) -> MarnetConfig {
        let o = self.clone();
        MarnetConfig {
            variant,
            fusion: o.fusion,
            align: o.align,
            dv,
            ds,
            classes,
            d: o.d,
            hidden: o.hidden,
            temb: o.temb,
            act: o.act,
            schedule: o.schedule,
            weights: o.weights,
            cdr_train_input: o.cdr_train_input,
            cdr_train_steps: o.cdr_train_steps,
            residual: o.residual,
            gate: o.gate,
            tokens: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MarnetConfig {
    pub variant: Variant,
    pub fusion: Fusion,
    /// The alignment loss of the EMA module (ITA in the paper; others for Table 1).
    pub align: Alignment,
    pub dv: usize,
    pub ds: usize,
    pub classes: usize,
    /// Shared EMA space dimension.
    pub d: usize,
    /// Denoiser width.
    pub hidden: usize,
    /// Time-embedding dimension.
    pub temb: usize,
    pub act: Activation,
    pub schedule: ScheduleConfig,
    pub weights: LossWeights,
    /// What the CDR and fused classifiers see in training.
    #[serde(default)]
    pub cdr_train_input: CdrTrainInput,
    /// DDIM steps of the `sampled` training input.
    #[serde(default = "default_train_steps")]
    pub cdr_train_steps: usize,
    /// A linear image-only classifier whose logits are added to the EMA head's and (for the
    /// feature fusions) the fused head's; variants with EMA only.
    #[serde(default)]
    pub residual: bool,
    /// MARNet only: after training, fit on validation a weight w in [0, 1] and predict
    /// `(1 - w) p_EMA + w p_fused` (a late fusion of the heads' class probabilities).
    #[serde(default)]
    pub gate: bool,
    /// Widths of the cache's tokens when the alignment trains on them (`team-tokens`); set by
    /// training from the cache ([`MarnetConfig::with_cache_tokens`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<TokenDims>,
}

/// For configs saved before the option existed.
fn default_train_steps() -> usize {
    crate::options::defaults::<ModelOptions>().cdr_train_steps
}

impl MarnetConfig {
    /// `variant` with every option at its default.
    pub fn new(variant: Variant, dv: usize, ds: usize, classes: usize) -> Self {
        crate::options::defaults::<ModelOptions>().config(variant, dv, ds, classes)
    }

    /// Whether training gathers the batch's token features: a variant with EMA whose
    /// alignment is token-level.
    pub fn needs_tokens(&self) -> bool {
        self.variant.has_ema() && self.align.needs_tokens()
    }

    /// This configuration with `tokens` set from the training split of `cache` when
    /// [`Self::needs_tokens`], cleared otherwise. Errors name the cache's train file when it
    /// holds no tokens.
    pub fn with_cache_tokens(&self, cache: &crate::features::FeatureCache) -> anyhow::Result<Self> {
        let mut cfg = self.clone();
        cfg.tokens = None;
        if cfg.needs_tokens() {
            let t = &cache.train;
            let (Some(v), Some(s)) = (&t.visual_tokens, &t.text_tokens) else {
                let path = crate::features::FeatureCache::split_path(&cache.dir, "train");
                let missing = if t.visual_tokens.is_none() { "visual_tokens" } else { "text_tokens" };
                let fold = if cache.fold.is_some() { " (a fold of every split's rows: each split must have tokens)" } else { "" };
                anyhow::bail!(
                    "{}: --align {} trains on token features, and this cache has no `{missing}`{fold}; extract it with `marnet extract --tokens` (or `marnet synth --tokens`)",
                    path.display(),
                    cfg.align.name()
                );
            };
            cfg.tokens = Some(TokenDims { visual: v.dim, text: s.dim });
        }
        Ok(cfg)
    }

    /// What training this configuration on `cache` would refuse before its first step, found
    /// without training: a token-level alignment on a cache without tokens, a noise schedule that
    /// [`Schedule::new`](super::diffusion::Schedule::new) refuses for a diffusive variant. A table
    /// checks every row with it up front.
    pub fn check(&self, cache: &crate::features::FeatureCache) -> anyhow::Result<()> {
        self.with_cache_tokens(cache)?;
        if self.variant.is_diffusive() {
            super::diffusion::Schedule::new(&self.schedule)?;
        }
        Ok(())
    }

    /// Whether the model has the late-fusion gate (`gate` applies to MARNet only).
    pub fn gated(&self) -> bool {
        self.gate && self.variant == Variant::Marnet
    }

    pub(crate) fn cdr(&self) -> CdrConfig {
        CdrConfig { dv: self.dv, ds: self.ds, hidden: self.hidden, temb: self.temb, act: self.act, schedule: self.schedule }
    }
}
