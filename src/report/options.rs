//! The flags of `report` (and `demo`) that say what it draws.

use anyhow::Result;
use std::path::{Path, PathBuf};

/// What `report` draws (the flags of `report` and `demo`).
#[derive(Debug, Clone, clap::Args)]
pub struct ReportOptions {
    /// TrueType font for the figures [default: DejaVuSans.ttf in the assets folder, found as
    /// for `extract --assets`].
    #[arg(long)]
    pub font: Option<PathBuf>,
    /// Classes in the t-SNE figure (Fig. 3): those with the most test images.
    #[arg(long, default_value_t = 5, value_parser = crate::options::at_least_one::<usize>)]
    pub tsne_classes: usize,
    /// Test images per class in the t-SNE figure, at most (the figure needs 2 per class).
    #[arg(long, default_value_t = 100, value_parser = crate::options::at_least_two::<usize>)]
    pub tsne_per_class: usize,
    /// Test images in the top-5 figure (Fig. 4).
    #[arg(long, default_value_t = 6, value_parser = crate::options::at_least_one::<usize>)]
    pub examples: usize,
    /// Show progress bars.
    #[arg(skip)]
    pub progress: bool,
}

impl ReportOptions {
    /// The figures' font: `--font`, else the one in `assets` (else in the folder
    /// [`crate::assets::resolve`] finds).
    pub fn font(&self, assets: Option<&Path>) -> Result<PathBuf> {
        match &self.font {
            Some(f) => Ok(f.clone()),
            None => Ok(crate::assets::resolve(assets)?.join(crate::assets::FONT)),
        }
    }
}

impl Default for ReportOptions {
    fn default() -> Self {
        crate::options::defaults()
    }
}
