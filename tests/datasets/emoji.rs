//! The emoji datasets (`emoji-all`, `emoji-food`) on a fake tree of the npm packages' layout, and
//! on the fetched packages when they are there.

use super::common::{self, write};
use marnet::data::emoji::{Selection, emoji, emoji_all, emoji_food};
use marnet::data::{Dataset, Sample};
use std::collections::BTreeSet;
use std::path::Path;

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
