//! Cross-modal alignment losses (paper Table 1). ITA is the loss EMA uses.

pub mod ita;
