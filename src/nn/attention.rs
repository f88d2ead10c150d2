//! Multi-head self-attention of the frozen transformer encoders (ViT, Swin), from the fused
//! query/key/value product: `softmax(q k^T / sqrt(d) + B) v` for every sequence and head.
//!
//! On the CPU it runs as one pass per (sequence, head) on one thread each: the scores of a head
//! ([T, T], 155 KB for ViT-B/16) stay in cache from the product through the softmax to the
//! product with the values, query, key and value are read in place from the fused product, and
//! the context is written straight into its [B, T, heads x d] rows. candle's generic graph makes
//! contiguous copies of q, k and v, runs 2 x B x heads small products each split across the
//! threads, and passes over the [B, heads, T, T] scores three more times (scale, softmax).
//! Every head is computed by one thread in a fixed order: results do not depend on the threads.

use crate::nn::cpu::{SendPtr, f32_slice, gemm_into};
use crate::nn::vmath::exp_from_max;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, IndexOp, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// `qkv` [B, T, 3 x hidden] (query, key, value, each `heads` x d) -> the attention context
/// [B, T, hidden]. `bias` [G, heads, T, T] (B a multiple of G) is added to the scores of sequence
/// `i` as `bias[i % G]`, before the softmax (Swin's relative positions and window masks).
/// For frozen encoders: on the CPU no gradient flows back through it.
pub fn self_attention(qkv: &Tensor, heads: usize, bias: Option<&Tensor>) -> Result<Tensor> {
    let (b, t, h3) = qkv.dims3()?;
    if let Some(bias) = bias {
        let (g, bh, t1, t2) = bias.dims4()?;
        if b % g != 0 || bh != heads || t1 != t || t2 != t {
            candle_core::bail!("attention: bias {:?} does not fit {b} sequences of {t} tokens and {heads} heads", bias.shape());
        }
    }
    check_shapes(t, h3, heads, t)?;
    let cpu = qkv.device().is_cpu() && qkv.dtype() == DType::F32 && bias.is_none_or(|b| b.dtype() == DType::F32);
    match (cpu, bias) {
        (true, None) => qkv.contiguous()?.apply_op1_no_bwd(&Attention { heads, queries: t }),
        (true, Some(bias)) => qkv.contiguous()?.apply_op2_no_bwd(&bias.contiguous()?, &Attention { heads, queries: t }),
        (false, _) => generic(qkv, heads, bias, t),
    }
}

/// The rows of [`self_attention`] (no bias) for the first `queries` tokens only, [B, queries,
/// hidden]: their queries against every token's keys and values (ViT's last layer, whose
/// features are the CLS token's).
pub fn attention_of_first(qkv: &Tensor, heads: usize, queries: usize) -> Result<Tensor> {
    let (_, t, h3) = qkv.dims3()?;
    check_shapes(t, h3, heads, queries)?;
    match qkv.device().is_cpu() && qkv.dtype() == DType::F32 {
        true => qkv.contiguous()?.apply_op1_no_bwd(&Attention { heads, queries }),
        false => generic(qkv, heads, None, queries),
    }
}

/// Refuses `qkv` rows of `h3` columns that are not query, key and value of `heads` heads, no
/// tokens, and query counts outside `1..=t`.
fn check_shapes(t: usize, h3: usize, heads: usize, queries: usize) -> Result<()> {
    if heads == 0 || t == 0 || !h3.is_multiple_of(3 * heads) {
        candle_core::bail!("attention: {h3} columns are not query, key and value of {heads} heads");
    }
    if queries == 0 || queries > t {
        candle_core::bail!("attention: {queries} queries of {t} tokens");
    }
    Ok(())
}

/// candle's ops (any device; the reference the CPU op is tested against), for the first
/// `queries` tokens (a bias only with all of them).
fn generic(qkv: &Tensor, heads: usize, bias: Option<&Tensor>, queries: usize) -> Result<Tensor> {
    let (b, t, h3) = qkv.dims3()?;
    let (h, dh) = (h3 / 3, h3 / 3 / heads);
    let qkv = qkv.reshape((b, t, 3, heads, dh))?.permute((2, 0, 3, 1, 4))?;
    let (q, k, v) = (qkv.i(0)?.narrow(2, 0, queries)?.contiguous()?, qkv.i(1)?.contiguous()?, qkv.i(2)?.contiguous()?);
    let mut scores = (q.matmul(&k.t()?)? / (dh as f64).sqrt())?;
    if let Some(bias) = bias {
        let g = bias.dim(0)?;
        scores = scores.reshape((b / g, g, heads, t, t))?.broadcast_add(bias)?.reshape((b, heads, t, t))?;
    }
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    probs.matmul(&v)?.permute((0, 2, 1, 3))?.contiguous()?.reshape((b, queries, h))
}

/// The CPU op: the context of the first `queries` tokens (all T in [`self_attention`]).
struct Attention {
    heads: usize,
    queries: usize,
}

impl Attention {
    fn run(&self, qkv: &[f32], shape: &Shape, bias: Option<(&[f32], usize)>) -> Result<(CpuStorage, Shape)> {
        let (b, t, h3) = shape.dims3()?;
        let (h, heads, tq) = (h3 / 3, self.heads, self.queries);
        let dh = h / heads;
        let scale = 1.0 / (dh as f32).sqrt();
        crate::nn::cpu::count_flop((4 * b * heads * tq * t * dh) as u64);
        let mut out: Vec<f32> = Vec::with_capacity(b * tq * h);
        let dst = SendPtr(out.as_mut_ptr());
        (0..b * heads).into_par_iter().for_each_init(
            || (vec![0f32; tq * t], vec![0f32; tq]),
            |(scores, sums), job| {
                let (seq, head) = (job / heads, job % heads);
                let q = &qkv[seq * t * h3 + head * dh..];
                // scores = q k^T, [tq, d] by [d, T], rows 3 x hidden apart.
                // SAFETY: q, k and v rows lie inside `qkv` (T rows of 3 x hidden from the sequence's
                // start); `scores` holds tq x T values.
                unsafe { gemm_into(tq, t, dh, scores.as_mut_ptr(), t, q.as_ptr(), [1, h3], q.as_ptr().add(h), [h3, 1], gemm::Parallelism::None) };
                match bias {
                    Some((all, groups)) => {
                        let bias = &all[((seq % groups) * heads + head) * t * t..][..tq * t];
                        scores.iter_mut().zip(bias).for_each(|(s, b)| *s = *s * scale + b);
                    }
                    None => scores.iter_mut().for_each(|s| *s *= scale),
                }
                // Each row's exp(s - max), and its sum: the softmax's division is done on the
                // d values of the context row instead of the T probabilities.
                scores.chunks_exact_mut(t).zip(sums.iter_mut()).for_each(|(row, sum)| *sum = exp_from_max(row).1);
                // context rows [tq, d] of this head = probs v, written into the output's rows.
                let ctx = seq * tq * h + head * dh;
                // SAFETY: the destination block (tq rows of `hidden`, this head's d columns) is
                // inside `out` (B x tq x hidden) and written by this job only; gemm without
                // `read_dst` only writes.
                unsafe { gemm_into(tq, dh, t, dst.get().add(ctx), h, scores.as_ptr(), [1, t], q.as_ptr().add(2 * h), [1, h3], gemm::Parallelism::None) };
                for (r, sum) in sums.iter().enumerate() {
                    // SAFETY: row r's d columns of this head, written above by this job only.
                    let row = unsafe { std::slice::from_raw_parts_mut(dst.get().add(ctx + r * h), dh) };
                    row.iter_mut().for_each(|x| *x /= sum);
                }
            },
        );
        // SAFETY: the jobs wrote every (sequence, query, head, d) above.
        unsafe { out.set_len(b * tq * h) };
        Ok((CpuStorage::F32(out), Shape::from((b, tq, h))))
    }
}

impl CustomOp1 for Attention {
    fn name(&self) -> &'static str {
        "self-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        self.run(f32_slice("self-attention", s, l)?, l.shape(), None)
    }
}

impl CustomOp2 for Attention {
    fn name(&self) -> &'static str {
        "self-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout, bs: &CpuStorage, bl: &Layout) -> Result<(CpuStorage, Shape)> {
        let bias = f32_slice("self-attention", bs, bl)?;
        self.run(f32_slice("self-attention", s, l)?, l.shape(), Some((bias, bl.shape().dims()[0])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{randn, stream};
    use candle_core::Device;

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
    }

    /// The CPU op equals candle's graph, with and without a grouped bias, for ViT- and
    /// Swin-like shapes (including a masked score of -100, as Swin's shifted windows use).
    #[test]
    fn matches_the_generic_graph() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = stream(4, "test", 0);
        for (b, t, heads, dh, groups) in [(2, 197, 3, 64, 0), (6, 49, 4, 32, 3), (1, 5, 1, 8, 1)] {
            let qkv = (randn(&mut rng, (b, t, 3 * heads * dh), &dev)? * 2.0)?;
            let bias = match groups {
                0 => None,
                g => Some(
                    randn(&mut rng, (g, heads, t, t), &dev)?.broadcast_add(&Tensor::new(&[[0f32, -100.0]], &dev)?.repeat((t, t / 2 + 1))?.narrow(1, 0, t)?)?,
                ),
            };
            let fast = self_attention(&qkv, heads, bias.as_ref())?;
            let slow = generic(&qkv, heads, bias.as_ref(), t)?;
            assert_eq!(fast.dims(), &[b, t, heads * dh]);
            assert!(max_diff(&fast, &slow)? < 1e-5, "{b}x{t}, {heads} heads: {}", max_diff(&fast, &slow)?);
            // Sequences are independent: the first one alone gives the same rows.
            let first = self_attention(&qkv.narrow(0, 0, 1)?, heads, bias.as_ref().map(|x| x.narrow(0, 0, 1)).transpose()?.as_ref())?;
            assert_eq!(max_diff(&first, &fast.narrow(0, 0, 1)?)?, 0.0);
        }
        Ok(())
    }

    /// The first tokens' context alone: the rows of the whole attention, by the CPU op and by
    /// candle's graph.
    #[test]
    fn first_tokens_are_the_first_rows_of_the_whole() -> Result<()> {
        let qkv = randn(&mut stream(7, "test", 0), (3, 50, 3 * 4 * 16), &Device::Cpu)?;
        let all = self_attention(&qkv, 4, None)?;
        for queries in [1, 7, 50] {
            let first = attention_of_first(&qkv, 4, queries)?;
            assert_eq!(first.dims(), &[3, queries, 64]);
            assert!(max_diff(&first, &all.narrow(1, 0, queries)?)? < 1e-6, "{queries} queries");
            assert!(max_diff(&first, &generic(&qkv, 4, None, queries)?)? < 1e-5, "{queries} queries, graph");
        }
        assert!(attention_of_first(&qkv, 4, 0).is_err() && attention_of_first(&qkv, 4, 51).is_err());
        Ok(())
    }

    /// One thread or several: the same bits.
    #[test]
    fn does_not_depend_on_the_threads() -> Result<()> {
        let qkv = randn(&mut stream(5, "test", 0), (3, 50, 3 * 4 * 16), &Device::Cpu)?;
        let many = self_attention(&qkv, 4, None)?;
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let one = pool.install(|| self_attention(&qkv, 4, None))?;
        assert_eq!(max_diff(&one, &many)?, 0.0);
        Ok(())
    }

    #[test]
    fn refuses_shapes_that_do_not_fit() -> Result<()> {
        let dev = Device::Cpu;
        let qkv = Tensor::zeros((2, 4, 12), DType::F32, &dev)?;
        assert!(self_attention(&qkv, 5, None).is_err());
        assert!(self_attention(&qkv, 0, None).is_err());
        assert!(self_attention(&Tensor::zeros((2, 0, 12), DType::F32, &dev)?, 2, None).is_err());
        assert!(self_attention(&qkv, 2, Some(&Tensor::zeros((3, 2, 4, 4), DType::F32, &dev)?)).is_err());
        Ok(())
    }
}
