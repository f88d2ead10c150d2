//! SDM: similarity distribution matching (IRRA, Jiang and Ye, CVPR 2023, the MARNet paper's
//! [11]; eq. 1-4 there), with
//! class labels in the role of identities.

use super::ita::similarity_logits;
use candle_core::{D, Result, Tensor};
use candle_nn::ops::{log_softmax, softmax};

/// Added inside the log of the matching distribution, as IRRA does.
const EPS: f64 = 1e-8;

/// `KL(p_i2t || q) + KL(p_t2i || q)`, each averaged over the batch, where
/// `p = softmax(cos / tau)` row-wise and `q_ij = y_ij / sum_k y_ik` with `y_ij = [label_i == label_j]`.
pub fn sdm_loss(v: &Tensor, s: &Tensor, labels: &[u32], tau: &Tensor) -> Result<Tensor> {
    let b = labels.len();
    let mut q = vec![0f32; b * b];
    for i in 0..b {
        let same: Vec<usize> = (0..b).filter(|&j| labels[j] == labels[i]).collect();
        for &j in &same {
            q[i * b + j] = 1.0 / same.len() as f32;
        }
    }
    let log_q = (Tensor::from_vec(q, (b, b), v.device())? + EPS)?.log()?;
    let sim = similarity_logits(v, s, tau)?;
    let kl = |logits: &Tensor| -> Result<Tensor> {
        let p = softmax(logits, D::Minus1)?;
        (p * (log_softmax(logits, D::Minus1)? - &log_q)?)?.sum(1)?.mean_all()
    };
    kl(&sim)? + kl(&sim.t()?.contiguous()?)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{normal_vec, stream};
    use candle_core::{Device, Var};

    #[test]
    fn equals_brute_force_kl() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = stream(6, "test", 0);
        let (b, d, tau) = (5, 3, 0.2f64);
        let (v, s) = (normal_vec(&mut rng, b * d), normal_vec(&mut rng, b * d));
        let labels = [0u32, 1, 0, 2, 1];
        let got = sdm_loss(&Tensor::from_vec(v.clone(), (b, d), &dev)?, &Tensor::from_vec(s.clone(), (b, d), &dev)?, &labels, &Tensor::new(tau as f32, &dev)?)?
            .to_scalar::<f32>()? as f64;
        let row = |x: &[f32], i: usize| -> Vec<f64> { x[i * d..(i + 1) * d].iter().map(|&a| a as f64).collect() };
        let cos = |a: &[f64], c: &[f64]| {
            let dot: f64 = a.iter().zip(c).map(|(x, y)| x * y).sum();
            dot / (a.iter().map(|x| x * x).sum::<f64>().sqrt() * c.iter().map(|x| x * x).sum::<f64>().sqrt())
        };
        let mut want = 0.0;
        for (a, c) in [(&v, &s), (&s, &v)] {
            for i in 0..b {
                let logits: Vec<f64> = (0..b).map(|j| cos(&row(a, i), &row(c, j)) / tau).collect();
                let z: f64 = logits.iter().map(|l| l.exp()).sum();
                let n_same = labels.iter().filter(|&&l| l == labels[i]).count() as f64;
                for j in 0..b {
                    let p = logits[j].exp() / z;
                    let q = if labels[j] == labels[i] { 1.0 / n_same } else { 0.0 };
                    want += p * (p.ln() - (q + EPS).ln()) / b as f64;
                }
            }
        }
        assert!((got - want).abs() < 1e-3 * want.abs().max(1.0), "{got} vs {want}");
        Ok(())
    }

    #[test]
    fn matched_classes_cost_little_and_gradients_are_finite() -> Result<()> {
        let dev = Device::Cpu;
        // Two classes, embeddings identical per class: p matches q, KL ~ 0.
        let v = Tensor::new(&[[1f32, 0.], [0., 1.], [1., 0.], [0., 1.]], &dev)?;
        let tau = Tensor::new(0.01f32, &dev)?;
        let labels = [0u32, 1, 0, 1];
        assert!(sdm_loss(&v, &v, &labels, &tau)?.to_scalar::<f32>()? < 1e-4);
        let other = Var::new(&[[0f32, 1.], [1., 0.], [0., 1.], [1., 0.]], &dev)?;
        let loss = sdm_loss(&v, other.as_tensor(), &labels, &tau)?;
        assert!(loss.to_scalar::<f32>()? > 1.0);
        let g = loss.backward()?.get(other.as_tensor()).unwrap().flatten_all()?.to_vec1::<f32>()?;
        assert!(g.iter().all(|x| x.is_finite()));
        Ok(())
    }
}
