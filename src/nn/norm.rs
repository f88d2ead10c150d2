//! Normalisation helpers shared by the head, the alignment losses and the frozen encoders.

use crate::nn::cpu::f32_slice;
use crate::nn::vmath::fold_in_lanes;
use candle_core::{CpuStorage, CustomOp3, D, DType, Layout, Result, Shape, Tensor};

/// Rows scaled to unit L2 norm (norms clamped at 1e-12, as `F.normalize`).
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.maximum(1e-12)?;
    x.broadcast_div(&norm)
}

/// candle's `LayerNorm` (same weights, loaded by [`layer_norm`] as `candle_nn::layer_norm`
/// loads them) for the frozen encoders: on a contiguous f32 CPU input each row is summed over 16
/// lanes, mean first, then the squared deviations (candle's op sums `x` and `x^2` in one chain
/// of dependent additions each: the encoders' layer norms were bound by it); other inputs take
/// candle's. Neither path has a backward pass for a contiguous input (candle's op has none).
#[derive(Clone, Debug)]
pub struct LayerNorm(candle_nn::LayerNorm);

/// A layer norm of `size` features from `vb` (`weight` and `bias`, or the older `gamma` and `beta`).
pub fn layer_norm(size: usize, eps: f64, vb: candle_nn::VarBuilder) -> Result<LayerNorm> {
    candle_nn::layer_norm(size, eps, vb).map(LayerNorm)
}

impl candle_core::Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let ln = &self.0;
        match ln.bias() {
            Some(bias) if x.device().is_cpu() && x.dtype() == DType::F32 && x.is_contiguous() => {
                x.apply_op3_no_bwd(ln.weight(), bias, &RowNorm { eps: ln.eps() as f32 })
            }
            _ => x.apply(ln),
        }
    }
}

/// `y = (x - mean) / sqrt(var + eps) * w + b` over each row's last dimension, the mean and the
/// variance each by one pass of 16 lanes ([`fold_in_lanes`]).
struct RowNorm {
    eps: f32,
}

impl CustomOp3 for RowNorm {
    fn name(&self) -> &'static str {
        "layer-norm"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, ws: &CpuStorage, wl: &Layout, bs: &CpuStorage, bl: &Layout) -> Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let (x, w, b) = (f32_slice("layer-norm", xs, xl)?, f32_slice("layer-norm", ws, wl)?, f32_slice("layer-norm", bs, bl)?);
        let n = xl.dims().last().copied().unwrap_or(0);
        if n == 0 || w.len() != n || b.len() != n {
            candle_core::bail!("layer-norm: input {:?}, weight {:?}, bias {:?}", xl.shape(), wl.shape(), bl.shape());
        }
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(n).zip(x.par_chunks(n)).for_each(|(y, x)| {
            let mean = fold_in_lanes(x, 0.0, |s, v| s + v).iter().sum::<f32>() / n as f32;
            let var = fold_in_lanes(x, 0.0, |s, v| s + (v - mean) * (v - mean)).iter().sum::<f32>() / n as f32;
            let inv_std = (var + self.eps).sqrt().recip();
            y.iter_mut().zip(x).zip(w.iter().zip(b)).for_each(|((y, x), (w, b))| *y = (x - mean) * inv_std * w + b);
        });
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Module};

    /// Closer to the normalisation computed in f64 than candle's op, on rows whose mean is
    /// large against their spread (where its `E[x^2] - E[x]^2` loses digits).
    #[test]
    fn layer_norm_matches_f64() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = crate::rng::stream(8, "test", 0);
        // 770 features: 48 blocks of 16 lanes and 2 left over.
        let x = (crate::rng::randn(&mut rng, (3, 5, 770), &dev)? + 4.0)?;
        let (w, b) = (crate::rng::randn(&mut rng, 770, &dev)?, crate::rng::randn(&mut rng, 770, &dev)?);
        let ln = LayerNorm(candle_nn::LayerNorm::new(w.clone(), b.clone(), 1e-6));
        let (x64, w64, b64) = (x.to_dtype(DType::F64)?, w.to_dtype(DType::F64)?, b.to_dtype(DType::F64)?);
        let centred = x64.broadcast_sub(&x64.mean_keepdim(D::Minus1)?)?;
        let inv_std = (centred.sqr()?.mean_keepdim(D::Minus1)? + 1e-6)?.sqrt()?.recip()?;
        let exact = centred.broadcast_mul(&inv_std)?.broadcast_mul(&w64)?.broadcast_add(&b64)?;
        let error = |y: &Tensor| -> Result<f64> { (y.to_dtype(DType::F64)? - &exact)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>() };
        let (ours, candle) = (error(&ln.forward(&x)?)?, error(&x.apply(&ln.0)?)?);
        assert!(ours < 1e-5 && ours < candle, "ours {ours}, candle's {candle}");
        // A non-contiguous input takes candle's graph, which centres first too.
        let strided = ln.forward(&x.transpose(0, 1)?)?.transpose(0, 1)?;
        assert!(error(&strided)? < 5e-5, "candle's graph: {}", error(&strided)?);
        Ok(())
    }
}
