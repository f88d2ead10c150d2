//! `marnet demo`: the whole chain on a built-in emoji benchmark, from the fetched assets to a
//! report: extract (cached), every ablation row and alignment baseline over several seeds, test
//! on the held-out vendor (or on every vendor in turn, leave-one-vendor-out), `report/`.

use crate::config::TrainConfig;
use crate::experiments::{Existing, Table, TableSpec, ablation_arms, alignment_arms, run_table};
use crate::features::FeatureCache;
use crate::model::marnet::Variant;
use crate::train::Verbosity;
use anyhow::Result;
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
    /// MARNet's options (each table's rows vary the variant or the alignment loss).
    pub model: crate::model::marnet::ModelOptions,
    pub verbosity: Verbosity,
}

/// A `--dataset` name for the demo (`emoji-food`, `emoji-all`) in any case, as its lower-case name.
pub fn dataset_name(s: &str) -> Result<String, String> {
    crate::options::one_of(s, &["emoji-food", "emoji-all"])
}

/// Runs the demo. Returns the tables and the wall time of each stage.
pub fn run(opts: &DemoOptions, dev: &Device) -> Result<(Vec<Table>, serde_json::Value)> {
    let t0 = Instant::now();
    // Fail now, not after the training, if the figures' font is missing.
    let report = crate::report::ReportOptions { font: Some(opts.report.font(Some(&opts.assets))?), ..opts.report.clone() };
    crate::report::plots::use_font(&report.font(None)?)?;
    // A folder of other things is refused before the extraction, not after it.
    crate::experiments::check_table_folder(&opts.out)?;
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
    let (assets, out) = (opts.assets.display().to_string(), cache_dir.display().to_string());
    let settings: crate::extract::ExtractSettings = crate::options::parse(&["--dataset", &opts.dataset, "--assets", &assets, "--out", &out])?;
    let cache = crate::extract::run(&settings, opts.verbosity != Verbosity::Quiet, crate::extract::Existing::ReuseOrReplace, dev)?.into_cache()?;
    let t_extract = t0.elapsed().as_secs_f64();
    let base = opts.model.config(Variant::Marnet, cache.train.dv, cache.train.ds, cache.num_classes());
    let mut tables = vec![];
    let mut seconds = std::collections::BTreeMap::from([("extract", t_extract)]);
    for (file, what, first, arms) in [
        ("ablation", "Ablation (Table 2)", "Module", ablation_arms(&base, &[])),
        ("comparison", "Alignment methods (Table 1)", "Method", alignment_arms(&base, &[])),
    ] {
        let t = Instant::now();
        let spec = TableSpec {
            what: what.into(),
            first_column: first.into(),
            file: file.into(),
            out: opts.out.clone(),
            seeds: opts.seeds.clone(),
            leave_one_out: opts.leave_one_out,
            fold_val: Default::default(),
            train: opts.train.clone(),
            command: opts.command.clone(),
            // The demo owns its folder: runs made with other settings are trained again.
            existing: Existing::Replace,
            task: None,
        };
        tables.push(run_table(&cache, &arms, &spec, opts.verbosity, dev)?);
        seconds.insert(file, t.elapsed().as_secs_f64());
    }
    let t = Instant::now();
    let summary = serde_json::json!({
        "command": opts.command, "marnet_version": env!("CARGO_PKG_VERSION"), "cache": cache_dir,
        "dataset": cache.train.meta.dataset, "seeds": opts.seeds, "train": opts.train, "model": base,
        "seconds": seconds,
    });
    crate::fsutil::write_atomic(&opts.out.join("demo.json"), serde_json::to_string_pretty(&summary)?.as_bytes())?;
    crate::report::write(&opts.out, &report, dev)?;
    seconds.insert("report", t.elapsed().as_secs_f64());
    let summary = serde_json::json!({ "seconds": seconds, "total_seconds": t0.elapsed().as_secs_f64() });
    Ok((tables, summary))
}
