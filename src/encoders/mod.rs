//! Frozen encoders that turn raw inputs into features: text (BERT layout, e.g. MiniLM) and
//! images (EfficientNet-Lite0; more backbones to come). Each loads local weights only.

pub mod efficientnet_lite;
pub mod resnet;
pub mod text;
pub mod torch_legacy;
pub mod vit;

use crate::data::image::Preprocess;
use candle_core::{Result, Tensor};

/// A frozen visual backbone: preprocessing and a pooled feature per image.
pub trait ImageEncoder {
    fn name(&self) -> &str;
    fn preprocess(&self) -> Preprocess;
    /// [N, 3, H, W] -> [N, D].
    fn features(&self, images: &Tensor) -> Result<Tensor>;
}

impl ImageEncoder for efficientnet_lite::EfficientNetLite {
    fn name(&self) -> &str {
        "efficientnet-lite0"
    }

    fn preprocess(&self) -> Preprocess {
        efficientnet_lite::PREPROCESS
    }

    fn features(&self, images: &Tensor) -> Result<Tensor> {
        efficientnet_lite::EfficientNetLite::features(self, images)
    }
}
