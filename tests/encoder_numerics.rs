//! Encoders against outputs PyTorch computed for the same tiny random-weight checkpoints
//! (`tests/fixtures/make_encoder_fixtures.py` made them, in the real key layouts).

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use marnet::encoders::text::{Pooling, pool};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn expected_json(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name).join("expected.json")).unwrap()).unwrap()
}

fn expected(name: &str, key: &str) -> Vec<f32> {
    expected_json(name)[key].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
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

/// The weight `name` of shape `s` from base values `base(i)` of order 1: batch-norm variances
/// and scales near 1, biases near 0, others divided by the square root of the fan-in.
fn formula_tensor(s: candle_core::Shape, name: &str, dtype: DType, dev: &Device, base: impl Fn(usize) -> f64) -> candle_core::Result<Tensor> {
    let dims = s.dims().to_vec();
    let fan_in: usize = dims.iter().skip(1).product();
    let v: Vec<f32> = (0..s.elem_count())
        .map(|i| {
            let x = base(i);
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

impl candle_nn::var_builder::SimpleBackend for FormulaWeights {
    fn get(&self, s: candle_core::Shape, name: &str, _: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let phase = (fnv1a32(name) % 997) as f64;
        formula_tensor(s, name, dtype, dev, |i| (0.7 * i as f64 + phase).sin())
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("{name}: shape needed")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// ResNet-18/50 under hashed weights (under `sin` weights ResNet-50's features barely depended
/// on the input), through the same check as the other CNNs: a usable fixture, 1e-4 agreement.
#[test]
fn resnets_match_timm() {
    use marnet::encoders::resnet::ResnetEncoder;
    for arch in ["resnet18", "resnet50"] {
        assert_matches_fixture(&ResnetEncoder::load(hashed_vb(), arch).unwrap(), &format!("{arch}-formula"));
    }
}

/// `extract --text DIR` on the folders `make_text_fixtures.py` made: token ids, pooling (each
/// sentence-transformers mode), normalisation and max length (cut texts) as sentence-transformers
/// computes them, through the loader `extract` uses; batched (padded) and one text at a time.
#[test]
fn text_encoder_folders_match_sentence_transformers() {
    use marnet::encoders::text::TextEncoder;
    for name in ["text-st-cls", "text-st-modes", "text-st-legacy", "text-plain"] {
        let want: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture(name).join("expected.json")).unwrap()).unwrap();
        let enc = TextEncoder::load(&fixture(name), &Device::Cpu).unwrap();
        let texts: Vec<&str> = want["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
        let id = enc.identity();
        let got = (id.name.as_str(), id.pooling.as_str(), id.normalize, id.max_length, enc.dim());
        assert_eq!(
            got,
            (
                name,
                want["pooling"].as_str().unwrap(),
                want["normalize"] == true,
                want["max_length"].as_u64().unwrap() as usize,
                want["dim"].as_u64().unwrap() as usize
            )
        );
        for (t, ids) in texts.iter().zip(want["ids"].as_array().unwrap()) {
            let ids: Vec<u32> = ids.as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect();
            assert_eq!(enc.token_ids(t).unwrap(), ids, "{name}: {t}");
        }
        let all = expected(name, "embeddings");
        assert_close(&enc.embed(&texts).unwrap(), &all);
        for (t, row) in texts.iter().zip(all.chunks(enc.dim())) {
            assert_close(&enc.embed(&[t]).unwrap(), row);
        }
    }
}

/// Folders `--text` cannot use fail naming the file and what is wrong.
#[test]
fn text_encoder_folder_errors_name_the_file() {
    use marnet::encoders::text::TextEncoder;
    let tmp = tempfile::tempdir().unwrap();
    let copy = |from: &str| {
        let dir = tmp.path().join(from);
        for e in std::fs::read_dir(fixture(from)).unwrap().flatten().filter(|e| e.path().is_file()) {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
        }
        dir
    };
    let err = |dir: &Path| format!("{:#}", TextEncoder::load(dir, &Device::Cpu).err().expect("should fail"));
    let dir = copy("text-plain");
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    assert!(err(&dir).contains("tokenizer.json: missing"), "{}", err(&dir));
    std::fs::write(dir.join("tokenizer.json"), "{").unwrap();
    assert!(err(&dir).contains("tokenizer.json: cannot load tokenizer"), "{}", err(&dir));
    std::fs::write(dir.join("config.json"), r#"{"hidden_size": 16}"#).unwrap();
    assert!(err(&dir).contains("config.json: unexpected content") && err(&dir).contains("missing field"), "{}", err(&dir));
    std::fs::remove_file(dir.join("config.json")).unwrap();
    assert!(err(&dir).contains("config.json: cannot read"), "{}", err(&dir));
    let dir = copy("text-st-cls");
    std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
    std::fs::write(dir.join("1_Pooling/config.json"), r#"{"pooling_mode": "median"}"#).unwrap();
    assert!(err(&dir).contains("1_Pooling/config.json: unknown pooling mode `median`"), "{}", err(&dir));
    let modules = r#"[{"path": "", "type": "sentence_transformers.models.Transformer"}, {"path": "2_Dense", "type": "sentence_transformers.models.Dense"}]"#;
    std::fs::write(dir.join("modules.json"), modules).unwrap();
    assert!(err(&dir).contains("modules.json: module `sentence_transformers.models.Dense`"), "{}", err(&dir));
    assert!(err(&tmp.path().join("absent")).contains("text encoder folder not found"));
}

/// [`FormulaWeights`] with hashed base values, `make_encoder_fixtures.py`'s `hashed`: splitmix64
/// of `(i + 1) * golden + fnv1a32(name)`, uniform in [-sqrt 6, sqrt 6). Unlike `sin(0.7 i +
/// phase)`, whose weight rows span two dimensions, it keeps deep bottleneck networks' features
/// dependent on their input.
struct HashedWeights;

fn splitmix(i: usize, seed: u64) -> f64 {
    let mut z = (i as u64 + 1).wrapping_mul(0x9E3779B97F4A7C15).wrapping_add(seed);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
    z ^= z >> 31;
    ((z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * 6f64.sqrt()
}

impl candle_nn::var_builder::SimpleBackend for HashedWeights {
    fn get(&self, s: candle_core::Shape, name: &str, _: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let seed = fnv1a32(name) as u64;
        formula_tensor(s, name, dtype, dev, |i| splitmix(i, seed))
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("{name}: shape needed")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// The [2, 3, 64, 64] input of the formula-weight fixtures: x[i] = sin(0.37 i).
fn pixels64() -> Tensor {
    let n = 2 * 3 * 64 * 64;
    Tensor::from_vec((0..n).map(|i| (0.37 * i as f64).sin() as f32).collect(), (2, 3, 64, 64), &Device::Cpu).unwrap()
}

/// `enc`'s features of [`pixels64`] match timm's in `fixture`, which must be a usable check:
/// features of moderate size that differ between the two images.
fn assert_matches_fixture(enc: &dyn marnet::encoders::ImageEncoder, fixture: &str) {
    let want = expected(fixture, "features");
    let (mean, half) = (want.iter().map(|x| x.abs()).sum::<f32>() / want.len() as f32, want.len() / 2);
    let apart = want[..half].iter().zip(&want[half..]).map(|(a, b)| (a - b).abs()).sum::<f32>() / half as f32;
    assert!((0.1..1e4).contains(&mean) && apart > 0.01 * mean.max(1.0), "{fixture}: mean |x| {mean}, rows differ by {apart}");
    assert_close(&enc.features(&pixels64()).unwrap(), &want);
}

fn hashed_vb() -> VarBuilder<'static> {
    VarBuilder::from_backend(Box::new(HashedWeights), DType::F32, Device::Cpu)
}

/// `expected.json`'s `timm[key]`: part of the real model's shape as timm builds it (a number as
/// one element).
fn timm_shape(fixture: &str, key: &[&str]) -> Vec<usize> {
    let v = key.iter().fold(expected_json(fixture)["timm"].clone(), |v, k| v[*k].clone());
    match v.as_array() {
        Some(a) => a.iter().map(|x| x.as_u64().unwrap() as usize).collect(),
        None => vec![v.as_u64().unwrap() as usize],
    }
}

#[test]
fn wide_resnet_matches_timm() {
    use marnet::encoders::resnet::{Config, ResNet, ResnetEncoder};
    let cfg = Config::wide_resnet50_2();
    assert_eq!(cfg.layers.to_vec(), timm_shape("wide_resnet50_2-formula", &["layers"]));
    assert_eq!(cfg.channels.map(|c| c * cfg.base_width / 64).to_vec(), timm_shape("wide_resnet50_2-formula", &["inner"]));
    // As the fixture: planes 8/16/32/64 (3x3 widths 16..128), the real depths and widening.
    let narrow = Config { channels: [8, 16, 32, 64], ..cfg };
    assert_matches_fixture(&ResnetEncoder::new("wide_resnet50_2", ResNet::load(hashed_vb(), &narrow).unwrap()), "wide_resnet50_2-formula");
}

/// [`HashedWeights`] under torchvision's VGG names: `classifier.0` / `classifier.3` hold timm's
/// `pre_logits.fc1` / `fc2` numbers (same order, flat shapes); timm's names are absent.
struct TorchvisionVgg;

impl candle_nn::var_builder::SimpleBackend for TorchvisionVgg {
    fn get(&self, s: candle_core::Shape, name: &str, init: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        assert!(!name.starts_with("pre_logits."), "{name} read from a torchvision checkpoint");
        let timm = name.replace("classifier.0.", "pre_logits.fc1.").replace("classifier.3.", "pre_logits.fc2.");
        HashedWeights.get(s, &timm, init, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        HashedWeights.get_unchecked(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        !name.starts_with("pre_logits.")
    }
}

#[test]
fn vgg19_matches_timm_in_timm_and_torchvision_layouts() {
    use marnet::encoders::{cnn::CnnEncoder, vgg::Config, vgg::Vgg};
    let cfg = Config::vgg19();
    assert_eq!(cfg.depths.to_vec(), timm_shape("vgg19-formula", &["depths"]));
    assert_eq!(cfg.widths.to_vec(), timm_shape("vgg19-formula", &["widths"]));
    // As the fixture: widths / 8, fc6 256 wide (timm's mlp_ratio 1/16); 64 px leaves the last
    // stage 2x2, pooled up to fc6's 7x7.
    let narrow = Config { widths: cfg.widths.map(|w| w / 8), hidden: 256, ..cfg };
    let torchvision = VarBuilder::from_backend(Box::new(TorchvisionVgg), DType::F32, Device::Cpu);
    for vb in [hashed_vb(), torchvision] {
        assert_matches_fixture(&CnnEncoder::new("vgg19", Vgg::load(vb, &narrow).unwrap()), "vgg19-formula");
    }
}

#[test]
fn repvgg_fused_at_load_matches_timm_training_form() {
    use marnet::encoders::{cnn::CnnEncoder, repvgg::Config, repvgg::RepVgg};
    let variants = expected_json("repvgg_a2-formula")["timm"].as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(variants.len(), 7);
    for name in &variants {
        let cfg = Config::by_name(name).unwrap();
        let timm = |k: &str| timm_shape("repvgg_a2-formula", &[name, k]);
        assert_eq!((vec![cfg.stem], cfg.depths.to_vec(), cfg.widths.to_vec()), (timm("stem"), timm("depths"), timm("widths")), "{name}");
    }
    // As the fixture: stem 8, stage widths 16/24/48/176, 2/2/2/1 blocks (identity branches from
    // each stage's second block on).
    let narrow = Config { stem: 8, depths: [2, 2, 2, 1], widths: [16, 24, 48, 176] };
    assert_matches_fixture(&CnnEncoder::new("repvgg_a2", RepVgg::load(hashed_vb(), &narrow).unwrap()), "repvgg_a2-formula");
}

#[test]
fn cnn_backbones_are_visual_choices() {
    let dev = Device::Cpu;
    let err = |spec: &str| format!("{:#}", marnet::encoders::load_image_encoder(spec, Path::new("/nonexistent"), &dev).err().unwrap());
    for kind in ["wide_resnet50_2", "vgg19", "repvgg_a2", "repvgg_b3"] {
        assert!(err(kind).contains("needs a path"), "{}", err(kind));
        let spec = format!("{kind}:/nonexistent/w.safetensors");
        assert!(err(&spec).contains("/nonexistent/w.safetensors: cannot read weights"), "{}", err(&spec));
    }
    assert!(err("repvgg_c9:w").contains("repvgg_a2"), "{}", err("repvgg_c9:w"));
    assert!(err("nope").contains("vgg19:FILE"), "{}", err("nope"));
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
    let (pooled, tokens) = swin.features_and_tokens(&pixels64()).unwrap();
    assert_close(&pooled, &expected("swin-formula", "features"));
    assert_eq!(tokens.dims(), &[2, 4, 128]);
    assert_close(&tokens.mean(1).unwrap(), &expected("swin-formula", "features"));
    assert!(swin.features(&pixels64().narrow(3, 0, 32).unwrap()).is_err(), "a 64x32 input must be refused");
}

/// ViT-B/32's layout (patch 32, read from config.json) at 64 px: 2x2 patches.
#[test]
fn vit_b32_matches_transformers() {
    let dev = Device::Cpu;
    let cfg: candle_transformers::models::vit::Config =
        serde_json::from_str(&std::fs::read_to_string(fixture("vit-b32-formula/config.json")).unwrap()).unwrap();
    assert_eq!(cfg.patch_size, 32);
    let vit = marnet::encoders::vit::VitEncoder::load(formula_vb(&dev), &cfg).unwrap();
    let (cls, patches) = vit.features_and_tokens(&pixels64()).unwrap();
    assert_close(&cls, &expected("vit-b32-formula", "cls"));
    // `features` runs the last layer on the CLS row alone: the same feature to the last bits.
    let features = vit.features(&pixels64()).unwrap();
    assert_close(&features, &expected("vit-b32-formula", "cls"));
    let diff = (&features - &cls).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    assert!(diff < 1e-6, "features against the whole pass's CLS: {diff}");
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
