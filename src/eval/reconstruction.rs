//! How well x_CDR reconstructs the text feature: its cosine to the row's x_s and whether it lies
//! nearest to its own class's mean text.

use super::accuracy::rank_of;
use crate::features::FeatureSplit;
use anyhow::Result;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

/// The class means of a split's text features: what a reconstruction x_CDR is matched against.
pub struct TextReference {
    /// Row-major [classes, ds], each mean scaled to unit length (zero stays zero).
    means: Vec<f32>,
    ds: usize,
}

impl TextReference {
    /// Class means of `split`'s text (classes without rows get a zero mean); `None` without text.
    pub fn class_means(split: &FeatureSplit, classes: usize) -> Option<Self> {
        let text = split.text.as_ref()?;
        let ds = split.ds;
        let mut means = vec![0f32; classes * ds];
        let mut counts = vec![0usize; classes];
        for (row, &y) in text.chunks_exact(ds).zip(&split.label) {
            counts[y as usize] += 1;
            means[y as usize * ds..][..ds].iter_mut().zip(row).for_each(|(m, x)| *m += x);
        }
        for (c, &n) in counts.iter().enumerate() {
            let m = &mut means[c * ds..][..ds];
            m.iter_mut().for_each(|m| *m /= n.max(1) as f32);
            let norm = m.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            m.iter_mut().for_each(|x| *x /= norm);
        }
        Some(Self { means, ds })
    }
}

/// How well x_CDR reconstructs the text feature x_s (eq. 19's target).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Reconstruction {
    /// Mean cosine similarity between x_CDR and the row's true x_s.
    pub cosine: f64,
    /// Share of rows whose x_CDR is closest (cosine) to its own class's mean text feature.
    pub class_match: f64,
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64) * (*y as f64)).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-12)
}

/// Reconstruction quality of `x_cdr` [N, ds] against `split`'s text and the class means (`None`
/// without text; an error if `x_cdr` is not whole rows of ds). Every row's similarity to every
/// class mean comes from one matrix product per block of rows (a dot product per row and class,
/// each a chain of ds dependent additions, took 3.5 s of `marnet eval` on a Vireo-size test split
/// of 33,154 rows); the products' rounding can differ from a plain sum's only on near-ties.
pub fn reconstruction(x_cdr: &[f32], split: &FeatureSplit, reference: &TextReference) -> Result<Option<Reconstruction>> {
    let Some(text) = split.text.as_ref() else { return Ok(None) };
    let ds = reference.ds;
    let means = Tensor::from_slice(&reference.means, (reference.means.len() / ds, ds), &Device::Cpu)?;
    let (mut cos, mut hits) = (0f64, 0usize);
    for (block, (xb, tb)) in x_cdr.chunks(BLOCK_ROWS * ds).zip(text.chunks(BLOCK_ROWS * ds)).enumerate() {
        // The means are unit length: ranking by x . m is ranking by cosine.
        let sims = Tensor::from_slice(xb, (xb.len() / ds, ds), &Device::Cpu)?.matmul(&means.t()?)?;
        let labels = split.label.get(block * BLOCK_ROWS..).unwrap_or_default();
        for (((x, xs), sims), &y) in xb.chunks_exact(ds).zip(tb.chunks_exact(ds)).zip(sims.to_vec2::<f32>()?).zip(labels) {
            cos += cosine(x, xs);
            hits += (rank_of(&sims, y) == 0) as usize;
        }
    }
    let n = split.len().max(1) as f64;
    Ok(Some(Reconstruction { cosine: cos / n, class_match: hits as f64 / n }))
}

/// Rows of x_CDR per product in [`reconstruction`] (bounds the copies it makes).
const BLOCK_ROWS: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconstruction_scores_cosine_and_class_match() {
        use crate::features::{FeatureSplit, SplitMeta};
        // Two classes with orthogonal text; the second row's x_CDR points at the wrong class.
        let split = FeatureSplit {
            visual: vec![0.0; 4],
            text: Some(vec![1.0, 0.0, 0.0, 2.0]),
            label: vec![0, 1],
            dv: 2,
            ds: 2,
            meta: SplitMeta::default(),
            visual_tokens: None,
            text_tokens: None,
        };
        let reference = TextReference::class_means(&split, 2).unwrap();
        let r = reconstruction(&[3.0, 0.0, 2.0, 1.0], &split, &reference).unwrap().unwrap();
        assert!((r.cosine - (1.0 + 0.2f64.sqrt()) / 2.0).abs() < 1e-9, "{r:?}");
        // Row 2 is closer to class 0's text (cosine 0.89 vs 0.45): a miss.
        assert_eq!(r.class_match, 0.5);
    }

    /// Over more rows than one product takes, the blocks' labels line up with their rows: each
    /// row's x_CDR is one class's text direction, its own class's on four rows in five.
    #[test]
    fn class_match_over_several_blocks_counts_each_row_against_its_own_label() {
        use crate::features::SplitMeta;
        let (n, classes) = (2 * BLOCK_ROWS + 1000, 3);
        let label: Vec<u32> = (0..n).map(|i| (i * 7 % classes) as u32).collect();
        let one_hot = |c: usize| (0..classes).map(move |j| if j == c { 1.0 } else { 0.0 });
        let text: Vec<f32> = label.iter().flat_map(|&y| one_hot(y as usize)).collect();
        let aimed = |i: usize| if i.is_multiple_of(5) { (label[i] as usize + 1) % classes } else { label[i] as usize };
        let x_cdr: Vec<f32> = (0..n).flat_map(|i| one_hot(aimed(i))).collect();
        let want = (0..n).filter(|&i| aimed(i) == label[i] as usize).count() as f64 / n as f64;
        let split = FeatureSplit {
            visual: vec![0.0; n],
            text: Some(text),
            label: label.clone(),
            dv: 1,
            ds: classes,
            meta: SplitMeta::default(),
            visual_tokens: None,
            text_tokens: None,
        };
        let reference = TextReference::class_means(&split, classes).unwrap();
        let r = reconstruction(&x_cdr, &split, &reference).unwrap().unwrap();
        assert_eq!(r.class_match, want);
        assert!((r.cosine - want).abs() < 1e-12, "cosine 1 on the aimed rows, 0 on the others: {}", r.cosine);
        // Not whole rows: an error, not a silent drop.
        assert!(reconstruction(&x_cdr[1..], &split, &reference).is_err());
    }
}
