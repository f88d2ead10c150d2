//! [`super::Loop`]'s plane with each run of outputs of a row held in registers through all the
//! taps, written once over the vector's operations ([`Lanes`]) and built for AVX-512F
//! ([`channels_avx512`]) and AVX2 ([`channels_avx2`]).

use super::lanes::Lanes;
use super::plane::{Plane, side_by_side};
use std::arch::x86_64::{__m256, __m512};

/// Largest filter this kernel takes (EfficientNet-Lite's are 3 and 5; the table of each filter
/// column's reach is this long).
pub(super) const MAX_K: usize = 7;

/// Lanes `a..b` of a vector of `n` <= 16 (clamped to 0..n), as bits.
fn lane_bits(a: isize, b: isize, n: usize) -> u32 {
    let (a, b) = (a.clamp(0, n as isize) as u32, b.clamp(0, n as isize) as u32);
    if b <= a { 0 } else { ((1 << b) - 1) & !((1 << a) - 1) }
}

/// Which lanes of a vector of outputs a filter column reaches, whether that is all of them, and
/// for stride 2 which of the 2N inputs from its first the two loads take (those between the
/// first and last lane's).
#[derive(Clone, Copy)]
struct Reach<L: Lanes> {
    lanes: u32,
    full: bool,
    mask: L::Mask,
    load: [L::Mask; 2],
}

impl<L: Lanes> Reach<L> {
    #[inline(always)]
    unsafe fn new(bits: u32) -> Self {
        let (first, last) = (bits.trailing_zeros() as isize, 31 - bits.leading_zeros() as isize);
        let (a, b, n) = (2 * first, 2 * last + 1, L::N as isize);
        let load = if bits == 0 { [0, 0] } else { [lane_bits(a, b, L::N), lane_bits(a - n, b - n, L::N)] };
        // SAFETY: as the caller promises, the CPU has the width's features.
        unsafe { Reach { lanes: bits, full: bits == lane_bits(0, n, L::N), mask: L::mask(bits), load: [L::mask(load[0]), L::mask(load[1])] } }
    }
}

/// [`channels`] at AVX-512F.
///
/// # Safety
/// As [`channels`]'s; the CPU must have AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn channels_avx512(g: &Plane, x: &[f32], f: &[f32], bias: &[f32], o: &mut [f32]) {
    // SAFETY: as the caller promises.
    unsafe { channels::<__m512>(g, x, f, bias, o) }
}

/// [`channels`] at AVX2.
///
/// # Safety
/// As [`channels`]'s; the CPU must have AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn channels_avx2(g: &Plane, x: &[f32], f: &[f32], bias: &[f32], o: &mut [f32]) {
    // SAFETY: as the caller promises.
    unsafe { channels::<__m256>(g, x, f, bias, o) }
}

/// [`super::Loop`]'s plane, stride 1 or 2, filters up to [`MAX_K`], for `bias.len()`
/// channels (`x`, `f` and `o` hold their planes, filters and outputs one after the other):
/// each run of up to 4 vectors of outputs of a row starts at the bias, takes every tap in filter
/// order in the lanes it reaches (a product, then a sum), then ReLU6 and is stored once. Runs
/// hold as few vectors as the row needs. Rows of one or two vectors run four or two channels
/// side by side ([`Plane::side_by_side`]), so that a tap's sum does not wait on the previous
/// tap's (a sum's latency).
///
/// # Safety
/// The CPU must have `L`'s features; `x`, `f` and `o` must hold `bias.len()` channels.
#[inline(always)]
unsafe fn channels<L: Lanes>(g: &Plane, x: &[f32], f: &[f32], bias: &[f32], o: &mut [f32]) {
    // SAFETY: as the caller promises.
    unsafe {
        match g.ow.div_ceil(L::N) {
            0 | 1 => grouped::<L, 1, { side_by_side(1) }>(g, x, f, bias, o),
            2 => grouped::<L, 2, { side_by_side(2) }>(g, x, f, bias, o),
            3 => grouped::<L, 3, { side_by_side(3) }>(g, x, f, bias, o),
            _ => grouped::<L, 4, { side_by_side(4) }>(g, x, f, bias, o),
        }
    }
}

/// [`channels`] `C` at a time, then one at a time.
#[inline(always)]
unsafe fn grouped<L: Lanes, const V: usize, const C: usize>(g: &Plane, x: &[f32], f: &[f32], bias: &[f32], o: &mut [f32]) {
    let (plane_in, plane_out, taps) = (g.h * g.w, g.oh * g.ow, g.k * g.k);
    let mut c = 0;
    while c < bias.len() {
        let n = if bias.len() - c >= C { C } else { 1 };
        let (x, f, b, o) = (&x[c * plane_in..(c + n) * plane_in], &f[c * taps..(c + n) * taps], &bias[c..c + n], &mut o[c * plane_out..(c + n) * plane_out]);
        // SAFETY: as the caller promises, for these n channels.
        unsafe {
            match n == C {
                true => runs::<L, V, C>(g, x, f, b, o),
                false => runs::<L, V, 1>(g, x, f, b, o),
            }
        }
        c += n;
    }
}

/// `C` channels of [`channels`] by runs of up to `V` vectors of outputs.
#[inline(always)]
unsafe fn runs<L: Lanes, const V: usize, const C: usize>(g: &Plane, x: &[f32], f: &[f32], bias: &[f32], o: &mut [f32]) {
    let (k, s, n) = (g.k, g.s as isize, L::N);
    let (plane_in, plane_out) = (g.h * g.w, g.oh * g.ow);
    for start in (0..g.ow).step_by(n * V) {
        let end = (start + n * V).min(g.ow);
        // Plain loops, not closures, fill the tables: a closure takes the target features of
        // the function it is written in (`runs`: none), so the intrinsics in it would be calls.
        // SAFETY (every block below): the CPU has L's features, as the caller promises.
        let none = unsafe { Reach::<L>::new(0) };
        let mut reach = [[none; V]; MAX_K];
        let zero = unsafe { L::splat(0.0) };
        for (reach, &(lo, hi)) in reach.iter_mut().zip(&g.columns) {
            let (lo, hi) = (lo.max(start) as isize, hi.min(end) as isize);
            for (v, r) in reach.iter_mut().enumerate() {
                let base = (start + n * v) as isize;
                *r = unsafe { Reach::new(lane_bits(lo - base, hi - base, n)) };
            }
        }
        for oy in 0..g.oh {
            let mut acc = [[zero; V]; C];
            for (acc, &b) in acc.iter_mut().zip(bias) {
                *acc = [unsafe { L::splat(b) }; V];
            }
            for ky in 0..k {
                let Some(iy) = g.input_row(oy, ky) else { continue };
                let xrow = x[iy * g.w..].as_ptr();
                for (kx, reach) in reach.iter().enumerate().take(k) {
                    // Input column of lane j of vector v: (start + N v + j) s + kx - left.
                    let from = xrow.wrapping_offset(start as isize * s + kx as isize - g.left as isize);
                    for (c, acc) in acc.iter_mut().enumerate() {
                        let wv = unsafe { L::splat(f[c * k * k + ky * k + kx]) };
                        let from = from.wrapping_add(c * plane_in);
                        for (v, (acc, r)) in acc.iter_mut().zip(reach).enumerate() {
                            if r.lanes == 0 {
                                continue;
                            }
                            let at = from.wrapping_offset((n * v) as isize * s);
                            // SAFETY: the loads touch only the lanes their masks name (at stride 1,
                            // all of them when `full`), which lie inside channel c's row
                            // (`Plane::columns`).
                            unsafe {
                                *acc = match (s == 1, r.full) {
                                    (true, true) => L::add_product(*acc, wv, L::load(at)),
                                    (true, false) => L::add_product_masked(*acc, r.mask, wv, L::load_masked(r.mask, at)),
                                    (false, true) => L::add_product(*acc, wv, L::load_even(r.load, at)),
                                    (false, false) => L::add_product_masked(*acc, r.mask, wv, L::load_even(r.load, at)),
                                };
                            }
                        }
                    }
                }
            }
            for (c, acc) in acc.iter().enumerate() {
                for (v, &y) in acc.iter().enumerate() {
                    let base = start + n * v;
                    if base >= end {
                        break;
                    }
                    let y = if g.relu6 { unsafe { L::relu6(y) } } else { y };
                    // SAFETY: outputs `base..end` (at most N) of channel c's row `oy` lie inside `o`.
                    unsafe { L::store_first((end - base).min(n), o.as_mut_ptr().add(c * plane_out + oy * g.ow + base), y) };
                }
            }
        }
    }
}
