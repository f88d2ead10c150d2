//! RepVGG (Ding et al., "RepVGG: Making VGG-style ConvNets Great Again", CVPR 2021,
//! arXiv:2101.03697), the ungrouped A0-A2 and B0-B3 models, as a frozen image encoder.
//!
//! Layout: timm's training-time checkpoint (`repvgg_a2` etc.): a stem block `stem` and
//! `stages.{s}.{i}` blocks, each with a 3x3 branch `conv_kxk.{conv,bn}`, a 1x1 branch
//! `conv_1x1.{conv,bn}` and, where input and output match (stride 1, same width), an identity
//! batch norm `identity`. As in RepVGG's deploy mode, each block's three branches are fused at
//! load into one 3x3 convolution with a bias (every branch is linear before the ReLU), so the
//! forward pass is a plain stack of 3x3 convolutions and ReLUs. The stem and the first block of
//! every stage have stride 2. `head.fc` is not read.
//!
//! The feature is the global average pool of the last stage (timm's
//! `forward_head(pre_logits=True)`; these models have no final convolution): 1408-d for A2.

use crate::nn::conv::{Conv, Then, batch_norm_affine};
use anyhow::Result;
use candle_core::{D, DType, Module, Tensor};
use candle_nn::VarBuilder;

const BN_EPS: f64 = 1e-5;

/// A RepVGG's shape, as timm's `_rep_vgg_bcfg`: stage widths are `(64, 128, 256, 512) * wf`.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The stem block's width.
    pub stem: usize,
    /// Blocks per stage.
    pub depths: [usize; 4],
    /// Channels per stage.
    pub widths: [usize; 4],
}

impl Config {
    /// `repvgg_a0` .. `repvgg_a2`, `repvgg_b0` .. `repvgg_b3` (timm's names and numbers).
    pub fn by_name(name: &str) -> Result<Self> {
        let (a, b) = ([2, 4, 14, 1], [4, 6, 16, 1]);
        let (stem, depths, widths) = match name {
            "repvgg_a0" => (48, a, [48, 96, 192, 1280]),
            "repvgg_a1" => (64, a, [64, 128, 256, 1280]),
            "repvgg_a2" => (64, a, [96, 192, 384, 1408]),
            "repvgg_b0" => (64, b, [64, 128, 256, 1280]),
            "repvgg_b1" => (64, b, [128, 256, 512, 2048]),
            "repvgg_b2" => (64, b, [160, 320, 640, 2560]),
            "repvgg_b3" => (64, b, [192, 384, 768, 2560]),
            other => anyhow::bail!("unknown RepVGG `{other}` (repvgg_a0, repvgg_a1, repvgg_a2, repvgg_b0, repvgg_b1, repvgg_b2, repvgg_b3)"),
        };
        Ok(Self { stem, depths, widths })
    }
}

/// One training-time block at `vb` fused into a single 3x3 convolution: the 1x1 kernel and the
/// identity (a 1x1 kernel of ones on the diagonal) padded to 3x3, each scaled by its batch
/// norm, summed with the 3x3 branch; the biases summed.
fn fused_block(vb: &VarBuilder, c_in: usize, c_out: usize, stride: usize) -> candle_core::Result<Conv> {
    let kxk = Conv::load_bn(&vb.pp("conv_kxk").pp("conv"), &vb.pp("conv_kxk").pp("bn"), (c_in, c_out, 3), stride, 1, BN_EPS)?;
    let one = Conv::load_bn(&vb.pp("conv_1x1").pp("conv"), &vb.pp("conv_1x1").pp("bn"), (c_in, c_out, 1), stride, 0, BN_EPS)?;
    let pad = |k: &Tensor| k.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1);
    let mut weight = (kxk.weight() + pad(one.weight())?)?;
    let mut bias = (kxk.bias()? + one.bias()?)?;
    if c_in == c_out && stride == 1 {
        let (scale, shift) = batch_norm_affine(&vb.pp("identity"), c_out, BN_EPS)?;
        let eye = Tensor::eye(c_out, DType::F32, vb.device())?.broadcast_mul(&scale.unsqueeze(1)?)?;
        weight = (weight + pad(&eye.reshape((c_out, c_in, 1, 1))?)?)?;
        bias = (bias + shift)?;
    }
    Conv::new(weight, &bias, stride, 1)
}

pub struct RepVgg {
    /// The stem, then every stage's blocks, each followed by a ReLU.
    convs: Vec<Conv>,
}

impl RepVgg {
    pub fn load(vb: VarBuilder, cfg: &Config) -> candle_core::Result<Self> {
        let mut convs = vec![fused_block(&vb.pp("stem"), 3, cfg.stem, 2)?];
        let mut c = cfg.stem;
        for (s, (&depth, &width)) in cfg.depths.iter().zip(&cfg.widths).enumerate() {
            for i in 0..depth {
                convs.push(fused_block(&vb.pp("stages").pp(s).pp(i), c, width, if i == 0 { 2 } else { 1 })?);
                c = width;
            }
        }
        Ok(Self { convs })
    }
}

impl Module for RepVgg {
    /// `[N, 3, H, W]` -> the average-pooled last stage `[N, C]`; on the CPU image by image
    /// ([`crate::nn::pool::by_image`]).
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        crate::nn::pool::by_image(x, |x| self.layers(x))
    }
}

impl RepVgg {
    /// [`Module::forward`] of the whole batch, layer after layer.
    fn layers(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut x = x.clone();
        for conv in &self.convs {
            x = conv.forward_then(&x, None, Then::Relu)?;
        }
        x.mean(D::Minus1)?.mean(D::Minus1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Image by image on two threads, the features are the same bits as the whole batch's.
    #[test]
    fn images_alone_give_the_batch_s_bits() {
        let cfg = Config { stem: 8, depths: [1, 1, 1, 1], widths: [8, 8, 16, 16] };
        let model = super::super::cnn::testing::random(|vb| RepVgg::load(vb, &cfg));
        super::super::cnn::testing::same_bits_by_image(|x| model.forward(x), |x| model.layers(x));
    }
}
