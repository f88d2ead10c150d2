//! The numbers behind each figure, taken from the saved runs, and the figures drawn from them.

use super::options::ReportOptions;
use super::plots::{self, Band, ConfidenceFigure, CurvePanel, CurvesFigure, Example, ExamplesFigure, FoldBars, FoldsFigure, Scatter, TsneFigure};
use super::stats::{ExampleRecord, FigureStats};
use super::tsne;
use crate::checkpoint::Checkpoint;
use crate::eval::predict_split;
use crate::experiments::Table;
use crate::features::{FeatureCache, FeatureSplit};
use crate::train::TrainState;
use crate::words::count;
use anyhow::{Context, Result, ensure};
use candle_core::Device;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The run folders of arm `key`: of every fold (fold tables) and, with `all_seeds`, every seed
/// (else the first).
pub fn run_dirs(dir: &Path, key: &str, tables: &[(String, Table)], all_seeds: bool) -> Vec<PathBuf> {
    let Some(row) = tables.iter().flat_map(|(_, t)| t.rows.iter()).find(|r| r.key == key) else { return vec![] };
    let seeds = if all_seeds { &row.seeds[..] } else { &row.seeds[..row.seeds.len().min(1)] };
    let folds: Vec<PathBuf> = match row.folds.is_empty() {
        true => vec![dir.to_path_buf()],
        false => row.folds.iter().map(|f| dir.join(f)).collect(),
    };
    folds.iter().flat_map(|f| seeds.iter().map(move |s| f.join(key).join(format!("seed{s}")))).filter(|d| d.join("best").is_dir()).collect()
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
pub fn tsne_figure(runs: &[Checkpoint], opts: &ReportOptions, stats: &mut FigureStats, out: &Path, dev: &Device) -> Result<()> {
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
        stats.skipped.push((
            "fig3_tsne".into(),
            "the test split has one image per class, and a t-SNE of one point per class shows nothing; run the table with --leave-one-out (`marnet demo --leave-one-out`, `marnet ablate ... --leave-one-out`) and `marnet report DIR`: each held-out group (vendor) adds a point per class".into(),
        ));
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
    note += &format!("; x_CDR from the MARNet row's first seed{}", if folds > 1 { " in each fold" } else { "" });
    match left.is_empty() {
        true => note += &format!(", of {}: {}", count(drawn.len(), "class"), listed(drawn)),
        false => {
            let all = drawn.len() + left.len();
            note += &format!(
                ", of the {} with the most test images (--tsne-classes; ties: the first in class order): {}",
                count(drawn.len(), "class"),
                listed(drawn)
            );
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

/// `k` indices spread evenly over `of` (all of them if fewer).
fn spread(of: &[usize], k: usize) -> Vec<usize> {
    let k = k.min(of.len());
    (0..k).map(|i| of[i * of.len() / k]).collect()
}

/// Figure 4: the examples (half of them, where there are such images, ones on which the
/// baseline's and the CDR head's top-1 differ) and the confidence histogram.
pub fn confidence_figures(base: &Checkpoint, marnet: &Checkpoint, opts: &ReportOptions, stats: &mut FigureStats, out: &Path, dev: &Device) -> Result<()> {
    let cache = marnet.open_cache()?;
    let test = cache.test.as_ref().context("the cache has no test split")?;
    let classes = &marnet.run.classes;
    let c = classes.len();
    let pb = predict_split(&base.model(dev)?.model, test, &base.run.train.inference(), dev)?;
    let pm = predict_split(&marnet.model(dev)?.model, test, &marnet.run.train.inference(), dev)?;
    let heads = [softmax_rows(&pb.logits, c, dev)?, softmax_rows(&pm.cdr_logits.context("the MARNet run has no CDR head")?, c, dev)?];
    let names = ["Baseline".to_string(), "CDR head (MARNet)".to_string()];
    let n = test.len();
    let argmax = |p: &[f32]| p.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i);
    let (differ, agree): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| argmax(&heads[0][i]) != argmax(&heads[1][i]));
    let want = opts.examples.min(n);
    // Half where they differ, half where they agree; the other kind fills a short one.
    let n_differ = want.div_ceil(2).max(want.saturating_sub(agree.len())).min(differ.len());
    let mut picks = spread(&differ, n_differ);
    picks.extend(spread(&agree, want - picks.len()));
    picks.sort();
    stats.examples_rule = format!(
        "{} of the {} test images: {} evenly spaced among the {} on which the two heads' top-1 differ, {} evenly spaced among the {} on which they agree (--examples)",
        picks.len(),
        n,
        picks.iter().filter(|i| differ.contains(i)).count(),
        differ.len(),
        picks.iter().filter(|i| !differ.contains(i)).count(),
        agree.len(),
    );
    let split = marnet.run.fold.as_ref().map(|f| format!("the test split of the first fold, held-out group `{}`", f.test_group));
    stats.examples_source = format!("{}, {} images; models of the rows' first seed, {}", split.unwrap_or("the test split".into()), n, marnet.run.train.seed);
    stats.examples = picks
        .iter()
        .map(|&i| ExampleRecord {
            id: test.meta.ids[i].clone(),
            true_class: classes[test.label[i] as usize].clone(),
            heads: [top5(&heads[0][i], classes), top5(&heads[1][i], classes)],
            heads_differ: differ.contains(&i),
            thumbnail: None,
        })
        .collect();
    let examples = stats.examples.iter().map(|e| Example { title: format!("{}  (true class: {})", e.id, e.true_class), heads: e.heads.clone() }).collect();
    plots::save(&ExamplesFigure { head_names: names.clone(), examples }, &out.join("fig4_examples"))?;
    let max_probs = [0, 1].map(|h| heads[h].iter().map(|p| p.iter().copied().fold(0.0, f32::max)).collect::<Vec<f32>>());
    let mean = |v: &[f32]| v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
    (stats.mean_max_prob_baseline, stats.mean_max_prob_cdr) = (Some(mean(&max_probs[0])), Some(mean(&max_probs[1])));
    let title = format!("Max class probability on test ({})", count(n, "image"));
    plots::save(&ConfidenceFigure { title, head_names: names, max_probs }, &out.join("fig4_confidence"))?;
    Ok(())
}

/// Mean and (mean - std, mean + std) of `v`.
fn band(v: &[f64]) -> (f32, f32, f32) {
    let (m, s) = crate::stats::mean_std(v);
    (m as f32, (m - s) as f32, (m + s) as f32)
}

/// The loss terms of the model (`Marnet::losses`) and their colours ([`plots::color`]: black,
/// olive, brick, plum, gold, none of the ten the rows use); any other term is the row's
/// alignment loss (ita, sdm, ...), in blue-violet.
const TERMS: [(&str, usize); 5] = [("ce", 19), ("ce_ema", 11), ("ce_cdr", 18), ("ce_fused", 14), ("mse", 17)];
const ALIGN_COLOR: usize = 15;

/// A row's colour ([`plots::color`]), the same in every figure and report.
fn row_color(key: &str) -> usize {
    const ROWS: [&str; 10] = ["baseline", "ema", "mlp", "cdr", "marnet", "align-swd", "align-ssan", "align-cdd", "align-sdm", "align-team"];
    ROWS.iter().position(|r| *r == key).unwrap_or(16)
}

/// Values of one quantity per epoch, over runs.
type PerEpoch = BTreeMap<usize, Vec<f64>>;

/// The training curves of every row: loss terms and val top-1 per epoch, mean ± std over all of
/// its runs (seeds and folds).
pub fn curves_figure(dir: &Path, tables: &[(String, Table)], out: &Path) -> Result<()> {
    let mut rows: Vec<(String, String)> = vec![];
    for r in tables.iter().flat_map(|(_, t)| t.rows.iter()) {
        if !rows.iter().any(|(k, _)| *k == r.key) {
            rows.push((r.key.clone(), r.row.clone()));
        }
    }
    // Per row: term -> epoch -> values over runs, and epoch -> val top-1 over runs.
    let mut per_row = vec![];
    for (key, row) in &rows {
        let (mut terms, mut val): (BTreeMap<String, PerEpoch>, PerEpoch) = Default::default();
        for run in run_dirs(dir, key, tables, true) {
            let last = crate::fsutil::recover_dir(&run.join("last")).with_context(|| {
                format!(
                    "{}: no last/ checkpoint, whose metrics.json has the run's training curves; run the table's command again to train the run anew",
                    run.display()
                )
            })?;
            let state: TrainState = crate::fsutil::read_json(&last.join(crate::checkpoint::METRICS))?;
            for h in &state.history {
                for (k, v) in &h.losses {
                    terms.entry(k.clone()).or_default().entry(h.epoch).or_default().push(*v);
                }
                val.entry(h.epoch).or_default().push(100.0 * h.val.final_head.top1);
            }
        }
        if !val.is_empty() {
            per_row.push((key.clone(), row.clone(), terms, val));
        }
    }
    ensure!(!per_row.is_empty(), "no run folders with training history under {}", dir.display());
    // A term's colour is fixed (the same in every report), and apart from the rows' colours.
    let mut legend: Vec<(String, usize)> = vec![];
    let mut aligns: Vec<String> = vec![];
    for t in per_row.iter().flat_map(|(_, _, t, _)| t.keys()) {
        match TERMS.iter().find(|(x, _)| x == t) {
            Some((_, c)) => legend.push((t.clone(), *c)),
            None => aligns.push(t.clone()),
        }
    }
    aligns.sort();
    aligns.dedup();
    legend.sort_by_key(|(t, _)| TERMS.iter().position(|(x, _)| x == t));
    legend.dedup();
    if !aligns.is_empty() {
        legend.push((format!("alignment loss ({})", aligns.join(", ")), ALIGN_COLOR));
    }
    let term_color = |t: &str| TERMS.iter().find(|(x, _)| *x == t).map_or(ALIGN_COLOR, |(_, c)| *c);
    let curve = |m: &PerEpoch| m.iter().map(|(&e, v)| (e as f32, band(v).0, band(v).1, band(v).2)).collect::<Vec<_>>();
    let panels = per_row
        .iter()
        .map(|(_, row, terms, _)| CurvePanel {
            title: format!("{row}: loss terms"),
            y_desc: "loss".into(),
            series: terms.iter().map(|(t, m)| Band { name: t.clone(), color: term_color(t), points: curve(m) }).collect(),
        })
        .collect();
    let runs = tables.iter().flat_map(|(_, t)| t.rows.first()).map(|r| r.seeds.len() * r.folds.len().max(1)).max().unwrap_or(1);
    let val = CurvePanel {
        title: match runs {
            1 => "val top-1 of every row (1 run each)".to_string(),
            n => format!("val top-1 of every row, mean ± std over {n} runs"),
        },
        y_desc: "val top-1 (%)".into(),
        series: per_row.iter().map(|(key, row, _, v)| Band { name: row.clone(), color: row_color(key), points: curve(v) }).collect(),
    };
    plots::save(&CurvesFigure { terms: legend, panels, val }, &out.join("curves"))?;
    Ok(())
}

/// Leave-one-out tables: each row's test top-1 per held-out group, with a 95% interval (Wilson,
/// over the fold's test images; seeds averaged). None without folds.
pub fn folds_figure(tables: &[(String, Table)], out: &Path) -> Result<bool> {
    let Some((_, t)) = tables.iter().find(|(_, t)| t.rows.first().is_some_and(|r| !r.folds.is_empty())) else { return Ok(false) };
    let sizes = t.card.as_ref().map(|c| c.fold_test_rows.clone()).unwrap_or_default();
    let rows = t
        .rows
        .iter()
        .map(|r| FoldBars {
            row: r.row.clone(),
            color: row_color(&r.key),
            values: r
                .fold_top1()
                .iter()
                .enumerate()
                .map(|(f, &p)| {
                    let (lo, hi) = sizes.get(f).map_or((p, p), |&n| crate::stats::wilson95(p, n));
                    (100.0 * p as f32, 100.0 * lo as f32, 100.0 * hi as f32)
                })
                .collect(),
        })
        .collect();
    let groups = t.rows[0].folds.iter().map(|f| f.trim_start_matches("fold-").to_string()).collect();
    plots::save(&FoldsFigure { groups, rows }, &out.join("folds"))?;
    Ok(true)
}
