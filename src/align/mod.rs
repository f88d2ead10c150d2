//! Cross-modal alignment losses compared in the paper's Table 1. Each plugs in where EMA's ITA
//! loss sits: on the projected visual and text embeddings of a batch, with class labels.

mod batch;
pub mod cdd;
pub mod ita;
pub mod sdm;
pub mod ssan;
pub mod swd;
pub mod team;
pub mod team_tokens;

use crate::rng::SeededRng;
pub use batch::{AlignBatch, class_groups};
use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Alignment {
    /// Instance-wise symmetric InfoNCE (MGCA); EMA's own loss.
    Ita,
    /// Similarity distribution matching (IRRA), labels as identities.
    Sdm,
    /// Global InfoNCE plus sampled hard negatives (TEAM, pooled form).
    Team,
    /// TEAM at the token level: text tokens attend over image tokens, token-level matching
    /// scores with hard negatives, plus the global InfoNCE; needs a token cache.
    #[serde(rename = "team-tokens")]
    TeamTokens,
    /// Sliced Wasserstein discrepancy between the two branches' class-probability outputs.
    Swd,
    /// Class-centroid alignment with momentum centroids and soft labels (SSAN).
    Ssan,
    /// Contrastive domain discrepancy: class-aware multi-kernel MMD (CAN).
    Cdd,
}

impl Alignment {
    /// The methods of Table 1 that work on pooled features (`compare`'s default): every one but
    /// [`Alignment::TeamTokens`], which needs a token cache (`compare --methods team-tokens`).
    pub const ALL: [Alignment; 6] = [Alignment::Swd, Alignment::Ssan, Alignment::Cdd, Alignment::Sdm, Alignment::Team, Alignment::Ita];

    pub fn name(self) -> &'static str {
        match self {
            Alignment::Ita => "ita",
            Alignment::Sdm => "sdm",
            Alignment::Team => "team",
            Alignment::TeamTokens => "team-tokens",
            Alignment::Swd => "swd",
            Alignment::Ssan => "ssan",
            Alignment::Cdd => "cdd",
        }
    }

    /// Whether the loss is on similarities scaled by the learnable temperature.
    pub fn uses_temperature(self) -> bool {
        matches!(self, Alignment::Ita | Alignment::Sdm | Alignment::Team | Alignment::TeamTokens)
    }

    /// Whether the loss trains on the cache's token features (and the training step must gather them).
    pub fn needs_tokens(self) -> bool {
        self == Alignment::TeamTokens
    }

    /// Whether the loss may draw from the training step's random stream (sampled negatives,
    /// random projections).
    pub fn draws_noise(self) -> bool {
        matches!(self, Alignment::Team | Alignment::TeamTokens | Alignment::Swd)
    }

    /// The row label used in Table 1.
    pub fn table_row(self) -> &'static str {
        match self {
            Alignment::Ita => "ITA",
            Alignment::Sdm => "SDM",
            Alignment::Team => "TEAM",
            Alignment::TeamTokens => "TEAM (tokens)",
            Alignment::Swd => "SWD",
            Alignment::Ssan => "SSAN",
            Alignment::Cdd => "CDD",
        }
    }
}

/// The learned state some losses carry: SSAN's running centroids, token-level TEAM's projections.
#[derive(Default, Clone, Copy)]
pub struct AlignState<'a> {
    pub ssan: Option<&'a ssan::Centroids>,
    pub team_tokens: Option<&'a team_tokens::TeamTokens>,
}

/// The alignment loss of `kind` on a batch. SSAN also updates its running centroids.
pub fn alignment_loss(kind: Alignment, b: &AlignBatch, state: AlignState, rng: &mut SeededRng) -> Result<Tensor> {
    let tau = || b.tau.ok_or_else(|| candle_core::Error::Msg(format!("{}: temperature missing", kind.name())));
    match kind {
        Alignment::Ita => ita::ita_loss(b.v, b.s, tau()?),
        Alignment::Sdm => sdm::sdm_loss(b.v, b.s, b.labels, tau()?),
        Alignment::Team => team::team_loss(b.v, b.s, b.labels, tau()?, rng),
        Alignment::TeamTokens => {
            let m = state.team_tokens.ok_or_else(|| candle_core::Error::Msg("team-tokens: token projections missing".into()))?;
            let tokens = b.tokens.ok_or_else(|| candle_core::Error::Msg("team-tokens: the batch has no token features".into()))?;
            m.loss(b.v, b.s, tokens, b.labels, tau()?, rng)
        }
        Alignment::Swd => {
            let probs = |l: &Tensor| candle_nn::ops::softmax(l, candle_core::D::Minus1);
            swd::swd_loss(&probs(b.v_logits)?, &probs(b.s_logits)?, swd::DEFAULT_PROJECTIONS, rng)
        }
        Alignment::Ssan => {
            let c = state.ssan.ok_or_else(|| candle_core::Error::Msg("ssan: centroids missing".into()))?;
            c.loss(b)
        }
        Alignment::Cdd => cdd::cdd_loss(b.v, b.s, b.labels),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// SWD compares decisions: embeddings that differ but are classified alike cost nothing,
    /// and the loss is SWD of the two branches' softmax outputs.
    #[test]
    fn swd_is_on_the_branches_class_probabilities() -> Result<()> {
        let dev = Device::Cpu;
        let v = Tensor::new(&[[1f32, 0.], [0., 1.]], &dev)?;
        let s = Tensor::new(&[[5f32, -3.], [2., 7.]], &dev)?;
        let logits = Tensor::new(&[[2f32, 0., -1.], [0., 1., 3.]], &dev)?;
        let batch = |v_logits, s_logits| AlignBatch { v: &v, s: &s, labels: &[0, 1], tau: None, v_logits, s_logits, tokens: None };
        let same = alignment_loss(Alignment::Swd, &batch(&logits, &logits), AlignState::default(), &mut crate::rng::stream(0, "t", 0))?;
        assert_eq!(same.to_scalar::<f32>()?, 0.0);
        let other = Tensor::new(&[[0f32, 3., 0.], [1., 1., 1.]], &dev)?;
        let got = alignment_loss(Alignment::Swd, &batch(&logits, &other), AlignState::default(), &mut crate::rng::stream(0, "t", 0))?.to_scalar::<f32>()?;
        let probs = |l: &Tensor| candle_nn::ops::softmax(l, candle_core::D::Minus1);
        let want = swd::swd_loss(&probs(&logits)?, &probs(&other)?, swd::DEFAULT_PROJECTIONS, &mut crate::rng::stream(0, "t", 0))?.to_scalar::<f32>()?;
        assert!(got > 0.0 && (got - want).abs() < 1e-7, "{got} vs {want}");
        Ok(())
    }
}
