//! `marnet merge-shards`: the caches of `extract --shard i/n`, checked as one set (every shard
//! present once, finished, extracted with the same settings by the same build) and joined in
//! shard order into the cache one extraction would have written.

use super::progress::Job;
use super::{Skipped, partial_dir};
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

/// Checks `dirs` as one complete set of shards, naming every problem at once.
fn check_set(dirs: &[PathBuf]) -> Result<Vec<Shard>> {
    let (mut shards, mut problems, mut unfinished) = (vec![], vec![], BTreeMap::new());
    for dir in dirs {
        let name = dir.display();
        let partial = dir.extension().is_some_and(|e| e == "partial");
        let job_file = if partial { dir.join("job.json") } else { dir.join(super::JOB) };
        if !partial && !dir.exists() && partial_dir(dir).exists() {
            problems.push(format!("{name}: unfinished (only {} is there); resubmit its task, which resumes it", partial_dir(dir).display()));
            continue;
        }
        let job: Job = match read_json(&job_file) {
            Ok(j) => j,
            Err(_) if !dir.exists() => {
                problems.push(format!("{name}: no such folder"));
                continue;
            }
            Err(_) => {
                problems.push(format!("{name}: not a shard cache (no readable {}); give the --out folders of `extract --shard`", job_file.display()));
                continue;
            }
        };
        let Some((index, n)) = slice_of(&job) else {
            problems.push(format!("{name}: extracted without --shard; merge-shards joins the caches of `extract --shard i/n`"));
            continue;
        };
        if partial {
            unfinished.insert(index, format!("{name}: shard {index}/{n} is unfinished; resubmit its task (index {index}), which resumes it"));
            continue;
        }
        shards.push(Shard { dir: dir.clone(), job, index, count: n });
    }
    // A finished shard with an old `.partial` beside it (a glob picks up both) is finished.
    unfinished.retain(|i, _| !shards.iter().any(|s| s.index == *i));
    problems.extend(unfinished.into_values());
    if let Some(first) = shards.first() {
        let n = first.count;
        for s in &shards[1..] {
            if s.count != n {
                problems.push(format!(
                    "{}: shard {}/{} of another set ({} is {}/{n}); give the shards of one extraction",
                    s.dir.display(),
                    s.index,
                    s.count,
                    first.dir.display(),
                    first.index
                ));
            } else if let Some(why) = set_job(&first.job).differs(&set_job(&s.job)) {
                // `why` reads from `first` to `s`: `with other settings (--limit 30 → 20)`.
                problems.push(format!("{}: made, next to {}, {why}; extract it again like the others", s.dir.display(), first.dir.display()));
            }
        }
        for i in 0..n {
            let found: Vec<&Shard> = shards.iter().filter(|s| s.index == i && s.count == n).collect();
            if found.len() > 1 {
                let dirs: Vec<String> = found.iter().map(|s| format!("`{}`", s.dir.display())).collect();
                problems.push(format!("shard {i}/{n} given twice: {}", dirs.join(", ")));
            } else if found.is_empty() && !problems.iter().any(|p| p.contains(&format!("shard {i}/{n} is unfinished"))) {
                problems.push(format!("shard {i}/{n} is missing: extract it (task index {i}) and give its folder"));
            }
        }
    }
    if !problems.is_empty() {
        bail!("cannot merge {}:\n  {}", count(dirs.len(), "folder"), problems.join("\n  "));
    }
    ensure!(!shards.is_empty(), "no shard folders given");
    shards.sort_by_key(|s| s.index);
    Ok(shards)
}

/// The job of the whole: the shards' settings without the slice, and per split the rows
/// summed with the shards' row hashes in order.
fn merged_job(shards: &[Shard]) -> Job {
    let mut job = set_job(&shards[0].job);
    if let Some(o) = job.settings.as_object_mut() {
        o.insert("shard".into(), serde_json::Value::Null);
    }
    for (split, _, _) in &shards[0].job.samples {
        let of: Vec<&(String, usize, String)> = shards.iter().filter_map(|s| s.job.samples.iter().find(|(n, _, _)| n == split)).collect();
        let hashes: Vec<&str> = of.iter().map(|(_, _, h)| h.as_str()).collect();
        job.samples.push((split.clone(), of.iter().map(|(_, n, _)| n).sum(), format!("shards:{}", hashes.join("+"))));
    }
    job
}

/// Merges the shard caches in `dirs` (any order) into `out`, checked as one set first, and says
/// whether `out` already held this merge (then reused). Another cache in `out` is refused
/// unless `force`. Writes `extract.json` (the settings without the slice) and `skipped.jsonl`
/// of the whole.
pub fn merge_shards(dirs: &[PathBuf], out: &Path, force: bool) -> Result<(FeatureCache, bool)> {
    let shards = check_set(dirs)?;
    let job = merged_job(&shards);
    let there = out.join(super::JOB).exists() || FeatureCache::split_path(out, "train").exists();
    if there && !force {
        let same = read_json::<Job>(&out.join(super::JOB)).is_ok_and(|old| old == job);
        ensure!(same, "{}: another cache is already here; --force replaces it, or choose another --out", out.display());
        return Ok((FeatureCache::open(out)?, true));
    }
    let paths: Vec<PathBuf> = shards.iter().map(|s| s.dir.clone()).collect();
    let cache = FeatureCache::merge_shards(&paths, out)?;
    let mut skipped = String::new();
    for s in &shards {
        let file = s.dir.join("skipped.jsonl");
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let _: Skipped = serde_json::from_str(line).with_context(|| format!("{}: not a list of skipped images", file.display()))?;
            skipped.push_str(line);
            skipped.push('\n');
        }
    }
    crate::fsutil::write_atomic(&out.join("skipped.jsonl"), skipped.as_bytes())?;
    crate::fsutil::write_atomic(&out.join(super::JOB), serde_json::to_string_pretty(&job)?.as_bytes())?;
    Ok((cache, false))
}
