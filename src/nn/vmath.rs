//! `exp`, GELU, SiLU and the sigmoid over whole slices, written so that the compiler vectorises them (no branches,
//! no libm calls) and compiled three times: plain x86-64 (SSE2), AVX2 and AVX-512, the widest
//! the CPU has chosen at run time. Every version does the same IEEE operations in the same order
//! (Rust never fuses a multiply and an add on its own), so all three give the same bits: the
//! choice changes speed only. `MARNET_SIMD=sse2|avx2|avx512` forces one (the tests compare them).
//!
//! Used by the frozen encoders' attention softmax and GELU, where libm's scalar `expf` and
//! `erff` took 5-8% of a ViT-B/16 forward pass (`perf`, BENCHMARKS.md), and by the denoiser's
//! SiLU and its gradient (libm's `expf` was 5% of CDR sampling). [`Simd`] also picks the width of
//! AdamW's pass (`crate::optim`).

use std::sync::OnceLock;

/// Vector width the slice functions run at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Simd {
    Sse2,
    Avx2,
    Avx512,
}

impl Simd {
    /// The widest this CPU runs, or the one `MARNET_SIMD` names when the CPU has it.
    pub fn detected() -> Simd {
        static LEVEL: OnceLock<Simd> = OnceLock::new();
        *LEVEL.get_or_init(|| {
            let best = Simd::available().into_iter().last().unwrap_or(Simd::Sse2);
            let Ok(asked) = std::env::var("MARNET_SIMD") else { return best };
            match Simd::parse(&asked) {
                Some(forced) if Simd::available().contains(&forced) => forced,
                _ => {
                    eprintln!("warning: MARNET_SIMD={asked} is not one of this CPU's widths ({:?}); using {best:?}", Simd::available());
                    best
                }
            }
        })
    }

    fn parse(s: &str) -> Option<Simd> {
        match s {
            "sse2" => Some(Simd::Sse2),
            "avx2" => Some(Simd::Avx2),
            "avx512" => Some(Simd::Avx512),
            _ => None,
        }
    }

    /// The levels this CPU can run, narrowest first.
    pub fn available() -> Vec<Simd> {
        let mut levels = vec![Simd::Sse2];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") {
                levels.push(Simd::Avx2);
            }
            if is_x86_feature_detected!("avx512f") {
                levels.push(Simd::Avx512);
            }
        }
        levels
    }
}

/// Below this, `exp` returns 0 (e^-87.3 is the smallest normal float).
const EXP_MIN: f32 = -87.3;
/// 1.5 x 2^23: adding it rounds a float below 2^22 to an integer, read back from the low bits.
const ROUND: f32 = 12_582_912.0;
/// ln 2 in two parts, the first with few enough bits that `n * LN2_HI` is exact for |n| < 256.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;

/// e^x (within 4 x f32::EPSILON of libm's, relative; 0 below -87.3, x above 88 taken as 88,
/// NaN stays NaN): x = n ln 2 + r with |r| <= ln 2 / 2, e^r by its Taylor series to r^7, 2^n built
/// from its exponent bits.
#[inline(always)]
fn exp1(x: f32) -> f32 {
    // Not `min`: it would turn NaN into 88.
    let x = if x > 88.0 { 88.0 } else { x };
    let k = x.max(EXP_MIN) * std::f32::consts::LOG2_E + ROUND;
    let n = k - ROUND;
    let scale = f32::from_bits(((k.to_bits() as i32 - ROUND.to_bits() as i32 + 127) << 23) as u32);
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0 / 5040.0;
    let p = p * r + 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    if x < EXP_MIN { 0.0 } else { p * scale }
}

/// erf(x) by Abramowitz and Stegun 7.1.26 (absolute error below 1.5e-7).
#[inline(always)]
fn erf1(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let p = 1.061_405_4;
    let p = p * t - 1.453_152_1;
    let p = p * t + 1.421_413_8;
    let p = p * t - 0.284_496_74;
    let p = p * t + 0.254_829_6;
    let y = 1.0 - p * t * exp1(-a * a);
    y.copysign(x)
}

/// GELU, erf form: `x / 2 (1 + erf(x / sqrt 2))`.
#[inline(always)]
fn gelu1(x: f32) -> f32 {
    0.5 * x * (1.0 + erf1(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// Below this, e^-x overflows f32 (libm gives infinity, and the sigmoid and SiLU 0).
const EXP_NEG_MAX: f32 = -88.7;

/// The logistic sigmoid `1 / (1 + e^-x)`.
#[inline(always)]
fn sigmoid1(x: f32) -> f32 {
    let y = 1.0 / (1.0 + exp1(-x));
    if x < EXP_NEG_MAX { 0.0 } else { y }
}

/// SiLU, `x / (1 + e^-x)`.
#[inline(always)]
fn silu1(x: f32) -> f32 {
    let y = x / (1.0 + exp1(-x));
    if x < EXP_NEG_MAX { -0.0 } else { y }
}

/// `f` folded over `row`'s elements `i, i + 16, i + 32, ...` into lane `i` (the leftover elements
/// first), for reductions that one chain of dependent steps would make wait on each step (a
/// sum, a max): 16 independent chains the compiler vectorises. Combine the lanes in a fixed order.
pub fn fold_in_lanes(row: &[f32], init: f32, f: impl Fn(f32, f32) -> f32) -> [f32; 16] {
    let mut acc = [init; 16];
    let blocks = row.chunks_exact(16);
    for (a, &x) in acc.iter_mut().zip(blocks.remainder()) {
        *a = f(*a, x);
    }
    for block in blocks {
        for (a, &x) in acc.iter_mut().zip(block) {
            *a = f(*a, x);
        }
    }
    acc
}

/// `row = e^(row - max(row))`, returning the max and the new row's sum: softmax but for the
/// division (attention), or log-sum-exp as `max + ln(sum)` (cross-entropy). The max and the sum
/// run over 16 interleaved lanes: as one chain, each step waited on the last (the max's bits do
/// not depend on the order; the sum's last bits do).
pub fn exp_from_max(row: &mut [f32]) -> (f32, f32) {
    let max = fold_in_lanes(row, f32::NEG_INFINITY, f32::max).into_iter().fold(f32::NEG_INFINITY, f32::max);
    row.iter_mut().for_each(|s| *s -= max);
    exp_in_place(row);
    (max, fold_in_lanes(row, 0.0, |a, b| a + b).iter().sum())
}

/// A loop to compile at each vector width: [`at_width`] runs it inside a function built for the
/// width, so `run` must be `#[inline(always)]` to be vectorised there.
pub(crate) trait Kernel {
    fn run(self);
}

/// Runs `k` compiled for `level`, which must be one [`Simd::available`] lists.
pub(crate) fn at_width(level: Simd, k: impl Kernel) {
    debug_assert!(Simd::available().contains(&level), "{level:?} is not available on this CPU");
    match level {
        // SAFETY: `available` lists a level only when the CPU has its features.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { avx2(k) },
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => unsafe { avx512(k) },
        _ => k.run(),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn avx2(k: impl Kernel) {
    k.run()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn avx512(k: impl Kernel) {
    k.run()
}

macro_rules! slice_fn {
    ($(#[$doc:meta])* $name:ident, $one:ident) => {
        $(#[$doc])*
        pub fn $name(v: &mut [f32]) {
            $name::at(Simd::detected(), v)
        }

        mod $name {
            use super::*;

            struct Map<'a>(&'a mut [f32]);

            impl Kernel for Map<'_> {
                #[inline(always)]
                fn run(self) {
                    self.0.iter_mut().for_each(|x| *x = $one(*x));
                }
            }

            /// At a given width (one [`Simd::available`] lists).
            pub fn at(level: Simd, v: &mut [f32]) {
                at_width(level, Map(v))
            }
        }
    };
}

slice_fn!(
    /// `v[i] = e^v[i]`.
    exp_in_place,
    exp1
);
slice_fn!(
    /// `v[i] = gelu(v[i])`, GELU in its erf form.
    gelu_in_place,
    gelu1
);
slice_fn!(
    /// `v[i] = silu(v[i]) = v[i] / (1 + e^-v[i])`.
    silu_in_place,
    silu1
);
slice_fn!(
    /// `v[i] = 1 / (1 + e^-v[i])`.
    sigmoid_in_place,
    sigmoid1
);

#[cfg(test)]
mod tests {
    use super::*;

    fn sweep() -> Vec<f32> {
        (-40_000..=40_000).map(|i| i as f32 * 2.5e-4).chain([-120.0, -88.0, -87.0, -50.0, 50.0, 88.0, 1e-30, -0.0]).collect()
    }

    #[test]
    fn exp_is_within_a_few_ulp_of_libm() {
        let xs: Vec<f32> = sweep().into_iter().map(|x| x.min(88.0)).collect();
        let mut got = xs.clone();
        exp_in_place(&mut got);
        for (x, g) in xs.iter().zip(&got) {
            let want = x.exp();
            if *x < EXP_MIN {
                assert_eq!(*g, 0.0, "exp({x})");
            } else {
                assert!((g - want).abs() <= 4.0 * f32::EPSILON * want, "exp({x}) = {g}, libm {want}");
            }
        }
        let mut edges = [f32::NEG_INFINITY, 0.0, 89.0, 88.0, f32::NAN];
        exp_in_place(&mut edges);
        assert_eq!(edges[..2], [0.0, 1.0]);
        assert!(edges[2].is_finite() && edges[2] == edges[3] && edges[4].is_nan());
    }

    #[test]
    fn gelu_is_within_3e_7_of_libm_erf() {
        let xs = sweep();
        let mut got = xs.clone();
        gelu_in_place(&mut got);
        for (x, g) in xs.iter().zip(&got) {
            let want = 0.5 * x * (1.0 + libm_erf(x * std::f32::consts::FRAC_1_SQRT_2));
            assert!((g - want).abs() <= 3e-7 * x.abs().max(1.0), "gelu({x}) = {g}, libm {want}");
        }
    }

    #[test]
    fn silu_and_sigmoid_are_within_a_few_ulp_of_libm() {
        let xs = sweep();
        let (mut silu, mut sig) = (xs.clone(), xs.clone());
        silu_in_place(&mut silu);
        sigmoid_in_place(&mut sig);
        for ((x, g), s) in xs.iter().zip(&silu).zip(&sig) {
            let (want_s, want_g) = (1.0 / (1.0 + (-x).exp()), x / (1.0 + (-x).exp()));
            // Between -88.7 and -88, e^-x is taken as e^88: off by less than 1e-37.
            assert!((s - want_s).abs() <= 8.0 * f32::EPSILON * want_s + 1e-37, "sigmoid({x}) = {s}, libm {want_s}");
            assert!((g - want_g).abs() <= 8.0 * f32::EPSILON * want_g.abs() + 1e-35, "silu({x}) = {g}, libm {want_g}");
        }
        let mut silu = [f32::NEG_INFINITY, -f32::MAX, -1e37, -200.0, 200.0, f32::INFINITY, f32::NAN];
        let mut sig = silu;
        silu_in_place(&mut silu);
        assert_eq!(silu[..6], [0.0, 0.0, 0.0, 0.0, 200.0, f32::INFINITY]);
        assert!(silu[..4].iter().all(|y| y.is_sign_negative()) && silu[6].is_nan());
        sigmoid_in_place(&mut sig);
        assert_eq!(sig[..6], [0.0, 0.0, 0.0, 0.0, 1.0, 1.0]);
        assert!(sig[6].is_nan());
    }

    fn libm_erf(x: f32) -> f32 {
        candle_core::cpu::erf::erf_f32(x)
    }

    /// Every width this CPU has gives the plain version's bits (odd lengths cover the tails). Only
    /// the widths of the CPU that runs the tests are compared.
    #[test]
    fn every_width_gives_the_same_bits() {
        let xs: Vec<f32> = sweep().into_iter().take(40_003).collect();
        for f in [exp_in_place::at, gelu_in_place::at, silu_in_place::at, sigmoid_in_place::at] {
            let mut plain = xs.clone();
            f(Simd::Sse2, &mut plain);
            for level in Simd::available() {
                let mut wide = xs.clone();
                f(level, &mut wide);
                assert!(plain.iter().zip(&wide).all(|(a, b)| a.to_bits() == b.to_bits()), "{level:?}");
            }
        }
    }
}
