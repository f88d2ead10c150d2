//! The denoiser's nonlinearity and EMA's LeakyReLU (eq. 6). On the CPU each is one op with a
//! hand-written backward pass (candle's SiLU backward is a chain of six elementwise ops), SiLU
//! with a vectorised exp.

use crate::nn::cpu::{f32_slice, with_f32};
use crate::nn::vmath::{sigmoid_in_place, silu_in_place};
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    Silu,
    Relu,
    Leaky,
}

/// Eq. 6: the negative slope of LeakyReLU.
pub const LEAKY_SLOPE: f32 = 0.01;

/// Elements below which the CPU kernels run on one thread.
const PAR_MIN: usize = 1 << 15;

impl Activation {
    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        if x.device().is_cpu() && x.dtype() == DType::F32 {
            return x.contiguous()?.apply_op1(ActivationOp(self));
        }
        match self {
            Self::Silu => x.silu(),
            Self::Relu => x.relu(),
            Self::Leaky => x.maximum(&(x * LEAKY_SLOPE as f64)?),
        }
    }

    /// `v[i] = f(v[i])`; SiLU vectorised ([`crate::nn::vmath`]).
    pub(crate) fn apply_in_place(self, v: &mut [f32]) {
        match self {
            Self::Silu => silu_in_place(v),
            Self::Relu => v.iter_mut().for_each(|z| *z = z.max(0.0)),
            Self::Leaky => v.iter_mut().for_each(|z| *z = z.max(LEAKY_SLOPE * *z)),
        }
    }

    /// `out[i] = g[i] f'(z[i])`; `out` holds z on entry.
    fn gradient_in_place(self, out: &mut [f32], g: &[f32]) {
        match self {
            Self::Silu => {
                // The sigmoid of a few hundred values at a time, on the stack.
                let mut buf = [0f32; 256];
                for (out, g) in out.chunks_mut(buf.len()).zip(g.chunks(buf.len())) {
                    let s = &mut buf[..out.len()];
                    s.copy_from_slice(out);
                    sigmoid_in_place(s);
                    out.iter_mut().zip(s.iter().zip(g)).for_each(|(z, (&s, &g))| *z = g * (s * (1.0 + *z * (1.0 - s))));
                }
            }
            Self::Relu => out.iter_mut().zip(g).for_each(|(z, &g)| *z = g * ((*z > 0.0) as u8 as f32)),
            Self::Leaky => out.iter_mut().zip(g).for_each(|(z, &g)| *z = if *z > 0.0 { g } else { g * LEAKY_SLOPE }),
        }
    }
}

/// A copy of `z` with `f(out_chunk, g_chunk)` applied to it in chunks, on all threads for large
/// inputs (the chunks do not depend on the thread count).
fn map_chunks(z: &[f32], g: &[f32], f: impl Fn(&mut [f32], &[f32]) + Sync) -> Vec<f32> {
    let mut out = z.to_vec();
    if z.len() < PAR_MIN {
        f(&mut out, g);
    } else {
        out.par_chunks_mut(PAR_MIN / 2).zip(g.par_chunks(PAR_MIN / 2)).for_each(|(o, g)| f(o, g));
    }
    out
}

struct ActivationOp(Activation);

impl CustomOp1 for ActivationOp {
    fn name(&self) -> &'static str {
        "activation"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let z = f32_slice("activation", s, l)?;
        let y = map_chunks(z, z, |y, _| self.0.apply_in_place(y));
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, z: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        let gz = with_f32("activation", z, |z| with_f32("activation", &grad, |g| map_chunks(z, g, |o, g| self.0.gradient_in_place(o, g))))??;
        Ok(Some(Tensor::from_vec(gz, z.shape(), z.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{randn, stream};
    use candle_core::{Device, Var};

    /// Each op agrees with candle's generic ops on values and gradients, also on large inputs.
    #[test]
    fn ops_match_the_generic_graph() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = stream(2, "test", 0);
        for n in [37, PAR_MIN + 5] {
            let x = Var::from_tensor(&(randn(&mut rng, n, &dev)? * 4.0)?)?;
            let r = randn(&mut rng, n, &dev)?;
            for act in [Activation::Silu, Activation::Relu, Activation::Leaky] {
                let fast = act.apply(x.as_tensor())?;
                let slow = match act {
                    Activation::Silu => x.as_tensor().silu()?,
                    Activation::Relu => x.as_tensor().relu()?,
                    Activation::Leaky => x.as_tensor().maximum(&(x.as_tensor() * 0.01)?)?,
                };
                let diff = |a: &Tensor, b: &Tensor| -> Result<f32> { (a - b)?.abs()?.max(0)?.to_scalar::<f32>() };
                assert!(diff(&fast, &slow)? < 1e-6, "{act:?} value");
                let gf = (&fast * &r)?.sum_all()?.backward()?;
                let gs = (&slow * &r)?.sum_all()?.backward()?;
                let (a, b) = (gf.get(x.as_tensor()).unwrap(), gs.get(x.as_tensor()).unwrap());
                assert!(diff(a, b)? < 1e-5, "{act:?} gradient");
            }
        }
        Ok(())
    }
}
