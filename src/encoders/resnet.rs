//! ResNet-18, ResNet-50 and Wide-ResNet-50-2 in the torchvision key layout, which timm shares
//! (`conv1`, `bn1`, `layer{1..4}.{i}.{conv,bn}{1,2,3}`, `layer{1..4}.0.downsample.{0,1}`; `fc`
//! is not read). The feature is the global average pool of the last stage (timm's
//! `forward_head(pre_logits=True)`): 512-d for ResNet-18, 2048-d for the others.
//!
//! He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016, arXiv:1512.03385);
//! Zagoruyko & Komodakis, "Wide Residual Networks" (BMVC 2016, arXiv:1605.07146): here, as in
//! torchvision, the bottleneck's inner 3x3 width doubled (`base_width` 128), outer widths kept.
//! The stride sits on the 3x3 convolution ("ResNet v1.5"); batch norms are folded into the
//! convolutions at load.

use super::cnn::CnnEncoder;
use crate::nn::conv::{Conv, Then};
use crate::nn::max_pool::max_pool2d;
use anyhow::Result;
use candle_core::{D, Module, Tensor};
use candle_nn::VarBuilder;
use std::path::Path;

const BN_EPS: f64 = 1e-5;
const STEM: usize = 64;

/// A ResNet's shape, as timm's `ResNet(block, layers, base_width, channels)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Blocks per stage.
    pub layers: [usize; 4],
    /// Bottleneck blocks (1x1, 3x3, 1x1; expansion 4) rather than basic ones (3x3, 3x3).
    pub bottleneck: bool,
    /// Bottleneck inner width is `channels * base_width / 64` (64 normal, 128 wide).
    pub base_width: usize,
    /// Per stage `planes`: the basic block's width, the bottleneck's before widening/expansion.
    pub channels: [usize; 4],
}

impl Config {
    pub fn resnet18() -> Self {
        Self { layers: [2, 2, 2, 2], bottleneck: false, base_width: 64, channels: [64, 128, 256, 512] }
    }

    pub fn resnet50() -> Self {
        Self { layers: [3, 4, 6, 3], bottleneck: true, ..Self::resnet18() }
    }

    pub fn wide_resnet50_2() -> Self {
        Self { base_width: 128, ..Self::resnet50() }
    }

    /// `resnet18`, `resnet50` or `wide_resnet50_2`.
    pub fn by_name(arch: &str) -> Result<Self> {
        Ok(match arch {
            "resnet18" => Self::resnet18(),
            "resnet50" => Self::resnet50(),
            "wide_resnet50_2" => Self::wide_resnet50_2(),
            other => anyhow::bail!("unknown ResNet `{other}` (resnet18, resnet50, wide_resnet50_2)"),
        })
    }
}

/// A residual block: its convolutions (ReLU between them), and the projection shortcut if any.
struct Block {
    convs: Vec<Conv>,
    downsample: Option<Conv>,
}

impl Block {
    fn load(vb: VarBuilder, cfg: &Config, c_in: usize, planes: usize, stride: usize) -> candle_core::Result<(Self, usize)> {
        let conv = |i: usize, shape, stride, pad| Conv::load_bn(&vb.pp(format!("conv{i}")), &vb.pp(format!("bn{i}")), shape, stride, pad, BN_EPS);
        let (convs, c_out) = if cfg.bottleneck {
            let width = planes * cfg.base_width / 64;
            let c_out = 4 * planes;
            (vec![conv(1, (c_in, width, 1), 1, 0)?, conv(2, (width, width, 3), stride, 1)?, conv(3, (width, c_out, 1), 1, 0)?], c_out)
        } else {
            (vec![conv(1, (c_in, planes, 3), stride, 1)?, conv(2, (planes, planes, 3), 1, 1)?], planes)
        };
        let ds = vb.pp("downsample");
        let downsample = (stride != 1 || c_in != c_out).then(|| Conv::load_bn(&ds.pp(0), &ds.pp(1), (c_in, c_out, 1), stride, 0, BN_EPS)).transpose()?;
        Ok((Self { convs, downsample }, c_out))
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let shortcut = match &self.downsample {
            Some(ds) => ds.forward(x)?,
            None => x.clone(),
        };
        let (last, inner) = self.convs.split_last().expect("a block has convolutions");
        let mut y = x.clone();
        for conv in inner {
            y = conv.forward_then(&y, None, Then::Relu)?;
        }
        // The skip connection and the ReLU after it, in the last convolution's pass.
        last.forward_then(&y, Some(&shortcut), Then::Relu)
    }
}

pub struct ResNet {
    stem: Conv,
    blocks: Vec<Block>,
}

impl ResNet {
    pub fn load(vb: VarBuilder, cfg: &Config) -> candle_core::Result<Self> {
        let stem = Conv::load_bn(&vb.pp("conv1"), &vb.pp("bn1"), (3, STEM, 7), 2, 3, BN_EPS)?;
        let mut blocks = Vec::new();
        let mut c = STEM;
        for (s, (&n, &planes)) in cfg.layers.iter().zip(&cfg.channels).enumerate() {
            let stage = vb.pp(format!("layer{}", s + 1));
            for i in 0..n {
                let stride = if i == 0 && s > 0 { 2 } else { 1 };
                let (block, c_out) = Block::load(stage.pp(i), cfg, c, planes, stride)?;
                blocks.push(block);
                c = c_out;
            }
        }
        Ok(Self { stem, blocks })
    }
}

impl Module for ResNet {
    /// `[N, 3, H, W]` -> the average-pooled last stage `[N, C]`; on the CPU image by image
    /// ([`crate::nn::pool::by_image`]).
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        crate::nn::pool::by_image(x, |x| self.layers(x))
    }
}

impl ResNet {
    /// [`Module::forward`] of the whole batch, layer after layer.
    fn layers(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        // 3x3/2 max pool with padding 1.
        let mut x = max_pool2d(&self.stem.forward_then(x, None, Then::Relu)?, 3, 2, 1)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        x.mean(D::Minus1)?.mean(D::Minus1)
    }
}

/// A ResNet as a frozen image encoder named after its architecture.
pub type ResnetEncoder = CnnEncoder<ResNet>;

impl ResnetEncoder {
    /// `arch`: `resnet18`, `resnet50` or `wide_resnet50_2`.
    pub fn load(vb: VarBuilder, arch: &str) -> Result<Self> {
        Ok(Self::new(arch, ResNet::load(vb, &Config::by_name(arch)?)?))
    }

    /// Loads a safetensors checkpoint file.
    pub fn load_file(path: &Path, arch: &str, dev: &candle_core::Device) -> Result<Self> {
        let cfg = Config::by_name(arch)?;
        Self::from_file(path, arch, dev, |vb| ResNet::load(vb, &cfg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Image by image on two threads, the features are the same bits as the whole batch's.
    #[test]
    fn images_alone_give_the_batch_s_bits() {
        // A narrow bottleneck ResNet, and ResNet-18's basic blocks.
        let narrow = Config { layers: [1, 1, 1, 1], bottleneck: true, base_width: 64, channels: [4, 4, 8, 8] };
        for cfg in [narrow, Config { layers: [1, 1, 1, 1], ..Config::resnet18() }] {
            let model = super::super::cnn::testing::random(|vb| ResNet::load(vb, &cfg));
            super::super::cnn::testing::same_bits_by_image(|x| model.forward(x), |x| model.layers(x));
        }
    }
}
