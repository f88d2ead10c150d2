//! The trainable MARNet head: EMA (section 3.2), CDR (3.3), fusion (3.4). The layers and CPU
//! kernels they are built from live below, in [`crate::nn`].

pub mod cdr;
pub mod denoiser;
pub mod diffusion;
pub mod ema;
pub mod fusion;
pub mod marnet;
pub mod marnet_config;
pub mod text_scale;
