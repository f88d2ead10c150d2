//! Encoders against outputs PyTorch computed for the same tiny random-weight checkpoints
//! (`tests/fixtures/make_encoder_fixtures.py` made them, in the real key layouts).

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use marnet::encoders::text::{Pooling, pool};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn expected(name: &str, key: &str) -> Vec<f32> {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture(name).join("expected.json")).unwrap()).unwrap();
    v[key].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn assert_close(got: &Tensor, want: &[f32]) {
    let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(got.len(), want.len());
    // 1e-4, relative to the value where it exceeds 1 (float32 rounding grows with magnitude).
    let worst = got.iter().zip(want).map(|(a, b)| (a - b).abs() / b.abs().max(1.0)).fold(0f32, f32::max);
    assert!(worst < 1e-4, "max scaled difference {worst}");
}

#[test]
fn vit_matches_transformers() {
    let dev = Device::Cpu;
    let enc = marnet::encoders::vit::VitEncoder::load_dir(&fixture("vit-tiny"), &dev).unwrap();
    let n = 2 * 3 * 32 * 32;
    let pixels: Vec<f32> = (0..n).map(|i| (0.37 * i as f64).sin() as f32).collect();
    let x = Tensor::from_vec(pixels, (2, 3, 32, 32), &dev).unwrap();
    assert_close(&enc.features(&x).unwrap(), &expected("vit-tiny", "cls"));
    // `extract --tokens`: the same CLS feature, and one layernormed token per patch.
    let (cls, patches) = enc.features_and_tokens(&x).unwrap();
    assert_close(&cls, &expected("vit-tiny", "cls"));
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("vit-tiny").join("config.json")).unwrap()).unwrap();
    let (size, patch, hidden) = (cfg["image_size"].as_u64().unwrap() as usize, cfg["patch_size"].as_u64().unwrap() as usize, cls.dim(1).unwrap());
    assert_eq!(patches.dims(), &[2, (size / patch).pow(2), hidden]);
}

#[test]
fn bert_matches_transformers() {
    use candle_transformers::models::bert::{BertModel, Config};
    let dev = Device::Cpu;
    let dir = fixture("bert-tiny");
    let cfg: Config = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[dir.join("model.safetensors")], DType::F32, &dev).unwrap() };
    let model = BertModel::load(vb, &cfg).unwrap();
    let ids: Vec<u32> = (0..12).map(|i| (i * 7 + 3) % 100).collect();
    let ids = Tensor::from_vec(ids, (2, 6), &dev).unwrap();
    let mask = Tensor::new(&[[1u32, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], &dev).unwrap();
    let h = model.forward(&ids, &ids.zeros_like().unwrap(), Some(&mask)).unwrap();
    assert_close(&pool(&h, &mask, Pooling::Cls, false).unwrap(), &expected("bert-tiny", "cls"));
    assert_close(&pool(&h, &mask, Pooling::Mean, false).unwrap(), &expected("bert-tiny", "mean"));
}

/// Weights as a formula of name and index, the same one `make_encoder_fixtures.py` used.
struct FormulaWeights;

fn fnv1a32(s: &str) -> u32 {
    s.bytes().fold(0x811C9DC5u32, |h, b| (h ^ b as u32).wrapping_mul(0x01000193))
}

impl candle_nn::var_builder::SimpleBackend for FormulaWeights {
    fn get(&self, s: candle_core::Shape, name: &str, _: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let dims = s.dims().to_vec();
        let phase = (fnv1a32(name) % 997) as f64;
        let fan_in: usize = dims.iter().skip(1).product();
        let v: Vec<f32> = (0..s.elem_count())
            .map(|i| {
                let x = (0.7 * i as f64 + phase).sin();
                (if name.ends_with("running_var") {
                    1.0 + 0.5 * x * x
                } else if dims.len() == 1 && name.ends_with("weight") {
                    1.0 + 0.1 * x
                } else if dims.len() <= 1 {
                    0.1 * x
                } else {
                    x / (fan_in as f64).sqrt()
                }) as f32
            })
            .collect();
        Tensor::from_vec(v, s, dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("{name}: shape needed")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

#[test]
fn resnets_match_timm() {
    use marnet::encoders::ImageEncoder;
    let dev = Device::Cpu;
    let n = 2 * 3 * 64 * 64;
    let pixels: Vec<f32> = (0..n).map(|i| (0.37 * i as f64).sin() as f32).collect();
    let x = Tensor::from_vec(pixels, (2, 3, 64, 64), &dev).unwrap();
    for arch in ["resnet18", "resnet50"] {
        let vb = VarBuilder::from_backend(Box::new(FormulaWeights), DType::F32, dev.clone());
        let enc = marnet::encoders::resnet::ResnetEncoder::load(vb, arch).unwrap();
        assert_close(&enc.features(&x).unwrap(), &expected(&format!("{arch}-formula"), "features"));
    }
}

fn pixels64(dev: &Device) -> Tensor {
    let pixels: Vec<f32> = (0..2 * 3 * 64 * 64).map(|i| (0.37 * i as f64).sin() as f32).collect();
    Tensor::from_vec(pixels, (2, 3, 64, 64), dev).unwrap()
}

fn formula_vb(dev: &Device) -> VarBuilder<'static> {
    VarBuilder::from_backend(Box::new(FormulaWeights), DType::F32, dev.clone())
}

/// Swin at 64 px from timm's own `config.json` (window 4: shifted, masked windows in stages 0-1,
/// one window in stage 2, a clamped 2 px window in stage 3; patch merging before stages 1-3).
#[test]
fn swin_matches_timm() {
    use marnet::encoders::{
        ImageEncoder,
        swin::{Swin, read_config},
    };
    let dev = Device::Cpu;
    let (cfg, pretrained) = read_config(&fixture("swin-formula/config.json")).unwrap();
    assert_eq!((cfg.img_size, cfg.window_size, cfg.embed_dim, cfg.num_features()), (64, 4, 16, 128));
    assert_eq!(pretrained.preprocess(64).unwrap().size, 64);
    let swin = Swin::load(formula_vb(&dev), &cfg).unwrap();
    let (pooled, tokens) = swin.features_and_tokens(&pixels64(&dev)).unwrap();
    assert_close(&pooled, &expected("swin-formula", "features"));
    assert_eq!(tokens.dims(), &[2, 4, 128]);
    assert_close(&tokens.mean(1).unwrap(), &expected("swin-formula", "features"));
    assert!(swin.features(&pixels64(&dev).narrow(3, 0, 32).unwrap()).is_err(), "a 64x32 input must be refused");
}

/// ViT-B/32's layout (patch 32, read from config.json) at 64 px: 2x2 patches.
#[test]
fn vit_b32_matches_transformers() {
    let dev = Device::Cpu;
    let cfg: candle_transformers::models::vit::Config =
        serde_json::from_str(&std::fs::read_to_string(fixture("vit-b32-formula/config.json")).unwrap()).unwrap();
    assert_eq!(cfg.patch_size, 32);
    let vit = marnet::encoders::vit::VitEncoder::load(formula_vb(&dev), &cfg).unwrap();
    let (cls, patches) = vit.features_and_tokens(&pixels64(&dev)).unwrap();
    assert_close(&cls, &expected("vit-b32-formula", "cls"));
    assert_eq!(patches.dims(), &[2, 4, 32]);
}

/// Preprocessing from a checkpoint's config on a real image, against transformers'
/// `ViTImageProcessor` (torchvision backend) and timm's eval transform. Only resampling differs
/// (their kernels vs the `image` crate's): here at most 1 of 255 levels per value and 0.07-0.08
/// on average; a wrong filter, crop offset or resize mode gives 2-24 on average.
#[test]
fn preprocessing_follows_checkpoint_configs() {
    use marnet::encoders::preprocess_config::{TimmPretrained, hugging_face};
    let img = marnet::data::image::decode(&std::fs::read(fixture("images/chelsea.png")).unwrap(), "chelsea.png").unwrap();
    let timm: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("preprocess/timm-config.json")).unwrap()).unwrap();
    let timm: TimmPretrained = serde_json::from_value(timm["pretrained_cfg"].clone()).unwrap();
    for (key, pre) in [("hf", hugging_face(&fixture("preprocess/preprocessor_config.json"), 32).unwrap()), ("timm", timm.preprocess(32).unwrap())] {
        let (got, want) = (pre.apply(&img), expected("preprocess", key));
        assert_eq!(got.len(), want.len());
        // Differences in pixel levels: normalised values times the std (in 0..=255 units).
        let diffs: Vec<f32> = got.iter().zip(&want).enumerate().map(|(i, (a, b))| (a - b).abs() * pre.std[i / 1024]).collect();
        let (worst, avg) = (diffs.iter().fold(0f32, |m, d| m.max(*d)), diffs.iter().sum::<f32>() / diffs.len() as f32);
        assert!(worst <= 1.01 && avg <= 0.15, "{key}: max {worst} levels, mean {avg}");
    }
}
