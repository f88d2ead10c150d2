//! Feature extraction speed: encoder forward passes at 224 px (with ViT-B/16's time by stage)
//! and JPEG decoding.

use super::timing::throughput;
use crate::data::image::Preprocess;
use crate::encoders::ImageEncoder;
use crate::nn::stages;
use crate::rng::{randn, stream};
use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use rand::Rng;
use serde::Serialize;
use std::time::Instant;

/// Forward throughput of a visual encoder on random images.
#[derive(Debug, Clone, Serialize)]
pub struct EncoderBench {
    pub backbone: String,
    pub weights: String,
    pub batch: usize,
    pub images_per_s: f64,
}

/// One forward pass of `enc` on the same random [batch, 3, size, size] input at each call.
fn random_pass<'a>(enc: &'a dyn ImageEncoder, batch: usize, dev: &Device) -> Result<impl Fn() -> Result<()> + 'a> {
    let s = enc.preprocess().size as usize;
    let x = randn(&mut stream(0, "bench-images", 0), (batch, 3, s, s), dev)?;
    Ok(move || {
        enc.features(&x)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(())
    })
}

/// Images/s of `enc` on random [batch, 3, size, size] input: one warm-up pass, median of three.
pub fn encoder(backbone: &str, weights: &str, enc: &dyn ImageEncoder, batch: usize, dev: &Device) -> Result<EncoderBench> {
    let (images_per_s, _) = throughput(batch, random_pass(enc, batch, dev)?)?;
    Ok(EncoderBench { backbone: backbone.into(), weights: weights.into(), batch, images_per_s })
}

/// ViT-B/16 at 224 px with random weights (no real ones can be fetched here; speed is the same):
/// weights and biases N(0, 0.02) (timm draws its weights so), layer norms at one and zero.
pub fn vit_b16_random(dev: &Device) -> Result<crate::encoders::vit::VitEncoder> {
    use crate::encoders::vit::VitEncoder;
    let cfg = candle_transformers::models::vit::Config::vit_base_patch16_224();
    let vm = candle_nn::VarMap::new();
    VitEncoder::load(candle_nn::VarBuilder::from_varmap(&vm, candle_core::DType::F32, dev), &cfg)?;
    // Loaded again from plain tensors, as from a file: variables would make every op record its
    // inputs for autograd and keep a whole forward pass's activations alive. A VarMap starts
    // other tensors at zero, which would make every token equal and every attention uniform.
    let mut rng = stream(0, "bench-vit", 0);
    let mut named: Vec<(String, Tensor)> = vm.data().lock().unwrap().iter().map(|(k, v)| (k.clone(), v.as_tensor().detach())).collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let weights = named
        .into_iter()
        .map(|(k, v)| {
            let layer_norm = k.contains("layernorm");
            Ok((k, if layer_norm { v } else { (randn(&mut rng, v.shape(), dev)? * 0.02)? }))
        })
        .collect::<Result<_>>()?;
    Ok(VitEncoder::load(candle_nn::VarBuilder::from_tensors(weights, candle_core::DType::F32, dev), &cfg)?)
}

/// Decoding and preprocessing throughput, all threads, on a generated photo-sized JPEG.
#[derive(Debug, Clone, Serialize)]
pub struct DecodeBench {
    pub width: u32,
    pub height: u32,
    pub images_per_s: f64,
}

/// Images/s of JPEG decode + resize + crop + normalise (the extraction input path), in parallel.
pub fn decode(pre: &Preprocess, images: usize) -> Result<DecodeBench> {
    use rayon::prelude::*;
    let (width, height) = (512, 384);
    let mut rng = stream(0, "bench-jpeg", 0);
    let img = image::RgbImage::from_fn(width, height, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, rng.random()]));
    let mut jpeg = vec![];
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90).encode_image(&img)?;
    let t0 = Instant::now();
    let n: usize = (0..images).into_par_iter().map(|_| pre.prepare(&jpeg, "bench.jpg").map(|p| p.pixels.len())).collect::<Result<Vec<_>>>()?.len();
    Ok(DecodeBench { width, height, images_per_s: n as f64 / t0.elapsed().as_secs_f64() })
}

/// ViT-B/16's forward pass by stage ([`crate::nn::stages`]), at one batch size.
#[derive(Debug, Clone, Serialize)]
pub struct VitStages {
    pub batch: usize,
    /// Wall time of a whole pass (mean of the recorded passes).
    pub pass_ms: f64,
    /// Each stage's wall time per pass, and its products' GFLOP/s where it has products;
    /// "other" is the rest of the pass (final layer norm, class token, copies out).
    pub stages: Vec<(String, f64, Option<f64>)>,
}

/// Times three passes of `enc` at `batch` by stage, after one warm-up pass.
pub fn vit_stages(enc: &crate::encoders::vit::VitEncoder, batch: usize, dev: &Device) -> Result<VitStages> {
    let pass = random_pass(enc, batch, dev)?;
    pass()?;
    const PASSES: usize = 3;
    let t0 = Instant::now();
    let (done, totals) = stages::record(|| (0..PASSES).try_for_each(|_| pass()));
    done?;
    let pass_ms = t0.elapsed().as_secs_f64() * 1e3 / PASSES as f64;
    let mut rows: Vec<(String, f64, Option<f64>)> = totals
        .iter()
        .map(|&(stage, secs, flop)| (stage.name().to_string(), secs * 1e3 / PASSES as f64, (flop > 0).then(|| flop as f64 / secs / 1e9)))
        .collect();
    rows.push(("other".into(), pass_ms - rows.iter().map(|r| r.1).sum::<f64>(), None));
    Ok(VitStages { batch, pass_ms, stages: rows })
}

/// What the extraction part of `marnet bench` measures.
pub struct Extraction {
    pub encoders: Vec<EncoderBench>,
    pub decode: Option<DecodeBench>,
    pub vit_stages: Option<VitStages>,
}

/// The extraction rows: EfficientNet-Lite0 (real weights from `assets`, left out with a note
/// when absent) and each of the `visual` encoders (`--visual` specs: a CNN of Table 1 with its
/// weights file) at each of `batches`, ViT-B/16 (random weights) at batch 8 with its time by
/// stage (on the CPU), and JPEG decoding.
pub fn extraction(assets: &std::path::Path, batches: &[usize], visual: &[String], verbose: bool, dev: &Device) -> Result<Extraction> {
    use crate::encoders::efficientnet_lite::{Config, EfficientNetLite, PREPROCESS};
    if verbose {
        eprintln!("timing the encoders and decoding...");
    }
    // Loaded first, so that a wrong spec fails before any timing.
    let visual = visual
        .iter()
        .map(|spec| crate::encoders::load_image_encoder(spec, assets, dev).with_context(|| format!("--visual {spec}")).map(|enc| (spec, enc)))
        .collect::<Result<Vec<_>>>()?;
    let mut encoders = vec![];
    match EfficientNetLite::load_dir(&assets.join("efficientnet-lite0"), Config::lite0(), dev) {
        Ok(enc) => {
            for &batch in batches {
                encoders.push(encoder("EfficientNet-Lite0", "real", &enc, batch, dev)?);
            }
        }
        Err(e) => eprintln!("note: EfficientNet-Lite0 left out: {e:#}"),
    }
    for (spec, enc) in &visual {
        let (name, path) = spec.split_once(':').unwrap_or((spec, "assets"));
        let file = std::path::Path::new(path).file_name().map_or(path.into(), |f| f.to_string_lossy());
        for &batch in batches {
            encoders.push(encoder(name, &file, enc.as_ref(), batch, dev)?);
        }
    }
    let vit = vit_b16_random(dev)?;
    encoders.push(encoder("ViT-B/16", "random", &vit, 8, dev)?);
    // On a GPU ops return before they finish: stage times would mean nothing.
    let vit_stages = if dev.is_cpu() { Some(vit_stages(&vit, 8, dev)?) } else { None };
    Ok(Extraction { encoders, decode: Some(decode(&PREPROCESS, 256)?), vit_stages })
}
