//! Dataset readers on small fixture trees in each published layout (the emoji sets: emoji.rs).

use marnet::data::food::{ingredient101, vireo172};
use marnet::data::manifest::manifest;
use std::path::Path;

#[path = "../common/mod.rs"]
mod common;
mod emoji;
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
        r#"{"image": "ok.png", "split": "train"}"#,
        r#"{"image": "ok2.png", "label": "soup", "text": "t", "split": "Train"}"#,
        r#"{"image": "h.png", "label": "soup", "text": ["blue", 5], "split": "val"}"#,
    ];
    std::fs::write(&p, lines.join("\n")).unwrap();
    let err = format!("{:#}", manifest(&p, true).unwrap_err());
    let f = p.display().to_string();
    for want in [
        format!("{f}:2: unknown field `note`"),
        format!("{f}:3: `label` must be a string, not a number"),
        format!("{f}:4: split `training` is not train, val or test: write `train`"),
        format!("{f}:4: image `c.png` not found"),
        format!("{f}:5: `text` is empty"),
        format!("{f}:6: training rows need `text`"),
        format!("{f}:7: class `cake` has no training rows (line 7)"),
        format!("{f}:7: image `f.png` not found at {}", tmp.path().join("f.png").display()),
        format!("{f}:8: image `./ok.png` is in train (line 1) and in test"),
        format!("{f}:9: image `ok2.png` is listed twice (lines 2 and 9)"),
        format!("{f}:10: image `a.png` at {} is an empty file (0 bytes)", tmp.path().join("a.png").display()),
        format!("{f}:1: `group` is set on some lines but not on lines 1, 2, 5, 6, 7 and 3 more"),
        format!("{f}:11: not a JSON object: EOF while parsing a value at column"),
        format!("{f}:12: expected a JSON object"),
        // Lines with problems of their own are still checked for images listed twice.
        format!("{f}:13: `label` is missing; give the class name"),
        format!("{f}:13: image `ok.png` is listed twice (lines 1 and 13)"),
        format!("{f}:14: split `Train` is not train, val or test: write `train`"),
        format!("{f}:14: image `ok2.png` is listed twice (lines 2 and 14)"),
        format!("{f}:15: `text` must be a string or a list of strings; its item 2 is a number: quote it"),
    ] {
        assert!(err.contains(&want), "expected `{want}` in:\n{err}");
    }
    assert!(!err.contains("at line 1 column"), "one line number per error: {err}");
    // Every line that names an image has it checked and compared with the others' (lines 3 to
    // 6 and 15: their images are missing too; lines 13 and 14: listed twice); the other checks take
    // rows with a usable image, label and split.
    assert_eq!(err.matches(&format!("\n  {f}:")).count(), 24, "{err}");
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
    // A CSV file is named as such once; Python's dict quoting gets one hint beside its lines.
    std::fs::write(&p, "image,label,text,split\na.png,x,\"t, u\",train\nb.png,y,t,train\n").unwrap();
    let err = format!("{:#}", manifest(&p, false).unwrap_err());
    assert!(err.contains("this looks like CSV or TSV (line 1: `image,label,text,split`)") && err.matches(&f).count() == 1, "{err}");
    std::fs::write(&p, "{'image': 'a.png', 'label': 'x', 'text': 't', 'split': 'train'}\n").unwrap();
    let err = format!("{:#}", manifest(&p, false).unwrap_err());
    assert!(err.contains(&format!("{f}:1: strings quoted with ' (as Python prints a dict); JSON takes double quotes")), "{err}");
    assert!(!err.contains("not a JSON object"), "one problem, not also one a line: {err}");

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
        format!("{f}:2: labels `apple` (line 1) and `Apple` (line 2) differ only in case, spaces or Unicode form"),
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
    std::fs::write(&p, [line(r"phone\\a.png", "a", "train"), line("pear.png", "b", "train")].join("\n")).unwrap();
    let err = format!("{:#}", manifest(&p, true).unwrap_err());
    assert!(err.contains(&format!("{f}: image paths with \\ (line 1): write them with /")), "{err}");

    // A comment, commas where JSON has none, one image under two labels.
    let lines = [
        "# my dishes".to_string(),
        r#"{"image": "apple.png", "label": "apple", "text": "t", "split": "train",}"#.to_string(),
        line("pear.png", "pear", "train") + ",",
        r#"{"image": "apple.png", "label": "apple", "text": "t", "split": "train","#.to_string(),
        line("apple.png", "apple", "train"),
        line("apple.png", "pear", "train"),
    ];
    std::fs::write(&p, lines.join("\n")).unwrap();
    let err = format!("{:#}", manifest(&p, true).unwrap_err());
    for want in [
        format!("{f}:1: JSON Lines has no comments: delete this line"),
        format!("{f}:2: not a JSON object: trailing comma at column 72: JSON allows no comma before the closing `}}`"),
        format!("{f}:3: not a JSON object: trailing characters at column 70: JSON Lines puts no comma after a line's closing `}}`"),
        format!("{f}:4: not a JSON object: EOF while parsing a value at column 71: the line ends with a comma where its closing `}}` belongs"),
        format!("{f}:6: image `apple.png` is listed twice with two labels, `apple` and `pear` (lines 5 and 6)"),
    ] {
        assert!(err.contains(&want), "expected `{want}` in:\n{err}");
    }
    // A comma hint only where dropping the comma mends the line; a path is no comment.
    std::fs::write(&p, ["{\"image\": \"apple.png\" \"label\": \"apple\",}", "/data/apple.png", &line("pear.png", "pear", "train")].join("\n")).unwrap();
    let err = format!("{:#}", manifest(&p, true).unwrap_err());
    assert!(err.contains(&format!("{f}:1: not a JSON object: expected `,` or `}}` at column 23\n")), "{err}");
    assert!(err.contains(&format!("{f}:2: not a JSON object: expected value at column 1")) && !err.contains("comments"), "{err}");
    // Pretty-printed JSON: one message for the file, not one a line.
    std::fs::write(&p, "{\n  \"image\": \"apple.png\",\n  \"label\": \"apple\"\n}\n").unwrap();
    let err = format!("{:#}", manifest(&p, true).unwrap_err());
    assert!(err.contains("this looks like pretty-printed JSON (line 1 is `{` alone)") && err.matches(&f).count() == 1, "{err}");
}

/// Images cut short (an interrupted copy) or empty, and one label typed and one taken from a
/// macOS folder name (the same letters in another Unicode form): all found before any work.
#[test]
fn manifest_finds_cut_images_and_labels_in_two_unicode_forms() {
    let tmp = tempfile::tempdir().unwrap();
    let (p, dir) = (tmp.path().join("m.jsonl"), tmp.path());
    let f = p.display().to_string();
    let photo = image::RgbImage::from_fn(96, 64, |x, y| image::Rgb([(x * 7 + y * y) as u8, ((y * 3) ^ (x * 5)) as u8, (x * y) as u8]));
    for name in ["a.jpg", "b.jpg", "c.png", "d.jpg"] {
        photo.save(dir.join(name)).unwrap();
    }
    for name in ["b.jpg", "c.png"] {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        std::fs::write(dir.join(name), &bytes[..bytes.len() / 2]).unwrap();
    }
    std::fs::write(dir.join("e.jpg"), b"").unwrap();
    let line = |img: &str, label: &str| format!(r#"{{"image": "{img}", "label": "{label}", "text": "t", "split": "train"}}"#);
    let lines = [line("a.jpg", "ph\u{1edf}"), line("b.jpg", "pho\u{31b}\u{309}"), line("c.png", "x"), line("d.jpg", "x"), line("e.jpg", "x")];
    std::fs::write(&p, lines.join("\n")).unwrap();
    let err = format!("{:#}", manifest(&p, true).unwrap_err());
    for want in [
        format!(
            "{f}:2: labels `ph\u{1edf}` (line 1, letters with their accents) and `pho\u{31b}\u{309}` (line 2, letters and accents apart) differ only in case, spaces or Unicode form"
        ),
        format!("{f}:2: image `b.jpg` at {} is truncated", dir.join("b.jpg").display()),
        format!("{f}:3: image `c.png` at {} is truncated", dir.join("c.png").display()),
        format!("{f}:5: image `e.jpg` at {} is an empty file (0 bytes)", dir.join("e.jpg").display()),
    ] {
        assert!(err.contains(&want), "expected `{want}` in:\n{err}");
    }
    assert!(!err.contains(":1: image") && !err.contains(":4:"), "whole images are not problems: {err}");
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
