//! EMA: embedding matching alignment (paper section 3.2), with the alignment loss selectable
//! among the Table 1 methods (ITA is the paper's EMA).

use crate::align::team_tokens::{TeamTokens, TokenBatch, TokenDims};
use crate::align::{AlignBatch, AlignState, Alignment, alignment_loss, ssan::Centroids};
use crate::nn::activation::Activation;
use crate::nn::linear::{Linear, linear};
use crate::rng::SeededRng;
use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

/// Initial temperature of eq. 9-10.
pub const TAU_INIT: f64 = 0.07;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EmaConfig {
    pub dv: usize,
    pub ds: usize,
    /// Dimension d of the shared space.
    pub d: usize,
    pub classes: usize,
    pub align: Alignment,
    /// Widths of the cached tokens (token-level alignments only).
    pub tokens: Option<TokenDims>,
}

#[derive(Debug)]
pub struct Ema {
    ev: Linear,
    es: Linear,
    /// log tau, for the similarity-based alignment losses only.
    log_tau: Option<Tensor>,
    cls: Linear,
    align: Alignment,
    ssan: Option<Centroids>,
    /// Token-level TEAM's projections and attention.
    team_tokens: Option<TeamTokens>,
}

/// What a training batch yields: x_EMA, its class logits, and the alignment loss.
pub struct EmaOutput {
    pub x_ema: Tensor,
    pub logits: Tensor,
    pub align_loss: Tensor,
}

impl Ema {
    pub fn load(vb: VarBuilder, cfg: &EmaConfig) -> Result<Self> {
        let ssan = match cfg.align {
            Alignment::Ssan => Some(Centroids::load(vb.pp("ssan"), cfg.classes, cfg.d)?),
            _ => None,
        };
        let team_tokens = match cfg.align {
            Alignment::TeamTokens => {
                let dims = cfg.tokens.ok_or_else(|| candle_core::Error::Msg("--align team-tokens: the token widths of the cache are not set".into()))?;
                Some(TeamTokens::load(vb.pp("team_tokens"), dims, cfg.d)?)
            }
            _ => None,
        };
        Ok(Self {
            ev: linear(cfg.dv, cfg.d, vb.pp("ev"))?,
            es: linear(cfg.ds, cfg.d, vb.pp("es"))?,
            log_tau: match cfg.align.uses_temperature() {
                true => Some(vb.get_with_hints((), "log_tau", Init::Const(TAU_INIT.ln()))?),
                false => None,
            },
            cls: linear(cfg.d, cfg.classes, vb.pp("cls"))?,
            align: cfg.align,
            ssan,
            team_tokens,
        })
    }

    /// Eq. 7: `x_v' = g(E_v(x_v))`, which is x_EMA.
    pub fn embed_visual(&self, xv: &Tensor) -> Result<Tensor> {
        Activation::Leaky.apply(&self.ev.forward(xv)?)
    }

    /// Eq. 8: `x_s' = g(E_s(x_s))`.
    pub fn embed_text(&self, xs: &Tensor) -> Result<Tensor> {
        Activation::Leaky.apply(&self.es.forward(xs)?)
    }

    /// The classifier on x_EMA whose cross-entropy is eq. 12.
    pub fn classify(&self, x_ema: &Tensor) -> Result<Tensor> {
        self.cls.forward(x_ema)
    }

    /// The learnable temperature tau (stored as its log), if the alignment loss uses one.
    pub fn tau(&self) -> Result<Option<Tensor>> {
        self.log_tau.as_ref().map(|t| t.exp()).transpose()
    }

    /// Training forward on a batch: x_EMA, its logits and the alignment loss (eq. 11 for ITA).
    /// `tokens`: the batch's token features, for the token-level alignment (ignored otherwise).
    pub fn forward_train(&self, xv: &Tensor, xs: &Tensor, tokens: Option<&TokenBatch>, labels: &[u32], rng: &mut SeededRng) -> Result<EmaOutput> {
        let v = self.embed_visual(xv)?;
        let s = self.embed_text(xs)?;
        let logits = self.classify(&v)?;
        let s_logits = match self.align {
            Alignment::Ssan | Alignment::Swd => self.classify(&s)?,
            _ => logits.clone(),
        };
        let tau = self.tau()?;
        let batch = AlignBatch { v: &v, s: &s, labels, tau: tau.as_ref(), v_logits: &logits, s_logits: &s_logits, tokens };
        let state = AlignState { ssan: self.ssan.as_ref(), team_tokens: self.team_tokens.as_ref() };
        let align_loss = alignment_loss(self.align, &batch, state, rng)?;
        Ok(EmaOutput { x_ema: v, logits, align_loss })
    }
}
