//! `marnet extract`: a dataset through the frozen encoders into a feature cache.
//!
//! Work is saved in blocks of a few batches under `OUT.partial/` as it goes, so a run that is
//! killed or stopped with Ctrl-C resumes at the last completed block when the same command is
//! run again; the finished cache is identical to an uninterrupted run's. With `skip_bad`,
//! images that cannot be read are left out and listed in `OUT/skipped.jsonl`. With `--tokens`,
//! each split also stores the encoders' token features (see [`crate::features`]): the visual
//! tokens are saved in the progress blocks with the pooled rows, the text tokens are computed
//! with the pooled text features at the end of each split, as those are.

use crate::data::{Dataset, Sample};
use crate::encoders::ImageEncoder;
use crate::encoders::text::TextEncoder;
use crate::features::{FeatureCache, FeatureSplit, SplitMeta, Tokens};
use anyhow::{Context, Result, ensure};
use candle_core::Device;
use half::f16;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// What `marnet extract` extracts, and how; recorded in the cache's `extract.json` (a resumed or
/// reused extraction must match it).
#[derive(clap::Args, Debug, Clone, Serialize)]
pub struct ExtractSettings {
    /// Dataset: `emoji-food` (built in; the 128 Food & Drink emoji, split by vendor),
    /// `emoji-all` (built in; the 1,583 emoji all four vendors draw, without flags), `vireo172`,
    /// `ingredient101` (their published layouts under --root) or `manifest` (--root is a
    /// JSON Lines file).
    #[arg(long, default_value = "emoji-food")]
    pub dataset: String,
    /// Dataset folder (vireo172, ingredient101) or manifest file.
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Folder `scripts/fetch-assets` filled [default: $MARNET_ASSETS, else ./assets, else the
    /// assets/ of the checkout marnet was built from].
    #[arg(long)]
    pub assets: Option<PathBuf>,
    /// Visual encoder: `efficientnet-lite0` or `efficientnet-lite2` (fetched; `NAME:DIR` for a
    /// folder with the legacy `.pth` or its safetensors), `vit:DIR` (Hugging Face ViT folder, any
    /// patch size: B/16, B/32; preprocessing from its preprocessor_config.json if present),
    /// `resnet18:FILE` or `resnet50:FILE` (torchvision-layout safetensors), `wide_resnet50_2:FILE`,
    /// `vgg19:FILE` (timm or torchvision state dict), `repvgg_a2:FILE` (timm training-time
    /// state dict, fused at load; also `repvgg_a0`, `_a1`, `_b0`.. `_b3`), `swin_t:PATH` (timm
    /// `swin_tiny_patch4_window7_224` safetensors, or a timm folder: model.safetensors + config.json).
    #[arg(long, default_value = "efficientnet-lite0")]
    pub visual: String,
    /// Text encoder: a Hugging Face BERT-layout folder (config.json, model.safetensors,
    /// tokenizer.json), e.g. BERT-base as in the paper [default: the fetched all-MiniLM-L6-v2,
    /// ASSETS/minilm]. Pooled as its sentence-transformers files say (modules.json: Transformer,
    /// Pooling with 1_Pooling/config.json naming cls, mean, max, ..., optional Normalize); a
    /// plain folder without them: mean pooling, as sentence-transformers defaults. Max length:
    /// sentence_bert_config.json max_seq_length, else tokenizer_config.json model_max_length,
    /// else config.json max_position_embeddings.
    #[arg(long, value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<PathBuf>,
    /// Output cache folder.
    #[arg(long)]
    pub out: PathBuf,
    /// emoji-food / emoji-all: the vendor held out as the test split (`ablate --leave-one-out`
    /// re-splits the cache so every vendor is test once).
    #[arg(long, default_value = "apple")]
    pub test_vendor: String,
    /// emoji-all: add the training vendors' skin-tone variants as extra training images of their
    /// base class (never in val or test).
    #[arg(long)]
    pub skin_tones: bool,
    /// emoji-food / emoji-all: fraction of the training vendors' images held out for validation.
    #[arg(long, default_value_t = 0.2, value_parser = crate::options::fraction)]
    pub val_fraction: f64,
    /// emoji-food / emoji-all: seed of the choice of validation images.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Images per forward pass.
    #[arg(long, default_value_t = 32, value_parser = crate::options::at_least_one::<usize>)]
    pub batch: usize,
    /// Only the first N samples of each split (a quick trial).
    #[arg(long, value_parser = crate::options::at_least_one::<usize>)]
    pub limit: Option<usize>,
    /// Extract only slice i of n (`--shard 0/4`); combine with `marnet merge-shards`.
    #[arg(long, value_parser = crate::options::shard)]
    pub shard: Option<String>,
    /// Leave out images that cannot be read (listed with the reason in OUT/skipped.jsonl)
    /// instead of stopping at the first one.
    #[arg(long)]
    pub skip_bad: bool,
    /// Also store per-sample token features in f16 (for `--align team-tokens`): the visual
    /// encoder's tokens before pooling (EfficientNet-Lite0: 7 x 7 = 49 of 1280 channels; ViT:
    /// its patch tokens) and the text encoder's per-token last hidden states with their mask,
    /// padded to the split's longest text. About 125 KB per image with EfficientNet-Lite0.
    #[arg(long)]
    pub tokens: bool,
}

/// A finished extraction, for the one-line summary `extract` prints.
pub struct Extracted {
    pub dataset: String,
    pub classes: usize,
    pub cache: FeatureCache,
    pub skipped: Vec<Skipped>,
    pub seconds: f64,
}

impl std::fmt::Display for Extracted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.cache;
        let rows = |s: &Option<FeatureSplit>| s.as_ref().map_or(0, |s| s.len());
        let n = c.train.len() + rows(&c.val) + rows(&c.test);
        let tokens = match (&c.train.visual_tokens, &c.train.text_tokens) {
            (Some(v), Some(t)) => format!("; tokens: visual {} x {}, text up to {} x {}", v.len, v.dim, t.len, t.dim),
            (Some(v), None) => format!("; tokens: visual {} x {}", v.len, v.dim),
            _ => String::new(),
        };
        write!(
            f,
            "{}: {} classes; train {} / val {} / test {} rows; visual {}-d, text {}-d{tokens}; {n} images in {:.1}s ({:.1} images/s); {} skipped; wrote {}",
            self.dataset,
            self.classes,
            c.train.len(),
            rows(&c.val),
            rows(&c.test),
            c.train.dv,
            c.train.ds,
            self.seconds,
            n as f64 / self.seconds,
            self.skipped.len(),
            c.dir.display()
        )
    }
}

/// `marnet extract` (and `demo`'s extraction): the dataset and encoders `settings` name, from
/// the assets folder, into `settings.out`. `reuse_current`: return the cache already there when
/// this build made it from the same files with the same settings.
pub fn run(settings: &ExtractSettings, progress: bool, reuse_current: bool, dev: &Device) -> Result<Extracted> {
    let assets = crate::assets::resolve(settings.assets.as_deref())?;
    let s = settings;
    let ds = crate::data::open_with_skin_tones(&s.dataset, s.root.as_deref(), &assets, &s.test_vendor, s.val_fraction, s.seed, s.skin_tones)?;
    let ds = match &s.shard {
        Some(sh) => {
            let (i, n) = crate::data::parse_shard(sh)?;
            ds.shard(i, n)
        }
        None => ds,
    };
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
    let recorded = serde_json::to_value(ExtractSettings { assets: None, text: None, ..s.clone() })?;
    let opts = ExtractOptions { batch: s.batch, limit: s.limit, skip_bad: s.skip_bad, tokens: s.tokens, progress, settings: recorded, reuse_current };
    let t0 = std::time::Instant::now();
    let (cache, skipped) = extract(&ds, image_enc.as_ref(), &text_enc, &opts, &s.out, dev).with_context(|| format!("extracting {}", s.dataset))?;
    Ok(Extracted { dataset: ds.name.clone(), classes: ds.classes.len(), cache, skipped, seconds: t0.elapsed().as_secs_f64() })
}

/// The name the fetched default text encoder (`ASSETS/minilm`) is recorded under.
pub const DEFAULT_TEXT: &str = "all-MiniLM-L6-v2";

/// Batches per saved block: an interrupted run redoes at most this many.
const BLOCK_BATCHES: usize = 8;

pub struct ExtractOptions {
    /// Images per forward pass.
    pub batch: usize,
    /// Keep only the first N samples of each split (quick runs).
    pub limit: Option<usize>,
    /// Leave out unreadable images (listed in `skipped.jsonl`) instead of stopping.
    pub skip_bad: bool,
    /// Also store the encoders' token features (`--tokens`).
    pub tokens: bool,
    pub progress: bool,
    /// The command's settings, written to `OUT/extract.json`; a resumed run must match them.
    pub settings: serde_json::Value,
    /// Return the cache already in `OUT` when this build made it from these samples with these
    /// settings (its `extract.json`), instead of extracting again.
    pub reuse_current: bool,
}

/// A sample left out by `--skip-bad`: one line of `skipped.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    pub split: String,
    pub id: String,
    pub image: PathBuf,
    pub error: String,
}

/// What `OUT.partial/job.json` and `OUT/extract.json` record: a resumed run must match it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Job {
    settings: serde_json::Value,
    visual_encoder: String,
    #[serde(default)]
    text_encoder: crate::encoders::text::TextIdentity,
    /// The build that extracted it ([`crate::fingerprint::code`]).
    #[serde(default)]
    code: String,
    /// Samples per split, and a hash of their ids, paths, file sizes and texts.
    samples: Vec<(String, usize, String)>,
    /// Token features stored too (`--tokens`); the progress blocks then hold visual tokens.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    tokens: bool,
}

/// One saved block: visual rows of the samples that decoded, and those that did not.
#[derive(Default)]
struct Block {
    dv: usize,
    visual: Vec<f32>,
    /// With `--tokens`: (tokens per row, token width) and the rows' tokens [rows, T, Dt] in f16.
    token_shape: Option<(usize, usize)>,
    visual_tokens: Vec<f16>,
    /// Position in the block and image key of each row.
    kept: Vec<(usize, u64)>,
    skipped: Vec<Skipped>,
}

impl Block {
    fn write(&self, path: &Path) -> Result<()> {
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

    fn read(path: &Path) -> Result<Block> {
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

/// FNV-1a of the samples' ids, image paths, image file sizes and texts, as hex: the dataset's
/// fingerprint.
fn samples_hash(samples: &[Sample]) -> String {
    let bytes = samples.iter().flat_map(|s| {
        let (id, image) = (s.id.clone().into_bytes(), s.image.to_string_lossy().into_owned().into_bytes());
        let size = std::fs::metadata(&s.image).map(|m| m.len()).unwrap_or(u64::MAX).to_le_bytes();
        let text = s.text.clone().unwrap_or_default().into_bytes();
        id.into_iter().chain([0]).chain(image).chain([0]).chain(size).chain(text).chain([0])
    });
    format!("{:016x}", crate::rng::fnv1a(bytes))
}

/// Encodes the texts of `samples` (each distinct text once): the pooled rows and, with
/// `tokens`, the token features padded to the longest text (see [`crate::features`]). Training
/// needs every text; other splits may have none.
fn encode_texts(split: &str, samples: &[Sample], enc: &TextEncoder, batch: usize, tokens: bool) -> Result<(Option<Vec<f32>>, Option<Tokens>)> {
    if let Some(s) = samples.iter().find(|s| s.text.is_none()) {
        ensure!(split != "train", "{}: training sample has no text", s.id);
        return Ok((None, None));
    }
    let mut unique: Vec<&str> = samples.iter().map(|s| s.text.as_deref().unwrap()).collect();
    unique.sort_unstable();
    unique.dedup();
    let mut rows: HashMap<&str, Vec<f32>> = HashMap::new();
    // Per distinct text: its real tokens [n_i, H] in f16.
    let mut token_rows: HashMap<&str, Vec<f16>> = HashMap::new();
    for chunk in unique.chunks(batch.max(1)) {
        let pooled = if tokens {
            let (pooled, tok) = enc.embed_with_tokens(chunk)?;
            for (t, row) in chunk.iter().zip(tok) {
                token_rows.insert(t, row.iter().map(|&x| f16::from_f32(x)).collect());
            }
            pooled
        } else {
            enc.embed(chunk)?
        };
        for (t, row) in chunk.iter().zip(pooled.to_vec2::<f32>()?) {
            rows.insert(t, row);
        }
    }
    let pooled = samples.iter().flat_map(|s| rows[s.text.as_deref().unwrap()].clone()).collect();
    if !tokens {
        return Ok((Some(pooled), None));
    }
    let dim = enc.token_dim();
    let len = token_rows.values().map(|t| t.len() / dim).max().unwrap_or(1).max(1);
    let mut out = Tokens { data: vec![f16::ZERO; samples.len() * len * dim], len, dim, mask: Some(vec![0; samples.len() * len]) };
    let mask = out.mask.as_mut().unwrap();
    for (r, s) in samples.iter().enumerate() {
        let t = &token_rows[s.text.as_deref().unwrap()];
        out.data[r * len * dim..r * len * dim + t.len()].copy_from_slice(t);
        mask[r * len..r * len + t.len() / dim].fill(1);
    }
    Ok((Some(pooled), Some(out)))
}

/// One extraction: the encoders, the options and the progress folder.
struct Extraction<'a> {
    image_enc: &'a dyn ImageEncoder,
    text_enc: &'a TextEncoder,
    opts: &'a ExtractOptions,
    partial: PathBuf,
    dev: &'a Device,
}

impl Extraction<'_> {
    /// Runs the blocks of `samples` not yet in the progress folder through the image encoder,
    /// saving each.
    fn encode_images(&self, name: &str, samples: &[Sample]) -> Result<Vec<Block>> {
        let (image_enc, opts, partial, dev) = (self.image_enc, self.opts, &self.partial, self.dev);
        let block_len = opts.batch.max(1) * BLOCK_BATCHES;
        let block_path = |b: usize| partial.join(format!("{name}-{b:05}.safetensors"));
        let bar = crate::progress::bar(opts.progress, samples.len() as u64, "images", &format!("extract {name}"));
        let mut blocks: Vec<Option<Block>> = Vec::new();
        let mut pending = Vec::new();
        for (b, chunk) in samples.chunks(block_len).enumerate() {
            if block_path(b).exists() {
                blocks.push(Some(Block::read(&block_path(b))?));
                bar.inc(chunk.len() as u64);
            } else {
                blocks.push(None);
                let batch = opts.batch.max(1);
                pending.extend(chunk.chunks(batch).enumerate().map(|(j, samples)| (b, j * batch, samples)));
            }
        }
        if bar.position() > 0 && !bar.is_hidden() {
            bar.println(format!("{name}: resuming after {} saved images", bar.position()));
        }
        let pre = image_enc.preprocess();
        // Decode the next batch on another thread while this one runs through the encoder.
        std::thread::scope(|scope| -> Result<()> {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            let jobs = pending.clone();
            scope.spawn(move || {
                for (b, _, batch) in jobs {
                    let paths: Vec<_> = batch.iter().map(|s| s.image.clone()).collect();
                    if tx.send((b, pre.batch(&paths, dev))).is_err() {
                        return;
                    }
                }
            });
            let mut current = Block::default();
            for (i, (b, decoded)) in rx.into_iter().enumerate() {
                let (_, first, batch) = pending[i];
                let (x, status) = decoded?;
                for (j, (s, st)) in batch.iter().zip(status).enumerate() {
                    match st {
                        Ok(key) => current.kept.push((first + j, key)),
                        Err(e) if opts.skip_bad => {
                            bar.println(format!("skipped {}: {e:#}", s.id));
                            current.skipped.push(Skipped { split: name.into(), id: s.id.clone(), image: s.image.clone(), error: format!("{e:#}") })
                        }
                        Err(e) => return Err(e.context(format!("{name} sample `{}` (use --skip-bad to leave out unreadable images)", s.id))),
                    }
                }
                if x.dim(0)? > 0 {
                    let f = if opts.tokens {
                        let (f, tokens) = image_enc.features_and_tokens(&x)?;
                        let (_, t, d) = tokens.dims3()?;
                        current.token_shape = Some((t, d));
                        current.visual_tokens.extend(tokens.flatten_all()?.to_vec1::<f32>()?.into_iter().map(f16::from_f32));
                        f
                    } else {
                        image_enc.features(&x)?
                    };
                    current.dv = f.dim(1)?;
                    current.visual.extend(f.flatten_all()?.to_vec1::<f32>()?);
                }
                bar.inc(batch.len() as u64);
                if pending.get(i + 1).is_none_or(|(next, _, _)| *next != b) {
                    let done = std::mem::take(&mut current);
                    done.write(&block_path(b))?;
                    blocks[b] = Some(done);
                    if crate::interrupt::requested() {
                        let resume_hint = format!("saved {} images of {name} in {}; run the same command again to continue", bar.position(), partial.display());
                        return Err(crate::interrupt::Interrupted { resume_hint }.into());
                    }
                }
            }
            Ok(())
        })?;
        bar.finish_and_clear();
        Ok(blocks.into_iter().map(|b| b.expect("every block encoded or loaded")).collect())
    }

    /// One split's cache rows (`None` if no image could be read) and its skipped samples.
    fn split(&self, name: &str, samples: &[Sample], ds: &Dataset) -> Result<(Option<FeatureSplit>, Vec<Skipped>)> {
        let (image_enc, text_enc) = (self.image_enc, self.text_enc);
        let block_len = self.opts.batch.max(1) * BLOCK_BATCHES;
        let blocks = self.encode_images(name, samples)?;
        let mut kept: Vec<Sample> = Vec::new();
        let mut keys = Vec::new();
        let mut visual = Vec::new();
        let mut skipped = Vec::new();
        let mut dv = 0;
        let mut token_shape = None;
        let mut visual_tokens = Vec::new();
        for (b, block) in blocks.into_iter().enumerate() {
            kept.extend(block.kept.iter().map(|&(k, _)| samples[b * block_len + k].clone()));
            keys.extend(block.kept.iter().map(|&(_, key)| key));
            visual.extend(block.visual);
            skipped.extend(block.skipped);
            dv = dv.max(block.dv);
            if !block.kept.is_empty() {
                ensure!(
                    block.token_shape.is_some() == self.opts.tokens,
                    "{name} block {b}: saved {} visual tokens",
                    if self.opts.tokens { "without" } else { "with" }
                );
                ensure!(token_shape.is_none() || token_shape == block.token_shape, "{name} block {b}: visual token shape differs from earlier blocks'");
                token_shape = block.token_shape;
                visual_tokens.extend(block.visual_tokens);
            }
        }
        if kept.is_empty() {
            return Ok((None, skipped));
        }
        let (text, text_tokens) = encode_texts(name, &kept, text_enc, 64, self.opts.tokens)?;
        let split = FeatureSplit {
            visual,
            dv,
            ds: if text.is_some() { text_enc.dim() } else { 0 },
            text,
            label: kept.iter().map(|s| s.label).collect(),
            meta: SplitMeta {
                classes: ds.classes.clone(),
                ids: kept.iter().map(|s| s.id.clone()).collect(),
                visual_encoder: image_enc.name().to_string(),
                text_encoder: text_enc.identity().name.clone(),
                dataset: ds.name.clone(),
                keys,
            },
            visual_tokens: token_shape.map(|(len, dim)| Tokens { data: visual_tokens, len, dim, mask: None }),
            text_tokens,
        };
        Ok((Some(split), skipped))
    }
}

/// The cache in `out` if `out/extract.json` records `job` (same build, settings and samples).
fn finished(out: &Path, job: &Job) -> Result<Option<(FeatureCache, Vec<Skipped>)>> {
    let record = out.join("extract.json");
    if !record.exists() || !FeatureCache::split_path(out, "train").exists() {
        return Ok(None);
    }
    let saved: Option<Job> = crate::fsutil::read_json(&record).ok();
    if saved.as_ref() != Some(job) {
        let why = match saved {
            Some(s) if s.code != job.code => format!("made by {}, this is {}", if s.code.is_empty() { "an older marnet" } else { &s.code }, job.code),
            Some(s) if s.samples != job.samples => "the dataset's files changed".to_string(),
            Some(s) if s.text_encoder != job.text_encoder => format!("text encoder {} there, {} now", s.text_encoder, job.text_encoder),
            _ => "other settings".to_string(),
        };
        eprintln!("{}: stale feature cache ({why}): extracting again", out.display());
        return Ok(None);
    }
    let skipped = std::fs::read_to_string(out.join("skipped.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(serde_json::from_str)
        .collect::<serde_json::Result<_>>()
        .with_context(|| format!("{}: unreadable", out.join("skipped.jsonl").display()))?;
    Ok(Some((FeatureCache::open(out)?, skipped)))
}

/// `OUT.partial`: where an unfinished extraction keeps its blocks.
pub fn partial_dir(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    out.with_file_name(name)
}

/// Extracts every split of `ds` and writes the cache to `out` (resuming from `OUT.partial` if
/// an earlier run of the same job left one). Returns the cache and the skipped samples.
pub fn extract(
    ds: &Dataset,
    image_enc: &dyn ImageEncoder,
    text_enc: &TextEncoder,
    opts: &ExtractOptions,
    out: &Path,
    dev: &Device,
) -> Result<(FeatureCache, Vec<Skipped>)> {
    let limit = |v: &Vec<Sample>| -> Vec<Sample> { v.iter().take(opts.limit.unwrap_or(usize::MAX)).cloned().collect() };
    let splits: Vec<(&str, Vec<Sample>)> = vec![("train", limit(&ds.train)), ("val", limit(&ds.val)), ("test", limit(&ds.test))];
    ensure!(!splits[0].1.is_empty(), "the dataset has no training samples");
    let job = Job {
        settings: opts.settings.clone(),
        visual_encoder: image_enc.name().to_string(),
        text_encoder: text_enc.identity().clone(),
        code: crate::fingerprint::code(),
        samples: splits.iter().map(|(n, v)| (n.to_string(), v.len(), samples_hash(v))).collect(),
        tokens: opts.tokens,
    };
    if opts.reuse_current
        && let Some(found) = finished(out, &job)?
    {
        return Ok(found);
    }
    let partial = partial_dir(out);
    let job_path = partial.join("job.json");
    if job_path.exists() {
        let saved: Job = crate::fsutil::read_json(&job_path)?;
        ensure!(
            saved == job,
            "{}: an unfinished extraction with different settings or samples, or by another marnet build, is here; rerun it with the settings and build in that file, or delete {} to start over",
            job_path.display(),
            partial.display()
        );
    } else {
        crate::fsutil::write_atomic(&job_path, serde_json::to_string_pretty(&job)?.as_bytes())?;
    }

    let run = Extraction { image_enc, text_enc, opts, partial: partial.clone(), dev };
    let mut found = HashMap::new();
    let mut skipped = Vec::new();
    for (name, samples) in &splits {
        if samples.is_empty() {
            continue;
        }
        let (split, sk) = run.split(name, samples, ds).with_context(|| format!("extracting {name}"))?;
        skipped.extend(sk);
        if let Some(s) = split {
            found.insert(*name, s);
        }
    }
    let train = found.remove("train").context("no training image could be read (see skipped.jsonl)")?;
    let cache = FeatureCache { dir: out.to_path_buf(), train, val: found.remove("val"), test: found.remove("test"), fold: None };
    cache.write(out)?;
    let lines: String = skipped.iter().map(|s| serde_json::to_string(s).map(|l| l + "\n")).collect::<serde_json::Result<_>>()?;
    crate::fsutil::write_atomic(&out.join("skipped.jsonl"), lines.as_bytes())?;
    crate::fsutil::write_atomic(&out.join("extract.json"), serde_json::to_string_pretty(&job)?.as_bytes())?;
    std::fs::remove_dir_all(&partial).with_context(|| format!("{}: cannot remove", partial.display()))?;
    Ok((cache, skipped))
}
