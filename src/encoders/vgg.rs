//! VGG-19 (Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
//! Recognition", ICLR 2015, arXiv:1409.1556), without batch norm, as a frozen image encoder.
//!
//! Layout: `features.{i}.{weight,bias}` for the 3x3 convolutions, numbered as in
//! `nn.Sequential` (conv, ReLU per layer; a 2x2 max pool after each of the five stages), then
//! the two hidden fully connected layers `fc6`/`fc7`, either timm's `pre_logits.fc1` (a 7x7
//! convolution) and `pre_logits.fc2` (1x1), or torchvision's `classifier.0` and `classifier.3`
//! (linear; the same numbers). The classifier (`head.fc` / `classifier.6`) is not read.
//!
//! The feature is fc7 after its ReLU (4096-d), from the last stage average-pooled to 7x7: at
//! 224 px the stage is 7x7 already, and this is both timm's `forward_head(pre_logits=True)`
//! and torchvision's `classifier[:5]` (without dropout). Smaller inputs are pooled up to 7x7
//! as both do; larger ones follow torchvision (timm would run fc6 as a convolution there).

use crate::nn::conv::{Conv, Then};
use crate::nn::linear::Linear;
use crate::nn::max_pool::max_pool2d;
use candle_core::{Device, Module, Tensor};
use candle_nn::VarBuilder;

/// The spatial size fc6 reads.
const POOL: usize = 7;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// 3x3 convolutions per stage.
    pub depths: [usize; 5],
    /// Channels per stage.
    pub widths: [usize; 5],
    /// fc6's outputs (timm: `4096 * mlp_ratio`).
    pub hidden: usize,
    /// fc7's outputs: the feature size.
    pub features: usize,
}

impl Config {
    pub fn vgg19() -> Self {
        Self { depths: [2, 2, 4, 4, 4], widths: [64, 128, 256, 512, 512], hidden: 4096, features: 4096 }
    }
}

pub struct Vgg {
    /// Per stage, its convolutions (each followed by a ReLU).
    stages: Vec<Vec<Conv>>,
    fc6: Linear,
    fc7: Linear,
}

/// A PyTorch dense layer's weight (any shape with `out` rows) and bias as a [`Linear`].
fn dense(vb: &VarBuilder, shape: &[usize]) -> candle_core::Result<Linear> {
    let w = vb.get(shape, "weight")?;
    Ok(Linear::new(w.flatten_from(1)?.t()?.contiguous()?, vb.get(shape[0], "bias")?))
}

impl Vgg {
    pub fn load(vb: VarBuilder, cfg: &Config) -> candle_core::Result<Self> {
        let feats = vb.pp("features");
        let (mut i, mut c) = (0, 3);
        let mut stages = Vec::new();
        for (&depth, &width) in cfg.depths.iter().zip(&cfg.widths) {
            let mut convs = Vec::new();
            for _ in 0..depth {
                convs.push(Conv::load(&feats.pp(i), (c, width, 3), 1, 1)?);
                (i, c) = (i + 2, width);
            }
            stages.push(convs);
            i += 1;
        }
        let (fc6, fc7) = if vb.contains_tensor("pre_logits.fc1.weight") {
            let p = vb.pp("pre_logits");
            (dense(&p.pp("fc1"), &[cfg.hidden, c, POOL, POOL])?, dense(&p.pp("fc2"), &[cfg.features, cfg.hidden, 1, 1])?)
        } else {
            let p = vb.pp("classifier");
            (dense(&p.pp(0), &[cfg.hidden, c * POOL * POOL])?, dense(&p.pp(3), &[cfg.features, cfg.hidden])?)
        };
        Ok(Self { stages, fc6, fc7 })
    }
}

/// PyTorch's `adaptive_avg_pool2d` from `n` to `POOL` positions as a `[POOL, n]` matrix: output
/// `i` averages inputs `floor(i n / POOL) .. ceil((i + 1) n / POOL)`.
fn adaptive_pool_matrix(n: usize, dev: &Device) -> candle_core::Result<Tensor> {
    let mut m = vec![0f32; POOL * n];
    for i in 0..POOL {
        let (a, b) = (i * n / POOL, ((i + 1) * n).div_ceil(POOL));
        m[i * n + a..i * n + b].fill(1.0 / (b - a) as f32);
    }
    Tensor::from_vec(m, (POOL, n), dev)
}

impl Module for Vgg {
    /// `[N, 3, H, W]` -> fc7's ReLU output `[N, features]`.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut x = x.clone();
        for convs in &self.stages {
            for conv in convs {
                x = conv.forward_then(&x, None, Then::Relu)?;
            }
            x = max_pool2d(&x, 2, 2, 0)?;
        }
        let (n, _, h, w) = x.dims4()?;
        if (h, w) != (POOL, POOL) {
            let (ph, pw) = (adaptive_pool_matrix(h, x.device())?, adaptive_pool_matrix(w, x.device())?);
            x = ph.broadcast_matmul(&x.broadcast_matmul(&pw.t()?)?)?;
        }
        let x = x.reshape((n, ()))?;
        self.fc7.forward(&self.fc6.forward(&x)?.relu()?)?.relu()
    }
}
