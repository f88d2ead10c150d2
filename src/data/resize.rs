//! A crop of `image::imageops::resize`'s output, computed alone and the same bytes.
//!
//! The `image` crate resizes in two passes, the columns then the rows, each output value a sum
//! of input values times normalised filter weights; it evaluates the filter for every output
//! value and reads each input pixel through a bounds-checked accessor, and rounds through a call
//! to `roundf`. Preprocessing a 64 px PNG for `serve` took 1.2 ms of CPU that way, 10% of the
//! encoder's own time per image once EfficientNet-Lite0 got faster (BENCHMARKS.md, 2026-12-06,
//! evening). Here the weights are computed once per output row and column, only the rows and
//! columns of the crop are resampled, and the sums run over plain slices: the same IEEE
//! operations in the same order (weights, their normalisation, sums from 0 in tap order, the
//! clamp and rounding), so the same bytes, which the test checks against the crate (this follows
//! image 0.25.10's `imageops::sample`; the test is what catches a later version that differs).

use image::RgbImage;
use image::imageops::FilterType;

/// The `size` x `size` crop at `(x0, y0)` of `image::imageops::resize(img, nw, nh, filter)`,
/// RGB bytes row by row; `None` for a filter done here (Gaussian, Lanczos3: the caller uses the
/// crate) or a crop outside the resized image.
pub fn resized_crop(img: &RgbImage, (nw, nh): (u32, u32), (x0, y0): (u32, u32), size: u32, filter: FilterType) -> Option<Vec<u8>> {
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 || x0 + size > nw || y0 + size > nh {
        return None;
    }
    let (s, x0, y0) = (size as usize, x0 as usize, y0 as usize);
    if (nw, nh) == (w, h) {
        // The crate copies an image of the same size.
        let mut out = Vec::with_capacity(3 * s * s);
        for y in y0..y0 + s {
            out.extend_from_slice(&img.as_raw()[3 * (y * w as usize + x0)..3 * (y * w as usize + x0 + s)]);
        }
        return Some(out);
    }
    let (kernel, support): (fn(f32) -> f32, f32) = match filter {
        FilterType::Nearest => (|_| 1.0, 0.0),
        FilterType::Triangle => (triangle, 1.0),
        FilterType::CatmullRom => (catmull_rom, 2.0),
        _ => return None,
    };
    let (w, h) = (w as usize, h as usize);
    let rows = taps(h, nh as usize, y0..y0 + s, kernel, support);
    let columns = taps(w, nw as usize, x0..x0 + s, kernel, support);
    // Columns pass: the crop's rows, every input column, as f32 (the crate's Rgba32F image).
    let src = img.as_raw();
    let mut tall = vec![0f32; s * 3 * w];
    for (row, t) in rows.iter().zip(tall.chunks_exact_mut(3 * w)) {
        for (i, &wt) in row.weights.iter().enumerate() {
            let line = &src[3 * w * (row.first + i)..3 * w * (row.first + i + 1)];
            for (t, &v) in t.iter_mut().zip(line) {
                *t += v as f32 * wt;
            }
        }
    }
    // Rows pass: the crop's columns; clamped to 0..=255 and rounded half away from zero.
    let mut out = vec![0u8; 3 * s * s];
    for (t, o) in tall.chunks_exact(3 * w).zip(out.chunks_exact_mut(3 * s)) {
        for (col, o) in columns.iter().zip(o.chunks_exact_mut(3)) {
            let mut sum = [0f32; 3];
            for (i, &wt) in col.weights.iter().enumerate() {
                let p = &t[3 * (col.first + i)..3 * (col.first + i) + 3];
                for (s, &v) in sum.iter_mut().zip(p) {
                    *s += v * wt;
                }
            }
            for (o, s) in o.iter_mut().zip(sum) {
                *o = round_byte(s.clamp(0.0, 255.0));
            }
        }
    }
    Some(out)
}

/// `x.round() as u8` for `x` in 0..=255 (or NaN, which gives 0 either way), without a call to
/// `roundf` (x86-64 before SSE4.1 has no rounding instruction): the fraction `x - trunc(x)` is
/// exact there, and a half rounds up, away from zero.
fn round_byte(x: f32) -> u8 {
    debug_assert!(x.is_nan() || (0.0..=255.0).contains(&x), "round_byte({x})");
    let t = x as u8;
    if x - t as f32 >= 0.5 { t + 1 } else { t }
}

/// The inputs one output value reads: from `first`, one weight each.
struct Taps {
    first: usize,
    weights: Vec<f32>,
}

/// The taps of outputs `range` of a side resized from `len` to `new_len` values, as the crate
/// computes them: the filter widened by the ratio when shrinking, weights normalised to sum 1.
fn taps(len: usize, new_len: usize, range: std::ops::Range<usize>, kernel: fn(f32) -> f32, support: f32) -> Vec<Taps> {
    let ratio = len as f32 / new_len as f32;
    let sratio = if ratio < 1.0 { 1.0 } else { ratio };
    let src_support = support * sratio;
    range
        .map(|out| {
            let centre = (out as f32 + 0.5) * ratio;
            let left = ((centre - src_support).floor() as i64).clamp(0, len as i64 - 1);
            let right = ((centre + src_support).ceil() as i64).clamp(left + 1, len as i64);
            let centre = centre - 0.5;
            let mut weights: Vec<f32> = (left..right).map(|i| kernel((i as f32 - centre) / sratio)).collect();
            let mut sum = 0.0;
            weights.iter().for_each(|w| sum += w);
            weights.iter_mut().for_each(|w| *w /= sum);
            Taps { first: left as usize, weights }
        })
        .collect()
}

fn triangle(x: f32) -> f32 {
    if x.abs() < 1.0 { 1.0 - x.abs() } else { 0.0 }
}

/// The Catmull-Rom spline: the BC cubic with B = 0, C = 1/2, in the crate's arithmetic.
fn catmull_rom(x: f32) -> f32 {
    let (b, c) = (0.0f32, 0.5f32);
    let a = x.abs();
    let k = if a < 1.0 {
        (12.0 - 9.0 * b - 6.0 * c) * a.powi(3) + (-18.0 + 12.0 * b + 6.0 * c) * a.powi(2) + (6.0 - 2.0 * b)
    } else if a < 2.0 {
        (-b - 6.0 * c) * a.powi(3) + (6.0 * b + 30.0 * c) * a.powi(2) + (-12.0 * b - 48.0 * c) * a + (8.0 * b + 24.0 * c)
    } else {
        0.0
    };
    k / 6.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same byte as `round() as u8` on every value of the clamped range's halves and their
    /// neighbours, and on NaN.
    #[test]
    fn round_byte_rounds_as_the_crate() {
        let mut xs = vec![f32::NAN, 0.0, 255.0, 254.99998];
        for i in 0..=255u32 {
            let half = i as f32 + 0.5;
            xs.extend([i as f32, half, half.next_down(), half.next_up(), (i as f32).next_up()]);
        }
        for x in xs.into_iter().map(|x| x.clamp(0.0, 255.0)) {
            assert_eq!(round_byte(x), x.round() as u8, "{x}");
        }
    }

    /// The same bytes as the crate's resize then crop: enlarging and shrinking, sides of 1 and
    /// odd ones, crops at the corner and inside, each filter done here; other filters say `None`.
    #[test]
    fn gives_the_crates_bytes() {
        use rand::Rng;
        let mut rng = crate::rng::stream(7, "test", 0);
        for (w, h) in [(64, 64), (1, 1), (5, 3), (17, 33), (512, 384), (300, 200)] {
            let img = RgbImage::from_fn(w, h, |_, _| image::Rgb([rng.random(), rng.random(), rng.random()]));
            for (nw, nh) in [(224, 224), (298, 224), (224, 256), (7, 9), (w, h)] {
                for filter in [FilterType::CatmullRom, FilterType::Triangle, FilterType::Nearest] {
                    let want = image::imageops::resize(&img, nw, nh, filter);
                    let size = nw.min(nh).min(5 + nw.min(nh) / 2);
                    for (x0, y0) in [(0, 0), ((nw - size) / 2, (nh - size) / 2), (nw - size, nh - size)] {
                        let got = resized_crop(&img, (nw, nh), (x0, y0), size, filter).unwrap();
                        let crop = image::imageops::crop_imm(&want, x0, y0, size, size).to_image();
                        assert!(got == crop.into_raw(), "{w}x{h} -> {nw}x{nh} {filter:?} crop {size} at {x0},{y0}");
                    }
                }
            }
        }
        let img = RgbImage::new(4, 4);
        assert!(resized_crop(&img, (8, 8), (0, 0), 4, FilterType::Lanczos3).is_none());
        assert!(resized_crop(&img, (8, 8), (5, 0), 4, FilterType::CatmullRom).is_none());
    }
}
