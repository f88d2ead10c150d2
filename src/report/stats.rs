//! The numbers behind the figures, written as `figures.json` and shown in the page.

use serde::Serialize;

/// Numbers behind the figures (`figures.json`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct FigureStats {
    /// k-NN class purity of the t-SNE layouts of x_v and x_CDR (k = 5, or less for small classes).
    pub tsne_purity_xv: Option<f64>,
    pub tsne_purity_xcdr: Option<f64>,
    pub tsne_points: usize,
    pub tsne_k: usize,
    /// Mean max-probability on test of the baseline and of the CDR head.
    pub mean_max_prob_baseline: Option<f64>,
    pub mean_max_prob_cdr: Option<f64>,
    /// The classes in fig3_tsne: those with the most test images (`--tsne-classes`), and the
    /// classes with test images that it leaves out.
    pub tsne_classes: Vec<String>,
    pub tsne_classes_left_out: Vec<String>,
    /// Figure 4's test images, and how they were chosen.
    pub examples: Vec<ExampleRecord>,
    pub examples_rule: String,
    /// Whose test images Figure 4 shows: the split (the first fold's) and the seed.
    pub examples_source: String,
    /// Figures not drawn (file stem) and why.
    pub skipped: Vec<(String, String)>,
}

/// One of Figure 4's test images: its id, true class and both heads' top-5.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ExampleRecord {
    pub id: String,
    pub true_class: String,
    pub heads: [Vec<(String, f32)>; 2],
    pub heads_differ: bool,
    /// The image, small, as a `data:` URI for the page (not in figures.json).
    #[serde(skip)]
    pub thumbnail: Option<String>,
}
