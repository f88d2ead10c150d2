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
use crate::words::count;
use anyhow::{Context, Result, ensure};
use candle_core::Device;
use plots::{ConfidenceFigure, CurvePanel, CurvesFigure, Example, ExamplesFigure, Scatter, TsneFigure};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What `report` draws (the flags of `report` and `demo`).
#[derive(Debug, Clone, clap::Args)]
pub struct ReportOptions {
    /// TrueType font for the figures [default: DejaVuSans.ttf in the assets folder, found as
    /// for `extract --assets`].
    #[arg(long)]
    pub font: Option<PathBuf>,
    /// Classes in the t-SNE figure (Fig. 3): those with the most test images.
    #[arg(long, default_value_t = 5, value_parser = crate::options::at_least_one::<usize>)]
    pub tsne_classes: usize,
    /// Test images per class in the t-SNE figure, at most (the figure needs 2 per class).
    #[arg(long, default_value_t = 100, value_parser = crate::options::at_least_two::<usize>)]
    pub tsne_per_class: usize,
    /// Test images in the top-5 figure (Fig. 4).
    #[arg(long, default_value_t = 6, value_parser = crate::options::at_least_one::<usize>)]
    pub examples: usize,
    /// Show progress bars.
    #[arg(skip)]
    pub progress: bool,
}

impl ReportOptions {
    /// The figures' font: `--font`, else the one in `assets` (else in the folder
    /// [`crate::assets::resolve`] finds).
    pub fn font(&self, assets: Option<&Path>) -> Result<PathBuf> {
        match &self.font {
            Some(f) => Ok(f.clone()),
            None => Ok(crate::assets::resolve(assets)?.join(crate::assets::FONT)),
        }
    }
}

impl Default for ReportOptions {
    fn default() -> Self {
        crate::options::defaults()
    }
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
    /// The classes in fig3_tsne: those with the most test images (`--tsne-classes`), and the
    /// classes with test images that it leaves out.
    pub tsne_classes: Vec<String>,
    pub tsne_classes_left_out: Vec<String>,
    /// Figures not drawn and why.
    pub skipped: Vec<String>,
}

/// The first seed's run folder of arm `key`: in every fold (fold tables), or the one run.
fn run_dirs(dir: &Path, key: &str, tables: &[(String, Table)]) -> Vec<PathBuf> {
    let Some(row) = tables.iter().flat_map(|(_, t)| t.rows.iter()).find(|r| r.key == key) else { return vec![] };
    let Some(seed) = row.seeds.first() else { return vec![] };
    let folds: Vec<PathBuf> = match row.folds.is_empty() {
        true => vec![dir.to_path_buf()],
        false => row.folds.iter().map(|f| dir.join(f)).collect(),
    };
    folds.into_iter().map(|f| f.join(key).join(format!("seed{seed}"))).filter(|d| d.join("best").is_dir()).collect()
}

/// The first seed's run folder of arm `key` (its first fold's, for fold tables).
fn run_dir(dir: &Path, key: &str, tables: &[(String, Table)]) -> Option<PathBuf> {
    run_dirs(dir, key, tables).into_iter().next()
}

/// Row-wise softmax of `logits` [N, C].
fn softmax_rows(logits: &[f32], c: usize, dev: &Device) -> Result<Vec<Vec<f32>>> {
    let t = candle_core::Tensor::from_slice(logits, (logits.len() / c, c), dev)?;
    Ok(candle_nn::ops::softmax_last_dim(&t)?.to_vec2()?)
}

fn top5(p: &[f32], classes: &[String]) -> Vec<(String, f32)> {
    crate::bundle::top_k(p, classes, 5).into_iter().map(|c| (c.class, c.prob)).collect()
}

/// Image-only test rows of `classes` (up to `per_class` each) from the cache a run was trained
/// on, with that run's out-of-sample x_CDR.
fn test_rows_with_x_cdr(ck: &Checkpoint, cache: &FeatureCache, classes: &[u32], per_class: usize, dev: &Device) -> Result<(FeatureSplit, Vec<f32>)> {
    let test = cache.test.as_ref().context("the cache has no test split")?;
    let mut idx = vec![];
    for &c in classes {
        idx.extend((0..test.len()).filter(|&i| test.label[i] == c).take(per_class));
    }
    let rows = FeatureSplit { text: None, ds: 0, ..test.subset(&idx) };
    let model = ck.model(dev)?;
    let pred = predict_split(&model.model, &rows, &ck.run.train.inference(), dev)?;
    Ok((rows, pred.x_cdr.context("the model has no reconstruction head")?))
}

/// Figure 3 from test images only: x_v and the sampled (out-of-sample) x_CDR of the classes with
/// the most test images, over every fold's test split when the runs are folds (each vendor's
/// image of a class is then a point). Not drawn when the classes have under 2 points each.
fn tsne_figure(runs: &[Checkpoint], opts: &ReportOptions, stats: &mut FigureStats, out: &Path, dev: &Device) -> Result<()> {
    let caches: Vec<FeatureCache> =
        runs.iter().map(|ck| ck.open_cache().with_context(|| format!("the cache the run at {} was trained on", ck.dir.display()))).collect::<Result<_>>()?;
    let n_classes = caches[0].num_classes();
    let mut counts = vec![0usize; n_classes];
    for c in &caches {
        c.test.as_ref().context("the cache has no test split")?.label.iter().for_each(|&l| counts[l as usize] += 1);
    }
    let mut order: Vec<u32> = (0..n_classes as u32).collect();
    order.sort_by_key(|&c| (std::cmp::Reverse(counts[c as usize]), c));
    let (chosen, rest) = order.split_at(opts.tsne_classes.min(n_classes));
    let fewest = chosen.iter().map(|&c| counts[c as usize].min(opts.tsne_per_class)).min().unwrap_or(0);
    if fewest < 2 {
        stats.skipped.push("fig3_tsne: the test split has one image per class; run with --leave-one-out for one point per group (vendor)".into());
        return Ok(());
    }
    let name = |c: &u32| caches[0].train.meta.classes[*c as usize].clone();
    stats.tsne_classes = chosen.iter().map(name).collect();
    stats.tsne_classes_left_out = rest.iter().filter(|&&c| counts[c as usize] > 0).map(name).collect();
    let (mut xv, mut xc, mut labels) = (vec![], vec![], vec![]);
    for (ck, cache) in runs.iter().zip(&caches) {
        let (rows, x_cdr) = test_rows_with_x_cdr(ck, cache, chosen, opts.tsne_per_class, dev)?;
        let ds = x_cdr.len() / rows.len().max(1);
        xv.extend(rows.visual.chunks(rows.dv).map(<[f32]>::to_vec));
        xc.extend(x_cdr.chunks(ds).map(<[f32]>::to_vec));
        labels.extend(rows.label);
    }
    let (yv, yc) = (tsne::embed(&xv, 0)?, tsne::embed(&xc, 0)?);
    // k nearest neighbours: 5, or fewer when a class has fewer other members.
    let smallest = labels.iter().map(|l| labels.iter().filter(|m| *m == l).count()).min().unwrap_or(1);
    let k = 5.min(smallest.saturating_sub(1)).max(1);
    let (pv, pc) = (tsne::knn_purity(&yv, &labels, k), tsne::knn_purity(&yc, &labels, k));
    (stats.tsne_purity_xv, stats.tsne_purity_xcdr, stats.tsne_points, stats.tsne_k) = (Some(pv), Some(pc), labels.len(), k);
    let mut names: Vec<(u32, String)> = labels.iter().map(|&l| (l, caches[0].train.meta.classes[l as usize].clone())).collect();
    names.sort();
    names.dedup();
    let fig = TsneFigure {
        panels: [
            Scatter { title: format!("x_v (image features), {k}-NN purity {pv:.2}"), points: yv, labels: labels.clone() },
            Scatter { title: format!("x_CDR (sampled from x_v), {k}-NN purity {pc:.2}"), points: yc, labels },
        ],
        class_names: names,
    };
    plots::save(&fig, &out.join("fig3_tsne"))?;
    crate::fsutil::write_atomic(&out.join("fig3_tsne.txt"), tsne_note(stats, runs.len(), opts).as_bytes())
}

/// What Figure 3 shows: its test images, the classes drawn and those left out, and the flags
/// that change them.
fn tsne_note(stats: &FigureStats, folds: usize, opts: &ReportOptions) -> String {
    let source = match folds {
        1 => "the test split".to_string(),
        n => format!("the test splits of {} (leave-one-group-out)", count(n, "fold")),
    };
    let per = format!("up to {} per class{} (--tsne-per-class)", opts.tsne_per_class, if folds > 1 { " and fold" } else { "" });
    let (drawn, left) = (&stats.tsne_classes, &stats.tsne_classes_left_out);
    let mut note = format!("t-SNE rows: {} from {source}, {per}", count(stats.tsne_points, "test image"));
    match left.is_empty() {
        true => note += &format!(", of {}: {}", count(drawn.len(), "class"), listed(drawn)),
        false => {
            let all = drawn.len() + left.len();
            note += &format!(", of the {} with the most test images (--tsne-classes): {}", count(drawn.len(), "class"), listed(drawn));
            note += &format!("; left out: {} (`--tsne-classes {all}` draws all {all})", listed(left));
        }
    }
    note
}

/// `` `a`, `b` `` and, past ten names, `and N more`.
fn listed(names: &[String]) -> String {
    let shown: Vec<String> = names.iter().take(10).map(|n| format!("`{n}`")).collect();
    match names.len().saturating_sub(10) {
        0 => shown.join(", "),
        more => format!("{} and {more} more", shown.join(", ")),
    }
}

fn confidence_figures(base: &Checkpoint, marnet: &Checkpoint, opts: &ReportOptions, stats: &mut FigureStats, out: &Path, dev: &Device) -> Result<()> {
    let cache = marnet.open_cache()?;
    let test = cache.test.as_ref().context("the cache has no test split")?;
    let classes = &marnet.run.classes;
    let c = classes.len();
    let pb = predict_split(&base.model(dev)?.model, test, &base.run.train.inference(), dev)?;
    let pm = predict_split(&marnet.model(dev)?.model, test, &marnet.run.train.inference(), dev)?;
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
    let title = format!("Max class probability on test ({})", count(n, "image"));
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

/// Writes `DIR/report/` from the saved results in `dir`, all of it or, on failure, none (the
/// previous report stays); returns the report folder.
pub fn write(dir: &Path, opts: &ReportOptions, dev: &Device) -> Result<PathBuf> {
    plots::use_font(&opts.font(None)?)?;
    let mut tables = vec![];
    for name in ["ablation", "comparison"] {
        if let Some(t) = Table::read(dir, name)? {
            tables.push((name.to_string(), t));
        }
    }
    ensure!(!tables.is_empty(), "{}: no ablation.json or comparison.json (run `marnet ablate`, `compare` or `demo` first)", dir.display());
    // Written whole into `report.tmp` and swapped in: a report that fails leaves the last one.
    let out = dir.join("report");
    crate::fsutil::replace_dir(&out, |tmp| write_into(dir, &tables, opts, tmp, dev))?;
    Ok(out)
}

/// Writes the report of the tables of `dir` into the folder `out`.
fn write_into(dir: &Path, tables: &[(String, Table)], opts: &ReportOptions, out: &Path, dev: &Device) -> Result<()> {
    let bar = crate::progress::bar(opts.progress, 4, "steps", "report: tables");
    let md: String = tables.iter().map(|(_, t)| t.markdown() + "\n").collect();
    crate::fsutil::write_atomic(&out.join("tables.md"), md.as_bytes())?;
    let json: BTreeMap<&str, &Table> = tables.iter().map(|(n, t)| (n.as_str(), t)).collect();
    crate::fsutil::write_atomic(&out.join("tables.json"), serde_json::to_string_pretty(&json)?.as_bytes())?;
    bar.inc(1);

    let mut stats = FigureStats::default();
    let open = |key: &str| -> Option<Checkpoint> { run_dir(dir, key, tables).and_then(|d| Checkpoint::open(&d, dev).ok()) };
    let (marnet, base) = (open("marnet"), open("baseline"));
    bar.set_message("report: t-SNE");
    let marnet_folds: Vec<Checkpoint> = run_dirs(dir, "marnet", tables).iter().map(|d| Checkpoint::open(d, dev)).collect::<Result<_>>()?;
    match marnet_folds.is_empty() {
        false => tsne_figure(&marnet_folds, opts, &mut stats, out, dev)?,
        true => stats.skipped.push("fig3_tsne: no MARNet run in this folder".into()),
    }
    bar.inc(1);
    bar.set_message("report: confidence");
    match (&base, &marnet) {
        (Some(b), Some(m)) => confidence_figures(b, m, opts, &mut stats, out, dev)?,
        _ => stats.skipped.push("fig4: needs both a baseline and a MARNet run".into()),
    }
    bar.inc(1);
    bar.set_message("report: curves");
    curves_figure(dir, tables, out)?;
    bar.inc(1);
    bar.finish_and_clear();
    crate::fsutil::write_atomic(&out.join("figures.json"), serde_json::to_string_pretty(&stats)?.as_bytes())?;
    let extra = crate::fsutil::read_json::<serde_json::Value>(&dir.join("demo.json")).ok();
    html::write(out, tables, &stats, extra.as_ref())
}
