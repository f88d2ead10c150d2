//! Cross-entropy as one CPU op with a hand-written backward pass. candle_nn's is a chain of small
//! ops (log-softmax's max, subtraction, exp, sum and log, then a gather, a sum and a scale), each
//! with a tensor of its own, and its backward pass is a longer one; a MARNet training step takes
//! five cross-entropies (three heads and ITA's two directions).

use crate::nn::cpu::{f32_slice, with_f32};
use crate::nn::vmath::exp_from_max;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

/// The mean over rows of `-log softmax(logits)[target]`: candle_nn's `loss::cross_entropy`
/// (logits [b, c], target [b] of class indices), which other devices, dtypes and targets still
/// take.
pub fn cross_entropy(logits: &Tensor, target: &Tensor) -> Result<Tensor> {
    if !(logits.device().is_cpu() && logits.dtype() == DType::F32 && target.dtype() == DType::U32) {
        return candle_nn::loss::cross_entropy(logits, target);
    }
    let (b, c) = logits.dims2()?;
    let target = target.to_vec1::<u32>()?;
    if b == 0 {
        candle_core::bail!("cross-entropy: no rows of logits (an empty batch)");
    }
    if target.len() != b {
        candle_core::bail!("cross-entropy: {} targets for {b} rows of logits", target.len());
    }
    if let Some((row, t)) = target.iter().enumerate().find(|(_, t)| **t as usize >= c) {
        candle_core::bail!("cross-entropy: row {row} has target {t}, but there are {c} classes");
    }
    logits.contiguous()?.apply_op1(CrossEntropyOp { target })
}

struct CrossEntropyOp {
    target: Vec<u32>,
}

/// `row`'s largest value and the sum of `e^(row - max)`, whose values go to `shifted`.
fn shifted_exp(row: &[f32], shifted: &mut [f32]) -> (f32, f32) {
    shifted.copy_from_slice(row);
    exp_from_max(shifted)
}

impl CustomOp1 for CrossEntropyOp {
    fn name(&self) -> &'static str {
        "cross-entropy"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let logits = f32_slice("cross-entropy", s, l)?;
        let c = logits.len() / self.target.len();
        let mut shifted = vec![0f32; c];
        // Row i: log sum_j e^x_ij - x_i,target = ln(sum_j e^(x_ij - max)) + max - x_i,target.
        let total: f64 = logits
            .chunks_exact(c)
            .zip(&self.target)
            .map(|(row, &t)| {
                let (max, sum) = shifted_exp(row, &mut shifted);
                (sum.ln() + max - row[t as usize]) as f64
            })
            .sum();
        Ok((CpuStorage::F32(vec![(total / self.target.len() as f64) as f32]), Shape::from(())))
    }

    /// `d loss / d x_ij = g (softmax(x_i)_j - [j = target_i]) / b`.
    fn bwd(&self, logits: &Tensor, _loss: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let b = self.target.len();
        let scale = grad.to_scalar::<f32>()? / b as f32;
        let out = with_f32("cross-entropy", logits, |x| {
            let c = x.len() / b;
            let mut out = vec![0f32; x.len()];
            for ((row, o), &t) in x.chunks_exact(c).zip(out.chunks_exact_mut(c)).zip(&self.target) {
                let (_, sum) = shifted_exp(row, o);
                let k = scale / sum;
                o.iter_mut().for_each(|v| *v *= k);
                o[t as usize] -= scale;
            }
            out
        })?;
        Ok(Some(Tensor::from_vec(out, logits.shape(), logits.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{randn, stream};
    use candle_core::{Device, Var};

    /// Loss and gradient agree with candle_nn's chain of ops, on rows wider and narrower than
    /// 16 lanes and with large logits; a target out of range is refused naming its row.
    #[test]
    fn matches_candle_nn() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = stream(4, "test", 0);
        for (b, c, spread) in [(64, 172, 3.0), (7, 5, 1.0), (64, 64, 40.0)] {
            // The logits as stored, as a transposed view, and as rows 1.. of a taller matrix.
            let stored = Var::from_tensor(&(randn(&mut rng, (b, c), &dev)? * spread)?)?;
            let transposed = Var::from_tensor(&(randn(&mut rng, (c, b), &dev)? * spread)?)?;
            let taller = Var::from_tensor(&(randn(&mut rng, (b + 1, c), &dev)? * spread)?)?;
            let views = [(&stored, stored.as_tensor().clone()), (&transposed, transposed.t()?), (&taller, taller.narrow(0, 1, b)?)];
            let target = Tensor::from_vec((0..b as u32).map(|i| (i * 7 + 3) % c as u32).collect(), b, &dev)?;
            for (i, (var, x)) in views.iter().enumerate() {
                let ours = (cross_entropy(x, &target)? * 1.7)?;
                let theirs = (candle_nn::loss::cross_entropy(x, &target)? * 1.7)?;
                let (a, e) = (ours.to_scalar::<f32>()?, theirs.to_scalar::<f32>()?);
                assert!((a - e).abs() <= 2e-6 * e.abs().max(1.0), "{b}x{c}, view {i}: loss {a} against {e}");
                let (ga, ge) = (ours.backward()?, theirs.backward()?);
                let diff = (ga.get(var.as_tensor()).unwrap() - ge.get(var.as_tensor()).unwrap())?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(diff.is_finite() && diff < 1e-6, "{b}x{c}, view {i}: gradient differs by {diff}");
            }
        }
        let x = randn(&mut rng, (3, 4), &dev)?;
        let err = cross_entropy(&x, &Tensor::new(&[0u32, 4, 1], &dev)?).unwrap_err().to_string();
        assert!(err.contains("row 1 has target 4, but there are 4 classes"), "{err}");
        Ok(())
    }
}
