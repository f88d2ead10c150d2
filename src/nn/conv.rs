//! Inference-form 2-D convolutions of the frozen CNN encoders: a PyTorch `nn.Conv2d` weight
//! `[out, in, k, k]` with its bias, or with the `nn.BatchNorm2d` after it folded in at load
//! (`w * gamma / sqrt(var + eps)`, bias `beta - mean * gamma / sqrt(var + eps)`). EfficientNet-Lite's
//! depthwise convolution is [`crate::nn::depthwise`].

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

/// What follows a convolution's product in the frozen CNN encoders, in place on its output `y`
/// `[N, C, H, W]` (contiguous, held by nothing else, and recording no graph): each channel's `bias`, then ReLU6 if
/// asked, then `residual` (`y`'s shape) added. The bits of `broadcast_add`, `clamp(0, 6)` and `+`
/// one after the other, in one pass over `y` instead of three that each wrote a new tensor
/// (EfficientNet-Lite0 ran those passes on candle's elementwise pool: 17% of `serve`'s CPU time
/// on a Zen 5; BENCHMARKS.md, 2026-12-06, evening). Other devices run those three ops.
pub(crate) fn finish_channels(y: Tensor, bias: &Tensor, relu6: bool, residual: Option<&Tensor>) -> Result<Tensor> {
    // In place: no gradient could flow through the bias, ReLU6 or residual.
    debug_assert!(!y.track_op(), "finish_channels on a tensor that records its graph");
    if !y.device().is_cpu() {
        let y = y.broadcast_add(&bias.reshape((1, (), 1, 1))?)?;
        let y = if relu6 { y.clamp(0f32, 6f32)? } else { y };
        return match residual {
            Some(r) => y + r,
            None => Ok(y),
        };
    }
    let (_, c, h, w) = y.dims4()?;
    let op = ChannelEpilogue { channels: c, plane: h * w, relu6 };
    match residual {
        Some(r) => y.inplace_op3(&bias.contiguous()?, &r.contiguous()?, &op)?,
        None => y.inplace_op2(&bias.contiguous()?, &op)?,
    }
    Ok(y)
}

/// [`finish_channels`]'s pass, over blocks of whole channel planes on the thread pool.
struct ChannelEpilogue {
    channels: usize,
    plane: usize,
    relu6: bool,
}

impl ChannelEpilogue {
    fn apply(&self, y: &mut [f32], bias: &[f32], residual: Option<&[f32]>) -> Result<()> {
        use rayon::prelude::*;
        if bias.len() != self.channels || !y.len().is_multiple_of(self.plane.max(1)) || residual.is_some_and(|r| r.len() != y.len()) {
            candle_core::bail!(
                "finish_channels: {} values, {} biases, planes of {}, residual {:?}",
                y.len(),
                bias.len(),
                self.plane,
                residual.map(<[f32]>::len)
            );
        }
        let plane = self.plane.max(1);
        // Tasks of at least 16K values: late layers have planes of 49.
        let per_task = (1usize << 14).div_ceil(plane);
        y.par_chunks_mut(plane * per_task).enumerate().for_each(|(task, block)| {
            for (i, p) in block.chunks_mut(plane).enumerate() {
                let index = task * per_task + i;
                let b = bias[index % self.channels];
                p.iter_mut().for_each(|v| *v += b);
                if self.relu6 {
                    p.iter_mut().for_each(|v| *v = v.clamp(0.0, 6.0));
                }
                if let Some(r) = residual {
                    p.iter_mut().zip(&r[index * plane..(index + 1) * plane]).for_each(|(v, &r)| *v += r);
                }
            }
        });
        Ok(())
    }
}

impl candle_core::InplaceOp2 for ChannelEpilogue {
    fn name(&self) -> &'static str {
        "finish-channels"
    }

    fn cpu_fwd(&self, y: &mut candle_core::CpuStorage, yl: &candle_core::Layout, b: &candle_core::CpuStorage, bl: &candle_core::Layout) -> Result<()> {
        self.apply(crate::nn::cpu::f32_slice_mut(self.name(), y, yl)?, crate::nn::cpu::f32_slice(self.name(), b, bl)?, None)
    }
}

impl candle_core::InplaceOp3 for ChannelEpilogue {
    fn name(&self) -> &'static str {
        "finish-channels"
    }

    fn cpu_fwd(
        &self,
        y: &mut candle_core::CpuStorage,
        yl: &candle_core::Layout,
        b: &candle_core::CpuStorage,
        bl: &candle_core::Layout,
        r: &candle_core::CpuStorage,
        rl: &candle_core::Layout,
    ) -> Result<()> {
        let name = candle_core::InplaceOp3::name(self);
        self.apply(crate::nn::cpu::f32_slice_mut(name, y, yl)?, crate::nn::cpu::f32_slice(name, b, bl)?, Some(crate::nn::cpu::f32_slice(name, r, rl)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fused pass gives the bits of the three ops, with and without ReLU6 and a residual,
    /// on planes smaller and larger than a task, with a NaN and a negative zero inside.
    #[test]
    fn finish_channels_gives_the_bits_of_the_three_ops() {
        let dev = candle_core::Device::Cpu;
        let mut rng = crate::rng::stream(6, "test", 0);
        for (n, c, h, w) in [(2, 3, 7, 7), (1, 5, 130, 129), (3, 1, 1, 1)] {
            let mut v = crate::rng::normal_vec(&mut rng, n * c * h * w);
            v.iter_mut().for_each(|x| *x *= 5.0);
            (v[0], v[1]) = (f32::NAN, -0.0);
            let y = Tensor::from_vec(v, (n, c, h, w), &dev).unwrap();
            let bias = Tensor::from_vec(crate::rng::normal_vec(&mut rng, c), c, &dev).unwrap();
            let residual = crate::rng::randn(&mut rng, (n, c, h, w), &dev).unwrap();
            for (relu6, res) in [(true, None), (false, None), (false, Some(&residual)), (true, Some(&residual))] {
                let want = y.broadcast_add(&bias.reshape((1, c, 1, 1)).unwrap()).unwrap();
                let want = if relu6 { want.clamp(0f32, 6f32).unwrap() } else { want };
                let want = res.map_or(want.clone(), |r| (want + r).unwrap());
                let got = finish_channels(y.copy().unwrap(), &bias, relu6, res).unwrap();
                let bits = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "{n}x{c}x{h}x{w} relu6 {relu6} residual {}", res.is_some());
            }
        }
    }
}
