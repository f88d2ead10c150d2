//! The depthwise convolution of EfficientNet-Lite's blocks (one kxk filter per channel), as a
//! CPU op with its zero padding, bias and ReLU6 fused.
//!
//! Each output element is `bias + w[0] x[0] + w[1] x[1] + ...` over the taps that fall inside
//! the input, in filter order, a product then a sum per tap (two roundings; Rust never fuses
//! them). The loop this replaced ran at SSE2 width, recomputed each tap's output columns with
//! integer divisions, and vectorised rows only 4 wide and strided taps not at all: on a Zen 5 it
//! took 42% of `serve`'s CPU time with EfficientNet-Lite0, whose late layers have rows of 7
//! and 14 (BENCHMARKS.md, 2026-12-06, evening). Now the plain loop ([`Loop`]) runs at the CPU's
//! widest vector width ([`Simd`]) with the columns computed once, and where the CPU has
//! AVX-512F, [`avx512`] holds a row of up to 64 outputs in registers through all the taps,
//! masking the outputs a tap does not reach, and gathers a stride-2 tap's inputs by a
//! permutation: the same operations in the same order, so the same bits (but for which NaN's
//! payload comes out where two NaNs meet). On rows of up to 32 outputs it runs four or two
//! channels side by side: a row of 7 or 14 outputs holds one vector, whose sum otherwise waits on
//! each tap's addition (EfficientNet-Lite0's 14 x 14 and 7 x 7 layers 25-35% faster, and the
//! encoder about 9%, on a Zen 5: BENCHMARKS.md, 2026-12-07, later). `MARNET_SIMD=sse2` or
//! `avx2` forces the plain loop (the test compares both).

use crate::nn::vmath::{Kernel, Simd, at_width};
use candle_core::{CpuStorage, CustomOp3, Layout, Shape};

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
        let side = g.side_by_side();
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

/// One channel's geometry: an `h` x `w` input, a `k` x `k` filter at stride `s`, padding
/// `top` and `left`, an `oh` x `ow` output; and for each filter column `kx`, the output columns
/// `lo..hi` whose input column `ox s + kx - left` lies inside the row (computed once: integer
/// divisions in the loop over taps took most of its time).
#[derive(Debug, Clone)]
struct Plane {
    h: usize,
    w: usize,
    k: usize,
    s: usize,
    top: usize,
    left: usize,
    relu6: bool,
    oh: usize,
    ow: usize,
    columns: Vec<(usize, usize)>,
}

/// Channels run side by side on rows of `vectors` vectors of 16 outputs: four on rows of up to
/// 16 outputs, two up to 32, else one (a longer row's own vectors keep the sums busy).
const fn side_by_side(vectors: usize) -> usize {
    match vectors {
        0 | 1 => 4,
        2 => 2,
        _ => 1,
    }
}

impl Plane {
    fn new(h: usize, w: usize, k: usize, s: usize, (top, left): (usize, usize), relu6: bool) -> Self {
        let ow = w.div_ceil(s);
        let columns = (0..k).map(|kx| crate::nn::im2col::columns_inside(w, left, s, ow, kx)).collect();
        Plane { h, w, k, s, top, left, relu6, oh: h.div_ceil(s), ow, columns }
    }

    /// The input row that output row `oy` reads at filter row `ky`, if inside the input.
    fn input_row(&self, oy: usize, ky: usize) -> Option<usize> {
        (oy * self.s + ky).checked_sub(self.top).filter(|&iy| iy < self.h)
    }

    /// Channels [`avx512::channels`] runs side by side on planes of this width.
    fn side_by_side(&self) -> usize {
        side_by_side(self.ow.div_ceil(16))
    }

    /// [`Self::run`] for `bias.len()` channels: their planes `x`, filters `f` and outputs `o`
    /// one after the other; on the AVX-512 path [`Self::side_by_side`] channels at a time.
    fn run_channels(&self, level: Simd, x: &[f32], f: &[f32], bias: &[f32], o: &mut [f32]) {
        let (plane_in, plane_out, taps) = (self.h * self.w, self.oh * self.ow, self.k * self.k);
        assert!(x.len() == bias.len() * plane_in && f.len() == bias.len() * taps && o.len() == bias.len() * plane_out);
        #[cfg(target_arch = "x86_64")]
        if level == Simd::Avx512 && std::arch::is_x86_feature_detected!("avx512f") && self.s <= 2 && self.k <= avx512::MAX_K {
            // SAFETY: the CPU has AVX-512F (checked); the slices hold bias.len() channels (asserted).
            return unsafe { avx512::channels(self, x, f, bias, o) };
        }
        for (ch, &b) in bias.iter().enumerate() {
            self.run(level, &x[ch * plane_in..(ch + 1) * plane_in], &f[ch * taps..(ch + 1) * taps], b, &mut o[ch * plane_out..(ch + 1) * plane_out]);
        }
    }

    /// Output plane `o` of input plane `x` with filter `f` and `bias`, at `level`, one of
    /// [`Simd::available`].
    fn run(&self, level: Simd, x: &[f32], f: &[f32], bias: f32, o: &mut [f32]) {
        assert!(x.len() == self.h * self.w && f.len() == self.k * self.k && o.len() == self.oh * self.ow);
        #[cfg(target_arch = "x86_64")]
        if level == Simd::Avx512 && std::arch::is_x86_feature_detected!("avx512f") && self.s <= 2 && self.k <= avx512::MAX_K {
            // SAFETY: the CPU has AVX-512F (checked); the lengths are checked above.
            return unsafe { avx512::channels(self, x, f, std::slice::from_ref(&bias), o) };
        }
        at_width(level, Loop { g: self, x, f, bias, o })
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

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::Plane;
    use std::arch::x86_64::*;

    /// Largest filter this path takes (EfficientNet-Lite's: 3 and 5).
    pub(super) const MAX_K: usize = 7;

    /// Lanes `a..b` of a vector (clamped to 0..16).
    fn lanes(a: isize, b: isize) -> u16 {
        let (a, b) = (a.clamp(0, 16) as u32, b.clamp(0, 16) as u32);
        if b <= a { 0 } else { (((1u32 << b) - 1) & !((1u32 << a) - 1)) as u16 }
    }

    /// Which lanes of a vector of outputs a filter column reaches, and for stride 2 which of
    /// the 32 inputs from its first the two loads take (those between the first and last lane's).
    #[derive(Clone, Copy, Default)]
    struct Reach {
        lanes: u16,
        load: [u16; 2],
    }

    impl Reach {
        fn new(lanes: u16) -> Self {
            if lanes == 0 {
                return Reach::default();
            }
            let (first, last) = (lanes.trailing_zeros() as isize, 15 - lanes.leading_zeros() as isize);
            let (a, b) = (2 * first, 2 * last + 1);
            Reach { lanes, load: [self::lanes(a, b), self::lanes(a - 16, b - 16)] }
        }
    }

    /// [`super::Loop`]'s plane, stride 1 or 2, filters up to [`MAX_K`], for `bias.len()`
    /// channels (`x`, `f` and `o` hold their planes, filters and outputs one after the other):
    /// each run of up to 64 outputs of a row starts at the bias, takes every tap in filter order
    /// in the lanes it reaches (a product, then a sum), then ReLU6 (`f32::clamp`'s comparisons:
    /// NaN and -0 kept) and is stored once. Runs hold as few vectors as the row needs, up to four
    /// (rows of 7 and 14 outputs: one). Rows of one or two vectors run four or two channels side
    /// by side ([`Plane::side_by_side`]), so that a tap's sum does not wait on the previous
    /// tap's (a sum's latency).
    ///
    /// # Safety
    /// The CPU must have AVX-512F; `x`, `f` and `o` must hold `bias.len()` channels.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn channels(g: &Plane, x: &[f32], f: &[f32], bias: &[f32], o: &mut [f32]) {
        // SAFETY: as the caller promises.
        unsafe {
            match g.ow.div_ceil(16) {
                0 | 1 => grouped::<1, { super::side_by_side(1) }>(g, x, f, bias, o),
                2 => grouped::<2, { super::side_by_side(2) }>(g, x, f, bias, o),
                3 => grouped::<3, { super::side_by_side(3) }>(g, x, f, bias, o),
                _ => grouped::<4, { super::side_by_side(4) }>(g, x, f, bias, o),
            }
        }
    }

    /// [`channels`] `C` at a time, then one at a time.
    #[target_feature(enable = "avx512f")]
    unsafe fn grouped<const V: usize, const C: usize>(g: &Plane, x: &[f32], f: &[f32], bias: &[f32], o: &mut [f32]) {
        let (plane_in, plane_out, taps) = (g.h * g.w, g.oh * g.ow, g.k * g.k);
        let mut c = 0;
        while c < bias.len() {
            let n = if bias.len() - c >= C { C } else { 1 };
            let (x, f, b, o) =
                (&x[c * plane_in..(c + n) * plane_in], &f[c * taps..(c + n) * taps], &bias[c..c + n], &mut o[c * plane_out..(c + n) * plane_out]);
            // SAFETY: as the caller promises, for these n channels.
            unsafe {
                match n == C {
                    true => runs::<V, C>(g, x, f, b, o),
                    false => runs::<V, 1>(g, x, f, b, o),
                }
            }
            c += n;
        }
    }

    /// `C` channels of [`channels`] by runs of up to `V` vectors of 16 outputs.
    #[target_feature(enable = "avx512f")]
    unsafe fn runs<const V: usize, const C: usize>(g: &Plane, x: &[f32], f: &[f32], bias: &[f32], o: &mut [f32]) {
        let (k, s) = (g.k, g.s as isize);
        let (plane_in, plane_out) = (g.h * g.w, g.oh * g.ow);
        // Element 2j of the 32 in two vectors: a stride-2 tap's inputs.
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let (zero, six) = (_mm512_setzero_ps(), _mm512_set1_ps(6.0));
        for start in (0..g.ow).step_by(16 * V) {
            let end = (start + 16 * V).min(g.ow);
            let mut reach = [[Reach::default(); V]; MAX_K];
            for (kx, r) in reach.iter_mut().enumerate().take(k) {
                let (lo, hi) = g.columns[kx];
                let (lo, hi) = (lo.max(start) as isize, hi.min(end) as isize);
                for (v, r) in r.iter_mut().enumerate() {
                    let base = (start + 16 * v) as isize;
                    *r = Reach::new(lanes(lo - base, hi - base));
                }
            }
            for oy in 0..g.oh {
                let mut acc: [[__m512; V]; C] = std::array::from_fn(|c| [_mm512_set1_ps(bias[c]); V]);
                for ky in 0..k {
                    let Some(iy) = g.input_row(oy, ky) else { continue };
                    let xrow = x[iy * g.w..].as_ptr();
                    for (kx, reach) in reach.iter().enumerate().take(k) {
                        // Input column of lane j of vector v: (start + 16 v + j) s + kx - left.
                        let from = xrow.wrapping_offset(start as isize * s + kx as isize - g.left as isize);
                        for (c, acc) in acc.iter_mut().enumerate() {
                            let wv = _mm512_set1_ps(f[c * k * k + ky * k + kx]);
                            let from = from.wrapping_add(c * plane_in);
                            for (v, (acc, r)) in acc.iter_mut().zip(reach).enumerate() {
                                if r.lanes == 0 {
                                    continue;
                                }
                                let at = from.wrapping_offset(16 * v as isize * s);
                                // SAFETY: masked loads touch only the lanes in their masks, which lie
                                // inside channel c's row (`Plane::columns`).
                                let xv = unsafe {
                                    if s == 1 {
                                        _mm512_maskz_loadu_ps(r.lanes, at)
                                    } else {
                                        let x0 = _mm512_maskz_loadu_ps(r.load[0], at);
                                        let x1 = _mm512_maskz_loadu_ps(r.load[1], at.wrapping_add(16));
                                        _mm512_permutex2var_ps(x0, even, x1)
                                    }
                                };
                                *acc = _mm512_mask_add_ps(*acc, r.lanes, *acc, _mm512_mul_ps(wv, xv));
                            }
                        }
                    }
                }
                for (c, acc) in acc.iter().enumerate() {
                    for (v, &y) in acc.iter().enumerate() {
                        let base = start + 16 * v;
                        if base >= end {
                            break;
                        }
                        let y = if g.relu6 {
                            let y = _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask::<_CMP_LT_OQ>(y, zero), zero);
                            _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask::<_CMP_GT_OQ>(y, six), six)
                        } else {
                            y
                        };
                        // SAFETY: outputs `base..end` (at most 16) of channel c's row `oy` lie inside `o`.
                        unsafe { _mm512_mask_storeu_ps(o.as_mut_ptr().add(c * plane_out + oy * g.ow + base), lanes(0, (end - base) as isize), y) };
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every width the CPU has gives the bits of the plain loop, on rows shorter and longer than
    /// a vector and than a sweep of 64, both strides, both filter sizes, odd paddings, ReLU6,
    /// and a NaN, an infinity and a negative zero in the input.
    #[test]
    fn every_width_gives_the_plain_loops_bits() {
        let mut rng = crate::rng::stream(5, "test", 0);
        for (h, w) in [(7, 7), (14, 14), (5, 17), (9, 33), (4, 70), (3, 130), (1, 1), (2, 3)] {
            for (k, s, relu6) in [(3, 1, true), (5, 1, false), (3, 2, true), (5, 2, false), (7, 2, true), (7, 1, false)] {
                for (top, left) in [((k - 1) / 2, (k - 1) / 2), (0, 0), (k - 1, 1)] {
                    let g = Plane::new(h, w, k, s, (top, left), relu6);
                    let mut x = crate::rng::normal_vec(&mut rng, h * w);
                    x[0] = -0.0;
                    if h * w > 4 {
                        (x[2], x[3]) = (f32::NAN, f32::INFINITY);
                    }
                    let f = crate::rng::normal_vec(&mut rng, k * k);
                    let bits = |level| {
                        let mut o = vec![0f32; g.oh * g.ow];
                        g.run(level, &x, &f, -0.0, &mut o);
                        o.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                    };
                    let want = bits(Simd::Sse2);
                    for level in Simd::available() {
                        assert_eq!(bits(level), want, "{level:?} {g:?}");
                    }
                }
            }
        }
    }

    /// Channels side by side (four on rows of 7 and 14, two on rows of 20, and the ones left
    /// over) give each channel's bits alone.
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
                g.run(
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
