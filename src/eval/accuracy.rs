//! Top-1 / top-5 accuracy of a head's scores against the labels.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Accuracy {
    pub top1: f64,
    pub top5: f64,
    pub n: usize,
    /// Mean over rows of the largest softmax probability (the head's confidence).
    #[serde(default)]
    pub mean_max_prob: f64,
    /// Rows whose outputs are not all finite (a diverged model): counted as misses.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub non_finite: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Rank of the true class in a row of scores: how many classes beat it (ties before it count
/// as beating, so ties go to the lower class index).
pub(super) fn rank_of(row: &[f32], y: u32) -> usize {
    // A row with NaN or infinite scores is a miss, never a hit (NaN beats nothing).
    if row.iter().any(|v| !v.is_finite()) {
        return row.len();
    }
    let target = row[y as usize];
    row.iter().enumerate().filter(|&(c, &v)| v > target || (v == target && c < y as usize)).count()
}

/// Accuracy of row-major `logits` [N, C] against `labels`; ties go to the lower class index.
pub fn topk_accuracy(logits: &[f32], classes: usize, labels: &[u32]) -> Accuracy {
    let (mut hit1, mut hit5, mut conf, mut non_finite) = (0usize, 0usize, 0f64, 0usize);
    for (row, &y) in logits.chunks_exact(classes).zip(labels) {
        if row.iter().any(|v| !v.is_finite()) {
            non_finite += 1;
            continue;
        }
        let rank = rank_of(row, y);
        hit1 += (rank == 0) as usize;
        hit5 += (rank < 5) as usize;
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        conf += 1.0 / row.iter().map(|&v| ((v - max) as f64).exp()).sum::<f64>();
    }
    let n = labels.len();
    Accuracy { top1: hit1 as f64 / n as f64, top5: hit5 as f64 / n as f64, n, mean_max_prob: conf / n as f64, non_finite }
}

/// Per row of `logits` [N, C]: whether the top-1 class is the label (for paired tests).
pub fn top1_hits(logits: &[f32], classes: usize, labels: &[u32]) -> Vec<bool> {
    logits.chunks_exact(classes).zip(labels).map(|(row, &y)| rank_of(row, y) == 0).collect()
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
        assert_eq!((a.top1, a.top5, a.n, a.non_finite), (1.0 / 3.0, 2.0 / 3.0, 3, 0));
        // A diverged model's NaN scores are misses, not hits (NaN compares false with everything).
        let nan = [f32::NAN; 6];
        let d = topk_accuracy(&nan, 6, &[2]);
        assert_eq!((d.top1, d.top5, d.non_finite), (0.0, 0.0, 1));
        assert!(!top1_hits(&nan, 6, &[0])[0]);
        assert_eq!(top1_hits(&logits, 6, &[0, 4, 5]), vec![true, false, false]);
        // Row 1: softmax max = 1 / sum(exp(v - 0.9)).
        let z1: f64 = [0.9f64, 0.1, 0.0, 0.0, 0.0, 0.0].iter().map(|v| (v - 0.9).exp()).sum();
        let z2: f64 = [0.6f64, 0.5, 0.4, 0.3, 0.2, 0.1].iter().map(|v| (v - 0.6).exp()).sum();
        let want = (1.0 / z1 + 2.0 / z2) / 3.0;
        assert!((a.mean_max_prob - want).abs() < 1e-6, "{} vs {want}", a.mean_max_prob);
    }
}
