//! SSAN (Li, Xie, Wu, Zhao, Liu and Ding, "Simultaneous Semantic Alignment Network for
//! Heterogeneous Domain Adaptation", ACM MM 2020; the MARNet paper's [16]): class-centroid
//! alignment with momentum centroids, plus a soft-label term that transfers the text side's
//! class distributions to the visual side.
//!
//! Centroids are taken over L2-normalised embeddings: on raw embeddings the squared distances
//! are unbounded, and minimising them collapsed both projections (chance accuracy on
//! emoji-food, measured with `marnet compare`).
//!
//! Running centroids are non-trainable buffers (names containing `buffer.`), saved with the
//! weights so a resumed run continues exactly.

use super::batch::{AlignBatch, class_groups};
use crate::nn::{BUFFER, norm::l2_normalize};
use candle_core::{D, DType, Result, Tensor, Var};
use candle_nn::{Init, VarBuilder, ops::log_softmax, ops::softmax};
use std::sync::Mutex;

/// Weight of the running centroid in the momentum update.
pub const MOMENTUM: f64 = 0.7;
/// Softmax temperature of the soft labels.
pub const SOFT_LABEL_T: f64 = 2.0;

pub struct Centroids {
    visual: Var,
    text: Var,
    /// 1 for classes whose running centroids have been set.
    seen: Var,
    lock: Mutex<()>,
}

impl std::fmt::Debug for Centroids {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Centroids")
    }
}

impl Centroids {
    pub fn load(vb: VarBuilder, classes: usize, d: usize) -> Result<Self> {
        // A VarBuilder variable wrapped by `Var::from_tensor` shares its storage, so `set` here
        // updates what checkpoints save.
        let buffer =
            |name: &str, shape: (usize, usize)| -> Result<Var> { Var::from_tensor(&vb.get_with_hints(shape, &format!("{BUFFER}{name}"), Init::Const(0.0))?) };
        Ok(Self { visual: buffer("visual", (classes, d))?, text: buffer("text", (classes, d))?, seen: buffer("seen", (classes, 1))?, lock: Mutex::new(()) })
    }

    /// `mean_c [|U_v - U_s|^2 + |U_v - U_j|^2 + |U_s - U_j|^2] + CE(q_y, p_v)`, where
    /// `U = MOMENTUM R + (1 - MOMENTUM) B` mixes the running centroid R (constant) with the batch
    /// centroid B of class c (just B the first time c is seen), `U_j = (U_v + U_s) / 2` is the
    /// joint centroid of the paired batch, `q_c` the mean text-side class distribution of class c
    /// and `p_v` the visual-side one (both at temperature `SOFT_LABEL_T`). Updates R to U.
    pub fn loss(&self, b: &AlignBatch) -> Result<Tensor> {
        let _guard = self.lock.lock().unwrap();
        let dev = b.v.device();
        let groups = class_groups(b.labels);
        let (n, c) = (b.labels.len(), groups.len());
        let mut avg = vec![0f32; c * n];
        for (k, (_, rows)) in groups.iter().enumerate() {
            for &r in rows {
                avg[k * n + r as usize] = 1.0 / rows.len() as f32;
            }
        }
        let avg = Tensor::from_vec(avg, (c, n), dev)?; // row k averages class k's rows
        let ids = Tensor::from_vec(groups.iter().map(|(y, _)| *y).collect::<Vec<_>>(), c, dev)?;
        let seen = self.seen.as_tensor().detach().index_select(&ids, 0)?; // [c, 1], a buffer: no gradient
        let keep = (seen * MOMENTUM)?;
        let mix = |running: &Var, batch: Tensor| -> Result<Tensor> {
            let r = running.as_tensor().detach().index_select(&ids, 0)?;
            r.broadcast_mul(&keep)? + batch.broadcast_mul(&(1.0 - &keep)?)?
        };
        let uv = mix(&self.visual, avg.matmul(&l2_normalize(b.v)?)?)?;
        let us = mix(&self.text, avg.matmul(&l2_normalize(b.s)?)?)?;
        let uj = ((&uv + &us)? * 0.5)?;
        let sq = |a: &Tensor, c: &Tensor| (a - c)?.sqr()?.sum(1);
        let centroid = ((sq(&uv, &us)? + sq(&uv, &uj)?)? + sq(&us, &uj)?)?.mean_all()?;

        let q = avg.matmul(&softmax(&(b.s_logits / SOFT_LABEL_T)?, D::Minus1)?)?.detach(); // [c, C]
        let row_class: Vec<u32> = b.labels.iter().map(|y| groups.iter().position(|(g, _)| g == y).unwrap() as u32).collect();
        let q_rows = q.index_select(&Tensor::from_vec(row_class, n, dev)?, 0)?;
        let log_p = log_softmax(&(b.v_logits / SOFT_LABEL_T)?, D::Minus1)?;
        let soft = ((q_rows * log_p)?.sum(1)?.mean_all()? * -1.0)?;

        for (var, u) in [(&self.visual, &uv), (&self.text, &us)] {
            var.set(&scatter_rows(var.as_tensor(), &ids, &u.detach())?)?;
        }
        let ones = Tensor::ones((c, 1), DType::F32, dev)?;
        self.seen.set(&scatter_rows(self.seen.as_tensor(), &ids, &ones)?)?;
        centroid + soft
    }
}

/// `base` with rows `ids` replaced by `rows`.
fn scatter_rows(base: &Tensor, ids: &Tensor, rows: &Tensor) -> Result<Tensor> {
    let mut host = base.to_vec2::<f32>()?;
    for (k, id) in ids.to_vec1::<u32>()?.into_iter().enumerate() {
        host[id as usize] = rows.get(k)?.to_vec1::<f32>()?;
    }
    Tensor::new(host, base.device())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::VarMap;

    fn centroids(classes: usize, d: usize) -> Result<(Centroids, VarMap)> {
        let vm = VarMap::new();
        let c = Centroids::load(VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu), classes, d)?;
        Ok((c, vm))
    }

    fn run(c: &Centroids, v: &Tensor, s: &Tensor, labels: &[u32], logits: &Tensor) -> Result<f32> {
        let b = AlignBatch { v, s, labels, tau: None, v_logits: logits, s_logits: logits, tokens: None };
        c.loss(&b)?.to_scalar::<f32>()
    }

    #[test]
    fn coinciding_modalities_cost_nothing() -> Result<()> {
        let dev = Device::Cpu;
        let (c, _) = centroids(2, 2)?;
        let v = Tensor::new(&[[1f32, 0.], [0., 1.], [1., 1.]], &dev)?;
        // Confident, identical predictions: the soft-label cross-entropy is ~0.
        let logits = Tensor::new(&[[80f32, 0.], [0., 80.], [80., 0.]], &dev)?;
        assert!(run(&c, &v, &v, &[0, 1, 0], &logits)? < 1e-6);
        let (fresh, _) = centroids(2, 2)?;
        let s = (&v * -1.0)?;
        assert!(run(&fresh, &v, &s, &[0, 1, 0], &logits)? > 1.0);
        Ok(())
    }

    /// First batch sets the running centroids; the second mixes them with momentum 0.7.
    /// Rows are L2-normalised before averaging.
    #[test]
    fn momentum_centroids_by_hand() -> Result<()> {
        let dev = Device::Cpu;
        let (c, vm) = centroids(1, 2)?;
        let logits = Tensor::new(&[[50f32], [50.]], &dev)?; // one class: soft term is 0
        let t = |rows: [[f32; 2]; 2]| Tensor::new(&rows, &dev);
        let first = run(&c, &t([[1., 0.], [0., 1.]])?, &t([[1., 0.], [2., 0.]])?, &[0, 0], &logits)?;
        // U_v = (.5, .5), U_s = (1, 0), U_j = (.75, .25): 0.5 + 0.125 + 0.125.
        assert!((first - 0.75).abs() < 1e-5, "{first}");
        let second = run(&c, &t([[0., 2.], [0., 3.]])?, &t([[3., 0.], [4., 0.]])?, &[0, 0], &logits)?;
        // U_v = 0.7 (.5, .5) + 0.3 (0, 1) = (.35, .65), U_s = (1, 0): 1.5 * (.65^2 + .65^2).
        assert!((second - 1.5 * 0.845).abs() < 1e-5, "{second}");
        let saved = vm.data().lock().unwrap()["buffer.visual"].as_tensor().to_vec2::<f32>()?;
        assert!((saved[0][0] - 0.35).abs() < 1e-6 && (saved[0][1] - 0.65).abs() < 1e-6, "running centroid {saved:?}");
        Ok(())
    }
}
