//! One split of a feature cache in host memory: reading and validating its file, writing it,
//! row subsets, relabelling by class name and concatenation.

use super::fold_spec::group_of;
use super::tokens::{Tokens, read_tokens};
use anyhow::{Context, Result, bail, ensure};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use std::collections::HashMap;
use std::path::Path;

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
            None => group_of(&self.ids[i]),
        }
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
            None => {
                // Without names a damaged label (up to 2^32) would make billions of them.
                ensure!(
                    max_label < MAX_UNNAMED_CLASSES,
                    "label {max_label} but no metadata `classes`: a file without class names may hold labels below {MAX_UNNAMED_CLASSES}; add the names to the metadata"
                );
                (0..=max_label).map(|i| format!("class_{i}")).collect()
            }
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

/// The most classes a feature file without metadata `classes` may hold (they are named class_0, ...).
const MAX_UNNAMED_CLASSES: usize = 100_000;

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
pub(super) fn bytes_of<T: Copy>(v: &[T]) -> &[u8] {
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
