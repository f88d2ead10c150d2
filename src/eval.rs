//! Top-1 / top-5 accuracy on image-only input, and the small statistics the tables need.

use crate::features::FeatureSplit;
use crate::model::cdr::SamplerConfig;
use crate::model::marnet::Marnet;
use crate::rng::Noise;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Accuracy {
    pub top1: f64,
    pub top5: f64,
    pub n: usize,
}

/// Accuracy of row-major `logits` [N, C] against `labels`; ties go to the lower class index.
pub fn topk_accuracy(logits: &[f32], classes: usize, labels: &[u32]) -> Accuracy {
    let (mut hit1, mut hit5) = (0usize, 0usize);
    for (row, &y) in logits.chunks_exact(classes).zip(labels) {
        let target = row[y as usize];
        // Rank of the true class: how many classes beat it (ties before it count as beating).
        let rank = row.iter().enumerate().filter(|&(c, &v)| v > target || (v == target && c < y as usize)).count();
        hit1 += (rank == 0) as usize;
        hit5 += (rank < 5) as usize;
    }
    let n = labels.len();
    Accuracy { top1: hit1 as f64 / n as f64, top5: hit5 as f64 / n as f64, n }
}

/// Everything inference produced over a split, for metrics and plots.
pub struct SplitOutputs {
    pub logits: Vec<f32>,
    pub ema_logits: Option<Vec<f32>>,
    pub cdr_logits: Option<Vec<f32>>,
    /// The reconstructed text feature x_CDR [N, Ds] (CDR and MLP variants).
    pub x_cdr: Option<Vec<f32>>,
}

/// Runs the model on `split`'s visual features only, in batches, with a seeded sampler. Rows
/// with image keys (caches from `marnet extract`) draw their noise from per-image streams, so
/// they get the same prediction as `marnet predict` gives for the image file.
pub fn predict_split(
    model: &Marnet,
    split: &FeatureSplit,
    sampler: &SamplerConfig,
    seed: u64,
    batch: usize,
    dev: &Device,
) -> anyhow::Result<SplitOutputs> {
    let mut rng = crate::rng::stream(seed, "eval", 0);
    let (mut logits, mut ema, mut cdr, mut x_cdr) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let idx: Vec<usize> = (0..split.len()).collect();
    for chunk in idx.chunks(batch.max(1)) {
        let xv = Tensor::from_vec(split.gather_visual(chunk), (chunk.len(), split.dv), dev)?;
        // In candle's CPU thread pool: the small ops between products then run on a worker.
        let p = dev.with_context(|| {
            if split.meta.keys.len() == split.len() {
                let mut rngs: Vec<_> = chunk.iter().map(|&i| crate::rng::stream(seed, "image", split.meta.keys[i])).collect();
                model.predict(&xv, sampler, &mut Noise::PerRow(&mut rngs))
            } else {
                model.predict(&xv, sampler, &mut Noise::Shared(&mut rng))
            }
        })?;
        logits.extend(p.logits.flatten_all()?.to_vec1::<f32>()?);
        if let Some(l) = p.ema_logits {
            ema.extend(l.flatten_all()?.to_vec1::<f32>()?);
        }
        if let Some(l) = p.cdr_logits {
            cdr.extend(l.flatten_all()?.to_vec1::<f32>()?);
        }
        if let Some(x) = p.x_cdr {
            x_cdr.extend(x.flatten_all()?.to_vec1::<f32>()?);
        }
    }
    let opt = |v: Vec<f32>| if v.is_empty() { None } else { Some(v) };
    Ok(SplitOutputs { logits, ema_logits: opt(ema), cdr_logits: opt(cdr), x_cdr: opt(x_cdr) })
}

/// One row's top-1 prediction (for `marnet eval --predictions`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RowPrediction {
    pub id: String,
    pub label: u32,
    pub predicted: u32,
    pub class: String,
}

/// The top-1 class of every row of `logits` [N, C] (ties to the lower index).
pub fn row_predictions(split: &FeatureSplit, logits: &[f32], classes: &[String]) -> Vec<RowPrediction> {
    logits
        .chunks_exact(classes.len())
        .enumerate()
        .map(|(i, row)| {
            let best = (0..row.len()).fold(0, |b, c| if row[c] > row[b] { c } else { b });
            RowPrediction { id: split.meta.ids[i].clone(), label: split.label[i], predicted: best as u32, class: classes[best].clone() }
        })
        .collect()
}

/// Accuracy of the final head and, where present, of the EMA and CDR heads alone.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    pub final_head: Accuracy,
    pub ema_head: Option<Accuracy>,
    pub cdr_head: Option<Accuracy>,
}

pub fn evaluate(
    model: &Marnet,
    split: &FeatureSplit,
    sampler: &SamplerConfig,
    seed: u64,
    batch: usize,
    dev: &Device,
) -> anyhow::Result<EvalResult> {
    let out = predict_split(model, split, sampler, seed, batch, dev)?;
    Ok(accuracy(&out, split, model.config().classes))
}

/// Top-1 / top-5 of each head's outputs against `split`'s labels.
pub fn accuracy(out: &SplitOutputs, split: &FeatureSplit, classes: usize) -> EvalResult {
    let acc = |l: &Vec<f32>| topk_accuracy(l, classes, &split.label);
    EvalResult {
        final_head: acc(&out.logits),
        ema_head: out.ema_logits.as_ref().map(acc),
        cdr_head: out.cdr_logits.as_ref().map(acc),
    }
}

/// Mean and sample standard deviation (0 for a single value).
pub fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return (mean, 0.0);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// `"85.40 ± 0.12"` in percent.
pub fn pct_mean_std(xs: &[f64]) -> String {
    let (m, s) = mean_std(xs);
    format!("{:.2} ± {:.2}", 100.0 * m, 100.0 * s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topk_counts_ranks() {
        // 3 rows, 6 classes.
        let logits = [
            0.9, 0.1, 0.0, 0.0, 0.0, 0.0, // true 0: top-1
            0.6, 0.5, 0.4, 0.3, 0.2, 0.1, // true 4: rank 4, top-5 only
            0.6, 0.5, 0.4, 0.3, 0.2, 0.1, // true 5: rank 5, miss
        ];
        let a = topk_accuracy(&logits, 6, &[0, 4, 5]);
        assert_eq!((a.top1, a.top5, a.n), (1.0 / 3.0, 2.0 / 3.0, 3));
    }

    #[test]
    fn mean_std_of_known_values() {
        let (m, s) = mean_std(&[1.0, 2.0, 3.0]);
        assert!((m - 2.0).abs() < 1e-12 && (s - 1.0).abs() < 1e-12);
        assert_eq!(mean_std(&[0.5]), (0.5, 0.0));
    }
}
