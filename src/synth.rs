//! A seeded synthetic feature cache where text is privileged information that helps.
//!
//! Same generative model as `../shared/bench/make_synth.py`:
//! - text class means `mu_c = sqrt(Ds / r) z_c Q` (z_c ~ N(0, I_r), Q: r x Ds orthonormal rows);
//! - text `x_s = mu_y + jitter * N(0, I)`;
//! - visual `x_v = (A x_s + noise * N(0, I) + bg * g * B_k) / sqrt(1 + jitter^2 + noise^2 + bg^2)`,
//!   A a random Ds -> Dv map, B_k one of `n_bg` class-independent background prototypes.
//!
//! So visual-only classification is hard (heavy noise plus a nuisance) while the text side
//! carries a clean class signature.

use crate::features::{FeatureCache, FeatureSplit, SplitMeta, Tokens};
use crate::rng::{normal_vec, stream};
use anyhow::{Result, ensure};
use candle_core::{Device, Tensor};
use rand::Rng;
use std::path::Path;

#[derive(Debug, Clone, clap::Args)]
pub struct SynthConfig {
    /// Number of classes.
    #[arg(long, default_value_t = 40, value_parser = crate::options::at_least_two::<usize>)]
    pub classes: usize,
    /// Visual feature dimension Dv.
    #[arg(long = "visual-dim", visible_alias = "dv", value_name = "DV", default_value_t = 256, value_parser = crate::options::at_least_one::<usize>)]
    pub dv: usize,
    /// Text feature dimension Ds.
    #[arg(long = "text-dim", visible_alias = "ds", value_name = "DS", default_value_t = 256, value_parser = crate::options::at_least_one::<usize>)]
    pub ds: usize,
    /// Training rows.
    #[arg(long, default_value_t = 4000, value_parser = crate::options::at_least_one::<usize>)]
    pub n_train: usize,
    /// Validation rows (0: none; training then carves its own).
    #[arg(long, default_value_t = 1000)]
    pub n_val: usize,
    /// Test rows (0: no test split).
    #[arg(long, default_value_t = 2000)]
    pub n_test: usize,
    /// Rank of the subspace the text class means live in (at most --text-dim; larger is clamped).
    #[arg(long, default_value_t = 32, value_parser = crate::options::at_least_one::<usize>)]
    pub text_rank: usize,
    /// Std of the per-row noise added to the text class mean.
    #[arg(long, default_value_t = 0.3, value_parser = crate::options::non_negative_f32)]
    pub text_jitter: f32,
    /// Std of the visual noise (before normalisation).
    #[arg(long, default_value_t = 7.0, value_parser = crate::options::non_negative_f32)]
    pub vis_noise: f32,
    /// Scale of the class-independent background nuisance.
    #[arg(long, default_value_t = 3.0, value_parser = crate::options::non_negative_f32)]
    pub bg_scale: f32,
    /// Number of background nuisance prototypes each visual row draws one of.
    #[arg(long = "bg-prototypes", visible_alias = "n-bg", value_name = "N", default_value_t = 32, value_parser = crate::options::at_least_one::<usize>)]
    pub n_bg: usize,
    /// Seed of the generated data.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Prefix row ids with one of N groups (`g1/synth-train-000004`, round robin), so that
    /// `ablate --leave-one-out` can fold the cache; 0: plain ids.
    #[arg(long, default_value_t = 0)]
    pub groups: usize,
}

/// `marnet synth --tokens`: random token features next to the pooled ones (for
/// `--align team-tokens` without real assets).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SynthTokens {
    /// Also write token features: per row, `--visual-tokens` visual tokens whose mean is the row's
    /// visual feature, and 1 to `--text-tokens` text tokens (zero-padded, with their mask) whose
    /// mean is its text feature; each token is the feature plus centred N(0, --token-noise^2)
    /// noise. Drawn from their own seeded stream: the pooled features are those without --tokens.
    #[arg(long)]
    pub tokens: bool,
    /// Visual tokens per row (with --tokens).
    #[arg(long, default_value_t = 4, value_parser = crate::options::at_least_one::<usize>)]
    pub visual_tokens: usize,
    /// Most text tokens per row (the padded length; with --tokens).
    #[arg(long, default_value_t = 6, value_parser = crate::options::at_least_one::<usize>)]
    pub text_tokens: usize,
    /// Std of each token's noise around its row's feature (with --tokens).
    #[arg(long, default_value_t = 1.0, value_parser = crate::options::non_negative_f32)]
    pub token_noise: f32,
}

/// Tokens around each row of `rows` [n, d]: row r gets `lens[r]` tokens `x_r + e_k - mean(e)`
/// (e_k ~ N(0, noise^2 I)), so their mean is x_r, zero-padded to `len`.
fn tokens_around(rows: &[f32], d: usize, lens: &[usize], len: usize, noise: f32, masked: bool, rng: &mut crate::rng::SeededRng) -> Tokens {
    let n = lens.len();
    let mut data = vec![half::f16::ZERO; n * len * d];
    let mut mask = vec![0u8; n * len];
    for (r, &l) in lens.iter().enumerate() {
        let e = normal_vec(rng, l * d);
        for j in 0..d {
            let mean = (0..l).map(|k| e[k * d + j]).sum::<f32>() / l as f32;
            for k in 0..l {
                data[(r * len + k) * d + j] = half::f16::from_f32(rows[r * d + j] + noise * (e[k * d + j] - mean));
            }
        }
        mask[r * len..r * len + l].fill(1);
    }
    Tokens { data, len, dim: d, mask: masked.then_some(mask) }
}

/// Adds random token features (see [`SynthTokens`]) to every split of `cache`.
pub fn add_tokens(cache: &mut FeatureCache, t: &SynthTokens, seed: u64) -> Result<()> {
    ensure!(t.visual_tokens >= 1 && t.text_tokens >= 1, "synth --tokens: need at least one visual and one text token");
    for (i, split) in [Some(&mut cache.train), cache.val.as_mut(), cache.test.as_mut()].into_iter().flatten().enumerate() {
        let mut rng = stream(seed, "synth-tokens", i as u64);
        let n = split.len();
        split.visual_tokens = Some(tokens_around(&split.visual, split.dv, &vec![t.visual_tokens; n], t.visual_tokens, t.token_noise, false, &mut rng));
        if let Some(text) = &split.text {
            let lens: Vec<usize> = (0..n).map(|_| rng.random_range(1..=t.text_tokens)).collect();
            split.text_tokens = Some(tokens_around(text, split.ds, &lens, t.text_tokens, t.token_noise, true, &mut rng));
        }
    }
    Ok(())
}

/// Generates and writes a cache folder, with token features if `tokens.tokens`.
pub fn write_with_tokens(cfg: &SynthConfig, tokens: &SynthTokens, dir: &Path) -> Result<FeatureCache> {
    let mut cache = generate(cfg)?;
    if tokens.tokens {
        add_tokens(&mut cache, tokens, cfg.seed)?;
    }
    cache.write(dir)?;
    cache.dir = dir.to_path_buf();
    Ok(cache)
}

/// Rows orthonormalised by modified Gram-Schmidt (f64), `r` rows of length `d`.
fn orthonormal_rows(mut m: Vec<f64>, r: usize, d: usize) -> Vec<f64> {
    for i in 0..r {
        for j in 0..i {
            let dot: f64 = (0..d).map(|k| m[i * d + k] * m[j * d + k]).sum();
            for k in 0..d {
                m[i * d + k] -= dot * m[j * d + k];
            }
        }
        let norm = (0..d).map(|k| m[i * d + k].powi(2)).sum::<f64>().sqrt();
        for k in 0..d {
            m[i * d + k] /= norm;
        }
    }
    m
}

pub fn generate(cfg: &SynthConfig) -> Result<FeatureCache> {
    ensure!(cfg.classes >= 2 && cfg.dv > 0 && cfg.ds > 0 && cfg.n_train > 0, "synth: need >= 2 classes, positive dims and rows");
    let mut rng = stream(cfg.seed, "synth", 0);
    let (ds, dv, r) = (cfg.ds, cfg.dv, cfg.text_rank.clamp(1, cfg.ds));
    let q = orthonormal_rows(normal_vec(&mut rng, r * ds).into_iter().map(f64::from).collect(), r, ds);
    let scale = (ds as f64 / r as f64).sqrt();
    let z = normal_vec(&mut rng, cfg.classes * r);
    let mut mu = vec![0f32; cfg.classes * ds];
    for c in 0..cfg.classes {
        for i in 0..r {
            let zc = scale * z[c * r + i] as f64;
            for k in 0..ds {
                mu[c * ds + k] += (zc * q[i * ds + k]) as f32;
            }
        }
    }
    let a: Vec<f32> = normal_vec(&mut rng, ds * dv).into_iter().map(|x| x / (ds as f32).sqrt()).collect();
    let a = Tensor::from_vec(a, (ds, dv), &Device::Cpu)?;
    let bg = normal_vec(&mut rng, cfg.n_bg.max(1) * dv);
    let norm = (1.0 + cfg.text_jitter.powi(2) + cfg.vis_noise.powi(2) + cfg.bg_scale.powi(2)).sqrt();
    let classes: Vec<String> = (0..cfg.classes).map(|c| format!("class_{c:03}")).collect();

    let mut split = |name: &str, n: usize| -> Result<Option<FeatureSplit>> {
        if n == 0 {
            return Ok(None);
        }
        let label: Vec<u32> = (0..n).map(|_| rng.random_range(0..cfg.classes as u32)).collect();
        let jitter = normal_vec(&mut rng, n * ds);
        let text: Vec<f32> = (0..n * ds).map(|i| mu[label[i / ds] as usize * ds + i % ds] + cfg.text_jitter * jitter[i]).collect();
        let mapped = Tensor::from_slice(&text, (n, ds), &Device::Cpu)?.matmul(&a)?.flatten_all()?.to_vec1::<f32>()?;
        let noise = normal_vec(&mut rng, n * dv);
        let mut visual = vec![0f32; n * dv];
        for row in 0..n {
            let g = normal_vec(&mut rng, 1)[0].abs();
            let k = rng.random_range(0..cfg.n_bg.max(1));
            for j in 0..dv {
                let i = row * dv + j;
                visual[i] = (mapped[i] + cfg.vis_noise * noise[i] + cfg.bg_scale * g * bg[k * dv + j]) / norm;
            }
        }
        let meta = SplitMeta {
            classes: classes.clone(),
            ids: (0..n)
                .map(|i| match cfg.groups {
                    0 => format!("synth-{name}-{i:06}"),
                    g => format!("g{}/synth-{name}-{i:06}", i % g),
                })
                .collect(),
            visual_encoder: "synthetic".into(),
            text_encoder: "synthetic".into(),
            dataset: format!("synth(seed={}, classes={})", cfg.seed, cfg.classes),
            keys: vec![],
            groups: vec![],
        };
        Ok(Some(FeatureSplit { visual, dv, text: Some(text), ds, label, meta, visual_tokens: None, text_tokens: None }))
    };
    let train = split("train", cfg.n_train)?.unwrap();
    let val = split("val", cfg.n_val)?;
    let test = split("test", cfg.n_test)?;
    Ok(FeatureCache { dir: Default::default(), train, val, test, fold: None })
}

/// Generates and writes a cache folder.
pub fn write(cfg: &SynthConfig, dir: &Path) -> Result<FeatureCache> {
    write_with_tokens(cfg, &SynthTokens::default(), dir)
}
