//! ViT (B/16, B/32, ...) in the Hugging Face layout, as a frozen image encoder whose feature is
//! the final-layernormed CLS token. Loads a bare `ViTModel` checkpoint (`embeddings.*`) or a
//! `ViTForImageClassification` one (`vit.embeddings.*`) through candle's `Embeddings` and
//! `Encoder` parts; the classifier, if any, is ignored.

use crate::data::image::Preprocess;
use anyhow::{Context, Result};
use candle_core::{DType, Device, IndexOp, Module, Tensor};
use candle_nn::{LayerNorm, VarBuilder, layer_norm};
use candle_transformers::models::vit::{Config, Embeddings, Encoder};
use std::path::Path;

pub struct VitEncoder {
    embeddings: Embeddings,
    encoder: Encoder,
    layernorm: LayerNorm,
    image_size: usize,
}

impl VitEncoder {
    pub fn load(vb: VarBuilder, cfg: &Config) -> candle_core::Result<Self> {
        let vb = if vb.contains_tensor("vit.embeddings.cls_token") { vb.pp("vit") } else { vb };
        Ok(Self {
            embeddings: Embeddings::new(cfg, false, vb.pp("embeddings"))?,
            encoder: Encoder::new(cfg, vb.pp("encoder"))?,
            layernorm: layer_norm(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("layernorm"))?,
            image_size: cfg.image_size,
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
        let h = self.encoder.forward(&self.embeddings.forward(pixels, None, false)?)?;
        self.layernorm.forward(&h.i((.., 0, ..))?)
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
}
