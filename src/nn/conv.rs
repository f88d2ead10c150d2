//! Inference-form 2-D convolutions of the frozen CNN encoders: a PyTorch `nn.Conv2d` weight
//! `[out, in, k, k]` with its bias, or with the `nn.BatchNorm2d` after it folded in at load
//! (`w * gamma / sqrt(var + eps)`, bias `beta - mean * gamma / sqrt(var + eps)`).

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

#[derive(Debug, Clone)]
pub struct Conv {
    weight: Tensor,
    /// `[1, out, 1, 1]`.
    bias: Tensor,
    stride: usize,
    padding: usize,
}

/// The per-channel `(scale, shift)` of an inference-form batch norm over `c` channels at `bn`
/// (`weight`, `bias`, `running_mean`, `running_var`): `y = x * scale + shift`.
pub fn batch_norm_affine(bn: &VarBuilder, c: usize, eps: f64) -> Result<(Tensor, Tensor)> {
    let (gamma, beta, mean, var) = (bn.get(c, "weight")?, bn.get(c, "bias")?, bn.get(c, "running_mean")?, bn.get(c, "running_var")?);
    let scale = (gamma / (var + eps)?.sqrt()?)?;
    let shift = (beta - (mean * &scale)?)?;
    Ok((scale, shift))
}

impl Conv {
    /// `weight` `[out, in, k, k]`, `bias` `[out]`.
    pub fn new(weight: Tensor, bias: &Tensor, stride: usize, padding: usize) -> Result<Self> {
        let bias = bias.reshape((1, (), 1, 1))?;
        Ok(Self { weight, bias, stride, padding })
    }

    /// A convolution with a bias (`conv.weight`, `conv.bias`), `(in, out, k)`.
    pub fn load(vb: &VarBuilder, (c_in, c_out, k): (usize, usize, usize), stride: usize, padding: usize) -> Result<Self> {
        Self::new(vb.get((c_out, c_in, k, k), "weight")?, &vb.get(c_out, "bias")?, stride, padding)
    }

    /// A bias-free convolution at `conv` followed by the batch norm at `bn`, folded into one.
    pub fn load_bn(conv: &VarBuilder, bn: &VarBuilder, (c_in, c_out, k): (usize, usize, usize), stride: usize, padding: usize, eps: f64) -> Result<Self> {
        let (scale, shift) = batch_norm_affine(bn, c_out, eps)?;
        let weight = conv.get((c_out, c_in, k, k), "weight")?.broadcast_mul(&scale.reshape((c_out, 1, 1, 1))?)?;
        Self::new(weight, &shift, stride, padding)
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias `[out]`.
    pub fn bias(&self) -> Result<Tensor> {
        self.bias.flatten_all()
    }

    /// `[N, in, H, W]` -> `[N, out, H', W']`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.conv2d(&self.weight, self.padding, self.stride, 1, 1)?.broadcast_add(&self.bias)
    }
}
