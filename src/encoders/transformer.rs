//! The layers ViT and Swin share: the patch embedding, PyTorch `nn.Linear` weights as
//! [`Linear`], the layer norm ([`LayerNorm`]), and the pre-norm transformer layer (with an
//! optional additive attention bias, which Swin's windows use). Each backbone loads them from
//! its own key names.
//!
//! Every dense layer is a [`Linear`] (weights stored [in, out], one product block per thread:
//! ~1.5x candle's `x W^T` here), with query, key and value as one product and the patch
//! embedding as a product over unfolded patches.

use crate::nn::attention::{attention_of_first, self_attention};
use crate::nn::linear::{Linear, Then};
pub(crate) use crate::nn::norm::{LayerNorm, layer_norm};
use crate::nn::stages::{Stage, timed};
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

/// PyTorch `nn.Linear`s ([out, in] weight) as one [`Linear`], concatenated along their outputs
/// (e.g. query, key, value); zero bias where `bias` is false.
pub(crate) fn dense(vbs: &[VarBuilder], in_dim: usize, out_dim: usize, bias: bool) -> Result<Linear> {
    let weights = vbs.iter().map(|vb| vb.get((out_dim, in_dim), "weight")).collect::<Result<Vec<_>>>()?;
    let biases =
        vbs.iter().map(|vb| if bias { vb.get(out_dim, "bias") } else { Tensor::zeros(out_dim, DType::F32, vb.device()) }).collect::<Result<Vec<_>>>()?;
    Ok(Linear::new(Tensor::cat(&weights, 0)?.t()?.contiguous()?, Tensor::cat(&biases, 0)?))
}

/// A `p` x `p`, stride-`p` convolution (`nn.Conv2d` weight [dim, C, p, p] and bias) as one
/// product over unfolded patches.
pub(crate) struct PatchEmbed {
    proj: Linear,
    patch: usize,
}

impl PatchEmbed {
    pub(crate) fn load(vb: VarBuilder, channels: usize, dim: usize, patch: usize) -> Result<Self> {
        let weight = vb.get((dim, channels, patch, patch), "weight")?.reshape((dim, channels * patch * patch))?;
        Ok(Self { proj: Linear::new(weight.t()?.contiguous()?, vb.get(dim, "bias")?), patch })
    }

    /// [B, C, H, W] -> [B, H / p, W / p, dim].
    pub(crate) fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        timed(Stage::PatchEmbedding, || self.unfold_and_project(pixels))
    }

    fn unfold_and_project(&self, pixels: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = pixels.dims4()?;
        let p = self.patch;
        let (gh, gw) = (h / p, w / p);
        // [B, C, gh, P, gw, P] -> [B, gh, gw, C, P, P]: one row per patch, in the conv weight's order.
        let rows = pixels.reshape((b, c, gh, p, gw, p))?.permute((0, 2, 4, 1, 3, 5))?.contiguous()?.reshape((b * gh * gw, c * p * p))?;
        self.proj.forward(&rows)?.reshape((b, gh, gw, ()))
    }
}

/// Pre-norm transformer layer: `x + attn(ln(x))`, then `x + mlp(ln(x))` (GELU, erf form).
/// Frozen: no gradient flows through it.
pub(crate) struct Block {
    pub norm1: LayerNorm,
    /// Query, key and value as one product.
    pub qkv: Linear,
    pub proj: Linear,
    pub norm2: LayerNorm,
    pub fc1: Linear,
    pub fc2: Linear,
    pub heads: usize,
}

impl Block {
    /// `x` [B, T, D]. `bias` [G, heads, T, T] (B a multiple of G) is added to the attention
    /// scores of sequence `i` as `bias[i % G]`, before the softmax.
    pub(crate) fn forward(&self, x: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        // Each stage timed for `marnet bench`'s breakdown (free unless it records).
        let normed = timed(Stage::LayerNorm, || x.apply(&self.norm1))?;
        let qkv = timed(Stage::QkvProduct, || normed.apply(&self.qkv))?;
        let ctx = timed(Stage::Attention, || self_attention(&qkv, self.heads, bias))?;
        self.finish(x, &ctx)
    }

    /// The first token's rows [B, 1, D] of [`Self::forward`] (no bias): its query against every
    /// token's keys and values, and the rest of the layer on that row alone (ViT's last layer,
    /// whose features are the CLS token's).
    pub(crate) fn forward_first(&self, x: &Tensor) -> Result<Tensor> {
        let normed = timed(Stage::LayerNorm, || x.apply(&self.norm1))?;
        let qkv = timed(Stage::QkvProduct, || normed.apply(&self.qkv))?;
        let ctx = timed(Stage::Attention, || attention_of_first(&qkv, self.heads, 1))?;
        self.finish(&x.narrow(1, 0, 1)?, &ctx)
    }

    /// The layer after attention, on the rows of `x` whose context `ctx` holds; the residual
    /// additions inside the products' blocks ([`Linear::forward_frozen`]: no pass of their own).
    fn finish(&self, x: &Tensor, ctx: &Tensor) -> Result<Tensor> {
        let x = timed(Stage::OutputProduct, || self.proj.forward_frozen(ctx, None, Some(x), Then::Nothing))?;
        let normed = timed(Stage::LayerNorm, || x.apply(&self.norm2))?;
        let m = timed(Stage::Mlp1Gelu, || self.fc1.forward_gelu(&normed))?;
        timed(Stage::Mlp2, || self.fc2.forward_frozen(&m, None, Some(&x), Then::Nothing))
    }
}
