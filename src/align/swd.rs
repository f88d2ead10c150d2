//! SWD: sliced Wasserstein discrepancy (Lee, Batra, Baig and Ulbricht, "Sliced Wasserstein
//! Discrepancy for Unsupervised Domain Adaptation", CVPR 2019, eq. 4-5 there). As there, it
//! compares two classifiers' *decisions*: here the class probabilities of the visual branch and
//! of the text branch (the EMA classifier applied to each embedding), projected on random unit
//! directions of the class space, sorted over the batch and compared.

use crate::rng::SeededRng;
use candle_core::{D, Result, Tensor};

/// Random projections per batch unless configured otherwise.
pub const DEFAULT_PROJECTIONS: usize = 128;

/// Project both batches (rows: probability vectors for decisions) on `k` random unit directions,
/// sort each projection over the batch, and return the mean squared difference of the sorted
/// values (the 1-D Wasserstein-2 distances averaged over directions; eq. 5).
pub fn swd_loss(v: &Tensor, s: &Tensor, k: usize, rng: &mut SeededRng) -> Result<Tensor> {
    let d = v.dim(1)?;
    let dirs = crate::rng::randn(rng, (d, k), v.device())?;
    let dirs = dirs.broadcast_div(&dirs.sqr()?.sum_keepdim(0)?.sqrt()?)?;
    let sorted = |x: &Tensor| -> Result<Tensor> {
        let p = x.matmul(&dirs)?.t()?.contiguous()?; // [k, B]
        let idx = p.arg_sort_last_dim(true)?;
        p.gather(&idx, D::Minus1)
    };
    (sorted(v)? - sorted(s)?)?.sqr()?.mean_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{randn, stream};
    use candle_core::{Device, Var};

    #[test]
    fn identical_batches_are_zero_and_shifted_ones_are_not() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = stream(1, "test", 0);
        let v = randn(&mut rng, (16, 8), &dev)?;
        assert_eq!(swd_loss(&v, &v, 32, &mut rng)?.to_scalar::<f32>()?, 0.0);
        // A permutation of the same rows is the same distribution: still zero.
        let perm = Tensor::new(&[3u32, 1, 0, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15, 14], &dev)?;
        let shuffled = v.index_select(&perm, 0)?;
        assert!(swd_loss(&v, &shuffled, 32, &mut rng)?.to_scalar::<f32>()? < 1e-10);
        let shifted = (&v + 1.0)?;
        assert!(swd_loss(&v, &shifted, 32, &mut rng)?.to_scalar::<f32>()? > 0.01);
        Ok(())
    }

    /// One direction in 1-D: the loss is the mean squared gap between sorted values.
    #[test]
    fn one_dimensional_hand_example() -> Result<()> {
        let dev = Device::Cpu;
        let v = Tensor::new(&[[3f32], [1.], [2.]], &dev)?;
        let s = Tensor::new(&[[0f32], [4.], [2.]], &dev)?;
        // Sorted: (1,2,3) vs (0,2,4): gaps 1, 0, 1 -> mean 2/3; a 1-D unit direction is +-1.
        let got = swd_loss(&v, &s, 4, &mut stream(0, "test", 0))?.to_scalar::<f32>()?;
        assert!((got - 2.0 / 3.0).abs() < 1e-6, "{got}");
        Ok(())
    }

    /// Hand-made class-probability batches against a direct computation with the same
    /// directions (drawn from the same stream).
    #[test]
    #[allow(clippy::needless_range_loop)] // the formula reads per direction j, as written
    fn probability_batches_match_a_direct_computation() -> Result<()> {
        let dev = Device::Cpu;
        let p = [[0.7f32, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.05, 0.05, 0.9]];
        let q = [[0.6f32, 0.3, 0.1], [0.2, 0.2, 0.6], [0.1, 0.85, 0.05], [0.4, 0.4, 0.2]];
        let k = 5;
        let got = swd_loss(&Tensor::new(&p, &dev)?, &Tensor::new(&q, &dev)?, k, &mut stream(9, "test", 0))?.to_scalar::<f32>()? as f64;
        let dirs = randn(&mut stream(9, "test", 0), (3, k), &dev)?.to_vec2::<f32>()?;
        let mut want = 0.0;
        for j in 0..k {
            let norm = (0..3).map(|c| (dirs[c][j] as f64).powi(2)).sum::<f64>().sqrt();
            let proj = |rows: &[[f32; 3]; 4]| {
                let mut x: Vec<f64> = rows.iter().map(|r| (0..3).map(|c| r[c] as f64 * dirs[c][j] as f64 / norm).sum()).collect();
                x.sort_by(|a, b| a.partial_cmp(b).unwrap());
                x
            };
            let (a, b) = (proj(&p), proj(&q));
            want += a.iter().zip(&b).map(|(x, y)| (x - y).powi(2)).sum::<f64>() / (4 * k) as f64;
        }
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        Ok(())
    }

    #[test]
    fn gradients_are_finite() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = stream(2, "test", 0);
        let v = Var::from_tensor(&randn(&mut rng, (8, 4), &dev)?)?;
        let s = randn(&mut rng, (8, 4), &dev)?;
        let g = swd_loss(v.as_tensor(), &s, 16, &mut rng)?.backward()?;
        let g = g.get(v.as_tensor()).unwrap().flatten_all()?.to_vec1::<f32>()?;
        assert!(g.iter().all(|x| x.is_finite()) && g.iter().any(|&x| x != 0.0));
        Ok(())
    }
}
