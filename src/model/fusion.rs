//! Multi-modal embedding fusion (paper section 3.4, eq. 24).

use crate::nn::linear::{Linear, linear};
use candle_core::{D, Module, Result, Tensor};
use candle_nn::{VarBuilder, ops::log_softmax};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Fusion {
    /// Classifier on `[x_EMA, x_CDR]`.
    Concat,
    /// Classifier on `x_EMA + P x_CDR` (P = identity when the dims agree).
    Add,
    /// Classifier on `x_EMA * P x_CDR`.
    Mul,
    /// CF-VQA's SUM [25]: `log sigmoid(z1 + z2)` of the two heads' logits.
    Sum,
    /// CF-VQA's harmonic mean [25]: `log(Z / (1 + Z))`, `Z = sigmoid(z1) * sigmoid(z2)`.
    Hm,
    /// The plain sum of the two heads' logits (a product of their softmax distributions).
    Logitsum,
    /// The normalised harmonic mean `2 p1 p2 / (p1 + p2)` of the two heads' softmax probabilities.
    Hmprob,
}

impl Fusion {
    pub const ALL: [Fusion; 7] = [Fusion::Concat, Fusion::Add, Fusion::Mul, Fusion::Sum, Fusion::Hm, Fusion::Logitsum, Fusion::Hmprob];
}

/// What the fusion sees: both representations and both heads' logits.
pub struct FusionInput<'a> {
    pub x_ema: &'a Tensor,
    pub x_cdr: &'a Tensor,
    pub ema_logits: &'a Tensor,
    pub cdr_logits: &'a Tensor,
}

#[derive(Debug, Clone)]
pub struct FusionHead {
    mode: Fusion,
    proj: Option<Linear>,
    cls: Option<Linear>,
}

impl FusionHead {
    /// `d`: dim of x_EMA, `ds`: dim of x_CDR.
    pub fn load(vb: VarBuilder, mode: Fusion, d: usize, ds: usize, classes: usize) -> Result<Self> {
        let (proj, cls) = match mode {
            Fusion::Concat => (None, Some(linear(d + ds, classes, vb.pp("cls"))?)),
            Fusion::Add | Fusion::Mul => {
                let proj = if d == ds { None } else { Some(linear(ds, d, vb.pp("proj"))?) };
                (proj, Some(linear(d, classes, vb.pp("cls"))?))
            }
            Fusion::Sum | Fusion::Hm | Fusion::Logitsum | Fusion::Hmprob => (None, None),
        };
        Ok(Self { mode, proj, cls })
    }

    /// Eq. 24: fused class scores; cross-entropy (a log-softmax over classes) is applied to
    /// them as to logits, as CF-VQA trains its fused scores.
    pub fn forward(&self, x: &FusionInput) -> Result<Tensor> {
        let projected = || match &self.proj {
            Some(p) => p.forward(x.x_cdr),
            None => Ok(x.x_cdr.clone()),
        };
        let cls = || self.cls.as_ref().expect("mode has a classifier");
        match self.mode {
            Fusion::Concat => cls().forward(&Tensor::cat(&[x.x_ema, x.x_cdr], 1)?),
            Fusion::Add => cls().forward(&(x.x_ema + projected()?)?),
            Fusion::Mul => cls().forward(&(x.x_ema * projected()?)?),
            Fusion::Sum => log_sigmoid(&(x.ema_logits + x.cdr_logits)?),
            Fusion::Hm => cfvqa_harmonic(x.ema_logits, x.cdr_logits),
            Fusion::Logitsum => x.ema_logits + x.cdr_logits,
            Fusion::Hmprob => harmonic_mean_log_probs(x.ema_logits, x.cdr_logits),
        }
    }
}

/// `log sigmoid(x) = min(x, 0) - log(1 + exp(-|x|))`, stable for large |x|.
pub fn log_sigmoid(x: &Tensor) -> Result<Tensor> {
    let soft = ((x.abs()?.neg()?.exp()? + 1.0)?).log()?;
    x.minimum(0f32)? - soft
}

/// CF-VQA's HM (Niu et al., CVPR 2021, [25]): `log(Z / (1 + Z))` with
/// `Z = sigmoid(z1) * sigmoid(z2)`, as `log Z - log(1 + Z)` in log space.
pub fn cfvqa_harmonic(logits1: &Tensor, logits2: &Tensor) -> Result<Tensor> {
    let log_z = (log_sigmoid(logits1)? + log_sigmoid(logits2)?)?;
    // log Z <= 0, so exp(log Z) <= 1 and log(1 + Z) is stable.
    let log_1pz = (log_z.exp()? + 1.0)?.log()?;
    log_z - log_1pz
}

/// `log` of the normalised harmonic mean `2 p1 p2 / (p1 + p2)` of two softmax distributions.
pub fn harmonic_mean_log_probs(logits1: &Tensor, logits2: &Tensor) -> Result<Tensor> {
    let (l1, l2) = (log_softmax(logits1, D::Minus1)?, log_softmax(logits2, D::Minus1)?);
    let m = l1.maximum(&l2)?;
    let log_sum = (&m + ((&l1 - &m)?.exp()? + (&l2 - &m)?.exp()?)?.log()?)?;
    let lh = ((l1 + l2)? - log_sum)? + 2f64.ln();
    log_softmax(&lh?, D::Minus1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    #[test]
    fn harmonic_mean_on_hand_made_probabilities() -> Result<()> {
        let dev = Device::Cpu;
        let p1 = [0.5f32, 0.3, 0.2];
        let p2 = [0.2f32, 0.2, 0.6];
        let l1 = Tensor::new(&[p1.map(f32::ln)], &dev)?;
        let l2 = Tensor::new(&[p2.map(f32::ln)], &dev)?;
        let got = harmonic_mean_log_probs(&l1, &l2)?.exp()?.to_vec2::<f32>()?[0].clone();
        let h: Vec<f32> = p1.iter().zip(&p2).map(|(a, b)| 2.0 * a * b / (a + b)).collect();
        let z: f32 = h.iter().sum();
        for (g, w) in got.iter().zip(&h) {
            assert!((g - w / z).abs() < 1e-6, "{got:?} vs {h:?}/{z}");
        }
        Ok(())
    }

    /// SUM and HM against direct formulas on hand-made logits, including large magnitudes.
    #[test]
    fn cfvqa_sum_and_hm_match_their_formulas() -> Result<()> {
        let dev = Device::Cpu;
        let z1 = [2.0f32, -1.0, 0.0, 40.0, -40.0];
        let z2 = [0.5f32, 3.0, -2.0, 1.0, -3.0];
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        let (t1, t2) = (Tensor::new(&[z1], &dev)?, Tensor::new(&[z2], &dev)?);
        let sum = log_sigmoid(&(&t1 + &t2)?)?.to_vec2::<f32>()?[0].clone();
        let hm = cfvqa_harmonic(&t1, &t2)?.to_vec2::<f32>()?[0].clone();
        for i in 0..z1.len() {
            let (a, b) = (z1[i] as f64, z2[i] as f64);
            let want_sum = sig(a + b).ln();
            let z = sig(a) * sig(b);
            let want_hm = (z / (1.0 + z)).ln();
            assert!((sum[i] as f64 - want_sum).abs() < 1e-5 * want_sum.abs().max(1.0), "sum {i}: {} vs {want_sum}", sum[i]);
            assert!((hm[i] as f64 - want_hm).abs() < 1e-5 * want_hm.abs().max(1.0), "hm {i}: {} vs {want_hm}", hm[i]);
        }
        Ok(())
    }

    #[test]
    fn every_mode_gives_batch_by_classes() -> Result<()> {
        let dev = Device::Cpu;
        let (b, d, ds, c) = (4, 6, 5, 3);
        let x_ema = Tensor::ones((b, d), DType::F32, &dev)?;
        let x_cdr = Tensor::ones((b, ds), DType::F32, &dev)?;
        let el = Tensor::zeros((b, c), DType::F32, &dev)?;
        let cl = Tensor::new(&[[1f32, 0., 0.]; 4], &dev)?;
        let input = FusionInput { x_ema: &x_ema, x_cdr: &x_cdr, ema_logits: &el, cdr_logits: &cl };
        for mode in Fusion::ALL {
            let vm = VarMap::new();
            let head = FusionHead::load(VarBuilder::from_varmap(&vm, DType::F32, &dev), mode, d, ds, c)?;
            assert_eq!(head.forward(&input)?.dims(), &[b, c], "{mode:?}");
        }
        let sum = FusionHead::load(VarBuilder::from_varmap(&VarMap::new(), DType::F32, &dev), Fusion::Logitsum, d, ds, c)?;
        assert_eq!(sum.forward(&input)?.to_vec2::<f32>()?[0], vec![1., 0., 0.]);
        Ok(())
    }
}
