//! Text encoder: a BERT-layout model (BERT-base, MiniLM, ...) from a Hugging Face folder
//! (`config.json`, `model.safetensors`, `tokenizer.json`), pooled as its sentence-transformers
//! config says: mean over tokens (+ L2 normalisation when `2_Normalize` is listed), else CLS.

use crate::fsutil::read_json;
use anyhow::{Context, Result, ensure};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use std::path::Path;
use tokenizers::Tokenizer;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    Mean,
    Cls,
}

pub struct TextEncoder {
    model: BertModel,
    tokenizer: Tokenizer,
    pooling: Pooling,
    normalize: bool,
    max_len: usize,
    dim: usize,
    device: Device,
}

impl TextEncoder {
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        ensure!(dir.is_dir(), "{}: text encoder folder not found (run scripts/fetch-assets?)", dir.display());
        let cfg_path = dir.join("config.json");
        let config: Config = read_json(&cfg_path).with_context(|| "not a BERT config")?;
        let weights = dir.join("model.safetensors");
        // SAFETY: the file is memory-mapped read-only and not modified while in use.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, device) }
            .with_context(|| format!("{}: cannot read weights", weights.display()))?;
        let model = BertModel::load(vb, &config).with_context(|| format!("{}: weights do not match config.json", weights.display()))?;
        let tok_path = dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&tok_path).map_err(|e| anyhow::anyhow!("{}: cannot load tokenizer: {e}", tok_path.display()))?;
        tokenizer.with_padding(None);
        let max_len = config.max_position_embeddings;
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams { max_length: max_len, ..Default::default() }))
            .map_err(|e| anyhow::anyhow!("{}: {e}", tok_path.display()))?;
        let pooling_cfg = dir.join("1_Pooling").join("config.json");
        let pooling = if pooling_cfg.exists() && read_json::<serde_json::Value>(&pooling_cfg)?["pooling_mode_mean_tokens"] == true {
            Pooling::Mean
        } else {
            Pooling::Cls
        };
        let modules = dir.join("modules.json");
        let normalize = modules.exists() && read_json::<serde_json::Value>(&modules)?.to_string().contains("Normalize");
        Ok(Self { model, tokenizer, pooling, normalize, max_len, dim: config.hidden_size, device: device.clone() })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Pooled embeddings [N, H] of a batch of texts (padded to the longest in the batch).
    pub fn embed(&self, texts: &[&str]) -> Result<Tensor> {
        let (hidden, mask) = self.hidden(texts)?;
        Ok(pool(&hidden, &mask, self.pooling, self.normalize)?)
    }

    /// Pooled embeddings [N, H] (as [`Self::embed`]) and each text's token embeddings: the last
    /// hidden state of every wordpiece, [CLS] and [SEP] included, as [n_i, H] row-major (n_i
    /// tokens of text i, without padding).
    pub fn embed_with_tokens(&self, texts: &[&str]) -> Result<(Tensor, Vec<Vec<f32>>)> {
        let (hidden, mask) = self.hidden(texts)?;
        let pooled = pool(&hidden, &mask, self.pooling, self.normalize)?;
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
        let enc = self.tokenizer.encode_batch(texts.to_vec(), true).map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?;
        let len = enc.iter().map(|e| e.get_ids().len()).max().unwrap_or(1).clamp(1, self.max_len);
        let (mut ids, mut mask) = (vec![], vec![]);
        for e in &enc {
            let n = e.get_ids().len().min(len);
            ids.extend(e.get_ids()[..n].iter().copied().chain(std::iter::repeat_n(0, len - n)));
            mask.extend(std::iter::repeat_n(1u32, n).chain(std::iter::repeat_n(0, len - n)));
        }
        let b = texts.len();
        let ids = Tensor::from_vec(ids, (b, len), &self.device)?;
        let mask = Tensor::from_vec(mask, (b, len), &self.device)?;
        let hidden = self.model.forward(&ids, &ids.zeros_like()?, Some(&mask))?;
        Ok((hidden, mask))
    }
}

/// Pools hidden states [N, L, H] under an attention mask [N, L] (u32, 1 = token).
pub fn pool(hidden: &Tensor, mask: &Tensor, pooling: Pooling, normalize: bool) -> candle_core::Result<Tensor> {
    let pooled = match pooling {
        Pooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1)?,
        Pooling::Mean => {
            let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
            hidden.broadcast_mul(&m)?.sum(1)?.broadcast_div(&m.sum(1)?)?
        }
    };
    if normalize { crate::nn::norm::l2_normalize(&pooled) } else { Ok(pooled) }
}
