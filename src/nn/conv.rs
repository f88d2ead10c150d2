//! Inference-form 2-D convolutions of the frozen CNN encoders: a PyTorch `nn.Conv2d` weight
//! `[out, in, k, k]` with its bias, or with the `nn.BatchNorm2d` after it folded in at load
//! (`w * gamma / sqrt(var + eps)`, bias `beta - mean * gamma / sqrt(var + eps)`). On the CPU they
//! run as products over tiles of im2col columns ([`crate::nn::im2col`]) with the bias, a
//! residual and the activation applied to each tile; EfficientNet-Lite's depthwise convolution is
//! [`crate::nn::depthwise`].

pub use crate::nn::im2col::Then;
use crate::nn::im2col::{Filters, Geometry};
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

/// Where a filter sits on its input: its stride, the zero padding above and left of the input,
/// and the output's height and width (the padding below and right is what that size needs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub stride: usize,
    pub pad: (usize, usize),
    pub out: (usize, usize),
}

impl Placement {
    /// PyTorch's `padding` on all four sides of an `h` x `w` input, for a `k` x `k` filter.
    pub fn symmetric(k: usize, stride: usize, padding: usize, (h, w): (usize, usize)) -> Result<Self> {
        let out = |n: usize| (n + 2 * padding).checked_sub(k).and_then(|d| d.checked_div(stride)).map(|d| d + 1);
        match (out(h), out(w)) {
            (Some(oh), Some(ow)) => Ok(Self { stride, pad: (padding, padding), out: (oh, ow) }),
            _ => candle_core::bail!("conv2d: a {k}x{k} filter at stride {stride}, padding {padding} does not fit a {h}x{w} input"),
        }
    }
}

/// `then(conv(x, weight) + bias + residual)` for `x` `[N, in, H, W]`, `weight` `[out, in, kh,
/// kw]`, `bias` `[out]` and `residual` `[N, out, H', W']`: on the CPU in one pass per tile
/// ([`crate::nn::im2col`]); elsewhere candle's ops.
pub fn conv2d(x: &Tensor, weight: &Tensor, bias: &Tensor, at: Placement, residual: Option<&Tensor>, then: Then) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let (cout, cw, kh, kw) = weight.dims4()?;
    let (oh, ow) = at.out;
    let g = Geometry { c, h, w, kh, kw, s: at.stride, top: at.pad.0, left: at.pad.1, oh, ow };
    if cw != c || bias.dims() != [cout] || at.stride == 0 || residual.is_some_and(|r| r.dims() != [n, cout, oh, ow]) {
        candle_core::bail!(
            "conv2d: input {:?}, weight {:?}, bias {:?}, {at:?}, residual {:?}",
            x.shape(),
            weight.shape(),
            bias.shape(),
            residual.map(Tensor::shape)
        );
    }
    if !(x.device().is_cpu() && x.dtype() == candle_core::DType::F32) {
        // The padding below and right that the output's size needs, then the output cut to it.
        let (bottom, right) =
            (((oh.max(1) - 1) * at.stride + kh).saturating_sub(h + at.pad.0), ((ow.max(1) - 1) * at.stride + kw).saturating_sub(w + at.pad.1));
        let padded = x.pad_with_zeros(2, at.pad.0, bottom)?.pad_with_zeros(3, at.pad.1, right)?;
        let y = padded.conv2d(weight, 0, at.stride, 1, 1)?.narrow(2, 0, oh)?.narrow(3, 0, ow)?;
        let y = y.broadcast_add(&bias.reshape((1, cout, 1, 1))?)?;
        let y = match residual {
            Some(r) => (y + r)?,
            None => y,
        };
        return match then {
            Then::Nothing => Ok(y),
            Then::Relu => y.relu(),
            Then::Relu6 => y.clamp(0f32, 6f32),
        };
    }
    let (x, weight, residual) = (x.contiguous()?, weight.contiguous()?, residual.map(Tensor::contiguous).transpose()?);
    let values = crate::nn::cpu::with_f32("conv2d", &x, |x| {
        crate::nn::cpu::with_f32("conv2d", &weight, |wv| {
            crate::nn::cpu::with_f32("conv2d", &bias.contiguous()?, |b| match &residual {
                Some(r) => crate::nn::cpu::with_f32("conv2d", r, |r| g.run(n, x, Filters { cout, weight: wv, bias: b }, Some(r), then)),
                None => Ok(g.run(n, x, Filters { cout, weight: wv, bias: b }, None, then)),
            })?
        })?
    })??;
    Tensor::from_vec(values, (n, cout, oh, ow), x.device())
}

#[derive(Debug, Clone)]
pub struct Conv {
    weight: Tensor,
    /// `[out]`.
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
        Ok(Self { weight: weight.contiguous()?, bias: bias.flatten_all()?, stride, padding })
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
        Ok(self.bias.clone())
    }

    /// `[N, in, H, W]` -> `[N, out, H', W']`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_then(x, None, Then::Nothing)
    }

    /// [`Self::forward`] with `residual` (the output's shape) added, then `then` (ResNet's skip
    /// connection and ReLU), in one pass over the output. (The encoders' filters are square.)
    pub fn forward_then(&self, x: &Tensor, residual: Option<&Tensor>, then: Then) -> Result<Tensor> {
        let k = self.weight.dim(2)?;
        let (_, _, h, w) = x.dims4()?;
        conv2d(x, &self.weight, &self.bias, Placement::symmetric(k, self.stride, self.padding, (h, w))?, residual, then)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// candle's ops, as the fallback runs them: the reference.
    fn reference(x: &Tensor, w: &Tensor, b: &Tensor, at: Placement, residual: Option<&Tensor>, then: Then) -> Tensor {
        let moved = |t: &Tensor| t.to_dtype(candle_core::DType::F64).unwrap();
        let got = conv2d(&moved(x), &moved(w), &moved(b), at, residual.map(moved).as_ref(), then).unwrap();
        got.to_dtype(candle_core::DType::F32).unwrap()
    }

    /// The tiled products agree with candle's convolution (in f64) for each kind of filter the
    /// encoders have: 3x3 and 7x7 with padding, strided, 1x1 read in place and strided, the
    /// asymmetric padding of EfficientNet-Lite's stem, planes of one tile and of many, output
    /// channels cut into blocks, a residual and each activation.
    #[test]
    fn tiled_products_match_candle() {
        let dev = candle_core::Device::Cpu;
        let mut rng = crate::rng::stream(8, "test", 0);
        let cases = [
            // (n, c, h, w), (cout, k), stride, pad, out
            ((2, 3, 17, 19), (10, 3), 1, (1, 1), (17, 19)),
            ((1, 3, 40, 38), (16, 7), 2, (3, 3), (20, 19)),
            ((2, 37, 9, 9), (70, 1), 1, (0, 0), (9, 9)),
            ((2, 24, 12, 13), (40, 1), 2, (0, 0), (6, 7)),
            ((3, 3, 24, 24), (8, 3), 2, (0, 0), (12, 12)),
            ((1, 5, 16, 16), (9, 3), 2, (0, 1), (8, 8)),
            ((1, 64, 7, 7), (96, 3), 1, (1, 1), (7, 7)),
            ((2, 16, 30, 30), (33, 3), 1, (1, 1), (30, 30)),
            // Tiles that start inside an output row: strided (320-pixel tiles over 19 x 19) and
            // read in place (640-pixel tiles over 33 x 33).
            ((1, 40, 37, 37), (16, 3), 2, (1, 1), (19, 19)),
            ((1, 200, 33, 33), (16, 1), 1, (0, 0), (33, 33)),
        ];
        for ((n, c, h, w), (cout, k), stride, pad, out) in cases {
            let at = Placement { stride, pad, out };
            let x = crate::rng::randn(&mut rng, (n, c, h, w), &dev).unwrap();
            let wt = (crate::rng::randn(&mut rng, (cout, c, k, k), &dev).unwrap() * 0.3).unwrap();
            let b = crate::rng::randn(&mut rng, cout, &dev).unwrap();
            let r = crate::rng::randn(&mut rng, (n, cout, out.0, out.1), &dev).unwrap();
            for (residual, then) in [(None, Then::Nothing), (None, Then::Relu), (Some(&r), Then::Relu), (None, Then::Relu6), (Some(&r), Then::Nothing)] {
                let got = conv2d(&x, &wt, &b, at, residual, then).unwrap();
                let want = reference(&x, &wt, &b, at, residual, then);
                let diff = (got - &want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
                assert!(diff < 1e-4, "{:?} {cout}x{k} {at:?} {then:?} residual {}: max difference {diff}", (n, c, h, w), residual.is_some());
            }
        }
    }

    /// An image's output is the same bits alone as inside a batch (tiles never span images).
    #[test]
    fn an_image_gives_the_same_bits_in_any_batch() {
        let dev = candle_core::Device::Cpu;
        let mut rng = crate::rng::stream(9, "test", 0);
        for ((c, h), (cout, k), stride, pad) in [((3, 45), (16, 7), 2, 3), ((40, 7), (64, 3), 1, 1), ((32, 14), (48, 1), 1, 0)] {
            let at = Placement::symmetric(k, stride, pad, (h, h)).unwrap();
            let x = crate::rng::randn(&mut rng, (3, c, h, h), &dev).unwrap();
            let wt = crate::rng::randn(&mut rng, (cout, c, k, k), &dev).unwrap();
            let b = crate::rng::randn(&mut rng, cout, &dev).unwrap();
            let all = conv2d(&x, &wt, &b, at, None, Then::Relu).unwrap();
            let bits = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            for i in 0..3 {
                let alone = conv2d(&x.narrow(0, i, 1).unwrap(), &wt, &b, at, None, Then::Relu).unwrap();
                assert_eq!(bits(&alone), bits(&all.narrow(0, i, 1).unwrap()), "image {i} of {c}x{h}, {cout}x{k}");
            }
        }
    }
}
