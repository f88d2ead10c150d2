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
pub const PREPROCESS: Preprocess = Preprocess { size: 224, mean: [127.0; 3], std: [128.0; 3] };
const BN_EPS: f64 = 1e-3;
/// Blocks that downsample (stride 2).
const STRIDE2_BLOCKS: [usize; 4] = [1, 3, 5, 11];
const BLOCKS: usize = 16;

/// Convolution without bias, with TF "SAME" padding computed from the input size.
struct SameConv {
    weight: Tensor,
    stride: usize,
    groups: usize,
}

impl SameConv {
    fn load(vb: VarBuilder, stride: usize, depthwise: bool) -> Result<Self> {
        let weight = vb.get_unchecked_dtype("weight", candle_core::DType::F32)?;
        let groups = if depthwise { weight.dim(0)? } else { 1 };
        Ok(Self { weight, stride, groups })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let k = self.weight.dim(D::Minus1)?;
        let pad = |n: usize| {
            let total = ((n.div_ceil(self.stride) - 1) * self.stride + k).saturating_sub(n);
            (total / 2, total - total / 2)
        };
        let (h, w) = (x.dim(2)?, x.dim(3)?);
        let ((t, b), (l, r)) = (pad(h), pad(w));
        let x = x.pad_with_zeros(2, t, b)?.pad_with_zeros(3, l, r)?;
        if self.groups > 1 && x.device().is_cpu() {
            // candle runs grouped convolutions as one convolution per group: far too slow for
            // depthwise layers with hundreds of channels.
            return x.contiguous()?.apply_op2_no_bwd(&self.weight.contiguous()?, &DepthwiseConv { stride: self.stride });
        }
        x.conv2d(&self.weight, 0, self.stride, 1, self.groups)
    }
}

/// Depthwise convolution (one kxk filter per channel, no padding) on the CPU, inference only.
struct DepthwiseConv {
    stride: usize,
}

impl candle_core::CustomOp2 for DepthwiseConv {
    fn name(&self) -> &'static str {
        "depthwise-conv2d"
    }

    fn cpu_fwd(
        &self,
        xs: &candle_core::CpuStorage,
        xl: &candle_core::Layout,
        ws: &candle_core::CpuStorage,
        wl: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::CpuStorage;
        use rayon::prelude::*;
        let (x, w) = (crate::cpu::f32_slice("depthwise-conv2d", xs, xl)?, crate::cpu::f32_slice("depthwise-conv2d", ws, wl)?);
        let (n, c, h, wd) = xl.shape().dims4()?;
        let (_, _, k, _) = wl.shape().dims4()?;
        let s = self.stride;
        let (oh, ow) = ((h - k) / s + 1, (wd - k) / s + 1);
        let mut out = vec![0f32; n * c * oh * ow];
        out.par_chunks_mut(oh * ow).enumerate().for_each(|(plane, o)| {
            let ch = plane % c;
            let src = &x[plane * h * wd..(plane + 1) * h * wd];
            let filt = &w[ch * k * k..(ch + 1) * k * k];
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = 0f32;
                    for ky in 0..k {
                        let row = &src[(oy * s + ky) * wd + ox * s..][..k];
                        acc += row.iter().zip(&filt[ky * k..(ky + 1) * k]).map(|(a, b)| a * b).sum::<f32>();
                    }
                    o[oy * ow + ox] = acc;
                }
            }
        });
        Ok((CpuStorage::F32(out), candle_core::Shape::from((n, c, oh, ow))))
    }
}

/// Batch norm in inference form, folded to a per-channel scale and shift.
struct FoldedBn {
    scale: Tensor,
    shift: Tensor,
}

impl FoldedBn {
    fn load(vb: VarBuilder) -> Result<Self> {
        let get = |n: &str| vb.get_unchecked_dtype(n, candle_core::DType::F32);
        let (w, b, mean, var) = (get("weight")?, get("bias")?, get("running_mean")?, get("running_var")?);
        let scale = (w / (var + BN_EPS)?.sqrt()?)?;
        let shift = (b - (&mean * &scale)?)?;
        let c = scale.dim(0)?;
        Ok(Self { scale: scale.reshape((1, c, 1, 1))?, shift: shift.reshape((1, c, 1, 1))? })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.broadcast_mul(&self.scale)?.broadcast_add(&self.shift)
    }
}

fn relu6(x: &Tensor) -> candle_core::Result<Tensor> {
    x.clamp(0f32, 6f32)
}

struct MbConv {
    expand: Option<(SameConv, FoldedBn)>,
    depthwise: (SameConv, FoldedBn),
    project: (SameConv, FoldedBn),
    residual: bool,
}

impl MbConv {
    fn load(vb: VarBuilder, stride: usize) -> Result<Self> {
        let expand = if vb.contains_tensor("_expand_conv.weight") {
            Some((SameConv::load(vb.pp("_expand_conv"), 1, false)?, FoldedBn::load(vb.pp("_bn0"))?))
        } else {
            None
        };
        let depthwise = (SameConv::load(vb.pp("_depthwise_conv"), stride, true)?, FoldedBn::load(vb.pp("_bn1"))?);
        let project = (SameConv::load(vb.pp("_project_conv"), 1, false)?, FoldedBn::load(vb.pp("_bn2"))?);
        let c_in = match &expand {
            Some((c, _)) => c.weight.dim(1)?,
            None => depthwise.0.weight.dim(0)?,
        };
        let residual = stride == 1 && c_in == project.0.weight.dim(0)?;
        Ok(Self { expand, depthwise, project, residual })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        if let Some((conv, bn)) = &self.expand {
            h = relu6(&bn.forward(&conv.forward(&h)?)?)?;
        }
        h = relu6(&self.depthwise.1.forward(&self.depthwise.0.forward(&h)?)?)?;
        h = self.project.1.forward(&self.project.0.forward(&h)?)?;
        if self.residual { h + x } else { Ok(h) }
    }
}

pub struct EfficientNetLite {
    stem: (SameConv, FoldedBn),
    blocks: Vec<MbConv>,
    head: (SameConv, FoldedBn),
    fc: candle_nn::Linear,
}

impl EfficientNetLite {
    pub fn load(vb: VarBuilder) -> Result<Self> {
        let stem = (SameConv::load(vb.pp("_conv_stem"), 2, false)?, FoldedBn::load(vb.pp("_bn0"))?);
        let blocks = (0..BLOCKS)
            .map(|i| MbConv::load(vb.pp(format!("_blocks.{i}")), if STRIDE2_BLOCKS.contains(&i) { 2 } else { 1 }))
            .collect::<Result<_>>()?;
        let head = (SameConv::load(vb.pp("_conv_head"), 1, false)?, FoldedBn::load(vb.pp("_bn1"))?);
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

    /// The pooled 1280-d feature before the classifier.
    pub fn features(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = relu6(&self.stem.1.forward(&self.stem.0.forward(x)?)?)?;
        for b in &self.blocks {
            h = b.forward(&h)?;
        }
        h = relu6(&self.head.1.forward(&self.head.0.forward(&h)?)?)?;
        h.mean(D::Minus1)?.mean(D::Minus1)
    }

    /// ImageNet logits.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.fc.forward(&self.features(x)?)
    }
}
