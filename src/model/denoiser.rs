//! The CDR's denoiser `X_theta` (paper section 3.3.2): a four-layer MLP that predicts x_s^0
//! from `[x_s^t | emb(t) | x_v]`; the +MLP ablation's reconstructor is the same MLP on x_v alone.

use crate::nn::activation::Activation;
use crate::nn::linear::{Linear, Then, linear};
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

/// Four Linear layers with a nonlinearity between them: `X_theta` of the paper.
#[derive(Debug, Clone)]
pub struct DenoiserMlp {
    layers: Vec<Linear>,
    act: Activation,
}

impl DenoiserMlp {
    pub fn load(vb: VarBuilder, input: usize, hidden: usize, output: usize, act: Activation) -> Result<Self> {
        let dims = [input, hidden, hidden, hidden, output];
        let layers = (0..4).map(|i| linear(dims[i], dims[i + 1], vb.pp(format!("l{i}")))).collect::<Result<_>>()?;
        Ok(Self { layers, act })
    }

    /// [`Module::forward`] on `[x | tile(cond)]`: `cond` [b, ..] stands after each block of b rows
    /// of `x`, its part of the first layer computed once ([`Linear::forward_tiled`]).
    pub fn forward_tiled(&self, x: &Tensor, cond: &Tensor) -> Result<Tensor> {
        let mut h = self.layers[0].forward_tiled(x, cond)?;
        for l in &self.layers[1..] {
            h = l.forward(&self.act.apply(&h)?)?;
        }
        Ok(h)
    }

    /// The first layer cut by input blocks (see [`Linear::split_inputs`]).
    pub(super) fn split_first(&self, sizes: &[usize]) -> Result<Vec<Linear>> {
        self.layers[0].split_inputs(sizes)
    }

    /// The x_s^0 prediction for sampling, with no backward pass: `first` (the first layer's x_t
    /// part, its bias shifted by the emb(t) part) on `x_t`, plus `cond` (the x_v part), then the
    /// other layers; each activation happens inside the product before it.
    pub(super) fn sample_forward(&self, first: &Linear, shift: &Tensor, x_t: &Tensor, cond: &Tensor) -> Result<Tensor> {
        let (act, last) = (Then::Act(self.act), self.layers.len() - 1);
        let mut h = first.forward_frozen(x_t, Some(shift), Some(cond), act)?;
        for l in &self.layers[1..last] {
            h = l.forward_frozen(&h, None, None, act)?;
        }
        self.layers[last].forward_frozen(&h, None, None, Then::Nothing)
    }
}

impl Module for DenoiserMlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for (i, l) in self.layers.iter().enumerate() {
            x = l.forward(&x)?;
            if i + 1 < self.layers.len() {
                x = self.act.apply(&x)?;
            }
        }
        Ok(x)
    }
}
