//! A fully connected layer, `y = x W + b`, stored as `weight` [in, out].
//!
//! On the CPU it runs as one custom op with a hand-written backward pass (measured with
//! `marnet bench`; see BENCHMARKS.md), because candle's generic graph was slow here:
//! - with candle's usual [out, in] layout the forward multiplies by a transposed view and the
//!   weight gradient flows back through that transpose with strided copies;
//! - the bias gradient is a column sum, slow in candle; here it is a product with a ones row;
//! - candle computes the input gradient of every product, even for data inputs (the first
//!   layer's 1664-wide input); here it is skipped when the input tracks no gradient.

use crate::cpu::f32_slice;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Module, Result, Shape, Tensor};
use candle_nn::{Init, VarBuilder};

#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Tensor,
}

/// `y = x W + b` with W [in, out]; initialised as PyTorch's `nn.Linear`: U(-1/sqrt(in), 1/sqrt(in)).
pub fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let bound = 1.0 / (in_dim as f64).sqrt();
    let init = Init::Uniform { lo: -bound, up: bound };
    let weight = vb.get_with_hints((in_dim, out_dim), "weight", init)?;
    let bias = vb.get_with_hints(out_dim, "bias", init)?;
    Ok(Linear { weight, bias })
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.device().is_cpu() && x.dtype() == DType::F32 && x.rank() == 2 {
            return x.contiguous()?.apply_op3(&self.weight, &self.bias, LinearOp);
        }
        x.matmul(&self.weight)?.broadcast_add(&self.bias)
    }
}

struct LinearOp;

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, ws: &CpuStorage, wl: &Layout, bs: &CpuStorage, bl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, w, b) = (f32_slice("linear", xs, xl)?, f32_slice("linear", ws, wl)?, f32_slice("linear", bs, bl)?);
        let (rows, k) = xl.shape().dims2()?;
        let (k2, n) = wl.shape().dims2()?;
        if k != k2 || b.len() != n {
            candle_core::bail!("linear: input {:?}, weight {:?}, bias {:?}", xl.shape(), wl.shape(), bl.shape());
        }
        let mut y = vec![0f32; rows * n];
        // SAFETY: the pointers cover rows x k, k x n and rows x n row-major f32 buffers.
        unsafe {
            gemm::gemm(
                rows, n, k,
                y.as_mut_ptr(), 1, n as isize, false,
                x.as_ptr(), 1, k as isize,
                w.as_ptr(), 1, n as isize,
                0.0, 1.0, false, false, false,
                gemm::Parallelism::Rayon(candle_core::utils::get_num_threads()),
            );
        }
        for row in y.chunks_exact_mut(n) {
            row.iter_mut().zip(b).for_each(|(y, b)| *y += b);
        }
        Ok((CpuStorage::F32(y), Shape::from((rows, n))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _b: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // dL/dx = g W^T, computed as (W g^T)^T: a product without a transposed right operand.
        let gx = if x.track_op() { Some(w.matmul(&grad.t()?)?.t()?.contiguous()?) } else { None };
        let gw = x.t()?.matmul(grad)?;
        let ones = Tensor::ones((1, grad.dim(0)?), grad.dtype(), grad.device())?;
        let gb = ones.matmul(grad)?.squeeze(0)?;
        Ok((gx, Some(gw), Some(gb)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{randn, stream};
    use candle_core::{Device, Var};

    fn close(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
    }

    /// The custom op and candle's generic graph agree on the output and on every gradient.
    #[test]
    fn custom_op_matches_the_generic_graph() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = stream(9, "test", 0);
        let x = Var::from_tensor(&randn(&mut rng, (7, 5), &dev)?)?;
        let w = Var::from_tensor(&randn(&mut rng, (5, 3), &dev)?)?;
        let b = Var::from_tensor(&randn(&mut rng, 3, &dev)?)?;
        let r = randn(&mut rng, (7, 3), &dev)?;
        let layer = Linear { weight: w.as_tensor().clone(), bias: b.as_tensor().clone() };
        let fast = layer.forward(x.as_tensor())?;
        let slow = x.as_tensor().matmul(w.as_tensor())?.broadcast_add(b.as_tensor())?;
        assert!(close(&fast, &slow)? < 1e-5);
        let gf = (&fast * &r)?.sum_all()?.backward()?;
        let gs = (&slow * &r)?.sum_all()?.backward()?;
        for v in [&x, &w, &b] {
            let (a, c) = (gf.get(v.as_tensor()).unwrap(), gs.get(v.as_tensor()).unwrap());
            assert!(close(a, c)? < 1e-5, "gradient differs");
        }
        // A data input (no gradient tracked) gets no gradient computed.
        let data = randn(&mut rng, (7, 5), &dev)?;
        let g = (layer.forward(&data)? * &r)?.sum_all()?.backward()?;
        assert!(g.get(&data).is_none() && g.get(w.as_tensor()).is_some());
        Ok(())
    }
}
