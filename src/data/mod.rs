//! Datasets and the image pipeline that feed the encoders.

pub mod image;
