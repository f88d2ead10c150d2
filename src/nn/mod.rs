//! Building blocks under both the trainable head (`model`, `align`) and the frozen encoders
//! (`encoders`): the linear layer and activations as CPU ops with hand-written backward passes,
//! the CPU kernels they run on (matrix products, transposes, views of candle's storage, the flop
//! counter), and normalisation helpers. Nothing here imports from the layers above, so the method
//! files read like the paper and the performance kernels sit apart.

pub mod activation;
pub mod attention;
pub mod conv;
pub mod cpu;
pub mod depthwise;
pub mod grads;
pub mod im2col;
pub mod linear;
pub mod loss;
pub mod max_pool;
pub mod norm;
pub mod padded;
pub mod pool;
pub mod stages;
pub mod vmath;

pub use grads::backward;

/// Variables whose name contains this are state, not parameters: saved with the weights, never
/// updated by the optimiser.
pub const BUFFER: &str = "buffer.";
