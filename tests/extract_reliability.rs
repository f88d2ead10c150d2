//! `marnet extract` on messy input and under interruption, with the real encoders fetched by
//! `scripts/fetch-assets` (skipped, with a message, when absent).

mod common;
use common::{asset, marnet, ok};
use std::path::{Path, PathBuf};
use std::process::Command;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/images");

/// Good images in unusual modes, then bad files, all listed in one manifest.
fn messy_manifest(dir: &Path) -> PathBuf {
    let coffee = image::open(Path::new(FIXTURES).join("coffee.png")).unwrap().resize(64, 48, image::imageops::FilterType::Triangle);
    coffee.save(dir.join("rgb.png")).unwrap();
    image::DynamicImage::ImageLuma8(coffee.to_luma8()).save(dir.join("gray.png")).unwrap();
    image::DynamicImage::ImageLumaA8(coffee.to_luma_alpha8()).save(dir.join("gray-alpha.png")).unwrap();
    image::DynamicImage::ImageRgb16(coffee.to_rgb16()).save(dir.join("rgb16.png")).unwrap();
    image::DynamicImage::ImageRgba8(coffee.to_rgba8()).save(dir.join("rgba.png")).unwrap();
    std::fs::copy(Path::new(FIXTURES).join("cmyk.jpg"), dir.join("cmyk.jpg")).unwrap();
    let png = std::fs::read(dir.join("rgb.png")).unwrap();
    std::fs::write(dir.join("truncated.png"), &png[..png.len() / 3]).unwrap();
    std::fs::write(dir.join("not-an-image.jpg"), "name,label\nsoup,1\n").unwrap();
    std::fs::write(dir.join("empty.png"), "").unwrap();
    let line = |img: &str, label: &str, split: &str| format!(r#"{{"image": "{img}", "label": "{label}", "text": "milk, coffee", "split": "{split}"}}"#);
    let lines = [
        line("rgb.png", "coffee", "train"),
        line("gray.png", "latte", "train"),
        line("truncated.png", "coffee", "train"),
        line("gray-alpha.png", "coffee", "train"),
        line("missing.png", "latte", "train"),
        line("rgb16.png", "latte", "train"),
        line("not-an-image.jpg", "coffee", "train"),
        line("rgba.png", "coffee", "train"),
        line("empty.png", "latte", "train"),
        line("cmyk.jpg", "latte", "test"),
    ];
    let path = dir.join("manifest.jsonl");
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

/// Extracts the messy manifest (batches of 3) with `extra` flags: the temporary folder, the
/// output cache folder and the run's output. `None` without the fetched encoders.
fn extract_messy(extra: &[&str]) -> Option<(tempfile::TempDir, PathBuf, std::process::Output)> {
    let assets = asset("efficientnet-lite0")?.parent()?.display().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let manifest = messy_manifest(tmp.path()).display().to_string();
    let out = tmp.path().join("cache");
    let out_s = out.display().to_string();
    let mut args = vec!["extract", "--assets", &assets, "--dataset", "manifest", "--root", &manifest, "--out", &out_s, "--batch", "3"];
    args.extend(extra);
    let run = marnet(&args);
    Some((tmp, out, run))
}

/// Without `--skip-bad`, the manifest check lists every image that is missing, empty, cut short
/// or whose header does not decode, each with its manifest line, before any work: nothing is written.
#[test]
fn bad_images_are_listed_together_with_their_lines_before_any_work() {
    let Some((_tmp, out, run)) = extract_messy(&[]) else { return };
    assert!(!run.status.success(), "marnet extract should have failed");
    let err = String::from_utf8(run.stderr).unwrap();
    for (line, image, why) in [
        (3, "truncated.png", "is truncated: the file stops at"),
        (5, "missing.png", "not found at"),
        (7, "not-an-image.jpg", "is not a JPEG, PNG or WebP image"),
        (9, "empty.png", "is an empty file (0 bytes)"),
    ] {
        assert!(err.contains(&format!("manifest.jsonl:{line}: image `{image}` ")) && err.contains(why), "line {line}: {err}");
    }
    assert!(err.contains("4 problems"), "{err}");
    assert!(!out.exists() && !marnet::extract::partial_dir(&out).exists(), "nothing created on disk");
}

/// An image whose header decodes but whose data is broken inside fails during extraction: the
/// message names the sample, its manifest line and `--skip-bad`; as no block was saved, no
/// `OUT.partial` stands in the way of the fixed rerun.
#[test]
fn an_image_broken_inside_stops_the_run_naming_its_line_and_leaves_no_progress_folder() {
    let Some(assets) = asset("efficientnet-lite0").and_then(|p| Some(p.parent()?.display().to_string())) else { return };
    let tmp = tempfile::tempdir().unwrap();
    let manifest = messy_manifest(tmp.path());
    let png = std::fs::read(tmp.path().join("rgb.png")).unwrap();
    std::fs::write(tmp.path().join("truncated.png"), common::broken_inside(&png)).unwrap();
    let keep = [1, 2, 3, 10];
    let text = std::fs::read_to_string(&manifest).unwrap();
    let lines: Vec<&str> = text.lines().enumerate().filter(|(i, _)| keep.contains(&(i + 1))).map(|(_, l)| l).collect();
    std::fs::write(&manifest, lines.join("\n")).unwrap();
    let out = tmp.path().join("cache");
    let args = ["extract", "--assets", &assets, "--dataset", "manifest", "--root", manifest.to_str().unwrap(), "--out", out.to_str().unwrap(), "--batch", "3"];
    let run = marnet(&args);
    let err = String::from_utf8(run.stderr).unwrap();
    assert!(!run.status.success());
    assert!(err.contains("sample `truncated.png` (") && err.contains("manifest.jsonl:3)") && err.contains("--skip-bad"), "{err}");
    assert!(!out.join("train.safetensors").exists());
    assert!(!marnet::extract::partial_dir(&out).exists(), "a run that saved nothing leaves no progress folder");
    // Fixed (the bad line removed), the same command runs.
    std::fs::write(&manifest, [lines[0], lines[1], lines[3]].join("\n")).unwrap();
    ok(&args);
    assert!(out.join("train.safetensors").exists());
}

#[test]
fn skip_bad_lists_each_bad_image_and_keeps_every_image_mode() {
    let Some((_tmp, out, run)) = extract_messy(&["--skip-bad"]) else { return };
    assert!(run.status.success(), "marnet extract --skip-bad failed:\n{}", String::from_utf8_lossy(&run.stderr));
    let cache = marnet::features::FeatureCache::open(&out).unwrap();
    assert_eq!(cache.train.meta.ids, ["rgb.png", "gray.png", "gray-alpha.png", "rgb16.png", "rgba.png"]);
    assert_eq!(cache.test.as_ref().unwrap().meta.ids, ["cmyk.jpg"]);
    let skipped: Vec<marnet::extract::Skipped> =
        std::fs::read_to_string(out.join("skipped.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let ids: Vec<&str> = skipped.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["truncated.png", "missing.png", "not-an-image.jpg", "empty.png"]);
    for s in &skipped {
        assert!(s.error.contains(&s.id) && s.origin.contains("manifest.jsonl:"), "{s:?}");
        eprintln!("{}: {}", s.id, s.error);
    }
    let settings: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("extract.json")).unwrap()).unwrap();
    assert_eq!(settings["settings"]["skip_bad"], true);
    assert!(!marnet::extract::partial_dir(&out).exists(), "progress folder removed when done");
}

/// Stops an emoji-food extraction (with `extra` flags) with `signal` once a block is saved, reruns
/// the command, and compares the cache byte for byte with an uninterrupted run's.
fn interrupt_extraction(signal: &str, extra: &[&str]) -> Option<std::process::Output> {
    let assets = asset("npm/emoji-datasource")?.parent()?.parent()?.display().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let args = |out: &Path| -> Vec<String> {
        let out = out.display().to_string();
        ["extract", "--assets", &assets, "--out", &out, "--limit", "40", "--batch", "2"].iter().chain(extra).map(|s| s.to_string()).collect()
    };
    let straight = tmp.path().join("straight");
    ok(&args(&straight).iter().map(String::as_str).collect::<Vec<_>>());

    let stopped = tmp.path().join("stopped");
    let child = Command::new(env!("CARGO_BIN_EXE_marnet")).arg("--quiet").args(args(&stopped)).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let partial = marnet::extract::partial_dir(&stopped);
    let t0 = std::time::Instant::now();
    while !partial.join("train-00000.safetensors").exists() && t0.elapsed().as_secs() < 120 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(Command::new("kill").args([signal, &child.id().to_string()]).status().unwrap().success());
    let out = child.wait_with_output().unwrap();
    assert!(!stopped.join("train.safetensors").exists(), "the run finished before it could be stopped");
    assert!(partial.join("train-00000.safetensors").exists());
    let err = marnet::features::FeatureCache::open(&stopped).unwrap_err().to_string();
    assert!(err.contains("an extraction into it is running or was interrupted") && err.contains("run the same `marnet extract` again"), "{err}");
    ok(&args(&stopped).iter().map(String::as_str).collect::<Vec<_>>());
    for split in ["train", "val", "test"] {
        let file = format!("{split}.safetensors");
        assert!(std::fs::read(straight.join(&file)).unwrap() == std::fs::read(stopped.join(&file)).unwrap(), "{file} differs");
    }
    Some(out)
}

#[test]
fn killed_extraction_resumes_to_an_identical_cache() {
    let Some(_) = interrupt_extraction("-KILL", &[]) else { return };
}

/// With `--tokens` the progress blocks carry the visual tokens: the resumed cache, tokens and
/// all, is the uninterrupted one.
#[test]
fn killed_token_extraction_resumes_to_an_identical_cache() {
    let Some(_) = interrupt_extraction("-KILL", &["--tokens"]) else { return };
}

#[test]
fn ctrl_c_extraction_saves_and_resumes_to_an_identical_cache() {
    let Some(out) = interrupt_extraction("-INT", &[]) else { return };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("run the same command again"), "{stderr}");
}

/// With `reuse_current` (as `demo` extracts), a finished cache made by this build from the same
/// files is returned as it is, and extracted again once an image file changes.
#[test]
fn a_reused_cache_is_extracted_again_when_an_image_changes() {
    let Some(lite0) = asset("efficientnet-lite0") else { return };
    let assets = lite0.parent().unwrap();
    let dev = candle_core::Device::Cpu;
    let tmp = tempfile::tempdir().unwrap();
    let coffee = image::open(Path::new(FIXTURES).join("coffee.png")).unwrap();
    coffee.resize(64, 48, image::imageops::FilterType::Triangle).save(tmp.path().join("a.png")).unwrap();
    coffee.resize(40, 40, image::imageops::FilterType::Triangle).save(tmp.path().join("b.png")).unwrap();
    let line = |img: &str, label: &str| format!(r#"{{"image": "{img}", "label": "{label}", "text": "milk, coffee", "split": "train"}}"#);
    let manifest = tmp.path().join("manifest.jsonl");
    std::fs::write(&manifest, [line("a.png", "coffee"), line("b.png", "latte")].join("\n")).unwrap();
    let image_enc = marnet::encoders::load_image_encoder("efficientnet-lite0", assets, &dev).unwrap();
    let text_enc = marnet::encoders::text::TextEncoder::load(&assets.join("minilm"), &dev).unwrap();
    let opts = marnet::extract::ExtractOptions {
        batch: 2,
        limit: None,
        skip_bad: false,
        tokens: false,
        progress: false,
        settings: serde_json::json!({}),
        existing: marnet::extract::Existing::ReuseOrReplace,
        whole: vec![],
    };
    let out = tmp.path().join("cache");
    let extract = || {
        let ds = marnet::data::open("manifest", Some(&manifest), assets, "apple", 0.0, 0).unwrap();
        marnet::extract::extract(&ds, image_enc.as_ref(), &text_enc, &opts, &out, &dev).unwrap().0.remove(0).1
    };
    let mtime = || std::fs::metadata(out.join("train.safetensors")).unwrap().modified().unwrap();
    let first = extract();
    let t1 = mtime();
    assert_eq!(extract(), first);
    assert_eq!(mtime(), t1, "the current cache is reused, not written again");
    coffee.resize(32, 32, image::imageops::FilterType::Triangle).save(tmp.path().join("b.png")).unwrap();
    let changed = extract();
    assert_ne!(mtime(), t1, "a changed image file makes the cache stale");
    assert_ne!(changed.visual, first.visual);
}

/// `extract --text DIR` (tiny fixtures, no fetched assets): the cache's text features come from
/// that folder, `extract.json` records which, and a cache made with one text encoder is not
/// reused for another.
#[test]
fn a_cache_records_its_text_encoder_and_is_not_reused_for_another() {
    let tmp = tempfile::tempdir().unwrap();
    let coffee = image::open(Path::new(FIXTURES).join("coffee.png")).unwrap();
    coffee.resize(40, 32, image::imageops::FilterType::Triangle).save(tmp.path().join("a.png")).unwrap();
    coffee.resize(32, 32, image::imageops::FilterType::Triangle).save(tmp.path().join("b.png")).unwrap();
    let line = |img: &str, label: &str, text: &str| format!(r#"{{"image": "{img}", "label": "{label}", "text": "{text}", "split": "train"}}"#);
    let manifest = tmp.path().join("manifest.jsonl");
    std::fs::write(&manifest, [line("a.png", "coffee", "Milk, coffee and bread!"), line("b.png", "latte", "the man is eating food")].join("\n")).unwrap();
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let (visual, out) = (format!("vit:{fixtures}/vit-tiny"), tmp.path().join("cache"));
    let args = |text: &str| -> Vec<String> {
        let text = format!("{fixtures}/{text}");
        let (tmp, manifest, out) = (tmp.path().display().to_string(), manifest.display().to_string(), out.display().to_string());
        ["extract", "--assets", &tmp, "--dataset", "manifest", "--root", &manifest, "--visual", &visual, "--text", &text, "--out", &out, "--tokens"]
            .map(String::from)
            .to_vec()
    };
    let summary = ok(&args("text-st-legacy").iter().map(String::as_str).collect::<Vec<_>>());
    assert!(summary.contains("text 32-d"), "{summary}");
    let cache = marnet::features::FeatureCache::open(&out).unwrap();
    assert_eq!((cache.train.ds, cache.train.meta.text_encoder.as_str()), (32, "text-st-legacy"));
    // Max and mean pooling concatenated: 32-d pooled rows of 16-d token states.
    assert_eq!(cache.train.text_tokens.as_ref().map(|t| t.dim), Some(16));
    let record: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("extract.json")).unwrap()).unwrap();
    let t = &record["text_encoder"];
    assert_eq!(
        (t["name"].as_str(), t["pooling"].as_str(), t["normalize"].as_bool(), t["max_length"].as_u64()),
        (Some("text-st-legacy"), Some("max+mean"), Some(true), Some(9))
    );

    // As `demo` extracts (reusing a current cache): the same text encoder reuses it, another
    // extracts again.
    let dev = candle_core::Device::Cpu;
    let settings =
        |text: &str| -> marnet::extract::ExtractSettings { marnet::options::parse(&args(text)[1..].iter().map(String::as_str).collect::<Vec<_>>()).unwrap() };
    let mtime = || std::fs::metadata(out.join("train.safetensors")).unwrap().modified().unwrap();
    let t1 = mtime();
    let reuse = marnet::extract::Existing::ReuseOrReplace;
    assert_eq!(marnet::extract::run(&settings("text-st-legacy"), false, reuse, &dev).unwrap().into_cache().unwrap().train, cache.train);
    assert_eq!(mtime(), t1, "the same text encoder: reused");
    let other = marnet::extract::run(&settings("text-plain"), false, reuse, &dev).unwrap().into_cache().unwrap();
    assert_eq!((other.train.ds, other.train.meta.text_encoder.as_str()), (16, "text-plain"));
    assert_ne!(mtime(), t1, "another text encoder: extracted again");
    assert_eq!(other.train.visual, cache.train.visual);
}
