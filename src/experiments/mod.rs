//! The paper's tables: several model configurations ("arms") trained on one cache with the same
//! budget, each over several seeds, reported as mean ± std on the test split.
//! Table 2 is the ablation (variants); Table 1 compares alignment losses.

mod arms;
mod card;
mod existing;
mod options;
mod rows;
mod spec;
mod table;

pub use arms::{Arm, ablation_arms, alignment_arms};
pub use card::RunCard;
use existing::PlannedRun;
pub use options::TableOptions;
use rows::add_paired_tests;
pub use rows::{ResultRow, RunResult};
pub use spec::{Existing, TableSpec};
pub use table::{COLUMNS, FOOTNOTE, Table};

use crate::config::TrainConfig;
use crate::eval::pct_mean_std;
use crate::features::FeatureCache;
use crate::features::folds::FoldSpec;
use crate::train::{Verbosity, train};
use crate::words::count;
use anyhow::{Context, Result, ensure};
use candle_core::Device;

/// Refuses a folder for tables that holds anything else than a row's runs (`ema/`, `align-swd/`),
/// a fold's (`fold-apple/`), `report/`, a demo's `cache/`, the tables' JSON and Markdown files
/// and a write's leftover temporary file: `--out` naming a dataset's folder, say.
pub fn check_table_folder(out: &std::path::Path) -> Result<()> {
    let holds = |name: &str| {
        let row = crate::model::marnet::Variant::ALL.iter().any(|v| v.name() == name);
        let prefixed = ["align-", "fold-", "report", "cache"].iter().any(|p| name.starts_with(p));
        row || prefixed || [".json", ".md", ".tmp"].iter().any(|e| name.ends_with(e))
    };
    let other = crate::fsutil::foreign_entries(out, holds);
    ensure!(
        other.is_empty(),
        "{}: this folder holds other things than tables and their runs ({}); a table writes a folder per row into --out: choose a new or empty folder",
        out.display(),
        crate::fsutil::name_list(&other)
    );
    Ok(())
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
/// runs made with other settings are refused unless `spec.existing` replaces them, and anything
/// else than tables and runs always ([`check_table_folder`]). Finished runs
/// made by this code from this data are reused, interrupted ones continued, stale ones trained
/// again; the table says how many of each on stderr (unless quiet). Also returns how many of the
/// table's runs were found finished and reused.
pub fn run_arms(cache: &FeatureCache, arms: &[Arm], spec: &TableSpec, verbosity: Verbosity, dev: &Device) -> Result<(Vec<ResultRow>, usize)> {
    let plan = folds(cache, spec)?;
    // Checked before anything trains.
    ensure!(
        plan.iter().all(|(_, c)| c.test.is_some()),
        "{}: the cache has no test split, and a table scores on it; give the manifest `test` rows (or use --leave-one-out over groups)",
        cache.dir.display()
    );
    // Every row's settings on every fold, all problems at once.
    let mut problems: Vec<String> = vec![];
    for arm in arms {
        for (_, fold_cache) in &plan {
            if let Err(e) = arm.cfg.check(fold_cache) {
                let e = format!("{}: {e:#}", arm.row);
                if !problems.contains(&e) {
                    problems.push(e);
                }
            }
        }
    }
    ensure!(problems.is_empty(), "nothing was trained:\n  {}", problems.join("\n  "));
    let run = ["best", "last", "bundle.json", "train.safetensors"].into_iter().find(|f| spec.out.join(f).exists());
    ensure!(
        run.is_none(),
        "{}: this folder holds a run, a bundle or a cache (`{}`); choose another --out for the table",
        spec.out.display(),
        run.unwrap_or_default()
    );
    check_table_folder(&spec.out)?;
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
    Ok((rows, runs.iter().filter(|r| r.status == existing::RunStatus::Finished).count()))
}

/// Trains every arm as `spec` says (see [`run_arms`]), writes the table and returns it.
pub fn run_table(cache: &FeatureCache, arms: &[Arm], spec: &TableSpec, verbosity: Verbosity, dev: &Device) -> Result<Table> {
    ensure!(spec.task.is_none(), "a task's share of a table writes no table: train it with run_arms");
    let t0 = std::time::Instant::now();
    // One table per folder at a time (a job array's tasks share it: each locks only its runs).
    let _lock = crate::lock::OutLock::acquire(&spec.out, "ablate/compare")?;
    let (rows, reused) = run_arms(cache, arms, spec, verbosity, dev)?;
    let runs = rows.iter().map(|r| r.runs.len()).sum();
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
        card: Some(RunCard { runs, reused_runs: reused, ..RunCard::now(cache, fold_test_rows, t0.elapsed().as_secs_f64(), dev) }),
    };
    let before = Table::read(&spec.out, &spec.file).ok().flatten();
    table.write(&spec.out, &spec.file)?;
    let report = spec.out.join("report/report.html");
    if report.exists() && before.is_some_and(|b| b.markdown() != table.markdown()) {
        eprintln!("note: {} shows the table this one replaced; `marnet report {}` redoes it", report.display(), spec.out.display());
    }
    Ok(table)
}
