//! The MARNet head and its ablation variants (paper Table 2 rows), eq. 1-4.

use super::cdr::{Activation, Cdr, CdrConfig, CdrTrainInput, DenoiserMlp, SampleAverage, SamplerConfig};
use super::diffusion::ScheduleConfig;
use super::ema::{Ema, EmaConfig};
use super::fusion::{Fusion, FusionHead, FusionInput};
use super::text_scale::TextScale;
use crate::align::Alignment;
use crate::align::team_tokens::{TokenBatch, TokenDims};
use crate::nn::linear::{Linear, linear};
use crate::rng::{Noise, SeededRng};
use candle_core::D;
use candle_core::{Module, Result, Tensor, Var};
use candle_nn::{VarBuilder, loss::cross_entropy, ops::log_softmax};
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

    /// Whether the model has the late-fusion gate (`gate` applies to MARNet only).
    pub fn gated(&self) -> bool {
        self.gate && self.variant == Variant::Marnet
    }

    fn cdr(&self) -> CdrConfig {
        CdrConfig { dv: self.dv, ds: self.ds, hidden: self.hidden, temb: self.temb, act: self.act, schedule: self.schedule }
    }
}

/// How x_CDR is produced: a plain MLP of x_v (`mlp` row) or the conditional diffusion.
#[derive(Debug, Clone)]
enum Reconstructor {
    Mlp(DenoiserMlp),
    Diffusion(Cdr),
}

/// Outputs of inference on image-only input.
pub struct Prediction {
    /// Final class scores (logits; log-probabilities when K draws are averaged).
    pub logits: Tensor,
    pub ema_logits: Option<Tensor>,
    pub cdr_logits: Option<Tensor>,
    /// The reconstructed text feature in the text encoder's space (mean of the K draws).
    pub x_cdr: Option<Tensor>,
}

#[derive(Debug)]
pub struct Marnet {
    cfg: MarnetConfig,
    /// The baseline's classifier, or the residual image-only path.
    cls_v: Option<Linear>,
    ema: Option<Ema>,
    recon: Option<(Reconstructor, Linear)>,
    text_scale: Option<TextScale>,
    fusion: Option<FusionHead>,
    /// The late-fusion weight w of `gate` (a buffer: fitted on validation, never trained).
    gate: Option<Var>,
}

impl Marnet {
    pub fn load(vb: VarBuilder, cfg: &MarnetConfig) -> anyhow::Result<Self> {
        let v = cfg.variant;
        let cls_v = match v == Variant::Baseline || (cfg.residual && v.has_ema()) {
            true => Some(linear(cfg.dv, cfg.classes, vb.pp("cls_v"))?),
            false => None,
        };
        let ema = if v.has_ema() {
            let ecfg = EmaConfig { dv: cfg.dv, ds: cfg.ds, d: cfg.d, classes: cfg.classes, align: cfg.align, tokens: cfg.tokens };
            Some(Ema::load(vb.pp("ema"), &ecfg)?)
        } else {
            None
        };
        let recon = match v {
            Variant::Mlp => Some(Reconstructor::Mlp(DenoiserMlp::load(vb.pp("mlp"), cfg.dv, cfg.hidden, cfg.ds, cfg.act)?)),
            Variant::Cdr | Variant::Marnet => Some(Reconstructor::Diffusion(Cdr::load(vb.pp("cdr"), &cfg.cdr())?)),
            _ => None,
        };
        let text_scale = match recon {
            Some(_) => Some(TextScale::load(vb.pp("text_scale"), cfg.ds)?),
            None => None,
        };
        let recon = match recon {
            Some(r) => Some((r, linear(cfg.ds, cfg.classes, vb.pp("cls_cdr"))?)),
            None => None,
        };
        let fusion = match v {
            Variant::Marnet => Some(FusionHead::load(vb.pp("fusion"), cfg.fusion, cfg.d, cfg.ds, cfg.classes)?),
            _ => None,
        };
        let gate = match cfg.gated() {
            true => Some(Var::from_tensor(&vb.get_with_hints((), &format!("{}gate", crate::nn::BUFFER), candle_nn::Init::Const(1.0))?)?),
            false => None,
        };
        Ok(Self { cfg: cfg.clone(), cls_v, ema, recon, text_scale, fusion, gate })
    }

    pub fn config(&self) -> &MarnetConfig {
        &self.cfg
    }

    /// Sets the text standardisation from the training split's text features (row-major
    /// [n, ds]); a no-op for variants without a reconstruction.
    pub fn fit_text_scale(&self, text: &[f32]) -> Result<()> {
        match &self.text_scale {
            Some(s) => s.fit(text, self.cfg.ds),
            None => Ok(()),
        }
    }

    /// Sets the late-fusion weight w (a no-op without `gate`).
    pub fn set_gate(&self, w: f64) -> Result<()> {
        match &self.gate {
            Some(g) => g.set(&Tensor::new(w as f32, g.device())?),
            None => Ok(()),
        }
    }

    /// The residual image-only logits, when the variant has them on top of another head.
    fn residual(&self, xv: &Tensor) -> Result<Option<Tensor>> {
        match (&self.cls_v, self.cfg.variant) {
            (Some(cls), v) if v != Variant::Baseline => cls.forward(xv).map(Some),
            _ => Ok(None),
        }
    }

    /// Adds the residual logits (if any) to `logits`.
    fn plus(logits: Tensor, residual: &Option<Tensor>) -> Result<Tensor> {
        match residual {
            Some(r) => logits + r,
            None => Ok(logits),
        }
    }

    /// Whether the fusion reads the heads' logits (which already carry the residual).
    fn fuses_logits(&self) -> bool {
        matches!(self.cfg.fusion, Fusion::Sum | Fusion::Hm | Fusion::Logitsum | Fusion::Hmprob)
    }

    /// The weighted training losses on one batch, by name; their sum is the objective.
    pub fn losses(&self, xv: &Tensor, xs: &Tensor, y: &Tensor, rng: &mut SeededRng) -> Result<Vec<(&'static str, Tensor)>> {
        self.losses_with_tokens(xv, xs, None, y, rng)
    }

    /// [`Self::losses`] with the batch's token features, which the token-level alignment needs
    /// ([`MarnetConfig::needs_tokens`]); other configurations ignore them.
    pub fn losses_with_tokens(
        &self,
        xv: &Tensor,
        xs: &Tensor,
        tokens: Option<&TokenBatch>,
        y: &Tensor,
        rng: &mut SeededRng,
    ) -> Result<Vec<(&'static str, Tensor)>> {
        let w = &self.cfg.weights;
        let mut out = Vec::new();
        if self.cfg.variant == Variant::Baseline {
            let cls = self.cls_v.as_ref().expect("the baseline has a classifier");
            out.push(("ce", cross_entropy(&cls.forward(xv)?, y)?));
            return Ok(out);
        }
        let residual = self.residual(xv)?;
        let mut ema_out = None;
        if let Some(ema) = &self.ema {
            // Eq. 13: a1 CE + beta ITA (or the configured alignment loss).
            let e = ema.forward_train(xv, xs, tokens, &y.to_vec1::<u32>()?, rng)?;
            let logits = Self::plus(e.logits, &residual)?;
            out.push((self.cfg.align.name(), (e.align_loss * w.beta)?));
            out.push(("ce_ema", (cross_entropy(&logits, y)? * w.a1)?));
            ema_out = Some((e.x_ema, logits));
        }
        let mut recon_out = None;
        if let (Some((recon, cls)), Some(scale)) = (&self.recon, &self.text_scale) {
            let z = scale.standardise(xs)?;
            let (z_hat, seen) = match recon {
                Reconstructor::Mlp(mlp) => (mlp.forward(xv)?, None),
                Reconstructor::Diffusion(cdr) => {
                    let one_step = cdr.reconstruct(&z, xv, rng)?;
                    let seen = cdr.train_input(self.cfg.cdr_train_input, xv, self.cfg.cdr_train_steps, rng)?;
                    (one_step, seen)
                }
            };
            // Eq. 19: the squared L2 norm of the error per sample (standardised units), batch mean.
            let mse = (&z_hat - &z)?.sqr()?.sum(1)?.mean(0)?;
            let x_cdr = seen.unwrap_or(z_hat);
            let logits = cls.forward(&x_cdr)?;
            // Eq. 20: gamma MSE + a2 CE.
            out.push(("mse", (mse * w.gamma)?));
            out.push(("ce_cdr", (cross_entropy(&logits, y)? * w.a2)?));
            recon_out = Some((x_cdr, logits));
        }
        if let (Some(f), Some((x_ema, el)), Some((x_cdr, cl))) = (&self.fusion, &ema_out, &recon_out) {
            let fused = f.forward(&FusionInput { x_ema, x_cdr, ema_logits: el, cdr_logits: cl })?;
            let fused = if self.fuses_logits() { fused } else { Self::plus(fused, &residual)? };
            out.push(("ce_fused", cross_entropy(&fused, y)?));
        }
        Ok(out)
    }

    /// Image-only inference (eq. 1-4): x_v in, class scores out. With `sampler.samples = K > 1`
    /// the K draws of x_CDR are combined as `sampler.average` says.
    pub fn predict(&self, xv: &Tensor, sampler: &SamplerConfig, noise: &mut Noise) -> Result<Prediction> {
        if self.cfg.variant == Variant::Baseline {
            let cls = self.cls_v.as_ref().expect("the baseline has a classifier");
            return Ok(Prediction { logits: cls.forward(xv)?, ema_logits: None, cdr_logits: None, x_cdr: None });
        }
        let residual = self.residual(xv)?;
        let ema = match &self.ema {
            Some(ema) => {
                let x = ema.embed_visual(xv)?;
                let l = Self::plus(ema.classify(&x)?, &residual)?;
                Some((x, l))
            }
            None => None,
        };
        let Some(((recon, cls), scale)) = self.recon.as_ref().zip(self.text_scale.as_ref()) else {
            let (_, el) = ema.expect("a variant without reconstruction has EMA");
            return Ok(Prediction { logits: el.clone(), ema_logits: Some(el), cdr_logits: None, x_cdr: None });
        };
        let mut draws = match recon {
            Reconstructor::Mlp(mlp) => vec![mlp.forward(xv)?],
            Reconstructor::Diffusion(cdr) => cdr.sample(xv, sampler, noise)?,
        };
        let mean_draw = mean(&draws)?;
        if sampler.average == SampleAverage::Features {
            draws = vec![mean_draw.clone()];
        }
        // Per draw: the CDR head's and the final head's scores.
        let (mut cdr_scores, mut final_scores) = (vec![], vec![]);
        for x_cdr in &draws {
            let cl = cls.forward(x_cdr)?;
            let fl = match (&self.fusion, &ema) {
                (Some(f), Some((x_ema, el))) => {
                    let fused = f.forward(&FusionInput { x_ema, x_cdr, ema_logits: el, cdr_logits: &cl })?;
                    if self.fuses_logits() { fused } else { Self::plus(fused, &residual)? }
                }
                _ => cl.clone(),
            };
            cdr_scores.push(cl);
            final_scores.push(fl);
        }
        let mut logits = mean_probs_log(final_scores)?;
        if let (Some(g), Some((_, el))) = (&self.gate, &ema) {
            let w = g.as_tensor().to_scalar::<f32>()? as f64;
            let p = ((log_softmax(el, D::Minus1)?.exp()? * (1.0 - w))? + (log_softmax(&logits, D::Minus1)?.exp()? * w)?)?;
            logits = p.log()?;
        }
        Ok(Prediction { logits, ema_logits: ema.map(|(_, l)| l), cdr_logits: Some(mean_probs_log(cdr_scores)?), x_cdr: Some(scale.restore(&mean_draw)?) })
    }
}

/// The element-wise mean of equally shaped tensors.
fn mean(xs: &[Tensor]) -> Result<Tensor> {
    let sum = xs[1..].iter().try_fold(xs[0].clone(), |a, x| a + x)?;
    sum / xs.len() as f64
}

/// `log mean_k softmax(scores_k)`: the posterior predictive over K draws; one draw's scores
/// are returned unchanged.
fn mean_probs_log(mut scores: Vec<Tensor>) -> Result<Tensor> {
    if scores.len() == 1 {
        return Ok(scores.remove(0));
    }
    let probs: Vec<Tensor> = scores.iter().map(|s| log_softmax(s, D::Minus1)?.exp()).collect::<Result<_>>()?;
    mean(&probs)?.log()
}
