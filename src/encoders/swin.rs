//! Swin Transformer (Liu et al., "Swin Transformer: Hierarchical Vision Transformer using
//! Shifted Windows", ICCV 2021), Swin-T by default, as a frozen image encoder whose feature is
//! the average of the final-layernormed tokens (timm's `forward_head(pre_logits=True)`, 768-d).
//!
//! Loads timm's `swin_tiny_patch4_window7_224` state dict (safetensors): `patch_embed.{proj,norm}`,
//! `layers.S.downsample.{norm,reduction}` (patch merging, at the start of stages 1..3 as in
//! timm 1.x), `layers.S.blocks.B.{norm1,attn.qkv,attn.proj,attn.relative_position_bias_table,
//! norm2,mlp.fc1,mlp.fc2}`, `norm`; the classifier (`head.fc`), if any, is ignored. The
//! relative position index and the shifted-window mask are buffers timm does not save: they are
//! computed here.

use super::preprocess_config::TimmPretrained;
use super::transformer::{Block, LayerNorm, PatchEmbed, dense, layer_norm};
use crate::data::image::Preprocess;
use crate::nn::linear::Linear;
use anyhow::{Context, Result, bail, ensure};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;
use std::path::Path;

/// The architecture, as timm's `SwinTransformer` arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub img_size: usize,
    pub patch_size: usize,
    pub in_chans: usize,
    pub embed_dim: usize,
    pub depths: Vec<usize>,
    pub num_heads: Vec<usize>,
    pub window_size: usize,
    pub mlp_ratio: f64,
    pub qkv_bias: bool,
}

impl Config {
    /// timm's `swin_tiny_patch4_window7_224`.
    pub fn swin_t() -> Self {
        Self {
            img_size: 224,
            patch_size: 4,
            in_chans: 3,
            embed_dim: 96,
            depths: vec![2, 2, 6, 2],
            num_heads: vec![3, 6, 12, 24],
            window_size: 7,
            mlp_ratio: 4.0,
            qkv_bias: true,
        }
    }

    /// Channels of stage `i`: `embed_dim * 2^i`.
    fn dim(&self, i: usize) -> usize {
        self.embed_dim << i
    }

    /// The pooled feature's size.
    pub fn num_features(&self) -> usize {
        self.dim(self.depths.len() - 1)
    }

    /// Side of stage `i`'s feature map, and its window and shift as timm sets them: a map no
    /// larger than the window is one window, unshifted.
    fn stage_geometry(&self, i: usize) -> (usize, usize, usize) {
        let side = (self.img_size / self.patch_size) >> i;
        let window = self.window_size.min(side);
        (side, window, if side <= self.window_size { 0 } else { window / 2 })
    }

    fn validate(&self) -> Result<()> {
        ensure!(!self.depths.is_empty() && self.depths.len() == self.num_heads.len(), "`depths` and `num_heads` must have one entry per stage");
        ensure!(self.img_size > 0 && self.patch_size > 0 && self.window_size > 0, "sizes must be positive");
        for i in 0..self.depths.len() {
            let (side, window, _) = self.stage_geometry(i);
            ensure!(self.dim(i).is_multiple_of(self.num_heads[i]), "stage {i}: {} channels do not split into {} heads", self.dim(i), self.num_heads[i]);
            ensure!(self.img_size.is_multiple_of(self.patch_size << i), "{} px images do not make whole {i}-times merged patches", self.img_size);
            ensure!(side.is_multiple_of(window), "stage {i}: {side} px feature map is not a multiple of its {window} px window (padding is not supported)");
        }
        Ok(())
    }
}

/// `model_args` of timm's `config.json`: the keys that shape the features; of the others, only
/// those without effect on them ([`NO_EFFECT`]) are accepted, never silently ignored.
#[derive(Deserialize)]
struct ModelArgs {
    img_size: Option<Side>,
    patch_size: Option<usize>,
    in_chans: Option<usize>,
    embed_dim: Option<usize>,
    depths: Option<Vec<usize>>,
    num_heads: Option<Vec<usize>>,
    window_size: Option<Side>,
    mlp_ratio: Option<f64>,
    qkv_bias: Option<bool>,
    global_pool: Option<String>,
    #[serde(flatten)]
    other: std::collections::BTreeMap<String, serde_json::Value>,
}

/// Model arguments that change only the classifier or training (dropout).
const NO_EFFECT: [&str; 5] = ["num_classes", "drop_rate", "proj_drop_rate", "attn_drop_rate", "drop_path_rate"];

/// A square size: `7` or `[7, 7]`.
#[derive(Deserialize)]
#[serde(untagged)]
enum Side {
    One(usize),
    Two([usize; 2]),
}

impl Side {
    fn square(self, key: &str) -> Result<usize> {
        match self {
            Side::One(s) => Ok(s),
            Side::Two([h, w]) if h == w => Ok(h),
            Side::Two([h, w]) => bail!("`{key}` {h}x{w}: only square sizes are supported"),
        }
    }
}

/// timm's `config.json` next to the weights (as `timm.models.push_to_hf_hub` writes it).
#[derive(Deserialize)]
struct TimmFile {
    architecture: String,
    model_args: Option<ModelArgs>,
    pretrained_cfg: Option<TimmPretrained>,
}

impl TimmFile {
    fn config(self) -> Result<(Config, TimmPretrained)> {
        ensure!(
            self.architecture.starts_with("swin_tiny_patch4_window7_224"),
            "architecture `{}` is not Swin-T (swin_tiny_patch4_window7_224)",
            self.architecture
        );
        let mut c = Config::swin_t();
        if let Some(a) = self.model_args {
            ensure!(a.global_pool.as_deref().unwrap_or("avg") == "avg", "only `global_pool: avg` is supported");
            if let Some(k) = a.other.keys().find(|k| !NO_EFFECT.contains(&k.as_str())) {
                bail!("model argument `{k}` is not supported");
            }
            c.img_size = a.img_size.map(|s| s.square("img_size")).transpose()?.unwrap_or(c.img_size);
            c.window_size = a.window_size.map(|s| s.square("window_size")).transpose()?.unwrap_or(c.window_size);
            c.patch_size = a.patch_size.unwrap_or(c.patch_size);
            c.in_chans = a.in_chans.unwrap_or(c.in_chans);
            c.embed_dim = a.embed_dim.unwrap_or(c.embed_dim);
            c.depths = a.depths.unwrap_or(c.depths);
            c.num_heads = a.num_heads.unwrap_or(c.num_heads);
            c.mlp_ratio = a.mlp_ratio.unwrap_or(c.mlp_ratio);
            c.qkv_bias = a.qkv_bias.unwrap_or(c.qkv_bias);
        }
        Ok((c, self.pretrained_cfg.unwrap_or_else(swin_t_pretrained)))
    }
}

/// Swin-T's timm preprocessing: bicubic, `crop_pct` 0.9, ImageNet mean and std.
fn swin_t_pretrained() -> TimmPretrained {
    TimmPretrained { crop_pct: Some(0.9), ..Default::default() }
}

/// Reads a timm `config.json`: the architecture and its preprocessing.
pub fn read_config(path: &Path) -> Result<(Config, TimmPretrained)> {
    let file: TimmFile = crate::fsutil::read_json(path)?;
    file.config().with_context(|| format!("{}: not a supported Swin-T config", path.display()))
}

/// Patch merging: each 2x2 group of tokens concatenated (4C), layernormed, projected to 2C.
struct PatchMerging {
    norm: LayerNorm,
    reduction: Linear,
}

impl PatchMerging {
    /// [B, H, W, C] -> [B, H/2, W/2, 2C].
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, h, w, c) = x.dims4()?;
        // [B, H/2, 2 (dy), W/2, 2 (dx), C] -> [B, H/2, W/2, dx, dy, C]: timm's order x00, x10, x01, x11.
        let x = x.reshape((b, h / 2, 2, w / 2, 2, c))?.permute((0, 1, 3, 4, 2, 5))?.contiguous()?.reshape((b, h / 2, w / 2, 4 * c))?;
        x.apply(&self.norm)?.apply(&self.reduction)
    }
}

/// A transformer block over (shifted) windows, W-MSA or SW-MSA (Liu et al., section 3.2).
struct SwinBlock {
    block: Block,
    window: usize,
    shift: usize,
    /// Relative position bias, plus the shifted-window mask [nW or 1, heads, N, N].
    bias: Tensor,
}

/// The relative position index of timm's `get_relative_position_index`: for tokens `i`, `j` of a
/// `w` x `w` window, `(dy + w - 1) * (2w - 1) + (dx + w - 1)` with `(dy, dx) = pos(i) - pos(j)`.
fn relative_position_index(w: usize) -> Vec<u32> {
    let n = w * w;
    let pos = |t: usize| ((t / w) as i64, (t % w) as i64);
    let w = w as i64;
    (0..n * n)
        .map(|k| {
            let ((yi, xi), (yj, xj)) = (pos(k / n), pos(k % n));
            ((yi - yj + w - 1) * (2 * w - 1) + (xi - xj + w - 1)) as u32
        })
        .collect()
}

/// The SW-MSA mask [nW, 1, N, N] of an `side` x `side` map shifted by `s`: 0 between tokens of
/// the same region before the cyclic shift, -100 (timm's value) across regions (section 3.2,
/// "efficient batch computation for shifted configuration").
fn shift_mask(side: usize, w: usize, s: usize, dev: &Device) -> candle_core::Result<Tensor> {
    let region = |p: usize| {
        if p < side - w {
            0
        } else if p < side - s {
            1
        } else {
            2
        }
    };
    let (nw, n) = ((side / w).pow(2), w * w);
    // Region of token t of window k (windows and tokens in row-major order).
    let id = |k: usize, t: usize| 3 * region((k / (side / w)) * w + t / w) + region((k % (side / w)) * w + t % w);
    let mask: Vec<f32> = (0..nw * n * n).map(|i| if id(i / (n * n), i / n % n) == id(i / (n * n), i % n) { 0.0 } else { -100.0 }).collect();
    Tensor::from_vec(mask, (nw, 1, n, n), dev)
}

impl SwinBlock {
    fn load(vb: VarBuilder, cfg: &Config, stage: usize, shifted: bool) -> candle_core::Result<Self> {
        let (dim, heads) = (cfg.dim(stage), cfg.num_heads[stage]);
        let (side, window, shift) = cfg.stage_geometry(stage);
        let shift = if shifted { shift } else { 0 };
        let hidden = (dim as f64 * cfg.mlp_ratio) as usize;
        let (attn, mlp) = (vb.pp("attn"), vb.pp("mlp"));
        let block = Block {
            norm1: layer_norm(dim, 1e-5, vb.pp("norm1"))?,
            qkv: dense(&[attn.pp("qkv")], dim, 3 * dim, cfg.qkv_bias)?,
            proj: dense(&[attn.pp("proj")], dim, dim, true)?,
            norm2: layer_norm(dim, 1e-5, vb.pp("norm2"))?,
            fc1: dense(&[mlp.pp("fc1")], dim, hidden, true)?,
            fc2: dense(&[mlp.pp("fc2")], hidden, dim, true)?,
            heads,
        };
        // B of eq. 4: entries of the table B^ [(2M - 1)^2, heads] by relative position.
        let n = window * window;
        let table = attn.get(((2 * window - 1).pow(2), heads), "relative_position_bias_table")?;
        let index = Tensor::from_vec(relative_position_index(window), n * n, vb.device())?;
        let mut bias = table.index_select(&index, 0)?.reshape((n, n, heads))?.permute((2, 0, 1))?.unsqueeze(0)?.contiguous()?;
        if shift > 0 {
            bias = bias.broadcast_add(&shift_mask(side, window, shift, vb.device())?)?;
        }
        Ok(Self { block, window, shift, bias })
    }

    /// [B, H, W, C] -> [B, H, W, C]: z = x + (S)W-MSA(LN(x)), then z + MLP(LN(z)) (eq. 3).
    /// Layernorm, MLP and residuals act per token, so the whole block runs on the windows
    /// (exact: maps are whole multiples of the window, no padding).
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, h, w, c) = x.dims4()?;
        let (m, s) = (self.window, self.shift as i32);
        // Cyclic shift towards the top left (fig. 4).
        let x = if s > 0 { x.roll(-s, 1)?.roll(-s, 2)? } else { x.clone() };
        // [B, H/M, M, W/M, M, C] -> [B * nW, M * M, C].
        let windows = x.reshape((b, h / m, m, w / m, m, c))?.permute((0, 1, 3, 2, 4, 5))?.contiguous()?.reshape((b * (h / m) * (w / m), m * m, c))?;
        let windows = self.block.forward(&windows, Some(&self.bias))?;
        let x = windows.reshape((b, h / m, w / m, m, m, c))?.permute((0, 1, 3, 2, 4, 5))?.contiguous()?.reshape((b, h, w, c))?;
        if s > 0 { x.roll(s, 1)?.roll(s, 2) } else { Ok(x) }
    }
}

struct Stage {
    downsample: Option<PatchMerging>,
    blocks: Vec<SwinBlock>,
}

pub struct Swin {
    patch_embed: PatchEmbed,
    patch_norm: LayerNorm,
    stages: Vec<Stage>,
    norm: LayerNorm,
    img_size: usize,
    preprocess: Preprocess,
}

impl Swin {
    /// The model of `cfg` in timm's key layout, with Swin-T's timm preprocessing.
    pub fn load(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        cfg.validate()?;
        let c0 = cfg.embed_dim;
        let stages = (0..cfg.depths.len())
            .map(|i| {
                let vb = vb.pp("layers").pp(i);
                let downsample = if i == 0 {
                    None
                } else {
                    let (ds, d) = (vb.pp("downsample"), cfg.dim(i - 1));
                    Some(PatchMerging { norm: layer_norm(4 * d, 1e-5, ds.pp("norm"))?, reduction: dense(&[ds.pp("reduction")], 4 * d, 2 * d, false)? })
                };
                // Blocks alternate regular and shifted windows (fig. 3b).
                let blocks = (0..cfg.depths[i]).map(|j| SwinBlock::load(vb.pp("blocks").pp(j), cfg, i, j % 2 == 1)).collect::<candle_core::Result<_>>()?;
                Ok(Stage { downsample, blocks })
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            patch_embed: PatchEmbed::load(vb.pp("patch_embed").pp("proj"), cfg.in_chans, c0, cfg.patch_size)?,
            patch_norm: layer_norm(c0, 1e-5, vb.pp("patch_embed").pp("norm"))?,
            stages,
            norm: layer_norm(cfg.num_features(), 1e-5, vb.pp("norm"))?,
            img_size: cfg.img_size,
            preprocess: swin_t_pretrained().preprocess(cfg.img_size as u32)?,
        })
    }

    /// Loads timm-layout weights: a safetensors file (Swin-T, its timm preprocessing), or a
    /// folder with `model.safetensors` and, optionally, the `config.json` timm writes (its
    /// `model_args` and `pretrained_cfg` preprocessing), as timm's Hugging Face Hub folders are.
    pub fn load_path(path: &Path, dev: &Device) -> Result<Self> {
        let (weights, cfg_file) = if path.is_dir() { (path.join("model.safetensors"), Some(path.join("config.json"))) } else { (path.to_path_buf(), None) };
        let (cfg, pretrained) = match cfg_file.filter(|f| f.exists()) {
            Some(f) => read_config(&f)?,
            None => (Config::swin_t(), swin_t_pretrained()),
        };
        let preprocess = pretrained.preprocess(cfg.img_size as u32).context("timm `pretrained_cfg`")?;
        // SAFETY: the file is memory-mapped read-only and not modified while in use.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, dev) }
            .with_context(|| format!("{}: cannot read weights", weights.display()))?;
        let model = Self::load(vb, &cfg).with_context(|| format!("{}: not Swin-T weights in timm layout", weights.display()))?;
        Ok(Self { preprocess, ..model })
    }
}

/// Timm's Swin-T as a frozen visual backbone.
impl super::image_encoder::ImageEncoder for Swin {
    fn name(&self) -> &str {
        "swin-t"
    }

    fn preprocess(&self) -> Preprocess {
        self.preprocess
    }

    /// The average of the final-layernormed tokens [N, C].
    fn features(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        Ok(self.features_and_tokens(pixels)?.0)
    }

    /// The pooled feature [N, C] and the final-layernormed tokens [N, H * W, C] (row-major).
    fn features_and_tokens(&self, pixels: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let (_, _, h, w) = pixels.dims4()?;
        if (h, w) != (self.img_size, self.img_size) {
            candle_core::bail!("Swin takes {0}x{0} images, got {h}x{w}", self.img_size);
        }
        let mut x = self.patch_embed.forward(pixels)?.apply(&self.patch_norm)?;
        for stage in &self.stages {
            if let Some(merge) = &stage.downsample {
                x = merge.forward(&x)?;
            }
            for block in &stage.blocks {
                x = block.forward(&x)?;
            }
        }
        let (b, h, w, c) = x.dims4()?;
        let tokens = x.apply(&self.norm)?.reshape((b, h * w, c))?;
        Ok((tokens.mean(1)?, tokens))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> Result<(Config, TimmPretrained)> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, json).unwrap();
        read_config(&path).map_err(|e| anyhow::anyhow!("{e:#}"))
    }

    #[test]
    fn timm_configs() {
        // A Hub export without model_args is Swin-T at 224 with its own pretrained_cfg.
        let (cfg, pre) = config(r#"{"architecture": "swin_tiny_patch4_window7_224", "pretrained_cfg": {"crop_pct": 1.0}}"#).unwrap();
        assert_eq!((cfg, pre.crop_pct), (Config::swin_t(), Some(1.0)));
        assert_eq!(Config::swin_t().num_features(), 768);
        // Stage geometry at 224: 56, 28, 14 px maps shifted by 3; 7 px is one unshifted window.
        assert_eq!((0..4).map(|i| Config::swin_t().stage_geometry(i)).collect::<Vec<_>>(), [(56, 7, 3), (28, 7, 3), (14, 7, 3), (7, 7, 0)]);
        for (json, says) in [
            (r#"{"architecture": "swin_base_patch4_window7_224"}"#, "not Swin-T"),
            (r#"{"architecture": "swin_tiny_patch4_window7_224", "model_args": {"always_partition": true}}"#, "always_partition"),
            (r#"{"architecture": "swin_tiny_patch4_window7_224", "model_args": {"img_size": [64, 32]}}"#, "only square"),
            (r#"{"architecture": "swin_tiny_patch4_window7_224", "model_args": {"global_pool": "max"}}"#, "global_pool"),
            (r#"{"model_args": {}}"#, "unexpected content"),
        ] {
            let e = format!("{:#}", config(json).unwrap_err());
            assert!(e.contains("config.json") && e.contains(says), "{json}: {e}");
        }
        let odd = Config { img_size: 96, ..Config::swin_t() };
        assert!(format!("{:#}", odd.validate().unwrap_err()).contains("not a multiple of its 7 px window"));
    }
}
