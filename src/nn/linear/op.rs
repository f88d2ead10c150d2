//! The linear layer's CPU op, `x W + b`, and its backward pass (see the parent module's comment).
//! With a `tail` [b, kt] it is `[x | tile(tail)] W + b`: the tail's rows repeated over `x`'s
//! blocks of b rows, its product with W's last kt rows computed once.

use crate::nn::cpu::{
    MatRef, f32_rows, f32_slice, matmul, matmul_padded, matmul_rows_into, matmul_then, rhs_rows_for_kernel, rows_give_the_same_bits, transpose, with_f32,
    with_f32_rows_all,
};
use crate::nn::grads::{RowsSource, hand_over, update_by_rows};
use crate::nn::padded;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

/// `x W + b`, with its backward pass; `padded`: the variable behind a padded W, which gets W's
/// gradient; `tail`: an input [b, kt] (no gradient) for W's last kt rows, the same for each
/// block of b rows of `x`.
pub(super) struct LinearOp {
    pub padded: Option<Tensor>,
    pub tail: Option<Tensor>,
}

/// Rows `start..` of a weight gradient: `x^T dy`, summed over the rows of `x` [rows, k] and `dy`
/// [rows, n]. The products read both across their rows, apart when they would lie a multiple of
/// 4 KiB apart: `dy` is held so ([`padded::rows_apart_tensor`], shared with the input gradient
/// where the matmul crate runs it);
/// contiguous `x` is padded by whichever reads it (the job by rows, on the pool, or
/// [`part_product`]), off the input gradient's path.
#[derive(Clone)]
struct GradPart {
    start: usize,
    x: Tensor,
    dy: Tensor,
}

/// Rows of a block of the weight gradient (`k` x `n`, from `parts`) computed and applied at a
/// time by an update that takes it by rows ([`update_by_rows`]): about 64 (a 1024-wide block in a
/// thread's cache), every block the same size but the last; `None` where the blocks' products
/// would not give [`matmul_padded`]'s bits: a part that [`rows_give_the_same_bits`] refuses, or a
/// piece of 1 row (each part and the last block need 2 rows or more, and a part's start needs 2
/// rows or more on each side within the block it cuts).
fn rows_per_block(k: usize, n: usize, parts: &[GradPart]) -> Result<Option<usize>> {
    for (i, p) in parts.iter().enumerate() {
        let (rows, kp) = p.x.dims2()?;
        let end = parts.get(i + 1).map_or(k, |next| next.start);
        if kp < 2 || kp != end.saturating_sub(p.start) || !rows_give_the_same_bits(kp, n, rows) {
            return Ok(None);
        }
    }
    let block = k.div_ceil(k.div_ceil(64));
    let last = k - block * (k.div_ceil(block) - 1);
    let cuts_fit = parts.iter().map(|p| p.start % block).all(|cut| cut == 0 || (cut >= 2 && cut + 2 <= block));
    Ok((last >= 2 && cuts_fit).then_some(block))
}

/// The weight gradient of `parts` by blocks of rows `ld` floats apart, for a job on the pool: it
/// holds their tensors.
fn weight_grad_rows(parts: Vec<GradPart>, ld: usize) -> RowsSource {
    Box::new(move |update| {
        let n = parts[0].dy.dim(1)?;
        let shapes = parts.iter().map(|p| p.x.dims2()).collect::<Result<Vec<_>>>()?;
        let tensors: Vec<&Tensor> = parts.iter().flat_map(|p| [&p.x, &p.dy]).collect();
        with_f32_rows_all("linear", &tensors, |values| {
            let operands: Vec<_> = parts
                .iter()
                .zip(&shapes)
                .zip(values.chunks_exact(2))
                .map(|((p, &(rows, kp)), v)| (p.start, p.start + kp, rows, padded::rows_apart(v[0].0, kp), v[1]))
                .collect();
            update(&|first, out| {
                let last = first + out.len() / ld;
                for &(start, end, rows, (ref x, ldx), (dy, ldg)) in &operands {
                    let (from, to) = (first.max(start), last.min(end));
                    if from < to {
                        let (xt, dy) = (MatRef::transposed(x, ldx), MatRef::strided_rows(dy, ldg));
                        matmul_rows_into(from - start, &mut out[(from - first) * ld..(to - first) * ld], ld, end - start, n, rows, xt, dy);
                    }
                }
            })
        })?
    })
}

/// A part's rows of the weight gradient, whole, each row `ld` floats apart.
fn part_product(p: &GradPart, ld: usize) -> Result<Vec<f32>> {
    let ((rows, kp), n) = (p.x.dims2()?, p.dy.dim(1)?);
    with_f32_rows_all("linear", &[&p.x, &p.dy], |v| {
        let ((x, ldx), (g, ldg)) = (padded::rows_apart(v[0].0, kp), v[1]);
        matmul_padded(kp, n, rows, MatRef::transposed(&x, ldx), MatRef::strided_rows(g, ldg), ld, |_, _, _| {})
    })
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, ws: &CpuStorage, wl: &Layout, bs: &CpuStorage, bl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, (w, ldw), b) = (f32_slice("linear", xs, xl)?, f32_rows("linear", ws, wl)?, f32_slice("linear", bs, bl)?);
        let (rows, kx) = xl.shape().dims2()?;
        let (k, n) = wl.shape().dims2()?;
        let tail = self.tail.as_ref().map(|t| t.dims2()).transpose()?;
        let (tb, kt) = tail.unwrap_or((1, 0));
        if kx + kt != k || b.len() != n || (tail.is_some() && (tb == 0 || !rows.is_multiple_of(tb))) {
            let tail = self.tail.as_ref().map_or(String::new(), |t| format!(", tiled {:?}", t.shape()));
            candle_core::bail!("linear: input {:?}{tail}, weight {:?}, bias {:?}", xl.shape(), wl.shape(), bl.shape());
        }
        // The tail's product with W's last rows, once for every block of `x`.
        let t = match &self.tail {
            Some(t) => Some(with_f32("linear", t, |t| matmul(tb, n, kt, MatRef::rows(t, kt), MatRef::strided_rows(&w[kx * ldw..], ldw)))?),
            None => None,
        };
        let y = matmul_then(rows, n, kx, MatRef::rows(x, kx), MatRef::strided_rows(w, ldw), |r, c, y| {
            y.iter_mut().zip(&b[c..]).for_each(|(y, b)| *y += b);
            if let Some(t) = &t {
                y.iter_mut().zip(&t[(r % tb) * n + c..]).for_each(|(y, t)| *y += t);
            }
        });
        Ok((CpuStorage::F32(y), Shape::from((rows, n))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, b: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (rows, n) = grad.dims2()?;
        let (kx, k) = (x.dim(1)?, w.dim(0)?);
        // The weight's gradient in the shape of the variable it goes to: rows padded like it.
        let (w_param, ld) = match &self.padded {
            Some(p) => (p, p.dim(1)?),
            None => (w, n),
        };
        let grad = grad.contiguous()?;
        // Frozen weights (not variables) get no gradient.
        let wants_w = self.padded.is_some() || w.track_op();
        if !wants_w && !x.track_op() {
            return Ok((None, None, None));
        }
        // dy as the products read it, across its rows (padded once for all of them).
        let dy = padded::rows_apart_tensor(&grad)?;
        // dx^T [kx, rows] = W dy^T, transposed back; before the weight's update below, which may
        // change W. marnet's kernel reads dy^T by rows (a copy, [n, rows]) and W in order, once
        // per 64 rows of the batch; the matmul crate reads dy^T as a view of dy.
        let gx = match x.track_op() {
            true => {
                let dy_t = with_f32("linear", &grad, |g| rhs_rows_for_kernel(kx, rows, n, g))?;
                Some(with_f32_rows_all("linear", &[w, &dy], |v| {
                    let ((w, ldw), (g, ldg)) = (v[0], v[1]);
                    let dy_t = dy_t.as_deref().map_or(MatRef::transposed(g, ldg), |t| MatRef::rows(t, rows));
                    transpose(&matmul(kx, rows, n, MatRef::strided_rows(w, ldw), dy_t), kx, rows)
                })?)
            }
            false => None,
        };
        let gx = gx.map(|gx| Tensor::from_vec(gx, (rows, kx), x.device())).transpose()?;
        if !wants_w {
            return Ok((gx, None, None));
        }
        let gb = with_f32("linear", &grad, |g| {
            let mut sums = vec![0f32; n];
            for row in g.chunks_exact(n) {
                sums.iter_mut().zip(row).for_each(|(s, g)| *s += g);
            }
            sums
        })?;
        let mut parts = vec![GradPart { start: 0, x: x.contiguous()?, dy }];
        if let Some(tail) = &self.tail {
            // The tail's rows stood in every block: the sum of the blocks' output gradients.
            let tb = tail.dim(0)?;
            let sum = with_f32("linear", &grad, |g| {
                let mut sum = g[..tb * n].to_vec();
                for block in g.chunks_exact(tb * n).skip(1) {
                    sum.iter_mut().zip(block).for_each(|(s, g)| *s += g);
                }
                sum
            })?;
            let dy = padded::rows_apart_tensor(&Tensor::from_vec(sum, (tb, n), grad.device())?)?;
            parts.push(GradPart { start: kx, x: tail.contiguous()?, dy });
        }
        // dW = x^T dy: by rows as its update takes them, beside the rest of the backward pass,
        // when it allows that; otherwise whole, handed over below.
        let by_rows = rows_per_block(k, n, &parts)?.is_some_and(|block| update_by_rows(w_param, block, weight_grad_rows(parts.clone(), ld)));
        if !by_rows {
            let mut gw = parts.iter().map(|p| part_product(p, ld)).collect::<Result<Vec<_>>>()?;
            let gw = if gw.len() == 1 { gw.pop().expect("one part") } else { gw.concat() };
            hand_over(w_param, Tensor::from_vec(gw, (k, ld), w.device())?)?;
        }
        hand_over(b, Tensor::from_vec(gb, n, b.device())?)?;
        Ok((gx, None, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// Blocks by rows only where no piece of a block, as the parts' starts cut it, has 1 row.
    #[test]
    fn blocks_by_rows_leave_no_piece_of_one_row() -> Result<()> {
        let zeros = |shape: (usize, usize)| Tensor::zeros(shape, DType::F32, &Device::Cpu);
        let part = |start: usize, k: usize, rows: usize| Ok::<_, candle_core::Error>(GradPart { start, x: zeros((rows, k))?, dy: zeros((rows, 200))? });
        let block = |cut: usize| -> Result<Option<usize>> { rows_per_block(130, 200, &[part(0, cut, 64)?, part(cut, 130 - cut, 32)?]) };
        // 130 rows: blocks of 44, 44 and 42.
        assert_eq!(rows_per_block(130, 200, &[part(0, 130, 64)?])?, Some(44));
        assert_eq!((block(100)?, block(88)?, block(128)?), (Some(44), Some(44), Some(44)));
        // 1 row before the cut (89 = 88 + 1), 1 row after it (87 = 44 + 43), a part of 1 row.
        assert_eq!((block(89)?, block(87)?, block(129)?, block(1)?), (None, None, None, None));
        Ok(())
    }
}
