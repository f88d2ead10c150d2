//! The denoiser's nonlinearity and EMA's LeakyReLU (eq. 6). On the CPU each is one op with a
//! hand-written backward pass (candle's SiLU backward is a chain of six elementwise ops).

use crate::nn::cpu::{f32_slice, with_f32};
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

    fn value(self, z: f32) -> f32 {
        match self {
            Self::Silu => z / (1.0 + (-z).exp()),
            Self::Relu => z.max(0.0),
            Self::Leaky => z.max(LEAKY_SLOPE * z),
        }
    }

    fn derivative(self, z: f32) -> f32 {
        match self {
            Self::Silu => {
                let s = 1.0 / (1.0 + (-z).exp());
                s * (1.0 + z * (1.0 - s))
            }
            Self::Relu => (z > 0.0) as u8 as f32,
            Self::Leaky => {
                if z > 0.0 {
                    1.0
                } else {
                    LEAKY_SLOPE
                }
            }
        }
    }
}

/// `out[i] = f(a[i], b[i])`, on all threads for large inputs.
fn zip_map(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    let mut out = vec![0f32; a.len()];
    let run = |(o, (a, b)): (&mut [f32], (&[f32], &[f32]))| {
        o.iter_mut().zip(a.iter().zip(b)).for_each(|(o, (&a, &b))| *o = f(a, b));
    };
    if a.len() < PAR_MIN {
        run((&mut out, (a, b)));
    } else {
        out.par_chunks_mut(PAR_MIN / 2).zip(a.par_chunks(PAR_MIN / 2).zip(b.par_chunks(PAR_MIN / 2))).for_each(run);
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
        let y = zip_map(z, z, |z, _| self.0.value(z));
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, z: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        let gz = with_f32("activation", z, |z| with_f32("activation", &grad, |g| zip_map(z, g, |z, g| g * self.0.derivative(z))))??;
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
