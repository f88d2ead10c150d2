//! Datasets and the image pipeline that feed the encoders.

pub mod emoji;
pub mod food;
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

impl Dataset {
    /// Shard `index` of `count`: a contiguous slice of every split, so that concatenating the
    /// shards' caches in order restores the full dataset's order (`marnet merge-shards`).
    pub fn shard(&self, index: usize, count: usize) -> Dataset {
        let slice = |v: &Vec<Sample>| -> Vec<Sample> {
            let (a, b) = (v.len() * index / count, v.len() * (index + 1) / count);
            v[a..b].to_vec()
        };
        Dataset {
            name: self.name.clone(),
            classes: self.classes.clone(),
            train: slice(&self.train),
            val: slice(&self.val),
            test: slice(&self.test),
        }
    }
}

/// Parses `i/n` (0-based shard i of n).
pub fn parse_shard(s: &str) -> anyhow::Result<(usize, usize)> {
    let (i, n) = s.split_once('/').ok_or_else(|| anyhow::anyhow!("--shard `{s}`: expected i/n, e.g. 0/4"))?;
    let (i, n): (usize, usize) = (i.trim().parse()?, n.trim().parse()?);
    anyhow::ensure!(n >= 1 && i < n, "--shard `{s}`: need 0 <= i < n");
    Ok((i, n))
}
