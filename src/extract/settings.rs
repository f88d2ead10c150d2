//! `marnet extract`'s options, and what of them a cache records.

use anyhow::Result;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The datasets `--dataset` names.
const DATASETS: [&str; 5] = ["emoji-food", "emoji-all", "vireo172", "ingredient101", "manifest"];

/// A `--dataset` name in any case, as its lower-case name.
fn dataset_name(s: &str) -> Result<String, String> {
    crate::options::one_of(s, &DATASETS)
}

/// What `marnet extract` extracts, and how; recorded in the cache's `extract.json` (a resumed or
/// reused extraction must match it).
#[derive(clap::Args, Debug, Clone, Serialize)]
pub struct ExtractSettings {
    /// Dataset: `emoji-food` (built in; the 128 Food & Drink emoji, split by vendor),
    /// `emoji-all` (built in; the 1,583 emoji all four vendors draw, without flags), `vireo172`,
    /// `ingredient101` (their published layouts under --root) or `manifest` (--root is a
    /// JSON Lines file).
    #[arg(long, default_value = "emoji-food", value_parser = dataset_name)]
    pub dataset: String,
    /// Dataset folder (vireo172, ingredient101) or manifest file (JSON Lines, format below); the
    /// emoji datasets take none.
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
    /// Extract only slice i of n of the dataset (`0/4`: the first quarter of each split, after
    /// --limit), for a job array; `marnet merge-shards` joins the slices. `env` reads i and n
    /// from a Slurm array task (SLURM_ARRAY_TASK_ID minus SLURM_ARRAY_TASK_MIN, of
    /// SLURM_ARRAY_TASK_COUNT); `env/N` also from a Kubernetes Indexed Job (JOB_COMPLETION_INDEX,
    /// of N). The cache records the slice (`i/n`).
    #[arg(long, value_name = "i/n|env|env/N", value_parser = crate::options::task_slice)]
    pub shard: Option<String>,
    /// Leave out images that cannot be read (listed with the reason in OUT/skipped.jsonl).
    /// Without it a manifest's missing and unreadable images are all listed before any work,
    /// and an image that fails to decode later stops the run, naming its line.
    #[arg(long)]
    pub skip_bad: bool,
    /// Also store per-sample token features in f16 (for `--align team-tokens`): the visual
    /// encoder's tokens before pooling (EfficientNet-Lite0: 7 x 7 = 49 of 1280 channels; ViT:
    /// its patch tokens) and the text encoder's per-token last hidden states with their mask,
    /// padded to the split's longest text. About 125 KB per image with EfficientNet-Lite0.
    #[arg(long)]
    pub tokens: bool,
    /// Replace a feature cache already in --out that was made from other data, settings or by
    /// another marnet build, and discard the saved progress of an unfinished extraction there.
    /// Without it such a cache is refused, and one made the same way is reused.
    #[arg(long)]
    #[serde(skip)]
    pub force: bool,
}

/// `kind:PATH` with PATH made absolute when it exists (a bare name stays as it is), so that the
/// recorded encoder is found from any folder.
fn absolute_spec(spec: &str) -> String {
    match spec.split_once(':') {
        Some((kind, path)) => match std::path::absolute(path) {
            Ok(abs) if Path::new(path).exists() => format!("{kind}:{}", abs.display()),
            _ => spec.to_string(),
        },
        None => spec.to_string(),
    }
}

/// The settings `extract.json` records: what was extracted and how, not where from or to (the
/// dataset root absolute, the output folder left out) and only the options of this dataset.
pub(super) fn recorded(s: &ExtractSettings) -> Result<serde_json::Value> {
    let root = s.root.as_ref().map(|r| std::path::absolute(r).unwrap_or_else(|_| r.clone()));
    let mut v = serde_json::to_value(ExtractSettings { assets: None, text: None, root, visual: absolute_spec(&s.visual), ..s.clone() })?;
    let o = v.as_object_mut().expect("settings serialize to an object");
    o.remove("out");
    if !s.dataset.starts_with("emoji-") {
        for key in ["test_vendor", "val_fraction", "seed", "skin_tones"] {
            o.remove(key);
        }
    }
    Ok(v)
}
