//! What every alignment loss is given: one batch's embeddings, labels and logits
//! ([`AlignBatch`]), and its rows grouped by class ([`class_groups`]).

use super::team_tokens::TokenBatch;
use candle_core::Tensor;

/// One batch as an alignment loss sees it.
pub struct AlignBatch<'a> {
    /// Projected visual embeddings [B, d].
    pub v: &'a Tensor,
    /// Projected text embeddings [B, d].
    pub s: &'a Tensor,
    /// Class labels, host copy.
    pub labels: &'a [u32],
    /// Learnable temperature (scalar tensor), present for the similarity-based losses.
    pub tau: Option<&'a Tensor>,
    /// Classifier logits of the visual and text embeddings (SSAN's soft-label term, SWD's
    /// decisions).
    pub v_logits: &'a Tensor,
    pub s_logits: &'a Tensor,
    /// The batch's token features (token-level TEAM only).
    pub tokens: Option<&'a TokenBatch>,
}

/// Row indices of each class present in `labels`, in order of first appearance.
pub fn class_groups(labels: &[u32]) -> Vec<(u32, Vec<u32>)> {
    let mut groups: Vec<(u32, Vec<u32>)> = Vec::new();
    for (i, &y) in labels.iter().enumerate() {
        match groups.iter_mut().find(|(c, _)| *c == y) {
            Some((_, rows)) => rows.push(i as u32),
            None => groups.push((y, vec![i as u32])),
        }
    }
    groups
}
