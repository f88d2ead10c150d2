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

mod fold_spec;
pub mod folds;
mod split;
mod tokens;

pub use split::{FeatureSplit, SplitMeta};
pub use tokens::Tokens;

use anyhow::{Context, Result, bail, ensure};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The three splits a cache may hold.
pub const SPLITS: [&str; 3] = ["train", "val", "test"];

/// A feature-cache folder: `train` is required, `val` and `test` optional.
#[derive(Debug, Clone)]
pub struct FeatureCache {
    pub dir: PathBuf,
    pub train: FeatureSplit,
    pub val: Option<FeatureSplit>,
    pub test: Option<FeatureSplit>,
    /// Set when the splits are a leave-one-group-out fold of the cache at `dir`.
    pub fold: Option<fold_spec::FoldSpec>,
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
        ensure!(
            !dir.is_file(),
            "{}: a file, not a feature cache folder{}",
            dir.display(),
            match dir.extension().is_some_and(|e| e == "jsonl" || e == "json") {
                true => format!("; a manifest becomes a cache with `marnet extract --dataset manifest --root {} --out CACHE`", dir.display()),
                false => String::new(),
            }
        );
        // An extraction running or interrupted: its progress is in `DIR.partial` (extract's
        // folder, named here by its suffix: extract imports this module).
        let unfinished = |d: &Path| {
            format!(
                "{}: an extraction into it is running or was interrupted (its progress is in {}): let it finish, or run the same `marnet extract` again to continue it",
                d.display(),
                crate::fsutil::sibling(d, ".partial").display()
            )
        };
        let progress_folder = dir.file_name().is_some_and(|n| n.to_string_lossy().ends_with(".partial"));
        ensure!(!progress_folder, "{}", unfinished(&dir.with_extension("")));
        let partial_there = crate::fsutil::sibling(dir, ".partial").is_dir();
        ensure!(dir.is_dir() || !partial_there, "{}", unfinished(dir));
        ensure!(dir.is_dir(), "{}: feature cache folder not found", dir.display());
        let kind = [("best", "a training run"), ("last", "a training run"), ("bundle.json", "a bundle")].into_iter().find(|(f, _)| dir.join(f).exists());
        if let Some((_, what)) = kind {
            bail!("{}: this is {what}, not a feature cache; pass the cache folder `marnet extract` wrote", dir.display());
        }
        let path = Self::split_path(dir, "train");
        ensure!(path.exists() || !partial_there, "{}", unfinished(dir));
        let others: Vec<&str> = ["val", "test"].into_iter().filter(|s| Self::split_path(dir, s).exists()).collect();
        ensure!(
            path.exists() || others.is_empty(),
            "{}: this cache has no train split, only {}: it serves `eval --cache` (and `train --cache` needs a cache whose manifest has train rows)",
            dir.display(),
            others.join(" and ")
        );
        if !path.exists() {
            let mut manifests: Vec<PathBuf> =
                std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "jsonl")).collect();
            manifests.sort_by_key(|p| (!p.to_string_lossy().contains("manifest"), p.clone()));
            let manifest = manifests.first();
            let hint = match manifest {
                Some(m) => format!("; if this is your dataset, `marnet extract --dataset manifest --root {} --out CACHE` makes one", m.display()),
                None => "; `marnet extract --out CACHE` makes one".to_string(),
            };
            bail!("{}: not a feature cache (no train.safetensors here){hint}", dir.display());
        }
        let train = Self::read_split(dir, "train")?;
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
    use super::split::bytes_of;
    use super::*;
    use half::f16;
    use safetensors::{Dtype, SafeTensors, tensor::TensorView};

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
