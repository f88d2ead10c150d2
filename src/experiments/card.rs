//! What produced a table, recorded with it for the report's run card: when, with which build, on
//! which machine, how long, and on what data.

use crate::features::FeatureCache;
use candle_core::Device;
use serde::{Deserialize, Serialize};

/// The run card of a table (`OUT/<name>.json` field `card`; absent in tables written before it
/// was recorded, which the report shows as "not recorded").
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunCard {
    /// When the table was written (`Thu, 03 Dec 2026 18:29:21 GMT`).
    pub date: String,
    /// marnet's version and the commit it was built from (`-dirty`: with uncommitted changes).
    pub version: String,
    pub commit: String,
    /// The CPU model and its logical cores, the device the runs used and the CPU math threads.
    pub cpu: String,
    pub device: String,
    pub threads: usize,
    /// Wall time of the command that wrote the table (runs it reused cost it nothing).
    pub wall_seconds: f64,
    /// The table's runs, and how many of them that command found finished and reused (trained
    /// by earlier commands, with their own threads and time); 0 and 0 in older tables.
    #[serde(default)]
    pub runs: usize,
    #[serde(default)]
    pub reused_runs: usize,
    /// The cache: its folder, dataset, classes and rows per split.
    pub cache: String,
    pub dataset: String,
    /// The image and text encoders the cache was extracted with.
    #[serde(default)]
    pub encoders: String,
    pub classes: usize,
    pub splits: Vec<(String, usize)>,
    /// With leave-one-out folds: test rows of each fold, in the table's fold order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fold_test_rows: Vec<usize>,
}

impl RunCard {
    /// The card of a table written now from `cache`, after `wall_seconds` of work.
    pub fn now(cache: &FeatureCache, fold_test_rows: Vec<usize>, wall_seconds: f64, dev: &Device) -> RunCard {
        let splits = [("train", Some(&cache.train)), ("val", cache.val.as_ref()), ("test", cache.test.as_ref())];
        RunCard {
            date: httpdate::fmt_http_date(std::time::SystemTime::now()),
            version: env!("CARGO_PKG_VERSION").into(),
            commit: env!("MARNET_GIT_COMMIT").into(),
            cpu: crate::bench::cpu_model(),
            device: if dev.is_cuda() { "CUDA GPU".into() } else { "CPU".into() },
            threads: candle_core::utils::get_num_threads(),
            wall_seconds,
            runs: 0,
            reused_runs: 0,
            cache: std::path::absolute(&cache.dir).unwrap_or_else(|_| cache.dir.clone()).display().to_string(),
            dataset: cache.train.meta.dataset.clone(),
            encoders: format!("image: {}; text: {}", cache.train.meta.visual_encoder, cache.train.meta.text_encoder),
            classes: cache.num_classes(),
            splits: splits.into_iter().filter_map(|(n, s)| s.map(|s| (n.to_string(), s.len()))).collect(),
            fold_test_rows,
        }
    }
}
