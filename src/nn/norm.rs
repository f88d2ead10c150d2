//! Normalisation helpers shared by the head, the alignment losses and the frozen encoders.

use candle_core::{D, Result, Tensor};

/// Rows scaled to unit L2 norm (norms clamped at 1e-12, as `F.normalize`).
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.maximum(1e-12)?;
    x.broadcast_div(&norm)
}
