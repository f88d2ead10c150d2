//! The ImageNet CNN backbones (ResNet, Wide-ResNet, VGG, RepVGG) as frozen image encoders:
//! a timm / torchvision state dict in one safetensors file, ImageNet mean/std at 224 px, and
//! the model's pooled feature.

use crate::data::image::Preprocess;
use anyhow::{Context, Result};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use std::path::Path;

/// ImageNet normalisation at 224 px, in 0..255 pixel units.
pub const PREPROCESS: Preprocess = Preprocess { size: 224, mean: [123.675, 116.28, 103.53], std: [58.395, 57.12, 57.375], resize: None };

/// A backbone under the name `--visual` gave it (recorded with the features and checked by bundles).
pub struct CnnEncoder<M> {
    name: String,
    model: M,
}

impl<M: Module> CnnEncoder<M> {
    pub fn new(name: &str, model: M) -> Self {
        Self { name: name.to_string(), model }
    }

    /// Loads `path` (safetensors) with `load`.
    pub fn from_file(path: &Path, name: &str, dev: &Device, load: impl FnOnce(VarBuilder) -> candle_core::Result<M>) -> Result<Self> {
        // SAFETY: the file is memory-mapped read-only and not modified while in use.
        let vb =
            unsafe { VarBuilder::from_mmaped_safetensors(&[path], DType::F32, dev) }.with_context(|| format!("{}: cannot read weights", path.display()))?;
        let model = load(vb).with_context(|| format!("{}: not {name} weights in timm/torchvision layout", path.display()))?;
        Ok(Self::new(name, model))
    }
}

impl<M: Module + Send + Sync> super::image_encoder::ImageEncoder for CnnEncoder<M> {
    fn name(&self) -> &str {
        &self.name
    }

    fn preprocess(&self) -> Preprocess {
        PREPROCESS
    }

    fn features(&self, images: &Tensor) -> candle_core::Result<Tensor> {
        self.model.forward(images)
    }
}
