//! AdamW (decoupled weight decay, PyTorch semantics) with state that checkpoints can save,
//! and global-norm gradient clipping, which candle lacks.

use candle_core::{CpuStorage, InplaceOp2, InplaceOp3, Layout, Result, Tensor, Var, backprop::GradStore};
use crate::cpu::{f32_slice, f32_slice_mut};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }
    }
}

pub struct AdamW {
    cfg: AdamWConfig,
    /// Parameters sorted by name, so every reduction over them has a fixed order.
    params: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    step: u64,
}

impl AdamW {
    pub fn new(mut params: Vec<(String, Var)>, cfg: AdamWConfig) -> Result<Self> {
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let zeros = |p: &Var| p.as_tensor().zeros_like();
        let m = params.iter().map(|(_, p)| zeros(p)).collect::<Result<_>>()?;
        let v = params.iter().map(|(_, p)| zeros(p)).collect::<Result<_>>()?;
        Ok(Self { cfg, params, m, v, step: 0 })
    }

    pub fn steps_taken(&self) -> u64 {
        self.step
    }

    /// Scales all gradients so their global L2 norm is at most `max_norm` (no-op if
    /// `max_norm <= 0`). Returns the norm before clipping.
    pub fn clip_grad_norm(&self, grads: &mut GradStore, max_norm: f64) -> Result<f64> {
        let mut sq = 0f64;
        for (_, p) in &self.params {
            if let Some(g) = grads.get(p.as_tensor()) {
                sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
            }
        }
        let norm = sq.sqrt();
        if max_norm > 0.0 && norm > max_norm {
            let scale = max_norm / (norm + 1e-6);
            for (_, p) in &self.params {
                if let Some(g) = grads.remove(p.as_tensor()) {
                    grads.insert(p.as_tensor(), (g * scale)?);
                }
            }
        }
        Ok(norm)
    }

    /// One AdamW update; parameters without a gradient are left untouched.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step += 1;
        let c = self.cfg;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2 = 1.0 - c.beta2.powi(self.step as i32);
        for (i, (_, p)) in self.params.iter().enumerate() {
            let Some(g) = grads.get(p.as_tensor()) else { continue };
            if p.device().is_cpu() {
                // Fused passes in place, no temporaries; the same arithmetic as below.
                self.m[i].inplace_op2(g, &MomentKernel { beta: c.beta1 as f32, square: false })?;
                self.v[i].inplace_op2(g, &MomentKernel { beta: c.beta2 as f32, square: true })?;
                let u = UpdateKernel {
                    decay: (1.0 - c.lr * c.weight_decay) as f32,
                    step: (c.lr / bc1) as f32,
                    inv_bc2: (1.0 / bc2) as f32,
                    eps: c.eps as f32,
                };
                p.as_tensor().inplace_op3(&self.m[i], &self.v[i], &u)?;
                continue;
            }
            let m = ((&self.m[i] * c.beta1)? + (g * (1.0 - c.beta1))?)?;
            let v = ((&self.v[i] * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let denom = ((&v * (1.0 / bc2))?.sqrt()? + c.eps)?;
            let update = ((&m * (c.lr / bc1))? / denom)?;
            let decayed = (p.as_tensor() * (1.0 - c.lr * c.weight_decay))?;
            p.set(&(decayed - update)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    /// The moments as named tensors (`adamw.m.<param>`, `adamw.v.<param>`).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (i, (name, _)) in self.params.iter().enumerate() {
            out.push((format!("adamw.m.{name}"), self.m[i].clone()));
            out.push((format!("adamw.v.{name}"), self.v[i].clone()));
        }
        out
    }

    /// Restores what [`AdamW::state`] saved, and the step count.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, step: u64) -> anyhow::Result<()> {
        for (i, (name, p)) in self.params.iter().enumerate() {
            for (kind, slot) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
                let key = format!("adamw.{kind}.{name}");
                let t = tensors.get(&key).ok_or_else(|| anyhow::anyhow!("optimiser state `{key}` is missing"))?;
                anyhow::ensure!(t.shape() == p.shape(), "optimiser state `{key}` has shape {:?}, expected {:?}", t.shape(), p.shape());
                *slot = t.to_device(p.device())?;
            }
        }
        self.step = step;
        Ok(())
    }
}

/// Elements per parallel work unit of the CPU kernels.
const CHUNK: usize = 1 << 16;

/// In place on a moment: `m = beta m + (1 - beta) g^power` (power 1 or 2).
struct MomentKernel {
    beta: f32,
    square: bool,
}

impl InplaceOp2 for MomentKernel {
    fn name(&self) -> &'static str {
        "adamw-moment"
    }

    fn cpu_fwd(&self, m: &mut CpuStorage, ml: &Layout, g: &CpuStorage, gl: &Layout) -> Result<()> {
        let (m, g, b) = (f32_slice_mut("adamw", m, ml)?, f32_slice("adamw", g, gl)?, self.beta);
        m.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).for_each(|(m, g)| {
            if self.square {
                m.iter_mut().zip(g).for_each(|(m, &g)| *m = b * *m + (1.0 - b) * g * g);
            } else {
                m.iter_mut().zip(g).for_each(|(m, &g)| *m = b * *m + (1.0 - b) * g);
            }
        });
        Ok(())
    }
}

/// In place on a parameter: `p = p (1 - lr wd) - lr (m / bc1) / (sqrt(v / bc2) + eps)`.
struct UpdateKernel {
    decay: f32,
    step: f32,
    inv_bc2: f32,
    eps: f32,
}

impl InplaceOp3 for UpdateKernel {
    fn name(&self) -> &'static str {
        "adamw-update"
    }

    fn cpu_fwd(&self, p: &mut CpuStorage, pl: &Layout, m: &CpuStorage, ml: &Layout, v: &CpuStorage, vl: &Layout) -> Result<()> {
        let (p, m, v) = (f32_slice_mut("adamw", p, pl)?, f32_slice("adamw", m, ml)?, f32_slice("adamw", v, vl)?);
        p.par_chunks_mut(CHUNK).zip(m.par_chunks(CHUNK)).zip(v.par_chunks(CHUNK)).for_each(|((p, m), v)| {
            for ((p, &m), &v) in p.iter_mut().zip(m).zip(v) {
                *p = *p * self.decay - self.step * m / ((v * self.inv_bc2).sqrt() + self.eps);
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Three AdamW steps against the PyTorch formula written out in f64.
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
            opt.step(&grads)?;
            let kk = [1.0, 3.0, -2.0];
            for i in 0..3 {
                let g = 2.0 * kk[i] * want[i];
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

    #[test]
    fn clipping_bounds_the_global_norm() -> Result<()> {
        let dev = Device::Cpu;
        let a = Var::new(&[3.0f32, 0.0], &dev)?;
        let b = Var::new(&[4.0f32], &dev)?;
        let opt = AdamW::new(vec![("a".into(), a.clone()), ("b".into(), b.clone())], AdamWConfig::default())?;
        // grads = (3, 0) and (4): global norm 5.
        let loss = ((a.as_tensor().sqr()?.sum_all()? + b.as_tensor().sqr()?.sum_all()?)? * 0.5)?;
        let mut grads = loss.backward()?;
        assert!((opt.clip_grad_norm(&mut grads, 1.0)? - 5.0).abs() < 1e-6);
        let ga = grads.get(a.as_tensor()).unwrap().to_vec1::<f32>()?;
        let gb = grads.get(b.as_tensor()).unwrap().to_vec1::<f32>()?;
        let norm = (ga[0].powi(2) + ga[1].powi(2) + gb[0].powi(2)).sqrt();
        assert!((norm - 1.0).abs() < 1e-5 && (ga[0] / gb[0] - 0.75).abs() < 1e-6, "{ga:?} {gb:?}");
        Ok(())
    }
}
