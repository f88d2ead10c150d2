//! `FeatureCache`: the on-disk feature format every other stage reads.
//!
//! A cache is a folder with one safetensors file per split (`train`, `val`, `test`) holding
//! `visual` f32 [N, Dv], `text` f32 [N, Ds] (optional outside train), `label` i64 [N], and
//! `__metadata__` with `classes` (JSON list), `ids` (JSON list), `visual_encoder`,
//! `text_encoder` and `dataset`. Reading validates everything and names the file at fault.

use anyhow::{Context, Result, bail, ensure};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The three splits a cache may hold.
pub const SPLITS: [&str; 3] = ["train", "val", "test"];

/// Descriptive metadata stored in each split file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SplitMeta {
    pub classes: Vec<String>,
    pub ids: Vec<String>,
    pub visual_encoder: String,
    pub text_encoder: String,
    pub dataset: String,
    /// Per row, [`crate::rng::content_key`] of the image file (empty if unknown): the key of
    /// the row's inference noise stream.
    pub keys: Vec<u64>,
}

/// One split held in host memory, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureSplit {
    pub visual: Vec<f32>,
    pub dv: usize,
    pub text: Option<Vec<f32>>,
    pub ds: usize,
    pub label: Vec<u32>,
    pub meta: SplitMeta,
}

impl FeatureSplit {
    pub fn len(&self) -> usize {
        self.label.len()
    }

    pub fn is_empty(&self) -> bool {
        self.label.is_empty()
    }

    /// Rows `idx` of the visual features, gathered into one [idx.len(), Dv] buffer.
    pub fn gather_visual(&self, idx: &[usize]) -> Vec<f32> {
        gather_rows(&self.visual, self.dv, idx)
    }

    /// Rows `idx` of the text features; `None` if this split has no text.
    pub fn gather_text(&self, idx: &[usize]) -> Option<Vec<f32>> {
        self.text.as_ref().map(|t| gather_rows(t, self.ds, idx))
    }

    pub fn gather_label(&self, idx: &[usize]) -> Vec<u32> {
        idx.iter().map(|&i| self.label[i]).collect()
    }

    /// The rows `idx` as a new split (used to carve a validation split from train).
    pub fn subset(&self, idx: &[usize]) -> FeatureSplit {
        let mut meta = self.meta.clone();
        meta.ids = idx.iter().map(|&i| self.meta.ids[i].clone()).collect();
        if !meta.keys.is_empty() {
            meta.keys = idx.iter().map(|&i| self.meta.keys[i]).collect();
        }
        FeatureSplit { visual: self.gather_visual(idx), dv: self.dv, text: self.gather_text(idx), ds: self.ds, label: self.gather_label(idx), meta }
    }

    /// Reads and validates one split file.
    pub fn read(path: &Path) -> Result<FeatureSplit> {
        let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read feature file", path.display()))?;
        Self::parse(&bytes).with_context(|| format!("{}: invalid feature file", path.display()))
    }

    fn parse(bytes: &[u8]) -> Result<FeatureSplit> {
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| anyhow::anyhow!("not a safetensors file ({e})"))?;
        let st = SafeTensors::deserialize(bytes).map_err(|e| anyhow::anyhow!("not a safetensors file ({e})"))?;
        let md = header.metadata().clone().unwrap_or_default();

        let (visual, n, dv) = read_f32_matrix(&st, "visual")?;
        ensure!(n > 0, "split is empty (tensor `visual` has 0 rows)");
        let label = read_labels(&st, n)?;
        let (text, ds) = if st.names().contains(&"text") {
            let (t, nt, ds) = read_f32_matrix(&st, "text")?;
            ensure!(nt == n, "row-count mismatch: `visual` has {n} rows but `text` has {nt}");
            (Some(t), ds)
        } else {
            (None, 0)
        };

        let max_label = *label.iter().max().unwrap() as usize;
        let classes = match md.get("classes") {
            Some(s) => serde_json::from_str::<Vec<String>>(s).context("metadata `classes` is not a JSON list of strings")?,
            None => (0..=max_label).map(|i| format!("class_{i}")).collect(),
        };
        ensure!(!classes.is_empty(), "metadata `classes` is empty");
        if max_label >= classes.len() {
            let row = label.iter().position(|&l| l as usize == max_label).unwrap();
            bail!("label out of range: row {row} has label {max_label} but there are only {} classes", classes.len());
        }
        let ids = match md.get("ids") {
            Some(s) => serde_json::from_str::<Vec<String>>(s).context("metadata `ids` is not a JSON list of strings")?,
            None => (0..n).map(|i| format!("row{i}")).collect(),
        };
        ensure!(ids.len() == n, "row-count mismatch: {n} rows but {} ids in metadata", ids.len());
        let mut seen: HashMap<&str, usize> = HashMap::with_capacity(n);
        for (row, id) in ids.iter().enumerate() {
            if let Some(first) = seen.insert(id.as_str(), row) {
                bail!("duplicate sample id `{id}` at rows {first} and {row}");
            }
        }
        let keys = match md.get("image_keys") {
            Some(s) => serde_json::from_str::<Vec<u64>>(s).context("metadata `image_keys` is not a JSON list of integers")?,
            None => vec![],
        };
        ensure!(keys.is_empty() || keys.len() == n, "row-count mismatch: {n} rows but {} image keys in metadata", keys.len());
        let get = |k: &str| md.get(k).cloned().unwrap_or_default();
        let meta = SplitMeta { classes, ids, visual_encoder: get("visual_encoder"), text_encoder: get("text_encoder"), dataset: get("dataset"), keys };
        Ok(FeatureSplit { visual, dv, text, ds, label, meta })
    }

    /// Writes the split atomically (temporary file, then rename).
    pub fn write(&self, path: &Path) -> Result<()> {
        let n = self.len();
        let label: Vec<i64> = self.label.iter().map(|&l| l as i64).collect();
        let mut views = vec![("visual", f32_view(&self.visual, n, self.dv)?), ("label", TensorView::new(Dtype::I64, vec![n], bytes_of(&label))?)];
        if let Some(t) = &self.text {
            views.push(("text", f32_view(t, n, self.ds)?));
        }
        let m = &self.meta;
        let metadata: HashMap<String, String> = [
            ("classes", serde_json::to_string(&m.classes)?),
            ("ids", serde_json::to_string(&m.ids)?),
            ("visual_encoder", m.visual_encoder.clone()),
            ("text_encoder", m.text_encoder.clone()),
            ("dataset", m.dataset.clone()),
        ]
        .into_iter()
        .chain((!m.keys.is_empty()).then(|| ("image_keys", serde_json::to_string(&m.keys).unwrap())))
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let data = sorted_header(safetensors::serialize(views, Some(metadata))?)?;
        crate::fsutil::write_atomic(path, &data)
    }
}

/// A feature-cache folder: `train` is required, `val` and `test` optional.
#[derive(Debug, Clone)]
pub struct FeatureCache {
    pub dir: PathBuf,
    pub train: FeatureSplit,
    pub val: Option<FeatureSplit>,
    pub test: Option<FeatureSplit>,
    /// Set when the splits are a leave-one-group-out fold of the cache at `dir`.
    pub fold: Option<crate::folds::FoldSpec>,
}

impl FeatureCache {
    pub fn split_path(dir: &Path, split: &str) -> PathBuf {
        dir.join(format!("{split}.safetensors"))
    }

    /// Reads one split of the cache at `dir`.
    pub fn read_split(dir: &Path, split: &str) -> Result<FeatureSplit> {
        let path = Self::split_path(dir, split);
        ensure!(path.exists(), "{}: split `{split}` not found in cache", path.display());
        FeatureSplit::read(&path)
    }

    /// Reads and cross-validates every split present. Training text is required.
    pub fn open(dir: &Path) -> Result<FeatureCache> {
        ensure!(dir.is_dir(), "{}: feature cache folder not found", dir.display());
        let train = Self::read_split(dir, "train")?;
        let path = Self::split_path(dir, "train");
        ensure!(train.text.is_some(), "{}: tensor `text` is missing; MARNet needs text features for training", path.display());
        let mut cache = FeatureCache { dir: dir.to_path_buf(), train, val: None, test: None, fold: None };
        for split in ["val", "test"] {
            let p = Self::split_path(dir, split);
            if !p.exists() {
                continue;
            }
            let s = FeatureSplit::read(&p)?;
            cache.check_compatible(&s).with_context(|| format!("{}", p.display()))?;
            if split == "val" {
                cache.val = Some(s);
            } else {
                cache.test = Some(s);
            }
        }
        Ok(cache)
    }

    /// A split from another file must share feature dims and class names with train.
    pub fn check_compatible(&self, s: &FeatureSplit) -> Result<()> {
        let t = &self.train;
        ensure!(s.dv == t.dv, "visual dim {} differs from train's {}", s.dv, t.dv);
        if s.text.is_some() {
            ensure!(s.ds == t.ds, "text dim {} differs from train's {}", s.ds, t.ds);
        }
        ensure!(
            s.meta.classes.len() <= t.meta.classes.len() && s.meta.classes == t.meta.classes[..s.meta.classes.len()],
            "class names differ from train's ({} vs {} classes)",
            s.meta.classes.len(),
            t.meta.classes.len()
        );
        Ok(())
    }

    /// Writes every present split into `dir` and removes the file of any absent one (left by an
    /// earlier cache there).
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
        for (name, split) in [("train", Some(&self.train)), ("val", self.val.as_ref()), ("test", self.test.as_ref())] {
            let path = Self::split_path(dir, name);
            match split {
                Some(s) => s.write(&path)?,
                None if path.exists() => std::fs::remove_file(&path).with_context(|| format!("{}: cannot remove", path.display()))?,
                None => {}
            }
        }
        Ok(())
    }

    pub fn num_classes(&self) -> usize {
        self.train.meta.classes.len()
    }
}

fn gather_rows(data: &[f32], dim: usize, idx: &[usize]) -> Vec<f32> {
    let mut out = Vec::with_capacity(idx.len() * dim);
    for &i in idx {
        out.extend_from_slice(&data[i * dim..(i + 1) * dim]);
    }
    out
}

fn read_f32_matrix(st: &SafeTensors, name: &str) -> Result<(Vec<f32>, usize, usize)> {
    let t = st.tensor(name).map_err(|_| anyhow::anyhow!("tensor `{name}` is missing"))?;
    ensure!(t.dtype() == Dtype::F32, "tensor `{name}` has dtype {:?}, expected F32", t.dtype());
    let shape = t.shape();
    ensure!(shape.len() == 2, "tensor `{name}` has shape {shape:?}, expected [N, D]");
    let (n, d) = (shape[0], shape[1]);
    ensure!(d > 0, "tensor `{name}` has feature dim 0");
    let v: Vec<f32> = t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    if let Some(pos) = v.iter().position(|x| !x.is_finite()) {
        bail!("tensor `{name}` has a non-finite value ({}) at row {}, column {}", v[pos], pos / d, pos % d);
    }
    Ok((v, n, d))
}

fn read_labels(st: &SafeTensors, n: usize) -> Result<Vec<u32>> {
    let t = st.tensor("label").map_err(|_| anyhow::anyhow!("tensor `label` is missing"))?;
    ensure!(t.dtype() == Dtype::I64, "tensor `label` has dtype {:?}, expected I64", t.dtype());
    ensure!(t.shape().len() == 1, "tensor `label` has shape {:?}, expected [N]", t.shape());
    ensure!(t.shape()[0] == n, "row-count mismatch: `visual` has {n} rows but `label` has {}", t.shape()[0]);
    t.data()
        .chunks_exact(8)
        .enumerate()
        .map(|(row, b)| {
            let l = i64::from_le_bytes(b.try_into().unwrap());
            ensure!((0..u32::MAX as i64).contains(&l), "label out of range: row {row} has label {l}");
            Ok(l as u32)
        })
        .collect()
}

/// The same safetensors bytes with the JSON header's keys sorted: `serialize` writes them in
/// hash-map order, which differs from process to process, and equal caches should be equal files.
fn sorted_header(mut bytes: Vec<u8>) -> Result<Vec<u8>> {
    let n = u64::from_le_bytes(bytes[..8].try_into()?) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n])?;
    let sorted = serde_json::to_string(&header)?; // serde_json's maps are ordered by key
    ensure!(sorted.len() <= n, "safetensors header grew when sorted");
    bytes[8..8 + n].fill(b' ');
    bytes[8..8 + sorted.len()].copy_from_slice(sorted.as_bytes());
    Ok(bytes)
}

fn f32_view(data: &[f32], n: usize, d: usize) -> Result<TensorView<'_>> {
    Ok(TensorView::new(Dtype::F32, vec![n, d], bytes_of(data))?)
}

/// The little-endian bytes of a plain numeric slice (all supported targets are little-endian).
fn bytes_of<T: Copy>(v: &[T]) -> &[u8] {
    // SAFETY: f32/i64 have no padding and every bit pattern is a valid u8.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

impl FeatureSplit {
    /// Rows of `parts` concatenated in order; all parts must agree on dims, classes and encoders.
    pub fn concat(parts: &[FeatureSplit]) -> Result<FeatureSplit> {
        let first = parts.first().context("nothing to concatenate")?;
        let mut out = first.clone();
        for p in &parts[1..] {
            ensure!(p.dv == out.dv && p.ds == out.ds, "feature dims differ between shards");
            ensure!(p.text.is_some() == out.text.is_some(), "some shards have text features and some do not");
            ensure!(p.meta.classes == out.meta.classes, "class names differ between shards");
            ensure!(p.meta.visual_encoder == out.meta.visual_encoder && p.meta.text_encoder == out.meta.text_encoder, "encoders differ between shards");
            out.visual.extend_from_slice(&p.visual);
            if let (Some(t), Some(pt)) = (out.text.as_mut(), p.text.as_ref()) {
                t.extend_from_slice(pt);
            }
            out.label.extend_from_slice(&p.label);
            out.meta.ids.extend(p.meta.ids.iter().cloned());
            out.meta.keys.extend(&p.meta.keys);
        }
        if out.meta.keys.len() != out.len() {
            out.meta.keys.clear(); // some shards had no image keys
        }
        Ok(out)
    }
}

impl FeatureCache {
    /// Merges shard caches (in shard order) into one cache written to `out`.
    pub fn merge_shards(shards: &[PathBuf], out: &Path) -> Result<FeatureCache> {
        let mut per_split: HashMap<&str, Vec<FeatureSplit>> = HashMap::new();
        for dir in shards {
            for split in SPLITS {
                let p = Self::split_path(dir, split);
                if p.exists() {
                    per_split.entry(split).or_default().push(FeatureSplit::read(&p)?);
                }
            }
        }
        let merged = |s: &str| per_split.get(s).map(|v| FeatureSplit::concat(v).with_context(|| format!("merging `{s}`"))).transpose();
        let train = merged("train")?.context("no shard has a train split")?;
        let cache = FeatureCache { dir: out.to_path_buf(), train, val: merged("val")?, test: merged("test")?, fold: None };
        cache.write(out)?;
        Ok(cache)
    }
}
