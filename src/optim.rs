//! AdamW (decoupled weight decay, PyTorch semantics) with state that checkpoints can save,
//! and global-norm gradient clipping, which candle lacks.

use crate::nn::cpu::{f32_slice, f32_slice_mut, with_f32};
use crate::nn::vmath::Simd;
use candle_core::{CpuStorage, InplaceOp2, Layout, Result, Tensor, Var, backprop::GradStore};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct AdamWConfig {
    /// Learning rate of AdamW.
    #[arg(long, default_value_t = 1e-3, value_parser = crate::options::positive_finite)]
    pub lr: f64,
    /// PyTorch's defaults for the moments and epsilon (no flags).
    #[arg(skip = 0.9)]
    pub beta1: f64,
    #[arg(skip = 0.999)]
    pub beta2: f64,
    #[arg(skip = 1e-8)]
    pub eps: f64,
    /// AdamW decoupled weight decay (0: none).
    #[arg(long, default_value_t = 0.01, value_parser = crate::options::non_negative)]
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        crate::options::defaults()
    }
}

pub struct AdamW {
    cfg: AdamWConfig,
    /// Parameters sorted by name, so every reduction over them has a fixed order.
    params: Vec<(String, Var)>,
    moments: Vec<Moments>,
    step: u64,
}

/// First and second moments of one parameter: plain vectors for a CPU parameter, so that one
/// fused pass updates moments and parameter together; tensors on other devices.
enum Moments {
    Host { m: Vec<f32>, v: Vec<f32> },
    Device { m: Tensor, v: Tensor },
}

/// The factor that scales gradients of global norm `norm` down to `max_norm` (1 when
/// `max_norm <= 0`, i.e. no clipping, or when the norm is already within it).
pub fn clip_scale(norm: f64, max_norm: f64) -> f64 {
    if max_norm > 0.0 && norm > max_norm { max_norm / (norm + 1e-6) } else { 1.0 }
}

impl AdamW {
    pub fn new(params: Vec<(String, Var)>, cfg: AdamWConfig) -> Result<Self> {
        Self::with_moments(params, cfg, |p| p.device().is_cpu())
    }

    /// [`AdamW::new`] with host moments for the parameters where `host` says so (the tensor path
    /// is for other devices; tests run it on the CPU too).
    fn with_moments(mut params: Vec<(String, Var)>, cfg: AdamWConfig, host: impl Fn(&Var) -> bool) -> Result<Self> {
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let moments = params
            .iter()
            .map(|(_, p)| {
                Ok(if host(p) {
                    Moments::Host { m: vec![0.0; p.elem_count()], v: vec![0.0; p.elem_count()] }
                } else {
                    Moments::Device { m: p.zeros_like()?, v: p.zeros_like()? }
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self { cfg, params, moments, step: 0 })
    }

    /// The parameters it updates, sorted by name.
    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    pub fn steps_taken(&self) -> u64 {
        self.step
    }

    /// The global L2 norm of all gradients (summed in a fixed order: the same on any thread count).
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        let mut sq = 0f64;
        for (_, p) in &self.params {
            let Some(g) = grads.get(p.as_tensor()) else { continue };
            sq += if g.device().is_cpu() {
                with_f32("grad-norm", g, |g| {
                    let parts: Vec<f64> = g.par_chunks(CHUNK).map(sum_of_squares).collect();
                    parts.iter().sum::<f64>()
                })?
            } else {
                g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64
            };
        }
        Ok(sq.sqrt())
    }

    /// One AdamW update with every gradient multiplied by `grad_scale` (see [`clip_scale`]);
    /// parameters without a gradient are left untouched.
    pub fn step(&mut self, grads: &GradStore, grad_scale: f64) -> Result<()> {
        self.step += 1;
        let c = self.cfg;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2 = 1.0 - c.beta2.powi(self.step as i32);
        for ((_, p), moments) in self.params.iter().zip(&mut self.moments) {
            let Some(g) = grads.get(p.as_tensor()) else { continue };
            match moments {
                Moments::Host { m, v } => {
                    let kernel = AdamWKernel {
                        m: Mutex::new(m),
                        v: Mutex::new(v),
                        beta1: c.beta1 as f32,
                        beta2: c.beta2 as f32,
                        grad_scale: grad_scale as f32,
                        decay: (1.0 - c.lr * c.weight_decay) as f32,
                        step: (c.lr / bc1) as f32,
                        inv_bc2: (1.0 / bc2) as f32,
                        eps: c.eps as f32,
                    };
                    p.as_tensor().inplace_op2(g, &kernel)?;
                }
                Moments::Device { m, v } => {
                    // Detached: a parameter's gradient keeps the backward graph that made it (candle
                    // detaches only inner nodes'), and the moments would chain every step's
                    // gradient and temporaries to the next (21 MB each on the Vireo-size head): out
                    // of GPU memory within the first epoch (scripts/gpu-check, 2026-12-04).
                    let g = g.detach();
                    let g = if grad_scale == 1.0 { g } else { (g * grad_scale)? };
                    *m = ((&*m * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
                    *v = ((&*v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
                    let denom = ((&*v * (1.0 / bc2))?.sqrt()? + c.eps)?;
                    let update = ((&*m * (c.lr / bc1))? / denom)?;
                    let decayed = (p.as_tensor() * (1.0 - c.lr * c.weight_decay))?;
                    p.set(&(decayed - update)?)?;
                }
            }
        }
        Ok(())
    }

    /// The moments as named tensors (`adamw.m.<param>`, `adamw.v.<param>`).
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for ((name, p), moments) in self.params.iter().zip(&self.moments) {
            let (m, v) = match moments {
                Moments::Host { m, v } => (Tensor::from_slice(m, p.shape(), p.device())?, Tensor::from_slice(v, p.shape(), p.device())?),
                Moments::Device { m, v } => (m.clone(), v.clone()),
            };
            out.push((format!("adamw.m.{name}"), m));
            out.push((format!("adamw.v.{name}"), v));
        }
        Ok(out)
    }

    /// Restores what [`AdamW::state`] saved, and the step count.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, step: u64) -> anyhow::Result<()> {
        for ((name, p), moments) in self.params.iter().zip(&mut self.moments) {
            let get = |kind: &str| -> anyhow::Result<Tensor> {
                let key = format!("adamw.{kind}.{name}");
                let t = tensors.get(&key).ok_or_else(|| anyhow::anyhow!("optimiser state `{key}` is missing"))?;
                anyhow::ensure!(t.shape() == p.shape(), "optimiser state `{key}` has shape {:?}, expected {:?}", t.shape(), p.shape());
                Ok(t.to_device(p.device())?)
            };
            let (m, v) = (get("m")?, get("v")?);
            *moments = match moments {
                Moments::Host { .. } => Moments::Host { m: m.flatten_all()?.to_vec1()?, v: v.flatten_all()?.to_vec1()? },
                Moments::Device { .. } => Moments::Device { m, v },
            };
        }
        self.step = step;
        Ok(())
    }
}

/// Elements per parallel work unit of the CPU kernels.
const CHUNK: usize = 1 << 16;

/// `sum x^2` in f64 over eight interleaved partial sums, added in a fixed order (the same bits on
/// any thread count). With one running sum, each addition waited on the last: `--clip-grad` cost
/// 2.1 ms a step on the Vireo-size head, now 0.5 (AMD EPYC Zen 5, BENCHMARKS.md).
fn sum_of_squares(c: &[f32]) -> f64 {
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
struct AdamWKernel<'a> {
    m: Mutex<&'a mut Vec<f32>>,
    v: Mutex<&'a mut Vec<f32>>,
    beta1: f32,
    beta2: f32,
    grad_scale: f32,
    decay: f32,
    step: f32,
    inv_bc2: f32,
    eps: f32,
}

impl AdamWKernel<'_> {
    /// The update at the CPU's widest vector width ([`Simd::detected`]): every width gives the same
    /// bits (the same IEEE operations in the same order). SSE2's square root and division made the
    /// one-thread pass bound by arithmetic: AVX-512 took it from 2.6 to 2.1 ms (BENCHMARKS.md).
    fn update(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        self.update_at(Simd::detected(), p, g, m, v)
    }

    /// [`Self::update`] at a given width (one [`Simd::available`] lists).
    fn update_at(&self, level: Simd, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        match level {
            // SAFETY: `available` lists a level only when the CPU has its features.
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => unsafe { self.avx2(p, g, m, v) },
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 => unsafe { self.avx512(p, g, m, v) },
            _ => self.body(p, g, m, v),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn avx2(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        self.body(p, g, m, v)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    fn avx512(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        self.body(p, g, m, v)
    }

    #[inline(always)]
    fn body(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        let (b1, b2, s) = (self.beta1, self.beta2, self.grad_scale);
        let n = p.len();
        let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
        for i in 0..n {
            let g = g[i] * s;
            m[i] = b1 * m[i] + (1.0 - b1) * g;
            v[i] = b2 * v[i] + (1.0 - b2) * g * g;
            p[i] = p[i] * self.decay - self.step * m[i] / ((v[i] * self.inv_bc2).sqrt() + self.eps);
        }
    }
}

impl InplaceOp2 for AdamWKernel<'_> {
    fn name(&self) -> &'static str {
        "adamw"
    }

    fn cpu_fwd(&self, p: &mut CpuStorage, pl: &Layout, g: &CpuStorage, gl: &Layout) -> Result<()> {
        let (p, g) = (f32_slice_mut("adamw", p, pl)?, f32_slice("adamw", g, gl)?);
        let (mut m, mut v) = (self.m.lock().unwrap(), self.v.lock().unwrap());
        if g.len() != p.len() || m.len() != p.len() || v.len() != p.len() {
            candle_core::bail!("adamw: parameter, gradient and moments differ in length");
        }
        if p.len() <= CHUNK {
            self.update(p, g, &mut m[..], &mut v[..]);
            return Ok(());
        }
        p.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .for_each(|(((p, g), m), v)| self.update(p, g, m, v));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Three AdamW steps against the PyTorch formula written out in f64, one with scaled gradients.
    #[test]
    fn matches_the_adamw_formula() -> Result<()> {
        let dev = Device::Cpu;
        let p = Var::new(&[2.0f32, -1.0, 0.5], &dev)?;
        let cfg = AdamWConfig { lr: 0.1, weight_decay: 0.05, ..Default::default() };
        let mut opt = AdamW::new(vec![("p".into(), p.clone())], cfg)?;
        let (mut want, mut m, mut v) = ([2.0f64, -1.0, 0.5], [0f64; 3], [0f64; 3]);
        for step in 1..=3 {
            // loss = sum(p^2 * k) => grad = 2 k p
            let k = Tensor::new(&[1.0f32, 3.0, -2.0], &dev)?;
            let grads = (p.as_tensor().sqr()? * &k)?.sum_all()?.backward()?;
            // Step 2 scales the gradients by 0.5, as clipping would.
            let scale = if step == 2 { 0.5 } else { 1.0 };
            opt.step(&grads, scale)?;
            let kk = [1.0, 3.0, -2.0];
            for i in 0..3 {
                let g = 2.0 * kk[i] * want[i] * scale;
                want[i] *= 1.0 - cfg.lr * cfg.weight_decay;
                m[i] = cfg.beta1 * m[i] + (1.0 - cfg.beta1) * g;
                v[i] = cfg.beta2 * v[i] + (1.0 - cfg.beta2) * g * g;
                let mh = m[i] / (1.0 - cfg.beta1.powi(step));
                let vh = v[i] / (1.0 - cfg.beta2.powi(step));
                want[i] -= cfg.lr * mh / (vh.sqrt() + cfg.eps);
            }
        }
        let got = p.as_tensor().to_vec1::<f32>()?;
        for i in 0..3 {
            assert!((got[i] as f64 - want[i]).abs() < 1e-5, "{got:?} vs {want:?}");
        }
        assert_eq!(opt.steps_taken(), 3);
        Ok(())
    }

    /// The tensor path (GPUs) computes what the host path computes, and its moments hold no
    /// backward graph: the gradients they are made from do.
    #[test]
    fn the_tensor_path_matches_and_keeps_no_graph() -> Result<()> {
        let dev = Device::Cpu;
        let cfg = AdamWConfig { lr: 0.1, weight_decay: 0.05, ..Default::default() };
        let run = |host: bool| -> Result<(Vec<f32>, AdamW)> {
            let p = Var::new(&[2.0f32, -1.0, 0.5], &dev)?;
            let mut opt = AdamW::with_moments(vec![("p".into(), p.clone())], cfg, |_| host)?;
            let k = Tensor::new(&[1.0f32, 3.0, -2.0], &dev)?;
            for step in 0..3 {
                let grads = (p.as_tensor().sqr()? * &k)?.sum_all()?.backward()?;
                assert!(grads.get(p.as_tensor()).unwrap().track_op(), "the gradient should carry its graph");
                opt.step(&grads, if step == 1 { 0.5 } else { 1.0 })?;
            }
            Ok((p.as_tensor().to_vec1()?, opt))
        };
        let ((host, _), (tensor, opt)) = (run(true)?, run(false)?);
        assert!(host.iter().zip(&tensor).all(|(a, b)| (a - b).abs() < 1e-5), "{host:?} vs {tensor:?}");
        let Moments::Device { m, v } = &opt.moments[0] else { panic!("expected tensor moments") };
        assert!(!m.track_op() && !v.track_op(), "the moments keep a backward graph alive");
        Ok(())
    }

    /// Every vector width this CPU has gives the plain version's bits (an odd length covers the
    /// tails); only the widths of the CPU that runs the tests are compared.
    #[test]
    fn every_width_gives_the_same_bits() {
        let mut rng = crate::rng::stream(2, "test", 0);
        let n = 1003;
        let (p0, g) = (crate::rng::normal_vec(&mut rng, n), crate::rng::normal_vec(&mut rng, n));
        let (m0, v0) = (crate::rng::normal_vec(&mut rng, n), crate::rng::normal_vec(&mut rng, n).iter().map(|x| x * x).collect::<Vec<f32>>());
        let (mut mm, mut vv) = (Vec::new(), Vec::new());
        let kernel = AdamWKernel {
            m: Mutex::new(&mut mm),
            v: Mutex::new(&mut vv),
            beta1: 0.9,
            beta2: 0.999,
            grad_scale: 0.7,
            decay: 0.999,
            step: 0.01,
            inv_bc2: 3.0,
            eps: 1e-8,
        };
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

    #[test]
    fn clipping_bounds_the_global_norm() -> Result<()> {
        let dev = Device::Cpu;
        let a = Var::new(&[3.0f32, 0.0], &dev)?;
        let b = Var::new(&[4.0f32], &dev)?;
        let opt = AdamW::new(vec![("a".into(), a.clone()), ("b".into(), b.clone())], AdamWConfig::default())?;
        // grads = (3, 0) and (4): global norm 5.
        let loss = ((a.as_tensor().sqr()?.sum_all()? + b.as_tensor().sqr()?.sum_all()?)? * 0.5)?;
        let grads = loss.backward()?;
        let norm = opt.grad_norm(&grads)?;
        assert!((norm - 5.0).abs() < 1e-6);
        assert!((clip_scale(norm, 1.0) * norm - 1.0).abs() < 1e-5);
        assert_eq!(clip_scale(norm, 10.0), 1.0);
        assert_eq!(clip_scale(norm, 0.0), 1.0);
        Ok(())
    }
}
