//! The depthwise convolution of EfficientNet-Lite's blocks (one kxk filter per channel), as a
//! CPU op with its zero padding, bias and ReLU6 fused.
//!
//! Each output element is `bias + w[0] x[0] + w[1] x[1] + ...` over the taps that fall inside
//! the input, in filter order, a product then a sum per tap (two roundings; Rust never fuses
//! them). The loop this replaced ran at SSE2 width, recomputed each tap's output columns with
//! integer divisions, and vectorised rows only 4 wide and strided taps not at all: on a Zen 5 it
//! took 42% of `serve`'s CPU time with EfficientNet-Lite0, whose late layers have rows of 7
//! and 14 (BENCHMARKS.md, 2026-12-06, evening). Now, where the CPU has AVX-512F or AVX2, the
//! kernel of [`rows`] holds a row of up to 4 vectors of outputs (64 or 32) in registers through
//! all the taps, masking the outputs a tap does not reach, and gathers a stride-2 tap's inputs by
//! a permutation: the same operations in the same order as the plain loop ([`Loop`]), so the
//! same bits (but for which NaN's payload comes out where two NaNs meet). On rows of one or two
//! vectors it runs four or two channels side by side: a row of 7 or 14 outputs holds one vector
//! at AVX-512, whose sum otherwise waits on each tap's addition (EfficientNet-Lite0's 14 x 14 and
//! 7 x 7 layers 25-35% faster, and the encoder about 9%, on a Zen 5: BENCHMARKS.md, 2026-12-07,
//! later). At AVX2 it runs EfficientNet-Lite0 1.45-1.55x as fast as the plain loop, which passes
//! over each output row once per tap, on a Zen 3 (BENCHMARKS.md, 2026-12-07, late). The plain
//! loop, compiled at the CPU's widest vector width ([`Simd`]) with the columns computed once,
//! takes the filters and strides the kernel does not, and every plane under `MARNET_SIMD=sse2`
//! (the tests compare every width against it).

#[cfg(target_arch = "x86_64")]
mod lanes;
mod plane;
#[cfg(target_arch = "x86_64")]
mod rows;

use crate::nn::vmath::{Kernel, Simd, at_width};
use candle_core::{CpuStorage, CustomOp3, Layout, Shape};
use plane::{Plane, side_by_side};

/// About how many outputs a task of [`DepthwiseConv`] computes (42 channels of a 14 x 14 plane).
const TASK_PIXELS: usize = 8192;

/// Depthwise convolution with implicit zero padding `(top, left)` to `ceil(size / stride)`
/// outputs, plus a per-channel bias and optional ReLU6; CPU, inference.
pub struct DepthwiseConv {
    pub stride: usize,
    pub pad: (usize, usize),
    pub relu6: bool,
}

impl CustomOp3 for DepthwiseConv {
    fn name(&self) -> &'static str {
        "depthwise-conv2d"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, ws: &CpuStorage, wl: &Layout, bs: &CpuStorage, bl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let name = self.name();
        let (x, w, bias) = (crate::nn::cpu::f32_slice(name, xs, xl)?, crate::nn::cpu::f32_slice(name, ws, wl)?, crate::nn::cpu::f32_slice(name, bs, bl)?);
        let (n, c, h, wd) = xl.shape().dims4()?;
        let k = wl.shape().dims4()?.2;
        let g = Plane::new(h, wd, k, self.stride, self.pad, self.relu6);
        let level = Simd::detected();
        let (plane_in, plane_out) = (h * wd, g.oh * g.ow);
        let mut out = vec![0f32; n * c * plane_out];
        if out.is_empty() {
            return Ok((CpuStorage::F32(out), Shape::from((n, c, g.oh, g.ow))));
        }
        // A task: `per_task` channels of one image, about TASK_PIXELS outputs (a whole number of
        // the channels the kernel runs side by side), fewer where the batch would have fewer
        // than four tasks a thread.
        let threads = rayon::current_num_threads().max(1);
        let side = g.side_by_side(level);
        let per_task = (TASK_PIXELS / plane_out).clamp(1, (n * c).div_ceil(4 * threads)).next_multiple_of(side).min(c);
        out.par_chunks_mut(c * plane_out).enumerate().for_each(|(img, o)| {
            o.par_chunks_mut(per_task * plane_out).enumerate().for_each(|(t, o)| {
                let (c0, c1) = (t * per_task, t * per_task + o.len() / plane_out);
                g.run_channels(level, &x[(img * c + c0) * plane_in..(img * c + c1) * plane_in], &w[c0 * k * k..c1 * k * k], &bias[c0..c1], o);
            });
        });
        Ok((CpuStorage::F32(out), Shape::from((n, c, g.oh, g.ow))))
    }
}

impl Plane {
    /// The width in floats of the vectors [`rows`]' kernel runs this plane on at `level`, if it
    /// does: where the CPU has AVX-512F or AVX2 and `level` asks for it, at stride 1 or 2 with
    /// filters up to [`rows::MAX_K`].
    fn row_lanes(&self, level: Simd) -> Option<usize> {
        #[cfg(target_arch = "x86_64")]
        if self.s <= 2 && self.k <= rows::MAX_K {
            match level {
                Simd::Avx512 if std::arch::is_x86_feature_detected!("avx512f") => return Some(16),
                Simd::Avx2 if std::arch::is_x86_feature_detected!("avx2") => return Some(8),
                _ => {}
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = level;
        None
    }

    /// Channels [`rows`]' kernel runs side by side on planes of this width at `level` (1 on
    /// the plain loop).
    fn side_by_side(&self, level: Simd) -> usize {
        self.row_lanes(level).map_or(1, |n| side_by_side(self.ow.div_ceil(n)))
    }

    /// Output planes `o` of input planes `x` with filters `f` and `bias` for `bias.len()`
    /// channels, one after the other, at `level`, one of [`Simd::available`]: on [`rows`]'
    /// kernel [`Self::side_by_side`] channels at a time, else on the plain loop one at a time.
    fn run_channels(&self, level: Simd, x: &[f32], f: &[f32], bias: &[f32], o: &mut [f32]) {
        let (plane_in, plane_out, taps) = (self.h * self.w, self.oh * self.ow, self.k * self.k);
        assert!(x.len() == bias.len() * plane_in && f.len() == bias.len() * taps && o.len() == bias.len() * plane_out);
        #[cfg(target_arch = "x86_64")]
        if let Some(lanes) = self.row_lanes(level) {
            // SAFETY: the CPU has the features of the width `row_lanes` found; the slices hold
            // bias.len() channels (asserted).
            return unsafe {
                match lanes {
                    16 => rows::channels_avx512(self, x, f, bias, o),
                    _ => rows::channels_avx2(self, x, f, bias, o),
                }
            };
        }
        for (ch, &bias) in bias.iter().enumerate() {
            let (x, f, o) = (&x[ch * plane_in..(ch + 1) * plane_in], &f[ch * taps..(ch + 1) * taps], &mut o[ch * plane_out..(ch + 1) * plane_out]);
            at_width(level, Loop { g: self, x, f, bias, o });
        }
    }
}

/// The plain loop over one plane, compiled at each vector width ([`at_width`]).
struct Loop<'a> {
    g: &'a Plane,
    x: &'a [f32],
    f: &'a [f32],
    bias: f32,
    o: &'a mut [f32],
}

impl Kernel for Loop<'_> {
    #[inline(always)]
    fn run(self) {
        let Loop { g, x, f, bias, o } = self;
        let (k, s, ow) = (g.k, g.s, g.ow);
        o.fill(bias);
        for oy in 0..g.oh {
            let orow = &mut o[oy * ow..(oy + 1) * ow];
            for ky in 0..k {
                let Some(iy) = g.input_row(oy, ky) else { continue };
                let xrow = &x[iy * g.w..(iy + 1) * g.w];
                for kx in 0..k {
                    let wv = f[ky * k + kx];
                    let (lo, hi) = g.columns[kx];
                    if lo == hi {
                        continue;
                    }
                    if s == 1 {
                        let from = lo + kx - g.left;
                        for (o, &v) in orow[lo..hi].iter_mut().zip(&xrow[from..from + (hi - lo)]) {
                            *o += wv * v;
                        }
                    } else {
                        for (ox, o) in (lo..hi).zip(&mut orow[lo..hi]) {
                            *o += wv * xrow[ox * s + kx - g.left];
                        }
                    }
                }
            }
        }
        if g.relu6 {
            o.iter_mut().for_each(|v| *v = v.clamp(0.0, 6.0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One channel's plane at `level`.
    fn run(g: &Plane, level: Simd, x: &[f32], f: &[f32], bias: f32, o: &mut [f32]) {
        g.run_channels(level, x, f, std::slice::from_ref(&bias), o)
    }

    /// Every width the CPU has gives the bits of the plain loop, on rows shorter and longer than
    /// a vector and than a run of 4 vectors, both strides the kernel takes (and a filter and a
    /// stride it does not: the plain loop at each width), odd paddings, ReLU6, and a NaN, an
    /// infinity and a negative zero in the input; then with an infinite filter tap on finite
    /// input, so that a sum in a lane the tap does not reach (w 0 for the masked-out input) would
    /// give NaN. At AVX2 and AVX-512 the kernel runs every plane it takes.
    #[test]
    fn every_width_gives_the_plain_loops_bits() {
        let mut rng = crate::rng::stream(5, "test", 0);
        for (h, w) in [(7, 7), (14, 14), (5, 17), (9, 33), (4, 70), (3, 130), (1, 1), (2, 3)] {
            for (k, s, relu6) in [(3, 1, true), (5, 1, false), (3, 2, true), (5, 2, false), (7, 2, true), (7, 1, false), (9, 1, true), (3, 3, false)] {
                for (top, left) in [((k - 1) / 2, (k - 1) / 2), (0, 0), (k - 1, 1)] {
                    let g = Plane::new(h, w, k, s, (top, left), relu6);
                    for infinite_tap in [false, true] {
                        let mut x = crate::rng::normal_vec(&mut rng, h * w);
                        let mut f = crate::rng::normal_vec(&mut rng, k * k);
                        x[0] = -0.0;
                        if infinite_tap {
                            f[k * k - 1] = f32::INFINITY;
                        } else if h * w > 4 {
                            (x[2], x[3]) = (f32::NAN, f32::INFINITY);
                        }
                        let bits = |level| {
                            let mut o = vec![0f32; g.oh * g.ow];
                            run(&g, level, &x, &f, -0.0, &mut o);
                            o.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                        };
                        let want = bits(Simd::Sse2);
                        for level in Simd::available() {
                            assert_eq!(bits(level), want, "{level:?} {g:?} infinite tap {infinite_tap}");
                            let on_kernel = g.row_lanes(level).is_some();
                            assert_eq!(on_kernel, level != Simd::Sse2 && s <= 2 && k <= 7, "{level:?} {g:?}");
                        }
                    }
                }
            }
        }
    }

    /// Channels side by side (at AVX-512 four on rows of 7 and 14, two on rows of 20; at AVX2
    /// four on rows of 7, two on rows of 14; and the ones left over) give each channel's bits
    /// alone.
    #[test]
    fn channels_side_by_side_give_each_channel_s_bits() {
        let mut rng = crate::rng::stream(6, "test", 0);
        for (h, w, k, s) in [(7, 7, 5, 1), (14, 14, 3, 1), (28, 28, 5, 2), (20, 20, 3, 1), (40, 40, 5, 2), (9, 40, 3, 1), (5, 70, 5, 2)] {
            let g = Plane::new(h, w, k, s, ((k - 1) / 2, (k - 1) / 2), true);
            let c = 7;
            let x = crate::rng::normal_vec(&mut rng, c * h * w);
            let f = crate::rng::normal_vec(&mut rng, c * k * k);
            let bias = crate::rng::normal_vec(&mut rng, c);
            let (plane_in, plane_out) = (h * w, g.oh * g.ow);
            let mut want = vec![0f32; c * plane_out];
            for ch in 0..c {
                run(
                    &g,
                    Simd::Sse2,
                    &x[ch * plane_in..(ch + 1) * plane_in],
                    &f[ch * k * k..(ch + 1) * k * k],
                    bias[ch],
                    &mut want[ch * plane_out..(ch + 1) * plane_out],
                );
            }
            for level in Simd::available() {
                let mut got = vec![f32::NAN; c * plane_out];
                g.run_channels(level, &x, &f, &bias, &mut got);
                assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{level:?} {g:?}");
            }
        }
    }
}
