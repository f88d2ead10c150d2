//! EfficientNet-Lite0 (ImageNet), in the lukemelas `efficientnet_pytorch` weight naming.
//! Stem 3x3/2 conv + BN + ReLU6; 16 MBConv blocks (1x1 expand when present, kxk depthwise,
//! 1x1 project; BN after each; ReLU6 after expand and depthwise; no squeeze-excitation;
//! residual when stride 1 and shapes match); head 1x1 conv to 1280 + BN + ReLU6; global
//! average pool; `_fc` to 1000 classes. TF "SAME" padding everywhere, BN eps 1e-3.

use anyhow::{Context, Result};
use candle_core::{D, Device, Module, Tensor};
use candle_nn::VarBuilder;
use std::path::Path;

use crate::data::image::Preprocess;

/// Input scaling of the TF-Lite models: `(x - 127) / 128` at 224 px.
pub const PREPROCESS: Preprocess = Preprocess { size: 224, mean: [127.0; 3], std: [128.0; 3], resize: None };
const BN_EPS: f64 = 1e-3;
/// Blocks that downsample (stride 2).
const STRIDE2_BLOCKS: [usize; 4] = [1, 3, 5, 11];
const BLOCKS: usize = 16;

/// A convolution with its batch norm folded in (`w * scale`, bias `shift`), TF "SAME"
/// padding computed from the input size, and optionally ReLU6.
struct SameConv {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    depthwise: bool,
    relu6: bool,
}

impl SameConv {
    /// Loads the conv at `conv` and folds the inference-form BN at `bn` into it.
    fn load(conv: VarBuilder, bn: VarBuilder, stride: usize, depthwise: bool, relu6: bool) -> Result<Self> {
        let get = |vb: &VarBuilder, n: &str| vb.get_unchecked_dtype(n, candle_core::DType::F32);
        let weight = get(&conv, "weight")?;
        let (w, b, mean, var) = (get(&bn, "weight")?, get(&bn, "bias")?, get(&bn, "running_mean")?, get(&bn, "running_var")?);
        let scale = (w / (var + BN_EPS)?.sqrt()?)?;
        let bias = (b - (&mean * &scale)?)?;
        let weight = weight.broadcast_mul(&scale.reshape((scale.dim(0)?, 1, 1, 1))?)?;
        Ok(Self { weight, bias, stride, depthwise, relu6 })
    }

    fn out_channels(&self) -> candle_core::Result<usize> {
        self.weight.dim(0)
    }

    fn in_channels(&self) -> candle_core::Result<usize> {
        if self.depthwise { self.weight.dim(0) } else { self.weight.dim(1) }
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let k = self.weight.dim(D::Minus1)?;
        let pad = |n: usize| {
            let total = ((n.div_ceil(self.stride) - 1) * self.stride + k).saturating_sub(n);
            (total / 2, total - total / 2)
        };
        let (n, c, h, w) = x.dims4()?;
        let ((t, b), (l, r)) = (pad(h), pad(w));
        if self.depthwise && x.device().is_cpu() {
            // candle runs grouped convolutions as one convolution per group: far too slow for
            // depthwise layers with hundreds of channels. Padding, bias and ReLU6 are fused.
            let op = DepthwiseConv { stride: self.stride, pad: (t, l), relu6: self.relu6 };
            return x.contiguous()?.apply_op3_no_bwd(&self.weight.contiguous()?, &self.bias, &op);
        }
        let y = if k == 1 && self.stride == 1 {
            // A 1x1 convolution is one matrix product per image: [Cout, Cin] x [Cin, H*W].
            let w2 = self.weight.reshape((self.out_channels()?, c))?;
            w2.broadcast_left(n)?.matmul(&x.reshape((n, c, h * w))?)?.reshape((n, (), h, w))?
        } else {
            let groups = if self.depthwise { c } else { 1 };
            x.pad_with_zeros(2, t, b)?.pad_with_zeros(3, l, r)?.conv2d(&self.weight, 0, self.stride, 1, groups)?
        };
        let y = y.broadcast_add(&self.bias.reshape((1, (), 1, 1))?)?;
        if self.relu6 { y.clamp(0f32, 6f32) } else { Ok(y) }
    }
}

/// Depthwise convolution (one kxk filter per channel) with implicit zero padding `(top, left)`
/// to `ceil(size / stride)` outputs, plus a per-channel bias and optional ReLU6; CPU, inference.
struct DepthwiseConv {
    stride: usize,
    pad: (usize, usize),
    relu6: bool,
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

struct MbConv {
    expand: Option<SameConv>,
    depthwise: SameConv,
    project: SameConv,
    residual: bool,
}

impl MbConv {
    fn load(vb: VarBuilder, stride: usize) -> Result<Self> {
        let expand = if vb.contains_tensor("_expand_conv.weight") { Some(SameConv::load(vb.pp("_expand_conv"), vb.pp("_bn0"), 1, false, true)?) } else { None };
        let depthwise = SameConv::load(vb.pp("_depthwise_conv"), vb.pp("_bn1"), stride, true, true)?;
        let project = SameConv::load(vb.pp("_project_conv"), vb.pp("_bn2"), 1, false, false)?;
        let c_in = match &expand {
            Some(c) => c.in_channels()?,
            None => depthwise.in_channels()?,
        };
        let residual = stride == 1 && c_in == project.out_channels()?;
        Ok(Self { expand, depthwise, project, residual })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = match &self.expand {
            Some(conv) => conv.forward(x)?,
            None => x.clone(),
        };
        let h = self.project.forward(&self.depthwise.forward(&h)?)?;
        if self.residual { h + x } else { Ok(h) }
    }
}

pub struct EfficientNetLite {
    stem: SameConv,
    blocks: Vec<MbConv>,
    head: SameConv,
    fc: candle_nn::Linear,
}

impl EfficientNetLite {
    pub fn load(vb: VarBuilder) -> Result<Self> {
        let stem = SameConv::load(vb.pp("_conv_stem"), vb.pp("_bn0"), 2, false, true)?;
        let blocks =
            (0..BLOCKS).map(|i| MbConv::load(vb.pp(format!("_blocks.{i}")), if STRIDE2_BLOCKS.contains(&i) { 2 } else { 1 })).collect::<Result<_>>()?;
        let head = SameConv::load(vb.pp("_conv_head"), vb.pp("_bn1"), 1, false, true)?;
        let w = vb.get_unchecked_dtype("_fc.weight", candle_core::DType::F32)?;
        let b = vb.get_unchecked_dtype("_fc.bias", candle_core::DType::F32)?;
        Ok(Self { stem, blocks, head, fc: candle_nn::Linear::new(w, Some(b)) })
    }

    /// Loads `model.safetensors` from `dir`, converting the legacy `.pth` there on first use.
    pub fn load_dir(dir: &Path, dev: &Device) -> Result<Self> {
        let st = dir.join("model.safetensors");
        if !st.exists() {
            let pth = std::fs::read_dir(dir)
                .with_context(|| format!("{}: EfficientNet-Lite0 folder not found (run scripts/fetch-assets?)", dir.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| p.extension().is_some_and(|e| e == "pth"))
                .with_context(|| format!("{}: neither model.safetensors nor a .pth file", dir.display()))?;
            super::torch_legacy::convert(&pth, &st)?;
        }
        // SAFETY: the file is memory-mapped read-only and not modified while in use.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&st], candle_core::DType::F32, dev)? };
        Self::load(vb).with_context(|| format!("{}: not EfficientNet-Lite0 weights", st.display()))
    }

    /// The head's feature map [N, 1280, H/32, W/32] (7 x 7 at 224 px), before pooling.
    pub fn feature_map(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = self.stem.forward(x)?;
        for b in &self.blocks {
            h = b.forward(&h)?;
        }
        self.head.forward(&h)
    }

    /// The pooled 1280-d feature before the classifier: the mean of the feature map.
    pub fn features(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        Self::pool(&self.feature_map(x)?)
    }

    fn pool(map: &Tensor) -> candle_core::Result<Tensor> {
        map.mean(D::Minus1)?.mean(D::Minus1)
    }

    /// The pooled feature [N, 1280] (as [`Self::features`]) and the feature map as tokens
    /// [N, H*W, 1280] in row-major spatial order: 49 tokens at 224 px, whose mean is the pooled
    /// feature.
    pub fn features_and_tokens(&self, x: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let map = self.feature_map(x)?;
        let tokens = map.flatten_from(2)?.transpose(1, 2)?.contiguous()?;
        Ok((Self::pool(&map)?, tokens))
    }

    /// ImageNet logits.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.fc.forward(&self.features(x)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fused depthwise kernel equals candle's grouped convolution on the padded input.
    #[test]
    fn depthwise_kernel_matches_grouped_conv() {
        let dev = Device::Cpu;
        let mut rng = crate::rng::stream(3, "test", 0);
        for (k, stride, h, w) in [(3, 1, 7, 9), (5, 2, 9, 8), (3, 2, 6, 5), (5, 1, 4, 3)] {
            let c = 4;
            let x = crate::rng::randn(&mut rng, (2, c, h, w), &dev).unwrap();
            let weight = crate::rng::randn(&mut rng, (c, 1, k, k), &dev).unwrap();
            let bias = crate::rng::randn(&mut rng, c, &dev).unwrap();
            let conv = SameConv { weight: weight.clone(), bias: bias.clone(), stride, depthwise: true, relu6: false };
            let got = conv.forward(&x).unwrap();
            let pad = |n: usize| {
                let total = ((n.div_ceil(stride) - 1) * stride + k).saturating_sub(n);
                (total / 2, total - total / 2)
            };
            let ((t, b), (l, r)) = (pad(h), pad(w));
            let want = x.pad_with_zeros(2, t, b).unwrap().pad_with_zeros(3, l, r).unwrap().conv2d(&weight, 0, stride, 1, c).unwrap();
            let want = want.broadcast_add(&bias.reshape((1, c, 1, 1)).unwrap()).unwrap();
            assert_eq!(got.dims(), want.dims(), "k {k} stride {stride}");
            let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-4, "k {k} stride {stride} {h}x{w}: max diff {diff}");
        }
    }
}
