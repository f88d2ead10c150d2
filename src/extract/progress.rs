//! What an extraction records so that it can resume, be reused, or say why it cannot: the job
//! (`OUT.partial/job.json`, then `OUT/extract.json`), the saved blocks of visual rows
//! (`OUT.partial/<split>-NNNNN.safetensors`) and a hash per sample (`OUT.partial/rows.json`),
//! which names the rows that changed when a rerun's dataset differs from the saved progress.

use super::options::{Existing, JOB, Skipped, Splits};
use crate::data::Sample;
use crate::features::FeatureCache;
use anyhow::{Context, Result, ensure};
use half::f16;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

/// What `OUT.partial/job.json` and `OUT/extract.json` record: a resumed or reused run must match it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Job {
    pub settings: serde_json::Value,
    pub visual_encoder: String,
    #[serde(default)]
    pub text_encoder: crate::encoders::text::TextIdentity,
    /// The build that extracted it ([`crate::fingerprint::code`]).
    #[serde(default)]
    pub code: String,
    /// Samples per split, and a hash of their ids, paths, file sizes, texts, labels and groups.
    pub samples: Vec<(String, usize, String)>,
    /// Token features stored too (`--tokens`); the progress blocks then hold visual tokens.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tokens: bool,
    /// A shard's: the `samples` one extraction of the whole dataset records, so that the shards
    /// of a set are known to come from the same rows, and their merge records what it would.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub whole: Vec<(String, usize, String)>,
}

impl Job {
    /// Whether `self` (saved) and `now` differ in their rows alone (the dataset's, and a shard's
    /// whole dataset's): the same settings, encoders and build.
    pub fn same_but_rows(&self, now: &Job) -> bool {
        let rowless = |j: &Job| Job { samples: vec![], whole: vec![], ..j.clone() };
        rowless(self).differs(&rowless(now)).is_none()
    }

    /// Why `self` (saved) is not `now`, in words; `None` if they are the same job. Where the
    /// dataset's root is (a moved dataset) does not count: its rows do.
    pub fn differs(&self, now: &Job) -> Option<String> {
        let without_root = |j: &Job| {
            let mut j = j.clone();
            if let Some(o) = j.settings.as_object_mut() {
                o.remove("root");
            }
            j
        };
        let (old, now) = (without_root(self), without_root(now));
        if old == now {
            return None;
        }
        let (a, b) = (&old.settings, &now.settings);
        let mut keys: Vec<&String> = a.as_object().into_iter().chain(b.as_object()).flat_map(|o| o.keys()).collect();
        keys.sort();
        keys.dedup();
        let show = |v: Option<&serde_json::Value>| match v {
            None | Some(serde_json::Value::Null) => "unset".to_string(),
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
        };
        let mut changed: Vec<String> = keys
            .into_iter()
            .filter(|k| a.get(k.as_str()) != b.get(k.as_str()))
            .map(|k| format!("--{} {} → {}", k.replace('_', "-"), show(a.get(k.as_str())), show(b.get(k.as_str()))))
            .collect();
        if old.tokens != now.tokens && !changed.iter().any(|c| c.starts_with("--tokens ")) {
            changed.push(format!("--tokens {} → {}", old.tokens, now.tokens));
        }
        // Each phrase follows "made ...".
        Some(if old.code != now.code {
            format!("by {} (this is {})", if old.code.is_empty() { "an older marnet" } else { &old.code }, now.code)
        } else if changed.len() == 1 && changed[0].starts_with("--batch ") {
            // A speed setting to the user, but the encoders' sums can round differently at another batch.
            let was = show(a.get("batch"));
            format!(
                "with --batch {was} (now {}; features can differ in their last bits between batch sizes: pass --batch {was} to use it)",
                show(b.get("batch"))
            )
        } else if !changed.is_empty() {
            format!("with other settings ({})", changed.join(", "))
        } else if old.visual_encoder != now.visual_encoder {
            format!("with visual encoder `{}` (now `{}`)", old.visual_encoder, now.visual_encoder)
        } else if old.text_encoder != now.text_encoder {
            format!("with text encoder {} (now {})", old.text_encoder, now.text_encoder)
        } else {
            "from other rows of the dataset".to_string()
        })
    }
}

/// The bytes that identify a sample: its id, image file size, text, class name and group (not
/// where the image is: a dataset moved whole is the same dataset).
fn sample_bytes(s: &Sample, classes: &[String]) -> Vec<u8> {
    let size = std::fs::metadata(&s.image).map(|m| m.len()).unwrap_or(u64::MAX);
    let mut b = Vec::new();
    for part in [s.id.as_bytes(), &size.to_le_bytes(), s.text.as_deref().unwrap_or_default().as_bytes()] {
        b.extend_from_slice(part);
        b.push(0);
    }
    for part in [classes[s.label as usize].as_str(), s.group.as_deref().unwrap_or_default()] {
        b.extend_from_slice(part.as_bytes());
        b.push(0);
    }
    b
}

/// What a job records of its splits: per split its name, rows and [`samples_hash`].
pub(super) fn splits_record(splits: &[(&str, Vec<Sample>)], classes: &[String]) -> Vec<(String, usize, String)> {
    splits.iter().map(|(n, v)| (n.to_string(), v.len(), samples_hash(v, classes))).collect()
}

/// FNV-1a of the samples' identifying bytes, as hex: the dataset's fingerprint.
pub(super) fn samples_hash(samples: &[Sample], classes: &[String]) -> String {
    format!("{:016x}", crate::rng::fnv1a(samples.iter().flat_map(|s| sample_bytes(s, classes))))
}

/// Where a cache and a progress folder keep their [`RowHashes`].
pub(super) const ROWS: &str = "rows.json";

/// Whether a feature cache's folder holds a file of this name (its splits, [`ROWS`], the job,
/// the skipped images' list).
pub(super) fn is_cache_file(name: &str) -> bool {
    ["train.safetensors", "val.safetensors", "test.safetensors", JOB, "skipped.jsonl", ROWS].contains(&name)
}

/// Per split, each sample's id and hash (`rows.json` in the progress folder, then in the cache).
pub(super) type RowHashes = BTreeMap<String, Vec<(String, String)>>;

pub(super) fn row_hashes(splits: &[(&str, Vec<Sample>)], classes: &[String]) -> RowHashes {
    let hash = |s: &Sample| format!("{:016x}", crate::rng::fnv1a(sample_bytes(s, classes)));
    splits.iter().map(|(name, v)| (name.to_string(), v.iter().map(|s| (s.id.clone(), hash(s))).collect())).collect()
}

/// The rows of `now` that differ from `saved`, in words (at most ten per kind and split).
pub(super) fn describe_changes(saved: &RowHashes, now: &RowHashes, splits: &[(&str, Vec<Sample>)]) -> String {
    let mut out = vec![];
    for (name, samples) in splits {
        let (old, new) = (saved.get(*name).cloned().unwrap_or_default(), &now[*name]);
        let old_map: HashMap<&str, &str> = old.iter().map(|(id, h)| (id.as_str(), h.as_str())).collect();
        let new_ids: HashSet<&str> = new.iter().map(|(id, _)| id.as_str()).collect();
        let (mut changed, mut added) = (vec![], vec![]);
        for ((id, h), s) in new.iter().zip(samples) {
            match old_map.get(id.as_str()) {
                Some(oh) if oh != h => changed.push(s.describe()),
                Some(_) => {}
                None => added.push(s.describe()),
            }
        }
        let removed: Vec<String> = old.iter().filter(|(id, _)| !new_ids.contains(id.as_str())).map(|(id, _)| format!("`{id}`")).collect();
        let moved = changed.is_empty() && added.is_empty() && removed.is_empty() && old.iter().map(|r| &r.0).ne(new.iter().map(|r| &r.0));
        for (what, list) in [("changed (file, text, label or group)", changed), ("added", added), ("removed", removed)] {
            if !list.is_empty() {
                let more = if list.len() > 10 { format!(" and {} more", list.len() - 10) } else { String::new() };
                out.push(format!(
                    "  {name}: {} row{} {what}: {}{more}",
                    list.len(),
                    if list.len() == 1 { "" } else { "s" },
                    list[..list.len().min(10)].join(", ")
                ));
            }
        }
        if moved {
            out.push(format!("  {name}: the same rows in another order"));
        }
    }
    out.join("\n")
}

/// One saved block: visual rows of the samples that decoded, and those that did not.
#[derive(Default)]
pub(super) struct Block {
    pub dv: usize,
    pub visual: Vec<f32>,
    /// With `--tokens`: (tokens per row, token width) and the rows' tokens [rows, T, Dt] in f16.
    pub token_shape: Option<(usize, usize)>,
    pub visual_tokens: Vec<f16>,
    /// Position in the block and image key of each row.
    pub kept: Vec<(usize, u64)>,
    pub skipped: Vec<Skipped>,
}

impl Block {
    pub fn write(&self, path: &Path) -> Result<()> {
        let bytes: Vec<u8> = self.visual.iter().flat_map(|v| v.to_le_bytes()).collect();
        let token_bytes: Vec<u8> = self.visual_tokens.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut views = vec![("visual", TensorView::new(Dtype::F32, vec![self.visual.len()], &bytes)?)];
        let mut md: HashMap<String, String> = [
            ("dv".to_string(), self.dv.to_string()),
            ("kept".to_string(), serde_json::to_string(&self.kept)?),
            ("skipped".to_string(), serde_json::to_string(&self.skipped)?),
        ]
        .into();
        if let Some(shape) = self.token_shape {
            views.push(("visual_tokens", TensorView::new(Dtype::F16, vec![self.visual_tokens.len()], &token_bytes)?));
            md.insert("token_shape".to_string(), serde_json::to_string(&shape)?);
        }
        crate::fsutil::write_atomic(path, &safetensors::serialize(views, Some(md))?)
    }

    pub fn read(path: &Path) -> Result<Block> {
        let parse = |bytes: &[u8]| -> Result<Block> {
            let (_, header) = SafeTensors::read_metadata(bytes)?;
            let md = header.metadata().clone().unwrap_or_default();
            let field = |k: &str| md.get(k).with_context(|| format!("metadata `{k}` missing"));
            let st = SafeTensors::deserialize(bytes)?;
            let visual = st.tensor("visual")?.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            let token_shape: Option<(usize, usize)> = md.get("token_shape").map(|s| serde_json::from_str(s)).transpose()?;
            let visual_tokens = match token_shape {
                Some(_) => st.tensor("visual_tokens")?.data().chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]])).collect(),
                None => vec![],
            };
            let block = Block {
                dv: field("dv")?.parse()?,
                visual,
                token_shape,
                visual_tokens,
                kept: serde_json::from_str(field("kept")?)?,
                skipped: serde_json::from_str(field("skipped")?)?,
            };
            if let Some((t, d)) = block.token_shape {
                ensure!(
                    block.visual_tokens.len() == block.kept.len() * t * d,
                    "{} visual token values for {} rows of {t} x {d}",
                    block.visual_tokens.len(),
                    block.kept.len()
                );
            }
            Ok(block)
        };
        let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
        parse(&bytes).with_context(|| format!("{}: damaged progress file; delete it to redo its block", path.display()))
    }
}

/// The file of block `b` of split `name` in the progress folder.
pub(super) fn block_path(partial: &Path, name: &str, b: usize) -> PathBuf {
    partial.join(format!("{name}-{b:05}.safetensors"))
}

/// Whether the progress folder holds any saved block.
pub(super) fn has_blocks(partial: &Path) -> bool {
    std::fs::read_dir(partial).is_ok_and(|entries| entries.flatten().any(|e| e.file_name().to_string_lossy().ends_with(".safetensors")))
}

/// The cache in `out` and its `extract.json`, if there is one.
pub(super) fn cache_in(out: &Path) -> Result<Option<(Job, Splits, Vec<Skipped>)>> {
    let record = out.join("extract.json");
    let present: Vec<&'static str> = crate::features::SPLITS.into_iter().filter(|s| FeatureCache::split_path(out, s).exists()).collect();
    if !record.exists() && present.is_empty() {
        return Ok(None);
    }
    ensure!(
        record.exists(),
        "{}: a feature cache is already here, but not one `marnet extract` made (no extract.json); pass --force to replace it, or choose another --out",
        out.display()
    );
    let job: Job = crate::fsutil::read_json(&record)?;
    let splits = present.into_iter().map(|s| Ok((s, FeatureCache::read_split(out, s)?))).collect::<Result<_>>()?;
    let skipped = std::fs::read_to_string(out.join("skipped.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(serde_json::from_str)
        .collect::<serde_json::Result<_>>()
        .with_context(|| format!("{}: unreadable", out.join("skipped.jsonl").display()))?;
    Ok(Some((job, splits, skipped)))
}

/// Takes up the progress folder for `job`: resumes saved progress of the same job; of the same
/// job on changed rows, keeps the blocks whose rows did not change (see [`unchanged_blocks`])
/// and says which rows changed; refuses another job's (or one none of whose blocks can be kept,
/// naming the rows that changed) unless `existing` is `Replace`; and records the job and its
/// rows. True when it continues saved progress.
pub(super) fn claim_progress(
    partial: &Path,
    job: &Job,
    rows: &RowHashes,
    splits: &[(&str, Vec<crate::data::Sample>)],
    block_len: usize,
    existing: Existing,
) -> Result<bool> {
    let (job_path, rows_path) = (partial.join("job.json"), partial.join(ROWS));
    let mut continues = false;
    if job_path.exists() {
        let saved: Job = crate::fsutil::read_json(&job_path)?;
        let saved_rows = crate::fsutil::read_json::<RowHashes>(&rows_path).ok();
        match saved.differs(job) {
            None => return Ok(has_blocks(partial)),
            Some(_) if existing == Existing::Replace || !has_blocks(partial) => {
                std::fs::remove_dir_all(partial).with_context(|| format!("{}: cannot remove", partial.display()))?;
            }
            Some(why) if why.starts_with("by ") => anyhow::bail!(
                "{}: the saved progress of an unfinished extraction was made {why}, whose blocks this build cannot continue; pass --force to discard it and start over",
                partial.display()
            ),
            Some(why) => {
                let changes = match &saved_rows {
                    Some(saved_rows) if saved.samples != job.samples => format!("\n{}", describe_changes(saved_rows, rows, splits)),
                    _ => String::new(),
                };
                let unchanged = match &saved_rows {
                    Some(saved_rows) if saved.same_but_rows(job) => unchanged_blocks(partial, saved_rows, rows, block_len)?,
                    _ => vec![],
                };
                ensure!(
                    !unchanged.is_empty(),
                    "{}: the saved progress of an unfinished extraction is {why}:{changes}\nrerun with the dataset and settings it was made with to continue it, or pass --force to discard it and start over",
                    partial.display()
                );
                let images: usize = drop_changed_blocks(partial, &unchanged)?;
                let what = match changes.is_empty() {
                    true => "the dataset changed (this shard's rows did not)",
                    false => "rows changed",
                };
                eprintln!(
                    "{}: {what} since this unfinished extraction was saved{}{changes}\nkeeping the {} saved block{} whose rows did not change ({images} images) and encoding the rest",
                    partial.display(),
                    if changes.is_empty() { "" } else { ":" },
                    unchanged.len(),
                    if unchanged.len() == 1 { "" } else { "s" }
                );
                continues = true;
            }
        }
    }
    crate::fsutil::write_atomic(&rows_path, serde_json::to_string(rows)?.as_bytes())?;
    crate::fsutil::write_atomic(&job_path, serde_json::to_string_pretty(job)?.as_bytes())?;
    Ok(continues)
}

/// The saved blocks (file, images) that stay valid for the rows `now`: block `b` of a split holds
/// the images of its rows `b * block_len ..`, so it is valid while those rows (ids and hashes, and
/// how many there are) are the same in `saved` and `now`.
fn unchanged_blocks(partial: &Path, saved: &RowHashes, now: &RowHashes, block_len: usize) -> Result<Vec<(PathBuf, usize)>> {
    let mut valid = vec![];
    for entry in std::fs::read_dir(partial).with_context(|| format!("{}: cannot read", partial.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        let Some((split, Ok(b))) = name.strip_suffix(".safetensors").and_then(|n| n.rsplit_once('-')).map(|(s, b)| (s, b.parse::<usize>())) else {
            continue;
        };
        fn rows<'h>(h: &'h RowHashes, split: &str, range: std::ops::Range<usize>) -> &'h [(String, String)] {
            h.get(split).map_or(&[], |r| &r[range.start.min(r.len())..range.end.min(r.len())])
        }
        let (old, new) = (rows(saved, split, b * block_len..(b + 1) * block_len), rows(now, split, b * block_len..(b + 1) * block_len));
        if !old.is_empty() && old == new {
            valid.push((path, new.len()));
        }
    }
    Ok(valid)
}

/// Removes every saved block of `partial` but `keep`; returns the images those hold.
fn drop_changed_blocks(partial: &Path, keep: &[(PathBuf, usize)]) -> Result<usize> {
    for entry in std::fs::read_dir(partial).with_context(|| format!("{}: cannot read", partial.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "safetensors") && !keep.iter().any(|(k, _)| *k == path) {
            std::fs::remove_file(&path).with_context(|| format!("{}: cannot remove", path.display()))?;
        }
    }
    Ok(keep.iter().map(|(_, n)| n).sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job with `settings`, the rest alike.
    fn job(settings: serde_json::Value) -> Job {
        Job { settings, visual_encoder: "v".into(), text_encoder: Default::default(), code: "c".into(), samples: vec![], tokens: false, whole: vec![] }
    }

    /// The batch, a speed setting to a user, says how to use the cache; other settings are listed.
    #[test]
    fn a_batch_change_says_which_batch_to_pass() {
        let saved = job(serde_json::json!({"batch": 7, "limit": null}));
        let why = saved.differs(&job(serde_json::json!({"batch": 32, "limit": null}))).unwrap();
        assert!(why.starts_with("with --batch 7 (now 32;") && why.ends_with("pass --batch 7 to use it)"), "{why}");
        let why = saved.differs(&job(serde_json::json!({"batch": 32, "limit": 5}))).unwrap();
        assert_eq!(why, "with other settings (--batch 7 → 32, --limit unset → 5)");
        assert_eq!(saved.differs(&job(serde_json::json!({"batch": 7, "limit": null}))), None);
    }
}
