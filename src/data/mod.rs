//! Datasets and the image pipeline that feed the encoders.

pub mod emoji;
pub mod image;

use std::path::PathBuf;

/// One image with its label and, for training, its text.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Traces the row back to its file (e.g. `google/1f32d.png`).
    pub id: String,
    pub image: PathBuf,
    pub label: u32,
    pub text: Option<String>,
}

/// A dataset split three ways, with its class names.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub name: String,
    pub classes: Vec<String>,
    pub train: Vec<Sample>,
    pub val: Vec<Sample>,
    pub test: Vec<Sample>,
}
