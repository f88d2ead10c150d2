//! `marnet report`: tables, figures and one self-contained HTML page from a finished `ablate`,
//! `compare` or `demo` folder (its `ablation.json` / `comparison.json` and run folders).
//!
//! - `tables.md`, `tables.json`: Table 1 / Table 2 style, mean ± std over seeds.
//! - `fig3_tsne`: t-SNE of x_v and of x_CDR (the MARNet run) for a few classes.
//! - `fig4_examples`, `fig4_confidence`: top-5 probabilities of the baseline and of the CDR
//!   head for some test images, and the histogram of their max probability on the test set.
//! - `curves`: loss terms and val top-1 per epoch, per variant.
//! - `report.html`: all of it, with the commands and configs that produced it.

pub mod html;
pub mod plots;
pub mod tsne;

use crate::checkpoint::Checkpoint;
use crate::eval::predict_split;
use crate::experiments::Table;
use crate::features::{FeatureCache, FeatureSplit};
use crate::train::TrainState;
use anyhow::{Context, Result, ensure};
use candle_core::Device;
use plots::{ConfidenceFigure, CurvePanel, CurvesFigure, Example, ExamplesFigure, Scatter, TsneFigure};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub struct ReportOptions {
    /// TrueType font for the figures' text.
    pub font: PathBuf,
    /// Classes in the t-SNE figure, and rows per class at most.
    pub tsne_classes: usize,
    pub tsne_per_class: usize,
    /// Test images in the top-5 figure.
    pub examples: usize,
    pub progress: bool,
}

/// Numbers behind the figures (`figures.json`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct FigureStats {
    /// k-NN class purity of the t-SNE layouts of x_v and x_CDR (k = 5, or less for small classes).
    pub tsne_purity_xv: Option<f64>,
    pub tsne_purity_xcdr: Option<f64>,
    pub tsne_points: usize,
    pub tsne_k: usize,
    /// Mean max-probability on test of the baseline and of the CDR head.
    pub mean_max_prob_baseline: Option<f64>,
    pub mean_max_prob_cdr: Option<f64>,
    /// Figures not drawn and why.
    pub skipped: Vec<String>,
}

/// The first seed's run folder of arm `key`.
fn run_dir(dir: &Path, key: &str, tables: &[(String, Table)]) -> Option<PathBuf> {
    let seed = tables.iter().flat_map(|(_, t)| t.rows.iter()).find(|r| r.key == key)?.seeds.first().copied()?;
    let d = dir.join(key).join(format!("seed{seed}"));
    d.join("best").is_dir().then_some(d)
}

/// Row-wise softmax of `logits` [N, C].
fn softmax_rows(logits: &[f32], c: usize, dev: &Device) -> Result<Vec<Vec<f32>>> {
    let t = candle_core::Tensor::from_slice(logits, (logits.len() / c, c), dev)?;
    Ok(candle_nn::ops::softmax_last_dim(&t)?.to_vec2()?)
}

fn top5(p: &[f32], classes: &[String]) -> Vec<(String, f32)> {
    crate::bundle::top_k(p, classes, 5).into_iter().map(|c| (c.class, c.prob)).collect()
}

/// Rows of the classes with the most rows (up to `per_class` each): from test if it has enough
/// per class, otherwise from all splits together. Text is dropped (image-only inference).
fn tsne_rows(cache: &FeatureCache, n_classes: usize, per_class: usize) -> Result<(FeatureSplit, String)> {
    let strip = |s: &FeatureSplit| FeatureSplit { text: None, ds: 0, ..s.clone() };
    let test = cache.test.as_ref().context("the cache has no test split")?;
    let max_count = |s: &FeatureSplit| (0..cache.num_classes() as u32).map(|c| s.label.iter().filter(|&&l| l == c).count()).max().unwrap_or(0);
    let (pool, source) = if max_count(test) >= 10 {
        (strip(test), "test split".to_string())
    } else {
        let parts: Vec<FeatureSplit> = [Some(&cache.train), cache.val.as_ref(), Some(test)].into_iter().flatten().map(strip).collect();
        (FeatureSplit::concat(&parts)?, "all splits (the test split has too few images per class)".to_string())
    };
    let mut counts: Vec<(usize, u32)> = (0..cache.num_classes() as u32).map(|c| (pool.label.iter().filter(|&&l| l == c).count(), c)).collect();
    counts.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let chosen: Vec<u32> = counts.iter().take(n_classes).map(|&(_, c)| c).collect();
    let mut idx = vec![];
    for &c in &chosen {
        idx.extend((0..pool.len()).filter(|&i| pool.label[i] == c).take(per_class));
    }
    Ok((pool.subset(&idx), source))
}

fn tsne_figure(ck: &Checkpoint, opts: &ReportOptions, stats: &mut FigureStats, out: &Path, dev: &Device) -> Result<()> {
    let cache = FeatureCache::open(&ck.run.cache).with_context(|| format!("the cache the run at {} was trained on", ck.dir.display()))?;
    let (rows, source) = tsne_rows(&cache, opts.tsne_classes, opts.tsne_per_class)?;
    let model = ck.model(dev)?;
    let pred = predict_split(&model.model, &rows, &ck.run.train.sampler, ck.run.train.seed, 500, dev)?;
    let x_cdr = pred.x_cdr.context("the model has no reconstruction head")?;
    let ds = x_cdr.len() / rows.len();
    let xv: Vec<Vec<f32>> = rows.visual.chunks(rows.dv).map(<[f32]>::to_vec).collect();
    let xc: Vec<Vec<f32>> = x_cdr.chunks(ds).map(<[f32]>::to_vec).collect();
    let (yv, yc) = (tsne::embed(&xv, 0)?, tsne::embed(&xc, 0)?);
    // k nearest neighbours: 5, or fewer when a class has fewer other members.
    let smallest = rows.label.iter().map(|l| rows.label.iter().filter(|m| *m == l).count()).min().unwrap_or(1);
    let k = 5.min(smallest.saturating_sub(1)).max(1);
    let (pv, pc) = (tsne::knn_purity(&yv, &rows.label, k), tsne::knn_purity(&yc, &rows.label, k));
    (stats.tsne_purity_xv, stats.tsne_purity_xcdr, stats.tsne_points, stats.tsne_k) = (Some(pv), Some(pc), rows.len(), k);
    let mut names: Vec<(u32, String)> = rows.label.iter().map(|&l| (l, cache.train.meta.classes[l as usize].clone())).collect();
    names.dedup();
    let fig = TsneFigure {
        panels: [
            Scatter { title: format!("x_v (image features), {k}-NN purity {pv:.2}"), points: yv, labels: rows.label.clone() },
            Scatter { title: format!("x_CDR (sampled from x_v), {k}-NN purity {pc:.2}"), points: yc, labels: rows.label.clone() },
        ],
        class_names: names,
    };
    plots::save(&fig, &out.join("fig3_tsne"))?;
    let note = format!("t-SNE rows: {} from the {source}", rows.len());
    crate::fsutil::write_atomic(&out.join("fig3_tsne.txt"), note.as_bytes())
}

fn confidence_figures(base: &Checkpoint, marnet: &Checkpoint, opts: &ReportOptions, stats: &mut FigureStats, out: &Path, dev: &Device) -> Result<()> {
    let cache = FeatureCache::open(&marnet.run.cache)?;
    let test = cache.test.as_ref().context("the cache has no test split")?;
    let classes = &marnet.run.classes;
    let c = classes.len();
    let pb = predict_split(&base.model(dev)?.model, test, &base.run.train.sampler, base.run.train.seed, 500, dev)?;
    let pm = predict_split(&marnet.model(dev)?.model, test, &marnet.run.train.sampler, marnet.run.train.seed, 500, dev)?;
    let heads = [softmax_rows(&pb.logits, c, dev)?, softmax_rows(&pm.cdr_logits.context("the MARNet run has no CDR head")?, c, dev)?];
    let names = ["baseline".to_string(), "CDR head (MARNet)".to_string()];
    let n = test.len();
    let picks: Vec<usize> = (0..opts.examples.min(n)).map(|i| i * n / opts.examples.min(n)).collect();
    let examples = picks
        .iter()
        .map(|&i| Example {
            title: format!("{} (true: {})", test.meta.ids[i], classes[test.label[i] as usize]),
            heads: [top5(&heads[0][i], classes), top5(&heads[1][i], classes)],
        })
        .collect();
    plots::save(&ExamplesFigure { head_names: names.clone(), examples }, &out.join("fig4_examples"))?;
    let max_probs = [0, 1].map(|h| heads[h].iter().map(|p| p.iter().copied().fold(0.0, f32::max)).collect::<Vec<f32>>());
    let mean = |v: &[f32]| v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
    (stats.mean_max_prob_baseline, stats.mean_max_prob_cdr) = (Some(mean(&max_probs[0])), Some(mean(&max_probs[1])));
    let title = format!("Max class probability on test ({n} images)");
    plots::save(&ConfidenceFigure { title, head_names: names, max_probs }, &out.join("fig4_confidence"))?;
    Ok(())
}

fn curves_figure(dir: &Path, tables: &[(String, Table)], out: &Path) -> Result<()> {
    let mut keys: Vec<(String, String)> = vec![];
    for r in tables.iter().flat_map(|(_, t)| t.rows.iter()) {
        if !keys.iter().any(|(k, _)| *k == r.key) {
            keys.push((r.key.clone(), r.row.clone()));
        }
    }
    let mut panels = vec![];
    let mut val = CurvePanel { title: "val top-1 (first seed)".into(), rising: true, y_desc: "top-1 (%)".into(), series: vec![] };
    for (key, row) in keys {
        let Some(run) = run_dir(dir, &key, tables) else { continue };
        let last = crate::fsutil::recover_dir(&run.join("last")).context("no last/ checkpoint")?;
        let state: TrainState = crate::fsutil::read_json(&last.join(crate::checkpoint::METRICS))?;
        let mut terms: BTreeMap<String, Vec<(f32, f32)>> = BTreeMap::new();
        for h in &state.history {
            for (k, v) in &h.losses {
                terms.entry(k.clone()).or_default().push((h.epoch as f32, *v as f32));
            }
        }
        val.series.push((row.clone(), state.history.iter().map(|h| (h.epoch as f32, 100.0 * h.val.final_head.top1 as f32)).collect()));
        panels.push(CurvePanel { title: format!("{row}: loss terms"), rising: false, y_desc: "loss".into(), series: terms.into_iter().collect() });
    }
    ensure!(!panels.is_empty(), "no run folders with training history under {}", dir.display());
    panels.push(val);
    plots::save(&CurvesFigure { panels }, &out.join("curves"))?;
    Ok(())
}

/// Writes `DIR/report/` from the saved results in `dir`; returns the report folder.
pub fn write(dir: &Path, opts: &ReportOptions, dev: &Device) -> Result<PathBuf> {
    plots::use_font(&opts.font)?;
    let mut tables = vec![];
    for name in ["ablation", "comparison"] {
        if let Some(t) = Table::read(dir, name)? {
            tables.push((name.to_string(), t));
        }
    }
    ensure!(!tables.is_empty(), "{}: no ablation.json or comparison.json (run `marnet ablate`, `compare` or `demo` first)", dir.display());
    let out = dir.join("report");
    std::fs::create_dir_all(&out).with_context(|| format!("{}: cannot create", out.display()))?;
    let bar = crate::progress::bar(opts.progress, 4, "steps", "report: tables");
    let md: String = tables.iter().map(|(_, t)| t.markdown() + "\n").collect();
    crate::fsutil::write_atomic(&out.join("tables.md"), md.as_bytes())?;
    let json: BTreeMap<&str, &Table> = tables.iter().map(|(n, t)| (n.as_str(), t)).collect();
    crate::fsutil::write_atomic(&out.join("tables.json"), serde_json::to_string_pretty(&json)?.as_bytes())?;
    bar.inc(1);

    let mut stats = FigureStats::default();
    let open = |key: &str| -> Option<Checkpoint> { run_dir(dir, key, &tables).and_then(|d| Checkpoint::open(&d, dev).ok()) };
    let (marnet, base) = (open("marnet"), open("baseline"));
    bar.set_message("report: t-SNE");
    match &marnet {
        Some(m) => tsne_figure(m, opts, &mut stats, &out, dev)?,
        None => stats.skipped.push("fig3_tsne: no MARNet run in this folder".into()),
    }
    bar.inc(1);
    bar.set_message("report: confidence");
    match (&base, &marnet) {
        (Some(b), Some(m)) => confidence_figures(b, m, opts, &mut stats, &out, dev)?,
        _ => stats.skipped.push("fig4: needs both a baseline and a MARNet run".into()),
    }
    bar.inc(1);
    bar.set_message("report: curves");
    curves_figure(dir, &tables, &out)?;
    bar.inc(1);
    bar.finish_and_clear();
    crate::fsutil::write_atomic(&out.join("figures.json"), serde_json::to_string_pretty(&stats)?.as_bytes())?;
    let extra = crate::fsutil::read_json::<serde_json::Value>(&dir.join("demo.json")).ok();
    html::write(&out, &tables, &stats, extra.as_ref())?;
    Ok(out)
}
