//! `marnet demo`: the whole chain on a built-in emoji benchmark, from the fetched assets to a
//! report: extract (cached), every ablation row and alignment baseline over several seeds, test
//! on the held-out vendor (or on every vendor in turn, leave-one-vendor-out), `report/`.

use crate::checkpoint::TrainConfig;
use crate::experiments::{Table, ablation_arms, alignment_arms, run_arms};
use crate::features::FeatureCache;
use crate::model::marnet::MarnetConfig;
use crate::train::Verbosity;
use anyhow::{Context, Result};
use candle_core::Device;
use std::path::PathBuf;
use std::time::Instant;

pub struct DemoOptions {
    pub out: PathBuf,
    pub assets: PathBuf,
    /// `emoji-food` (fast) or `emoji-all`.
    pub dataset: String,
    /// Every vendor as the test split once (in-style validation), instead of Apple alone.
    pub leave_one_out: bool,
    pub seeds: Vec<u64>,
    pub train: TrainConfig,
    pub report: crate::report::ReportOptions,
    /// The command line, recorded in `demo.json` and the report.
    pub command: String,
    pub verbosity: Verbosity,
}

/// Runs the demo; `model` builds the MARNet configuration for (dv, ds, classes). Returns the
/// tables and the wall time of each stage.
pub fn run(opts: &DemoOptions, model: impl Fn(usize, usize, usize) -> MarnetConfig, dev: &Device) -> Result<(Vec<Table>, serde_json::Value)> {
    let t0 = Instant::now();
    // Fail now, not after the training, if the figures' font is missing.
    crate::report::plots::use_font(&opts.report.font)?;
    let cache_dir = opts.out.join("cache");
    if let Ok(existing) = FeatureCache::read_split(&cache_dir, "train") {
        anyhow::ensure!(
            existing.meta.dataset.starts_with(&format!("{}(", opts.dataset)),
            "{}: this cache holds `{}`, not {}; use another --out",
            cache_dir.display(),
            existing.meta.dataset,
            opts.dataset
        );
    }
    // Reused when this build extracted it from these files; extracted (again) when not.
    let ds = crate::data::open(&opts.dataset, None, &opts.assets, "apple", 0.2, 0)?;
    let image_enc = crate::encoders::load_image_encoder("efficientnet-lite0", &opts.assets, dev)?;
    let text_enc = crate::encoders::text::TextEncoder::load(&opts.assets.join("minilm"), dev)?;
    let settings = serde_json::json!({ "dataset": opts.dataset, "test_vendor": "apple", "val_fraction": 0.2, "seed": 0, "batch": 32, "visual": "efficientnet-lite0" });
    let eopts = crate::extract::ExtractOptions { batch: 32, limit: None, skip_bad: false, progress: opts.verbosity != Verbosity::Quiet, settings, reuse_current: true };
    let (cache, _) = crate::extract::extract(&ds, image_enc.as_ref(), &text_enc, &eopts, &cache_dir, dev).with_context(|| format!("extracting {}", opts.dataset))?;
    let folds: Vec<crate::folds::FoldSpec> = match opts.leave_one_out {
        true => crate::folds::groups(&cache)?.into_iter().map(|g| crate::folds::FoldSpec { test_group: g, val: Default::default(), seed: 0 }).collect(),
        false => vec![],
    };
    let split = match opts.leave_one_out {
        true => "leave-one-vendor-out (4 folds)",
        false => "test = Apple",
    };
    let t_extract = t0.elapsed().as_secs_f64();
    let base = model(cache.train.dv, cache.train.ds, cache.num_classes());
    let runs = opts.out.clone();
    let mut tables = vec![];
    let mut seconds = std::collections::BTreeMap::from([("extract", t_extract)]);
    for (name, title, first, arms) in [
        ("ablation", "Ablation (Table 2)", "Module", ablation_arms(&base, &[])),
        ("comparison", "Alignment methods (Table 1)", "Method", alignment_arms(&base, &[])),
    ] {
        let t = Instant::now();
        let rows = run_arms(&cache, &arms, &opts.train, &opts.seeds, &folds, &runs, opts.verbosity, dev)?;
        let table = Table {
            title: format!("{title} on {} ({split}): {} seeds, {} epochs; model selected on val", opts.dataset, opts.seeds.len(), opts.train.epochs),
            first_column: first.into(),
            command: opts.command.clone(),
            train: opts.train.clone(),
            rows,
        };
        table.write(&runs, name)?;
        tables.push(table);
        seconds.insert(name, t.elapsed().as_secs_f64());
    }
    let t = Instant::now();
    let summary = serde_json::json!({
        "command": opts.command, "marnet_version": env!("CARGO_PKG_VERSION"), "cache": cache_dir,
        "dataset": cache.train.meta.dataset, "seeds": opts.seeds, "train": opts.train, "model": base,
        "seconds": seconds,
    });
    crate::fsutil::write_atomic(&runs.join("demo.json"), serde_json::to_string_pretty(&summary)?.as_bytes())?;
    crate::report::write(&runs, &opts.report, dev)?;
    seconds.insert("report", t.elapsed().as_secs_f64());
    let summary = serde_json::json!({ "seconds": seconds, "total_seconds": t0.elapsed().as_secs_f64() });
    Ok((tables, summary))
}
