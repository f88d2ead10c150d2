//! The model behind [`super::pipeline`]'s inference thread: [`Classify`], and its
//! implementation for a bundle's [`Predictor`].

use crate::bundle::{ClassProb, Predictor};
use crate::data::image::Prepared;
use anyhow::Result;
use std::time::{Duration, Instant};

/// The heaviest stage: top-k classes of prepared images, where an image's answer does not
/// depend on the other images in its batch.
pub trait Classify {
    fn top_k(&self, images: &[&Prepared], k: usize) -> Result<Classified>;
}

/// One forward pass's answers, and how long each named stage of it took.
pub struct Classified {
    pub tops: Vec<Vec<ClassProb>>,
    pub stages: Vec<(&'static str, Duration)>,
}

impl Classify for Predictor {
    /// Stages `encoder` and `heads` (on a GPU, work the encoder queued may finish in `heads`).
    fn top_k(&self, images: &[&Prepared], k: usize) -> Result<Classified> {
        if images.is_empty() {
            return Ok(Classified { tops: vec![], stages: vec![] });
        }
        let t0 = Instant::now();
        let xv = self.features(images)?;
        let t1 = Instant::now();
        let probs = self.head_probabilities(&xv, images)?;
        let stages = vec![("encoder", t1 - t0), ("heads", t1.elapsed())];
        Ok(Classified { tops: probs.iter().map(|row| crate::bundle::top_k(row, &self.config.classes, k)).collect(), stages })
    }
}
