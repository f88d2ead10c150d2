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
//!   block's product followed by the update of its rows ([`weight_grad_rows`]), where the
//!   blocks give the whole product's bits.
//!   Train with [`crate::nn::backward`], not `Tensor::backward`.

use crate::nn::activation::Activation;
use crate::nn::cpu::{
    MatRef, f32_rows, f32_slice, matmul, matmul_padded, matmul_rows_into, matmul_then, rows_give_the_same_bits, transpose, with_f32, with_f32_rows,
};
use crate::nn::grads::{RowsSource, hand_over, note_use, update_by_rows};
use crate::nn::padded;
use crate::nn::vmath::gelu_in_place;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Module, Result, Shape, Tensor};
use candle_nn::{Init, VarBuilder};

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
            return x.contiguous()?.apply_op3(&self.weight, &self.bias, LinearOp { padded: self.padded.clone() });
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

/// Rows of a block of the weight gradient (`k` x `n`, from a batch of `rows`) computed and
/// applied at a time by an update that takes it by rows ([`update_by_rows`]): about 64 (a
/// 1024-wide block in a thread's cache), every block the same size but the last; `None` where
/// the blocks' products would not give [`matmul_padded`]'s bits ([`rows_give_the_same_bits`]).
fn rows_per_block(k: usize, n: usize, rows: usize) -> Option<usize> {
    if !rows_give_the_same_bits(k, n, rows) {
        return None;
    }
    let block = k.div_ceil(k.div_ceil(64));
    let last = k - block * (k.div_ceil(block) - 1);
    (last >= 2).then_some(block)
}

/// The weight gradient `x^T dy` of a layer with input `x` [rows, k] and output gradient `dy`
/// [rows, n], by blocks of rows `ld` floats apart, for a job on the pool: it holds both tensors.
fn weight_grad_rows(x: &Tensor, dy: &Tensor, ld: usize) -> RowsSource {
    let (x, dy) = (x.clone(), dy.clone());
    Box::new(move |update| {
        let ((rows, k), n) = (x.dims2()?, dy.dim(1)?);
        with_f32("linear", &dy, |g| {
            with_f32("linear", &x, |x| {
                // Read across their rows: padded as the whole product's operands are.
                let ((g, ldg), (x, ldx)) = (padded::rows_apart(g, n), padded::rows_apart(x, k));
                let (xt, dy) = (MatRef::transposed(&x, ldx), MatRef::strided_rows(&g, ldg));
                update(&|first, out| matmul_rows_into(first, out, ld, n, rows, xt, dy))
            })?
        })?
    })
}

/// `x W + b`, with its backward pass; `padded`: the variable behind a padded W, which gets W's gradient.
struct LinearOp {
    padded: Option<Tensor>,
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, ws: &CpuStorage, wl: &Layout, bs: &CpuStorage, bl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, (w, ldw), b) = (f32_slice("linear", xs, xl)?, f32_rows("linear", ws, wl)?, f32_slice("linear", bs, bl)?);
        let (rows, k) = xl.shape().dims2()?;
        let (k2, n) = wl.shape().dims2()?;
        if k != k2 || b.len() != n {
            candle_core::bail!("linear: input {:?}, weight {:?}, bias {:?}", xl.shape(), wl.shape(), bl.shape());
        }
        let y = matmul_then(rows, n, k, MatRef::rows(x, k), MatRef::strided_rows(w, ldw), |_, c, y| y.iter_mut().zip(&b[c..]).for_each(|(y, b)| *y += b));
        Ok((CpuStorage::F32(y), Shape::from((rows, n))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, b: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (rows, n) = grad.dims2()?;
        let k = x.dim(1)?;
        // The weight's gradient in the shape of the variable it goes to: rows padded like it.
        let (w_param, ld) = match &self.padded {
            Some(p) => (p, p.dim(1)?),
            None => (w, n),
        };
        let grad = grad.contiguous()?;
        // Frozen weights (not variables) get no gradient.
        let wants_w = self.padded.is_some() || w.track_op();
        let (gw, gb, gx) = with_f32("linear", &grad, |g| -> Result<_> {
            // Both products read dy across its rows, the weight gradient x too: rows padded
            // ([`padded::rows_apart`]) when they would lie a multiple of 4 KiB apart.
            let (g_rows, ldg) = padded::rows_apart(g, n);
            let gb = wants_w.then(|| {
                let mut sums = vec![0f32; n];
                for row in g.chunks_exact(n) {
                    sums.iter_mut().zip(row).for_each(|(s, g)| *s += g);
                }
                sums
            });
            // dx^T [k, rows] = W dy^T (all operands row-major or plain views), transposed back;
            // before the weight's update below, which may change W.
            let gx = match x.track_op() {
                true => Some(with_f32_rows("linear", w, |w, ldw| {
                    transpose(&matmul(k, rows, n, MatRef::strided_rows(w, ldw), MatRef::transposed(&g_rows, ldg)), k, rows)
                })?),
                false => None,
            };
            // dW = x^T dy: by rows as its update takes them, beside the rest of the backward
            // pass, when it allows that; otherwise whole, handed over below.
            let by_rows = wants_w && rows_per_block(k, n, rows).is_some_and(|block| update_by_rows(w_param, block, weight_grad_rows(x, &grad, ld)));
            let gw = match wants_w && !by_rows {
                false => None,
                true => Some(with_f32("linear", x, |x| {
                    let (x, ldx) = padded::rows_apart(x, k);
                    matmul_padded(k, n, rows, MatRef::transposed(&x, ldx), MatRef::strided_rows(&g_rows, ldg), ld, |_, _, _| {})
                })?),
            };
            Ok((gw, gb, gx))
        })??;
        let gx = gx.map(|gx| Tensor::from_vec(gx, (rows, k), x.device())).transpose()?;
        if let Some(gw) = gw {
            hand_over(w_param, Tensor::from_vec(gw, (k, ld), w.device())?)?;
        }
        if let Some(gb) = gb {
            hand_over(b, Tensor::from_vec(gb, n, b.device())?)?;
        }
        Ok((gx, None, None))
    }
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
}
