//! Image decoding and preprocessing: any format the `image` crate reads (JPEG, PNG, WebP),
//! alpha composited on white, shorter side resized (bicubic) and centre-cropped to a square,
//! then scaled per channel as the encoder expects.

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use image::{DynamicImage, RgbImage, imageops::FilterType};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// How an encoder wants its input: `(pixel - mean) / std`, pixels in 0..=255.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Preprocess {
    pub size: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// RGB with any alpha composited on white.
pub fn to_rgb_on_white(img: DynamicImage) -> RgbImage {
    let rgba = img.to_rgba8();
    let (w, h) = rgba.dimensions();
    RgbImage::from_fn(w, h, |x, y| {
        let p = rgba.get_pixel(x, y).0;
        let a = p[3] as f32 / 255.0;
        image::Rgb([0, 1, 2].map(|c| (p[c] as f32 * a + 255.0 * (1.0 - a)).round() as u8))
    })
}

/// Decodes one file; errors name the file.
pub fn load(path: &Path) -> Result<RgbImage> {
    let len = std::fs::metadata(path).with_context(|| format!("{}: cannot open image", path.display()))?.len();
    anyhow::ensure!(len > 0, "{}: empty file (0 bytes)", path.display());
    let img = image::ImageReader::open(path)
        .with_context(|| format!("{}: cannot open image", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("{}: cannot read image", path.display()))?
        .decode()
        .with_context(|| format!("{}: cannot decode image", path.display()))?;
    anyhow::ensure!(img.width() > 0 && img.height() > 0, "{}: image has size 0", path.display());
    Ok(to_rgb_on_white(img))
}

impl Preprocess {
    /// CHW f32 values of one image: resize the shorter side to `size`, centre-crop, normalise.
    pub fn apply(&self, img: &RgbImage) -> Vec<f32> {
        let (w, h) = img.dimensions();
        let s = self.size;
        let scale = s as f32 / w.min(h) as f32;
        let (nw, nh) = (((w as f32 * scale).round() as u32).max(s), ((h as f32 * scale).round() as u32).max(s));
        let resized = image::imageops::resize(img, nw, nh, FilterType::CatmullRom);
        let (x0, y0) = ((nw - s) / 2, (nh - s) / 2);
        let n = (s * s) as usize;
        let mut out = vec![0f32; 3 * n];
        for y in 0..s {
            for x in 0..s {
                let p = resized.get_pixel(x0 + x, y0 + y).0;
                for c in 0..3 {
                    out[c * n + (y * s + x) as usize] = (p[c] as f32 - self.mean[c]) / self.std[c];
                }
            }
        }
        out
    }

    /// Decodes and preprocesses files in parallel into a [N, 3, size, size] batch. Each entry of
    /// the result is the file's error, if any; failed files get no row.
    pub fn batch(&self, paths: &[PathBuf], dev: &Device) -> Result<(Tensor, Vec<Result<()>>)> {
        let rows: Vec<Result<Vec<f32>>> = paths.par_iter().map(|p| load(p).map(|img| self.apply(&img))).collect();
        let mut data = Vec::new();
        let mut status = Vec::new();
        for r in rows {
            match r {
                Ok(v) => {
                    data.extend(v);
                    status.push(Ok(()));
                }
                Err(e) => status.push(Err(e)),
            }
        }
        let s = self.size as usize;
        let n = data.len() / (3 * s * s);
        Ok((Tensor::from_vec(data, (n, 3, s, s), dev)?, status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transparent_pixels_become_white_and_crop_is_centred() {
        let mut img = image::RgbaImage::new(4, 2);
        img.put_pixel(0, 0, image::Rgba([0, 0, 0, 0]));
        img.put_pixel(1, 0, image::Rgba([10, 20, 30, 255]));
        let rgb = to_rgb_on_white(DynamicImage::ImageRgba8(img));
        assert_eq!(rgb.get_pixel(0, 0).0, [255, 255, 255]);
        assert_eq!(rgb.get_pixel(1, 0).0, [10, 20, 30]);
        let p = Preprocess { size: 2, mean: [127.0; 3], std: [128.0; 3] };
        let out = p.apply(&rgb);
        assert_eq!(out.len(), 3 * 4);
        assert!(out.iter().all(|v| (-1.0..=1.0).contains(v)));
    }
}
