//! Preprocessing as a checkpoint's own config says: a Hugging Face `preprocessor_config.json`
//! (read as `ViTImageProcessor` does) or timm's `pretrained_cfg` (as `timm.data.create_transform`
//! builds its eval transform), turned into a [`Preprocess`]. Settings marnet cannot honour are
//! errors naming the file, never silently replaced.

use crate::data::image::{Filter, Preprocess, Resize};
use anyhow::{Context, Result, bail, ensure};
use serde::Deserialize;
use std::path::Path;

/// The Hugging Face preprocessing file of a model folder.
pub const HF_FILE: &str = "preprocessor_config.json";

/// timm's `IMAGENET_DEFAULT_MEAN` / `IMAGENET_DEFAULT_STD`, pixels in 0..1.
const IMAGENET_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f64; 3] = [0.229, 0.224, 0.225];

/// `(pixel * rescale - mean) / std` as [`Preprocess`]'s mean and std in 0..=255 pixel units.
fn normalization(mean: [f64; 3], std: [f64; 3], rescale: f64) -> ([f32; 3], [f32; 3]) {
    (mean.map(|m| (m / rescale) as f32), std.map(|s| (s / rescale) as f32))
}

/// A size as transformers writes it: one number (square) or a dictionary.
#[derive(Deserialize)]
#[serde(untagged)]
enum HfSize {
    Square(u32),
    Dict { height: Option<u32>, width: Option<u32>, shortest_edge: Option<u32>, longest_edge: Option<u32> },
}

/// Per-channel values: one for all three channels, or three.
#[derive(Deserialize)]
#[serde(untagged)]
enum Channels {
    One(f64),
    Three([f64; 3]),
}

impl Channels {
    fn rgb(self) -> [f64; 3] {
        match self {
            Channels::One(v) => [v; 3],
            Channels::Three(v) => v,
        }
    }
}

/// The keys of `preprocessor_config.json` that change the pixels; absent ones take
/// `ViTImageProcessor`'s defaults.
#[derive(Deserialize)]
struct HfPreprocessor {
    do_resize: Option<bool>,
    size: Option<HfSize>,
    resample: Option<u32>,
    do_center_crop: Option<bool>,
    crop_size: Option<HfSize>,
    do_rescale: Option<bool>,
    rescale_factor: Option<f64>,
    do_normalize: Option<bool>,
    image_mean: Option<Channels>,
    image_std: Option<Channels>,
    crop_pct: Option<serde_json::Value>,
    do_pad: Option<bool>,
}

/// The side of a square `{height, width}` (or plain number) size.
fn square(size: &HfSize, key: &str) -> Result<u32> {
    match *size {
        HfSize::Square(s) => Ok(s),
        HfSize::Dict { height: Some(h), width: Some(w), shortest_edge: None, longest_edge: None } if h == w => Ok(h),
        _ => bail!("`{key}` must be square ({{\"height\": S, \"width\": S}}): marnet's encoders take square images"),
    }
}

/// The preprocessing of a Hugging Face `preprocessor_config.json` for a model that takes
/// `image_size` x `image_size` images: resize (`size` as `{height, width}`, or
/// `{shortest_edge}`, with `resample`), optional centre crop (`crop_size`), `rescale_factor`,
/// `image_mean` / `image_std`.
pub fn hugging_face(path: &Path, image_size: u32) -> Result<Preprocess> {
    let cfg: HfPreprocessor = crate::fsutil::read_json(path)?;
    (|| {
        ensure!(cfg.crop_pct.is_none(), "`crop_pct` (ConvNeXT-style resizing) is not supported");
        ensure!(!cfg.do_pad.unwrap_or(false), "`do_pad` is not supported");
        ensure!(cfg.do_resize.unwrap_or(true), "`do_resize: false` is not supported: images come in any size, the model takes one");
        let (side, squash) = match cfg.size.unwrap_or(HfSize::Square(224)) {
            HfSize::Dict { shortest_edge: Some(s), height: None, width: None, longest_edge: None } => (s, false),
            size => (square(&size, "size")?, true),
        };
        let size = match (cfg.do_center_crop.unwrap_or(false), &cfg.crop_size) {
            (true, Some(crop)) => square(crop, "crop_size")?,
            (true, None) => bail!("`do_center_crop` without `crop_size`"),
            (false, _) if squash => side,
            (false, _) => bail!("`size: {{shortest_edge}}` without `do_center_crop` gives images of any shape"),
        };
        ensure!(size == image_size, "the processed images are {size} px but the model takes {image_size} px");
        ensure!(side >= size, "`crop_size` {size} is larger than the resized image ({side} px)");
        let filter = match cfg.resample.unwrap_or(2) {
            0 => Filter::Nearest,
            1 => Filter::Lanczos,
            2 => Filter::Bilinear,
            3 => Filter::Bicubic,
            other => bail!("`resample: {other}` is not supported (0 nearest, 1 lanczos, 2 bilinear, 3 bicubic)"),
        };
        let rescale = if cfg.do_rescale.unwrap_or(true) { cfg.rescale_factor.unwrap_or(1.0 / 255.0) } else { 1.0 };
        let (mean, std) = if cfg.do_normalize.unwrap_or(true) {
            (cfg.image_mean.map_or([0.5; 3], Channels::rgb), cfg.image_std.map_or([0.5; 3], Channels::rgb))
        } else {
            ([0.0; 3], [1.0; 3])
        };
        let (mean, std) = normalization(mean, std, rescale);
        Ok(Preprocess { size, mean, std, resize: Some(Resize { side, squash, filter, round_offset: false }) })
    })()
    .with_context(|| format!("{}: unsupported preprocessing", path.display()))
}

/// timm's `pretrained_cfg` (the preprocessing part), as timm writes it into a model's
/// `config.json`; absent keys take `timm.data.resolve_data_config`'s defaults.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TimmPretrained {
    pub input_size: Option<[u32; 3]>,
    pub interpolation: Option<String>,
    pub crop_pct: Option<f64>,
    pub crop_mode: Option<String>,
    pub mean: Option<[f64; 3]>,
    pub std: Option<[f64; 3]>,
}

impl TimmPretrained {
    /// timm's eval transform for a model that takes `image_size` x `image_size` images: the
    /// shorter side (`crop_mode: center`) or both sides (`squash`) resized to
    /// `floor(size / crop_pct)`, centre crop, `(x / 255 - mean) / std`.
    pub fn preprocess(&self, image_size: u32) -> Result<Preprocess> {
        let [_, h, w] = self.input_size.unwrap_or([3, image_size, image_size]);
        ensure!(h == w && h == image_size, "`input_size` {h}x{w} is not the model's {image_size}x{image_size}");
        let crop_pct = self.crop_pct.unwrap_or(0.875);
        ensure!(crop_pct > 0.0 && crop_pct <= 1.0, "`crop_pct` {crop_pct} is not in (0, 1]");
        let squash = match self.crop_mode.as_deref().unwrap_or("center") {
            "center" => false,
            "squash" => true,
            other => bail!("`crop_mode: {other}` is not supported (center, squash)"),
        };
        let filter = match self.interpolation.as_deref().unwrap_or("bicubic") {
            "nearest" => Filter::Nearest,
            "bilinear" => Filter::Bilinear,
            "bicubic" => Filter::Bicubic,
            "lanczos" => Filter::Lanczos,
            other => bail!("`interpolation: {other}` is not supported (nearest, bilinear, bicubic, lanczos)"),
        };
        let side = (image_size as f64 / crop_pct).floor() as u32;
        let (mean, std) = normalization(self.mean.unwrap_or(IMAGENET_MEAN), self.std.unwrap_or(IMAGENET_STD), 1.0 / 255.0);
        Ok(Preprocess { size: image_size, mean, std, resize: Some(Resize { side, squash, filter, round_offset: true }) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hf(json: &str, image_size: u32) -> Result<Preprocess> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(HF_FILE);
        std::fs::write(&path, json).unwrap();
        hugging_face(&path, image_size).map_err(|e| anyhow::anyhow!("{e:#}").context(path.display().to_string()))
    }

    #[test]
    fn hugging_face_configs_and_their_defaults() {
        // ViTImageProcessor's defaults: 224x224 squashed, bilinear, (x / 255 - 0.5) / 0.5.
        let p = hf("{}", 224).unwrap();
        assert_eq!((p.size, p.mean, p.std), (224, [127.5; 3], [127.5; 3]));
        assert_eq!(p.resize, Some(Resize { side: 224, squash: true, filter: Filter::Bilinear, round_offset: false }));
        let p = hf(r#"{"size": {"shortest_edge": 36}, "do_center_crop": true, "crop_size": 32, "resample": 3, "do_normalize": false}"#, 32).unwrap();
        assert_eq!((p.size, p.mean, p.std), (32, [0.0; 3], [255.0; 3]));
        assert_eq!(p.resize, Some(Resize { side: 36, squash: false, filter: Filter::Bicubic, round_offset: false }));
        assert_eq!(hf(r#"{"size": 32, "do_rescale": false, "image_mean": 0.5, "image_std": 2}"#, 32).unwrap().std, [2.0; 3]);
    }

    #[test]
    fn malformed_configs_are_errors_naming_the_file() {
        for (json, size, says) in [
            (r#"{"resample": 4}"#, 224, "resample: 4"),
            (r#"{"size": {"height": 32, "width": 48}}"#, 32, "square"),
            (r#"{"size": {"height": 32, "width": 32}}"#, 64, "32 px but the model takes 64"),
            (r#"{"size": {"shortest_edge": 32}}"#, 32, "any shape"),
            (r#"{"do_resize": false}"#, 224, "do_resize"),
            (r#"{"crop_pct": 0.9}"#, 224, "crop_pct"),
            (r#"{"size": "big"}"#, 224, "unexpected content"),
            ("{", 224, "unexpected content"),
        ] {
            let e = format!("{:#}", hf(json, size).unwrap_err());
            assert!(e.contains(HF_FILE) && e.contains(says), "{json}: {e}");
        }
    }

    #[test]
    fn timm_pretrained_cfg() {
        // timm's defaults: crop_pct 0.875 (224 -> 256), bicubic, centre crop rounded as torchvision does.
        let p = TimmPretrained::default().preprocess(224).unwrap();
        assert_eq!(p.resize, Some(Resize { side: 256, squash: false, filter: Filter::Bicubic, round_offset: true }));
        assert!((p.mean[0] - 123.675).abs() < 1e-3 && (p.std[2] - 57.375).abs() < 1e-3);
        let squash = TimmPretrained { crop_mode: Some("squash".into()), crop_pct: Some(1.0), ..Default::default() };
        assert_eq!(squash.preprocess(224).unwrap().resize.unwrap().side, 224);
        for (cfg, says) in [
            (TimmPretrained { crop_mode: Some("border".into()), ..Default::default() }, "crop_mode: border"),
            (TimmPretrained { input_size: Some([3, 256, 256]), ..Default::default() }, "not the model's 224x224"),
            (TimmPretrained { interpolation: Some("random".into()), ..Default::default() }, "interpolation: random"),
            (TimmPretrained { crop_pct: Some(1.5), ..Default::default() }, "crop_pct"),
        ] {
            let e = format!("{:#}", cfg.preprocess(224).unwrap_err());
            assert!(e.contains(says), "{e}");
        }
    }

    /// A ViT folder's `preprocessor_config.json` decides its preprocessing; one for another size
    /// is refused, naming the file.
    #[test]
    fn vit_folder_preprocessing_comes_from_its_config() {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vit-tiny");
        let dir = tempfile::tempdir().unwrap();
        for f in ["config.json", "model.safetensors"] {
            std::fs::copy(fixture.join(f), dir.path().join(f)).unwrap();
        }
        let dev = candle_core::Device::Cpu;
        let default = crate::encoders::vit::VitEncoder::load_dir(dir.path(), &dev).unwrap().preprocess();
        assert_eq!((default.size, default.resize), (32, None));
        std::fs::write(dir.path().join(HF_FILE), r#"{"size": {"height": 32, "width": 32}, "resample": 3}"#).unwrap();
        let pre = crate::encoders::vit::VitEncoder::load_dir(dir.path(), &dev).unwrap().preprocess();
        assert_eq!(pre, hugging_face(&dir.path().join(HF_FILE), 32).unwrap());
        assert_eq!(pre.resize.unwrap().filter, Filter::Bicubic);
        std::fs::write(dir.path().join(HF_FILE), r#"{"size": {"height": 224, "width": 224}}"#).unwrap();
        let e = format!("{:#}", crate::encoders::vit::VitEncoder::load_dir(dir.path(), &dev).err().unwrap());
        assert!(e.contains(&dir.path().join(HF_FILE).display().to_string()) && e.contains("model takes 32"), "{e}");
    }
}
