//! One optimiser step: the loss's forward and backward passes and the AdamW update.

use crate::align::team_tokens::TokenBatch;
use crate::checkpoint::LoadedModel;
use crate::features::FeatureSplit;
use crate::model::marnet::Marnet;
use crate::optim::{AdamW, clip_scale};
use crate::rng::SeededRng;
use anyhow::{Context, Result};
use candle_core::{Device, Tensor, Var};
use std::time::{Duration, Instant};

/// What one optimiser step produced: the weighted loss terms and the wall time of its phases
/// (on the CPU, where every op finishes before the next starts, except the AdamW updates that
/// run beside the backward pass, weight gradients by rows included: those still running when it
/// ends count in `update`).
pub struct Step {
    pub losses: Vec<(&'static str, f32)>,
    /// Loss forward pass.
    pub forward: Duration,
    /// The backward pass, with the AdamW updates it runs (none with clipping).
    pub backward: Duration,
    /// Clipping (if on), the rest of the AdamW update and reading the losses back.
    pub update: Duration,
}

/// One optimiser step on a batch (`marnet bench` times this same function). `tokens`: the
/// batch's token features, when the model's alignment trains on them.
#[allow(clippy::too_many_arguments)]
pub fn step(
    model: &Marnet,
    opt: &mut AdamW,
    xv: &Tensor,
    xs: &Tensor,
    tokens: Option<&TokenBatch>,
    y: &Tensor,
    noise: &mut SeededRng,
    clip_grad: f64,
) -> Result<Step> {
    let phases = move || -> Result<Step> {
        let t0 = Instant::now();
        let mut forward_backward = |params: &[(String, Var)]| -> Result<_> {
            let losses = model.losses_with_tokens(xv, xs, tokens, y, noise)?;
            let mut total = losses[0].1.clone();
            for (_, l) in &losses[1..] {
                total = (total + l)?;
            }
            let t1 = Instant::now();
            let grads = crate::nn::backward(&total, params)?;
            Ok(((losses, t1, Instant::now()), grads))
        };
        let (losses, t1, t2) = if clip_grad > 0.0 {
            // Clipping needs every gradient before any update.
            let (r, grads) = forward_backward(opt.params())?;
            opt.step(&grads, clip_scale(opt.grad_norm(&grads)?, clip_grad))?;
            r
        } else {
            opt.step_in_backward(forward_backward)?
        };
        let losses = losses.into_iter().map(|(name, l)| Ok((name, l.to_scalar::<f32>()?))).collect::<Result<_>>()?;
        Ok(Step { losses, forward: t1 - t0, backward: t2 - t1, update: t2.elapsed() })
    };
    // Dozens of short parallel sections: on the CPU the pool's workers wait awake between them.
    crate::nn::pool::awake_on(xv.device(), phases)
}

/// One optimiser step on the training rows `idx`.
pub(super) fn train_step(
    model: &LoadedModel,
    opt: &mut AdamW,
    train: &FeatureSplit,
    idx: &[usize],
    noise: &mut SeededRng,
    clip_grad: f64,
    dev: &Device,
) -> Result<Step> {
    let b = idx.len();
    let xv = Tensor::from_vec(train.gather_visual(idx), (b, train.dv), dev)?;
    let xs = Tensor::from_vec(train.gather_text(idx).context("the training split has no text features")?, (b, train.ds), dev)?;
    let y = Tensor::from_vec(train.gather_label(idx), b, dev)?;
    // Token features only for the token-level alignment: other runs never touch them.
    let tokens = if model.model.config().needs_tokens() { Some(token_batch(train, idx, dev)?) } else { None };
    step(&model.model, opt, &xv, &xs, tokens.as_ref(), &y, noise, clip_grad)
}

/// The token features of the training rows `idx`, as f32 tensors.
pub fn token_batch(train: &FeatureSplit, idx: &[usize], dev: &Device) -> Result<TokenBatch> {
    let (Some(v), Some(t)) = (&train.visual_tokens, &train.text_tokens) else { anyhow::bail!("the training split has no token features") };
    let b = idx.len();
    Ok(TokenBatch {
        visual: Tensor::from_vec(v.gather_f32(idx), (b, v.len, v.dim), dev)?,
        text: Tensor::from_vec(t.gather_f32(idx), (b, t.len, t.dim), dev)?,
        mask: Tensor::from_vec(t.gather_mask_f32(idx), (b, t.len), dev)?,
    })
}
