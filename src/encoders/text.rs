//! Text encoder: a BERT-layout model (BERT-base, MiniLM, ...) from a Hugging Face folder
//! (`config.json`, `model.safetensors`, `tokenizer.json`), pooled and cut to a max length as its
//! sentence-transformers files say ([`TextConfig`]; a plain folder: mean pooling).

mod config;
pub use config::{Pooling, TextConfig};

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::BertModel;
use serde::{Deserialize, Serialize};
use std::path::Path;
use tokenizers::Tokenizer;

/// What a text encoder is, as a feature cache records it (`extract.json`): features made with
/// another one are other features.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextIdentity {
    /// The folder's name (the fetched MiniLM: `all-MiniLM-L6-v2`); also the cache's `text_encoder`.
    pub name: String,
    /// Pooling modes joined by `+`.
    pub pooling: String,
    pub normalize: bool,
    pub max_length: usize,
    pub dim: usize,
    /// FNV-1a of config.json and tokenizer.json and the weights' size, as hex.
    pub files: String,
}

impl std::fmt::Display for TextIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let norm = if self.normalize { ", normalised" } else { "" };
        write!(f, "`{}` ({} pooling{norm}, {} tokens, {}-d, files {})", self.name, self.pooling, self.max_length, self.dim, self.files)
    }
}

pub struct TextEncoder {
    model: BertModel,
    tokenizer: Tokenizer,
    config: TextConfig,
    identity: TextIdentity,
    device: Device,
}

impl TextEncoder {
    /// Loads a text encoder folder (see [`TextConfig`]).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let config = TextConfig::read(dir)?;
        let weights = config.model_dir.join("model.safetensors");
        anyhow::ensure!(weights.exists(), "{}: missing (marnet reads safetensors weights, not pytorch_model.bin)", weights.display());
        // SAFETY: the file is memory-mapped read-only and not modified while in use.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, device) }
            .with_context(|| format!("{}: cannot read weights", weights.display()))?;
        // Older checkpoints (bert-base-uncased) name the LayerNorm parameters gamma and beta.
        let gamma = ["", "bert."].iter().any(|p| vb.contains_tensor(&format!("{p}embeddings.LayerNorm.gamma")));
        let vb = if gamma { vb.rename_f(|n| n.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")) } else { vb };
        let model = BertModel::load(vb, &config.bert).with_context(|| format!("{}: weights do not match config.json", weights.display()))?;
        let tok_path = config.model_dir.join("tokenizer.json");
        anyhow::ensure!(
            tok_path.exists(),
            "{}: missing (write it with transformers: AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR))",
            tok_path.display()
        );
        let mut tokenizer = Tokenizer::from_file(&tok_path).map_err(|e| anyhow::anyhow!("{}: cannot load tokenizer: {e}", tok_path.display()))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams { max_length: config.max_len, ..Default::default() }))
            .map_err(|e| anyhow::anyhow!("{}: {e}", tok_path.display()))?;
        let name = dir.canonicalize().ok().and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned())).unwrap_or_default();
        let mut files = crate::rng::fnv1a([]);
        for f in [config.model_dir.join("config.json"), tok_path] {
            files = crate::rng::fnv1a_continue(files, std::fs::read(&f).with_context(|| format!("{}: cannot read", f.display()))?);
        }
        files = crate::rng::fnv1a_continue(files, std::fs::metadata(&weights)?.len().to_le_bytes());
        let identity = TextIdentity {
            name,
            pooling: config.pooling_name(),
            normalize: config.normalize,
            max_length: config.max_len,
            dim: config.dim(),
            files: format!("{files:016x}"),
        };
        Ok(Self { model, tokenizer, config, identity, device: device.clone() })
    }

    /// The same encoder under another name (the fetched default: `all-MiniLM-L6-v2`).
    pub fn named(mut self, name: &str) -> Self {
        self.identity.name = name.to_string();
        self
    }

    pub fn identity(&self) -> &TextIdentity {
        &self.identity
    }

    pub fn config(&self) -> &TextConfig {
        &self.config
    }

    /// Width of the pooled vector (hidden size times the pooling modes).
    pub fn dim(&self) -> usize {
        self.config.dim()
    }

    /// Width of a token state (the hidden size).
    pub fn token_dim(&self) -> usize {
        self.config.bert.hidden_size
    }

    /// Token ids of one text as the encoder sees it: lower-cased if configured, [CLS] and
    /// [SEP] added, cut to the max length.
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.encode(&[text])?.remove(0))
    }

    fn encode(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        let texts: Vec<String> = texts.iter().map(|t| if self.config.lowercase { t.to_lowercase() } else { t.to_string() }).collect();
        let enc = self.tokenizer.encode_batch(texts, true).map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?;
        Ok(enc.into_iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// Pooled embeddings [N, D] of a batch of texts (padded to the longest in the batch).
    pub fn embed(&self, texts: &[&str]) -> Result<Tensor> {
        let (hidden, mask) = self.hidden(texts)?;
        Ok(pool_modes(&hidden, &mask, &self.config.pooling, self.config.normalize)?)
    }

    /// Pooled embeddings [N, D] (as [`Self::embed`]) and each text's token embeddings: the last
    /// hidden state of every wordpiece, [CLS] and [SEP] included, as [n_i, H] row-major (n_i
    /// tokens of text i, without padding; H = [`Self::token_dim`]).
    pub fn embed_with_tokens(&self, texts: &[&str]) -> Result<(Tensor, Vec<Vec<f32>>)> {
        let (hidden, mask) = self.hidden(texts)?;
        let pooled = pool_modes(&hidden, &mask, &self.config.pooling, self.config.normalize)?;
        let lens: Vec<u32> = mask.sum(1)?.to_vec1()?;
        let h = hidden.dim(2)?;
        let rows = hidden.to_vec3::<f32>()?;
        let tokens = rows.into_iter().zip(lens).map(|(r, n)| r.into_iter().take(n as usize).flatten().collect::<Vec<f32>>()).collect::<Vec<_>>();
        debug_assert!(tokens.iter().all(|t| t.len() % h == 0));
        Ok((pooled, tokens))
    }

    /// Last hidden states [N, L, H] of a batch of texts padded to the longest, with the attention
    /// mask [N, L] (u32, 1 = token).
    fn hidden(&self, texts: &[&str]) -> Result<(Tensor, Tensor)> {
        let enc = self.encode(texts)?;
        let len = enc.iter().map(|e| e.len()).max().unwrap_or(1).clamp(1, self.config.max_len);
        let (mut ids, mut mask) = (vec![], vec![]);
        for e in &enc {
            let n = e.len().min(len);
            ids.extend(e[..n].iter().copied().chain(std::iter::repeat_n(0, len - n)));
            mask.extend(std::iter::repeat_n(1u32, n).chain(std::iter::repeat_n(0, len - n)));
        }
        let b = texts.len();
        let ids = Tensor::from_vec(ids, (b, len), &self.device)?;
        let mask = Tensor::from_vec(mask, (b, len), &self.device)?;
        let hidden = self.model.forward(&ids, &ids.zeros_like()?, Some(&mask))?;
        Ok((hidden, mask))
    }
}

/// Pools hidden states [N, L, H] under an attention mask [N, L] (u32, 1 = token; right-padded).
pub fn pool(hidden: &Tensor, mask: &Tensor, pooling: Pooling, normalize: bool) -> candle_core::Result<Tensor> {
    pool_modes(hidden, mask, &[pooling], normalize)
}

/// [`pool`] with each of `modes`, concatenated [N, H * modes] (as sentence-transformers does),
/// then L2-normalised if `normalize`.
pub fn pool_modes(hidden: &Tensor, mask: &Tensor, modes: &[Pooling], normalize: bool) -> candle_core::Result<Tensor> {
    let parts = modes.iter().map(|&p| pool_one(hidden, mask, p)).collect::<candle_core::Result<Vec<_>>>()?;
    let pooled = if parts.len() == 1 { parts[0].clone() } else { Tensor::cat(&parts, 1)? };
    if normalize { crate::nn::norm::l2_normalize(&pooled) } else { Ok(pooled) }
}

fn pool_one(hidden: &Tensor, mask: &Tensor, pooling: Pooling) -> candle_core::Result<Tensor> {
    let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
    let masked_sum = || hidden.broadcast_mul(&m)?.sum(1);
    match pooling {
        Pooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1),
        Pooling::Mean => masked_sum()?.broadcast_div(&m.sum(1)?),
        Pooling::MeanSqrtLen => masked_sum()?.broadcast_div(&m.sum(1)?.sqrt()?),
        Pooling::Max => {
            let keep = mask.unsqueeze(2)?.broadcast_as(hidden.shape())?.contiguous()?;
            keep.where_cond(hidden, &Tensor::full(f32::NEG_INFINITY, hidden.shape(), hidden.device())?)?.max(1)
        }
        Pooling::WeightedMean => {
            let l = hidden.dim(1)?;
            let w = m.broadcast_mul(&Tensor::arange(1f32, (l + 1) as f32, hidden.device())?.reshape((1, l, 1))?)?;
            hidden.broadcast_mul(&w)?.sum(1)?.broadcast_div(&w.sum(1)?)
        }
        Pooling::LastToken => {
            let lens: Vec<u32> = mask.sum(1)?.to_vec1()?;
            let rows = lens.iter().enumerate().map(|(i, &n)| hidden.get(i)?.get(n.max(1) as usize - 1)).collect::<candle_core::Result<Vec<_>>>()?;
            Tensor::stack(&rows, 0)
        }
    }
}
