//! ResNet-18 / ResNet-50 in the torchvision / timm key layout (`conv1`, `bn1`, `layer1.0...`,
//! `fc`), as a frozen image encoder: candle's implementation without its final layer, so the
//! feature is the global average pool (512-d for ResNet-18, 2048-d for ResNet-50).

use crate::data::image::Preprocess;
use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Func, VarBuilder};
use candle_transformers::models::resnet;
use std::path::Path;

/// ImageNet normalisation at 224 px, in 0..255 pixel units.
pub const PREPROCESS: Preprocess = Preprocess { size: 224, mean: [123.675, 116.28, 103.53], std: [58.395, 57.12, 57.375], resize: None };

pub struct ResnetEncoder {
    name: String,
    body: Func<'static>,
}

impl ResnetEncoder {
    /// `arch`: `resnet18` or `resnet50`.
    pub fn load(vb: VarBuilder<'static>, arch: &str) -> Result<Self> {
        let body = match arch {
            "resnet18" => resnet::resnet18_no_final_layer(vb)?,
            "resnet50" => resnet::resnet50_no_final_layer(vb)?,
            other => bail!("unknown ResNet `{other}` (resnet18 or resnet50)"),
        };
        Ok(Self { name: arch.to_string(), body })
    }

    /// Loads a safetensors checkpoint file.
    pub fn load_file(path: &Path, arch: &str, dev: &Device) -> Result<Self> {
        // SAFETY: the file is memory-mapped read-only and not modified while in use.
        let vb =
            unsafe { VarBuilder::from_mmaped_safetensors(&[path], DType::F32, dev) }.with_context(|| format!("{}: cannot read weights", path.display()))?;
        Self::load(vb, arch).with_context(|| format!("{}: not {arch} weights in torchvision layout", path.display()))
    }
}

impl super::ImageEncoder for ResnetEncoder {
    fn name(&self) -> &str {
        &self.name
    }

    fn preprocess(&self) -> Preprocess {
        PREPROCESS
    }

    fn features(&self, images: &Tensor) -> candle_core::Result<Tensor> {
        self.body.forward(images)
    }
}
