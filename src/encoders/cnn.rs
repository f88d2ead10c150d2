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

/// Helpers for the backbones' tests.
#[cfg(test)]
pub(crate) mod testing {
    use candle_core::{DType, Device, Tensor};
    use candle_nn::VarBuilder;

    /// A model `load` builds on weights drawn at random, every tensor it reads (positive, as
    /// batch norms' variances must be; by name, so the same draws each time).
    pub fn random<M, E: std::fmt::Debug>(load: impl Fn(VarBuilder) -> Result<M, E>) -> M {
        let map = candle_nn::VarMap::new();
        // The first load creates every tensor it reads, as zeros.
        load(VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu)).unwrap();
        let mut vars: Vec<_> = map.data().lock().unwrap().iter().map(|(n, v)| (n.clone(), v.clone())).collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let mut rng = crate::rng::stream(4, "test", 0);
        for (_, v) in vars {
            v.set(&(crate::rng::randn(&mut rng, v.shape(), &Device::Cpu).unwrap().abs().unwrap() * 0.2).unwrap()).unwrap();
        }
        load(VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu)).unwrap()
    }

    /// `forward` on five images on two threads gives the bits of `layers` on the whole batch.
    pub fn same_bits_by_image(
        forward: impl Fn(&Tensor) -> candle_core::Result<Tensor> + Sync + Send,
        layers: impl Fn(&Tensor) -> candle_core::Result<Tensor> + Sync + Send,
    ) {
        let x = crate::rng::randn(&mut crate::rng::stream(5, "test", 0), (5, 3, 32, 32), &Device::Cpu).unwrap();
        crate::nn::pool::assert_same_bits_on_two_threads(&x, forward, layers);
    }
}
