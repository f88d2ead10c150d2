//! A deployable model: the trained heads, the visual encoder they were trained on, and how to
//! run them on an image. A bundle is a checkpoint folder (`config.json`, `model.safetensors`,
//! `metrics.json`) plus `bundle.json` and the encoder's weights in `encoder/`, so it can be
//! moved anywhere as one folder.

use crate::checkpoint::{Checkpoint, LoadedModel};
use crate::config::Inference;
use crate::data::image::{Prepared, Preprocess};
use crate::encoders::ImageEncoder;
use crate::rng::Noise;
use anyhow::{Context, Result, ensure};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const BUNDLE: &str = "bundle.json";

impl std::fmt::Display for BundleConfig {
    /// The bundle in words: classes, encoder and how the heads sample.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} classes, visual encoder {}, inference: {}, noise seed {}",
            self.classes.len(),
            self.visual_encoder,
            self.inference.sampler,
            self.inference.seed
        )
    }
}

/// `bundle.json`: everything besides the heads that inference needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BundleConfig {
    /// Visual encoder as a `--visual` value, paths relative to the bundle folder.
    pub visual: String,
    /// The encoder's name as recorded in the feature cache the heads were trained on.
    pub visual_encoder: String,
    pub preprocess: Preprocess,
    pub classes: Vec<String>,
    /// How the heads run: the reverse process, the seed that keys each image's noise stream
    /// (with the image's bytes: same image, same answer) and rows per forward pass.
    #[serde(flatten)]
    pub inference: Inference,
    pub marnet_version: String,
}

/// The files behind a `--visual` value (source, name in `encoder/`) and the value that finds
/// them inside a bundle. `kind:FILE` (a safetensors state dict) is copied as `encoder/FILE`'s
/// weights; `kind:DIR`, and a bare `kind` (the folder `assets/kind`), copy the folder's
/// `model.safetensors` and JSON configs into `encoder/`.
fn encoder_files(spec: &str, assets: &Path) -> Result<(Vec<(PathBuf, String)>, String)> {
    const W: &str = "model.safetensors";
    let (kind, path) = match spec.split_once(':') {
        Some((k, p)) => (k, PathBuf::from(p)),
        None => (spec, assets.join(spec)),
    };
    if path.is_file() {
        return Ok((vec![(path, W.to_string())], format!("{kind}:encoder/{W}")));
    }
    let mut files = vec![];
    for entry in std::fs::read_dir(&path).with_context(|| format!("{}: cannot bundle visual encoder `{spec}`", path.display()))? {
        let file = entry?.path();
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        if file.is_file() && (name == W || name.ends_with(".json")) {
            files.push((file, name));
        }
    }
    ensure!(files.iter().any(|(_, n)| n == W), "{}: no {W} to bundle", path.display());
    files.sort();
    Ok((files, format!("{kind}:encoder")))
}

/// Writes a bundle of the model at `run` (a run folder or checkpoint) with the encoder `visual`
/// (copied into the bundle; a bare name is looked up in `assets` as [`crate::assets::resolve`]
/// finds it; `None`: the encoder the run's cache was extracted with), to `out`. The files get the
/// permissions of new files (0644 under the usual umask), whatever the sources have. A bundle
/// already in `out` is replaced only with `replace`; any other non-empty folder never is.
pub fn export(run: &Path, visual: Option<&str>, assets: Option<&Path>, inference: Inference, out: &Path, replace: bool, dev: &Device) -> Result<BundleConfig> {
    if out.exists() {
        ensure!(out.is_dir(), "{}: --out is a file; name a folder for the bundle", out.display());
        // A lock file left by a killed command is no content.
        let entries: Vec<String> =
            std::fs::read_dir(out)?.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|e| e != crate::lock::LOCK_FILE).collect();
        let own = [BUNDLE, crate::checkpoint::CONFIG, crate::checkpoint::WEIGHTS, crate::checkpoint::METRICS, "encoder"];
        let foreign: Vec<&String> = entries.iter().filter(|e| !own.contains(&e.as_str())).collect();
        ensure!(
            entries.is_empty() || (out.join(BUNDLE).is_file() && foreign.is_empty()),
            "{}: this folder holds files that are not a bundle's ({}); choose another --out",
            out.display(),
            foreign.iter().take(5).map(|f| format!("`{f}`")).collect::<Vec<_>>().join(", ")
        );
        ensure!(entries.is_empty() || replace, "{}: a bundle is already here; pass --force to replace it, or choose another --out", out.display());
    }
    let ck = Checkpoint::open(run, dev)?;
    if let Some(why) = ck.unfinished() {
        eprintln!("note: {why}");
    }
    if let Some(fold) = &ck.run.fold {
        eprintln!(
            "note: {} is a run of one leave-one-out fold: it never trained on group `{}`'s images (held out to test it); a model to deploy is trained with `marnet train` on the cache's own splits",
            ck.dir.display(),
            fold.test_group
        );
    }
    let visual = match visual {
        Some(v) => v.to_string(),
        None => ck.run.visual.clone().with_context(|| {
            format!(
                "{}: the run does not record the visual encoder its cache was extracted with (a cache not made by `marnet extract`, or a run trained by an older marnet); pass --visual",
                ck.dir.display()
            )
        })?,
    };
    let visual = visual.as_str();
    // Only a bare encoder name (`efficientnet-lite0`) needs the assets folder.
    let assets = &match visual.contains(':') {
        true => assets.map(Path::to_path_buf).unwrap_or_default(),
        false => crate::assets::resolve(assets)?,
    };
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
        inference,
        marnet_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    crate::fsutil::replace_dir(out, |tmp| {
        for name in [crate::checkpoint::CONFIG, crate::checkpoint::WEIGHTS, crate::checkpoint::METRICS] {
            copy_readable(&ck.dir.join(name), &tmp.join(name))?;
        }
        std::fs::create_dir_all(tmp.join("encoder"))?;
        for (from, name) in &files {
            copy_readable(from, &tmp.join("encoder").join(name))?;
        }
        std::fs::write(tmp.join(BUNDLE), serde_json::to_string_pretty(&cfg)?)?;
        Ok(())
    })?;
    Predictor::load(out, dev).context("the new bundle does not load")?;
    Ok(cfg)
}

/// Copies a file's contents into a new file (not `fs::copy`, which would keep a 0600 source's
/// permissions and leave the bundle unreadable to other accounts).
fn copy_readable(from: &Path, to: &Path) -> Result<()> {
    let mut src = std::fs::File::open(from).with_context(|| format!("{}: cannot read", from.display()))?;
    let mut dst = std::fs::File::create(to).with_context(|| format!("{}: cannot create", to.display()))?;
    std::io::copy(&mut src, &mut dst).with_context(|| format!("{}: cannot copy", from.display()))?;
    Ok(())
}

/// One class with its probability.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassProb {
    pub class: String,
    pub index: usize,
    pub prob: f32,
}

/// Whether `dir` holds a training run (`best/`, `last/`) or one of its checkpoints
/// (`config.json`) rather than a bundle (`bundle.json`).
pub fn is_training_run(dir: &Path) -> bool {
    !dir.join(BUNDLE).exists() && (dir.join("best").is_dir() || dir.join("last").is_dir() || dir.join(crate::checkpoint::CONFIG).is_file())
}

/// Whether `dir` holds a bundle made by [`export`].
pub fn is_bundle(dir: &Path) -> bool {
    dir.join(BUNDLE).is_file()
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
    /// Loads the bundle in `dir`; a training run (or one of its checkpoints) there is refused
    /// with the `export` command that makes a bundle of it.
    pub fn load(dir: &Path, dev: &Device) -> Result<Predictor> {
        if is_training_run(dir) {
            let d = dir.display();
            anyhow::bail!("{d} is a training run, not a bundle: make one with `marnet export --model {d} --out BUNDLE`");
        }
        if !dir.join(BUNDLE).is_file() {
            // A table or any other folder with a run below it: name one, with the command.
            if let Some(run) = crate::checkpoint::first_run_in(dir, 3) {
                let r = run.display();
                anyhow::bail!("{}: not a bundle; a run below it is {r}: make a bundle of it with `marnet export --model {r} --out BUNDLE`", dir.display());
            }
        }
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
        self.head_probabilities(&self.features(images)?, images)
    }

    /// The visual encoder's features [N, Dv] of prepared images.
    pub fn features(&self, images: &[&Prepared]) -> Result<Tensor> {
        let x = self.preprocess().stack(images.iter().copied(), &self.dev)?;
        Ok(self.encoder.features(&x)?)
    }

    /// The heads' class probabilities for `xv`, the [`Self::features`] of `images` (whose
    /// contents key each row's sampling noise).
    pub fn head_probabilities(&self, xv: &Tensor, images: &[&Prepared]) -> Result<Vec<Vec<f32>>> {
        self.keyed_probabilities(xv, &images.iter().map(|p| p.key).collect::<Vec<_>>())
    }

    /// The heads' class probabilities for visual features `xv` [N, Dv] computed elsewhere (the
    /// bundle's encoder, run by the caller); each row's values key its sampling noise, so a row
    /// gets the same answer in any batch.
    pub fn feature_probabilities(&self, xv: &Tensor) -> Result<Vec<Vec<f32>>> {
        let dv = self.model.model.config().dv;
        ensure!(xv.rank() == 2 && xv.dim(1)? == dv, "features of shape {:?}: this bundle's heads take [N, {dv}]", xv.dims());
        let keys: Vec<u64> =
            xv.to_vec2::<f32>()?.iter().map(|row| crate::rng::content_key(&row.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())).collect();
        self.keyed_probabilities(xv, &keys)
    }

    /// Class probabilities of `xv`, row `i`'s sampling noise from `keys[i]`.
    fn keyed_probabilities(&self, xv: &Tensor, keys: &[u64]) -> Result<Vec<Vec<f32>>> {
        let Inference { sampler, seed, batch } = self.config.inference;
        let mut probs = Vec::with_capacity(keys.len());
        for (start, chunk) in (0..keys.len()).step_by(batch.max(1)).zip(keys.chunks(batch.max(1))) {
            let mut rngs: Vec<_> = chunk.iter().map(|&key| crate::rng::image_noise(seed, key)).collect();
            let p = self.model.model.predict(&xv.narrow(0, start, chunk.len())?, &sampler, &mut Noise::PerRow(&mut rngs))?;
            probs.extend(candle_nn::ops::softmax_last_dim(&p.logits)?.to_vec2::<f32>()?);
        }
        Ok(probs)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `bundle.json` keeps its flat layout (`sampler`, `seed`, `batch` beside the other keys),
    /// and bundles written before `batch` existed load with the evaluation default.
    #[test]
    fn bundle_json_is_flat_and_reads_older_bundles() {
        let cfg = BundleConfig {
            visual: "vit:encoder".into(),
            visual_encoder: "vit".into(),
            preprocess: Preprocess { size: 224, mean: [0.0; 3], std: [1.0; 3], resize: None },
            classes: vec!["a".into()],
            inference: Inference { seed: 7, batch: 3, ..Default::default() },
            marnet_version: "0".into(),
        };
        let mut json = serde_json::to_value(&cfg).unwrap();
        assert_eq!((json["seed"].as_u64(), json["batch"].as_u64()), (Some(7), Some(3)));
        assert!(json["sampler"].is_object());
        json.as_object_mut().unwrap().remove("batch");
        let old: BundleConfig = serde_json::from_value(json).unwrap();
        assert_eq!(old.inference, Inference { batch: crate::config::EVAL_BATCH, ..cfg.inference });
    }
}
