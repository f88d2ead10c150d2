//! `FeatureCache`: the on-disk feature format every other stage reads.
//!
//! A cache is a folder with one safetensors file per split (`train`, `val`, `test`) holding
//! `visual` f32 [N, Dv], `text` f32 [N, Ds] (optional outside train), `label` i64 [N], and
//! `__metadata__` with `classes` (JSON list), `ids` (JSON list), `visual_encoder`,
//! `text_encoder` and `dataset`. Reading validates everything and names the file at fault.
//!
//! Token features (optional; `marnet extract --tokens`, `marnet synth --tokens`), per row next to
//! the pooled ones, all in f16:
//! - `visual_tokens` f16 [N, Tv, Dvt]: the visual encoder's spatial tokens before pooling
//!   (EfficientNet-Lite0: its last feature map, 7 x 7 = 49 tokens of 1280 channels, whose mean
//!   is `visual`; ViT: its layernormed patch tokens without CLS, 196 for B/16 at 224 px). An optional
//!   `visual_mask` u8 [N, Tv] marks real tokens; absent, every token is real.
//! - `text_tokens` f16 [N, Ts, Dst] with `text_mask` u8 [N, Ts] (1 = real token, 0 = padding;
//!   required with `text_tokens`): the text encoder's last hidden states per wordpiece,
//!   [CLS] and [SEP] included (what MiniLM's mean pooling averages: the masked mean, L2
//!   normalised, is `text`). In an extracted cache Ts is the longest tokenised text of the
//!   split (each text is encoded whole, up to the encoder's 512 positions; `synth --tokens`
//!   pads to its `--text-tokens`); shorter texts are zero-padded.
//!   marnet writes zeros at padding positions (reading does not require it: the mask rules).
//!   Splits of one cache may differ in Ts, never in Dvt, Tv or Dst; merging shards or splits
//!   pads to the longest.
//!
//! A cache without tokens works for everything but `--align team-tokens`; a split without text
//! has no `text_tokens` either.

pub mod folds;

use anyhow::{Context, Result, bail, ensure};
use half::f16;
use half::slice::HalfFloatSliceExt;
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
    /// Per row, its group (a manifest's `group`: camera, site, vendor) for leave-one-group-out
    /// folds; empty: the first path component of each id is its group.
    pub groups: Vec<String>,
}

impl SplitMeta {
    /// Row `i`'s group: its recorded group, else the first path component of its id.
    pub fn group(&self, i: usize) -> &str {
        match self.groups.get(i) {
            Some(g) => g,
            None => crate::features::folds::group_of(&self.ids[i]),
        }
    }
}

/// Token features of every row of a split: `data` [N, len, dim] row-major in f16, and which
/// positions are real tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct Tokens {
    pub data: Vec<f16>,
    /// Tokens per row (T; the padded length for text).
    pub len: usize,
    /// Width of each token (D).
    pub dim: usize,
    /// [N, len], 1 = real token, 0 = padding; `None`: every token is real.
    pub mask: Option<Vec<u8>>,
}

impl Tokens {
    /// Rows held.
    pub fn rows(&self) -> usize {
        self.data.len() / (self.len * self.dim).max(1)
    }

    /// Rows `idx`, in that order.
    pub fn subset(&self, idx: &[usize]) -> Tokens {
        let row = self.len * self.dim;
        let mut data = Vec::with_capacity(idx.len() * row);
        for &i in idx {
            data.extend_from_slice(&self.data[i * row..(i + 1) * row]);
        }
        let mask = self.mask.as_ref().map(|m| idx.iter().flat_map(|&i| m[i * self.len..(i + 1) * self.len].iter().copied()).collect());
        Tokens { data, len: self.len, dim: self.dim, mask }
    }

    /// Rows `idx` as f32 [idx.len(), len, dim], row-major (a training batch).
    pub fn gather_f32(&self, idx: &[usize]) -> Vec<f32> {
        let row = self.len * self.dim;
        let mut out = vec![0f32; idx.len() * row];
        for (o, &i) in out.chunks_exact_mut(row.max(1)).zip(idx) {
            self.data[i * row..(i + 1) * row].convert_to_f32_slice(o);
        }
        out
    }

    /// The mask of rows `idx` as f32 [idx.len(), len] (all ones without a mask).
    pub fn gather_mask_f32(&self, idx: &[usize]) -> Vec<f32> {
        match &self.mask {
            Some(m) => idx.iter().flat_map(|&i| m[i * self.len..(i + 1) * self.len].iter().map(|&b| b as f32)).collect(),
            None => vec![1.0; idx.len() * self.len],
        }
    }

    /// The same rows padded with zero tokens (mask 0) to `len` tokens each.
    pub fn padded_to(&self, len: usize) -> Tokens {
        if len == self.len {
            return self.clone();
        }
        assert!(len > self.len, "padded_to: {len} < {}", self.len);
        let (n, d) = (self.rows(), self.dim);
        let mut data = vec![f16::ZERO; n * len * d];
        let mut mask = vec![0u8; n * len];
        let own = self.mask.clone().unwrap_or_else(|| vec![1; n * self.len]);
        for r in 0..n {
            data[r * len * d..(r * len + self.len) * d].copy_from_slice(&self.data[r * self.len * d..(r + 1) * self.len * d]);
            mask[r * len..r * len + self.len].copy_from_slice(&own[r * self.len..(r + 1) * self.len]);
        }
        Tokens { data, len, dim: d, mask: Some(mask) }
    }

    /// Rows of `parts` in order, padded to the longest part's length; `None` unless every part
    /// has tokens (a part without them drops them from the result).
    fn concat(parts: &[Option<&Tokens>]) -> Result<Option<Tokens>> {
        let Some(parts) = parts.iter().copied().collect::<Option<Vec<&Tokens>>>() else { return Ok(None) };
        let Some(first) = parts.first() else { return Ok(None) };
        ensure!(parts.iter().all(|p| p.dim == first.dim), "token widths differ between the parts");
        let len = parts.iter().map(|p| p.len).max().unwrap();
        let masked = parts.iter().any(|p| p.mask.is_some() || p.len != len);
        let mut out = Tokens { data: vec![], len, dim: first.dim, mask: masked.then(Vec::new) };
        for p in parts {
            let p = if masked { p.padded_to(len) } else { (*p).clone() };
            out.data.extend_from_slice(&p.data);
            if let Some(m) = out.mask.as_mut() {
                let rows = p.rows();
                m.extend(p.mask.unwrap_or_else(|| vec![1; rows * len]));
            }
        }
        Ok(Some(out))
    }
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
    /// The visual encoder's tokens per row (`extract --tokens`), if stored.
    pub visual_tokens: Option<Tokens>,
    /// The text encoder's tokens per row, padded, with their mask, if stored.
    pub text_tokens: Option<Tokens>,
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
        if !meta.groups.is_empty() {
            meta.groups = idx.iter().map(|&i| self.meta.groups[i].clone()).collect();
        }
        FeatureSplit {
            visual: self.gather_visual(idx),
            dv: self.dv,
            text: self.gather_text(idx),
            ds: self.ds,
            label: self.gather_label(idx),
            meta,
            visual_tokens: self.visual_tokens.as_ref().map(|t| t.subset(idx)),
            text_tokens: self.text_tokens.as_ref().map(|t| t.subset(idx)),
        }
    }

    /// A copy without the token features.
    pub fn without_tokens(&self) -> FeatureSplit {
        let s = self;
        FeatureSplit {
            visual: s.visual.clone(),
            dv: s.dv,
            text: s.text.clone(),
            ds: s.ds,
            label: s.label.clone(),
            meta: s.meta.clone(),
            visual_tokens: None,
            text_tokens: None,
        }
    }

    /// The split with its labels renumbered to `classes` by name (rows of a cache made from other
    /// data, e.g. a test-only manifest, for a model trained on `classes`). Every class with rows
    /// must be among `classes`; the error names those that are not.
    pub fn relabeled(&self, classes: &[String]) -> Result<FeatureSplit> {
        if self.meta.classes == classes {
            return Ok(self.clone());
        }
        let index: HashMap<&str, u32> = classes.iter().enumerate().map(|(i, c)| (c.as_str(), i as u32)).collect();
        let mut missing: Vec<&str> = self.label.iter().map(|&l| self.meta.classes[l as usize].as_str()).filter(|c| !index.contains_key(c)).collect();
        missing.sort_unstable();
        missing.dedup();
        if !missing.is_empty() {
            let known: Vec<&str> = classes.iter().take(10).map(String::as_str).collect();
            let more = if classes.len() > 10 { ", ..." } else { "" };
            bail!(
                "{} class{} with rows here {} not among the model's {} classes ({}{more}): `{}`; leave their rows out, or train a model that has them",
                missing.len(),
                if missing.len() == 1 { "" } else { "es" },
                if missing.len() == 1 { "is" } else { "are" },
                classes.len(),
                known.join(", "),
                missing.join("`, `")
            );
        }
        let mut out = self.clone();
        out.label = self.label.iter().map(|&l| index[self.meta.classes[l as usize].as_str()]).collect();
        out.meta.classes = classes.to_vec();
        Ok(out)
    }

    /// Whether both token tensors are stored (what `--align team-tokens` trains on).
    pub fn has_tokens(&self) -> bool {
        self.visual_tokens.is_some() && self.text_tokens.is_some()
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

        let visual_tokens = read_tokens(&st, "visual", n, false)?;
        let text_tokens = read_tokens(&st, "text", n, true)?;

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
        let groups = match md.get("groups") {
            Some(s) => serde_json::from_str::<Vec<String>>(s).context("metadata `groups` is not a JSON list of strings")?,
            None => vec![],
        };
        ensure!(groups.is_empty() || groups.len() == n, "row-count mismatch: {n} rows but {} groups in metadata", groups.len());
        let get = |k: &str| md.get(k).cloned().unwrap_or_default();
        let meta = SplitMeta { classes, ids, visual_encoder: get("visual_encoder"), text_encoder: get("text_encoder"), dataset: get("dataset"), keys, groups };
        Ok(FeatureSplit { visual, dv, text, ds, label, meta, visual_tokens, text_tokens })
    }

    /// Writes the split atomically (temporary file, then rename).
    pub fn write(&self, path: &Path) -> Result<()> {
        let n = self.len();
        let label: Vec<i64> = self.label.iter().map(|&l| l as i64).collect();
        let mut views = vec![("visual", f32_view(&self.visual, n, self.dv)?), ("label", TensorView::new(Dtype::I64, vec![n], bytes_of(&label))?)];
        if let Some(t) = &self.text {
            views.push(("text", f32_view(t, n, self.ds)?));
        }
        for (name, mask_name, tokens) in [("visual_tokens", "visual_mask", &self.visual_tokens), ("text_tokens", "text_mask", &self.text_tokens)] {
            if let Some(t) = tokens {
                ensure!(t.rows() == n && t.data.len() == n * t.len * t.dim, "`{name}` holds {} values, not {n} rows of {} x {}", t.data.len(), t.len, t.dim);
                views.push((name, TensorView::new(Dtype::F16, vec![n, t.len, t.dim], bytes_of(&t.data))?));
                if let Some(m) = &t.mask {
                    ensure!(m.len() == n * t.len, "`{mask_name}` holds {} values, not {n} x {}", m.len(), t.len);
                    views.push((mask_name, TensorView::new(Dtype::U8, vec![n, t.len], m)?));
                }
            }
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
        .chain((!m.groups.is_empty()).then(|| ("groups", serde_json::to_string(&m.groups).unwrap())))
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
    pub fold: Option<crate::features::folds::FoldSpec>,
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
        if let (Some(a), Some(b)) = (&s.visual_tokens, &t.visual_tokens) {
            ensure!((a.len, a.dim) == (b.len, b.dim), "visual tokens are {} x {} but train's are {} x {}", a.len, a.dim, b.len, b.dim);
        }
        if let (Some(a), Some(b)) = (&s.text_tokens, &t.text_tokens) {
            ensure!(a.dim == b.dim, "text tokens are {}-d but train's are {}-d", a.dim, b.dim);
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
        let present = [("train", Some(&self.train)), ("val", self.val.as_ref()), ("test", self.test.as_ref())];
        write_splits(dir, &present.into_iter().filter_map(|(n, s)| Some((n, s?))).collect::<Vec<_>>())
    }

    pub fn num_classes(&self) -> usize {
        self.train.meta.classes.len()
    }

    /// The split called `name` (`train`, `val` or `test`), if the cache has it.
    pub fn split(&self, name: &str) -> Result<Option<&FeatureSplit>> {
        Ok(match name {
            "train" => Some(&self.train),
            "val" => self.val.as_ref(),
            "test" => self.test.as_ref(),
            other => bail!("unknown split `{other}` (train, val or test)"),
        })
    }
}

/// Writes `splits` (name, rows) into the cache folder `dir` and removes the file of every other
/// split (left by an earlier cache there). A cache may lack train (test rows only, for `eval --cache`).
pub fn write_splits(dir: &Path, splits: &[(&str, &FeatureSplit)]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    for name in SPLITS {
        let path = FeatureCache::split_path(dir, name);
        match splits.iter().find(|(n, _)| *n == name) {
            Some((_, s)) => s.write(&path)?,
            None if path.exists() => std::fs::remove_file(&path).with_context(|| format!("{}: cannot remove", path.display()))?,
            None => {}
        }
    }
    Ok(())
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

/// `{kind}_tokens` f16 [N, T, D] and its mask `{kind}_mask` u8 [N, T], if stored. `mask_required`:
/// tokens without a mask are an error (padded text); else a missing mask means all real.
fn read_tokens(st: &SafeTensors, kind: &str, n: usize, mask_required: bool) -> Result<Option<Tokens>> {
    let (name, mask_name) = (format!("{kind}_tokens"), format!("{kind}_mask"));
    let names = st.names();
    let has = |x: &str| names.contains(&x);
    if !has(&name) {
        ensure!(!has(&mask_name), "tensor `{mask_name}` is present but `{name}` is missing");
        return Ok(None);
    }
    let t = st.tensor(&name)?;
    ensure!(t.dtype() == Dtype::F16, "tensor `{name}` has dtype {:?}, expected F16", t.dtype());
    let shape = t.shape();
    ensure!(shape.len() == 3, "tensor `{name}` has shape {shape:?}, expected [N, T, D]");
    ensure!(shape[0] == n, "row-count mismatch: `visual` has {n} rows but `{name}` has {}", shape[0]);
    let (len, dim) = (shape[1], shape[2]);
    ensure!(len > 0 && dim > 0, "tensor `{name}` has shape {shape:?}: no tokens or zero width");
    let data: Vec<f16> = t.data().chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]])).collect();
    if let Some(pos) = data.iter().position(|x| !x.is_finite()) {
        let (row, rest) = (pos / (len * dim), pos % (len * dim));
        bail!("tensor `{name}` has a non-finite value ({}) at row {row}, token {}, column {}", data[pos], rest / dim, rest % dim);
    }
    let mask = if has(&mask_name) {
        let m = st.tensor(&mask_name)?;
        ensure!(m.dtype() == Dtype::U8, "tensor `{mask_name}` has dtype {:?}, expected U8", m.dtype());
        ensure!(m.shape() == [n, len], "tensor `{mask_name}` has shape {:?}, expected [{n}, {len}] as `{name}`", m.shape());
        let m = m.data().to_vec();
        if let Some(pos) = m.iter().position(|&b| b > 1) {
            bail!("tensor `{mask_name}` has value {} at row {}, token {}; expected 0 or 1", m[pos], pos / len, pos % len);
        }
        if let Some(row) = m.chunks_exact(len).position(|r| r.iter().all(|&b| b == 0)) {
            bail!("tensor `{mask_name}`: row {row} has no real token");
        }
        Some(m)
    } else {
        ensure!(!mask_required, "tensor `{name}` needs its mask `{mask_name}` (u8 [N, T], 1 = real token)");
        None
    };
    Ok(Some(Tokens { data, len, dim, mask }))
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
    // SAFETY: f32/i64/f16 have no padding and every bit pattern is a valid u8.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

impl FeatureSplit {
    /// Rows of `parts` concatenated in order; all parts must agree on dims, classes and encoders.
    pub fn concat(parts: &[FeatureSplit]) -> Result<FeatureSplit> {
        let first = parts.first().context("nothing to concatenate")?;
        let lens: Vec<usize> = parts.iter().filter_map(|p| p.visual_tokens.as_ref().map(|t| t.len)).collect();
        ensure!(lens.windows(2).all(|w| w[0] == w[1]), "visual token counts differ between shards ({lens:?})");
        let visual_tokens = Tokens::concat(&parts.iter().map(|p| p.visual_tokens.as_ref()).collect::<Vec<_>>()).context("visual tokens")?;
        let text_tokens = Tokens::concat(&parts.iter().map(|p| p.text_tokens.as_ref()).collect::<Vec<_>>()).context("text tokens")?;
        let mut out = first.without_tokens();
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
            ensure!(p.meta.groups.is_empty() == out.meta.groups.is_empty(), "some parts record row groups and some do not");
            out.meta.groups.extend(p.meta.groups.iter().cloned());
        }
        if out.meta.keys.len() != out.len() {
            out.meta.keys.clear(); // some shards had no image keys
        }
        // Tokens only when every part has them; text tokens padded to the longest part's.
        (out.visual_tokens, out.text_tokens) = (visual_tokens, text_tokens);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` rows whose features, visual tokens and text tokens all hold the row's index, so that
    /// any reordering shows; row r has `r % 3 + 1` real text tokens of 3.
    fn split_with_tokens(n: usize) -> FeatureSplit {
        let f = |r: usize| r as f32;
        let (tv, dvt, ts, dst) = (4, 3, 3, 2);
        let mut text_mask = vec![0u8; n * ts];
        let mut text_data = vec![f16::ZERO; n * ts * dst];
        for r in 0..n {
            for k in 0..r % 3 + 1 {
                text_mask[r * ts + k] = 1;
                text_data[(r * ts + k) * dst..(r * ts + k + 1) * dst].fill(f16::from_f32(f(r) + 0.5));
            }
        }
        FeatureSplit {
            visual: (0..n).flat_map(|r| [f(r), -f(r)]).collect(),
            dv: 2,
            text: Some((0..n).map(f).collect()),
            ds: 1,
            label: (0..n).map(|r| (r % 2) as u32).collect(),
            meta: SplitMeta { classes: vec!["a".into(), "b".into()], ids: (0..n).map(|r| format!("g{}/row{r}", r % 2)).collect(), ..Default::default() },
            visual_tokens: Some(Tokens { data: (0..n * tv * dvt).map(|i| f16::from_f32(f(i / (tv * dvt)))).collect(), len: tv, dim: dvt, mask: None }),
            text_tokens: Some(Tokens { data: text_data, len: ts, dim: dst, mask: Some(text_mask) }),
        }
    }

    #[test]
    fn tokens_round_trip_in_f16_with_their_masks() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("train.safetensors");
        let s = split_with_tokens(5);
        s.write(&path).unwrap();
        let back = FeatureSplit::read(&path).unwrap();
        assert_eq!(back, s);
        let st_bytes = std::fs::read(&path).unwrap();
        let st = SafeTensors::deserialize(&st_bytes).unwrap();
        assert_eq!((st.tensor("visual_tokens").unwrap().dtype(), st.tensor("visual_tokens").unwrap().shape()), (Dtype::F16, &[5, 4, 3][..]));
        assert_eq!((st.tensor("text_tokens").unwrap().dtype(), st.tensor("text_tokens").unwrap().shape()), (Dtype::F16, &[5, 3, 2][..]));
        assert_eq!((st.tensor("text_mask").unwrap().dtype(), st.tensor("text_mask").unwrap().shape()), (Dtype::U8, &[5, 3][..]));
        assert!(!st.names().contains(&"visual_mask"), "visual tokens are all real: no mask stored");
        // Without tokens, the file is what it always was.
        s.without_tokens().write(&path).unwrap();
        let plain = FeatureSplit::read(&path).unwrap();
        assert!(plain.visual_tokens.is_none() && plain.text_tokens.is_none() && !plain.has_tokens());
    }

    #[test]
    fn bad_token_tensors_are_errors_naming_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("train.safetensors");
        let check = |s: &FeatureSplit, want: &str| {
            s.write(&path).unwrap();
            let err = format!("{:#}", FeatureSplit::read(&path).unwrap_err());
            assert!(err.contains(&path.display().to_string()) && err.contains(want), "expected `{want}`: {err}");
        };
        let good = split_with_tokens(3);
        let mut s = good.clone();
        s.text_tokens.as_mut().unwrap().mask = None;
        check(&s, "needs its mask `text_mask`");
        let mut s = good.clone();
        s.text_tokens.as_mut().unwrap().mask.as_mut().unwrap()[1] = 2;
        check(&s, "`text_mask` has value 2 at row 0, token 1");
        let mut s = good.clone();
        s.text_tokens.as_mut().unwrap().mask.as_mut().unwrap()[3..6].fill(0);
        check(&s, "row 1 has no real token");
        let mut s = good.clone();
        s.visual_tokens.as_mut().unwrap().data[12 + 5] = f16::NAN;
        check(&s, "`visual_tokens` has a non-finite value (NaN) at row 1, token 1, column 2");

        // Shapes and dtypes the writer would not produce, written directly.
        let write_raw = |extra: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)>| {
            let (v, l): (Vec<f32>, Vec<i64>) = (vec![0.0; 6], vec![0, 1, 0]);
            let mut views = vec![("visual".to_string(), TensorView::new(Dtype::F32, vec![3, 2], bytes_of(&v)).unwrap())];
            views.push(("label".to_string(), TensorView::new(Dtype::I64, vec![3], bytes_of(&l)).unwrap()));
            for (name, dt, shape, data) in &extra {
                views.push((name.to_string(), TensorView::new(*dt, shape.clone(), data).unwrap()));
            }
            std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
            format!("{:#}", FeatureSplit::read(&path).unwrap_err())
        };
        let err = write_raw(vec![("visual_tokens", Dtype::F16, vec![2, 4, 3], vec![0; 2 * 4 * 3 * 2])]);
        assert!(err.contains("train.safetensors") && err.contains("`visual` has 3 rows but `visual_tokens` has 2"), "{err}");
        let err = write_raw(vec![("visual_tokens", Dtype::F32, vec![3, 4, 3], vec![0; 3 * 4 * 3 * 4])]);
        assert!(err.contains("train.safetensors") && err.contains("`visual_tokens` has dtype F32, expected F16"), "{err}");
        let err = write_raw(vec![("visual_tokens", Dtype::F16, vec![3, 12], vec![0; 3 * 12 * 2])]);
        assert!(err.contains("expected [N, T, D]"), "{err}");
        let err = write_raw(vec![("text_tokens", Dtype::F16, vec![3, 2, 2], vec![0; 24]), ("text_mask", Dtype::U8, vec![3, 3], vec![1; 9])]);
        assert!(err.contains("`text_mask` has shape [3, 3], expected [3, 2]"), "{err}");
        let err = write_raw(vec![("text_mask", Dtype::U8, vec![3, 2], vec![1; 6])]);
        assert!(err.contains("`text_mask` is present but `text_tokens` is missing"), "{err}");
    }

    #[test]
    fn subset_and_concat_keep_tokens_with_their_rows() {
        let s = split_with_tokens(6);
        let sub = s.subset(&[4, 1, 1]);
        let vt = sub.visual_tokens.as_ref().unwrap();
        let tt = sub.text_tokens.as_ref().unwrap();
        for (k, &r) in [4usize, 1, 1].iter().enumerate() {
            assert_eq!(sub.visual[k * 2], r as f32);
            assert!(vt.data[k * 12..(k + 1) * 12].iter().all(|x| x.to_f32() == r as f32), "visual tokens of row {r}");
            assert_eq!(tt.mask.as_ref().unwrap()[k * 3..(k + 1) * 3].iter().filter(|&&m| m == 1).count(), r % 3 + 1);
            assert_eq!(tt.data[k * 6].to_f32(), r as f32 + 0.5);
        }
        assert_eq!(vt.gather_f32(&[1]), vec![1.0; 12]);
        assert_eq!(tt.gather_mask_f32(&[0]), vec![1.0, 1.0, 0.0]);

        // Text tokens of a part with shorter texts are padded to the longest part's length.
        let mut short = split_with_tokens(2).subset(&[0]);
        let t = short.text_tokens.as_mut().unwrap();
        *t = Tokens { data: t.data[..2].to_vec(), len: 1, dim: 2, mask: Some(vec![1]) };
        short.meta.ids = vec!["other/row0".into()];
        let joined = FeatureSplit::concat(&[s.clone(), short]).unwrap();
        let jt = joined.text_tokens.as_ref().unwrap();
        assert_eq!((jt.len, jt.rows(), joined.len()), (3, 7, 7));
        assert_eq!(&jt.mask.as_ref().unwrap()[18..21], &[1, 0, 0]);
        assert_eq!(&jt.data[18 * 2..21 * 2].iter().map(|x| x.to_f32()).collect::<Vec<_>>(), &[0.5, 0.5, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(joined.subset(&(0..6).collect::<Vec<_>>()).visual_tokens, s.visual_tokens);
        // A part without tokens: the result has none (and everything else still joins).
        let mut plain = split_with_tokens(1).without_tokens();
        plain.meta.ids = vec!["x/plain".into()];
        let joined = FeatureSplit::concat(&[s, plain]).unwrap();
        assert!(joined.visual_tokens.is_none() && joined.text_tokens.is_none() && joined.len() == 7);
    }

    #[test]
    fn a_split_whose_token_width_differs_from_train_names_its_file() {
        let tmp = tempfile::tempdir().unwrap();
        split_with_tokens(4).write(&FeatureCache::split_path(tmp.path(), "train")).unwrap();
        let mut test = split_with_tokens(2);
        let v = test.visual_tokens.as_mut().unwrap();
        (v.len, v.dim) = (3, 4);
        test.write(&FeatureCache::split_path(tmp.path(), "test")).unwrap();
        let err = format!("{:#}", FeatureCache::open(tmp.path()).unwrap_err());
        assert!(err.contains("test.safetensors") && err.contains("visual tokens are 3 x 4 but train's are 4 x 3"), "{err}");
    }
}
