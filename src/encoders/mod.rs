//! Frozen encoders that turn raw inputs into features. Each loads local weights only.
//! - Text: any BERT-layout folder, pooled as its sentence-transformers config says (`text`).
//! - Images: EfficientNet-Lite0/2 (`efficientnet_lite`), the transformers ViT (`vit`) and Swin-T
//!   (`swin`, sharing `transformer`'s layers), and the CNN backbones of the paper's Table 1
//!   (`cnn`: `resnet`, `vgg`, `repvgg`) from timm / torchvision state dicts. Preprocessing comes
//!   from the checkpoint's config where it has one (`preprocess_config`).

pub mod cnn;
pub mod efficientnet_lite;
mod image_encoder;
pub mod preprocess_config;
pub mod repvgg;
pub mod resnet;
pub mod swin;
pub mod text;
pub mod torch_legacy;
mod transformer;
pub mod vgg;
pub mod vit;

use crate::data::image::Preprocess;
use candle_core::{Result, Tensor};
pub use image_encoder::ImageEncoder;

impl ImageEncoder for efficientnet_lite::EfficientNetLite {
    fn name(&self) -> &str {
        self.config.name
    }

    fn preprocess(&self) -> Preprocess {
        self.config.preprocess
    }

    fn features(&self, images: &Tensor) -> Result<Tensor> {
        efficientnet_lite::EfficientNetLite::features(self, images)
    }

    fn features_and_tokens(&self, images: &Tensor) -> Result<(Tensor, Tensor)> {
        efficientnet_lite::EfficientNetLite::features_and_tokens(self, images)
    }
}

/// Loads the visual encoder a `--visual` value names: `efficientnet-lite0` or
/// `efficientnet-lite2` (from `assets/NAME`), `efficientnet-lite0:DIR` or
/// `efficientnet-lite2:DIR`, `vit:DIR` (Hugging Face folder),
/// `resnet18:FILE` or `resnet50:FILE` (torchvision-layout safetensors);
/// `wide_resnet50_2:FILE`, `vgg19:FILE`, `repvgg_a2:FILE` (or another `repvgg_{a0..a2,b0..b3}`):
/// timm (or torchvision, for the ResNets and VGG) state dicts in safetensors; `swin_t:PATH`
/// (also `swin-t`; timm layout: a safetensors file, or a folder with `model.safetensors` and
/// timm's `config.json`).
pub fn load_image_encoder(spec: &str, assets: &std::path::Path, dev: &candle_core::Device) -> anyhow::Result<Box<dyn ImageEncoder>> {
    let (kind, path) = match spec.split_once(':') {
        Some((k, p)) => (k, Some(std::path::PathBuf::from(p))),
        None => (spec, None),
    };
    let need = || path.clone().ok_or_else(|| anyhow::anyhow!("--visual {kind} needs a path: {kind}:PATH"));
    Ok(match kind {
        "efficientnet-lite0" | "efficientnet-lite2" => {
            let config = if kind == "efficientnet-lite0" { efficientnet_lite::Config::lite0() } else { efficientnet_lite::Config::lite2() };
            let dir = path.clone().unwrap_or_else(|| assets.join(kind));
            Box::new(efficientnet_lite::EfficientNetLite::load_dir(&dir, config, dev)?)
        }
        "vit" => Box::new(vit::VitEncoder::load_dir(&need()?, dev)?),
        "resnet18" | "resnet50" | "wide_resnet50_2" => Box::new(resnet::ResnetEncoder::load_file(&need()?, kind, dev)?),
        "vgg19" => Box::new(cnn::CnnEncoder::from_file(&need()?, kind, dev, |vb| vgg::Vgg::load(vb, &vgg::Config::vgg19()))?),
        k if k.starts_with("repvgg_") => {
            let cfg = repvgg::Config::by_name(k)?;
            Box::new(cnn::CnnEncoder::from_file(&need()?, kind, dev, |vb| repvgg::RepVgg::load(vb, &cfg))?)
        }
        "swin_t" | "swin-t" => Box::new(swin::Swin::load_path(&need()?, dev)?),
        other => anyhow::bail!(
            "unknown visual encoder `{other}` (efficientnet-lite0, efficientnet-lite2, vit:DIR, resnet18:FILE, resnet50:FILE, wide_resnet50_2:FILE, vgg19:FILE, repvgg_a2:FILE, swin_t:PATH)"
        ),
    })
}
