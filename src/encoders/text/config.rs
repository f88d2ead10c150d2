//! What a text encoder folder says about how to use its BERT: read as sentence-transformers reads
//! it. With `modules.json`: the `Transformer` module's folder (config.json, model.safetensors,
//! tokenizer.json), the `Pooling` module's `config.json` (`pooling_mode`, or the older
//! `pooling_mode_*_tokens` flags; several modes are concatenated), and L2 normalisation when a
//! `Normalize` module follows. Without it (a plain Hugging Face folder): mean pooling, no
//! normalisation, as sentence-transformers builds for a plain transformer. Max length: the
//! Transformer folder's `sentence_bert_config.json` `max_seq_length`, else
//! `tokenizer_config.json` `model_max_length`, else `config.json` `max_position_embeddings`,
//! never more than the latter.

use crate::fsutil::read_json;
use anyhow::{Context, Result, bail, ensure};
use candle_transformers::models::bert::Config;
use serde::Deserialize;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// How token states become one vector: sentence-transformers' pooling modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Masked mean over the tokens ([CLS] and [SEP] included).
    Mean,
    /// The first token's ([CLS]) state.
    Cls,
    /// Masked maximum per dimension.
    Max,
    /// Masked sum divided by the square root of the token count.
    MeanSqrtLen,
    /// Masked mean weighted by position (1, 2, ...).
    WeightedMean,
    /// The last real token's state.
    LastToken,
}

/// sentence-transformers' names, in its legacy concatenation order, with the legacy flag's name.
const MODES: [(&str, &str, Pooling); 6] = [
    ("cls", "pooling_mode_cls_token", Pooling::Cls),
    ("max", "pooling_mode_max_tokens", Pooling::Max),
    ("mean", "pooling_mode_mean_tokens", Pooling::Mean),
    ("mean_sqrt_len_tokens", "pooling_mode_mean_sqrt_len_tokens", Pooling::MeanSqrtLen),
    ("weightedmean", "pooling_mode_weightedmean_tokens", Pooling::WeightedMean),
    ("lasttoken", "pooling_mode_lasttoken", Pooling::LastToken),
];

impl Pooling {
    pub fn name(self) -> &'static str {
        MODES.iter().find(|m| m.2 == self).map(|m| m.0).unwrap_or_default()
    }
}

/// A text encoder folder's settings.
#[derive(Debug, Clone)]
pub struct TextConfig {
    /// The folder with config.json, model.safetensors and tokenizer.json.
    pub model_dir: PathBuf,
    pub bert: Config,
    /// Pooled vectors, concatenated in this order.
    pub pooling: Vec<Pooling>,
    pub normalize: bool,
    /// Tokens per text, [CLS] and [SEP] included; longer texts are cut.
    pub max_len: usize,
    /// Lower-case texts first (`sentence_bert_config.json` `do_lower_case`).
    pub lowercase: bool,
}

#[derive(Deserialize)]
struct Module {
    #[serde(default)]
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

impl TextConfig {
    pub fn read(dir: &Path) -> Result<Self> {
        ensure!(dir.is_dir(), "{}: text encoder folder not found", dir.display());
        let modules_path = dir.join("modules.json");
        let (mut model_dir, mut pooling, mut normalize) = (None, None, false);
        if modules_path.exists() {
            let modules: Vec<Module> = read_json(&modules_path)?;
            for m in modules {
                let at = dir.join(&m.path);
                match m.kind.rsplit('.').next().unwrap_or_default() {
                    "Transformer" if model_dir.is_none() => model_dir = Some(at),
                    "Pooling" if pooling.is_none() && model_dir.is_some() => pooling = Some(read_pooling(&at.join("config.json"))?),
                    "Normalize" if pooling.is_some() => normalize = true,
                    _ => bail!(
                        "{}: module `{}` (at `{}`) is not supported here: marnet reads one Transformer (BERT), then one Pooling, then optionally Normalize",
                        modules_path.display(),
                        m.kind,
                        m.path
                    ),
                }
            }
            ensure!(pooling.is_some(), "{}: no Pooling module after the Transformer", modules_path.display());
        }
        let model_dir = model_dir.unwrap_or_else(|| dir.to_path_buf());
        let cfg_path = model_dir.join("config.json");
        let bert: Config = read_json(&cfg_path)?;
        if let Some(t) = bert.model_type.as_deref().filter(|t| *t != "bert") {
            bail!("{}: model_type `{t}`; marnet reads BERT-layout models (model_type bert)", cfg_path.display());
        }
        let st_path = model_dir.join("sentence_bert_config.json");
        let st: Value = if st_path.exists() { read_json(&st_path)? } else { Value::Null };
        let tok_cfg_path = model_dir.join("tokenizer_config.json");
        let tok_cfg: Value = if tok_cfg_path.exists() { read_json(&tok_cfg_path)? } else { Value::Null };
        // A tokenizer without a limit says so with a huge model_max_length (1e30).
        let limit = st["max_seq_length"].as_f64().or_else(|| tok_cfg["model_max_length"].as_f64());
        let max_len = limit.map_or(bert.max_position_embeddings, |l| (l.max(2.0) as usize).min(bert.max_position_embeddings));
        let lowercase = st["do_lower_case"].as_bool().unwrap_or(false);
        Ok(Self { model_dir, bert, pooling: pooling.unwrap_or(vec![Pooling::Mean]), normalize, max_len, lowercase })
    }

    /// Width of the pooled vector.
    pub fn dim(&self) -> usize {
        self.bert.hidden_size * self.pooling.len()
    }

    /// The pooling modes' names joined by `+` (`mean`, `max+mean`).
    pub fn pooling_name(&self) -> String {
        self.pooling.iter().map(|p| p.name()).collect::<Vec<_>>().join("+")
    }
}

/// A Pooling module's config: `pooling_mode` (a name or a list), else the legacy flags (none
/// set: mean, as sentence-transformers does).
fn read_pooling(path: &Path) -> Result<Vec<Pooling>> {
    let cfg: Value = read_json(path)?;
    let by_name = |v: &Value| -> Result<Pooling> {
        let name = v.as_str().with_context(|| format!("{}: pooling_mode {v} is not a name", path.display()))?;
        let known = || MODES.iter().map(|m| m.0).collect::<Vec<_>>().join(", ");
        MODES.iter().find(|m| m.0 == name).map(|m| m.2).with_context(|| format!("{}: unknown pooling mode `{name}` (known: {})", path.display(), known()))
    };
    let modes = match &cfg["pooling_mode"] {
        Value::Null => MODES.iter().filter(|m| cfg[m.1] == true).map(|m| m.2).collect(),
        Value::Array(names) => names.iter().map(by_name).collect::<Result<Vec<_>>>()?,
        name => vec![by_name(name)?],
    };
    Ok(if modes.is_empty() { vec![Pooling::Mean] } else { modes })
}
