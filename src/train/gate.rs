//! MARNet's late-fusion weight, fitted on validation after training.

use crate::checkpoint::{self, Checkpoint};
use crate::config::TrainConfig;
use crate::features::FeatureSplit;
use anyhow::{Context, Result};
use candle_core::Device;
use std::path::Path;

/// Fits MARNet's late-fusion weight w (see `MarnetConfig::gate`) on `val` for the checkpoint in
/// `best` and saves it there: the w in {0, 0.1, ..., 1} with the best val top-1 (ties: the
/// largest, the most fusion). One inference pass: the heads' outputs do not depend on w, so
/// each candidate mixes them on the host. Returns w and its val top-1.
pub(super) fn fit_gate(best: &Path, val: &FeatureSplit, cfg: &TrainConfig, dev: &Device) -> Result<(f64, f64)> {
    let ck = Checkpoint::open(best, dev)?;
    let m = ck.model(dev)?;
    m.model.set_gate(1.0)?;
    let out = crate::eval::predict_split(&m.model, val, &cfg.inference(), dev)?;
    let ema = out.ema_logits.context("a gated model has an EMA head")?;
    let classes = m.model.config().classes;
    let (p_ema, p_fused) = (softmax_rows(&ema, classes), softmax_rows(&out.logits, classes));
    let mut chosen = (f64::NEG_INFINITY, 1.0);
    for k in 0..=10 {
        let w = k as f64 / 10.0;
        let mixed: Vec<f32> = p_ema.iter().zip(&p_fused).map(|(a, b)| ((1.0 - w) * a + w * b) as f32).collect();
        let top1 = crate::eval::topk_accuracy(&mixed, classes, &val.label).top1;
        if top1 >= chosen.0 {
            chosen = (top1, w);
        }
    }
    m.model.set_gate(chosen.1)?;
    let mut metrics = ck.metrics.clone();
    metrics["gate"] = chosen.1.into();
    checkpoint::save(&ck.dir, &ck.run, &m, vec![], &metrics)?;
    Ok((chosen.1, chosen.0))
}

/// Row-wise softmax of `logits` [N, C], in f64.
fn softmax_rows(logits: &[f32], classes: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(logits.len());
    for row in logits.chunks_exact(classes) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f64> = row.iter().map(|&v| ((v - max) as f64).exp()).collect();
        let z: f64 = e.iter().sum();
        out.extend(e.iter().map(|x| x / z));
    }
    out
}
