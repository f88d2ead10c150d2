//! Dataset readers on small fixture trees in each published layout.

use marnet::data::emoji::{Selection, emoji, emoji_all, emoji_food};
use marnet::data::food::{ingredient101, vireo172};
use marnet::data::manifest::manifest;
use marnet::data::{Dataset, Sample};
use std::collections::BTreeSet;
use std::path::Path;

mod common;
use common::write;

fn vireo_tree(root: &Path, tr: &str) {
    write(root, "SplitAndIngreLabel/FoodList.txt", "braised pork\nmapo tofu\nfried rice\n");
    write(root, "SplitAndIngreLabel/IngredientList.txt", "pork\ntofu\nrice\negg\n");
    write(root, "SplitAndIngreLabel/IngreLabel.txt", "/1/a.jpg 1 -1 -1 -1\n/2/b.jpg -1 1 -1 -1\n/3/c.jpg -1 -1 1 1\n/3/d.jpg -1 -1 1 -1\n");
    write(root, "SplitAndIngreLabel/TR.txt", tr);
    write(root, "SplitAndIngreLabel/VAL.txt", "/3/c.jpg\n");
    write(root, "SplitAndIngreLabel/TE.txt", "/3/d.jpg\n");
}

#[test]
fn vireo172_labels_ingredients_and_splits() {
    let tmp = tempfile::tempdir().unwrap();
    vireo_tree(tmp.path(), "/1/a.jpg\n/2/b.jpg\n");
    let ds = vireo172(tmp.path()).unwrap();
    assert_eq!(ds.classes, ["braised pork", "mapo tofu", "fried rice"]);
    assert_eq!((ds.train.len(), ds.val.len(), ds.test.len()), (2, 1, 1));
    assert_eq!(ds.train[1].label, 1);
    assert_eq!(ds.train[1].text.as_deref(), Some("tofu"));
    assert_eq!(ds.val[0].text.as_deref(), Some("rice, egg"));
    assert_eq!(ds.test[0].image, tmp.path().join("ready_chinese_food/3/d.jpg"));
}

#[test]
fn vireo172_malformed_lines_name_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    vireo_tree(tmp.path(), "/1/a.jpg\n/9/x.jpg\n");
    let err = format!("{:#}", vireo172(tmp.path()).unwrap_err());
    assert!(err.contains("TR.txt:2") && err.contains("class number"), "{err}");
    write(tmp.path(), "SplitAndIngreLabel/TR.txt", "/1/a.jpg\n");
    write(tmp.path(), "SplitAndIngreLabel/IngreLabel.txt", "/1/a.jpg 1 -1 -1 -1\n/2/b.jpg 1 -1\n");
    let err = format!("{:#}", vireo172(tmp.path()).unwrap_err());
    assert!(err.contains("IngreLabel.txt:2") && err.contains("2 ingredient flags, expected 4"), "{err}");
}

fn ingredient_tree(root: &Path, labels: &str) {
    write(root, "annotations/classes.txt", "apple_pie\nbibimbap\n");
    write(root, "annotations/ingredients.txt", "apple,flour, sugar\nrice,egg,beef\n");
    write(root, "annotations/train_images.txt", "apple_pie/1005649\nbibimbap/12\n");
    write(root, "annotations/train_labels.txt", labels);
    write(root, "annotations/val_images.txt", "bibimbap/13\n");
    write(root, "annotations/val_labels.txt", "1\n");
    write(root, "annotations/test_images.txt", "apple_pie/7\n");
    write(root, "annotations/test_labels.txt", "0\n");
}

#[test]
fn ingredient101_labels_and_class_level_text() {
    let tmp = tempfile::tempdir().unwrap();
    ingredient_tree(tmp.path(), "0\n1\n");
    let ds = ingredient101(tmp.path()).unwrap();
    assert_eq!(ds.classes, ["apple_pie", "bibimbap"]);
    assert_eq!(ds.train[0].text.as_deref(), Some("apple, flour, sugar"));
    assert_eq!(ds.train[1].label, 1);
    assert_eq!(ds.train[1].image, tmp.path().join("images/bibimbap/12.jpg"));
    assert_eq!((ds.val.len(), ds.test[0].label), (1, 0));
    ingredient_tree(tmp.path(), "0\nseven\n");
    let err = format!("{:#}", ingredient101(tmp.path()).unwrap_err());
    assert!(err.contains("train_labels.txt:2") && err.contains("`seven`"), "{err}");
}

#[test]
fn manifest_reads_rows_texts_and_groups() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("m.jsonl");
    std::fs::write(
        &p,
        concat!(
            "\u{feff}", // a byte order mark, as some editors save
            r#"{"image": "x/1.jpg", "label": "soup", "text": ["water", "salt"], "split": "train", "group": "phone"}"#,
            "\n",
            r#"{"image": "x/2.jpg", "label": "cake", "text": "flour and eggs", "split": "train", "group": "dslr"}"#,
            "\n\n",
            r#"{"image": "x/3.jpg", "label": "soup", "split": "test", "group": "phone"}"#,
            "\n",
        ),
    )
    .unwrap();
    let ds = manifest(&p, false).unwrap();
    assert_eq!(ds.classes, ["cake", "soup"]);
    assert_eq!(ds.train[0].text.as_deref(), Some("water, salt"));
    assert_eq!((ds.train[0].label, ds.train[1].label, ds.test[0].label), (1, 0, 1));
    assert_eq!(ds.test[0].image, tmp.path().join("x/3.jpg"));
    assert_eq!((ds.train[1].group.as_deref(), ds.test[0].origin.as_str()), (Some("dslr"), format!("{}:4", p.display()).as_str()));
    // Test rows only (a new test set for `eval --cache`): no class needs training rows.
    std::fs::write(&p, r#"{"image": "x/3.jpg", "label": "soup", "split": "test"}"#).unwrap();
    assert_eq!(manifest(&p, false).unwrap().test.len(), 1);
}

/// Every problem of a manifest in one error, each with its line and what to do.
#[test]
fn manifest_problems_are_listed_together_with_their_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("m.jsonl");
    write(tmp.path(), "a.png", "");
    image::RgbImage::new(4, 4).save(tmp.path().join("ok.png")).unwrap();
    image::RgbImage::new(4, 4).save(tmp.path().join("ok2.png")).unwrap();
    let lines = [
        r#"{"image": "ok.png", "label": "soup", "text": "t", "split": "train"}"#,
        r#"{"image": "ok2.png", "label": "soup", "text": "t", "split": "train", "note": 1}"#,
        r#"{"image": "b.png", "label": 3, "text": "t", "split": "train"}"#,
        r#"{"image": "c.png", "label": "soup", "text": "t", "split": "training"}"#,
        r#"{"image": "d.png", "label": "soup", "text": " ", "split": "train"}"#,
        r#"{"image": "e.png", "label": "soup", "split": "train"}"#,
        r#"{"image": "f.png", "label": "cake", "split": "test"}"#,
        r#"{"image": "./ok.png", "label": "soup", "split": "test"}"#,
        r#"{"image": "ok2.png", "label": "soup", "text": "t", "split": "train"}"#,
        r#"{"image": "a.png", "label": "soup", "text": "t", "split": "train", "group": "x"}"#,
        r#"{"image": "g.png", "label": "soup", "text": "t", "split": "train", "#,
        r#"["not", "an", "object"]"#,
    ];
    std::fs::write(&p, lines.join("\n")).unwrap();
    let err = format!("{:#}", manifest(&p, true).unwrap_err());
    let f = p.display().to_string();
    for want in [
        format!("{f}:2: unknown field `note`"),
        format!("{f}:3: `label` must be a string, not a number"),
        format!("{f}:4: split `training` is not train, val or test"),
        format!("{f}:5: `text` is empty"),
        format!("{f}:6: training rows need `text`"),
        format!("{f}:7: class `cake` has no training rows (line 7)"),
        format!("{f}:7: image `f.png` not found at {}", tmp.path().join("f.png").display()),
        format!("{f}:8: image `./ok.png` is in train (line 1) and in test"),
        format!("{f}:9: image `ok2.png` is listed twice (lines 2 and 9)"),
        format!("{f}:10: image `a.png` at {} cannot be read as an image", tmp.path().join("a.png").display()),
        format!("{f}:1: `group` is set on some lines but not on lines 1, 2, 5, 6, 7 and 2 more"),
        format!("{f}:11: not a JSON object: EOF while parsing a value at column"),
        format!("{f}:12: expected a JSON object"),
    ] {
        assert!(err.contains(&want), "expected `{want}` in:\n{err}");
    }
    assert!(!err.contains("at line 1 column"), "one line number per error: {err}");
    // Rows with a usable image, label and split get every other check (lines 5 and 6: their
    // images are missing too); line 3 (no label) and line 4 (no split) get no further ones.
    assert_eq!(err.matches(&format!("\n  {f}:")).count(), 15, "{err}");
    // With --skip-bad the images are not checked (unreadable ones are left out later).
    let err = format!("{:#}", manifest(&p, false).unwrap_err());
    assert!(!err.contains("not found") && !err.contains("cannot be read"), "{err}");
}

/// Mistakes a new user made: a JSON array, labels that differ in case or spaces, the same photo
/// under two names in train and test, a text file named as an image, an empty group, every path wrong.
#[test]
fn manifest_catches_the_mistakes_people_make() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("m.jsonl");
    let f = p.display().to_string();
    let line = |img: &str, label: &str, split: &str| format!(r#"{{"image": "{img}", "label": "{label}", "text": "t", "split": "{split}"}}"#);
    std::fs::write(&p, format!("[\n{},\n{}\n]\n", line("a.png", "x", "train"), line("b.png", "y", "train"))).unwrap();
    let err = format!("{:#}", manifest(&p, false).unwrap_err());
    assert!(err.contains("this is one JSON array; a manifest is JSON Lines") && err.matches(&f).count() == 1, "one message, not one a line: {err}");

    image::RgbImage::from_pixel(5, 4, image::Rgb([9, 9, 9])).save(tmp.path().join("apple.png")).unwrap();
    image::RgbImage::from_pixel(4, 4, image::Rgb([1, 2, 3])).save(tmp.path().join("pear.png")).unwrap();
    std::fs::copy(tmp.path().join("apple.png"), tmp.path().join("copy-of-apple.png")).unwrap();
    std::fs::write(tmp.path().join("notes.txt"), "not an image").unwrap();
    let lines = [
        line("apple.png", "apple", "train"),
        line("pear.png", "Apple", "train"),
        line("copy-of-apple.png", "apple", "test"),
        line("notes.txt", " pear", "train"),
        r#"{"image": "pear.png", "label": "pear", "text": "t", "split": "val", "group": ""}"#.to_string(),
    ];
    std::fs::write(&p, lines.join("\n")).unwrap();
    let err = format!("{:#}", manifest(&p, true).unwrap_err());
    for want in [
        format!("{f}:2: labels `apple` (line 1) and `Apple` (line 2) differ only in case or spaces"),
        format!("{f}:3: image `copy-of-apple.png` (test) has the same bytes as `apple.png` (train, line 1)"),
        format!("{f}:4: label ` pear` has spaces at its ends"),
        format!("{f}:4: image `notes.txt` at {} is not a JPEG, PNG or WebP image (judged by its contents)", tmp.path().join("notes.txt").display()),
        format!("{f}:5: `group` is empty"),
        format!("{f}:1: `group` is set on some lines but not on lines 1, 2, 3, 4"),
    ] {
        assert!(err.contains(&want), "expected `{want}` in:\n{err}");
    }
    assert_eq!(err.matches("`group`").count(), 2, "an empty group is one problem, not also a missing one: {err}");

    // A key given twice; the same photo under two names in two groups of one split.
    std::fs::create_dir_all(tmp.path().join("phone")).unwrap();
    std::fs::create_dir_all(tmp.path().join("camera")).unwrap();
    std::fs::copy(tmp.path().join("apple.png"), tmp.path().join("phone/a.png")).unwrap();
    std::fs::copy(tmp.path().join("apple.png"), tmp.path().join("camera/b.png")).unwrap();
    let lines = [
        r#"{"image": "phone/a.png", "label": "apple", "label": "pear", "text": "t", "split": "train"}"#.to_string(),
        line("camera/b.png", "apple", "train"),
        line("pear.png", "pear", "train"),
    ];
    std::fs::write(&p, lines.join("\n")).unwrap();
    let err = format!("{:#}", manifest(&p, true).unwrap_err());
    for want in [
        format!("{f}:1: `label` is given more than once (JSON keeps the last); keep one"),
        format!("{f}:2: image `camera/b.png` (group `camera`) has the same bytes as `phone/a.png` (group `phone`, line 1): with --leave-one-out"),
    ] {
        assert!(err.contains(&want), "expected `{want}` in:\n{err}");
    }

    std::fs::write(&p, [line("x/a.png", "a", "train"), line("x/b.png", "b", "train")].join("\n")).unwrap();
    let err = format!("{:#}", manifest(&p, true).unwrap_err());
    assert!(err.contains(&format!("none of the 2 images was found: the paths are relative to the manifest's folder, {}", tmp.path().display())), "{err}");
}

/// A class seen only outside train cannot be learned; a single class is no classifier.
#[test]
fn manifest_classes_need_training_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("m.jsonl");
    std::fs::write(
        &p,
        concat!(r#"{"image": "a.jpg", "label": "soup", "text": "t", "split": "train"}"#, "\n", r#"{"image": "b.jpg", "label": "cake", "split": "test"}"#, "\n"),
    )
    .unwrap();
    let err = format!("{:#}", marnet::data::open("manifest", Some(&p), tmp.path(), "apple", 0.2, 0).unwrap_err());
    assert!(err.contains("m.jsonl:2: class `cake` has no training rows") && !err.contains("every row has label"), "{err}");
    std::fs::write(&p, r#"{"image": "a.jpg", "label": "soup", "text": "t", "split": "train"}"#).unwrap();
    let err = format!("{:#}", manifest(&p, false).unwrap_err());
    assert!(err.contains("every row has label `soup`: a classifier needs at least two classes"), "{err}");
}

#[test]
fn shards_partition_in_order_and_merge_back() {
    use marnet::data::{Dataset, Sample, parse_shard};
    use marnet::features::FeatureCache;
    let sample = |i: u32| Sample { id: format!("s{i}"), image: format!("{i}.png").into(), label: i % 3, text: None, group: None, origin: String::new() };
    let ds = Dataset { name: "d".into(), classes: vec![], train: (0..10).map(sample).collect(), val: vec![], test: (0..3).map(sample).collect() };
    let shards: Vec<Dataset> = (0..3).map(|i| ds.shard(i, 3)).collect();
    let train: Vec<Sample> = shards.iter().flat_map(|s| s.train.clone()).collect();
    let test: Vec<Sample> = shards.iter().flat_map(|s| s.test.clone()).collect();
    assert_eq!((train, test), (ds.train.clone(), ds.test.clone()));
    assert_eq!(parse_shard("1/4").unwrap(), (1, 4));
    assert!(parse_shard("4/4").is_err() && parse_shard("x").is_err());

    // Caches of two row slices merge back into the original cache.
    let tmp = tempfile::tempdir().unwrap();
    let cfg = common::synth_config("--classes 3 --dv 4 --ds 5 --n-train 9 --n-val 0 --n-test 4 --text-rank 2 --vis-noise 1.0 --bg-scale 1.0 --n-bg 2 --seed 1");
    let full = marnet::synth::write(&cfg, &tmp.path().join("full")).unwrap();
    let half = |rows: std::ops::Range<usize>, n: usize, dir: &str| {
        let c = FeatureCache {
            dir: tmp.path().join(dir),
            train: full.train.subset(&(rows.start * 9 / n..rows.end * 9 / n).collect::<Vec<_>>()),
            val: None,
            test: Some(full.test.as_ref().unwrap().subset(&(rows.start * 4 / n..rows.end * 4 / n).collect::<Vec<_>>())),
            fold: None,
        };
        c.write(&tmp.path().join(dir)).unwrap();
        tmp.path().join(dir)
    };
    let parts = [half(0..1, 2, "a"), half(1..2, 2, "b")];
    let merged = FeatureCache::merge_shards(&parts, &tmp.path().join("merged")).unwrap();
    assert_eq!(merged.train, full.train);
    assert_eq!(merged.test, full.test);
}

/// A fake emoji tree under `root/npm`: hot dog (Food & Drink), grinning face, waving hand (with
/// two skin tones: 1F3FB drawn by all vendors, 1F3FC by Google and Apple only), two balls that
/// share a CLDR label, and three emoji that must be left out: a flag, a skin-tone component and
/// an umbrella Apple does not draw.
fn emoji_tree(root: &Path) {
    let all = r#""has_img_google": true, "has_img_twitter": true, "has_img_apple": true, "has_img_facebook": true"#;
    let no_apple = r#""has_img_google": true, "has_img_twitter": true, "has_img_apple": false, "has_img_facebook": true"#;
    let entry = |name: &str, unified: &str, short: &str, category: &str, flags: &str, extra: &str| {
        let image = unified.to_lowercase();
        format!(r#"{{"name": "{name}", "unified": "{unified}", "image": "{image}.png", "short_names": ["{short}"], "category": "{category}", {flags}{extra}}}"#)
    };
    let tones = format!(
        r#", "skin_variations": {{"1F3FC": {{"unified": "1F44B-1F3FC", "image": "1f44b-1f3fc.png", "has_img_google": true, "has_img_twitter": false, "has_img_apple": true, "has_img_facebook": false}}, "1F3FB": {{"unified": "1F44B-1F3FB", "image": "1f44b-1f3fb.png", {all}}}}}"#
    );
    let entries = [
        entry("HOT DOG", "1F32D", "hotdog", "Food & Drink", all, ""),
        entry("GRINNING FACE", "1F600", "grinning", "Smileys & Emotion", all, ""),
        entry("WAVING HAND SIGN", "1F44B", "wave", "People & Body", all, &tones),
        entry("REGIONAL INDICATOR SYMBOL LETTERS FR", "1F1EB-1F1F7", "flag-fr", "Flags", all, ""),
        entry("EMOJI MODIFIER FITZPATRICK TYPE-1-2", "1F3FB", "skin-tone-2", "Component", all, ""),
        entry("UMBRELLA", "2602-FE0F", "umbrella", "Objects", no_apple, ""),
        entry("SOCCER BALL", "26BD", "soccer", "Activities", all, ""),
        entry("BASKETBALL AND HOOP", "1F3C0", "basketball", "Activities", all, ""),
    ];
    write(root, "npm/emoji-datasource/emoji.json", &format!("[{}]", entries.join(",\n")));
    write(
        root,
        "npm/emojilib/dist/emoji-en-US.json",
        r#"{"🌭": ["hot_dog", "food", "sausage"], "😀": ["grinning_face", "face", "smile", "happy"], "👋": ["wave", "hands", "goodbye"], "🇫🇷": ["france", "flag"], "☂️": ["rain"]}"#,
    );
    write(
        root,
        "npm/emojibase-data/en/data.json",
        r#"[{"hexcode": "1F32D", "label": "hot dog", "tags": ["frankfurter", "hotdog", "sausage"]},
            {"hexcode": "1F600", "label": "grinning face", "tags": ["face", "grin"]},
            {"hexcode": "1F44B", "label": "waving hand", "tags": ["hand", "wave", "waving"]},
            {"hexcode": "1F1EB-1F1F7", "label": "flag: France", "tags": ["flag"]},
            {"hexcode": "1F3FB", "label": "light skin tone", "tags": ["skin tone"]},
            {"hexcode": "2602", "label": "umbrella", "tags": ["rain"]},
            {"hexcode": "26BD", "label": "ball", "tags": ["football"]},
            {"hexcode": "1F3C0", "label": "ball", "tags": ["hoop"]}]"#,
    );
    let files = ["1f32d", "1f600", "1f44b", "1f44b-1f3fb", "1f1eb-1f1f7", "1f3fb", "26bd", "1f3c0"];
    for vendor in ["google", "twitter", "apple", "facebook"] {
        let mut files: Vec<&str> = files.to_vec();
        if vendor != "apple" {
            files.push("2602-fe0f");
        }
        if vendor == "google" || vendor == "apple" {
            files.push("1f44b-1f3fc");
        }
        for f in files {
            write(root, &format!("npm/emoji-datasource-{vendor}/img/{vendor}/64/{f}.png"), "png");
        }
    }
}

fn ids(samples: &[Sample]) -> BTreeSet<String> {
    samples.iter().map(|s| s.id.clone()).collect()
}

fn vendor(s: &Sample) -> &str {
    s.id.split_once('/').unwrap().0
}

/// `{vendor}/{file}.png` for each vendor and file.
fn ids_of(vendors: &[&str], files: &[&str]) -> BTreeSet<String> {
    vendors.iter().flat_map(|v| files.iter().map(move |f| format!("{v}/{f}.png"))).collect()
}

const ALL_BASE: [&str; 5] = ["1f32d", "1f600", "1f44b", "26bd", "1f3c0"];

#[test]
fn emoji_all_classes_text_and_vendor_splits() {
    let tmp = tempfile::tempdir().unwrap();
    emoji_tree(tmp.path());
    let ds = marnet::data::open("emoji-all", None, tmp.path(), "apple", 0.2, 0).unwrap();
    assert_eq!(ds.classes, ["hot dog", "grinning face", "waving hand", "ball (26BD)", "ball (1F3C0)"]);
    let text = |label: u32| ds.train.iter().find(|s| s.label == label).unwrap().text.clone().unwrap();
    assert_eq!(text(0), "food, sausage, frankfurter");
    assert_eq!(text(1), "face, smile, happy, grin");
    assert_eq!(text(2), "hands, goodbye, hand, waving");
    assert_eq!((text(3), text(4)), ("football".to_string(), "hoop".to_string()));

    // Test: exactly the held-out vendor's images, one per class.
    assert_eq!(ids(&ds.test), ids_of(&["apple"], &ALL_BASE));
    assert_eq!(ds.test.iter().map(|s| s.label).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
    assert!(ds.test.iter().all(|s| s.image.starts_with(tmp.path().join("npm/emoji-datasource-apple"))));
    // Train and val: the other vendors' images, split without overlap; val is round(0.2 * 15)
    // images of distinct classes, and every class keeps training images.
    let trainval: BTreeSet<String> = ids(&ds.train).union(&ids(&ds.val)).cloned().collect();
    assert_eq!(trainval, ids_of(&["google", "twitter", "facebook"], &ALL_BASE));
    assert_eq!((ds.train.len(), ds.val.len()), (12, 3));
    assert!(ds.train.iter().chain(&ds.val).all(|s| vendor(s) != "apple"));
    let val_classes: BTreeSet<u32> = ds.val.iter().map(|s| s.label).collect();
    assert_eq!(val_classes.len(), 3);
    ds.check_classes().unwrap();
    // No skin-tone variant without the flag.
    assert!(ds.train.iter().chain(&ds.val).chain(&ds.test).all(|s| !s.id.contains("-1f3f")));
    assert_eq!(ds.name, "emoji-all(test=apple)");
}

#[test]
fn emoji_all_skin_tones_are_extra_training_images_of_the_training_vendors() {
    let tmp = tempfile::tempdir().unwrap();
    emoji_tree(tmp.path());
    let npm = tmp.path().join("npm");
    for test_vendor in ["apple", "google"] {
        let plain = emoji_all(&npm, test_vendor, 0.2, 0, false).unwrap();
        let opts = marnet::data::OpenOptions { test_vendor: test_vendor.into(), skin_tones: true, ..Default::default() };
        let ds = marnet::data::open_with("emoji-all", None, tmp.path(), &opts).unwrap();
        assert_eq!(ds.classes, plain.classes);
        assert_eq!((&ds.val, &ds.test), (&plain.val, &plain.test), "val and test do not change");
        assert_eq!(ds.train[..plain.train.len()], plain.train[..]);
        let extra = &ds.train[plain.train.len()..];
        let expected: BTreeSet<String> = match test_vendor {
            "apple" => [
                "google/train-only/1f44b-1f3fb.png",
                "twitter/train-only/1f44b-1f3fb.png",
                "facebook/train-only/1f44b-1f3fb.png",
                "google/train-only/1f44b-1f3fc.png",
            ],
            _ => [
                "twitter/train-only/1f44b-1f3fb.png",
                "apple/train-only/1f44b-1f3fb.png",
                "facebook/train-only/1f44b-1f3fb.png",
                "apple/train-only/1f44b-1f3fc.png",
            ],
        }
        .into_iter()
        .map(String::from)
        .collect();
        assert_eq!((ids(extra), extra.len()), (expected, 4), "test = {test_vendor}");
        let waving = plain.train.iter().find(|s| s.label == 2).unwrap();
        assert!(extra.iter().all(|s| s.label == 2 && s.text == waving.text && vendor(s) != test_vendor));
        assert!(extra.iter().all(|s| s.image.ends_with(format!("{}/64/{}", vendor(s), s.id.rsplit_once('/').unwrap().1))));
        assert_eq!(ds.name, format!("emoji-all(test={test_vendor}, skin tones)"));
    }
    // Only emoji-all has skin-tone variants to add.
    let opts = marnet::data::OpenOptions { skin_tones: true, ..Default::default() };
    let err = format!("{:#}", marnet::data::open_with("emoji-food", None, tmp.path(), &opts).unwrap_err());
    assert!(err.contains("emoji-all only"), "{err}");
}

#[test]
fn emoji_food_selection_keeps_only_food_and_drink() {
    let tmp = tempfile::tempdir().unwrap();
    emoji_tree(tmp.path());
    let npm = tmp.path().join("npm");
    let food: Dataset = emoji_food(&npm, "apple", 0.2, 0).unwrap();
    assert_eq!(food.classes, ["hot dog"]);
    assert_eq!(ids(&food.test), ids_of(&["apple"], &["1f32d"]));
    assert_eq!(food.train.len() + food.val.len(), 3);
    assert_eq!(food.name, "emoji-food(test=apple)");
    let with_tones = emoji(&npm, Selection::Food, "apple", 0.2, 0, true).unwrap();
    assert_eq!((with_tones.classes, ids(&with_tones.train)), (food.classes.clone(), ids(&food.train)));
    let opened = marnet::data::open("emoji-food", None, tmp.path(), "apple", 0.2, 0).unwrap();
    assert_eq!(opened.classes, food.classes);
}

#[test]
fn emoji_bad_input_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    emoji_tree(tmp.path());
    let npm = tmp.path().join("npm");
    std::fs::remove_file(npm.join("emoji-datasource-twitter/img/twitter/64/1f44b-1f3fb.png")).unwrap();
    let err = format!("{:#}", emoji_all(&npm, "apple", 0.2, 0, true).unwrap_err());
    assert!(err.contains("twitter/64/1f44b-1f3fb.png") && err.contains("image missing"), "{err}");
    write(tmp.path(), "npm/emoji-datasource/emoji.json", "[{\"name\": 3}]");
    let err = format!("{:#}", emoji_all(&npm, "apple", 0.2, 0, false).unwrap_err());
    assert!(err.contains("emoji.json") && err.contains("unexpected content"), "{err}");
    let err = format!("{:#}", marnet::data::open("emoji-some", None, tmp.path(), "apple", 0.2, 0).unwrap_err());
    assert!(err.contains("emoji-food, emoji-all,"), "{err}");
}

#[test]
fn emoji_all_on_the_real_assets() {
    let Some(datasource) = common::asset("npm/emoji-datasource") else { return };
    let ds = emoji_all(datasource.parent().unwrap(), "apple", 0.2, 0, false).unwrap();
    assert_eq!(ds.classes.len(), 1583);
    assert_eq!(ds.classes.iter().collect::<BTreeSet<_>>().len(), 1583, "class names are unique");
    let mut per_class = vec![0; ds.classes.len()];
    for s in ds.train.iter().chain(&ds.val).chain(&ds.test) {
        per_class[s.label as usize] += 1;
    }
    assert!(per_class.iter().all(|&n| n == 4), "4 images (one per vendor) per class");
    assert!(ds.test.iter().all(|s| s.id.starts_with("apple/")));
    ds.check_classes().unwrap();
}
