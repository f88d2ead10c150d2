//! What a table's folder already holds, looked at before anything trains: the table file and
//! every run the table plans. Settings that differ from the request are refused, each named
//! `old → new`, unless the table replaces them (`--force`, `demo`); every run is then reused,
//! continued or trained again, and the table says how many of each.

use super::arms::Arm;
use super::spec::{Existing, TableSpec};
use super::table::Table;
use crate::checkpoint::{CONFIG, METRICS, RunConfig};
use crate::config::TrainConfig;
use crate::features::FeatureCache;
use crate::features::folds::{FoldSpec, FoldVal};
use crate::fingerprint::Fingerprint;
use crate::model::marnet::{MarnetConfig, ModelOptions};
use crate::options::{changed_flags, flag_names};
use crate::train::{Resume, TrainState};
use crate::words::count;
use anyhow::Result;
use std::path::{Path, PathBuf};

/// What training does with a planned run, given what its folder holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunStatus {
    /// Nothing there: trained.
    New,
    /// A finished run of these settings, code and data: reused.
    Finished,
    /// An interrupted run of these settings, code and data: continued.
    Interrupted,
    /// Made by other code or from other data (why): trained again.
    Stale(&'static str),
    /// Made with other settings: trained again from the start (when the table replaces it).
    OtherSettings,
}

impl RunStatus {
    /// How [`crate::train::train`] treats the run's folder.
    pub fn resume(&self) -> Resume {
        match self {
            RunStatus::OtherSettings => Resume::Never,
            _ => Resume::IfCurrent,
        }
    }
}

/// One run of the table: its folder, also relative to the table's (`fold-a/marnet/seed0`), how
/// its saved settings differ from the planned ones (each `flag old → new`), and its status.
#[derive(Debug, Clone)]
pub struct PlannedRun {
    pub dir: PathBuf,
    pub rel: String,
    pub differences: Vec<String>,
    pub status: RunStatus,
}

/// Settings of a model that the cache fixes, not the command line (a changed cache makes a run
/// stale instead), and the row's own variant.
const MODEL_FROM_CACHE: &[&str] = &["variant", "dv", "ds", "classes", "tokens"];

/// Differences of two models' settings.
pub fn model_diff(old: &MarnetConfig, new: &MarnetConfig) -> Vec<String> {
    let mut old = old.clone();
    old.tokens = None;
    let mut new = new.clone();
    new.tokens = None;
    changed_flags(&old, &new, MODEL_FROM_CACHE, &flag_names::<ModelOptions>())
}

/// Differences of two training settings but the seed (each run's own, a table's fold seed).
pub fn train_diff(old: &TrainConfig, new: &TrainConfig) -> Vec<String> {
    changed_flags(old, new, &["seed"], &flag_names::<TrainConfig>())
}

fn on_off(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}

/// How the table file already in the folder differs from the one `spec` asks for: settings,
/// seeds, folds and rows (rows added to it are no difference).
pub fn table_diff(old: &Table, arms: &[Arm], spec: &TableSpec) -> Vec<String> {
    let mut out = train_diff(&old.train, &spec.train);
    for arm in arms {
        if let Some(row) = old.rows.iter().find(|r| r.key == arm.key) {
            out.extend(model_diff(&row.config, &arm.cfg));
        }
    }
    let old_seeds = old.rows.first().map(|r| r.seeds.clone()).unwrap_or_default();
    if old_seeds != spec.seeds {
        let list = |s: &[u64]| s.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
        out.push(match old_seeds.len() == spec.seeds.len() {
            true => format!("seeds {} → {}", list(&old_seeds), list(&spec.seeds)),
            false => format!("--seeds {} → {}", old_seeds.len(), spec.seeds.len()),
        });
    }
    let old_folds = old.rows.first().is_some_and(|r| !r.folds.is_empty());
    if old_folds != spec.leave_one_out {
        out.push(format!("--leave-one-out {} → {}", on_off(old_folds), on_off(spec.leave_one_out)));
    } else if spec.leave_one_out {
        if let Some(v) = old.fold_val.filter(|v| *v != spec.fold_val) {
            out.push(format!("--fold-val {} → {}", v.name(), spec.fold_val.name()));
        }
        if spec.fold_val == FoldVal::InStyle && old.train.seed != spec.train.seed {
            out.push(format!("--seed {} → {}", old.train.seed, spec.train.seed));
        }
    }
    let (old_keys, new_keys): (Vec<&str>, Vec<&str>) = (old.rows.iter().map(|r| r.key.as_str()).collect(), arms.iter().map(|a| a.key.as_str()).collect());
    if !old_keys.iter().all(|k| new_keys.contains(k)) {
        out.push(format!("rows {} → {}", old_keys.join(","), new_keys.join(",")));
    }
    dedup(out)
}

/// `items` without repeats, in first-seen order.
fn dedup(items: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = vec![];
    for i in items {
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

/// Why a saved run's fingerprint is not `now`'s.
fn stale_reason(saved: &Fingerprint, now: &Fingerprint) -> &'static str {
    match (saved.code != now.code, saved.data != now.data) {
        (true, true) => "made by another build from another cache",
        (true, false) => "made by another build",
        _ => "made from another cache",
    }
}

/// The run in `dir` (`rel` in the table's folder), to be trained with `model` and `train`
/// (a fold when `fold`) on a cache whose fingerprint now is `now`: what it holds.
pub fn plan_run(dir: PathBuf, rel: String, model: &MarnetConfig, train: &TrainConfig, fold: Option<&FoldSpec>, now: &Fingerprint) -> PlannedRun {
    let (differences, status) = status(&dir, model, train, fold, now);
    PlannedRun { dir, rel, differences, status }
}

fn status(dir: &Path, model: &MarnetConfig, train: &TrainConfig, fold: Option<&FoldSpec>, now: &Fingerprint) -> (Vec<String>, RunStatus) {
    let saved = [dir.join("last"), dir.join("best")].iter().find_map(|d| crate::fsutil::recover_dir(d));
    let Some(found) = saved else { return (vec![], RunStatus::New) };
    let run = match crate::fsutil::read_json::<RunConfig>(&found.join(CONFIG)) {
        Ok(run) => run,
        Err(e) => return (vec![format!("{e:#}")], RunStatus::OtherSettings),
    };
    let mut d = model_diff(&run.model, model);
    d.extend(train_diff(&run.train, train));
    match (&run.fold, fold) {
        (Some(a), Some(b)) => {
            if a.val != b.val {
                d.push(format!("--fold-val {} → {}", a.val.name(), b.val.name()));
            }
            // The seed draws in-style validation; group validation has none to draw.
            if a.seed != b.seed && b.val == FoldVal::InStyle {
                d.push(format!("--seed {} → {}", a.seed, b.seed));
            }
        }
        (None, None) => {}
        (a, b) => d.push(format!("--leave-one-out {} → {}", on_off(a.is_some()), on_off(b.is_some()))),
    }
    if !d.is_empty() {
        return (d, RunStatus::OtherSettings);
    }
    if !run.fingerprint.matches(now) {
        return (d, RunStatus::Stale(stale_reason(&run.fingerprint, now)));
    }
    let state: TrainState = crate::fsutil::read_json(&found.join(METRICS)).unwrap_or_default();
    let from_last = found.file_name().is_some_and(|n| n.to_string_lossy().starts_with("last"));
    match from_last && state.partial.is_none() && state.epochs_done >= train.epochs {
        true => (d, RunStatus::Finished),
        false => (d, RunStatus::Interrupted),
    }
}

/// The fingerprint a run trained now on `cache` records.
pub fn current(cache: &FeatureCache) -> Fingerprint {
    Fingerprint::current(crate::fingerprint::cache_data(cache))
}

/// The table file already in `spec.out`, if any; one that cannot be read is refused, or
/// ignored when the table replaces it.
pub fn previous(spec: &TableSpec) -> Result<Option<Table>> {
    match Table::read(&spec.out, &spec.file) {
        Err(_) if spec.existing == Existing::Replace => Ok(None),
        Err(e) => anyhow::bail!("{e:#}; --force replaces it, or choose another --out"),
        ok => ok,
    }
}

/// Refuses, naming every difference, when the table file `old` or a planned run was made with
/// other settings and `spec` does not replace them.
pub fn check(spec: &TableSpec, old: Option<&Table>, arms: &[Arm], runs: &[PlannedRun]) -> Result<()> {
    if spec.existing == Existing::Replace {
        return Ok(());
    }
    let differing: Vec<&PlannedRun> = runs.iter().filter(|r| !r.differences.is_empty()).collect();
    let run_diffs = dedup(differing.iter().flat_map(|r| r.differences.iter().cloned()).collect());
    let out = spec.out.display();
    if let Some(table_diffs) = old.map(|t| table_diff(t, arms, spec)).filter(|d| !d.is_empty()) {
        let all = dedup(table_diffs.into_iter().chain(run_diffs).collect());
        anyhow::bail!("{out}: a table made with other settings is here ({}); --force replaces it, or choose another --out", all.join(", "));
    }
    if let Some(first) = differing.first() {
        anyhow::bail!(
            "{out}: runs made with other settings are here ({}, e.g. `{}`: {}); --force trains them again, or choose another --out",
            count(differing.len(), "run"),
            first.rel,
            run_diffs.join(", ")
        );
    }
    Ok(())
}

/// `reused 8 finished runs, trained 2 (1 stale: made from another cache)`.
pub fn summary(runs: &[PlannedRun]) -> String {
    let reused = runs.iter().filter(|r| r.status == RunStatus::Finished).count();
    let mut why: Vec<(String, usize)> = vec![];
    for r in runs {
        let label = match &r.status {
            RunStatus::New | RunStatus::Finished => continue,
            RunStatus::Interrupted => "interrupted, continued".to_string(),
            RunStatus::Stale(reason) => format!("stale: {reason}"),
            RunStatus::OtherSettings => "made with other settings".to_string(),
        };
        match why.iter_mut().find(|(l, _)| *l == label) {
            Some((_, n)) => *n += 1,
            None => why.push((label, 1)),
        }
    }
    let details: Vec<String> = why.iter().map(|(l, n)| format!("{n} {l}")).collect();
    let details = if details.is_empty() { String::new() } else { format!(" ({})", details.join(", ")) };
    format!("reused {}, trained {}{details}", count(reused, "finished run"), runs.len() - reused)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::{flag_of, leaves};
    use std::collections::BTreeMap;

    /// Every setting a table records maps to the flag that sets it.
    #[test]
    fn every_saved_setting_is_named_by_its_flag() {
        let (train, model) = (TrainConfig::default(), MarnetConfig::new(crate::model::marnet::Variant::Marnet, 4, 4, 2));
        let mut t = BTreeMap::new();
        leaves(&serde_json::to_value(&train).unwrap(), "", &mut t);
        let tf = flag_names::<TrainConfig>();
        for path in t.keys().filter(|p| !p.starts_with("optim.beta") && *p != "optim.eps") {
            assert!(flag_of(path, &tf).starts_with("--"), "training setting {path}");
        }
        let mut m = BTreeMap::new();
        leaves(&serde_json::to_value(&model).unwrap(), "", &mut m);
        let mf = flag_names::<ModelOptions>();
        for path in m.keys().filter(|p| !MODEL_FROM_CACHE.contains(&p.as_str())) {
            assert!(flag_of(path, &mf).starts_with("--"), "model setting {path}");
        }
        assert_eq!(
            (flag_of("schedule.steps", &mf), flag_of("d", &mf), flag_of("sampler.steps", &tf)),
            ("--timesteps".into(), "--dim".into(), "--steps".into())
        );
        let lr = TrainConfig { epochs: 3, optim: crate::optim::AdamWConfig { lr: 0.01, ..train.optim }, ..train.clone() };
        assert_eq!(train_diff(&train, &lr), ["--epochs 10 → 3", "--lr 0.001 → 0.01"]);
        let wider = MarnetConfig { residual: true, weights: crate::model::marnet::LossWeights { beta: 0.5, ..model.weights }, ..model.clone() };
        assert_eq!(model_diff(&model, &wider), ["--residual off → on", "--align-weight 1 → 0.5"]);
    }
}
