//! AdamW's pass over a CPU parameter and the sum of squares behind gradient clipping's norm.

use crate::nn::cpu::{f32_slice, f32_slice_mut};
use crate::nn::grads::GradRows;
use crate::nn::vmath::{Kernel, Simd, at_width};
use candle_core::{CpuStorage, InplaceOp1, InplaceOp2, Layout, Result};
use rayon::prelude::*;
use std::cell::RefCell;
use std::sync::Mutex;

/// A CPU parameter's first and second moments.
pub(super) struct HostMoments {
    pub(super) m: Vec<f32>,
    pub(super) v: Vec<f32>,
}

/// Elements per parallel work unit of the CPU kernels.
pub(super) const CHUNK: usize = 1 << 16;

/// `sum x^2` in f64 over eight interleaved partial sums, added in a fixed order (the same bits on
/// any thread count). With one running sum, each addition waited on the last: `--clip-grad` cost
/// 2.1 ms a step on the Vireo-size head, now 0.5 (AMD EPYC Zen 5, BENCHMARKS.md).
pub(super) fn sum_of_squares(c: &[f32]) -> f64 {
    let mut lanes = [0f64; 8];
    let eights = c.chunks_exact(8);
    let rest = eights.remainder().iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>();
    for e in eights {
        for (s, &x) in lanes.iter_mut().zip(e) {
            *s += (x as f64) * (x as f64);
        }
    }
    lanes.iter().sum::<f64>() + rest
}

/// One pass over a CPU parameter, in place: with `g' = grad_scale g`,
/// `m = b1 m + (1 - b1) g'`, `v = b2 v + (1 - b2) g'^2`,
/// `p = p (1 - lr wd) - lr (m / bc1) / (sqrt(v / bc2) + eps)` (PyTorch's AdamW).
pub(super) struct AdamWKernel<'a> {
    pub(super) moments: &'a Mutex<HostMoments>,
    pub(super) k: AdamWConstants,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct AdamWConstants {
    pub(super) beta1: f32,
    pub(super) beta2: f32,
    pub(super) grad_scale: f32,
    pub(super) decay: f32,
    pub(super) step: f32,
    pub(super) inv_bc2: f32,
    pub(super) eps: f32,
}

impl AdamWConstants {
    /// The update at the CPU's widest vector width ([`Simd::detected`]): every width gives the same
    /// bits (the same IEEE operations in the same order). SSE2's square root and division made the
    /// one-thread pass bound by arithmetic: AVX-512 took it from 2.6 to 2.1 ms (BENCHMARKS.md).
    fn update(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        self.update_at(Simd::detected(), p, g, m, v)
    }

    /// [`Self::update`] at a given width (one [`Simd::available`] lists).
    fn update_at(&self, level: Simd, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        at_width(level, AdamWLoop { k: self, p, g, m, v })
    }
}

struct AdamWLoop<'a> {
    k: &'a AdamWConstants,
    p: &'a mut [f32],
    g: &'a [f32],
    m: &'a mut [f32],
    v: &'a mut [f32],
}

impl Kernel for AdamWLoop<'_> {
    #[inline(always)]
    fn run(self) {
        let AdamWConstants { beta1: b1, beta2: b2, grad_scale: s, decay, step, inv_bc2, eps } = *self.k;
        let n = self.p.len();
        let (p, g, m, v) = (self.p, &self.g[..n], &mut self.m[..n], &mut self.v[..n]);
        for i in 0..n {
            let g = g[i] * s;
            m[i] = b1 * m[i] + (1.0 - b1) * g;
            v[i] = b2 * v[i] + (1.0 - b2) * g * g;
            p[i] = p[i] * decay - step * m[i] / ((v[i] * inv_bc2).sqrt() + eps);
        }
    }
}

/// `f` on the moments behind `moments`, once their lengths are checked against a parameter's `len`.
fn with_moments<R>(moments: &Mutex<HostMoments>, len: usize, f: impl FnOnce(&mut [f32], &mut [f32]) -> R) -> Result<R> {
    let mut guard = moments.lock().unwrap_or_else(|e| e.into_inner());
    let HostMoments { m, v } = &mut *guard;
    if m.len() != len || v.len() != len {
        candle_core::bail!("adamw: a parameter of {len} values with moments of {} and {}", m.len(), v.len());
    }
    Ok(f(m, v))
}

impl InplaceOp2 for AdamWKernel<'_> {
    fn name(&self) -> &'static str {
        "adamw"
    }

    fn cpu_fwd(&self, p: &mut CpuStorage, pl: &Layout, g: &CpuStorage, gl: &Layout) -> Result<()> {
        let (p, g) = (f32_slice_mut("adamw", p, pl)?, f32_slice("adamw", g, gl)?);
        if g.len() != p.len() {
            candle_core::bail!("adamw: a parameter of {} values with a gradient of {}", p.len(), g.len());
        }
        let k = &self.k;
        with_moments(self.moments, p.len(), |m, v| {
            if p.len() <= CHUNK {
                return k.update(p, g, m, v);
            }
            p.par_chunks_mut(CHUNK)
                .zip(g.par_chunks(CHUNK))
                .zip(m.par_chunks_mut(CHUNK))
                .zip(v.par_chunks_mut(CHUNK))
                .for_each(|(((p, g), m), v)| k.update(p, g, m, v))
        })
    }
}

/// [`AdamWKernel`] with the gradient given by blocks of rows as they are computed
/// ([`crate::nn::grads::ParamUpdate`]): each block goes into a buffer of the thread's that stays
/// in its cache, and the update reads it from there. The same bits as the whole gradient's pass.
pub(super) struct AdamWByRows<'a> {
    pub(super) moments: &'a Mutex<HostMoments>,
    pub(super) k: AdamWConstants,
    pub(super) block_rows: usize,
    pub(super) grad: &'a GradRows<'a>,
}

thread_local! {
    /// A thread's block of gradient rows for [`AdamWByRows`], kept between blocks.
    static BLOCK: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

impl InplaceOp1 for AdamWByRows<'_> {
    fn name(&self) -> &'static str {
        "adamw-by-rows"
    }

    fn cpu_fwd(&self, p: &mut CpuStorage, pl: &Layout) -> Result<()> {
        let (_, cols) = pl.shape().dims2()?;
        let p = f32_slice_mut("adamw", p, pl)?;
        let (k, len) = (&self.k, (self.block_rows * cols).max(1));
        with_moments(self.moments, p.len(), |m, v| {
            p.par_chunks_mut(len).zip(m.par_chunks_mut(len)).zip(v.par_chunks_mut(len)).enumerate().for_each(|(i, ((p, m), v))| {
                BLOCK.with_borrow_mut(|g| {
                    g.resize(g.len().max(p.len()), 0.0);
                    let g = &mut g[..p.len()];
                    // The rows' parameter and moments come from memory during their gradient's product.
                    crate::nn::cpu::kernel::prefetching([&*p, &*m, &*v], || (self.grad)(i * self.block_rows, g));
                    k.update(p, g, m, v);
                })
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every vector width this CPU has gives the plain version's bits (an odd length covers the
    /// tails); only the widths of the CPU that runs the tests are compared.
    #[test]
    fn every_width_gives_the_same_bits() {
        let mut rng = crate::rng::stream(2, "test", 0);
        let n = 1003;
        let (p0, g) = (crate::rng::normal_vec(&mut rng, n), crate::rng::normal_vec(&mut rng, n));
        let (m0, v0) = (crate::rng::normal_vec(&mut rng, n), crate::rng::normal_vec(&mut rng, n).iter().map(|x| x * x).collect::<Vec<f32>>());
        let kernel = AdamWConstants { beta1: 0.9, beta2: 0.999, grad_scale: 0.7, decay: 0.999, step: 0.01, inv_bc2: 3.0, eps: 1e-8 };
        let run = |level| {
            let (mut p, mut m, mut v) = (p0.clone(), m0.clone(), v0.clone());
            kernel.update_at(level, &mut p, &g, &mut m, &mut v);
            [p, m, v].concat().iter().map(|x| x.to_bits()).collect::<Vec<u32>>()
        };
        let plain = run(Simd::Sse2);
        let before: Vec<u32> = [&p0[..], &m0, &v0].concat().iter().map(|x| x.to_bits()).collect();
        assert_ne!(plain, before, "the update changed nothing");
        for level in Simd::available() {
            assert_eq!(run(level), plain, "{level:?}");
        }
    }

    #[test]
    fn the_sum_of_squares_matches_the_plain_sum() {
        let mut rng = crate::rng::stream(3, "test", 0);
        for n in [0, 1, 7, 8, 9, 100_003] {
            let x = crate::rng::normal_vec(&mut rng, n);
            let plain: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
            let got = sum_of_squares(&x);
            assert!((got - plain).abs() <= 1e-12 * plain.max(1.0), "{n}: {got} vs {plain}");
        }
    }
}
