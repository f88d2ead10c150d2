//! A deployable model: the trained heads, the visual encoder they were trained on, and how to
//! run them on an image. A bundle is a checkpoint folder (`config.json`, `model.safetensors`,
//! `metrics.json`) plus `bundle.json` and the encoder's weights in `encoder/`, so it can be
//! moved anywhere as one folder.

use crate::checkpoint::{Checkpoint, LoadedModel};
use crate::data::image::{Prepared, Preprocess};
use crate::encoders::ImageEncoder;
use crate::model::cdr::SamplerConfig;
use crate::rng::Noise;
use anyhow::{Context, Result, ensure};
use candle_core::Device;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const BUNDLE: &str = "bundle.json";

/// `bundle.json`: everything besides the heads that inference needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BundleConfig {
    /// Visual encoder as a `--visual` value, paths relative to the bundle folder.
    pub visual: String,
    /// The encoder's name as recorded in the feature cache the heads were trained on.
    pub visual_encoder: String,
    pub preprocess: Preprocess,
    pub classes: Vec<String>,
    /// Reverse process used at inference.
    pub sampler: SamplerConfig,
    /// With an image's bytes, keys its noise stream: same image, same answer.
    pub seed: u64,
    pub marnet_version: String,
}

/// The files behind a `--visual` value (source, name in `encoder/`) and the value that finds
/// them inside a bundle.
fn encoder_files(spec: &str, assets: &Path) -> Result<(Vec<(PathBuf, &'static str)>, String)> {
    const W: &str = "model.safetensors";
    let (kind, path) = match spec.split_once(':') {
        Some((k, p)) => (k, Some(PathBuf::from(p))),
        None => (spec, None),
    };
    Ok(match (kind, path) {
        (k @ ("efficientnet-lite0" | "efficientnet-lite2"), p) => (vec![(p.unwrap_or_else(|| assets.join(k)).join(W), W)], format!("{k}:encoder")),
        ("vit", Some(dir)) => (vec![(dir.join("config.json"), "config.json"), (dir.join(W), W)], "vit:encoder".into()),
        (k @ ("resnet18" | "resnet50"), Some(file)) => (vec![(file, W)], format!("{k}:encoder/{W}")),
        _ => anyhow::bail!("cannot bundle visual encoder `{spec}`"),
    })
}

/// Writes a bundle of the model at `run` (a run folder or checkpoint) with the encoder `visual`
/// (resolved against `assets`, copied into the bundle), to `out`.
pub fn export(run: &Path, visual: &str, assets: &Path, sampler: SamplerConfig, seed: u64, out: &Path, dev: &Device) -> Result<BundleConfig> {
    let ck = Checkpoint::open(run, dev)?;
    let encoder = crate::encoders::load_image_encoder(visual, assets, dev)?;
    ensure!(
        encoder.name() == ck.run.visual_encoder,
        "--visual {visual} is {}, but the model at {} was trained on {} features",
        encoder.name(),
        ck.dir.display(),
        ck.run.visual_encoder
    );
    let (files, bundled_spec) = encoder_files(visual, assets)?;
    let cfg = BundleConfig {
        visual: bundled_spec,
        visual_encoder: encoder.name().to_string(),
        preprocess: encoder.preprocess(),
        classes: ck.run.classes.clone(),
        sampler,
        seed,
        marnet_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    crate::fsutil::replace_dir(out, |tmp| {
        for name in [crate::checkpoint::CONFIG, crate::checkpoint::WEIGHTS, crate::checkpoint::METRICS] {
            std::fs::copy(ck.dir.join(name), tmp.join(name)).with_context(|| format!("{}: cannot copy", ck.dir.join(name).display()))?;
        }
        std::fs::create_dir_all(tmp.join("encoder"))?;
        for (from, name) in &files {
            std::fs::copy(from, tmp.join("encoder").join(name)).with_context(|| format!("{}: cannot copy", from.display()))?;
        }
        std::fs::write(tmp.join(BUNDLE), serde_json::to_string_pretty(&cfg)?)?;
        Ok(())
    })?;
    Predictor::load(out, dev).context("the new bundle does not load")?;
    Ok(cfg)
}

/// One class with its probability.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassProb {
    pub class: String,
    pub index: usize,
    pub prob: f32,
}

/// A loaded bundle: image bytes in, top-k classes out.
pub struct Predictor {
    pub config: BundleConfig,
    pub dir: PathBuf,
    encoder: Box<dyn ImageEncoder>,
    model: LoadedModel,
    dev: Device,
}

impl Predictor {
    pub fn load(dir: &Path, dev: &Device) -> Result<Predictor> {
        let config: BundleConfig = crate::fsutil::read_json(&dir.join(BUNDLE)).context("not a marnet model bundle (see `marnet export`)")?;
        let ck = Checkpoint::open(dir, dev)?;
        let spec = match config.visual.split_once(':') {
            Some((kind, rel)) => format!("{kind}:{}", dir.join(rel).display()),
            None => config.visual.clone(),
        };
        let encoder = crate::encoders::load_image_encoder(&spec, dir, dev)?;
        ensure!(encoder.preprocess() == config.preprocess, "{}: preprocessing differs from the encoder's own", dir.join(BUNDLE).display());
        Ok(Predictor { encoder, model: ck.model(dev)?, config, dir: dir.to_path_buf(), dev: dev.clone() })
    }

    pub fn preprocess(&self) -> Preprocess {
        self.config.preprocess
    }

    /// Class probabilities [N, C] of prepared images (any batch composition gives the same rows).
    pub fn probabilities(&self, images: &[&Prepared]) -> Result<Vec<Vec<f32>>> {
        if images.is_empty() {
            return Ok(vec![]);
        }
        let x = self.preprocess().stack(images.iter().copied(), &self.dev)?;
        let xv = self.encoder.features(&x)?;
        let mut rngs: Vec<_> = images.iter().map(|p| crate::rng::image_noise(self.config.seed, p.key)).collect();
        let p = self.model.model.predict(&xv, &self.config.sampler, &mut Noise::PerRow(&mut rngs))?;
        Ok(candle_nn::ops::softmax_last_dim(&p.logits)?.to_vec2::<f32>()?)
    }

    /// The `k` most probable classes of each prepared image.
    pub fn top_k(&self, images: &[&Prepared], k: usize) -> Result<Vec<Vec<ClassProb>>> {
        Ok(self.probabilities(images)?.into_iter().map(|row| top_k(&row, &self.config.classes, k)).collect())
    }
}

/// The `k` most probable classes of one probability row (ties to the lower index).
pub fn top_k(probs: &[f32], classes: &[String], k: usize) -> Vec<ClassProb> {
    let mut idx: Vec<usize> = (0..probs.len()).collect();
    idx.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    idx.into_iter().take(k).map(|i| ClassProb { class: classes[i].clone(), index: i, prob: probs[i] }).collect()
}
