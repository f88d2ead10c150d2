//! The MARNet head and its ablation variants (paper Table 2 rows), eq. 1-4.

use super::cdr::{Activation, Cdr, CdrConfig, DenoiserMlp, SamplerConfig};
use super::diffusion::ScheduleConfig;
use super::ema::{Ema, EmaConfig};
use crate::align::Alignment;
use super::fusion::{Fusion, FusionHead, FusionInput};
use candle_core::{Module, Result, Tensor};
use super::linear::{Linear, linear};
use candle_nn::{VarBuilder, loss::cross_entropy};
use crate::rng::{Noise, SeededRng};
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

    fn has_ema(self) -> bool {
        matches!(self, Variant::Ema | Variant::Marnet)
    }

    pub fn is_diffusive(self) -> bool {
        matches!(self, Variant::Cdr | Variant::Marnet)
    }
}

/// Loss weights of eq. 13 and 20: `a1 CE_ema + beta ITA + a2 CE_cdr + gamma MSE + CE_fused`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossWeights {
    pub a1: f64,
    pub beta: f64,
    pub a2: f64,
    pub gamma: f64,
}

impl Default for LossWeights {
    fn default() -> Self {
        Self { a1: 1.0, beta: 1.0, a2: 1.0, gamma: 1.0 }
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
}

impl MarnetConfig {
    pub fn new(variant: Variant, dv: usize, ds: usize, classes: usize) -> Self {
        Self {
            variant,
            fusion: Fusion::Concat,
            align: Alignment::Ita,
            dv,
            ds,
            classes,
            d: 256,
            hidden: 1024,
            temb: 128,
            act: Activation::Silu,
            schedule: ScheduleConfig::default(),
            weights: LossWeights::default(),
        }
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
    /// Final logits (for `hm` fusion, log-probabilities).
    pub logits: Tensor,
    pub ema_logits: Option<Tensor>,
    pub cdr_logits: Option<Tensor>,
    pub x_cdr: Option<Tensor>,
}

#[derive(Debug)]
pub struct Marnet {
    cfg: MarnetConfig,
    cls_v: Option<Linear>,
    ema: Option<Ema>,
    recon: Option<(Reconstructor, Linear)>,
    fusion: Option<FusionHead>,
}

impl Marnet {
    pub fn load(vb: VarBuilder, cfg: &MarnetConfig) -> anyhow::Result<Self> {
        let v = cfg.variant;
        let cls_v = match v {
            Variant::Baseline => Some(linear(cfg.dv, cfg.classes, vb.pp("cls_v"))?),
            _ => None,
        };
        let ema = if v.has_ema() {
            let ecfg = EmaConfig { dv: cfg.dv, ds: cfg.ds, d: cfg.d, classes: cfg.classes, align: cfg.align };
            Some(Ema::load(vb.pp("ema"), &ecfg)?)
        } else {
            None
        };
        let recon = match v {
            Variant::Mlp => Some(Reconstructor::Mlp(DenoiserMlp::load(vb.pp("mlp"), cfg.dv, cfg.hidden, cfg.ds, cfg.act)?)),
            Variant::Cdr | Variant::Marnet => Some(Reconstructor::Diffusion(Cdr::load(vb.pp("cdr"), &cfg.cdr())?)),
            _ => None,
        };
        let recon = match recon {
            Some(r) => Some((r, linear(cfg.ds, cfg.classes, vb.pp("cls_cdr"))?)),
            None => None,
        };
        let fusion = match v {
            Variant::Marnet => Some(FusionHead::load(vb.pp("fusion"), cfg.fusion, cfg.d, cfg.ds, cfg.classes)?),
            _ => None,
        };
        Ok(Self { cfg: cfg.clone(), cls_v, ema, recon, fusion })
    }

    pub fn config(&self) -> &MarnetConfig {
        &self.cfg
    }

    /// The weighted training losses on one batch, by name; their sum is the objective.
    pub fn losses(&self, xv: &Tensor, xs: &Tensor, y: &Tensor, rng: &mut SeededRng) -> Result<Vec<(&'static str, Tensor)>> {
        let w = &self.cfg.weights;
        let mut out = Vec::new();
        if let Some(cls) = &self.cls_v {
            out.push(("ce", cross_entropy(&cls.forward(xv)?, y)?));
        }
        let mut ema_out = None;
        if let Some(ema) = &self.ema {
            // Eq. 13: a1 CE + beta ITA (or the configured alignment loss).
            let e = ema.forward_train(xv, xs, &y.to_vec1::<u32>()?, rng)?;
            out.push((self.cfg.align.name(), (e.align_loss * w.beta)?));
            out.push(("ce_ema", (cross_entropy(&e.logits, y)? * w.a1)?));
            ema_out = Some((e.x_ema, e.logits));
        }
        let mut recon_out = None;
        if let Some((recon, cls)) = &self.recon {
            let x_cdr = match recon {
                Reconstructor::Mlp(mlp) => mlp.forward(xv)?,
                Reconstructor::Diffusion(cdr) => cdr.reconstruct(xs, xv, rng)?,
            };
            let logits = cls.forward(&x_cdr)?;
            // Eq. 19-20: gamma MSE + a2 CE.
            out.push(("mse", (candle_nn::loss::mse(&x_cdr, xs)? * w.gamma)?));
            out.push(("ce_cdr", (cross_entropy(&logits, y)? * w.a2)?));
            recon_out = Some((x_cdr, logits));
        }
        if let (Some(f), Some((x_ema, el)), Some((x_cdr, cl))) = (&self.fusion, &ema_out, &recon_out) {
            let fused = f.forward(&FusionInput { x_ema, x_cdr, ema_logits: el, cdr_logits: cl })?;
            out.push(("ce_fused", cross_entropy(&fused, y)?));
        }
        Ok(out)
    }

    /// Image-only inference (eq. 1-4): x_v in, class logits out.
    pub fn predict(&self, xv: &Tensor, sampler: &SamplerConfig, noise: &mut Noise) -> Result<Prediction> {
        if let Some(cls) = &self.cls_v {
            return Ok(Prediction { logits: cls.forward(xv)?, ema_logits: None, cdr_logits: None, x_cdr: None });
        }
        let ema = match &self.ema {
            Some(ema) => {
                let x = ema.embed_visual(xv)?;
                let l = ema.classify(&x)?;
                Some((x, l))
            }
            None => None,
        };
        let recon = match &self.recon {
            Some((r, cls)) => {
                let x = match r {
                    Reconstructor::Mlp(mlp) => mlp.forward(xv)?,
                    Reconstructor::Diffusion(cdr) => cdr.sample(xv, sampler, noise)?,
                };
                let l = cls.forward(&x)?;
                Some((x, l))
            }
            None => None,
        };
        let logits = match (&self.fusion, &ema, &recon) {
            (Some(f), Some((x_ema, el)), Some((x_cdr, cl))) => {
                f.forward(&FusionInput { x_ema, x_cdr, ema_logits: el, cdr_logits: cl })?
            }
            (_, Some((_, el)), None) => el.clone(),
            (_, None, Some((_, cl))) => cl.clone(),
            _ => candle_core::bail!("variant {:?} has no prediction head", self.cfg.variant),
        };
        Ok(Prediction {
            logits,
            ema_logits: ema.map(|(_, l)| l),
            x_cdr: recon.as_ref().map(|(x, _)| x.clone()),
            cdr_logits: recon.map(|(_, l)| l),
        })
    }
}
