//! The interface every visual backbone offers the rest of marnet.

use crate::data::image::Preprocess;
use candle_core::{Result, Tensor};

/// A frozen visual backbone: preprocessing and a pooled feature per image (shared by threads:
/// the Python module runs it without the GIL).
pub trait ImageEncoder: Send + Sync {
    fn name(&self) -> &str;
    fn preprocess(&self) -> Preprocess;
    /// [N, 3, H, W] -> [N, D].
    fn features(&self, images: &Tensor) -> Result<Tensor>;
    /// [N, 3, H, W] -> the pooled feature [N, D], equal to [`Self::features`], and the tokens
    /// before pooling [N, T, Dt] (`extract --tokens`). Encoders without a token output say so.
    fn features_and_tokens(&self, images: &Tensor) -> Result<(Tensor, Tensor)> {
        let _ = images;
        Err(candle_core::Error::Msg(format!("visual encoder `{}` has no token output (--tokens works with efficientnet-lite0/2, vit and swin_t)", self.name())))
    }
}
