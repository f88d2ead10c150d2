//! Per-dimension standardisation of the text feature x_s with training statistics.
//!
//! The diffusion of eq. 14-15 adds N(0, I) noise, so the diffused variable must be at unit scale
//! per dimension: sentence-encoder outputs are unit-norm (MiniLM: 384-d, about 0.05 per
//! dimension), and raw noise would erase them within a few of the T steps. CDR (and the +MLP
//! row) therefore work on `z = (x_s - mean) / std`; x_CDR is mapped back with [`TextScale::restore`]
//! before any comparison with x_s. The statistics are buffers (never trained), saved with the
//! weights, so they travel in checkpoints and bundles.

use crate::nn::BUFFER;
use candle_core::{Result, Tensor, Var};
use candle_nn::{Init, VarBuilder};

/// Smallest standard deviation used: a constant dimension is centred, not blown up.
const MIN_STD: f64 = 1e-6;

#[derive(Debug, Clone)]
pub struct TextScale {
    mean: Var,
    std: Var,
}

impl TextScale {
    /// Identity statistics (mean 0, std 1) until [`TextScale::fit`] or a checkpoint sets them.
    pub fn load(vb: VarBuilder, ds: usize) -> Result<Self> {
        let buffer = |name: &str, init: f64| -> Result<Var> { Var::from_tensor(&vb.get_with_hints(ds, &format!("{BUFFER}{name}"), Init::Const(init))?) };
        Ok(Self { mean: buffer("mean", 0.0)?, std: buffer("std", 1.0)? })
    }

    /// Sets the statistics from the training split's text features (row-major [n, ds]).
    pub fn fit(&self, text: &[f32], ds: usize) -> Result<()> {
        let n = (text.len() / ds.max(1)) as f64;
        let mut mean = vec![0f64; ds];
        let mut sq = vec![0f64; ds];
        for row in text.chunks_exact(ds) {
            for (j, &x) in row.iter().enumerate() {
                mean[j] += x as f64;
            }
        }
        mean.iter_mut().for_each(|m| *m /= n);
        for row in text.chunks_exact(ds) {
            for (j, &x) in row.iter().enumerate() {
                sq[j] += (x as f64 - mean[j]).powi(2);
            }
        }
        let std: Vec<f32> = sq.iter().map(|s| (s / n).sqrt().max(MIN_STD) as f32).collect();
        let dev = self.mean.device();
        self.mean.set(&Tensor::from_vec(mean.iter().map(|&m| m as f32).collect(), ds, dev)?)?;
        self.std.set(&Tensor::from_vec(std, ds, dev)?)
    }

    /// `z = (x_s - mean) / std`, row-wise.
    /// The statistics enter detached: as buffers they get no gradient, and so a product with
    /// only data inputs (the denoiser's first layer) computes no input gradient either.
    pub fn standardise(&self, xs: &Tensor) -> Result<Tensor> {
        xs.broadcast_sub(&self.mean.as_tensor().detach())?.broadcast_div(&self.std.as_tensor().detach())
    }

    /// `x_s = z * std + mean`: a standardised feature back in the text encoder's space.
    pub fn restore(&self, z: &Tensor) -> Result<Tensor> {
        z.broadcast_mul(&self.std.as_tensor().detach())?.broadcast_add(&self.mean.as_tensor().detach())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    #[test]
    fn fit_standardises_and_restore_inverts() -> Result<()> {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let s = TextScale::load(VarBuilder::from_varmap(&vm, DType::F32, &dev), 2)?;
        // Column 0: mean 2, std 1; column 1: constant 5 (std floored, centred to 0).
        let rows = [1f32, 5., 3., 5., 1., 5., 3., 5.];
        s.fit(&rows, 2)?;
        let x = Tensor::from_slice(&rows, (4, 2), &dev)?;
        let z = s.standardise(&x)?;
        assert_eq!(z.to_vec2::<f32>()?, vec![vec![-1., 0.], vec![1., 0.], vec![-1., 0.], vec![1., 0.]]);
        let back = s.restore(&z)?.to_vec2::<f32>()?;
        assert_eq!(back.concat(), rows.to_vec());
        // The statistics are buffers: saved with the weights, excluded from training.
        let names: Vec<String> = vm.data().lock().unwrap().keys().cloned().collect();
        assert!(names.iter().all(|n| n.starts_with(BUFFER)), "{names:?}");
        Ok(())
    }
}
