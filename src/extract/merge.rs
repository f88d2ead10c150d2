//! `marnet merge-shards`: the caches of `extract --shard i/n`, checked as one set (every shard
//! present once, finished, extracted from the same rows with the same settings by the same
//! build) and joined in shard order into the cache one extraction would have written.

use super::options::{JOB, Skipped, partial_dir};
use super::progress::{Job, ROWS, RowHashes, is_cache_file};
use crate::features::FeatureCache;
use crate::fsutil::read_json;
use crate::words::count;
use anyhow::{Context, Result, bail, ensure};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One shard folder as given: its job and slice.
struct Shard {
    dir: PathBuf,
    job: Job,
    index: usize,
    count: usize,
}

/// The slice a job was extracted with (`"shard": "i/n"` of its settings).
fn slice_of(job: &Job) -> Option<(usize, usize)> {
    let s = job.settings.get("shard")?.as_str()?;
    crate::cluster::TaskSlice::resolve_with(s, "--shard", |_| None).ok().map(|t| (t.index, t.count))
}

/// The job without what differs between the shards of one set.
fn set_job(job: &Job) -> Job {
    let mut j = job.clone();
    if let Some(o) = j.settings.as_object_mut() {
        o.remove("shard");
    }
    j.samples.clear();
    j
}

/// `shard 1/3 (array task 1 of --array=0-2, 2 of --array=1-3)`.
fn shard_name(index: usize, n: usize) -> String {
    format!("shard {index}/{n} (array task {index} of --array=0-{}, {} of --array=1-{n})", n - 1, index + 1)
}

/// Checks `dirs` as one complete set of shards, naming every problem at once.
fn check_set(dirs: &[PathBuf]) -> Result<Vec<Shard>> {
    let (mut shards, mut problems, mut unfinished) = (vec![], vec![], BTreeMap::new());
    for dir in dirs {
        let name = dir.display();
        let partial = dir.extension().is_some_and(|e| e == "partial");
        // `X.partial` given, or `X` given with only `X.partial` there.
        let progress = if partial { Some(dir.clone()) } else { (!dir.exists() && partial_dir(dir).exists()).then(|| partial_dir(dir)) };
        if let Some(progress) = progress {
            let finished = progress.with_extension("");
            match read_json::<Job>(&progress.join("job.json")).ok().as_ref().and_then(slice_of) {
                Some((i, n)) => {
                    unfinished.insert((i, n), format!("{}: {} is unfinished; rerun its extraction (the whole array, or `extract --shard {i}/{n}`: finished shards are reused), which resumes it", progress.display(), shard_name(i, n)));
                }
                // Left by an extraction that saved nothing, beside its finished shard.
                None if finished.join(JOB).exists() => {}
                None => problems.push(format!("{}: an extraction that saved nothing; delete it and resubmit its task", progress.display())),
            }
            continue;
        }
        let job: Job = match read_json(&dir.join(JOB)) {
            Ok(j) => j,
            Err(_) if !dir.exists() => {
                problems.push(format!("{name}: no such folder"));
                continue;
            }
            Err(_) => {
                problems.push(format!("{name}: not a shard cache (no readable {}); give the --out folders of `extract --shard`", JOB));
                continue;
            }
        };
        let Some((index, n)) = slice_of(&job) else {
            problems.push(format!("{name}: extracted without --shard; merge-shards joins the caches of `extract --shard i/n`"));
            continue;
        };
        shards.push(Shard { dir: dir.clone(), job, index, count: n });
    }
    // A finished shard with an old `.partial` beside it (a glob picks up both) is finished.
    unfinished.retain(|(i, n), _| !shards.iter().any(|s| s.index == *i && s.count == *n));
    let first = shards.first().map(|s| (s.dir.clone(), s.count, set_job(&s.job)));
    if let Some((first_dir, n, first_job)) = first {
        // The shards of this count by the job they come from: more than one is a mix.
        let mut jobs: Vec<(Job, Vec<&Shard>)> = vec![(first_job, vec![])];
        for s in &shards {
            if s.count != n {
                problems.push(format!(
                    "{}: shard {}/{} of another set ({} is one of {n}); give the shards of one extraction",
                    s.dir.display(),
                    s.index,
                    s.count,
                    first_dir.display()
                ));
                continue;
            }
            let job = set_job(&s.job);
            match jobs.iter_mut().find(|(j, _)| j.differs(&job).is_none()) {
                Some((_, members)) => members.push(s),
                None => jobs.push((job, vec![s])),
            }
        }
        if jobs.len() > 1 {
            // Which job is the stale one, the folders cannot tell: when each was made can.
            let made = |s: &Shard| std::fs::metadata(s.dir.join(JOB)).and_then(|m| m.modified()).map(httpdate::fmt_http_date).unwrap_or_else(|_| "?".into());
            let list: Vec<String> =
                jobs.iter().map(|(_, m)| m.iter().map(|s| format!("{} (extracted {})", s.dir.display(), made(s))).collect::<Vec<_>>().join(", ")).collect();
            // `differs` reads from the first job to the second: `with other settings (--limit 30 → 20)`.
            let why = jobs[0].0.differs(&jobs[1].0).unwrap_or_default();
            problems.push(format!(
                "the shards come from {} extractions, the second made {why} than the first:\n    {}\n  extract again (with --force) the shards made before you last changed the dataset or the settings, so that all come from one",
                jobs.len(),
                list.join("\n    ")
            ));
        }
        for i in 0..n {
            let found: Vec<&Shard> = shards.iter().filter(|s| s.index == i && s.count == n).collect();
            if found.len() > 1 {
                let dirs: Vec<String> = found.iter().map(|s| format!("`{}`", s.dir.display())).collect();
                problems.push(format!("shard {i}/{n} given twice: {}", dirs.join(", ")));
            } else if found.is_empty() && !unfinished.contains_key(&(i, n)) {
                problems.push(format!("{} is missing: extract it and give its folder", shard_name(i, n)));
            }
        }
    }
    problems.extend(unfinished.into_values());
    if !problems.is_empty() {
        bail!("cannot merge {}:\n  {}", count(dirs.len(), "folder"), problems.join("\n  "));
    }
    ensure!(!shards.is_empty(), "no shard folders given");
    shards.sort_by_key(|s| s.index);
    Ok(shards)
}

/// The job one extraction of the whole would record: the shards' settings without the slice,
/// and the whole dataset's rows (shards made before that was recorded: the rows summed and the
/// shards' hashes in order).
fn merged_job(shards: &[Shard]) -> Job {
    let mut job = set_job(&shards[0].job);
    if let Some(o) = job.settings.as_object_mut() {
        o.insert("shard".into(), serde_json::Value::Null);
    }
    job.samples = std::mem::take(&mut job.whole);
    if job.samples.is_empty() {
        for (split, _, _) in &shards[0].job.samples {
            let of: Vec<&(String, usize, String)> = shards.iter().filter_map(|s| s.job.samples.iter().find(|(n, _, _)| n == split)).collect();
            let hashes: Vec<&str> = of.iter().map(|(_, _, h)| h.as_str()).collect();
            job.samples.push((split.clone(), of.iter().map(|(_, n, _)| n).sum(), format!("shards:{}", hashes.join("+"))));
        }
    }
    job
}

/// Refuses an `out` that is one of the shards, or holds anything but a cache.
fn check_out(out: &Path, shards: &[Shard]) -> Result<()> {
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let target = abs(out);
    if let Some(s) = shards.iter().find(|s| target.starts_with(abs(&s.dir)) || abs(&s.dir).starts_with(&target)) {
        bail!("{}: --out is (or holds) the shard {}; merge into a folder of its own", out.display(), s.dir.display());
    }
    ensure!(!out.is_file(), "{}: --out is a file; name a folder for the merged cache", out.display());
    let other = crate::fsutil::foreign_entries(out, is_cache_file);
    ensure!(
        other.is_empty(),
        "{}: this folder holds other things than a feature cache ({}); merge into a new or empty folder",
        out.display(),
        crate::fsutil::name_list(&other)
    );
    Ok(())
}

/// Merges the shard caches in `dirs` (any order) into `out`, checked as one set first, and says
/// whether `out` already held this merge (then reused). Another cache in `out` is refused
/// unless `force`. Writes the `extract.json` and `rows.json` one extraction of the whole writes,
/// and `skipped.jsonl` of the whole.
pub fn merge_shards(dirs: &[PathBuf], out: &Path, force: bool) -> Result<(FeatureCache, bool)> {
    let shards = check_set(dirs)?;
    check_out(out, &shards)?;
    let _lock = crate::lock::OutLock::acquire(out, "merge-shards")?;
    let job = merged_job(&shards);
    if !force && (out.join(JOB).exists() || FeatureCache::split_path(out, "train").exists()) {
        let old = read_json::<Job>(&out.join(JOB)).ok();
        let why = old.as_ref().map_or(Some("without an extract.json".to_string()), |old| old.differs(&job));
        ensure!(
            why.is_none(),
            "{}: another cache is already here, made {}; --force replaces it, or choose another --out",
            out.display(),
            why.unwrap_or_default()
        );
        return Ok((FeatureCache::open(out)?, true));
    }
    let paths: Vec<PathBuf> = shards.iter().map(|s| s.dir.clone()).collect();
    let cache = FeatureCache::merge_shards(&paths, out)?;
    let (mut skipped, mut rows) = (String::new(), Some(RowHashes::new()));
    for s in &shards {
        let file = s.dir.join("skipped.jsonl");
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let _: Skipped = serde_json::from_str(line).with_context(|| format!("{}: not a list of skipped images", file.display()))?;
            skipped.push_str(line);
            skipped.push('\n');
        }
        // Rows of the whole, in shard order (none if a shard lacks them).
        match (read_json::<RowHashes>(&s.dir.join(ROWS)).ok(), rows.as_mut()) {
            (Some(part), Some(all)) => part.into_iter().for_each(|(split, r)| all.entry(split).or_default().extend(r)),
            _ => rows = None,
        }
    }
    crate::fsutil::write_atomic(&out.join("skipped.jsonl"), skipped.as_bytes())?;
    match rows {
        Some(rows) => crate::fsutil::write_atomic(&out.join(ROWS), serde_json::to_string(&rows)?.as_bytes())?,
        None if out.join(ROWS).exists() => std::fs::remove_file(out.join(ROWS)).with_context(|| format!("{}: cannot remove", out.join(ROWS).display()))?,
        None => {}
    }
    crate::fsutil::write_atomic(&out.join(JOB), serde_json::to_string_pretty(&job)?.as_bytes())?;
    Ok((cache, false))
}
