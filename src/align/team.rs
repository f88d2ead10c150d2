//! TEAM (Xie, Wu, Zheng, Pan and Hua, "Token Embeddings Alignment for Cross-Modal Retrieval",
//! ACM MM 2022; the MARNet paper's [36]), pooled form: global image-text InfoNCE plus a
//! hard-negative term.
//!
//! TEAM's token-level embedding alignment (attention between patch and word tokens) needs token
//! sequences; this is the pooled form, for caches without tokens: the global term is ITA, and
//! the hard-negative term replaces TEAM's token matching score by a logistic ranking loss on
//! one negative per sample and direction, drawn from the similarity softmax (as TEAM and ALBEF
//! draw hard negatives) among samples of other classes. The token-level form, on caches with
//! tokens, is [`super::team_tokens`] (`--align team-tokens`).

use super::ita::{ita_loss, similarity_logits};
use crate::rng::SeededRng;
use candle_core::{Result, Tensor};
use rand::Rng;

/// `ITA + mean_i softplus(sim(i, n_i) - sim(i, i))` in both directions, `n_i` drawn with
/// probability proportional to `exp(sim(i, j))` over `j` of another class.
pub fn team_loss(v: &Tensor, s: &Tensor, labels: &[u32], tau: &Tensor, rng: &mut SeededRng) -> Result<Tensor> {
    let global = ita_loss(v, s, tau)?;
    let sim = similarity_logits(v, s, tau)?;
    let hard = (hard_negative_term(&sim, labels, rng)? + hard_negative_term(&sim.t()?.contiguous()?, labels, rng)?)?;
    global + hard
}

/// A hard negative for row `i` of a similarity matrix (host copy): a column `j` of another
/// class than `i`'s, drawn with probability proportional to `exp(sim[j])` (the similarity
/// softmax, as TEAM and ALBEF draw hard negatives); `None` if every column is of `i`'s class.
pub(crate) fn draw_negative(sim: &[f32], labels: &[u32], i: usize, rng: &mut SeededRng) -> Option<usize> {
    let max = sim.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let w: Vec<f64> = (0..labels.len()).map(|j| if labels[j] != labels[i] { ((sim[j] - max) as f64).exp() } else { 0.0 }).collect();
    let total: f64 = w.iter().sum();
    if total <= 0.0 {
        return None;
    }
    let mut u = rng.random::<f64>() * total;
    let j = w.iter().position(|&x| {
        u -= x;
        u <= 0.0 && x > 0.0
    });
    Some(j.unwrap_or_else(|| w.iter().rposition(|&x| x > 0.0).unwrap()))
}

/// Rows that have a negative of another class contribute `softplus(sim[i, n_i] - sim[i, i])`.
fn hard_negative_term(sim: &Tensor, labels: &[u32], rng: &mut SeededRng) -> Result<Tensor> {
    let host = sim.detach().to_vec2::<f32>()?;
    let (mut rows, mut negs) = (vec![], vec![]);
    for (i, row) in host.iter().enumerate() {
        if let Some(j) = draw_negative(row, labels, i, rng) {
            rows.push(i as u32);
            negs.push(j as u32);
        }
    }
    if rows.is_empty() {
        return sim.zeros_like()?.sum_all();
    }
    let dev = sim.device();
    let n = rows.len();
    let rows_t = Tensor::from_vec(rows.clone(), n, dev)?;
    let sim_rows = sim.index_select(&rows_t, 0)?;
    let pos = sim_rows.gather(&Tensor::from_vec(rows, (n, 1), dev)?, 1)?;
    let neg = sim_rows.gather(&Tensor::from_vec(negs, (n, 1), dev)?, 1)?;
    softplus(&(neg - pos)?)?.mean_all()
}

/// `log(1 + exp(x))`, stable for large |x|.
fn softplus(x: &Tensor) -> Result<Tensor> {
    x.relu()? + ((x.abs()? * -1.0)?.exp()? + 1.0)?.log()?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{randn, stream};
    use candle_core::{Device, Var};

    #[test]
    fn hard_negative_term_by_hand() -> Result<()> {
        let dev = Device::Cpu;
        // Row 0's only other-class candidate is column 2; row 1 likewise; row 2 picks 0 or 1.
        let sim = Tensor::new(&[[2f32, 1., 0.5], [1., 3., 0.], [0., 0., 1.]], &dev)?;
        let labels = [0u32, 0, 1];
        let got = hard_negative_term(&sim, &labels, &mut stream(0, "test", 0))?.to_scalar::<f32>()?;
        let sp = |x: f32| (1.0 + x.exp()).ln();
        // Row 2: the two candidates have equal similarity 0, so either gives softplus(0 - 1).
        let want = (sp(0.5 - 2.0) + sp(0.0 - 3.0) + sp(0.0 - 1.0)) / 3.0;
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        Ok(())
    }

    #[test]
    fn aligned_batches_cost_less_and_gradients_are_finite() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = stream(3, "test", 0);
        let labels: Vec<u32> = (0..8).collect();
        let tau = Tensor::new(0.07f32, &dev)?;
        let v = Var::from_tensor(&randn(&mut rng, (8, 16), &dev)?)?;
        let aligned = team_loss(v.as_tensor(), v.as_tensor(), &labels, &tau, &mut rng)?;
        let other = randn(&mut rng, (8, 16), &dev)?;
        let random = team_loss(v.as_tensor(), &other, &labels, &tau, &mut rng)?;
        assert!(aligned.to_scalar::<f32>()? < 0.1 && random.to_scalar::<f32>()? > 1.0);
        let g = random.backward()?.get(v.as_tensor()).unwrap().flatten_all()?.to_vec1::<f32>()?;
        assert!(g.iter().all(|x| x.is_finite()) && g.iter().any(|&x| x != 0.0));
        Ok(())
    }
}
