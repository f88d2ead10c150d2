//! ITA: instance-wise cross-modal alignment (MGCA: Wang, Zhou, Wang, Vardhanabhuti and Yu,
//! "Multi-Granularity Cross-modal Alignment for Generalized Medical Visual Representation
//! Learning", NeurIPS 2022; the MARNet paper's [32] and its eq. 9-11), the symmetric InfoNCE of
//! EMA.

use crate::nn::loss::cross_entropy;
use crate::nn::norm::l2_normalize;
use candle_core::{Result, Tensor};

/// Smallest temperature the learnable `tau` may reach (guards against a collapsing softmax).
pub const MIN_TAU: f64 = 0.01;

/// Eq. 5: cosine similarity of every visual row with every text row, divided by `tau`.
pub fn similarity_logits(v: &Tensor, s: &Tensor, tau: &Tensor) -> Result<Tensor> {
    let tau = tau.maximum(MIN_TAU)?;
    l2_normalize(v)?.matmul(&l2_normalize(s)?.t()?)?.broadcast_div(&tau)
}

/// Eq. 9-11: `L_ITA = L_v2s + L_s2v`, each the batch mean of InfoNCE with the paired row
/// as the positive and the rest of the batch as negatives. `tau` is a scalar tensor.
pub fn ita_loss(v: &Tensor, s: &Tensor, tau: &Tensor) -> Result<Tensor> {
    let sim = similarity_logits(v, s, tau)?;
    let n = sim.dim(0)?;
    let target = Tensor::arange(0u32, n as u32, sim.device())?;
    let v2s = cross_entropy(&sim, &target)?;
    let s2v = cross_entropy(&sim.t()?, &target)?;
    v2s + s2v
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn cos(a: &[f32], b: &[f32]) -> f64 {
        let dot: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64) * (*y as f64)).sum();
        let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        dot / (na * nb)
    }

    #[test]
    fn batched_loss_equals_per_sample_brute_force() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = crate::rng::stream(3, "test", 0);
        let (b, d) = (6, 5);
        let v = crate::rng::normal_vec(&mut rng, b * d);
        let s = crate::rng::normal_vec(&mut rng, b * d);
        let tau = 0.07f64;
        let got = ita_loss(&Tensor::from_vec(v.clone(), (b, d), &dev)?, &Tensor::from_vec(s.clone(), (b, d), &dev)?, &Tensor::new(tau as f32, &dev)?)?
            .to_scalar::<f32>()? as f64;
        let row = |x: &[f32], i: usize| x[i * d..(i + 1) * d].to_vec();
        let mut want = 0.0;
        for i in 0..b {
            // Eq. 9 and eq. 10 for sample i.
            let den_v: f64 = (0..b).map(|j| (cos(&row(&v, i), &row(&s, j)) / tau).exp()).sum();
            let den_s: f64 = (0..b).map(|j| (cos(&row(&s, i), &row(&v, j)) / tau).exp()).sum();
            let pos = cos(&row(&v, i), &row(&s, i)) / tau;
            want += -(pos.exp() / den_v).ln() - (pos.exp() / den_s).ln();
        }
        want /= b as f64;
        assert!((got - want).abs() < 1e-4 * want.abs().max(1.0), "{got} vs {want}");
        Ok(())
    }

    #[test]
    fn gradient_reaches_tau() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = crate::rng::stream(4, "test", 0);
        let v = crate::rng::randn(&mut rng, (8, 4), &dev)?;
        let s = crate::rng::randn(&mut rng, (8, 4), &dev)?;
        let log_tau = Var::new(0.07f32.ln(), &dev)?;
        let loss = ita_loss(&v, &s, &log_tau.as_tensor().exp()?)?;
        let grads = loss.backward()?;
        let g = grads.get(log_tau.as_tensor()).expect("tau has a gradient").to_scalar::<f32>()?;
        assert!(g.is_finite() && g != 0.0, "d loss / d log_tau = {g}");
        Ok(())
    }

    #[test]
    fn aligned_pairs_cost_less_than_shuffled_ones() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = crate::rng::stream(5, "test", 0);
        let v = crate::rng::randn(&mut rng, (8, 16), &dev)?;
        let tau = Tensor::new(0.07f32, &dev)?;
        let aligned = ita_loss(&v, &v, &tau)?.to_scalar::<f32>()?;
        let other = crate::rng::randn(&mut rng, (8, 16), &dev)?;
        let random = ita_loss(&v, &other, &tau)?.to_scalar::<f32>()?;
        assert!(aligned < 0.1 && random > 1.0, "aligned {aligned}, random {random}");
        Ok(())
    }
}
