//! The paper's tables: several model configurations ("arms") trained on one cache with the same
//! budget, each over several seeds, reported as mean ± std on the test split.
//! Table 2 is the ablation (variants); Table 1 compares alignment losses.

use crate::align::Alignment;
use crate::config::TrainConfig;
use crate::eval::EvalResult;
use crate::eval::pct_mean_std;
use crate::features::FeatureCache;
use crate::features::folds::FoldSpec;
use crate::model::marnet::{MarnetConfig, Variant};
use crate::stats::PairedTest;
use crate::stats::mean_std;
use crate::train::{Resume, Verbosity, train};
use anyhow::{Context, Result, ensure};
use candle_core::Device;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One row of a table: a configuration, its folder name and its label.
#[derive(Debug, Clone)]
pub struct Arm {
    pub key: String,
    pub row: String,
    pub cfg: MarnetConfig,
}

/// Table 2: the given variants (all five if empty), each as configured in `base`.
pub fn ablation_arms(base: &MarnetConfig, variants: &[Variant]) -> Vec<Arm> {
    let variants = if variants.is_empty() { &Variant::ALL[..] } else { variants };
    variants.iter().map(|&v| Arm { key: v.name().into(), row: v.table_row().into(), cfg: MarnetConfig { variant: v, ..base.clone() } }).collect()
}

/// Table 1: the visual baseline, EMA with each alignment loss, and full MARNet (with ITA).
pub fn alignment_arms(base: &MarnetConfig, aligns: &[Alignment]) -> Vec<Arm> {
    let aligns = if aligns.is_empty() { &Alignment::ALL[..] } else { aligns };
    let mut arms = vec![Arm { key: "baseline".into(), row: "Visual baseline".into(), cfg: MarnetConfig { variant: Variant::Baseline, ..base.clone() } }];
    for &a in aligns {
        arms.push(Arm {
            // EMA with ITA is the ablation's +EMA row: same folder, trained once.
            key: if a == Alignment::Ita { Variant::Ema.name().into() } else { format!("align-{}", a.name()) },
            row: a.table_row().into(),
            cfg: MarnetConfig { variant: Variant::Ema, align: a, ..base.clone() },
        });
    }
    arms.push(Arm { key: "marnet".into(), row: "MARNet".into(), cfg: MarnetConfig { variant: Variant::Marnet, align: Alignment::Ita, ..base.clone() } });
    arms
}

/// What one run of a row reported on its test split.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunResult {
    /// Fold folder name (`fold-apple`), empty without folds.
    pub fold: String,
    pub seed: u64,
    pub test: Option<EvalResult>,
    pub val_top1: f64,
    /// Per test row: top-1 right (for the paired tests; not written to the table JSON).
    #[serde(skip)]
    pub hits: Vec<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResultRow {
    pub key: String,
    pub row: String,
    pub config: MarnetConfig,
    pub seeds: Vec<u64>,
    /// Fold folder names in run order (empty: the cache's own splits).
    #[serde(default)]
    pub folds: Vec<String>,
    /// Test top-1 / top-5 per run, fold-major (every seed of the first fold, then the next).
    pub test_top1: Vec<f64>,
    pub test_top5: Vec<f64>,
    pub val_top1: Vec<f64>,
    /// The EMA and CDR heads' own test top-1 per run, for rows that have them.
    #[serde(default)]
    pub ema_head_top1: Vec<f64>,
    #[serde(default)]
    pub cdr_head_top1: Vec<f64>,
    /// Mean cosine of x_CDR to the true x_s on test, per run (rows with a reconstruction).
    #[serde(default)]
    pub test_cosine: Vec<f64>,
    /// 95% t-interval of the mean test top-1 over the runs (folds x seeds).
    #[serde(default)]
    pub ci95_top1: (f64, f64),
    /// Paired comparisons of top-1 on the same test images (scores averaged over seeds).
    #[serde(default)]
    pub vs_baseline: Option<PairedTest>,
    #[serde(default)]
    pub vs_ema: Option<PairedTest>,
    /// Mean wall time of an epoch's training steps.
    pub train_seconds_per_epoch: f64,
    #[serde(skip)]
    pub runs: Vec<RunResult>,
}

/// Resamples of the paired bootstrap.
const BOOTSTRAP_REPS: usize = 10_000;

impl ResultRow {
    fn new(arm: &Arm, seeds: &[u64], runs: Vec<RunResult>, train_seconds_per_epoch: f64) -> Self {
        let pick = |f: &dyn Fn(&EvalResult) -> Option<f64>| -> Vec<f64> { runs.iter().filter_map(|r| r.test.as_ref().and_then(f)).collect() };
        let mut folds: Vec<String> = runs.iter().map(|r| r.fold.clone()).filter(|f| !f.is_empty()).collect();
        folds.dedup();
        let test_top1 = pick(&|t| Some(t.final_head.top1));
        Self {
            key: arm.key.clone(),
            row: arm.row.clone(),
            config: arm.cfg.clone(),
            seeds: seeds.to_vec(),
            folds,
            ci95_top1: crate::stats::ci95(&test_top1),
            test_top1,
            test_top5: pick(&|t| Some(t.final_head.top5)),
            val_top1: runs.iter().map(|r| r.val_top1).collect(),
            ema_head_top1: pick(&|t| t.ema_head.map(|a| a.top1)),
            cdr_head_top1: pick(&|t| t.cdr_head.map(|a| a.top1)),
            test_cosine: pick(&|t| t.reconstruction.map(|r| r.cosine)),
            vs_baseline: None,
            vs_ema: None,
            train_seconds_per_epoch,
            runs,
        }
    }

    /// Per test image (over all folds), the share of seeds whose top-1 was right.
    fn image_scores(&self) -> Vec<f64> {
        let seeds = self.seeds.len().max(1);
        let mut out = vec![];
        for fold_runs in self.runs.chunks(seeds) {
            let n = fold_runs[0].hits.len();
            out.extend((0..n).map(|i| fold_runs.iter().filter(|r| r.hits[i]).count() as f64 / fold_runs.len() as f64));
        }
        out
    }

    /// Mean test top-1 of each fold (over seeds).
    pub fn fold_top1(&self) -> Vec<f64> {
        self.test_top1.chunks(self.seeds.len().max(1)).map(|c| mean_std(c).0).collect()
    }
}

/// Fills each row's paired tests against the rows keyed `baseline` and `ema`, when present.
fn add_paired_tests(rows: &mut [ResultRow]) {
    let scores: Vec<Vec<f64>> = rows.iter().map(ResultRow::image_scores).collect();
    let find = |key: &str| rows.iter().position(|r| r.key == key);
    let (base, ema) = (find("baseline"), find(Variant::Ema.name()));
    for (i, row) in rows.iter_mut().enumerate() {
        let test = |j: Option<usize>| {
            j.filter(|&j| j != i && !scores[i].is_empty() && scores[i].len() == scores[j].len())
                .map(|j| crate::stats::paired_test(&scores[i], &scores[j], BOOTSTRAP_REPS, 0))
        };
        (row.vs_baseline, row.vs_ema) = (test(base), test(ema));
    }
}

/// Trains every arm for each fold and seed into `out/[<fold>/]<key>/seed<k>`. Finished runs are
/// resumed (a no-op) when made by this code from this data, and trained again when not, so an
/// interrupted table picks up where it stopped and a stale one is recomputed. `folds` empty: the
/// cache's own splits.
#[allow(clippy::too_many_arguments)]
pub fn run_arms(
    cache: &FeatureCache,
    arms: &[Arm],
    train_cfg: &TrainConfig,
    seeds: &[u64],
    folds: &[FoldSpec],
    out: &Path,
    verbosity: Verbosity,
    dev: &Device,
) -> Result<Vec<ResultRow>> {
    let plan: Vec<(Option<&FoldSpec>, FeatureCache)> = match folds {
        [] => vec![(None, cache.clone())],
        _ => folds.iter().map(|f| Ok((Some(f), crate::features::folds::fold(cache, f)?))).collect::<Result<_>>()?,
    };
    // With bars only, one bar over every run of the table; per-epoch lines with `Epochs`.
    let bar = crate::progress::bar(verbosity == Verbosity::Progress, (arms.len() * plan.len() * seeds.len()) as u64, "runs", "training");
    let run_verbosity = if verbosity == Verbosity::Epochs { verbosity } else { Verbosity::Quiet };
    let mut rows = Vec::new();
    for arm in arms {
        let (mut runs, mut secs) = (vec![], vec![]);
        for (spec, fold_cache) in &plan {
            let dir = spec.map_or(out.to_path_buf(), |f| out.join(f.name()));
            for &seed in seeds {
                let tc = TrainConfig { seed, ..train_cfg.clone() };
                let run_dir = dir.join(&arm.key).join(format!("seed{seed}"));
                bar.set_message(format!("{} {}seed {seed}", arm.key, spec.map(|f| format!("{} ", f.name())).unwrap_or_default()));
                let state = train(fold_cache, &arm.cfg, &tc, &run_dir, Resume::IfCurrent, run_verbosity, dev)
                    .with_context(|| format!("training {} (seed {seed}{})", arm.key, spec.map(|f| format!(", {}", f.name())).unwrap_or_default()))?;
                ensure!(state.test.is_some(), "{}: the cache has no test split", cache.dir.display());
                secs.extend(state.history.iter().map(|h| h.train_seconds));
                bar.inc(1);
                runs.push(RunResult {
                    fold: spec.map(|f| f.name()).unwrap_or_default(),
                    seed,
                    test: state.test,
                    val_top1: state.best_val_top1,
                    hits: state.test_hits,
                });
            }
        }
        let row = ResultRow::new(arm, seeds, runs, mean_std(&secs).0);
        if verbosity != Verbosity::Quiet {
            bar.suspend(|| eprintln!("{}: test top1 {}", row.row, pct_mean_std(&row.test_top1)));
        }
        rows.push(row);
    }
    bar.finish_and_clear();
    add_paired_tests(&mut rows);
    Ok(rows)
}

/// How a table is run and where it goes: `OUT/<file>.md` and `OUT/<file>.json`, the runs in
/// `OUT/[<fold>/]<row>/seed<k>`.
#[derive(Debug, Clone)]
pub struct TableSpec {
    /// Its title's start (`Ablation (Table 2)`) and its first column's heading (`Module`).
    pub what: String,
    pub first_column: String,
    pub file: String,
    pub out: std::path::PathBuf,
    pub seeds: Vec<u64>,
    /// Every group of rows (vendor) is the test split once, with validation as `fold_val` says.
    pub leave_one_out: bool,
    pub fold_val: crate::features::folds::FoldVal,
    pub train: TrainConfig,
    /// The command line, recorded with the table.
    pub command: String,
}

/// Trains every arm as `spec` says (resuming current runs), writes the table and returns it.
pub fn run_table(cache: &FeatureCache, arms: &[Arm], spec: &TableSpec, verbosity: Verbosity, dev: &Device) -> Result<Table> {
    let folds: Vec<FoldSpec> = match spec.leave_one_out {
        true => crate::features::folds::groups(cache)?.into_iter().map(|g| FoldSpec { test_group: g, val: spec.fold_val, seed: spec.train.seed }).collect(),
        false => vec![],
    };
    let rows = run_arms(cache, arms, &spec.train, &spec.seeds, &folds, &spec.out, verbosity, dev)?;
    let split = match folds.len() {
        0 => "test split".to_string(),
        n => format!("leave-one-group-out over {n} folds, {} validation", spec.fold_val.name()),
    };
    let table = Table {
        title: format!("{} on `{}`: {} seeds, {} epochs; {split}, model selected on val", spec.what, cache.dir.display(), spec.seeds.len(), spec.train.epochs),
        first_column: spec.first_column.clone(),
        command: spec.command.clone(),
        train: spec.train.clone(),
        rows,
    };
    table.write(&spec.out, &spec.file)?;
    Ok(table)
}

/// A finished table with what produced it (`OUT/<name>.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Table {
    pub title: String,
    pub first_column: String,
    /// The command line that produced it.
    pub command: String,
    pub train: TrainConfig,
    pub rows: Vec<ResultRow>,
}

/// `"+1.23 (p=0.004**)"`: a paired difference in points with its bootstrap p-value and marker.
fn paired_cell(t: &Option<PairedTest>) -> String {
    match t {
        Some(t) => format!("{:+.2} (p={:.3}{})", 100.0 * t.diff, t.p_bootstrap, crate::stats::significance_marker(t.p_bootstrap)),
        None => "".into(),
    }
}

/// `"55.1 / 60.2"`-style list of percentages, or empty.
fn pct_list(xs: &[f64]) -> String {
    xs.iter().map(|x| format!("{:.1}", 100.0 * x)).collect::<Vec<_>>().join(" / ")
}

impl Table {
    /// The header and the cells of every row, shared by the markdown and HTML renderings.
    pub fn cells(&self) -> (Vec<String>, Vec<Vec<String>>) {
        let folds: Vec<String> = self.rows.first().map(|r| r.folds.iter().map(|f| f.trim_start_matches("fold-").to_string()).collect()).unwrap_or_default();
        let mut head: Vec<String> = vec![self.first_column.clone(), "Acc-1 (%)".into(), "95% CI".into(), "Acc-5 (%)".into()];
        if !folds.is_empty() {
            head.push(format!("Acc-1 per held-out group ({})", folds.join(" / ")));
        }
        head.extend([
            "vs baseline".into(),
            "vs +EMA".into(),
            "heads EMA / CDR Acc-1".into(),
            "cos(x_CDR, x_s)".into(),
            "val Acc-1 (%)".into(),
            "train s/epoch".into(),
        ]);
        let rows = self
            .rows
            .iter()
            .map(|r| {
                let mut c = vec![
                    r.row.clone(),
                    pct_mean_std(&r.test_top1),
                    format!("{:.1}–{:.1}", 100.0 * r.ci95_top1.0, 100.0 * r.ci95_top1.1),
                    pct_mean_std(&r.test_top5),
                ];
                if !folds.is_empty() {
                    c.push(pct_list(&r.fold_top1()));
                }
                let heads = match (r.ema_head_top1.is_empty(), r.cdr_head_top1.is_empty()) {
                    (false, false) => format!("{:.2} / {:.2}", 100.0 * mean_std(&r.ema_head_top1).0, 100.0 * mean_std(&r.cdr_head_top1).0),
                    _ => "".into(),
                };
                let cos = if r.test_cosine.is_empty() { String::new() } else { format!("{:.3}", mean_std(&r.test_cosine).0) };
                c.extend([
                    paired_cell(&r.vs_baseline),
                    paired_cell(&r.vs_ema),
                    heads,
                    cos,
                    pct_mean_std(&r.val_top1),
                    format!("{:.2}", r.train_seconds_per_epoch),
                ]);
                c
            })
            .collect();
        (head, rows)
    }

    /// The rows as a markdown table under the title, with a legend for the statistics.
    pub fn markdown(&self) -> String {
        let (head, rows) = self.cells();
        let mut s = format!("{}\n\n| {} |\n|{}\n", self.title, head.join(" | "), "---|".repeat(head.len()));
        for r in rows {
            s += &format!("| {} |\n", r.join(" | "));
        }
        s + "\nAcc: mean ± std over runs (folds × seeds); 95% CI: t-interval of that mean. vs baseline / vs +EMA: \
             difference in top-1 points on the same test images (per-image accuracy averaged over seeds), \
             paired bootstrap p-value (* p < 0.05, ** p < 0.01).\n"
    }

    /// Writes `dir/<name>.md` and `dir/<name>.json`.
    pub fn write(&self, dir: &Path, name: &str) -> Result<()> {
        crate::fsutil::write_atomic(&dir.join(format!("{name}.md")), self.markdown().as_bytes())?;
        crate::fsutil::write_atomic(&dir.join(format!("{name}.json")), serde_json::to_string_pretty(self)?.as_bytes())
    }

    /// Reads `dir/<name>.json`, if present.
    pub fn read(dir: &Path, name: &str) -> Result<Option<Table>> {
        let p = dir.join(format!("{name}.json"));
        if !p.exists() {
            return Ok(None);
        }
        crate::fsutil::read_json(&p).map(Some)
    }
}
