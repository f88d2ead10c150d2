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
