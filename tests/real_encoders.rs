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
    use marnet::encoders::efficientnet_lite::{EfficientNetLite, PREPROCESS};
    let model = EfficientNetLite::load_dir(dir, &Device::Cpu).unwrap();
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
    assert!(cache.train.meta.ids.iter().all(|id| !id.starts_with("apple/")));
    assert_eq!(cache.train.meta.visual_encoder, "efficientnet-lite0");
    // Same class, same text: rows with equal labels have equal text features.
    let t = cache.train.text.as_ref().unwrap();
    for i in 0..12 {
        for j in 0..12 {
            if cache.train.label[i] == cache.train.label[j] {
                assert_eq!(t[i * 384..(i + 1) * 384], t[j * 384..(j + 1) * 384]);
            }
        }
    }
}
