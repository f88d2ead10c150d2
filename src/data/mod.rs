//! Datasets and the image pipeline that feed the encoders.

pub mod emoji;
pub mod food;
pub mod image;
mod json_keys;
pub mod manifest;

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

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
        let Some(n) = limit else { return self };
        let cut = |mut v: Vec<Sample>| {
            v.truncate(n);
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

/// Parses `i/n` (0-based shard i of n).
pub fn parse_shard(s: &str) -> anyhow::Result<(usize, usize)> {
    let (i, n) = s.split_once('/').ok_or_else(|| anyhow::anyhow!("--shard `{s}`: expected i/n, e.g. 0/4"))?;
    let (i, n): (usize, usize) = (i.trim().parse()?, n.trim().parse()?);
    anyhow::ensure!(n >= 1 && i < n, "--shard `{s}`: need 0 <= i < n");
    Ok((i, n))
}

/// How a dataset is opened: the emoji benchmarks' split settings, and whether a manifest's images
/// are checked up front.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// emoji-*: the vendor held out as test.
    pub test_vendor: String,
    /// emoji-*: share of the training vendors' images held out for validation.
    pub val_fraction: f64,
    /// emoji-*: seed of the validation draw.
    pub seed: u64,
    /// emoji-all: add the training vendors' skin-tone variants as extra training images (see
    /// [`emoji::emoji`]); refused for the other datasets, which have none.
    pub skin_tones: bool,
    /// manifest: check that every image exists and its header decodes (off with `--skip-bad`).
    pub check_images: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self { test_vendor: "apple".into(), val_fraction: 0.2, seed: 0, skin_tones: false, check_images: true }
    }
}

/// The dataset `name` names: `emoji-food` or `emoji-all` (built from the fetched emoji packages
/// under `assets/npm`, split by vendor), `vireo172`, `ingredient101` (published layouts under
/// `root`) or `manifest` (`root` is a JSON Lines file, see [`manifest`]).
pub fn open(name: &str, root: Option<&Path>, assets: &Path, test_vendor: &str, val_fraction: f64, seed: u64) -> Result<Dataset> {
    open_with(name, root, assets, &OpenOptions { test_vendor: test_vendor.into(), val_fraction, seed, ..Default::default() })
}

/// The image file of the sample `id` of dataset `name` (as [`open`] names them), if it can be
/// told without reading the dataset: for the report's thumbnails.
pub fn image_of(name: &str, root: Option<&Path>, assets: &Path, id: &str) -> Option<PathBuf> {
    let path = match name {
        "emoji-food" | "emoji-all" => {
            let (vendor, file) = id.split_once('/')?;
            assets.join("npm").join(format!("emoji-datasource-{vendor}/img/{vendor}/64")).join(file.trim_start_matches(TRAIN_ONLY))
        }
        "vireo172" => root?.join("ready_chinese_food").join(id),
        "ingredient101" => root?.join("images").join(format!("{id}.jpg")),
        "manifest" => root?.parent()?.join(id),
        _ => return None,
    };
    path.is_file().then_some(path)
}

/// [`open`] with every option.
pub fn open_with(name: &str, root: Option<&Path>, assets: &Path, o: &OpenOptions) -> Result<Dataset> {
    anyhow::ensure!(!o.skin_tones || name == "emoji-all", "skin-tone variants apply to --dataset emoji-all only, not `{name}`");
    // Absolute, so that image paths (and a cache's fingerprint of them) do not depend on the
    // folder the command runs in.
    let root = root.map(std::path::absolute).transpose().context("--root")?;
    let root = root.as_deref();
    let need_root = || root.with_context(|| format!("--dataset {name} needs --root"));
    let ds = match name {
        "emoji-food" => emoji::emoji_food(&assets.join("npm"), &o.test_vendor, o.val_fraction, o.seed)?,
        "emoji-all" => emoji::emoji_all(&assets.join("npm"), &o.test_vendor, o.val_fraction, o.seed, o.skin_tones)?,
        "vireo172" => food::vireo172(need_root()?)?,
        "ingredient101" => food::ingredient101(need_root()?)?,
        // Checked whole, classes included (a test-only manifest needs no training rows).
        "manifest" => return manifest::manifest(need_root()?, o.check_images),
        other => anyhow::bail!("unknown dataset `{other}` (emoji-food, emoji-all, vireo172, ingredient101, manifest)"),
    };
    let source = root.unwrap_or(assets);
    ds.check_classes().with_context(|| source.display().to_string())?;
    Ok(ds)
}
