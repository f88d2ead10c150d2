//! Datasets and the image pipeline that feed the encoders.

mod dataset;
pub mod emoji;
pub mod food;
pub mod image;
mod image_check;
mod json_keys;
pub mod manifest;
mod problems;
mod resize;

use anyhow::{Context, Result};
pub use dataset::{Dataset, Sample, TRAIN_ONLY, limited_rows};
use std::path::{Path, PathBuf};

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
