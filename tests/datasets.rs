//! Dataset readers on small fixture trees in each published layout.

use marnet::data::food::{ingredient101, manifest, vireo172};
use std::path::Path;

mod common;
use common::write;


fn vireo_tree(root: &Path, tr: &str) {
    write(root, "SplitAndIngreLabel/FoodList.txt", "braised pork\nmapo tofu\nfried rice\n");
    write(root, "SplitAndIngreLabel/IngredientList.txt", "pork\ntofu\nrice\negg\n");
    write(
        root,
        "SplitAndIngreLabel/IngreLabel.txt",
        "/1/a.jpg 1 -1 -1 -1\n/2/b.jpg -1 1 -1 -1\n/3/c.jpg -1 -1 1 1\n/3/d.jpg -1 -1 1 -1\n",
    );
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
fn manifest_reads_and_rejects_bad_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("m.jsonl");
    std::fs::write(
        &p,
        concat!(
            r#"{"image": "x/1.jpg", "label": "soup", "text": ["water", "salt"], "split": "train"}"#, "\n",
            r#"{"image": "x/2.jpg", "label": "cake", "text": "flour and eggs", "split": "train"}"#, "\n",
            r#"{"image": "x/3.jpg", "label": "soup", "split": "test"}"#, "\n",
        ),
    )
    .unwrap();
    let ds = manifest(&p).unwrap();
    assert_eq!(ds.classes, ["cake", "soup"]);
    assert_eq!(ds.train[0].text.as_deref(), Some("water, salt"));
    assert_eq!((ds.train[0].label, ds.train[1].label, ds.test[0].label), (1, 0, 1));
    assert_eq!(ds.test[0].image, tmp.path().join("x/3.jpg"));

    std::fs::write(&p, "{\"image\": \"a.jpg\", \"label\": \"soup\", \"split\": \"train\"}\n").unwrap();
    let err = format!("{:#}", manifest(&p).unwrap_err());
    assert!(err.contains("m.jsonl:1") && err.contains("needs `text`"), "{err}");
    std::fs::write(&p, "{\"image\": \"a.jpg\", \"label\": \"soup\", \"text\": \"t\", \"split\": \"train\"}\nnot json\n").unwrap();
    let err = format!("{:#}", manifest(&p).unwrap_err());
    assert!(err.contains("m.jsonl:2") && err.contains("not a manifest line"), "{err}");

    // A class seen only outside train cannot be learned: `data::open` refuses it by name.
    std::fs::write(&p, concat!(
        r#"{"image": "a.jpg", "label": "soup", "text": "t", "split": "train"}"#, "\n",
        r#"{"image": "b.jpg", "label": "cake", "split": "test"}"#, "\n",
    ))
    .unwrap();
    let err = format!("{:#}", marnet::data::open("manifest", Some(&p), tmp.path(), "apple", 0.2, 0).unwrap_err());
    assert!(err.contains("class `cake`") && err.contains("no training samples"), "{err}");
}

#[test]
fn shards_partition_in_order_and_merge_back() {
    use marnet::data::{Dataset, Sample, parse_shard};
    use marnet::features::FeatureCache;
    let sample = |i: u32| Sample { id: format!("s{i}"), image: format!("{i}.png").into(), label: i % 3, text: None };
    let ds = Dataset { name: "d".into(), classes: vec![], train: (0..10).map(sample).collect(), val: vec![], test: (0..3).map(sample).collect() };
    let shards: Vec<Dataset> = (0..3).map(|i| ds.shard(i, 3)).collect();
    let train: Vec<Sample> = shards.iter().flat_map(|s| s.train.clone()).collect();
    let test: Vec<Sample> = shards.iter().flat_map(|s| s.test.clone()).collect();
    assert_eq!((train, test), (ds.train.clone(), ds.test.clone()));
    assert_eq!(parse_shard("1/4").unwrap(), (1, 4));
    assert!(parse_shard("4/4").is_err() && parse_shard("x").is_err());

    // Caches of two row slices merge back into the original cache.
    let tmp = tempfile::tempdir().unwrap();
    let cfg = marnet::synth::SynthConfig {
        classes: 3, dv: 4, ds: 5, n_train: 9, n_val: 0, n_test: 4, text_rank: 2,
        text_jitter: 0.3, vis_noise: 1.0, bg_scale: 1.0, n_bg: 2, seed: 1,
    };
    let full = marnet::synth::write(&cfg, &tmp.path().join("full")).unwrap();
    let half = |rows: std::ops::Range<usize>, n: usize, dir: &str| {
        let c = FeatureCache {
            dir: tmp.path().join(dir),
            train: full.train.subset(&(rows.start * 9 / n..rows.end * 9 / n).collect::<Vec<_>>()),
            val: None,
            test: Some(full.test.as_ref().unwrap().subset(&(rows.start * 4 / n..rows.end * 4 / n).collect::<Vec<_>>())),
        };
        c.write(&tmp.path().join(dir)).unwrap();
        tmp.path().join(dir)
    };
    let parts = [half(0..1, 2, "a"), half(1..2, 2, "b")];
    let merged = FeatureCache::merge_shards(&parts, &tmp.path().join("merged")).unwrap();
    assert_eq!(merged.train, full.train);
    assert_eq!(merged.test, full.test);
}
