//! ViT (B/16, B/32, ...) in the Hugging Face layout, as a frozen image encoder whose feature is
//! the final-layernormed CLS token. Loads a bare `ViTModel` checkpoint (`embeddings.*`) or a
//! `ViTForImageClassification` one (`vit.embeddings.*`); the classifier, if any, is ignored.
//!
//! Written out here rather than taken from candle-transformers so that every dense layer is
//! [`Linear`] (weights stored [in, out], one product block per thread: ~1.5x candle's
//! `x W^T` here), with query, key and value as one product and the patch embedding as a
//! product over unfolded patches.

use crate::data::image::Preprocess;
use crate::nn::linear::Linear;
use anyhow::{Context, Result};
use candle_core::{D, DType, Device, IndexOp, Module, Tensor};
use candle_nn::{LayerNorm, VarBuilder, layer_norm};
use candle_transformers::models::vit::Config;
use std::path::Path;

/// A Hugging Face `nn.Linear` ([out, in] weight) as a [`Linear`]; several are concatenated
/// along their outputs (query, key, value).
fn dense(vbs: &[VarBuilder], in_dim: usize, out_dim: usize, bias: bool) -> candle_core::Result<Linear> {
    let weights = vbs.iter().map(|vb| vb.get((out_dim, in_dim), "weight")).collect::<candle_core::Result<Vec<_>>>()?;
    let biases = vbs
        .iter()
        .map(|vb| if bias { vb.get(out_dim, "bias") } else { Tensor::zeros(out_dim, DType::F32, vb.device()) })
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Linear::new(Tensor::cat(&weights, 0)?.t()?.contiguous()?, Tensor::cat(&biases, 0)?))
}

struct Block {
    norm1: LayerNorm,
    qkv: Linear,
    proj: Linear,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    heads: usize,
}

impl Block {
    fn load(vb: VarBuilder, cfg: &Config) -> candle_core::Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let att = vb.pp("attention");
        let qkv_vbs = ["query", "key", "value"].map(|n| att.pp("attention").pp(n));
        Ok(Self {
            norm1: layer_norm(h, cfg.layer_norm_eps, vb.pp("layernorm_before"))?,
            qkv: dense(&qkv_vbs, h, h, cfg.qkv_bias)?,
            proj: dense(&[att.pp("output").pp("dense")], h, h, true)?,
            norm2: layer_norm(h, cfg.layer_norm_eps, vb.pp("layernorm_after"))?,
            fc1: dense(&[vb.pp("intermediate").pp("dense")], h, i, true)?,
            fc2: dense(&[vb.pp("output").pp("dense")], i, h, true)?,
            heads: cfg.num_attention_heads,
        })
    }

    /// Pre-norm transformer layer: `x + attn(ln(x))`, then `x + mlp(ln(x))` (GELU, erf form).
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t, h) = x.dims3()?;
        let dh = h / self.heads;
        let qkv = x.apply(&self.norm1)?.apply(&self.qkv)?.reshape((b, t, 3, self.heads, dh))?.permute((2, 0, 3, 1, 4))?;
        let (q, k, v) = (qkv.i(0)?.contiguous()?, qkv.i(1)?.contiguous()?, qkv.i(2)?.contiguous()?);
        let scores = (q.matmul(&k.t()?)? / (dh as f64).sqrt())?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let ctx = probs.matmul(&v)?.permute((0, 2, 1, 3))?.contiguous()?.reshape((b, t, h))?;
        let x = (x + ctx.apply(&self.proj)?)?;
        let m = x.apply(&self.norm2)?.apply(&self.fc1)?.gelu_erf()?;
        x + m.apply(&self.fc2)?
    }
}

pub struct VitEncoder {
    /// Patch projection over unfolded [C * P * P] patches.
    patch: Linear,
    cls_token: Tensor,
    position: Tensor,
    blocks: Vec<Block>,
    layernorm: LayerNorm,
    image_size: usize,
    patch_size: usize,
}

impl VitEncoder {
    pub fn load(vb: VarBuilder, cfg: &Config) -> candle_core::Result<Self> {
        let vb = if vb.contains_tensor("vit.embeddings.cls_token") { vb.pp("vit") } else { vb };
        let (h, p, c) = (cfg.hidden_size, cfg.patch_size, cfg.num_channels);
        let emb = vb.pp("embeddings");
        let proj = emb.pp("patch_embeddings").pp("projection");
        let patch = Linear::new(proj.get((h, c, p, p), "weight")?.reshape((h, c * p * p))?.t()?.contiguous()?, proj.get(h, "bias")?);
        let patches = (cfg.image_size / p).pow(2);
        let enc = vb.pp("encoder").pp("layer");
        Ok(Self {
            patch,
            cls_token: emb.get((1, 1, h), "cls_token")?,
            position: emb.get((1, patches + 1, h), "position_embeddings")?,
            blocks: (0..cfg.num_hidden_layers).map(|i| Block::load(enc.pp(i), cfg)).collect::<candle_core::Result<_>>()?,
            layernorm: layer_norm(h, cfg.layer_norm_eps, vb.pp("layernorm"))?,
            image_size: cfg.image_size,
            patch_size: p,
        })
    }

    /// Loads `config.json` and `model.safetensors` from a Hugging Face folder.
    pub fn load_dir(dir: &Path, dev: &Device) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let cfg: Config = crate::fsutil::read_json(&cfg_path).context("not a ViT config")?;
        let weights = dir.join("model.safetensors");
        // SAFETY: the file is memory-mapped read-only and not modified while in use.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, dev) }
            .with_context(|| format!("{}: cannot read weights", weights.display()))?;
        Self::load(vb, &cfg).with_context(|| format!("{}: weights do not match config.json", weights.display()))
    }

    /// Hugging Face ViT preprocessing: pixels scaled to [-1, 1] at the configured size.
    pub fn preprocess(&self) -> Preprocess {
        Preprocess { size: self.image_size as u32, mean: [127.5; 3], std: [127.5; 3] }
    }

    /// The layernormed CLS token of each image [N, hidden].
    pub fn features(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        self.hidden(pixels)?.i((.., 0, ..))?.apply(&self.layernorm)
    }

    /// The layernormed CLS token [N, hidden] (as [`Self::features`]) and the layernormed patch
    /// tokens [N, patches, hidden] (the final layer's `last_hidden_state` without CLS).
    pub fn features_and_tokens(&self, pixels: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let x = self.hidden(pixels)?;
        let cls = x.i((.., 0, ..))?.apply(&self.layernorm)?;
        let patches = x.i((.., 1.., ..))?.contiguous()?.apply(&self.layernorm)?;
        Ok((cls, patches))
    }

    /// The last block's output [N, 1 + patches, hidden] (CLS first), before the final layernorm.
    fn hidden(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, hgt, wid) = pixels.dims4()?;
        let p = self.patch_size;
        let (gh, gw) = (hgt / p, wid / p);
        // [B, C, gh, P, gw, P] -> [B, gh, gw, C, P, P]: one row per patch, in the conv weight's order.
        let rows = pixels.reshape((b, c, gh, p, gw, p))?.permute((0, 2, 4, 1, 3, 5))?.contiguous()?.reshape((b * gh * gw, c * p * p))?;
        let patches = self.patch.forward(&rows)?.reshape((b, gh * gw, ()))?;
        let hidden = patches.dim(D::Minus1)?;
        let cls = self.cls_token.broadcast_as((b, 1, hidden))?;
        let mut x = Tensor::cat(&[&cls, &patches], 1)?.broadcast_add(&self.position)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        Ok(x)
    }
}

impl super::ImageEncoder for VitEncoder {
    fn name(&self) -> &str {
        "vit"
    }

    fn preprocess(&self) -> Preprocess {
        VitEncoder::preprocess(self)
    }

    fn features(&self, images: &Tensor) -> candle_core::Result<Tensor> {
        VitEncoder::features(self, images)
    }

    fn features_and_tokens(&self, images: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        VitEncoder::features_and_tokens(self, images)
    }
}
