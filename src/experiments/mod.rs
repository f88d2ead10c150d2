//! The paper's tables: several model configurations ("arms") trained on one cache with the same
//! budget, each over several seeds, reported as mean ± std on the test split.
//! Table 2 is the ablation (variants); Table 1 compares alignment losses.

use crate::align::Alignment;
mod card;
mod existing;
mod options;
mod table;

pub use card::RunCard;
pub use existing::Existing;
use existing::PlannedRun;
pub use options::TableOptions;
pub use table::{COLUMNS, FOOTNOTE, Table};

use crate::config::TrainConfig;
use crate::eval::EvalResult;
use crate::eval::pct_mean_std;
use crate::features::FeatureCache;
use crate::features::folds::FoldSpec;
use crate::model::marnet::{MarnetConfig, Variant};
use crate::stats::PairedTest;
use crate::stats::mean_std;
use crate::train::{Verbosity, train};
use crate::words::count;
use anyhow::{Context, Result, ensure};
use candle_core::Device;
use serde::{Deserialize, Serialize};

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
    /// Mean wall time of an epoch's training steps, and their sum over every epoch of every run.
    pub train_seconds_per_epoch: f64,
    #[serde(default)]
    pub train_seconds: f64,
    #[serde(skip)]
    pub runs: Vec<RunResult>,
}

/// Resamples of the paired bootstrap.
const BOOTSTRAP_REPS: usize = 10_000;

impl ResultRow {
    fn new(arm: &Arm, seeds: &[u64], runs: Vec<RunResult>, epoch_seconds: &[f64]) -> Self {
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
            train_seconds_per_epoch: mean_std(epoch_seconds).0,
            train_seconds: epoch_seconds.iter().sum(),
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

/// The folds `spec` asks for, each with its fold of the cache (one entry without a fold
/// without `--leave-one-out`). Every fold is checked, and every problem named, before any
/// training.
fn folds(cache: &FeatureCache, spec: &TableSpec) -> Result<Vec<(Option<FoldSpec>, FeatureCache)>> {
    if !spec.leave_one_out {
        return Ok(vec![(None, cache.clone())]);
    }
    let specs: Vec<FoldSpec> =
        crate::features::folds::groups(cache)?.into_iter().map(|g| FoldSpec { test_group: g, val: spec.fold_val, seed: spec.train.seed }).collect();
    let caches = crate::features::folds::folds(cache, &specs)?;
    Ok(specs.into_iter().map(Some).zip(caches).collect())
}

/// Trains every arm for each fold and seed as `spec` says into `OUT/[<fold>/]<key>/seed<k>` and
/// returns the rows (without writing the table); with `spec.task`, only that task's share of
/// the runs (every n-th, in the order planned) and no rows. First it looks at what `OUT` holds: a table or
/// runs made with other settings are refused unless `spec.existing` replaces them. Finished runs
/// made by this code from this data are reused, interrupted ones continued, stale ones trained
/// again; the table says how many of each on stderr (unless quiet).
pub fn run_arms(cache: &FeatureCache, arms: &[Arm], spec: &TableSpec, verbosity: Verbosity, dev: &Device) -> Result<Vec<ResultRow>> {
    let plan = folds(cache, spec)?;
    // Checked before anything trains.
    ensure!(
        plan.iter().all(|(_, c)| c.test.is_some()),
        "{}: the cache has no test split, and a table scores on it; give the manifest `test` rows (or use --leave-one-out over groups)",
        cache.dir.display()
    );
    let run = ["best", "last", "bundle.json", "train.safetensors"].into_iter().find(|f| spec.out.join(f).exists());
    ensure!(
        run.is_none(),
        "{}: this folder holds a run, a bundle or a cache (`{}`); choose another --out for the table",
        spec.out.display(),
        run.unwrap_or_default()
    );
    let previous = existing::previous(spec)?;
    let now: Vec<_> = plan.iter().map(|(_, c)| existing::current(c)).collect();
    let mut runs = vec![];
    for arm in arms {
        for ((fold, _), now) in plan.iter().zip(&now) {
            for &seed in &spec.seeds {
                let rel = format!("{}{}/seed{seed}", fold.as_ref().map(|f| format!("{}/", f.name())).unwrap_or_default(), arm.key);
                let dir = spec.out.join(&rel);
                let tc = TrainConfig { seed, ..spec.train.clone() };
                runs.push(existing::plan_run(dir, rel, &arm.cfg, &tc, fold.as_ref(), now));
            }
        }
    }
    existing::check(spec, previous.as_ref(), arms, &runs)?;
    let mine: Vec<bool> = (0..runs.len()).map(|j| spec.task.is_none_or(|t| t.owns(j))).collect();
    // With bars only, one bar over every run of the table; per-epoch lines with `Epochs`.
    let owned = mine.iter().filter(|m| **m).count();
    if let Some(t) = spec.task.filter(|_| owned == 0) {
        eprintln!("task {t}: the table has {} for {} tasks; this one has none", count(runs.len(), "run"), t.count);
    }
    let bar = crate::progress::bar(verbosity == Verbosity::Progress, owned as u64, "runs", "training");
    let run_verbosity = if verbosity == Verbosity::Epochs { verbosity } else { Verbosity::Quiet };
    let (mut planned, mut rows) = (runs.iter().zip(&mine), Vec::new());
    for arm in arms {
        let (mut results, mut secs) = (vec![], vec![]);
        for (fold, fold_cache) in &plan {
            let fold_name = fold.as_ref().map(|f| f.name()).unwrap_or_default();
            for &seed in &spec.seeds {
                let (run, is_mine) = planned.next().expect("a planned run for every arm, fold and seed");
                if !is_mine {
                    continue;
                }
                let tc = TrainConfig { seed, ..spec.train.clone() };
                bar.set_message(format!("{} {}seed {seed}", arm.key, fold.as_ref().map(|f| format!("{} ", f.name())).unwrap_or_default()));
                let state = train(fold_cache, &arm.cfg, &tc, &run.dir, run.status.resume(), run_verbosity, dev)
                    .with_context(|| format!("training {} (seed {seed}{})", arm.key, fold.as_ref().map(|f| format!(", {}", f.name())).unwrap_or_default()))?;
                ensure!(state.test.is_some(), "{}: the cache has no test split", cache.dir.display());
                secs.extend(state.history.iter().map(|h| h.train_seconds));
                bar.inc(1);
                results.push(RunResult { fold: fold_name.clone(), seed, test: state.test, val_top1: state.best_val_top1, hits: state.test_hits });
            }
        }
        if spec.task.is_some() {
            continue;
        }
        let row = ResultRow::new(arm, &spec.seeds, results, &secs);
        if verbosity != Verbosity::Quiet {
            bar.suspend(|| eprintln!("{}: test top1 {}", row.row, pct_mean_std(&row.test_top1)));
        }
        rows.push(row);
    }
    bar.finish_and_clear();
    if verbosity != Verbosity::Quiet {
        let share: Vec<PlannedRun> = runs.iter().zip(&mine).filter(|(_, m)| **m).map(|(r, _)| r.clone()).collect();
        let of = spec.task.map(|t| format!("task {t}, {} of {}: ", count(owned, "run"), runs.len())).unwrap_or_default();
        eprintln!("{of}{}", existing::summary(&share));
    }
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
    /// What to do with a table or runs in `out` made with other settings.
    pub existing: Existing,
    /// Train only this task's share of the runs (a job array's task) and write no table.
    pub task: Option<crate::cluster::TaskSlice>,
}

/// Trains every arm as `spec` says (see [`run_arms`]), writes the table and returns it.
pub fn run_table(cache: &FeatureCache, arms: &[Arm], spec: &TableSpec, verbosity: Verbosity, dev: &Device) -> Result<Table> {
    ensure!(spec.task.is_none(), "a task's share of a table writes no table: train it with run_arms");
    let t0 = std::time::Instant::now();
    let rows = run_arms(cache, arms, spec, verbosity, dev)?;
    // Each fold's test rows: the first row's first seed's run of each fold.
    let fold_test_rows = match rows.first() {
        Some(r) if !r.folds.is_empty() => r.runs.chunks(r.seeds.len().max(1)).filter_map(|c| c[0].test.as_ref().map(|t| t.final_head.n)).collect(),
        _ => vec![],
    };
    let split = match rows.first().map_or(0, |r| r.folds.len()) {
        0 => "test split".to_string(),
        n => format!("leave-one-group-out over {}, {} validation", count(n, "fold"), spec.fold_val.name()),
    };
    let (seeds, epochs) = (count(spec.seeds.len(), "seed"), count(spec.train.epochs, "epoch"));
    let table = Table {
        title: format!("{} on `{}`: {seeds}, {epochs}; {split}, model selected on val", spec.what, cache.dir.display()),
        first_column: spec.first_column.clone(),
        command: spec.command.clone(),
        train: spec.train.clone(),
        fold_val: spec.leave_one_out.then_some(spec.fold_val),
        rows,
        card: Some(RunCard::now(cache, fold_test_rows, t0.elapsed().as_secs_f64(), dev)),
    };
    table.write(&spec.out, &spec.file)?;
    Ok(table)
}
