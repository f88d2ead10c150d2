//! What every dataset reader produces: samples (an image, its label and text) in three splits.

use anyhow::Result;
use std::path::PathBuf;

/// Marks a row id as a training-only image (`google/train-only/1f44b-1f3fb.png`, emoji-all's
/// skin-tone variants): a fold (`features::folds`) keeps it in train when its group trains, and drops it otherwise.
pub const TRAIN_ONLY: &str = "train-only/";

/// One image with its label and, for training, its text.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Traces the row back to its file (e.g. `google/1f32d.png`).
    pub id: String,
    pub image: PathBuf,
    pub label: u32,
    pub text: Option<String>,
    /// The row's domain (a manifest's `group`) for leave-one-group-out folds; `None`: the first
    /// path component of `id` ([`crate::features::folds`]).
    pub group: Option<String>,
    /// Where the row is declared (`manifest.jsonl:12`), for messages; empty if nowhere.
    pub origin: String,
}

impl Sample {
    /// `` `id` `` and, when known, where it is declared: for messages.
    pub fn describe(&self) -> String {
        match self.origin.is_empty() {
            true => format!("`{}`", self.id),
            false => format!("`{}` ({})", self.id, self.origin),
        }
    }
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

/// The samples of a split that `limit` keeps ([`Dataset::limited`]): its first `limit`, in order.
pub fn limited_rows(split: &[Sample], limit: Option<usize>) -> &[Sample] {
    &split[..limit.unwrap_or(usize::MAX).min(split.len())]
}

impl Dataset {
    /// Every class needs at least one training sample (a class never seen in training cannot
    /// be learned, and usually means a label typo).
    pub fn check_classes(&self) -> Result<()> {
        let mut seen = vec![false; self.classes.len()];
        for s in &self.train {
            seen[s.label as usize] = true;
        }
        if let Some(c) = seen.iter().position(|&s| !s) {
            anyhow::bail!("{}: class `{}` (index {c}) has no training samples", self.name, self.classes[c]);
        }
        Ok(())
    }

    /// The first `limit` samples of each split (all without a limit).
    pub fn limited(self, limit: Option<usize>) -> Dataset {
        let cut = |mut v: Vec<Sample>| {
            v.truncate(limited_rows(&v, limit).len());
            v
        };
        Dataset { train: cut(self.train), val: cut(self.val), test: cut(self.test), ..self }
    }

    /// Shard `index` of `count`: a contiguous slice of every split, so that concatenating the
    /// shards' caches in order restores the full dataset's order (`marnet merge-shards`).
    pub fn shard(&self, index: usize, count: usize) -> Dataset {
        let slice = |v: &Vec<Sample>| -> Vec<Sample> {
            let (a, b) = (v.len() * index / count, v.len() * (index + 1) / count);
            v[a..b].to_vec()
        };
        Dataset { name: self.name.clone(), classes: self.classes.clone(), train: slice(&self.train), val: slice(&self.val), test: slice(&self.test) }
    }
}
