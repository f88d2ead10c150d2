//! EMA: embedding matching alignment (paper section 3.2).

use crate::align::ita::ita_loss;
use super::cdr::leaky_relu;
use candle_core::{Module, Result, Tensor};
use super::linear::{Linear, linear};
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
}

#[derive(Debug, Clone)]
pub struct Ema {
    ev: Linear,
    es: Linear,
    log_tau: Tensor,
}

impl Ema {
    pub fn load(vb: VarBuilder, cfg: &EmaConfig) -> Result<Self> {
        Ok(Self {
            ev: linear(cfg.dv, cfg.d, vb.pp("ev"))?,
            es: linear(cfg.ds, cfg.d, vb.pp("es"))?,
            log_tau: vb.get_with_hints((), "log_tau", Init::Const(TAU_INIT.ln()))?,
        })
    }

    /// Eq. 7: `x_v' = g(E_v(x_v))`, which is x_EMA.
    pub fn embed_visual(&self, xv: &Tensor) -> Result<Tensor> {
        leaky_relu(&self.ev.forward(xv)?)
    }

    /// Eq. 8: `x_s' = g(E_s(x_s))`.
    pub fn embed_text(&self, xs: &Tensor) -> Result<Tensor> {
        leaky_relu(&self.es.forward(xs)?)
    }

    /// The learnable temperature tau (stored as its log).
    pub fn tau(&self) -> Result<Tensor> {
        self.log_tau.exp()
    }

    /// Eq. 11 on a batch; returns `(x_EMA, L_ITA)`.
    pub fn align(&self, xv: &Tensor, xs: &Tensor) -> Result<(Tensor, Tensor)> {
        let v = self.embed_visual(xv)?;
        let loss = ita_loss(&v, &self.embed_text(xs)?, &self.tau()?)?;
        Ok((v, loss))
    }
}
