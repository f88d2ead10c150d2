//! Frozen encoders that turn raw inputs into features: text (BERT layout, e.g. MiniLM) and
//! images (EfficientNet-Lite0; more backbones to come). Each loads local weights only.

pub mod efficientnet_lite;
pub mod text;
pub mod torch_legacy;
