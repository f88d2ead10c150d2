//! The MARNet head and its ablation variants (paper Table 2 rows), eq. 1-4.

use super::cdr::{Cdr, SampleAverage, SamplerConfig};
use super::denoiser::DenoiserMlp;
use super::ema::{Ema, EmaConfig};
use super::fusion::{Fusion, FusionHead, FusionInput};
use super::text_scale::TextScale;
use crate::align::team_tokens::TokenBatch;
use crate::nn::linear::{Linear, linear};
use crate::nn::loss::cross_entropy;
use crate::rng::{Noise, SeededRng};
use candle_core::D;
use candle_core::{Module, Result, Tensor, Var};
use candle_nn::{VarBuilder, ops::log_softmax};

pub use super::marnet_config::{LossWeights, MarnetConfig, ModelOptions, Variant};

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
        let cdr = match &self.recon {
            Some((Reconstructor::Diffusion(cdr), _)) => Some(cdr),
            _ => None,
        };
        let mut cdr_draws = None;
        let mut ema_out = None;
        if let Some(ema) = &self.ema {
            // Eq. 13: a1 CE + beta ITA (or the configured alignment loss).
            let labels = y.to_vec1::<u32>()?;
            let e = match cdr {
                // The CDR's draws come next in the stream: when the alignment draws nothing they
                // are taken on another thread beside the EMA's products, the same values in the
                // same order (on one thread, 0.16 ms of a training step that the other spent
                // waiting; BENCHMARKS.md, 2026-12-05, later).
                Some(cdr) if !self.cfg.align.draws_noise() => {
                    let (mut untouched, start, rows) = (rng.clone(), rng.get_word_pos(), xv.dim(0)?);
                    let (e, draws) = rayon::join(|| ema.forward_train(xv, xs, tokens, &labels, &mut untouched), || cdr.draw(rows, rng));
                    if untouched.get_word_pos() != start {
                        candle_core::bail!("the {} alignment drew from the step's random stream: Alignment::draws_noise must say so", self.cfg.align.name());
                    }
                    cdr_draws = Some(draws);
                    e?
                }
                _ => ema.forward_train(xv, xs, tokens, &labels, rng)?,
            };
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
                    let draws = match cdr_draws.take() {
                        Some(draws) => draws,
                        None => cdr.draw(xv.dim(0)?, rng),
                    };
                    // The classifiers' input from the same denoiser pass as the one-step prediction.
                    let seen = cdr.train_input(self.cfg.cdr_train_input, xv, self.cfg.cdr_train_steps, rng)?;
                    cdr.reconstruct_drawn(&z, xv, draws, seen)?
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
        // Dozens of short products (four a sampling step): at a serving batch (8 rows) the pool's
        // workers went to sleep between them; kept awake, `serve`'s heads took 2.2 ms a pass
        // instead of 3.5-3.9 (BENCHMARKS.md, 2026-12-07).
        crate::nn::pool::awake_on(xv.device(), || self.predict_here(xv, sampler, noise))
    }

    fn predict_here(&self, xv: &Tensor, sampler: &SamplerConfig, noise: &mut Noise) -> Result<Prediction> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::align::Alignment;
    use crate::checkpoint::LoadedModel;
    use crate::model::cdr::CdrTrainInput;
    use crate::rng::{randn, stream};
    use candle_core::Device;

    /// The CDR's draws taken beside the EMA's products: every pooled alignment trains (one that
    /// draws without [`Alignment::draws_noise`] saying so is an error), and with one that draws
    /// nothing the reconstruction loss and the stream's end are those of one pass after the other.
    #[test]
    fn the_cdr_draws_beside_the_ema_come_from_the_same_stream() -> anyhow::Result<()> {
        let dev = Device::Cpu;
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build()?;
        let mut data = stream(3, "test", 0);
        let (xv, xs) = (randn(&mut data, (16, 12), &dev)?, randn(&mut data, (16, 10), &dev)?);
        let y = Tensor::from_vec((0..16u32).map(|i| i % 5).collect::<Vec<_>>(), 16, &dev)?;
        for align in Alignment::ALL {
            // The one-step training input: the classifiers draw nothing more after eq. 15's draws.
            let cfg = MarnetConfig { align, cdr_train_input: CdrTrainInput::Onestep, ..MarnetConfig::new(Variant::Marnet, 12, 10, 5) };
            let model = LoadedModel::init(&cfg, 1, &dev)?.model;
            let mut rng = stream(4, "test", 0);
            let losses = pool.install(|| model.losses_with_tokens(&xv, &xs, None, &y, &mut rng))?;
            assert!(losses.iter().all(|(_, l)| l.to_scalar::<f32>().is_ok_and(f32::is_finite)), "{}", align.name());
            if !align.draws_noise() {
                // One pass after the other, from the same stream: eq. 15's draws come first.
                let Some((Reconstructor::Diffusion(cdr), _)) = &model.recon else { panic!("no CDR") };
                let mut alone = stream(4, "test", 0);
                let z = model.text_scale.as_ref().expect("text scale").standardise(&xs)?;
                let one_step = cdr.reconstruct_drawn(&z, &xv, cdr.draw(16, &mut alone), None)?.0;
                let mse = (one_step - &z)?.sqr()?.sum(1)?.mean(0)?;
                let want = (mse * model.cfg.weights.gamma)?.to_scalar::<f32>()?;
                let got = losses.iter().find(|(name, _)| *name == "mse").expect("an mse term").1.to_scalar::<f32>()?;
                assert_eq!(got.to_bits(), want.to_bits(), "{}: mse", align.name());
                assert_eq!(rng.get_word_pos(), alone.get_word_pos(), "{}", align.name());
            }
        }
        Ok(())
    }
}
