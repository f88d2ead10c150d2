//! Real weights fetched by `scripts/fetch-assets` (skipped, with a message, when absent).

use candle_core::Device;
use marnet::encoders::text::TextEncoder;
mod common;
use common::asset;
use std::path::Path;

#[test]
fn minilm_matches_the_reference_similarity() {
    let Some(dir) = asset("minilm") else { return };
    let enc = TextEncoder::load(&dir, &Device::Cpu).unwrap();
    assert_eq!(enc.dim(), 384);
    let e = enc.embed(&["A man is eating food.", "A man is eating a piece of bread."]).unwrap();
    let v = e.to_vec2::<f32>().unwrap();
    for row in &v {
        let norm: f32 = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
    }
    let cos: f32 = v[0].iter().zip(&v[1]).map(|(a, b)| a * b).sum();
    assert!((cos - 0.755).abs() < 0.01, "cosine {cos}");
    // Batching pads: the same sentence alone gives the same embedding.
    let alone = enc.embed(&["A man is eating food."]).unwrap().to_vec2::<f32>().unwrap();
    assert!(alone[0].iter().zip(&v[0]).all(|(a, b)| (a - b).abs() < 1e-5));
}

#[test]
fn legacy_efficientnet_file_converts() {
    let Some(dir) = asset("efficientnet-lite0") else { return };
    let pth = dir.join("efficientnet-lite0-57934424.pth");
    let tensors = marnet::encoders::torch_legacy::read_state_dict(&pth).unwrap();
    // 247 weight and statistics tensors (4.69 M values) plus 49 batch-norm step counters.
    let (counters, weights): (Vec<_>, Vec<_>) = tensors.iter().partition(|(n, _)| n.ends_with("num_batches_tracked"));
    assert_eq!((weights.len(), counters.len()), (247, 49));
    let values: usize = weights.iter().map(|(_, t)| t.elem_count()).sum();
    assert!((4_680_000..4_700_000).contains(&values), "{values} values");
    let stem = &tensors.iter().find(|(n, _)| n == "_conv_stem.weight").unwrap().1;
    assert_eq!(stem.dims(), &[32, 3, 3, 3]);
}

fn top_class(dir: &Path, image: &str) -> (usize, f32) {
    use marnet::encoders::efficientnet_lite::{Config, EfficientNetLite, PREPROCESS};
    let model = EfficientNetLite::load_dir(dir, Config::lite0(), &Device::Cpu).unwrap();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images").join(image);
    let (x, status) = PREPROCESS.batch(&[path], &Device::Cpu).unwrap();
    assert!(status[0].is_ok());
    let probs = candle_nn::ops::softmax_last_dim(&model.forward(&x).unwrap()).unwrap().to_vec2::<f32>().unwrap();
    let (c, p) = probs[0].iter().enumerate().fold((0, 0f32), |b, (i, &p)| if p > b.1 { (i, p) } else { b });
    eprintln!("{image}: ImageNet class {c}, probability {p:.3}");
    (c, p)
}

#[test]
fn efficientnet_lite0_sees_espresso_and_a_cat() {
    let Some(dir) = asset("efficientnet-lite0") else { return };
    let (c, p) = top_class(&dir, "coffee.png");
    assert_eq!(c, 967, "coffee.png: class {c} (p {p})");
    assert!(p > 0.5, "espresso with probability {p}");
    // ImageNet 281..=285: tabby, tiger cat, Persian, Siamese, Egyptian cat.
    let (c, p) = top_class(&dir, "chelsea.png");
    assert!((281..=285).contains(&c), "chelsea.png: class {c} (p {p})");
}

#[test]
fn emoji_food_extracts_to_a_trainable_cache() {
    let Some(assets) = asset("") else { return };
    if asset("npm/emoji-datasource").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("cache");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_marnet"))
        .args(["--quiet", "extract", "--assets", &assets.display().to_string(), "--out", &out.display().to_string()])
        .args(["--limit", "12", "--batch", "6"])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let cache = marnet::features::FeatureCache::open(&out).unwrap();
    let test = cache.test.as_ref().unwrap();
    assert_eq!((cache.train.len(), cache.train.dv, cache.train.ds), (12, 1280, 384));
    assert_eq!(cache.num_classes(), test.meta.classes.len());
    assert!(test.meta.ids.iter().all(|id| id.starts_with("apple/")), "test is the held-out vendor");
    assert_eq!(cache.train.meta.visual_encoder, "efficientnet-lite0");
}

/// The split and the text of emoji-food over every sample (a `--limit`ed extraction holds the
/// first classes of one vendor only, where these checks could not fail).
#[test]
fn emoji_food_holds_apple_out_and_gives_each_class_one_text() {
    let Some(assets) = asset("") else { return };
    if asset("npm/emoji-datasource").is_none() {
        return;
    }
    let ds = marnet::data::open("emoji-food", None, &assets, "apple", 0.2, 0).unwrap();
    let vendor = |s: &marnet::data::Sample| s.id.split('/').next().unwrap().to_string();
    assert!(ds.test.len() >= 100 && ds.test.iter().all(|s| vendor(s) == "apple"), "test is every Apple image");
    let trained: std::collections::BTreeSet<String> = ds.train.iter().chain(&ds.val).map(vendor).collect();
    assert_eq!(trained.into_iter().collect::<Vec<_>>(), ["facebook", "google", "twitter"], "no Apple image in train or val");
    // Same class, same text, and each class's text differs from every other class's.
    let mut text_of: std::collections::HashMap<u32, &str> = Default::default();
    let mut pairs = 0;
    for s in ds.train.iter().chain(&ds.val).chain(&ds.test) {
        let t = s.text.as_deref().expect("every emoji-food sample has text");
        if let Some(prev) = text_of.insert(s.label, t) {
            assert_eq!(prev, t, "class {} has two texts", ds.classes[s.label as usize]);
            pairs += 1;
        }
    }
    assert!(pairs >= ds.classes.len(), "{pairs} same-class pairs: too few for the check to mean anything");
    let distinct: std::collections::HashSet<&str> = text_of.values().copied().collect();
    assert_eq!(distinct.len(), ds.classes.len(), "two classes share a text");
}

/// A missing asset fails the test under `CI=true` or `MARNET_REQUIRE_ASSETS=1` and is a
/// SKIPPED message otherwise (this test runs itself as a child with each environment).
#[test]
fn a_missing_asset_fails_under_ci_and_skips_otherwise() {
    if std::env::var_os("MARNET_ASSET_PROBE").is_some() {
        asset("no-such-asset");
        return;
    }
    let probe = |env: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", "a_missing_asset_fails_under_ci_and_skips_otherwise", "--nocapture", "--test-threads", "1"]);
        cmd.env("MARNET_ASSET_PROBE", "1").env_remove("CI").env_remove("MARNET_REQUIRE_ASSETS");
        cmd.envs(env.iter().copied()).output().unwrap()
    };
    let skipped = probe(&[]);
    assert!(skipped.status.success() && String::from_utf8_lossy(&skipped.stderr).contains("SKIPPED"), "{skipped:?}");
    for env in [("CI", "true"), ("MARNET_REQUIRE_ASSETS", "1")] {
        let failed = probe(&[env]);
        assert!(!failed.status.success(), "{env:?}: a missing asset passed");
        assert!(String::from_utf8_lossy(&failed.stderr).contains("no-such-asset is absent"), "{env:?}: {failed:?}");
    }
}

/// `extract` run from another folder finds the assets through `MARNET_ASSETS`, and names the
/// folder it looked at (and how to fetch) when they are not there.
#[test]
fn extract_finds_assets_through_marnet_assets_and_says_where_it_looked() {
    let tmp = tempfile::tempdir().unwrap();
    let extract = |assets: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_marnet"))
            .current_dir(tmp.path())
            .env("MARNET_ASSETS", assets)
            .args(["--quiet", "extract", "--out", "cache", "--limit", "2", "--batch", "2"])
            .output()
            .unwrap()
    };
    let nowhere = tmp.path().join("nowhere");
    let missing = extract(&nowhere);
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        !missing.status.success() && err.contains(&nowhere.display().to_string()) && err.contains("MARNET_ASSETS") && err.contains("scripts/fetch-assets"),
        "{err}"
    );
    let Some(assets) = asset("") else { return };
    if asset("npm/emoji-datasource").is_none() {
        return;
    }
    let found = extract(&assets);
    assert!(found.status.success(), "{}", String::from_utf8_lossy(&found.stderr));
    assert!(tmp.path().join("cache/train.safetensors").exists());
}

/// `extract --tokens` on emoji-food: 49 EfficientNet-Lite0 tokens of 1280 channels per image whose
/// mean is the pooled feature, MiniLM's token states with a mask of the real tokens whose masked
/// mean, L2-normalised, is the pooled text feature; the pooled features are those of a run
/// without --tokens, and `extract.json` records the flag.
#[test]
fn emoji_food_token_extraction() {
    let Some(assets) = asset("") else { return };
    if asset("npm/emoji-datasource").is_none() || asset("efficientnet-lite0").is_none() || asset("minilm").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let extract = |name: &str, extra: &[&str]| {
        let out = tmp.path().join(name);
        let run = std::process::Command::new(env!("CARGO_BIN_EXE_marnet"))
            .args(["--quiet", "extract", "--assets", &assets.display().to_string(), "--out", &out.display().to_string()])
            .args(["--limit", "4", "--batch", "4"])
            .args(extra)
            .output()
            .unwrap();
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        out
    };
    let with = extract("tokens", &["--tokens"]);
    let without = extract("plain", &[]);
    let record: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(with.join("extract.json")).unwrap()).unwrap();
    assert_eq!((&record["settings"]["tokens"], &record["tokens"]), (&serde_json::json!(true), &serde_json::json!(true)));
    let (cache, plain) = (marnet::features::FeatureCache::open(&with).unwrap(), marnet::features::FeatureCache::open(&without).unwrap());
    for (s, p) in
        [(&cache.train, &plain.train), (cache.val.as_ref().unwrap(), plain.val.as_ref().unwrap()), (cache.test.as_ref().unwrap(), plain.test.as_ref().unwrap())]
    {
        assert_eq!(s.len(), 4);
        assert_eq!((&s.visual, &s.text, &s.meta.ids), (&p.visual, &p.text, &p.meta.ids), "--tokens changes no pooled feature");
        assert!(p.visual_tokens.is_none() && p.text_tokens.is_none());
        let v = s.visual_tokens.as_ref().unwrap();
        assert_eq!((v.rows(), v.len, v.dim, v.mask.is_none()), (4, 49, 1280, true), "7 x 7 tokens of EfficientNet-Lite0's width");
        // EfficientNet-Lite0 pools by the mean over its 7 x 7 map: the tokens' mean is the pooled
        // feature, up to f16 rounding (values in [0, 6]: steps of at most 2^-8).
        let tokens = v.gather_f32(&[0, 1, 2, 3]);
        let mut worst = 0f32;
        for r in 0..4 {
            for c in 0..1280 {
                let mean = (0..49).map(|t| tokens[(r * 49 + t) * 1280 + c]).sum::<f32>() / 49.0;
                worst = worst.max((mean - s.visual[r * 1280 + c]).abs());
            }
        }
        assert!(worst < 2e-3, "mean of the visual tokens vs pooled feature: max difference {worst}");
        eprintln!("{}: mean of 49 visual tokens vs pooled feature: max |difference| {worst:.2e}", s.meta.ids[0]);
        let t = s.text_tokens.as_ref().unwrap();
        assert_eq!((t.rows(), t.dim), (4, 384));
        let mask = t.mask.as_ref().unwrap();
        let text_tokens = t.gather_f32(&[0, 1, 2, 3]);
        let mut longest = 0;
        for r in 0..4 {
            let m = &mask[r * t.len..(r + 1) * t.len];
            let n = m.iter().filter(|&&b| b == 1).count();
            longest = longest.max(n);
            // [CLS], at least one wordpiece, [SEP]; real tokens first, then padding (zeros).
            assert!(n >= 3 && m[..n].iter().all(|&b| b == 1), "row {r}: mask {m:?}");
            assert!(text_tokens[(r * t.len + n) * 384..(r + 1) * t.len * 384].iter().all(|&x| x == 0.0), "row {r}: padding holds zeros");
            // MiniLM pools by the masked mean, then L2 normalisation.
            let mean: Vec<f32> = (0..384).map(|c| (0..n).map(|k| text_tokens[(r * t.len + k) * 384 + c]).sum::<f32>() / n as f32).collect();
            let norm = mean.iter().map(|x| x * x).sum::<f32>().sqrt();
            let pooled = &s.text.as_ref().unwrap()[r * 384..(r + 1) * 384];
            let cos: f32 = mean.iter().zip(pooled).map(|(a, b)| a * b).sum::<f32>() / norm;
            assert!(cos > 0.9999, "row {r}: masked mean of the text tokens vs pooled text: cosine {cos}");
            eprintln!("{}: {n} text tokens of {}; cosine of their masked mean to the pooled text {cos:.6}", s.meta.ids[r], t.len);
        }
        assert_eq!(t.len, longest, "texts are padded to the split's longest");
    }
}

/// EfficientNet-Lite0 and Lite2 against PyTorch on the real weights: the model code the weights
/// were published with (PyPI `efficientnet-lite-pytorch`, run in float64) on the tensor marnet's
/// own preprocessing makes of three fixture images, to 1e-4 relative; and marnet's whole
/// pipeline against the reference's PIL preprocessing (torchvision `Resize` + `CenterCrop`,
/// bicubic) at the agreement measured there. `tests/fixtures/make_lite_reference.py` writes
/// the expected values (it runs this test with `MARNET_LITE_INPUTS=DIR` to get the inputs).
fn lite_matches_reference(config: marnet::encoders::efficientnet_lite::Config) {
    use marnet::encoders::efficientnet_lite::EfficientNetLite;
    let Some(dir) = asset(config.name) else { return };
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let images = ["chelsea.png", "coffee.png", "cmyk.jpg"];
    let paths: Vec<_> = images.iter().map(|n| fixtures.join("images").join(n)).collect();
    let (x, status) = config.preprocess.batch(&paths, &Device::Cpu).unwrap();
    assert!(status.iter().all(|s| s.is_ok()));
    if let Some(out) = std::env::var_os("MARNET_LITE_INPUTS") {
        x.save_safetensors("x", Path::new(&out).join(format!("{}.safetensors", config.name))).unwrap();
    }
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures.join(format!("efficientnet-lite/{}.json", config.name))).unwrap()).unwrap();
    let rows = |key: &str| -> Vec<Vec<f32>> { serde_json::from_value(want[key].clone()).unwrap() };
    // The reference was computed on this very input: its pixel values (0..=255) sum the same.
    let s = config.preprocess.size as usize;
    let pixels = x.to_dtype(candle_core::DType::F64).unwrap().affine(128.0, 127.0).unwrap().reshape((3, 3 * s * s)).unwrap().to_vec2::<f64>().unwrap();
    let sums: Vec<u64> = pixels.iter().map(|p| p.iter().map(|v| v.round() as u64).sum()).collect();
    assert_eq!(serde_json::json!(sums), want["input_pixel_sums"], "{}: preprocessing changed since the reference was made", config.name);
    let model = EfficientNetLite::load_dir(&dir, config.clone(), &Device::Cpu).unwrap();
    let got = model.features(&x).unwrap().to_vec2::<f32>().unwrap();
    let rel = |a: &[f32], b: &[f32]| {
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        a.iter().zip(b).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale
    };
    for (i, (g, w)) in got.iter().zip(rows("features")).enumerate() {
        let r = rel(g, &w);
        eprintln!("{} {}: max |marnet - PyTorch| / max |PyTorch| = {r:.1e}", config.name, images[i]);
        assert!(r < 1e-4, "{} {}: relative error {r}", config.name, images[i]);
    }
    let top1: Vec<usize> = model.forward(&x).unwrap().argmax(1).unwrap().to_vec1::<u32>().unwrap().into_iter().map(|c| c as usize).collect();
    assert_eq!(serde_json::json!(top1), want["top1"], "{}: top-1 ImageNet classes", config.name);
    assert!((281..=285).contains(&top1[0]), "{}: chelsea.png is class {} (281..=285 are cats)", config.name, top1[0]);
    // The whole pipeline against the reference's: the resizers differ (see the script's notes).
    let floor = want["pil_cosine_floor"].as_f64().unwrap() as f32;
    for (i, (g, w)) in got.iter().zip(rows("pil_features")).enumerate() {
        let cos =
            g.iter().zip(&w).map(|(a, b)| a * b).sum::<f32>() / (g.iter().map(|a| a * a).sum::<f32>().sqrt() * w.iter().map(|b| b * b).sum::<f32>().sqrt());
        eprintln!("{} {}: cosine to the PyTorch pipeline with PIL preprocessing {cos:.5}", config.name, images[i]);
        assert!(cos > floor, "{} {}: cosine {cos} to the PIL-preprocessed reference", config.name, images[i]);
    }
}

#[test]
fn efficientnet_lite0_matches_pytorch_on_real_weights() {
    lite_matches_reference(marnet::encoders::efficientnet_lite::Config::lite0());
}

#[test]
fn efficientnet_lite2_matches_pytorch_on_real_weights() {
    lite_matches_reference(marnet::encoders::efficientnet_lite::Config::lite2());
}

/// Each variant's loader refuses the other's checkpoint with the file and tensor named.
#[test]
fn efficientnet_lite_loaders_refuse_the_other_variant() {
    use marnet::encoders::efficientnet_lite::{Config, EfficientNetLite};
    let (Some(lite0), Some(lite2)) = (asset("efficientnet-lite0"), asset("efficientnet-lite2")) else { return };
    for (dir, config) in [(lite0, Config::lite2()), (lite2, Config::lite0())] {
        let name = config.name;
        let err = format!("{:#}", EfficientNetLite::load_dir(&dir, config, &Device::Cpu).err().unwrap());
        assert!(err.contains(&dir.join("model.safetensors").display().to_string()) && err.contains(&format!("not {name} weights")), "{err}");
        assert!(err.contains("shape mismatch for _blocks."), "{err}");
        eprintln!("{err}");
    }
}
