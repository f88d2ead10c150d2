//! Top-1 / top-5 accuracy on image-only input, and the small statistics the tables need.

use crate::config::Inference;
use crate::features::FeatureSplit;
use crate::model::cdr::SamplerConfig;
use crate::model::marnet::Marnet;
use crate::rng::Noise;
use anyhow::Context;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

mod accuracy;
mod reconstruction;

pub use accuracy::{Accuracy, top1_hits, topk_accuracy};
pub use reconstruction::{Reconstruction, TextReference};

/// Everything inference produced over a split, for metrics and plots.
pub struct SplitOutputs {
    pub logits: Vec<f32>,
    pub ema_logits: Option<Vec<f32>>,
    pub cdr_logits: Option<Vec<f32>>,
    /// The reconstructed text feature x_CDR [N, Ds] (CDR and MLP variants).
    pub x_cdr: Option<Vec<f32>>,
}

/// The note that top-5 accuracy cannot miss, where there are 1 to 5 classes (`eval`, `train`, the
/// tables' footnote).
pub fn trivial_top5(classes: usize) -> Option<String> {
    (1..=5).contains(&classes).then(|| format!("Acc-5 is 100% with {classes} classes, whatever the model does"))
}

/// Runs the model on `split`'s visual features only, in batches, with a seeded sampler. Every
/// row draws its noise from a stream of its own (drawn in parallel; a row's prediction does not
/// depend on the batch size): rows with image keys (caches from `marnet extract`) from their
/// image's stream, so they get the same prediction as `marnet predict` gives for the image file;
/// rows without (synthetic caches) from their row number's.
pub fn predict_split(model: &Marnet, split: &FeatureSplit, inference: &Inference, dev: &Device) -> anyhow::Result<SplitOutputs> {
    let Inference { sampler, seed, batch } = *inference;
    let sampler = &sampler;
    let keyed = split.meta.keys.len() == split.len();
    let (mut logits, mut ema, mut cdr, mut x_cdr) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let idx: Vec<usize> = (0..split.len()).collect();
    for chunk in idx.chunks(batch.max(1)) {
        let xv = Tensor::from_vec(split.gather_visual(chunk), (chunk.len(), split.dv), dev)?;
        // In candle's CPU thread pool: the small ops between products then run on a worker.
        let mut rngs: Vec<_> = chunk.iter().map(|&i| crate::rng::image_noise(seed, if keyed { split.meta.keys[i] } else { i as u64 })).collect();
        let p = dev.with_context(|| model.predict(&xv, sampler, &mut Noise::PerRow(&mut rngs)))?;
        logits.extend(p.logits.flatten_all()?.to_vec1::<f32>()?);
        if let Some(l) = p.ema_logits {
            ema.extend(l.flatten_all()?.to_vec1::<f32>()?);
        }
        if let Some(l) = p.cdr_logits {
            cdr.extend(l.flatten_all()?.to_vec1::<f32>()?);
        }
        if let Some(x) = p.x_cdr {
            x_cdr.extend(x.flatten_all()?.to_vec1::<f32>()?);
        }
    }
    let opt = |v: Vec<f32>| if v.is_empty() { None } else { Some(v) };
    Ok(SplitOutputs { logits, ema_logits: opt(ema), cdr_logits: opt(cdr), x_cdr: opt(x_cdr) })
}

/// One row's top-1 prediction (for `marnet eval --predictions`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RowPrediction {
    pub id: String,
    /// The true class: its index and name.
    pub label: u32,
    pub label_class: String,
    /// The top-1 class: its index and name.
    pub predicted: u32,
    pub class: String,
}

/// The top-1 class of every row of `logits` [N, C] (ties to the lower index).
pub fn row_predictions(split: &FeatureSplit, logits: &[f32], classes: &[String]) -> Vec<RowPrediction> {
    logits
        .chunks_exact(classes.len())
        .enumerate()
        .map(|(i, row)| {
            let best = (0..row.len()).fold(0, |b, c| if row[c] > row[b] { c } else { b });
            let label = split.label[i];
            RowPrediction {
                id: split.meta.ids[i].clone(),
                label,
                label_class: classes[label as usize].clone(),
                predicted: best as u32,
                class: classes[best].clone(),
            }
        })
        .collect()
}

/// Accuracy of the final head and, where present, of the EMA and CDR heads alone, and how well
/// x_CDR reconstructs the text (when the split has text and a reference was given).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    pub final_head: Accuracy,
    pub ema_head: Option<Accuracy>,
    pub cdr_head: Option<Accuracy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconstruction: Option<Reconstruction>,
}

/// Runs the model on `split` and scores it; also returns each row's top-1 hit.
pub fn evaluate(
    model: &Marnet,
    split: &FeatureSplit,
    inference: &Inference,
    reference: Option<&TextReference>,
    dev: &Device,
) -> anyhow::Result<(EvalResult, Vec<bool>)> {
    let out = predict_split(model, split, inference, dev)?;
    let classes = model.config().classes;
    Ok((accuracy(&out, split, classes, reference)?, top1_hits(&out.logits, classes, &split.label)))
}

/// Top-1 / top-5 of each head's outputs against `split`'s labels, and the reconstruction.
pub fn accuracy(out: &SplitOutputs, split: &FeatureSplit, classes: usize, reference: Option<&TextReference>) -> anyhow::Result<EvalResult> {
    let acc = |l: &Vec<f32>| topk_accuracy(l, classes, &split.label);
    let reconstruction = match out.x_cdr.as_ref().zip(reference) {
        Some((x, r)) => reconstruction::reconstruction(x, split, r).context("the reconstruction metric")?,
        None => None,
    };
    Ok(EvalResult { final_head: acc(&out.logits), ema_head: out.ema_logits.as_ref().map(acc), cdr_head: out.cdr_logits.as_ref().map(acc), reconstruction })
}

/// What `marnet eval` evaluates: a saved model on one split of a cache.
#[derive(Debug, Clone)]
pub struct EvalRequest {
    /// Checkpoint folder, or a run folder (its `best/`).
    pub model: std::path::PathBuf,
    /// Feature cache (default: the model's own; a fold run always uses its fold).
    pub cache: Option<std::path::PathBuf>,
    /// `train`, `val` or `test`.
    pub split: String,
    pub inference: Inference,
}

/// What `marnet eval` found (its `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub model: std::path::PathBuf,
    pub cache: std::path::PathBuf,
    pub split: String,
    pub seed: u64,
    pub sampler: SamplerConfig,
    pub result: EvalResult,
    pub inference_seconds: f64,
    pub samples_per_s: f64,
    /// The leave-one-group-out fold evaluated (`fold-<group>`), for a fold run on its own cache.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fold: Option<String>,
    /// Something the reader should know (an unfinished run, a split without text).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Each row's top-1 prediction (`--predictions`).
    #[serde(skip)]
    pub predictions: Vec<RowPrediction>,
}

/// Evaluates `req.model` on `req.split`: the cache it was trained on (refused if it changed since,
/// see [`crate::checkpoint::Checkpoint::open_cache`]), or `req.cache`, any cache with that split
/// whose classes are among the model's (matched by name: a new test set); times inference.
/// `req.model` is a run or checkpoint folder, or a bundle with `req.cache`: a run records its
/// cache relative to the run folder, which a bundle has left, so a bundle alone is refused.
pub fn run(req: &EvalRequest, dev: &Device) -> anyhow::Result<EvalReport> {
    use crate::features::FeatureCache;
    anyhow::ensure!(crate::features::SPLITS.contains(&req.split.as_str()), "--split {}: expected train, val or test", req.split);
    if req.cache.is_none() && crate::bundle::is_bundle(&req.model) {
        let b = req.model.display();
        anyhow::bail!("{b} is a bundle made by `export`; eval needs the training run folder (or pass --cache CACHE to evaluate the bundle's heads on a cache)");
    }
    let ck = crate::checkpoint::Checkpoint::open(&req.model, dev)?;
    let classes = ck.run.model.classes;
    let missing = |dir: &std::path::Path| {
        let carved = req.split == "val" && req.cache.is_none();
        let why = match carved {
            true => format!(
                "; the run validated on {:.0}% of its training rows, held out by its seed (its val scores are in {})",
                100.0 * ck.run.train.val_fraction,
                ck.dir.join(crate::checkpoint::METRICS).display()
            ),
            false => String::new(),
        };
        format!("{}: no `{}` split{why}", dir.display(), req.split)
    };
    // The rows the run held out of the train split for validation (its cache has no `val`).
    let mut held_out = None;
    let (cache_dir, data, reference) = match &req.cache {
        None => {
            let cache = ck.open_cache()?;
            let data = cache.split(&req.split)?.with_context(|| missing(&cache.dir))?.clone();
            if req.split == "train" && cache.val.is_none() {
                held_out = Some(crate::train::val_split::train_val(&cache, &ck.run.train)?.1.len());
            }
            (cache.dir.clone(), data, TextReference::class_means(&cache.train, classes))
        }
        // Another cache is a new test set, taken as it is (a fold run too: its fold is a split of
        // the cache it was trained on, not of this one).
        Some(dir) => {
            let path = FeatureCache::split_path(dir, &req.split);
            anyhow::ensure!(path.exists(), "{}", missing(dir));
            let data = FeatureCache::read_split(dir, &req.split)?.relabeled(&ck.run.classes).with_context(|| path.display().to_string())?;
            let train = FeatureCache::read_split(dir, "train").ok().and_then(|t| t.relabeled(&ck.run.classes).ok());
            (dir.clone(), data, train.and_then(|t| TextReference::class_means(&t, classes)))
        }
    };
    crate::checkpoint::check_matches(&ck, &data).with_context(|| FeatureCache::split_path(&cache_dir, &req.split).display().to_string())?;
    let m = ck.model(dev)?;
    let t0 = std::time::Instant::now();
    let out = predict_split(&m.model, &data, &req.inference, dev)?;
    let inference_seconds = t0.elapsed().as_secs_f64();
    let mut notes: Vec<String> = ck.unfinished().into_iter().collect();
    if data.text.is_none()
        && reference.is_some()
        && !matches!(ck.run.model.variant, crate::model::marnet::Variant::Baseline | crate::model::marnet::Variant::Ema)
    {
        notes.push(format!("no reconstruction measured: the {} split has no text for some or all of its rows", req.split));
    }
    if let Some(held) = held_out {
        notes.push(format!(
            "these {} include the {held} the run held out for validation (--val-fraction {}), which it did not train on",
            crate::words::count(data.len(), "row"),
            ck.run.train.val_fraction
        ));
    }
    notes.extend(trivial_top5(classes));
    Ok(EvalReport {
        fold: req.cache.is_none().then(|| ck.run.fold.as_ref().map(|f| f.name())).flatten(),
        notes,
        model: ck.dir.clone(),
        cache: cache_dir,
        split: req.split.clone(),
        seed: req.inference.seed,
        sampler: req.inference.sampler,
        result: accuracy(&out, &data, classes, reference.as_ref())?,
        inference_seconds,
        samples_per_s: data.len() as f64 / inference_seconds,
        predictions: row_predictions(&data, &out.logits, &ck.run.classes),
    })
}

impl EvalReport {
    /// The table of heads, the reconstruction and the inference rate, as `marnet eval` prints.
    pub fn markdown(&self) -> String {
        let r = &self.result;
        let mut s = String::new();
        if let Some(f) = &self.fold {
            s += &format!("{f} of {} (the run's leave-one-group-out fold)\n", self.cache.display());
        }
        for n in &self.notes {
            s += &format!("note: {n}\n");
        }
        s += "| split | n | Acc-1 (%) | Acc-5 (%) | mean max prob |\n|---|---|---|---|---|\n";
        for (name, h) in [("", Some(r.final_head)), (" (EMA head)", r.ema_head), (" (CDR head)", r.cdr_head)] {
            if let Some(h) = h {
                s += &format!("| {}{name} | {} | {:.2} | {:.2} | {:.3} |\n", self.split, h.n, 100.0 * h.top1, 100.0 * h.top5, h.mean_max_prob);
            }
        }
        if let Some(rc) = r.reconstruction {
            s += &format!("reconstruction: mean cos(x_CDR, x_s) {:.3}; x_CDR nearest to its own class's mean text {:.2}%\n", rc.cosine, 100.0 * rc.class_match);
        }
        s + &format!("inference: {} samples in {:.2} s ({:.0} samples/s)", r.final_head.n, self.inference_seconds, self.samples_per_s)
    }
}

/// `"85.40 ± 0.12"` in percent.
pub fn pct_mean_std(xs: &[f64]) -> String {
    let (m, s) = crate::stats::mean_std(xs);
    format!("{:.2} ± {:.2}", 100.0 * m, 100.0 * s)
}
