//! The trainable MARNet head: EMA (section 3.2), CDR (3.3), fusion (3.4).

pub mod activation;
pub mod cdr;
pub mod diffusion;
pub mod ema;
pub mod fusion;
pub mod linear;
pub mod marnet;
pub mod text_scale;

pub use linear::backward;

/// Variables whose name contains this are state, not parameters: saved with the weights, never
/// updated by the optimiser.
pub const BUFFER: &str = "buffer.";
