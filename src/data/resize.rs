//! A crop of `image::imageops::resize`'s output, computed alone and the same bytes.
//!
//! The `image` crate resizes in two passes, the columns then the rows, each output value a sum
//! of input values times normalised filter weights; it evaluates the filter for every output
//! value and reads each input pixel through a bounds-checked accessor, and rounds through a call
//! to `roundf`. Preprocessing a 64 px PNG for `serve` took 1.2 ms of CPU that way, 10% of the
//! encoder's own time per image once EfficientNet-Lite0 got faster (BENCHMARKS.md, 2026-12-06,
//! evening). Here the weights are computed once per output row and column, only the rows and
//! columns of the crop are resampled, the sums run over plain slices, and the second pass runs
//! down the columns (an output column's taps on all its rows at once, which the compiler
//! vectorises; under load, `serve`'s preprocessing went from 3.6% to 1.8% of its CPU time,
//! BENCHMARKS.md, 2026-12-07): the same IEEE operations in the same order (weights, their
//! normalisation, sums from 0 in tap order, the clamp and rounding), so the same bytes, which the
//! test checks against the crate (this follows image 0.25.10's `imageops::sample`; the test is
//! what catches a later version that differs).

use image::RgbImage;
use image::imageops::FilterType;

/// The `size` x `size` crop at `(x0, y0)` of `image::imageops::resize(img, nw, nh, filter)`,
/// as three planes (R, G, B) of bytes row by row; `None` for a filter done here (Gaussian,
/// Lanczos3: the caller uses the crate) or a crop outside the resized image.
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
        return Some(planes(&out));
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
    // Rows pass: the crop's columns, each output column's taps applied to all rows at once
    // (`tall` transposed: one run of the s rows per input column and channel); clamped to
    // 0..=255, rounded half away from zero, and each plane transposed back at the end.
    let mut by_column = vec![0f32; 3 * w * s];
    for (y, t) in tall.chunks_exact(3 * w).enumerate() {
        for (j, &v) in t.iter().enumerate() {
            by_column[j * s + y] = v;
        }
    }
    let mut columns_out = vec![0u8; 3 * s * s];
    let mut sum = vec![0f32; s];
    for (x, col) in columns.iter().enumerate() {
        for c in 0..3 {
            sum.fill(0.0);
            for (i, &wt) in col.weights.iter().enumerate() {
                let j = 3 * (col.first + i) + c;
                sum.iter_mut().zip(&by_column[j * s..(j + 1) * s]).for_each(|(s, &v)| *s += v * wt);
            }
            let o = &mut columns_out[(c * s + x) * s..][..s];
            o.iter_mut().zip(&sum).for_each(|(o, &v)| *o = round_byte(v));
        }
    }
    let mut out = vec![0u8; 3 * s * s];
    for (plane, by_x) in out.chunks_exact_mut(s * s).zip(columns_out.chunks_exact(s * s)) {
        // 16 columns at a time: their runs stay in cache while they fill the rows.
        for x0 in (0..s).step_by(16) {
            let columns = &by_x[x0 * s..(x0 + 16).min(s) * s];
            for (y, row) in plane.chunks_exact_mut(s).enumerate() {
                row[x0..].iter_mut().zip(columns.chunks_exact(s)).for_each(|(o, column)| *o = column[y]);
            }
        }
    }
    Some(out)
}

/// Interleaved RGB bytes as three planes: all R, then all G, then all B.
pub fn planes(rgb: &[u8]) -> Vec<u8> {
    (0..3).flat_map(|c| rgb.chunks_exact(3).map(move |p| p[c])).collect()
}

/// `x.clamp(0.0, 255.0).round() as u8` (NaN gives 0 either way), without a call to `roundf`
/// (x86-64 before SSE4.1 has no rounding instruction) and in operations the compiler vectorises
/// over a run of values: the fraction `x - trunc(x)` is exact in 0..=255, and a half rounds up,
/// away from zero.
fn round_byte(x: f32) -> u8 {
    #[allow(clippy::manual_clamp)] // `clamp` keeps NaN, which would not be in range below
    let x = x.max(0.0).min(255.0);
    // SAFETY: x is finite and in 0..=255.
    let t = unsafe { x.to_int_unchecked::<i32>() };
    (t + (x - t as f32 >= 0.5) as i32) as u8
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

    /// The same byte as `clamp(0.0, 255.0).round() as u8` on every value of the range's halves
    /// and their neighbours, on values outside the range, and on NaN.
    #[test]
    fn round_byte_rounds_as_the_crate() {
        let mut xs = vec![f32::NAN, 0.0, 255.0, 254.99998, -0.0, -0.5, -3.7, 255.5, 300.0, f32::INFINITY, f32::NEG_INFINITY];
        for i in 0..=255u32 {
            let half = i as f32 + 0.5;
            xs.extend([i as f32, half, half.next_down(), half.next_up(), (i as f32).next_up()]);
        }
        for x in xs {
            assert_eq!(round_byte(x), x.clamp(0.0, 255.0).round() as u8, "{x}");
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
                        assert!(got == planes(&crop.into_raw()), "{w}x{h} -> {nw}x{nh} {filter:?} crop {size} at {x0},{y0}");
                    }
                }
            }
        }
        let img = RgbImage::new(4, 4);
        assert!(resized_crop(&img, (8, 8), (0, 0), 4, FilterType::Lanczos3).is_none());
        assert!(resized_crop(&img, (8, 8), (5, 0), 4, FilterType::CatmullRom).is_none());
    }
}
