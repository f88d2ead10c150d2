//! Checkpoint folders: `model.safetensors` (weights, optionally optimiser moments),
//! `config.json` (everything needed to rebuild the model) and `metrics.json`.

use crate::config::TrainConfig;
use crate::model::marnet::{Marnet, MarnetConfig};
use anyhow::{Context, Result, bail, ensure};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// `config.json`: the model, how it was trained, and what it was trained on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub model: MarnetConfig,
    pub train: TrainConfig,
    pub classes: Vec<String>,
    /// The feature cache the run was trained on, relative to the run folder (the parent of
    /// `best/` and `last/`), so that a run moved together with its cache keeps finding it. Runs
    /// from before `cache_absolute` was recorded: the path as it was typed.
    pub cache: PathBuf,
    /// The same cache as an absolute path, tried when the relative one is not there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_absolute: Option<PathBuf>,
    /// The `--visual` value the cache was extracted with (paths absolute), read from its
    /// `extract.json`: the encoder `export` bundles by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visual: Option<String>,
    pub visual_encoder: String,
    pub text_encoder: String,
    pub dataset: String,
    pub marnet_version: String,
    /// The leave-one-group-out fold of `cache` the run used, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fold: Option<crate::features::folds::FoldSpec>,
    /// The code and the cache content (after the fold) the run came from.
    #[serde(default)]
    pub fingerprint: crate::fingerprint::Fingerprint,
}

impl RunConfig {
    /// Records the cache at `cache_dir` for a run in `run_dir` (which exists): the path relative
    /// to the run folder and the absolute path.
    pub fn locate_cache(cache_dir: &Path, run_dir: &Path) -> (PathBuf, Option<PathBuf>) {
        let absolute = |p: &Path| p.canonicalize().or_else(|_| std::path::absolute(p)).unwrap_or_else(|_| p.to_path_buf());
        let (cache, run) = (absolute(cache_dir), absolute(run_dir));
        (crate::fsutil::relative_path(&cache, &run), Some(cache))
    }
}

/// A model with its variables, ready to train or run.
pub struct LoadedModel {
    pub model: Marnet,
    pub vars: VarMap,
}

impl LoadedModel {
    /// A freshly initialised model (weights drawn from `seed`).
    pub fn init(cfg: &MarnetConfig, seed: u64, dev: &Device) -> Result<Self> {
        let vars = VarMap::new();
        let backend = crate::rng::SeededInit::new(vars.clone(), seed);
        let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, dev.clone());
        Ok(Self { model: Marnet::load(vb, cfg)?, vars })
    }

    /// Every variable by name: parameters and buffers.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        self.vars.data().lock().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// The parameters the optimiser updates (buffers excluded).
    pub fn trainable_vars(&self) -> Vec<(String, Var)> {
        self.named_vars().into_iter().filter(|(k, _)| !k.contains(crate::nn::BUFFER)).collect()
    }

    /// Overwrites every variable with the tensor of the same name in `tensors`.
    pub fn set_weights(&self, tensors: &HashMap<String, Tensor>, origin: &Path) -> Result<()> {
        for (name, var) in self.named_vars() {
            let t = tensors.get(&name).with_context(|| format!("{}: weight `{name}` is missing", origin.display()))?;
            let want = crate::nn::padded::logical_dims(var.as_tensor());
            ensure!(t.dims() == want, "{}: weight `{name}` has shape {:?}, the model expects {want:?}", origin.display(), t.shape());
            var.set(&crate::nn::padded::storage_form(var.as_tensor(), &t.to_device(var.device())?)?)?;
        }
        Ok(())
    }
}

pub const WEIGHTS: &str = "model.safetensors";
pub const CONFIG: &str = "config.json";
pub const METRICS: &str = "metrics.json";

/// Writes a checkpoint folder atomically. `extra` holds optimiser state, if any. The files get
/// the permissions of any new file (0644 under the usual umask), so a run or bundle copied for
/// another account stays readable.
pub fn save(dir: &Path, run: &RunConfig, model: &LoadedModel, extra: Vec<(String, Tensor)>, metrics: &serde_json::Value) -> Result<()> {
    let mut tensors = HashMap::new();
    for (name, var) in model.named_vars() {
        tensors.insert(name, crate::nn::padded::logical(var.as_tensor(), var.as_tensor())?);
    }
    tensors.extend(extra);
    crate::fsutil::replace_dir(dir, |tmp| {
        // Not candle's `safetensors::save`: it writes through a temporary file made 0600.
        std::fs::write(tmp.join(WEIGHTS), safetensors::serialize(&tensors, None)?)?;
        std::fs::write(tmp.join(CONFIG), serde_json::to_string_pretty(run)?)?;
        std::fs::write(tmp.join(METRICS), serde_json::to_string_pretty(metrics)?)?;
        Ok(())
    })
}

/// The first run folder (one holding `best/`) under `dir`, in name order, at most `depth` folders
/// down: a table's `ROW/seedS` or, with `--leave-one-out`, `fold-GROUP/ROW/seedS`.
pub fn first_run_in(dir: &Path, depth: usize) -> Option<PathBuf> {
    let mut subdirs: Vec<PathBuf> = std::fs::read_dir(dir).ok()?.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
    subdirs.sort();
    subdirs.into_iter().find_map(|d| {
        if d.join("best").is_dir() {
            Some(d)
        } else if depth > 1 {
            first_run_in(&d, depth - 1)
        } else {
            None
        }
    })
}

/// What [`Checkpoint::unfinished`] reads of a run's `metrics.json` (`train::TrainState` writes it).
#[derive(Deserialize)]
struct RunProgress {
    epochs_done: usize,
    #[serde(default)]
    partial: Option<serde::de::IgnoredAny>,
}

/// A checkpoint read back: its config, all stored tensors, and its metrics.
pub struct Checkpoint {
    pub dir: PathBuf,
    pub run: RunConfig,
    pub tensors: HashMap<String, Tensor>,
    pub metrics: serde_json::Value,
}

impl Checkpoint {
    /// Reads a checkpoint folder; a run folder (holding `best/`) resolves to its best model.
    pub fn open(dir: &Path, dev: &Device) -> Result<Self> {
        // A checkpoint swapped out by a process that died mid-swap is in `DIR.old` (recovered below).
        let there = dir.exists() || crate::fsutil::recover_dir(dir).is_some();
        ensure!(there, "{}: no such folder; pass a run folder (`marnet train --out RUN` makes one)", dir.display());
        let table = ["ablation.json", "comparison.json"].into_iter().find(|t| dir.join(t).is_file());
        ensure!(
            table.is_none(),
            "{}: this is a table folder (`{}`), not a run; pass one of its runs, e.g. {}",
            dir.display(),
            table.unwrap_or_default(),
            first_run_in(dir, 3).unwrap_or_else(|| dir.join("marnet/seed0")).display()
        );
        ensure!(
            !dir.join("train.safetensors").is_file(),
            "{}: this is a feature cache, not a run; train one with `marnet train --cache {} --out RUN`",
            dir.display(),
            dir.display()
        );
        let dir = if !dir.join(CONFIG).exists() && dir.join("best").is_dir() { dir.join("best") } else { dir.to_path_buf() };
        let dir = crate::fsutil::recover_dir(&dir).with_context(|| format!("{}: no checkpoint folder here", dir.display()))?;
        if !dir.join(CONFIG).is_file() {
            let below = first_run_in(&dir, 3).map_or(String::new(), |r| format!("; a run below it: {}", r.display()));
            bail!("{}: not a run (no {CONFIG} or best/ here){below}; pass a folder that `marnet train --out` wrote", dir.display());
        }
        let read = |name: &str| -> Result<String> {
            let p = dir.join(name);
            std::fs::read_to_string(&p).with_context(|| format!("{}: cannot read", p.display()))
        };
        let cfg_path = dir.join(CONFIG);
        let run: RunConfig = serde_json::from_str(&read(CONFIG)?).with_context(|| format!("{}: not a marnet run config", cfg_path.display()))?;
        let metrics = serde_json::from_str(&read(METRICS)?).unwrap_or(serde_json::Value::Null);
        let wpath = dir.join(WEIGHTS);
        let tensors = candle_core::safetensors::load(&wpath, dev).with_context(|| format!("{}: cannot read weights", wpath.display()))?;
        Ok(Self { dir, run, tensors, metrics })
    }

    /// The run folder of a run's `best/` or `last/` checkpoint, else the checkpoint's folder.
    pub fn run_dir(&self) -> &Path {
        let name = self.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        match ["best", "last"].iter().any(|c| name == *c || name == format!("{c}.old")) {
            true => self.dir.parent().unwrap_or(&self.dir),
            false => &self.dir,
        }
    }

    /// The folder of the cache the model was trained on: `cache` relative to the run folder,
    /// else `cache_absolute` (runs from before both were recorded: `cache` from the current
    /// folder, then from the run folder). The error names every place it looked.
    pub fn cache_dir(&self) -> Result<PathBuf> {
        let run_dir = self.dir.parent().unwrap_or(Path::new("."));
        let tried = match &self.run.cache_absolute {
            Some(abs) => vec![run_dir.join(&self.run.cache), abs.clone()],
            None => vec![self.run.cache.clone(), run_dir.join(&self.run.cache)],
        };
        if let Some(found) = tried.iter().find(|d| d.is_dir()) {
            // `runs/t/marnet/seed0/../../../cache` named as the folder it is.
            return Ok(found.canonicalize().unwrap_or_else(|_| found.clone()));
        }
        let places: Vec<String> = tried.iter().map(|d| d.display().to_string()).collect();
        anyhow::bail!(
            "{}: the feature cache this model was trained on is not at {} (moved or deleted?); keep a run and its cache together, or name the cache with --cache where the command has it",
            self.dir.display(),
            places.join(" nor at ")
        )
    }

    /// The feature cache the model was trained on (its fold, for fold runs), refused if it has
    /// changed since: another extraction or edit would make the run's numbers meaningless.
    pub fn open_cache(&self) -> Result<crate::features::FeatureCache> {
        let dir = self.cache_dir()?;
        let cache = crate::features::FeatureCache::open(&dir)?;
        let cache = match &self.run.fold {
            Some(f) => crate::features::folds::fold(&cache, f)?,
            None => cache,
        };
        let (trained, now) = (&self.run.fingerprint.data, crate::fingerprint::cache_data(&cache));
        ensure!(
            trained.is_empty() || *trained == now,
            "{}: the feature cache changed since the model at {} was trained on it\n  trained on: data {trained}\n  now:        data {now}\ntrain again (`train --force`; `ablate`/`compare` retrain such runs when run again), or evaluate on it as a new cache with `eval --model {} --cache {}`",
            dir.display(),
            self.dir.display(),
            self.run_dir().display(),
            dir.display()
        );
        Ok(cache)
    }

    /// Why this checkpoint is not a finished run's selected model, if it is not: its run
    /// (`last/` beside it) stopped before its planned epochs.
    pub fn unfinished(&self) -> Option<String> {
        let last = crate::fsutil::recover_dir(&self.dir.parent()?.join("last"))?;
        let progress: RunProgress = crate::fsutil::read_json(&last.join(METRICS)).ok()?;
        let planned = crate::fsutil::read_json::<RunConfig>(&last.join(CONFIG)).ok()?.train.epochs;
        (progress.epochs_done < planned || progress.partial.is_some()).then(|| {
            format!("the run was interrupted after {} of {planned} epochs: this is the best of those (`train --resume` finishes it)", progress.epochs_done)
        })
    }

    /// Rebuilds the model and loads its weights.
    pub fn model(&self, dev: &Device) -> Result<LoadedModel> {
        let m = LoadedModel::init(&self.run.model, 0, dev)?;
        m.set_weights(&self.tensors, &self.dir.join(WEIGHTS))?;
        Ok(m)
    }
}

/// A split must have the feature dims and classes the checkpoint was trained with.
pub fn check_matches(ck: &Checkpoint, split: &crate::features::FeatureSplit) -> Result<()> {
    let m = &ck.run.model;
    ensure!(split.dv == m.dv, "visual features are {}-d but the model at {} was trained on {}-d", split.dv, ck.dir.display(), m.dv);
    ensure!(split.meta.classes == ck.run.classes, "class names differ from those the model at {} was trained on", ck.dir.display());
    Ok(())
}
