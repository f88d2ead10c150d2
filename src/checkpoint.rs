//! Checkpoint folders: `model.safetensors` (weights, optionally optimiser moments),
//! `config.json` (everything needed to rebuild the model) and `metrics.json`.

use crate::config::TrainConfig;
use crate::model::marnet::{Marnet, MarnetConfig};
use anyhow::{Context, Result, ensure};
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
    pub cache: PathBuf,
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
    /// The feature cache the run was trained on (its fold, for fold runs).
    pub fn open_cache(&self) -> Result<crate::features::FeatureCache> {
        let cache = crate::features::FeatureCache::open(&self.cache)?;
        match &self.fold {
            Some(f) => crate::features::folds::fold(&cache, f),
            None => Ok(cache),
        }
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
            ensure!(t.shape() == var.shape(), "{}: weight `{name}` has shape {:?}, the model expects {:?}", origin.display(), t.shape(), var.shape());
            var.set(&t.to_device(var.device())?)?;
        }
        Ok(())
    }
}

pub const WEIGHTS: &str = "model.safetensors";
pub const CONFIG: &str = "config.json";
pub const METRICS: &str = "metrics.json";

/// Writes a checkpoint folder atomically. `extra` holds optimiser state, if any.
pub fn save(dir: &Path, run: &RunConfig, model: &LoadedModel, extra: Vec<(String, Tensor)>, metrics: &serde_json::Value) -> Result<()> {
    let mut tensors: HashMap<String, Tensor> = model.named_vars().into_iter().map(|(k, v)| (k, v.as_tensor().clone())).collect();
    tensors.extend(extra);
    crate::fsutil::replace_dir(dir, |tmp| {
        candle_core::safetensors::save(&tensors, tmp.join(WEIGHTS))?;
        std::fs::write(tmp.join(CONFIG), serde_json::to_string_pretty(run)?)?;
        std::fs::write(tmp.join(METRICS), serde_json::to_string_pretty(metrics)?)?;
        Ok(())
    })
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
        let dir = if !dir.join(CONFIG).exists() && dir.join("best").is_dir() { dir.join("best") } else { dir.to_path_buf() };
        let dir = crate::fsutil::recover_dir(&dir).with_context(|| format!("{}: no checkpoint folder here", dir.display()))?;
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
    ensure!(
        split.meta.classes == ck.run.classes[..split.meta.classes.len().min(ck.run.classes.len())],
        "class names differ from those the model at {} was trained on",
        ck.dir.display()
    );
    Ok(())
}
