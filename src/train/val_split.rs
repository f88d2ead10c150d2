//! The validation rows of a run: the cache's own `val` split, or a seeded share of train.

use crate::config::TrainConfig;
use crate::features::{FeatureCache, FeatureSplit};
use anyhow::{Result, ensure};

/// Splits train into (train, val) unless the cache has its own `val`.
pub fn train_val(cache: &FeatureCache, cfg: &TrainConfig) -> Result<(FeatureSplit, FeatureSplit)> {
    if let Some(v) = &cache.val {
        let default = TrainConfig::default().val_fraction;
        ensure!(
            cfg.val_fraction == default,
            "--val-fraction {}: {} has a `val` split of its own ({}), which is used as it is; leave --val-fraction out (it takes a share of train only for a cache without one)",
            cfg.val_fraction,
            cache.dir.display(),
            crate::words::count(v.len(), "row")
        );
        return Ok((cache.train.clone(), v.clone()));
    }
    let n = cache.train.len();
    let n_val = ((n as f64) * cfg.val_fraction).round() as usize;
    ensure!(
        n_val >= 1 && n_val < n,
        "{}: no `val` split, and {:.0}% of {n} training rows leaves no validation or no training data",
        cache.dir.display(),
        100.0 * cfg.val_fraction
    );
    let perm = crate::rng::permutation(&mut crate::rng::stream(cfg.seed, "val-split", 0), n);
    Ok((cache.train.subset(&perm[n_val..]), cache.train.subset(&perm[..n_val])))
}
