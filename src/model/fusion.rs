//! Multi-modal embedding fusion (paper section 3.4, eq. 24).

use candle_core::{D, Module, Result, Tensor};
use super::linear::{Linear, linear};
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
    /// Sum of the two heads' logits.
    Sum,
    /// Harmonic mean of the two heads' probabilities.
    Hm,
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
            Fusion::Sum | Fusion::Hm => (None, None),
        };
        Ok(Self { mode, proj, cls })
    }

    /// Eq. 24: fused logits (for `hm`, normalised log-probabilities).
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
            Fusion::Sum => x.ema_logits + x.cdr_logits,
            Fusion::Hm => harmonic_mean_log_probs(x.ema_logits, x.cdr_logits),
        }
    }
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

    #[test]
    fn every_mode_gives_batch_by_classes() -> Result<()> {
        let dev = Device::Cpu;
        let (b, d, ds, c) = (4, 6, 5, 3);
        let x_ema = Tensor::ones((b, d), DType::F32, &dev)?;
        let x_cdr = Tensor::ones((b, ds), DType::F32, &dev)?;
        let el = Tensor::zeros((b, c), DType::F32, &dev)?;
        let cl = Tensor::new(&[[1f32, 0., 0.]; 4], &dev)?;
        let input = FusionInput { x_ema: &x_ema, x_cdr: &x_cdr, ema_logits: &el, cdr_logits: &cl };
        for mode in [Fusion::Concat, Fusion::Add, Fusion::Mul, Fusion::Sum, Fusion::Hm] {
            let vm = VarMap::new();
            let head = FusionHead::load(VarBuilder::from_varmap(&vm, DType::F32, &dev), mode, d, ds, c)?;
            assert_eq!(head.forward(&input)?.dims(), &[b, c], "{mode:?}");
        }
        let sum = FusionHead::load(VarBuilder::from_varmap(&VarMap::new(), DType::F32, &dev), Fusion::Sum, d, ds, c)?;
        assert_eq!(sum.forward(&input)?.to_vec2::<f32>()?[0], vec![1., 0., 0.]);
        Ok(())
    }
}
