//! What a run records of its progress (`metrics.json`): every epoch, the selected one, test
//! results, and where an interrupted epoch stopped.

use crate::eval::EvalResult;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    /// Wall time of the epoch's training steps.
    pub train_seconds: f64,
    /// Wall time of the validation pass.
    pub val_seconds: f64,
    /// Mean of each weighted loss term over the epoch.
    pub losses: BTreeMap<String, f64>,
    pub val: EvalResult,
}

/// `metrics.json` of a run: progress so far and the selected epoch.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrainState {
    pub epochs_done: usize,
    pub optimizer_steps: u64,
    pub best_epoch: Option<usize>,
    pub best_val_top1: f64,
    pub history: Vec<EpochRecord>,
    /// Test accuracy of the selected model (reported, never used for selection).
    pub test: Option<EvalResult>,
    /// Per test row, whether the selected model's top-1 class is right (for paired tests).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub test_hits: Vec<bool>,
    /// The late-fusion weight w fitted on validation (MARNet with `gate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<f64>,
    /// Set when the run stopped inside an epoch (Ctrl-C): where `--resume` picks up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial: Option<PartialEpoch>,
}

/// An epoch cut short: the shuffle is re-derived from the seed, the noise stream restored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartialEpoch {
    /// 0-based epoch index.
    pub epoch: usize,
    pub steps_done: usize,
    pub loss_sums: BTreeMap<String, f64>,
    /// `get_word_pos` of the epoch's noise stream (a u128, as decimal text).
    pub noise_word_pos: String,
    pub train_seconds: f64,
}
