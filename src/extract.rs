//! `marnet extract`: a dataset through the frozen encoders into a feature cache.

use crate::data::{Dataset, Sample};
use crate::encoders::ImageEncoder;
use crate::encoders::text::TextEncoder;
use crate::features::{FeatureCache, FeatureSplit, SplitMeta};
use anyhow::{Context, Result};
use candle_core::Device;
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::HashMap;
use std::path::Path;

pub struct ExtractOptions {
    /// Images per forward pass.
    pub batch: usize,
    /// Keep only the first N samples of each split (quick runs).
    pub limit: Option<usize>,
    pub progress: bool,
}

/// Encodes the texts of `samples` (each distinct text once). Training needs every text;
/// other splits may have none.
fn encode_texts(split: &str, samples: &[Sample], enc: &TextEncoder, batch: usize) -> Result<Option<Vec<f32>>> {
    if let Some(s) = samples.iter().find(|s| s.text.is_none()) {
        anyhow::ensure!(split != "train", "{}: training sample has no text", s.id);
        return Ok(None);
    }
    let mut unique: Vec<&str> = samples.iter().map(|s| s.text.as_deref().unwrap()).collect();
    unique.sort_unstable();
    unique.dedup();
    let mut rows: HashMap<&str, Vec<f32>> = HashMap::new();
    for chunk in unique.chunks(batch.max(1)) {
        for (t, row) in chunk.iter().zip(enc.embed(chunk)?.to_vec2::<f32>()?) {
            rows.insert(t, row);
        }
    }
    Ok(Some(samples.iter().flat_map(|s| rows[s.text.as_deref().unwrap()].clone()).collect()))
}

fn extract_split(
    name: &str,
    samples: &[Sample],
    ds: &Dataset,
    image_enc: &dyn ImageEncoder,
    text_enc: &TextEncoder,
    opts: &ExtractOptions,
    dev: &Device,
) -> Result<FeatureSplit> {
    let pre = image_enc.preprocess();
    let bar = if opts.progress { ProgressBar::new(samples.len() as u64) } else { ProgressBar::hidden() };
    bar.set_style(ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} images {per_sec} eta {eta}").unwrap().progress_chars("=> "));
    bar.set_message(format!("extract {name}"));
    let mut visual = Vec::new();
    let mut dv = 0;
    // Decode the next batch on another thread while this one runs through the encoder.
    std::thread::scope(|scope| -> Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        scope.spawn(move || {
            for chunk in samples.chunks(opts.batch.max(1)) {
                let paths: Vec<_> = chunk.iter().map(|s| s.image.clone()).collect();
                if tx.send(pre.batch(&paths, dev)).is_err() {
                    return;
                }
            }
        });
        for decoded in rx {
            let (x, status) = decoded?;
            if let Some(Err(e)) = status.into_iter().find(|s| s.is_err()) {
                return Err(e);
            }
            let f = image_enc.features(&x)?;
            dv = f.dim(1)?;
            visual.extend(f.flatten_all()?.to_vec1::<f32>()?);
            bar.inc(x.dim(0)? as u64);
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    let text = encode_texts(name, samples, text_enc, 64)?;
    Ok(FeatureSplit {
        visual,
        dv,
        ds: if text.is_some() { text_enc.dim() } else { 0 },
        text,
        label: samples.iter().map(|s| s.label).collect(),
        meta: SplitMeta {
            classes: ds.classes.clone(),
            ids: samples.iter().map(|s| s.id.clone()).collect(),
            visual_encoder: image_enc.name().to_string(),
            text_encoder: "all-MiniLM-L6-v2".to_string(),
            dataset: ds.name.clone(),
        },
    })
}

/// Extracts every split of `ds` and writes the cache to `out`.
pub fn extract(
    ds: &Dataset,
    image_enc: &dyn ImageEncoder,
    text_enc: &TextEncoder,
    opts: &ExtractOptions,
    out: &Path,
    dev: &Device,
) -> Result<FeatureCache> {
    let limit = |v: &Vec<Sample>| -> Vec<Sample> { v.iter().take(opts.limit.unwrap_or(usize::MAX)).cloned().collect() };
    let run = |name: &str, v: &Vec<Sample>| -> Result<Option<FeatureSplit>> {
        if v.is_empty() {
            return Ok(None);
        }
        extract_split(name, &limit(v), ds, image_enc, text_enc, opts, dev).map(Some).with_context(|| format!("extracting {name}"))
    };
    let train = run("train", &ds.train)?.context("the dataset has no training samples")?;
    let cache = FeatureCache { dir: out.to_path_buf(), train, val: run("val", &ds.val)?, test: run("test", &ds.test)? };
    cache.write(out)?;
    Ok(cache)
}
