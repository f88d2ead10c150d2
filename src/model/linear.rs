//! A fully connected layer stored as `weight` [in, out] so that both the forward product and
//! the weight gradient are plain (non-transposed) matrix products. With candle's usual
//! [out, in] layout the forward multiplies by a transposed view and the backward pass
//! accumulates the weight gradient through that transpose with strided copies, which made a
//! training step over 2x slower here (measured with `marnet bench`).

use candle_core::{Module, Result, Tensor};
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
        x.matmul(&self.weight)?.broadcast_add(&self.bias)
    }
}
