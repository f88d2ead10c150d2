//! `marnet extract`: a dataset through the frozen encoders into a feature cache.
//!
//! Work is saved in blocks of a few batches under `OUT.partial/` as it goes, so a run that is
//! killed or stopped with Ctrl-C resumes at the last completed block when the same command is
//! run again; the finished cache is identical to an uninterrupted run's. A run that fails before
//! saving a block leaves no `OUT.partial/`; a rerun whose dataset differs from the saved progress
//! names the rows that changed and keeps the blocks whose rows did not. With `skip_bad`, images
//! that cannot be read are left out and listed in `OUT/skipped.jsonl`. With `--tokens`, each
//! split also stores the encoders' token features (see [`crate::features`]): the visual tokens
//! are saved in the progress blocks with the pooled rows, the text tokens are computed with the
//! pooled text features at the end of each split, as those are.
//!
//! A cache already in `OUT` is never replaced unasked: made by this build from the same samples
//! with the same settings, it is reused; otherwise it is refused unless `--force` (see [`Existing`]).

mod encode;
mod merge;
mod options;
mod progress;
mod settings;

pub use merge::merge_shards;
pub use options::{DEFAULT_TEXT, Existing, ExtractOptions, Skipped, partial_dir};
use options::{JOB, Splits};
pub use settings::ExtractSettings;

use crate::data::Dataset;
use crate::encoders::ImageEncoder;
use crate::encoders::text::TextEncoder;
use crate::features::{FeatureCache, FeatureSplit};
use anyhow::{Context, Result, ensure};
use candle_core::Device;
use progress::Job;
use std::path::{Path, PathBuf};

/// A finished (or reused) extraction, for the one-line summary `extract` prints.
pub struct Extracted {
    pub dataset: String,
    pub classes: usize,
    pub dir: PathBuf,
    /// The splits written, in order (train, val, test); a manifest of test rows only has no train.
    pub splits: Vec<(&'static str, FeatureSplit)>,
    pub skipped: Vec<Skipped>,
    pub seconds: f64,
    pub origin: Origin,
}

/// Where an extraction's cache came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Encoded now.
    Encoded,
    /// Encoded now from where an interrupted run's saved progress (`OUT.partial`) left off.
    Continued,
    /// The cache already in `dir` (same samples, settings and build).
    Reused,
}

impl Extracted {
    /// The split called `name`, if written.
    pub fn split(&self, name: &str) -> Option<&FeatureSplit> {
        self.splits.iter().find(|(n, _)| *n == name).map(|(_, s)| s)
    }

    /// The cache for training: it needs a train split.
    pub fn into_cache(self) -> Result<FeatureCache> {
        let mut splits = self.splits.into_iter();
        let mut take = |name: &str| splits.find(|(n, _)| *n == name).map(|(_, s)| s);
        let train = take("train").with_context(|| format!("{}: the cache has no training rows", self.dir.display()))?;
        Ok(FeatureCache { dir: self.dir, train, val: take("val"), test: take("test"), fold: None })
    }
}

impl std::fmt::Display for Extracted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rows = |name: &str| self.split(name).map_or(0, |s| s.len());
        let n = rows("train") + rows("val") + rows("test");
        let Some((_, first)) = self.splits.first() else { return write!(f, "no rows extracted") };
        let ds = match self.splits.iter().map(|(_, s)| s.ds).max().unwrap_or(0) {
            0 => "no text".to_string(),
            d => format!("text {d}-d"),
        };
        let tokens = match (&first.visual_tokens, self.splits.iter().find_map(|(_, s)| s.text_tokens.as_ref())) {
            (Some(v), Some(t)) => format!("; tokens: visual {} x {}, text up to {} x {}", v.len, v.dim, t.len, t.dim),
            (Some(v), None) => format!("; tokens: visual {} x {}", v.len, v.dim),
            _ => String::new(),
        };
        let what = format!(
            "{}: {} classes; train {} / val {} / test {} rows; visual {}-d, {}{tokens}",
            self.dataset,
            self.classes,
            rows("train"),
            rows("val"),
            rows("test"),
            first.dv,
            ds
        );
        if self.origin == Origin::Reused {
            return write!(f, "{what}; reused the cache already in {} (same samples, settings and marnet build; --force extracts again)", self.dir.display());
        }
        let skipped = match self.skipped.len() {
            0 => "0 skipped".to_string(),
            k => format!("{k} skipped (listed in {})", self.dir.join("skipped.jsonl").display()),
        };
        let rate = match self.origin {
            Origin::Continued => "continuing an interrupted run's saved progress".to_string(),
            _ => format!("{:.1} images/s", n as f64 / self.seconds),
        };
        write!(f, "{what}; {n} images in {:.1}s ({rate}); {skipped}; wrote {}", self.seconds, self.dir.display())
    }
}

/// `marnet extract` (and `demo`'s extraction): the dataset and encoders `settings` name, from
/// the assets folder, into `settings.out`; a cache already there as `existing` says (`--force`
/// makes it [`Existing::Replace`]).
pub fn run(settings: &ExtractSettings, progress: bool, existing: Existing, dev: &Device) -> Result<Extracted> {
    let s = settings;
    let emoji = s.dataset.starts_with("emoji-");
    ensure!(
        !emoji || s.root.is_none(),
        "--root is not used by --dataset {}; for your own images add `--dataset manifest` (--root is then the manifest file)",
        s.dataset
    );
    let defaults: ExtractSettings = crate::options::parse(&["--out", "x"])?;
    let emoji_only = [
        ("--test-vendor", s.test_vendor != defaults.test_vendor),
        ("--val-fraction", s.val_fraction != defaults.val_fraction),
        ("--seed", s.seed != defaults.seed),
    ];
    if let Some((flag, _)) = emoji_only.iter().find(|(_, set)| *set && !emoji) {
        anyhow::bail!(
            "{flag} applies to the emoji datasets only, not --dataset {}; a manifest says each row's split itself (rows without `val` get a share of train held out by `train --val-fraction`)",
            s.dataset
        );
    }
    let assets = crate::assets::resolve(settings.assets.as_deref())?;
    let open = crate::data::OpenOptions {
        test_vendor: s.test_vendor.clone(),
        val_fraction: s.val_fraction,
        seed: s.seed,
        skin_tones: s.skin_tones,
        check_images: !s.skip_bad,
    };
    let ds = crate::data::open_with(&s.dataset, s.root.as_deref(), &assets, &open)?;
    check_limit(&ds, s.limit)?;
    // A shard is a slice of what one extraction would encode: --limit first.
    let slice = s.shard.as_deref().map(|sh| crate::cluster::TaskSlice::resolve(sh, "--shard")).transpose()?;
    let (ds, limit, whole) = match slice {
        Some(t) => {
            let ds = ds.limited(s.limit);
            let whole = progress::splits_record(&[("train", ds.train.clone()), ("val", ds.val.clone()), ("test", ds.test.clone())], &ds.classes);
            // Each shard takes a share of every split: with more shards than the largest split
            // has rows, some get none, and the set could never be merged (refused in every task).
            let most = [&ds.train, &ds.val, &ds.test].map(Vec::len).into_iter().max().unwrap_or(0);
            ensure!(
                t.count <= most,
                "--shard {t}: more shards than rows: each shard takes a share of every split, and the largest split has {}, so use at most {most} shards (n in i/n)",
                crate::words::count(most, "row")
            );
            (ds.shard(t.index, t.count), None, whole)
        }
        None => (ds, s.limit, vec![]),
    };
    // Recorded as the slice it is (`env` is where it came from).
    let resolved = ExtractSettings { shard: slice.map(|t| t.to_string()), ..s.clone() };
    let image_enc = crate::encoders::load_image_encoder(&s.visual, &assets, dev)?;
    let fetched = assets.join("minilm");
    let text_enc = match &s.text {
        Some(dir) => TextEncoder::load(dir, dev).context("--text")?,
        None => TextEncoder::load(&fetched, dev).context("the default text encoder (scripts/fetch-assets fetches it)")?,
    };
    // The fetched MiniLM has one name however it is named.
    let fetched = s.text.as_ref().is_none_or(|dir| dir.canonicalize().ok() == fetched.canonicalize().ok());
    let text_enc = if fetched { text_enc.named(DEFAULT_TEXT) } else { text_enc };
    // The assets and text encoder folders are where the inputs came from, not what they are: not
    // recorded (the text encoder's identity is).
    let existing = if s.force { Existing::Replace } else { existing };
    let opts =
        ExtractOptions { batch: s.batch, limit, skip_bad: s.skip_bad, tokens: s.tokens, progress, settings: settings::recorded(&resolved)?, existing, whole };
    let t0 = std::time::Instant::now();
    let (splits, skipped, origin) = extract(&ds, image_enc.as_ref(), &text_enc, &opts, &s.out, dev).with_context(|| format!("extracting {}", s.dataset))?;
    let seconds = t0.elapsed().as_secs_f64();
    Ok(Extracted { dataset: ds.name.clone(), classes: ds.classes.len(), dir: s.out.clone(), splits, skipped, seconds, origin })
}

/// `--limit n` keeps the first n rows of each split in the dataset's order (a manifest's lines):
/// refused where that leaves the training rows one class, noted where it leaves some without.
fn check_limit(ds: &Dataset, limit: Option<usize>) -> Result<()> {
    let Some(n) = limit.filter(|&n| n < ds.train.len()) else { return Ok(()) };
    let classes = |rows: &[crate::data::Sample]| rows.iter().map(|r| r.label).collect::<std::collections::BTreeSet<u32>>();
    let (kept, all) = (classes(crate::data::limited_rows(&ds.train, limit)), classes(&ds.train));
    let first = &ds.classes[ds.train[0].label as usize];
    ensure!(
        kept.len() >= 2 || all.len() < 2,
        "--limit {n}: the training rows it keeps (the first {n}) are all of class `{first}`, and a classifier needs two classes; raise --limit, or list the rows with their classes mixed"
    );
    if kept.len() < all.len() {
        eprintln!("note: --limit {n} keeps the training rows of {} of the {} classes (the first {n} rows of each split, in order)", kept.len(), all.len());
    }
    Ok(())
}

/// Extracts every split of `ds` and writes the cache to `out` (resuming from `OUT.partial` if
/// an earlier run of the same job left one; a cache already in `out` as `opts.existing` says).
/// Returns the splits written (a split whose images all failed is left out), the skipped samples,
/// and whether an existing cache was reused.
pub fn extract(
    ds: &Dataset,
    image_enc: &dyn ImageEncoder,
    text_enc: &TextEncoder,
    opts: &ExtractOptions,
    out: &Path,
    dev: &Device,
) -> Result<(Splits, Vec<Skipped>, Origin)> {
    let kept = |split: &[crate::data::Sample]| crate::data::limited_rows(split, opts.limit).to_vec();
    let splits: Vec<(&str, Vec<crate::data::Sample>)> = vec![("train", kept(&ds.train)), ("val", kept(&ds.val)), ("test", kept(&ds.test))];
    ensure!(splits.iter().any(|(_, v)| !v.is_empty()), "the dataset has no samples");
    let job = Job {
        settings: opts.settings.clone(),
        visual_encoder: image_enc.name().to_string(),
        text_encoder: text_enc.identity().clone(),
        code: crate::fingerprint::code(),
        samples: progress::splits_record(&splits, &ds.classes),
        tokens: opts.tokens,
        whole: opts.whole.clone(),
    };
    ensure!(!out.is_file(), "{}: --out is a file; name a folder for the feature cache", out.display());
    let other = ["best", "last", crate::bundle::BUNDLE].into_iter().find(|f| out.join(f).exists());
    ensure!(
        other.is_none(),
        "{}: this folder holds a training run or a bundle (`{}`); choose another --out for the feature cache",
        out.display(),
        other.unwrap_or_default()
    );
    let other = crate::fsutil::foreign_entries(out, progress::is_cache_file);
    ensure!(
        other.is_empty() || out.join(JOB).is_file(),
        "{}: this folder holds other things than a feature cache ({}); choose a new or empty folder for --out",
        out.display(),
        crate::fsutil::name_list(&other)
    );
    let _lock = crate::lock::OutLock::acquire(out, "extract")?;
    let rows = progress::row_hashes(&splits, &ds.classes);
    if let Some((saved, found, skipped)) = progress::cache_in(out).or_else(|e| if opts.existing == Existing::Replace { Ok(None) } else { Err(e) })? {
        match (saved.differs(&job), opts.existing) {
            (None, Existing::ReuseOrRefuse | Existing::ReuseOrReplace) => return Ok((found, skipped, Origin::Reused)),
            (Some(why), Existing::ReuseOrRefuse) => {
                let changes = match crate::fsutil::read_json::<progress::RowHashes>(&out.join(progress::ROWS)) {
                    Ok(saved_rows) if saved.samples != job.samples => format!(":\n{}\n", progress::describe_changes(&saved_rows, &rows, &splits)),
                    _ => "; ".into(),
                };
                anyhow::bail!("{}: a feature cache is already here, made {why}{changes}pass --force to replace it, or choose another --out", out.display())
            }
            (Some(why), Existing::ReuseOrReplace) => eprintln!("{}: stale feature cache (made {why}): extracting again", out.display()),
            (_, Existing::Replace) => {}
        }
    }
    let partial = partial_dir(out);
    let _stop = crate::interrupt::stop_at_safe_points("stopping once the block of images being encoded is saved");
    let origin = match progress::claim_progress(&partial, &job, &rows, &splits, opts.batch.max(1) * options::BLOCK_BATCHES, opts.existing)? {
        true => {
            eprintln!("{}: continuing the unfinished extraction saved there", partial.display());
            Origin::Continued
        }
        false => Origin::Encoded,
    };
    let result = write_cache(ds, &splits, image_enc, text_enc, opts, out, &partial, &job, dev);
    if result.is_err() && !progress::has_blocks(&partial) {
        // Nothing saved: nothing to resume, and nothing to stand in the way of the fixed rerun.
        let _ = std::fs::remove_dir_all(&partial);
    }
    result.map(|(splits, skipped)| (splits, skipped, origin))
}

/// Runs the encoders over `splits` (saving progress in `partial`) and writes the cache to `out`.
#[allow(clippy::too_many_arguments)]
fn write_cache(
    ds: &Dataset,
    splits: &[(&'static str, Vec<crate::data::Sample>)],
    image_enc: &dyn ImageEncoder,
    text_enc: &TextEncoder,
    opts: &ExtractOptions,
    out: &Path,
    partial: &Path,
    job: &Job,
    dev: &Device,
) -> Result<(Splits, Vec<Skipped>)> {
    let run = encode::Extraction { image_enc, text_enc, opts, partial: partial.to_path_buf(), dev };
    let mut found = vec![];
    let mut skipped = Vec::new();
    for (name, samples) in splits {
        if samples.is_empty() {
            continue;
        }
        let (split, sk) = run.split(name, samples, ds).with_context(|| format!("extracting {name}"))?;
        skipped.extend(sk);
        found.extend(split.map(|s| (*name, s)));
    }
    ensure!(!found.is_empty(), "no image could be read (see the messages above)");
    ensure!(
        found[0].0 == "train" || splits[0].1.is_empty(),
        "no training image could be read: every one was skipped ({} of them)",
        skipped.iter().filter(|s| s.split == "train").count()
    );
    if let Some((_, train)) = found.iter().find(|(n, _)| *n == "train") {
        // Classes given training rows (after --limit) of which no image could be read.
        let mut given = vec![false; ds.classes.len()];
        splits[0].1.iter().for_each(|s| given[s.label as usize] = true);
        train.label.iter().for_each(|&l| given[l as usize] = false);
        let lost: Vec<&str> = ds.classes.iter().zip(&given).filter(|(_, g)| **g).map(|(c, _)| c.as_str()).collect();
        ensure!(
            lost.is_empty(),
            "no training image of class{} `{}` could be read (see the skipped images above): fix those images, or leave the class out of the dataset",
            if lost.len() == 1 { "" } else { "es" },
            lost.join("`, `")
        );
    }
    crate::features::write_splits(out, &found.iter().map(|(n, s)| (*n, s)).collect::<Vec<_>>())?;
    let lines: String = skipped.iter().map(|s| serde_json::to_string(s).map(|l| l + "\n")).collect::<serde_json::Result<_>>()?;
    crate::fsutil::write_atomic(&out.join("skipped.jsonl"), lines.as_bytes())?;
    crate::fsutil::write_atomic(&out.join(JOB), serde_json::to_string_pretty(job)?.as_bytes())?;
    // Kept with the cache: a later extraction into it from changed rows names them.
    std::fs::rename(partial.join(progress::ROWS), out.join(progress::ROWS))
        .with_context(|| format!("{}: cannot move into place", out.join(progress::ROWS).display()))?;
    std::fs::remove_dir_all(partial).with_context(|| format!("{}: cannot remove", partial.display()))?;
    Ok((found, skipped))
}
