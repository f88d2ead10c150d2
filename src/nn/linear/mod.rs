//! A fully connected layer, `y = x W + b`, stored as `weight` [in, out].
//!
//! On the CPU it runs as one custom op with a hand-written backward pass (measured with
//! `marnet bench`; see BENCHMARKS.md), because candle's generic graph was slow here:
//! - with candle's usual [out, in] layout the forward multiplies by a transposed view and the
//!   weight gradient flows back through that transpose with strided copies;
//! - products run as single-threaded blocks, one or two per thread ([`crate::nn::cpu::matmul`]); the input
//!   gradient is computed transposed, `dx^T = W dy^T`, which the matmul crate runs ~3x faster
//!   than `dy W^T` here;
//! - the input gradient is skipped when the input tracks no gradient (data inputs);
//! - the weight and bias gradients are handed to [`crate::nn::grads`] directly instead of through
//!   candle's gradient store, which adds each one into a fresh zero tensor (a memset and a full
//!   pass per weight and step); a weight with an armed update gets it block by block, each
//!   block's product followed by the update of its rows (`op.rs`), where the blocks give the
//!   whole product's bits;
//! - an input block that every block of b rows shares ([`Linear::forward_tiled`]: the CDR's x_v in
//!   its training pass of 2b rows) is multiplied once, forward and for the weight gradient.
//!
//! Train with [`crate::nn::backward`], not `Tensor::backward`.

mod op;

use crate::nn::activation::Activation;
use crate::nn::cpu::{MatRef, matmul_then, with_f32, with_f32_rows};
use crate::nn::grads::note_use;
use crate::nn::padded;
use crate::nn::vmath::gelu_in_place;
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use op::LinearOp;

#[derive(Debug, Clone)]
pub struct Linear {
    /// [in, out]; a view of `padded` when there is one.
    weight: Tensor,
    bias: Tensor,
    /// The variable holding the weight in padded rows ([`crate::nn::padded`]).
    padded: Option<Tensor>,
}

/// `y = x W + b` with W [in, out]; initialised as PyTorch's `nn.Linear`: U(-1/sqrt(in), 1/sqrt(in)).
pub fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let bound = 1.0 / (in_dim as f64).sqrt();
    let init = Init::Uniform { lo: -bound, up: bound };
    let (weight, padded) = padded::linear_weight(|| vb.get_with_hints((in_dim, out_dim), "weight", init))?;
    let bias = vb.get_with_hints(out_dim, "bias", init)?;
    Ok(Linear { weight, bias, padded })
}

impl Linear {
    /// A layer from its weight [in, out] and bias [out].
    pub fn new(weight: Tensor, bias: Tensor) -> Self {
        Self { weight, bias, padded: None }
    }

    /// The layer cut by input blocks of the given sizes: `x W + b` equals the sum of the parts
    /// applied to the matching column blocks of `x`. The first part keeps the bias.
    pub fn split_inputs(&self, sizes: &[usize]) -> Result<Vec<Linear>> {
        let mut start = 0;
        let mut parts = Vec::with_capacity(sizes.len());
        for (i, &n) in sizes.iter().enumerate() {
            // A padded weight's rows stay apart as they are (a view); others as before.
            let part = self.weight.narrow(0, start, n)?;
            let weight = if self.padded.is_some() { part } else { part.contiguous()? }.detach();
            let bias = if i == 0 { self.bias.detach() } else { self.bias.zeros_like()? };
            parts.push(Linear::new(weight, bias));
            start += n;
        }
        if start != self.weight.dim(0)? {
            candle_core::bail!("split_inputs: sizes {sizes:?} do not add up to {} inputs", self.weight.dim(0)?);
        }
        Ok(parts)
    }

    /// `[x | tile(tail)] W + b` for `x` [r b, in - kt] and `tail` [b, kt]: the tail's rows stand
    /// after each block of b rows of `x`; on the CPU their product with W's last kt rows is
    /// computed once (the weight gradient's part too, from the blocks' summed output gradients),
    /// and the tail, data there, gets no gradient. One block (r = 1) is the plain layer on the
    /// rows joined.
    pub fn forward_tiled(&self, x: &Tensor, tail: &Tensor) -> Result<Tensor> {
        let ((rows, kx), (b, kt)) = (x.dims2()?, tail.dims2()?);
        if b == 0 || !rows.is_multiple_of(b) || kx == 0 || kt == 0 {
            candle_core::bail!("linear: {:?} cannot be tiled over the rows of {:?} (b rows that divide x's, both with columns)", tail.shape(), x.shape());
        }
        if rows > b && x.device().is_cpu() && x.dtype() == DType::F32 {
            if tail.track_op() {
                candle_core::bail!("linear: a tiled input takes no gradient; detach it");
            }
            note_use(self.padded.as_ref().unwrap_or(&self.weight));
            note_use(&self.bias);
            let op = LinearOp { padded: self.padded.clone(), tail: Some(tail.contiguous()?) };
            return x.contiguous()?.apply_op3(&self.weight, &self.bias, op);
        }
        self.forward(&Tensor::cat(&[x, &tail.repeat((rows / b, 1))?], 1)?)
    }

    /// `gelu(x W + b)`, GELU in its erf form (candle's `gelu_erf`), for frozen layers (no backward
    /// pass). On the CPU each thread applies it to its block of the product, with a vectorised
    /// erf ([`crate::nn::vmath`], within 3e-7 of candle's).
    pub fn forward_gelu(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_frozen(x, None, None, Then::Gelu)
    }

    /// `then(x W + (b + shift) + add)` with no backward pass (sampling, frozen encoders): `shift`
    /// [out] moves the bias, `add` has the output's shape. On the CPU all of it happens inside
    /// each thread's block of the product, with no pass of its own.
    pub fn forward_frozen(&self, x: &Tensor, shift: Option<&Tensor>, add: Option<&Tensor>, then: Then) -> Result<Tensor> {
        let bias = match shift {
            Some(s) => (&self.bias + s.flatten_all()?)?,
            None => self.bias.clone(),
        };
        if x.rank() > 2 {
            let mut out = x.dims().to_vec();
            *out.last_mut().unwrap() = self.weight.dim(1)?;
            if let Some(a) = add.filter(|a| a.dims() != out) {
                candle_core::bail!("linear: `add` has shape {:?}, the output {out:?}", a.shape());
            }
            let add = add.map(|a| a.flatten_to(a.rank() - 2)).transpose()?;
            let shifted = Linear { bias, ..self.clone() };
            return on_rows(x, |x| shifted.forward_frozen(x, None, add.as_ref(), then));
        }
        if !(x.device().is_cpu() && x.dtype() == DType::F32) {
            let y = x.matmul(&self.weight)?.broadcast_add(&bias)?;
            let y = match add {
                Some(a) => (y + a)?,
                None => y,
            };
            return then.apply(&y.detach());
        }
        let (rows, k) = x.dims2()?;
        let n = self.weight.dim(1)?;
        if self.weight.dims() != [k, n] || bias.dims() != [n] {
            candle_core::bail!("linear: input {:?}, weight {:?}, bias {:?}", x.shape(), self.weight.shape(), bias.shape());
        }
        let (x, add) = (x.contiguous()?, add.map(|a| a.contiguous()).transpose()?);
        if let Some(a) = add.as_ref().filter(|a| a.dims() != [rows, n]) {
            candle_core::bail!("linear: `add` has shape {:?}, the output [{rows}, {n}]", a.shape());
        }
        let y = with_f32("linear", &x, |x| {
            with_f32_rows("linear", &self.weight, |w, ldw| {
                with_f32("linear", &bias, |b| {
                    let product = |add: Option<&[f32]>| {
                        matmul_then(rows, n, k, MatRef::rows(x, k), MatRef::strided_rows(w, ldw), |r, c, y| {
                            y.iter_mut().zip(&b[c..]).for_each(|(y, b)| *y += b);
                            if let Some(a) = add {
                                y.iter_mut().zip(&a[r * n + c..]).for_each(|(y, a)| *y += a);
                            }
                            then.apply_in_place(y);
                        })
                    };
                    match &add {
                        Some(a) => with_f32("linear", a, |a| product(Some(a))),
                        None => Ok(product(None)),
                    }
                })
            })
        })????;
        Tensor::from_vec(y, (rows, n), x.device())
    }
}

/// What [`Linear::forward_frozen`] applies to its output.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Then {
    Nothing,
    /// GELU, erf form.
    Gelu,
    Act(Activation),
}

impl Then {
    fn apply_in_place(self, y: &mut [f32]) {
        match self {
            Then::Nothing => {}
            Then::Gelu => gelu_in_place(y),
            Then::Act(a) => a.apply_in_place(y),
        }
    }

    /// The same on any device, by candle's ops.
    fn apply(self, y: &Tensor) -> Result<Tensor> {
        match self {
            Then::Nothing => Ok(y.clone()),
            Then::Gelu => y.gelu_erf(),
            Then::Act(a) => a.apply(y),
        }
    }
}

impl Module for Linear {
    /// `x` [..., in] -> [..., out]; leading dimensions are flattened into one product.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.rank() > 2 {
            return on_rows(x, |x| self.forward(x));
        }
        if x.device().is_cpu() && x.dtype() == DType::F32 && x.rank() == 2 {
            note_use(self.padded.as_ref().unwrap_or(&self.weight));
            note_use(&self.bias);
            return x.contiguous()?.apply_op3(&self.weight, &self.bias, LinearOp { padded: self.padded.clone(), tail: None });
        }
        if self.padded.is_some() {
            // Its view is detached: candle's graph would give the weight no gradient.
            candle_core::bail!("linear: a padded weight runs on f32 CPU inputs only, got {:?} on {:?}", x.dtype(), x.device());
        }
        x.matmul(&self.weight)?.broadcast_add(&self.bias)
    }
}

/// `f` on `x` [..., in] flattened to [rows, in] (one product for all leading dimensions), its
/// output [rows, out] shaped back to [..., out].
fn on_rows(x: &Tensor, f: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    let mut dims = x.dims().to_vec();
    let y = f(&x.flatten_to(dims.len() - 2)?)?;
    *dims.last_mut().unwrap() = y.dim(1)?;
    y.reshape(dims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::backward;
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
        // Small, and large enough for the products to split across threads both ways.
        for (rows, k, n) in [(7, 5, 3), (70, 40, 130), (64, 150, 33)] {
            let x = Var::from_tensor(&randn(&mut rng, (rows, k), &dev)?)?;
            let w = Var::from_tensor(&randn(&mut rng, (k, n), &dev)?)?;
            let b = Var::from_tensor(&randn(&mut rng, n, &dev)?)?;
            let r = randn(&mut rng, (rows, n), &dev)?;
            let layer = Linear::new(w.as_tensor().clone(), b.as_tensor().clone());
            let params = [("w".to_string(), w.clone()), ("b".to_string(), b.clone())];
            let fast = layer.forward(x.as_tensor())?;
            let slow = x.as_tensor().matmul(w.as_tensor())?.broadcast_add(b.as_tensor())?;
            assert!(close(&fast, &slow)? < 1e-4);
            // GELU applied in the product's blocks is candle's GELU of the same values.
            assert!(close(&layer.forward_gelu(x.as_tensor())?, &fast.gelu_erf()?)? < 2e-6);
            // So are a shifted bias, an added matrix and SiLU (sampling's first layer).
            let (shift, add) = (randn(&mut rng, n, &dev)?, randn(&mut rng, (rows, n), &dev)?);
            let frozen = layer.forward_frozen(x.as_tensor(), Some(&shift), Some(&add), Then::Act(Activation::Silu))?;
            assert!(close(&frozen, &(slow.broadcast_add(&shift)? + &add)?.silu()?)? < 1e-4);
            assert!(!frozen.track_op(), "forward_frozen recorded an autograd op");
            // Shapes that do not fit are errors, not panics or silent truncation.
            assert!(layer.forward_frozen(&randn(&mut rng, (rows, k + 1), &dev)?, None, None, Then::Nothing).is_err());
            assert!(layer.forward_frozen(x.as_tensor(), None, Some(&shift), Then::Nothing).is_err());
            let batched = x.as_tensor().reshape((1, rows, k))?;
            assert!(layer.forward_frozen(&batched, None, Some(&add), Then::Nothing).is_err());
            let frozen3 = layer.forward_frozen(&batched, Some(&shift), Some(&add.reshape((1, rows, n))?), Then::Act(Activation::Silu))?;
            assert_eq!(close(&frozen3.squeeze(0)?, &frozen)?, 0.0);
            // Leading dimensions are flattened into the same product.
            let batched = layer.forward(&x.as_tensor().reshape((1, rows, k))?)?;
            assert_eq!(batched.dims(), &[1, rows, n]);
            assert!(close(&batched.squeeze(0)?, &fast)? == 0.0);
            let gf = backward(&(&fast * &r)?.sum_all()?, &params)?;
            let gs = (&slow * &r)?.sum_all()?.backward()?;
            for v in [&x, &w, &b] {
                let (a, c) = (gf.get(v.as_tensor()).unwrap(), gs.get(v.as_tensor()).unwrap());
                assert!(close(a, c)? < 1e-4, "gradient differs");
            }
            // A data input (no gradient tracked) gets no gradient computed.
            let data = randn(&mut rng, (rows, k), &dev)?;
            let g = backward(&(layer.forward(&data)? * &r)?.sum_all()?, &params)?;
            assert!(g.get(&data).is_none() && g.get(w.as_tensor()).is_some());
            // A layer used twice in one graph gets the sum of both uses' gradients.
            let twice = (layer.forward(&data)? + layer.forward(&data)?)?;
            let g2 = backward(&(twice * &r)?.sum_all()?, &params)?;
            let doubled = (g.get(w.as_tensor()).unwrap() * 2.0)?;
            assert!(close(g2.get(w.as_tensor()).unwrap(), &doubled)? < 1e-4);
        }
        Ok(())
    }

    /// A tiled tail gives the output and the gradients of the layer on the rows joined with the
    /// tail repeated; one block is that plain layer; tails that do not fit are refused.
    #[test]
    fn a_tiled_tail_is_the_layer_on_the_rows_joined() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = stream(10, "test", 0);
        for (b, blocks, kx, kt, n) in [(5, 3, 4, 3, 6), (64, 2, 200, 150, 130)] {
            let w = Var::from_tensor(&randn(&mut rng, (kx + kt, n), &dev)?)?;
            let bias = Var::from_tensor(&randn(&mut rng, n, &dev)?)?;
            let x = Var::from_tensor(&randn(&mut rng, (b * blocks, kx), &dev)?)?;
            let (tail, r) = (randn(&mut rng, (b, kt), &dev)?, randn(&mut rng, (b * blocks, n), &dev)?);
            let layer = Linear::new(w.as_tensor().clone(), bias.as_tensor().clone());
            let params = [("w".to_string(), w.clone()), ("b".to_string(), bias.clone())];
            let joined = Tensor::cat(&[x.as_tensor(), &tail.repeat((blocks, 1))?], 1)?;
            let (tiled, plain) = (layer.forward_tiled(x.as_tensor(), &tail)?, joined.matmul(w.as_tensor())?.broadcast_add(bias.as_tensor())?);
            assert!(close(&tiled, &plain)? < 1e-4);
            let gt = backward(&(&tiled * &r)?.sum_all()?, &params)?;
            let gp = (&plain * &r)?.sum_all()?.backward()?;
            for v in [&x, &w, &bias] {
                assert!(close(gt.get(v.as_tensor()).unwrap(), gp.get(v.as_tensor()).unwrap())? < 1e-3, "gradient differs");
            }
            let one = layer.forward_tiled(&x.as_tensor().narrow(0, 0, b)?, &tail)?;
            assert_eq!(close(&one, &layer.forward(&joined.narrow(0, 0, b)?)?)?, 0.0);
            assert!(layer.forward_tiled(&x.as_tensor().narrow(0, 0, b + 1)?, &tail).is_err());
            assert!(layer.forward_tiled(x.as_tensor(), &randn(&mut rng, (b, kt + 1), &dev)?).is_err());
            assert!(layer.forward_tiled(x.as_tensor(), x.as_tensor()).is_err(), "a tail that tracks a gradient");
            assert!(layer.forward_tiled(x.as_tensor(), &Tensor::zeros((b, 0), DType::F32, &dev)?).is_err(), "an empty tail");
        }
        Ok(())
    }
}
