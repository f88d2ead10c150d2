//! Inference-form 2-D convolutions of the frozen CNN encoders: a PyTorch `nn.Conv2d` weight
//! `[out, in, k, k]` with its bias, or with the `nn.BatchNorm2d` after it folded in at load
//! (`w * gamma / sqrt(var + eps)`, bias `beta - mean * gamma / sqrt(var + eps)`); and the
//! depthwise convolution of EfficientNet-Lite's blocks, as a CPU op.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

#[derive(Debug, Clone)]
pub struct Conv {
    weight: Tensor,
    /// `[1, out, 1, 1]`.
    bias: Tensor,
    stride: usize,
    padding: usize,
}

/// The per-channel `(scale, shift)` of an inference-form batch norm over `c` channels at `bn`
/// (`weight`, `bias`, `running_mean`, `running_var`): `y = x * scale + shift`.
pub fn batch_norm_affine(bn: &VarBuilder, c: usize, eps: f64) -> Result<(Tensor, Tensor)> {
    let (gamma, beta, mean, var) = (bn.get(c, "weight")?, bn.get(c, "bias")?, bn.get(c, "running_mean")?, bn.get(c, "running_var")?);
    let scale = (gamma / (var + eps)?.sqrt()?)?;
    let shift = (beta - (mean * &scale)?)?;
    Ok((scale, shift))
}

impl Conv {
    /// `weight` `[out, in, k, k]`, `bias` `[out]`.
    pub fn new(weight: Tensor, bias: &Tensor, stride: usize, padding: usize) -> Result<Self> {
        let bias = bias.reshape((1, (), 1, 1))?;
        Ok(Self { weight, bias, stride, padding })
    }

    /// A convolution with a bias (`conv.weight`, `conv.bias`), `(in, out, k)`.
    pub fn load(vb: &VarBuilder, (c_in, c_out, k): (usize, usize, usize), stride: usize, padding: usize) -> Result<Self> {
        Self::new(vb.get((c_out, c_in, k, k), "weight")?, &vb.get(c_out, "bias")?, stride, padding)
    }

    /// A bias-free convolution at `conv` followed by the batch norm at `bn`, folded into one.
    pub fn load_bn(conv: &VarBuilder, bn: &VarBuilder, (c_in, c_out, k): (usize, usize, usize), stride: usize, padding: usize, eps: f64) -> Result<Self> {
        let (scale, shift) = batch_norm_affine(bn, c_out, eps)?;
        let weight = conv.get((c_out, c_in, k, k), "weight")?.broadcast_mul(&scale.reshape((c_out, 1, 1, 1))?)?;
        Self::new(weight, &shift, stride, padding)
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias `[out]`.
    pub fn bias(&self) -> Result<Tensor> {
        self.bias.flatten_all()
    }

    /// `[N, in, H, W]` -> `[N, out, H', W']`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.conv2d(&self.weight, self.padding, self.stride, 1, 1)?.broadcast_add(&self.bias)
    }
}

/// Depthwise convolution (one kxk filter per channel) with implicit zero padding `(top, left)`
/// to `ceil(size / stride)` outputs, plus a per-channel bias and optional ReLU6; CPU, inference.
pub struct DepthwiseConv {
    pub stride: usize,
    pub pad: (usize, usize),
    pub relu6: bool,
}

impl candle_core::CustomOp3 for DepthwiseConv {
    fn name(&self) -> &'static str {
        "depthwise-conv2d"
    }

    fn cpu_fwd(
        &self,
        xs: &candle_core::CpuStorage,
        xl: &candle_core::Layout,
        ws: &candle_core::CpuStorage,
        wl: &candle_core::Layout,
        bs: &candle_core::CpuStorage,
        bl: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::CpuStorage;
        use rayon::prelude::*;
        let name = "depthwise-conv2d";
        let (x, w, bias) = (crate::nn::cpu::f32_slice(name, xs, xl)?, crate::nn::cpu::f32_slice(name, ws, wl)?, crate::nn::cpu::f32_slice(name, bs, bl)?);
        let (n, c, h, wd) = xl.shape().dims4()?;
        let k = wl.shape().dims4()?.2;
        let (s, (pt, pl)) = (self.stride, self.pad);
        let (oh, ow) = (h.div_ceil(s), wd.div_ceil(s));
        let mut out = vec![0f32; n * c * oh * ow];
        out.par_chunks_mut(oh * ow).enumerate().for_each(|(plane, o)| {
            let ch = plane % c;
            let src = &x[plane * h * wd..(plane + 1) * h * wd];
            let filt = &w[ch * k * k..(ch + 1) * k * k];
            o.fill(bias[ch]);
            for oy in 0..oh {
                let orow = &mut o[oy * ow..(oy + 1) * ow];
                for ky in 0..k {
                    let Some(iy) = (oy * s + ky).checked_sub(pt).filter(|&iy| iy < h) else { continue };
                    let srow = &src[iy * wd..(iy + 1) * wd];
                    for kx in 0..k {
                        let wv = filt[ky * k + kx];
                        // Output columns whose input column ox*s + kx - pl lies inside the row.
                        let lo = pl.saturating_sub(kx).div_ceil(s);
                        let hi = (wd + pl - kx).div_ceil(s).min(ow);
                        if lo >= hi {
                            continue;
                        }
                        if s == 1 {
                            let start = lo + kx - pl;
                            for (o, &v) in orow[lo..hi].iter_mut().zip(&srow[start..start + (hi - lo)]) {
                                *o += wv * v;
                            }
                        } else {
                            for ox in lo..hi {
                                orow[ox] += wv * srow[ox * s + kx - pl];
                            }
                        }
                    }
                }
            }
            if self.relu6 {
                o.iter_mut().for_each(|v| *v = v.clamp(0.0, 6.0));
            }
        });
        Ok((CpuStorage::F32(out), candle_core::Shape::from((n, c, oh, ow))))
    }
}
