//! The machine's peak rate of fused multiply-adds, the yardstick for the products' GFLOP/s.

use serde::Serialize;
use std::time::Instant;

/// Peak single-precision rate of fused multiply-adds, all `threads` busy, by instruction set.
#[derive(Debug, Clone, Serialize)]
pub struct Peak {
    pub threads: usize,
    /// GFLOP/s with 256-bit FMA (AVX2), if the CPU has it.
    pub avx2_gflops: Option<f64>,
    /// GFLOP/s with 512-bit FMA (AVX-512F), if the CPU has it; the matmul kernels use these here.
    pub avx512_gflops: Option<f64>,
}

/// Measures [`Peak`] with register-only FMA chains on `threads` threads at once.
pub fn fma_peak(threads: usize) -> Peak {
    // The best of five short runs: a peak, so interference from other work only lowers it.
    let rate = |kernel: fn(u64) -> f32, flop_per_iter: f64| {
        let iters = 10_000_000u64;
        let once = || {
            let t0 = Instant::now();
            std::thread::scope(|s| {
                for _ in 0..threads {
                    s.spawn(|| std::hint::black_box(kernel(iters)));
                }
            });
            threads as f64 * iters as f64 * flop_per_iter / t0.elapsed().as_secs_f64() / 1e9
        };
        (0..5).map(|_| once()).fold(0.0, f64::max)
    };
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = (is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")).then(|| rate(fma::avx2, fma::AVX2_FLOP));
        let avx512 = is_x86_feature_detected!("avx512f").then(|| rate(fma::avx512, fma::AVX512_FLOP));
        Peak { threads, avx2_gflops: avx2, avx512_gflops: avx512 }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = rate;
        Peak { threads, avx2_gflops: None, avx512_gflops: None }
    }
}

#[cfg(target_arch = "x86_64")]
mod fma {
    use std::arch::x86_64::*;

    /// Independent accumulator chains: enough to cover FMA latency on two ports.
    const CHAINS: usize = 12;
    pub const AVX2_FLOP: f64 = (CHAINS * 8 * 2) as f64;
    pub const AVX512_FLOP: f64 = (CHAINS * 16 * 2) as f64;

    pub fn avx2(iters: u64) -> f32 {
        // SAFETY: only called after runtime detection of AVX2 and FMA.
        unsafe { avx2_chains(iters) }
    }

    pub fn avx512(iters: u64) -> f32 {
        // SAFETY: only called after runtime detection of AVX-512F.
        unsafe { avx512_chains(iters) }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2_chains(iters: u64) -> f32 {
        let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
        let mut acc = [_mm256_set1_ps(1.0); CHAINS];
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = _mm256_fmadd_ps(*x, a, b);
            }
        }
        let mut out = [0f32; 8];
        let sum = acc.iter().fold(_mm256_setzero_ps(), |s, &x| _mm256_add_ps(s, x));
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), sum) };
        out.iter().sum()
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn avx512_chains(iters: u64) -> f32 {
        let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
        let mut acc = [_mm512_set1_ps(1.0); CHAINS];
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = _mm512_fmadd_ps(*x, a, b);
            }
        }
        _mm512_reduce_add_ps(acc.iter().fold(_mm512_setzero_ps(), |s, &x| _mm512_add_ps(s, x)))
    }
}
