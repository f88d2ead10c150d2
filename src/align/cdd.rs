//! CDD: contrastive domain discrepancy (CAN, Kang et al., CVPR 2019, the MARNet paper's [12];
//! eq. 4-6 there): class-aware
//! multi-kernel MMD between visual and text embeddings, intra-class minus inter-class.

use super::batch::class_groups;
use candle_core::{Result, Tensor};

/// Gaussian kernels at bandwidths `bw * KERNEL_MUL^i`, `i = -KERNEL_NUM/2 ..= KERNEL_NUM/2`.
const KERNEL_MUL: f64 = 2.0;
const KERNEL_NUM: i32 = 5;

/// Pairwise squared distances between the rows of `a` and of `b`.
fn sq_dists(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let an = a.sqr()?.sum_keepdim(1)?;
    let bn = b.sqr()?.sum_keepdim(1)?.t()?;
    (an.broadcast_add(&bn)? - (a.matmul(&b.t()?)? * 2.0)?)?.relu()
}

/// `D(c1, c2) = E k(v,v') + E k(s,s') - 2 E k(v,s)` over visual rows of class c1 and text rows
/// of class c2 (the MMD^2 estimate of eq. 4); returns `mean_c D(c,c) - mean_{c != c'} D(c,c')`.
/// The bandwidth follows CAN's rule: the mean pairwise squared distance of the pooled batch
/// (detached), here computed once per batch for all class pairs.
pub fn cdd_loss(v: &Tensor, s: &Tensor, labels: &[u32]) -> Result<Tensor> {
    let b = labels.len();
    let groups = class_groups(labels);
    let c = groups.len();
    // A [B, C]: column c averages the rows of class c.
    let mut a = vec![0f32; b * c];
    for (k, (_, rows)) in groups.iter().enumerate() {
        for &r in rows {
            a[r as usize * c + k] = 1.0 / rows.len() as f32;
        }
    }
    let a = Tensor::from_vec(a, (b, c), v.device())?;
    let (dvv, dss, dvs) = (sq_dists(v, v)?, sq_dists(s, s)?, sq_dists(v, s)?);
    let n = 2.0 * b as f64;
    let total = (dvv.sum_all()? + dss.sum_all()? + (dvs.sum_all()? * 2.0)?)?.to_scalar::<f32>()? as f64;
    let bw = (total / (n * n - n)).max(1e-12) / KERNEL_MUL.powi(KERNEL_NUM / 2);
    let kernel = |d: &Tensor| -> Result<Tensor> {
        let mut k = (d * (-1.0 / bw))?.exp()?;
        for i in 1..KERNEL_NUM {
            k = (k + (d * (-1.0 / (bw * KERNEL_MUL.powi(i))))?.exp()?)?;
        }
        Ok(k)
    };
    let mean_k = |d: &Tensor| -> Result<Tensor> { a.t()?.matmul(&kernel(d)?)?.matmul(&a) };
    let (evv, ess, evs) = (mean_k(&dvv)?, mean_k(&dss)?, mean_k(&dvs)?);
    let eye = Tensor::eye(c, candle_core::DType::F32, v.device())?;
    let diag = |m: &Tensor| (m * &eye)?.sum(1);
    let (dv, ds) = (diag(&evv)?, diag(&ess)?);
    let d = (dv.unsqueeze(1)?.broadcast_add(&ds.unsqueeze(0)?)? - (evs * 2.0)?)?;
    let intra = ((&d * &eye)?.sum_all()? / c as f64)?;
    if c < 2 {
        return Ok(intra);
    }
    let inter = (((&d * (1.0 - &eye)?)?.sum_all()?) / (c * (c - 1)) as f64)?;
    intra - inter
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{randn, stream};
    use candle_core::{Device, Var};

    fn clusters(centers: &[[f32; 2]], per: usize, noise: f32, seed: u64) -> Result<(Tensor, Vec<u32>)> {
        let dev = Device::Cpu;
        let mut rng = stream(seed, "test", 0);
        let n = centers.len() * per;
        let jitter = randn(&mut rng, (n, 2), &dev)?.to_vec2::<f32>()?;
        let mut rows = vec![];
        let mut labels = vec![];
        for (i, j) in jitter.iter().enumerate() {
            let c = i % centers.len();
            rows.extend([centers[c][0] + noise * j[0], centers[c][1] + noise * j[1]]);
            labels.push(c as u32);
        }
        Ok((Tensor::from_vec(rows, (n, 2), &dev)?, labels))
    }

    #[test]
    fn well_separated_classes_give_a_negative_discrepancy() -> Result<()> {
        let (v, labels) = clusters(&[[0., 0.], [10., 0.], [0., 10.]], 6, 0.1, 1)?;
        let (s, _) = clusters(&[[0., 0.], [10., 0.], [0., 10.]], 6, 0.1, 2)?;
        let cdd = cdd_loss(&v, &s, &labels)?.to_scalar::<f32>()?;
        assert!(cdd < -0.5, "{cdd}");
        // Text classes swapped: intra-class discrepancy is large, so CDD grows.
        let (swapped, _) = clusters(&[[10., 0.], [0., 10.], [0., 0.]], 6, 0.1, 2)?;
        assert!(cdd_loss(&v, &swapped, &labels)?.to_scalar::<f32>()? > cdd + 0.5);
        Ok(())
    }

    /// One sample per class in 1-D: v = s = (0, 1). D(c,c) = 0 and D(c,c') = 2 K(0) - 2 K(1).
    #[test]
    fn hand_computed_two_points() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[0f32], [1.]], &dev)?;
        let got = cdd_loss(&x, &x, &[0, 1])?.to_scalar::<f32>()? as f64;
        // Pooled squared distances sum to 8 over 4 * 3 ordered pairs; bw = (8 / 12) / 2^2.
        let bw = 8.0 / 12.0 / 4.0;
        let k1: f64 = (0..5).map(|i| (-1.0 / (bw * 2f64.powi(i))).exp()).sum();
        let want = -(2.0 * 5.0 - 2.0 * k1);
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        Ok(())
    }

    #[test]
    fn gradients_are_finite() -> Result<()> {
        let (v, labels) = clusters(&[[0., 0.], [3., 0.]], 4, 1.0, 3)?;
        let v = Var::from_tensor(&v)?;
        let (s, _) = clusters(&[[0., 0.], [3., 0.]], 4, 1.0, 4)?;
        let g = cdd_loss(v.as_tensor(), &s, &labels)?.backward()?;
        let g = g.get(v.as_tensor()).unwrap().flatten_all()?.to_vec1::<f32>()?;
        assert!(g.iter().all(|x| x.is_finite()) && g.iter().any(|&x| x != 0.0));
        Ok(())
    }
}
