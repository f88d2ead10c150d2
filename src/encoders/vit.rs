//! ViT (B/16, B/32, ...) in the Hugging Face layout, as a frozen image encoder whose feature is
//! the final-layernormed CLS token. Loads a bare `ViTModel` checkpoint (`embeddings.*`) or a
//! `ViTForImageClassification` one (`vit.embeddings.*`); the classifier, if any, is ignored.
//!
//! Written out here rather than taken from candle-transformers so that every dense layer is a
//! fast [`crate::nn::linear::Linear`] (see [`super::transformer`]). Preprocessing follows the
//! folder's `preprocessor_config.json` where there is one.

use super::transformer::{Block, LayerNorm, PatchEmbed, dense, layer_norm};
use crate::data::image::Preprocess;
use anyhow::{Context, Result};
use candle_core::{D, DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::vit::Config;
use std::path::Path;

/// One Hugging Face `ViTLayer` (`layernorm_before`, `attention.attention.{query,key,value}`, ...).
fn load_block(vb: VarBuilder, cfg: &Config) -> candle_core::Result<Block> {
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
    let att = vb.pp("attention");
    let qkv_vbs = ["query", "key", "value"].map(|n| att.pp("attention").pp(n));
    Ok(Block {
        norm1: layer_norm(h, cfg.layer_norm_eps, vb.pp("layernorm_before"))?,
        qkv: dense(&qkv_vbs, h, h, cfg.qkv_bias)?,
        proj: dense(&[att.pp("output").pp("dense")], h, h, true)?,
        norm2: layer_norm(h, cfg.layer_norm_eps, vb.pp("layernorm_after"))?,
        fc1: dense(&[vb.pp("intermediate").pp("dense")], h, i, true)?,
        fc2: dense(&[vb.pp("output").pp("dense")], i, h, true)?,
        heads: cfg.num_attention_heads,
    })
}

pub struct VitEncoder {
    patch: PatchEmbed,
    cls_token: Tensor,
    position: Tensor,
    blocks: Vec<Block>,
    layernorm: LayerNorm,
    preprocess: Preprocess,
}

impl VitEncoder {
    /// The model of `cfg` (any `patch_size`: B/16, B/32, ...), with marnet's default
    /// preprocessing (see [`Self::load_dir`]).
    pub fn load(vb: VarBuilder, cfg: &Config) -> candle_core::Result<Self> {
        let vb = if vb.contains_tensor("vit.embeddings.cls_token") { vb.pp("vit") } else { vb };
        let (h, p) = (cfg.hidden_size, cfg.patch_size);
        let emb = vb.pp("embeddings");
        let patches = (cfg.image_size / p).pow(2);
        let enc = vb.pp("encoder").pp("layer");
        Ok(Self {
            patch: PatchEmbed::load(emb.pp("patch_embeddings").pp("projection"), cfg.num_channels, h, p)?,
            cls_token: emb.get((1, 1, h), "cls_token")?,
            position: emb.get((1, patches + 1, h), "position_embeddings")?,
            blocks: (0..cfg.num_hidden_layers).map(|i| load_block(enc.pp(i), cfg)).collect::<candle_core::Result<_>>()?,
            layernorm: layer_norm(h, cfg.layer_norm_eps, vb.pp("layernorm"))?,
            // Pixels scaled to [-1, 1]: the shorter side resized to the model's size and centre-cropped.
            preprocess: Preprocess { size: cfg.image_size as u32, mean: [127.5; 3], std: [127.5; 3], resize: None },
        })
    }

    /// Loads `config.json` and `model.safetensors` from a Hugging Face folder; preprocessing
    /// from its `preprocessor_config.json` when there is one, else the default of [`Self::load`].
    pub fn load_dir(dir: &Path, dev: &Device) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let cfg: Config = crate::fsutil::read_json(&cfg_path).context("not a ViT config")?;
        let pre_path = dir.join(super::preprocess_config::HF_FILE);
        let preprocess = if pre_path.exists() { Some(super::preprocess_config::hugging_face(&pre_path, cfg.image_size as u32)?) } else { None };
        let weights = dir.join("model.safetensors");
        // SAFETY: the file is memory-mapped read-only and not modified while in use.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, dev) }
            .with_context(|| format!("{}: cannot read weights", weights.display()))?;
        let enc = Self::load(vb, &cfg).with_context(|| format!("{}: weights do not match config.json", weights.display()))?;
        Ok(Self { preprocess: preprocess.unwrap_or(enc.preprocess), ..enc })
    }

    /// How images become this model's input.
    pub fn preprocess(&self) -> Preprocess {
        self.preprocess
    }

    /// The layernormed CLS token of each image [N, hidden]. The last layer runs on the CLS
    /// row alone after its attention ([`Block::forward_first`]).
    pub fn features(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        let Some((last, blocks)) = self.blocks.split_last() else {
            return self.hidden(pixels)?.i((.., 0, ..))?.apply(&self.layernorm);
        };
        let mut x = self.embed(pixels)?;
        for block in blocks {
            x = block.forward(&x, None)?;
        }
        last.forward_first(&x)?.i((.., 0, ..))?.apply(&self.layernorm)
    }

    /// The layernormed CLS token [N, hidden] ([`Self::features`], to the last bits: here the
    /// last layer runs on every row) and the layernormed patch tokens [N, patches, hidden] (the
    /// final layer's `last_hidden_state` without CLS).
    pub fn features_and_tokens(&self, pixels: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let x = self.hidden(pixels)?;
        let cls = x.i((.., 0, ..))?.contiguous()?.apply(&self.layernorm)?;
        let patches = x.i((.., 1.., ..))?.contiguous()?.apply(&self.layernorm)?;
        Ok((cls, patches))
    }

    /// The last block's output [N, 1 + patches, hidden] (CLS first), before the final layernorm.
    fn hidden(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        let mut x = self.embed(pixels)?;
        for block in &self.blocks {
            x = block.forward(&x, None)?;
        }
        Ok(x)
    }

    /// The first block's input [N, 1 + patches, hidden]: CLS and the embedded patches, with
    /// their positions.
    fn embed(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        let b = pixels.dim(0)?;
        let patches = self.patch.forward(pixels)?;
        let hidden = patches.dim(D::Minus1)?;
        let patches = patches.reshape((b, (), hidden))?;
        let cls = self.cls_token.broadcast_as((b, 1, hidden))?;
        Tensor::cat(&[&cls, &patches], 1)?.broadcast_add(&self.position)
    }
}

impl super::image_encoder::ImageEncoder for VitEncoder {
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
