//! AdamW (decoupled weight decay, PyTorch semantics) with state that checkpoints can save,
//! and global-norm gradient clipping, which candle lacks.

mod kernel;

use crate::nn::cpu::with_f32;
use crate::nn::grads::{GradRows, ParamUpdate, arm, handed_over_only};
use crate::nn::padded;
use candle_core::{Result, Tensor, Var, backprop::GradStore};
use kernel::{AdamWByRows, AdamWConstants, AdamWKernel, CHUNK, HostMoments, sum_of_squares};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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
    /// Whether [`AdamW::step_in_backward`] updates CPU parameters during the backward pass.
    in_backward: bool,
}

/// First and second moments of one parameter: plain vectors for a CPU parameter, so that one
/// fused pass updates moments and parameter together (shared with an update running in the
/// backward pass); tensors on other devices.
enum Moments {
    Host(Arc<Mutex<HostMoments>>),
    Device { m: Tensor, v: Tensor },
}

impl Moments {
    fn host(m: Vec<f32>, v: Vec<f32>) -> Self {
        Moments::Host(Arc::new(Mutex::new(HostMoments { m, v })))
    }
}

/// AdamW's update of a CPU parameter in the backward pass, on its whole gradient or by rows.
struct HostUpdate {
    moments: Arc<Mutex<HostMoments>>,
    k: AdamWConstants,
}

impl ParamUpdate for HostUpdate {
    fn whole(&self, p: &Tensor, g: &Tensor) -> Result<()> {
        p.inplace_op2(g, &AdamWKernel { moments: &self.moments, k: self.k })
    }

    fn by_rows(&self, p: &Tensor, block_rows: usize, grad: &GradRows) -> Result<()> {
        p.inplace_op1(&AdamWByRows { moments: &self.moments, k: self.k, block_rows, grad })
    }
}

/// `MARNET_UPDATE_IN_BACKWARD=0` turns the updates in the backward pass off (to compare).
const IN_BACKWARD_ENV: &str = "MARNET_UPDATE_IN_BACKWARD";

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
                    Moments::host(vec![0.0; p.elem_count()], vec![0.0; p.elem_count()])
                } else {
                    Moments::Device { m: p.zeros_like()?, v: p.zeros_like()? }
                })
            })
            .collect::<Result<_>>()?;
        let in_backward = std::env::var(IN_BACKWARD_ENV).map_or(true, |v| v != "0");
        Ok(Self { cfg, params, moments, step: 0, in_backward })
    }

    /// With `false`, [`AdamW::step_in_backward`] updates every parameter after the backward pass.
    pub fn set_update_in_backward(&mut self, on: bool) {
        self.in_backward = on;
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
            // Without a padded weight's zeros: they would move the chunks' bounds, and the sum's bits.
            let g = &padded::logical(p, g)?;
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
        self.update(grads, grad_scale)
    }

    /// One AdamW update (gradients unscaled) around `forward_backward`, which runs the loss's
    /// forward pass and [`crate::nn::backward`] for the parameters it is given and returns
    /// their gradients. The update of a CPU
    /// parameter that only linear layers use starts on the thread pool as soon as the backward
    /// pass has completed its gradient, or for a weight at its last use, computing the gradient
    /// by blocks of rows itself ([`crate::nn::grads`]); the others' (and all of the first step's)
    /// after it. The parameters get the bits [`AdamW::step`] gives them; if
    /// `forward_backward` fails, some may have been updated and the step is counted.
    pub fn step_in_backward<R>(&mut self, forward_backward: impl FnOnce(&[(String, Var)]) -> anyhow::Result<(R, GradStore)>) -> anyhow::Result<R> {
        self.step += 1;
        let k = self.constants(1.0);
        let mut updates: Vec<(Tensor, Box<dyn ParamUpdate>)> = Vec::new();
        for ((_, p), moments) in self.params.iter().zip(&self.moments) {
            // Only parameters that linear layers alone gave gradients to in the last step.
            let Moments::Host(mv) = moments else { continue };
            if self.in_backward && handed_over_only(p.as_tensor()) {
                updates.push((p.as_tensor().clone(), Box::new(HostUpdate { moments: mv.clone(), k })));
            }
        }
        let armed = arm(updates);
        let (out, grads) = forward_backward(&self.params)?;
        // The parameters updated so far took their gradients out of `grads`.
        armed.finish(&grads)?;
        self.update(&grads, 1.0)?;
        Ok(out)
    }

    /// The bias corrections of step `self.step`: `1 - beta1^t`, `1 - beta2^t`.
    fn bias_corrections(&self) -> (f64, f64) {
        (1.0 - self.cfg.beta1.powi(self.step as i32), 1.0 - self.cfg.beta2.powi(self.step as i32))
    }

    /// The kernel's constants for step `self.step`.
    fn constants(&self, grad_scale: f64) -> AdamWConstants {
        let (c, (bc1, bc2)) = (self.cfg, self.bias_corrections());
        AdamWConstants {
            beta1: c.beta1 as f32,
            beta2: c.beta2 as f32,
            grad_scale: grad_scale as f32,
            decay: (1.0 - c.lr * c.weight_decay) as f32,
            step: (c.lr / bc1) as f32,
            inv_bc2: (1.0 / bc2) as f32,
            eps: c.eps as f32,
        }
    }

    /// The update of step `self.step` of every parameter with a gradient in `grads`.
    fn update(&mut self, grads: &GradStore, grad_scale: f64) -> Result<()> {
        let (c, (bc1, bc2)) = (self.cfg, self.bias_corrections());
        let k = self.constants(grad_scale);
        for ((_, p), moments) in self.params.iter().zip(&mut self.moments) {
            let Some(g) = grads.get(p.as_tensor()) else { continue };
            match moments {
                Moments::Host(mv) => p.as_tensor().inplace_op2(g, &AdamWKernel { moments: mv, k })?,
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
                Moments::Host(mv) => {
                    let mv = mv.lock().unwrap_or_else(|e| e.into_inner());
                    (Tensor::from_slice(&mv.m, p.shape(), p.device())?, Tensor::from_slice(&mv.v, p.shape(), p.device())?)
                }
                Moments::Device { m, v } => (m.clone(), v.clone()),
            };
            out.push((format!("adamw.m.{name}"), padded::logical(p, &m)?));
            out.push((format!("adamw.v.{name}"), padded::logical(p, &v)?));
        }
        Ok(out)
    }

    /// Restores what [`AdamW::state`] saved, and the step count.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, step: u64) -> anyhow::Result<()> {
        for ((name, p), moments) in self.params.iter().zip(&mut self.moments) {
            let get = |kind: &str| -> anyhow::Result<Tensor> {
                let key = format!("adamw.{kind}.{name}");
                let t = tensors.get(&key).ok_or_else(|| anyhow::anyhow!("optimiser state `{key}` is missing"))?;
                let want = padded::logical_dims(p);
                anyhow::ensure!(t.dims() == want, "optimiser state `{key}` has shape {:?}, expected {want:?}", t.shape());
                Ok(padded::storage_form(p, &t.to_device(p.device())?)?)
            };
            let (m, v) = (get("m")?, get("v")?);
            *moments = match moments {
                Moments::Host(_) => Moments::host(m.flatten_all()?.to_vec1()?, v.flatten_all()?.to_vec1()?),
                Moments::Device { .. } => Moments::Device { m, v },
            };
        }
        self.step = step;
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

    /// Updates during the backward pass give the bits of updates after it, on a pool of two
    /// threads, for linear layers (one applied three times, one whose weight is also penalised)
    /// and a parameter outside them.
    #[test]
    fn updates_in_the_backward_pass_give_the_same_bits() -> anyhow::Result<()> {
        use crate::nn::linear::Linear;
        use candle_core::Module;
        let dev = Device::Cpu;
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build()?;
        let run = |in_backward: bool| -> anyhow::Result<Vec<u32>> {
            let mut rng = crate::rng::stream(6, "test", 0);
            let mut var = |shape: &[usize]| Var::from_tensor(&crate::rng::randn(&mut rng, shape, &dev)?);
            let vars = [var(&[300, 200])?, var(&[200])?, var(&[200, 300])?, var(&[300])?, var(&[1])?, var(&[200, 200])?, var(&[200])?];
            let (x, r) = (crate::rng::randn(&mut rng, (64, 300), &dev)?, crate::rng::randn(&mut rng, (64, 200), &dev)?);
            let params: Vec<(String, Var)> = vars.iter().enumerate().map(|(i, v)| (format!("p{i}"), v.clone())).collect();
            let mut opt = AdamW::new(params.clone(), AdamWConfig { lr: 0.01, ..Default::default() })?;
            opt.set_update_in_backward(in_backward);
            let [w1, b1, w2, b2, scale, w3, b3] = vars.each_ref().map(|v| v.as_tensor().clone());
            let (l1, l2, l3) = (Linear::new(w1, b1), Linear::new(w2, b2), Linear::new(w3.clone(), b3));
            for _ in 0..3 {
                pool.install(|| {
                    opt.step_in_backward(|params| {
                        let y = (l1.forward(&x)? + l1.forward(&l2.forward(&l1.forward(&x)?)?)?)?;
                        // l3's weight is also penalised: never updated in the backward pass.
                        let loss = (l3.forward(&y)? * &r)?.sum_all()?.broadcast_mul(&scale)?;
                        let loss = loss.broadcast_add(&(w3.sqr()?.sum_all()? * 1e-3)?)?;
                        Ok(((), crate::nn::backward(&loss, params)?))
                    })
                })?;
            }
            let values = vars.iter().map(|v| v.as_tensor().flatten_all()?.to_vec1::<f32>()).collect::<Result<Vec<_>>>()?;
            Ok(values.concat().iter().map(|x| x.to_bits()).collect())
        };
        assert_eq!(run(true)?, run(false)?);
        Ok(())
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
