//! Image decoding and preprocessing: any format the `image` crate reads (JPEG, PNG, WebP),
//! alpha composited on white, resized and centre-cropped to a square (by default the shorter
//! side resized, bicubic; or as a checkpoint's preprocessing config says, [`Resize`]), then
//! scaled per channel as the encoder expects.

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use image::{DynamicImage, RgbImage, imageops::FilterType};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// How an encoder wants its input: a `size` x `size` crop, `(pixel - mean) / std` with pixels
/// in 0..=255.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Preprocess {
    pub size: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// `None`: marnet's own resize, the shorter side to `size` (longer side rounded, bicubic)
    /// and the crop's offset rounded down. Absent from older bundles, which used that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize: Option<Resize>,
}

/// A resize as a checkpoint's preprocessing config names it, before the centre crop to `size`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Resize {
    /// Both sides to `side` (`squash`: aspect ratio not kept), or the shorter side to `side` and
    /// the longer one to `floor(side * long / short)`, as torchvision and transformers do.
    pub side: u32,
    pub squash: bool,
    pub filter: Filter,
    /// The crop's offset `(resized - size) / 2` rounded half to even (torchvision's
    /// `CenterCrop`, so timm), instead of down (transformers).
    pub round_offset: bool,
}

/// Resampling filters, as PIL names them; the `image` crate's filters of the same kernel
/// (widened when downscaling, as PIL's are).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Filter {
    Nearest,
    Bilinear,
    Bicubic,
    Lanczos,
}

impl Filter {
    fn kernel(self) -> FilterType {
        match self {
            Filter::Nearest => FilterType::Nearest,
            Filter::Bilinear => FilterType::Triangle,
            Filter::Bicubic => FilterType::CatmullRom,
            Filter::Lanczos => FilterType::Lanczos3,
        }
    }
}

impl Resize {
    /// The resized size, and the top-left corner of its centre `size` crop (`side >= size`).
    fn geometry(&self, img: &RgbImage, size: u32) -> ((u32, u32), (u32, u32)) {
        let (w, h) = img.dimensions();
        let (nw, nh) = if self.squash {
            (self.side, self.side)
        } else {
            let long = |l: u32, s: u32| ((self.side as u64 * l as u64) as f64 / s as f64) as u32;
            if w <= h { (self.side, long(h, w)) } else { (long(w, h), self.side) }
        };
        let offset = |d: u32| if self.round_offset && d % 2 == 1 && (d / 2) % 2 == 1 { d / 2 + 1 } else { d / 2 };
        ((nw, nh), (offset(nw - size), offset(nh - size)))
    }
}

/// RGB with any alpha composited on white.
pub fn to_rgb_on_white(img: DynamicImage) -> RgbImage {
    if !img.color().has_alpha() {
        // Opaque: the same values without the RGBA copy and the per-pixel blend.
        return img.into_rgb8();
    }
    let rgba = img.to_rgba8();
    let (w, h) = rgba.dimensions();
    RgbImage::from_fn(w, h, |x, y| {
        let p = rgba.get_pixel(x, y).0;
        let a = p[3] as f32 / 255.0;
        image::Rgb([0, 1, 2].map(|c| (p[c] as f32 * a + 255.0 * (1.0 - a)).round() as u8))
    })
}

/// Decodes an image held in memory; `name` (a file, a request) goes into the errors.
pub fn decode(bytes: &[u8], name: &str) -> Result<RgbImage> {
    anyhow::ensure!(!bytes.is_empty(), "{name}: empty file (0 bytes)");
    let reader = || image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().with_context(|| format!("{name}: cannot read image"));
    let (w, h, decoded) = super::image_check::header_size(reader()?).with_context(|| format!("{name}: cannot decode image"))?;
    if let Some(why) = super::image_check::too_big(w, h, decoded) {
        anyhow::bail!("{name}: image {why}");
    }
    let img = reader()?.decode().with_context(|| format!("{name}: cannot decode image"))?;
    anyhow::ensure!(img.width() > 0 && img.height() > 0, "{name}: image has size 0");
    // A JPEG cut short decodes, grey where its data is missing: refused here.
    if let Some(why) = super::image_check::truncation(bytes) {
        anyhow::bail!("{name}: image {why}");
    }
    Ok(to_rgb_on_white(img))
}

/// An image ready for an encoder: CHW values and the key of its noise stream.
pub struct Prepared {
    pub pixels: Vec<f32>,
    /// [`crate::rng::content_key`] of the encoded bytes.
    pub key: u64,
}

impl Preprocess {
    /// CHW f32 values of one image: resize, centre-crop to `size`, normalise.
    pub fn apply(&self, img: &RgbImage) -> Vec<f32> {
        let s = self.size;
        let (resized, crop, filter) = match &self.resize {
            Some(r) => {
                let (resized, crop) = r.geometry(img, s);
                (resized, crop, r.filter.kernel())
            }
            None => {
                let (w, h) = img.dimensions();
                let scale = s as f32 / w.min(h) as f32;
                let (nw, nh) = (((w as f32 * scale).round() as u32).max(s), ((h as f32 * scale).round() as u32).max(s));
                ((nw, nh), ((nw - s) / 2, (nh - s) / 2), FilterType::CatmullRom)
            }
        };
        let planes = super::resize::resized_crop(img, resized, crop, s, filter).unwrap_or_else(|| {
            let full = image::imageops::resize(img, resized.0, resized.1, filter);
            super::resize::planes(image::imageops::crop_imm(&full, crop.0, crop.1, s, s).to_image().as_raw())
        });
        let n = (s * s) as usize;
        assert_eq!(planes.len(), 3 * n, "the {s} px crop at {crop:?} lies outside the image resized to {resized:?}");
        let mut out = Vec::with_capacity(3 * n);
        for (c, plane) in planes.chunks_exact(n).enumerate() {
            let (mean, std) = (self.mean[c], self.std[c]);
            out.extend(plane.iter().map(|&p| (p as f32 - mean) / std));
        }
        out
    }

    /// Decodes and preprocesses one encoded image.
    pub fn prepare(&self, bytes: &[u8], name: &str) -> Result<Prepared> {
        Ok(Prepared { pixels: self.apply(&decode(bytes, name)?), key: crate::rng::content_key(bytes) })
    }

    /// Reads, decodes and preprocesses one file; errors name the file.
    pub fn prepare_file(&self, path: &Path) -> Result<Prepared> {
        let bytes = std::fs::read(path).with_context(|| format!("{}: cannot open image", path.display()))?;
        self.prepare(&bytes, &path.display().to_string())
    }

    /// Stacks prepared images into a [N, 3, size, size] batch.
    pub fn stack<'a>(&self, items: impl IntoIterator<Item = &'a Prepared>, dev: &Device) -> Result<Tensor> {
        let mut data: Vec<f32> = Vec::new();
        items.into_iter().for_each(|p| data.extend_from_slice(&p.pixels));
        let s = self.size as usize;
        let n = data.len() / (3 * s * s);
        Ok(Tensor::from_vec(data, (n, 3, s, s), dev)?)
    }

    /// Prepares files in parallel into a batch. Each entry of the result is the file's key, or
    /// its error; failed files get no row.
    pub fn batch(&self, paths: &[PathBuf], dev: &Device) -> Result<(Tensor, Vec<Result<u64>>)> {
        let rows: Vec<Result<Prepared>> = paths.par_iter().map(|p| self.prepare_file(p)).collect();
        let x = self.stack(rows.iter().filter_map(|r| r.as_ref().ok()), dev)?;
        Ok((x, rows.into_iter().map(|r| r.map(|p| p.key)).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opaque images skip the blend: the same values as through it.
    #[test]
    fn opaque_images_convert_as_the_blend_would() {
        let rgb = image::RgbImage::from_fn(7, 5, |x, y| image::Rgb([(x * 37) as u8, (y * 51) as u8, (x * y * 13) as u8]));
        let blended = to_rgb_on_white(DynamicImage::ImageRgba8(DynamicImage::ImageRgb8(rgb.clone()).to_rgba8()));
        assert_eq!(to_rgb_on_white(DynamicImage::ImageRgb8(rgb.clone())), blended);
        let grey = DynamicImage::ImageRgb16(DynamicImage::ImageRgb8(rgb).to_rgb16()).to_luma16();
        let blended = to_rgb_on_white(DynamicImage::ImageRgba8(DynamicImage::ImageLuma16(grey.clone()).to_rgba8()));
        assert_eq!(to_rgb_on_white(DynamicImage::ImageLuma16(grey)), blended);
    }

    #[test]
    fn transparent_pixels_become_white_and_crop_is_centred() {
        let mut img = image::RgbaImage::new(4, 2);
        img.put_pixel(0, 0, image::Rgba([0, 0, 0, 0]));
        img.put_pixel(1, 0, image::Rgba([10, 20, 30, 255]));
        let rgb = to_rgb_on_white(DynamicImage::ImageRgba8(img));
        assert_eq!(rgb.get_pixel(0, 0).0, [255, 255, 255]);
        assert_eq!(rgb.get_pixel(1, 0).0, [10, 20, 30]);
        let p = Preprocess { size: 2, mean: [127.0; 3], std: [128.0; 3], resize: None };
        let out = p.apply(&rgb);
        assert_eq!(out.len(), 3 * 4);
        assert!(out.iter().all(|v| (-1.0..=1.0).contains(v)));
    }
}
