//! What an extraction is given ([`ExtractOptions`], [`Existing`]) and the names of what it
//! writes: `extract.json`, `skipped.jsonl`'s rows, the `OUT.partial` progress folder.

use crate::features::FeatureSplit;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What an extraction does with a feature cache already in its output folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Reuse it when this build made it from the same samples with the same settings; refuse
    /// it otherwise, saying why (`marnet extract`).
    ReuseOrRefuse,
    /// Reuse it when current, extract again when not (`demo`, which owns its cache folder).
    ReuseOrReplace,
    /// Extract again, replacing it and discarding saved progress (`extract --force`).
    Replace,
}

/// A finished cache's record of its extraction ([`super::progress::Job`]).
pub(super) const JOB: &str = "extract.json";

/// The name the fetched default text encoder (`ASSETS/minilm`) is recorded under.
pub const DEFAULT_TEXT: &str = "all-MiniLM-L6-v2";

/// Batches per saved block: an interrupted run redoes at most this many.
pub(super) const BLOCK_BATCHES: usize = 8;

pub struct ExtractOptions {
    /// Images per forward pass.
    pub batch: usize,
    /// Keep only the first N samples of each split (quick runs).
    pub limit: Option<usize>,
    /// Leave out unreadable images (listed in `skipped.jsonl`) instead of stopping.
    pub skip_bad: bool,
    /// Also store the encoders' token features (`--tokens`).
    pub tokens: bool,
    pub progress: bool,
    /// The command's settings, written to `OUT/extract.json`; a resumed run must match them.
    pub settings: serde_json::Value,
    /// What to do with a cache already in `OUT`.
    pub existing: Existing,
    /// A shard's: what one extraction of the whole dataset records of its splits (else empty).
    pub whole: Vec<(String, usize, String)>,
}

/// A sample left out by `--skip-bad`: one line of `skipped.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    pub split: String,
    pub id: String,
    pub image: PathBuf,
    pub error: String,
    /// Where the row is declared (`manifest.jsonl:12`), if anywhere.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub origin: String,
}

/// The splits written in `out`, if any.
pub(crate) type Splits = Vec<(&'static str, FeatureSplit)>;

/// `OUT.partial`: where an unfinished extraction keeps its blocks.
pub fn partial_dir(out: &Path) -> PathBuf {
    crate::fsutil::sibling(out, ".partial")
}
