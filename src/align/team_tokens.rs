//! TEAM at the token level (Xie, Wu, Zheng, Pan and Hua, "Token Embeddings Alignment for
//! Cross-Modal Retrieval", ACM MM 2022, pp. 4555-4563; the MARNet paper's [36]) on the token
//! features of a cache (`marnet extract --tokens`): `--align team-tokens`.
//!
//! Where the formulas come from: the paper's text was not available here, so its equation
//! numbers are not cited. Every formula follows the authors' implementation
//! (github.com/Eniac-Xie/TEAM, `models/team.py`), and the function there is named next to the
//! lines that compute it. (T1)-(T5) label the formulas within this file:
//!
//! - (T1) token embeddings in EMA's shared space, by learned linear projections of the frozen
//!   encoders' tokens: `t_j = P_s x_s,j` (text token j), `u_i = P_v x_v,i` (image token i), both
//!   d-dimensional. These take the place of TEAM's token projector (`projector_token_embeds`)
//!   and the text side's `text_tensor_fc`.
//! - (T2) the alignment, in which each text token attends over the image tokens (TEAM's
//!   `TEAMBlock`: cross-attention with the text tokens as queries and the image tokens as keys
//!   and values): `a_ji = softmax_i((W_q t_j) . (W_k u_i) / sqrt(d))` and
//!   `r_j = sum_i a_ji W_v u_i`, the image embedding aligned to text token j.
//! - (T3) the token-level matching score of text T and image I: the mean of `cos(r_j, t_j)` over
//!   T's real tokens (`get_team_score`).
//! - (T4) the matching loss. Each pair (T_b, I_b) gets one hard-negative image I_n, drawn from
//!   the softmax of the global text-to-image similarity, and one hard-negative text T_n', drawn
//!   likewise from the image-to-text similarity (`select_neg`). Then
//!   `L_tok = -mean_b log softmax([S(T_b, I_b), S(T_b, I_n), S(T_n', I_b)] / tau_tok)_0`, with a
//!   learnable tau_tok initialised at 0.07 (`get_match_loss`, `logit_scale_team`).
//! - (T5) the global alignment of the pooled EMA embeddings: `L_glob = (L_v2s + L_s2v) / 2`, the
//!   two InfoNCE directions averaged (`clip_loss`). `L_TEAM = L_glob + L_tok`.
//!
//! How this differs from the implementation:
//! - it has one alignment block with a single attention head (TEAM stacks six blocks and sums
//!   their losses), without the block's self-attention, layer norms, MLP and dropout;
//! - W_v stands for the attention's value and output projections and TEAM's `image_tensor_fc`
//!   together, since a product of linear maps is one linear map; W_k has no bias, since a key
//!   bias shifts every logit of a query alike and the softmax ignores it;
//! - a hard negative comes from another class (TEAM: another image), because the texts here
//!   describe classes;
//! - the encoders stay frozen, so only the projections learn.

use super::ita::{MIN_TAU, ita_loss, similarity_logits};
use super::team::draw_negative;
use crate::nn::linear::{Linear, linear};
use crate::nn::norm::l2_normalize;
use crate::rng::SeededRng;
use candle_core::{D, Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

/// Initial token-level temperature (TEAM's `logit_scale_team`: ln(1/0.07)).
pub const TAU_TOKENS_INIT: f64 = 0.07;

/// Widths of the cached tokens: what the token projections take in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenDims {
    /// Visual token width (EfficientNet-Lite0: 1280).
    pub visual: usize,
    /// Text token width (MiniLM: 384).
    pub text: usize,
}

/// One batch's token features, as the training step gathers them from the cache.
pub struct TokenBatch {
    /// Visual tokens [B, Tv, Dvt].
    pub visual: Tensor,
    /// Text tokens [B, Ts, Dst], zero-padded.
    pub text: Tensor,
    /// Text mask [B, Ts], f32, 1 = real token.
    pub mask: Tensor,
}

/// The learned parts of the token-level alignment: the token projections (T1), the attention
/// (T2) and the token-level temperature (T4).
#[derive(Debug)]
pub struct TeamTokens {
    /// P_v, P_s of (T1).
    pv: Linear,
    ps: Linear,
    /// W_q, W_k, W_v of (T2). W_k has no bias: a key bias adds the same amount to every
    /// logit of a query, which the softmax ignores (it would never learn).
    wq: Linear,
    wk: Tensor,
    wv: Linear,
    log_tau: Tensor,
    d: usize,
}

impl TeamTokens {
    pub fn load(vb: VarBuilder, dims: TokenDims, d: usize) -> Result<Self> {
        Ok(Self {
            pv: linear(dims.visual, d, vb.pp("pv"))?,
            ps: linear(dims.text, d, vb.pp("ps"))?,
            wq: linear(d, d, vb.pp("wq"))?,
            wk: {
                let bound = 1.0 / (d as f64).sqrt();
                vb.pp("wk").get_with_hints((d, d), "weight", Init::Uniform { lo: -bound, up: bound })?
            },
            wv: linear(d, d, vb.pp("wv"))?,
            log_tau: vb.get_with_hints((), "log_tau", Init::Const(TAU_TOKENS_INIT.ln()))?,
            d,
        })
    }

    /// The token-level temperature tau_tok of (T4), at least [`MIN_TAU`] (TEAM clamps its logit
    /// scale at 100).
    pub fn tau(&self) -> Result<Tensor> {
        self.log_tau.exp()?.maximum(MIN_TAU)
    }

    /// (T3) for the pairs (text row `text_rows[p]`, image row `image_rows[p]`) of the batch:
    /// the score S [P].
    pub fn pair_scores(&self, tokens: &TokenBatch, text_rows: &[u32], image_rows: &[u32]) -> Result<Tensor> {
        let dev = tokens.text.device();
        // (T1) t_j = P_s x_s,j and u_i = P_v x_v,i, in the shared space.
        let t = self.ps.forward(&tokens.text)?;
        let u = self.pv.forward(&tokens.visual)?;
        // (T2) queries from the text tokens, keys and values from the image tokens (TEAMBlock's
        // cross_attn), projected once per row and then gathered per pair.
        let (b, tv, _) = u.dims3()?;
        let k = u.reshape((b * tv, self.d))?.matmul(&self.wk)?.reshape((b, tv, self.d))?;
        let (q, v) = (self.wq.forward(&t)?, self.wv.forward(&u)?);
        let p = text_rows.len();
        let ti = Tensor::from_vec(text_rows.to_vec(), p, dev)?;
        let ui = Tensor::from_vec(image_rows.to_vec(), p, dev)?;
        let (q, t, mask) = (q.index_select(&ti, 0)?, t.index_select(&ti, 0)?, tokens.mask.index_select(&ti, 0)?);
        let (k, v) = (k.index_select(&ui, 0)?, v.index_select(&ui, 0)?);
        // (T2) a_ji = softmax_i(q_j . k_i / sqrt(d)); r_j = sum_i a_ji v_i: [P, Ts, d].
        let scores = (q.matmul(&k.t()?.contiguous()?)? / (self.d as f64).sqrt())?;
        let r = candle_nn::ops::softmax(&scores, D::Minus1)?.matmul(&v)?;
        // (T3) S = sum_j m_j cos(r_j, t_j) / sum_j m_j (get_team_score).
        let cos = (l2_normalize(&r)? * l2_normalize(&t)?)?.sum(D::Minus1)?;
        (cos * &mask)?.sum(1)?.broadcast_div(&mask.sum(1)?.maximum(1.0)?)
    }

    /// `L_TEAM = L_glob + L_tok` (T4, T5) on a batch: `v`, `s` the pooled EMA embeddings [B, d],
    /// `tau` EMA's temperature (the global term's), `tokens` the batch's tokens.
    pub fn loss(&self, v: &Tensor, s: &Tensor, tokens: &TokenBatch, labels: &[u32], tau: &Tensor, rng: &mut SeededRng) -> Result<Tensor> {
        // (T5) L_glob = (L_v2s + L_s2v) / 2 (clip_loss averages what ita_loss adds).
        let global = (ita_loss(v, s, tau)? * 0.5)?;
        // (T4) hard negatives from the global similarities (select_neg): for text b an image n_b
        // from sim[:, b] (text-to-image), for image b a text n'_b from sim[b, :].
        let sim = similarity_logits(v, s, tau)?.detach().to_vec2::<f32>()?;
        let b = labels.len();
        let (mut rows, mut neg_images, mut neg_texts) = (vec![], vec![], vec![]);
        for i in 0..b {
            let t2i: Vec<f32> = sim.iter().map(|row| row[i]).collect();
            let (Some(n), Some(n2)) = (draw_negative(&t2i, labels, i, rng), draw_negative(&sim[i], labels, i, rng)) else { continue };
            rows.push(i as u32);
            neg_images.push(n as u32);
            neg_texts.push(n2 as u32);
        }
        if rows.is_empty() {
            return Ok(global);
        }
        let k = rows.len();
        // Pairs: (T_b, I_b), then (T_b, I_n), then (T_n', I_b).
        let text_rows: Vec<u32> = rows.iter().chain(&rows).chain(&neg_texts).copied().collect();
        let image_rows: Vec<u32> = rows.iter().chain(&neg_images).chain(&rows).copied().collect();
        let scores = self.pair_scores(tokens, &text_rows, &image_rows)?;
        // (T4) -log softmax([S_pos, S_neg_image, S_neg_text] / tau_tok)_0, batch mean (get_match_loss).
        let logits = scores.reshape((3, k))?.t()?.contiguous()?.broadcast_div(&self.tau()?)?;
        let target = Tensor::zeros(k, candle_core::DType::U32, logits.device())?;
        global + crate::nn::loss::cross_entropy(&logits, &target)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{normal_vec, stream};
    use candle_core::{DType, Device};
    use std::collections::HashMap;

    /// A row-major matrix product `x [n, i] w [i, o] + b [o]` on the host, in f64.
    fn affine(x: &[f64], w: &[f64], b: &[f64], i: usize, o: usize) -> Vec<f64> {
        x.chunks(i).flat_map(|row| (0..o).map(move |c| b[c] + (0..i).map(|k| row[k] * w[k * o + c]).sum::<f64>())).collect()
    }

    fn cos(a: &[f64], b: &[f64]) -> f64 {
        let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        dot / (a.iter().map(|x| x * x).sum::<f64>().sqrt() * b.iter().map(|x| x * x).sum::<f64>().sqrt())
    }

    struct Case {
        weights: HashMap<String, Vec<f32>>,
        xv: Vec<f32>,
        xs: Vec<f32>,
        mask: Vec<f32>,
        dims: (usize, usize, usize, usize, usize, usize),
    }

    /// Hand-made sizes: B rows, Tv image tokens of width Dv, Ts text tokens of width Ds, d = 3.
    fn case(b: usize, mask: Vec<f32>) -> Case {
        let (tv, dv, ts, ds, d) = (4, 5, 3, 2, 3);
        let mut rng = stream(11, "test", 0);
        let mut weights = HashMap::new();
        for (name, i, o) in [("pv", dv, d), ("ps", ds, d), ("wq", d, d), ("wk", d, d), ("wv", d, d)] {
            weights.insert(format!("{name}.weight"), normal_vec(&mut rng, i * o));
            if name != "wk" {
                weights.insert(format!("{name}.bias"), normal_vec(&mut rng, o));
            }
        }
        weights.insert("log_tau".into(), vec![0.2f32.ln()]);
        let mut xs = normal_vec(&mut rng, b * ts * ds);
        for (x, m) in xs.iter_mut().zip(mask.iter().flat_map(|&m| [m; 2])) {
            *x *= m; // padding positions hold zeros, as in a cache
        }
        Case { weights, xv: normal_vec(&mut rng, b * tv * dv), xs, mask, dims: (b, tv, dv, ts, ds, d) }
    }

    fn module(c: &Case, dev: &Device) -> Result<(TeamTokens, TokenBatch)> {
        let (b, tv, dv, ts, ds, d) = c.dims;
        let shape = |name: &str| -> Vec<usize> {
            let (i, o) = match &name[..2] {
                "pv" => (dv, d),
                "ps" => (ds, d),
                _ => (d, d),
            };
            if name.ends_with("weight") {
                vec![i, o]
            } else if name == "log_tau" {
                vec![]
            } else {
                vec![o]
            }
        };
        let tensors = c.weights.iter().map(|(k, v)| Ok((k.clone(), Tensor::from_vec(v.clone(), shape(k), dev)?))).collect::<Result<HashMap<_, _>>>()?;
        let m = TeamTokens::load(VarBuilder::from_tensors(tensors, DType::F32, dev), TokenDims { visual: dv, text: ds }, d)?;
        let tokens = TokenBatch {
            visual: Tensor::from_vec(c.xv.clone(), (b, tv, dv), dev)?,
            text: Tensor::from_vec(c.xs.clone(), (b, ts, ds), dev)?,
            mask: Tensor::from_vec(c.mask.clone(), (b, ts), dev)?,
        };
        Ok((m, tokens))
    }

    /// (T1)-(T3) for text row `ti` and image row `ui`, directly.
    fn direct_score(c: &Case, ti: usize, ui: usize) -> f64 {
        let (_, tv, dv, ts, ds, d) = c.dims;
        let w = |n: &str| c.weights[n].iter().map(|&x| x as f64).collect::<Vec<f64>>();
        let xv: Vec<f64> = c.xv[ui * tv * dv..(ui + 1) * tv * dv].iter().map(|&x| x as f64).collect();
        let xs: Vec<f64> = c.xs[ti * ts * ds..(ti + 1) * ts * ds].iter().map(|&x| x as f64).collect();
        let u = affine(&xv, &w("pv.weight"), &w("pv.bias"), dv, d);
        let t = affine(&xs, &w("ps.weight"), &w("ps.bias"), ds, d);
        let (q, k, v) =
            (affine(&t, &w("wq.weight"), &w("wq.bias"), d, d), affine(&u, &w("wk.weight"), &[0.0; 3], d, d), affine(&u, &w("wv.weight"), &w("wv.bias"), d, d));
        let (mut num, mut den) = (0.0, 0.0);
        for j in 0..ts {
            let m = c.mask[ti * ts + j] as f64;
            let logits: Vec<f64> = (0..tv).map(|i| (0..d).map(|e| q[j * d + e] * k[i * d + e]).sum::<f64>() / (d as f64).sqrt()).collect();
            let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = logits.iter().map(|l| (l - max).exp()).sum();
            let r: Vec<f64> = (0..d).map(|e| (0..tv).map(|i| (logits[i] - max).exp() / z * v[i * d + e]).sum()).collect();
            num += m * cos(&r, &t[j * d..(j + 1) * d]);
            den += m;
        }
        num / den
    }

    #[test]
    fn pair_scores_match_a_direct_computation() -> Result<()> {
        let dev = Device::Cpu;
        // Row 0 has 3 real tokens, row 1 one, row 2 two.
        let c = case(3, vec![1., 1., 1., 1., 0., 0., 1., 1., 0.]);
        let (m, tokens) = module(&c, &dev)?;
        let pairs = [(0u32, 0u32), (1, 1), (2, 2), (0, 2), (2, 1), (1, 0)];
        let got = m.pair_scores(&tokens, &pairs.map(|p| p.0), &pairs.map(|p| p.1))?.to_vec1::<f32>()?;
        for (&(ti, ui), g) in pairs.iter().zip(&got) {
            let want = direct_score(&c, ti as usize, ui as usize);
            assert!((*g as f64 - want).abs() < 1e-5, "pair ({ti}, {ui}): {g} vs {want}");
        }
        Ok(())
    }

    /// With labels [0, 1] every negative is determined (the other row), so the whole loss can be
    /// computed directly: (T5) plus (T4) on the scores of (T3).
    #[test]
    fn loss_matches_a_direct_computation() -> Result<()> {
        let dev = Device::Cpu;
        let c = case(2, vec![1., 1., 0., 1., 1., 1.]);
        let (m, tokens) = module(&c, &dev)?;
        let mut rng = stream(1, "test", 0);
        let v = crate::rng::randn(&mut rng, (2, 3), &dev)?;
        let s = crate::rng::randn(&mut rng, (2, 3), &dev)?;
        let tau = Tensor::new(0.1f32, &dev)?;
        let got = m.loss(&v, &s, &tokens, &[0, 1], &tau, &mut rng)?.to_scalar::<f32>()? as f64;
        let global = ita_loss(&v, &s, &tau)?.to_scalar::<f32>()? as f64 / 2.0;
        let tau_tok = 0.2;
        let mut tok = 0.0;
        for b in 0..2 {
            let n = 1 - b;
            let l = [direct_score(&c, b, b), direct_score(&c, b, n), direct_score(&c, n, b)].map(|x| x / tau_tok);
            let z: f64 = l.iter().map(|x| x.exp()).sum();
            tok -= (l[0].exp() / z).ln() / 2.0;
        }
        assert!((got - (global + tok)).abs() < 1e-5, "{got} vs {global} + {tok}");

        // One class only: no negatives, the global term alone.
        let same = m.loss(&v, &s, &tokens, &[0, 0], &tau, &mut rng)?.to_scalar::<f32>()? as f64;
        assert!((same - global).abs() < 1e-6, "{same} vs {global}");
        Ok(())
    }
}
