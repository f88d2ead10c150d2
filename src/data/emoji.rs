//! The built-in "emoji-food" benchmark: the Food & Drink emoji as classes, one image per vendor
//! (Google, Twitter, Apple, Facebook; 64 px), and as text the emoji's keywords (emojilib) and
//! CLDR tags (emojibase) without its own name. Training uses some vendors and testing a
//! held-out one: a real domain shift, with text only at training time.

use super::{Dataset, Sample};
use anyhow::{Context, Result, ensure};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;

pub const VENDORS: [&str; 4] = ["google", "twitter", "apple", "facebook"];
const CATEGORY: &str = "Food & Drink";

#[derive(Deserialize)]
struct EmojiEntry {
    name: Option<String>,
    unified: String,
    image: String,
    short_names: Vec<String>,
    category: String,
    #[serde(flatten)]
    extra: HashMap<String, serde_json::Value>,
}

#[derive(Deserialize)]
struct CldrEntry {
    hexcode: String,
    label: String,
    #[serde(default)]
    tags: Vec<String>,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    crate::fsutil::read_json(path).context("emoji-food needs the packages scripts/fetch-assets downloads")
}

fn normalise(s: &str) -> String {
    s.to_lowercase().replace(['_', '-'], " ")
}

/// The class-level text: emojilib keywords and CLDR tags, deduplicated, in that order, without
/// the emoji's names (its CLDR label, Unicode name and short names).
fn class_text(keywords: &[String], tags: &[String], names: &[String]) -> String {
    let names: Vec<String> = names.iter().map(|n| normalise(n)).collect();
    let mut words: Vec<String> = Vec::new();
    for w in keywords.iter().chain(tags) {
        let w = normalise(w);
        if !names.contains(&w) && !words.contains(&w) {
            words.push(w);
        }
    }
    words.join(", ")
}

/// Reads emoji-food from the npm packages under `npm_dir` (`assets/npm`). `test_vendor` is held
/// out for test; `val_fraction` of the remaining rows (seeded, at most one per class) become
/// validation.
pub fn emoji_food(npm_dir: &Path, test_vendor: &str, val_fraction: f64, seed: u64) -> Result<Dataset> {
    ensure!(VENDORS.contains(&test_vendor), "unknown vendor `{test_vendor}` (one of {VENDORS:?})");
    let entries: Vec<EmojiEntry> = read_json(&npm_dir.join("emoji-datasource/emoji.json"))?;
    let keywords: HashMap<String, Vec<String>> = read_json(&npm_dir.join("emojilib/dist/emoji-en-US.json"))?;
    let cldr: Vec<CldrEntry> = read_json(&npm_dir.join("emojibase-data/en/data.json"))?;
    let cldr: HashMap<&str, &CldrEntry> = cldr.iter().map(|c| (c.hexcode.as_str(), c)).collect();
    let has_all = |e: &EmojiEntry| VENDORS.iter().all(|v| e.extra.get(&format!("has_img_{v}")) == Some(&serde_json::Value::Bool(true)));
    let food: Vec<&EmojiEntry> = entries.iter().filter(|e| e.category == CATEGORY && has_all(e)).collect();
    ensure!(!food.is_empty(), "{}: no {CATEGORY} emoji with images from every vendor", npm_dir.display());

    let mut classes = Vec::new();
    let mut texts = Vec::new();
    for e in &food {
        let ch: String = e.unified.split('-').filter_map(|h| u32::from_str_radix(h, 16).ok().and_then(char::from_u32)).collect();
        let c = cldr.get(e.unified.as_str()).or_else(|| cldr.get(e.unified.trim_end_matches("-FE0F")));
        let label = c.map(|c| c.label.clone()).or_else(|| e.name.as_ref().map(|n| n.to_lowercase())).unwrap_or_else(|| e.short_names[0].clone());
        let mut names = e.short_names.clone();
        names.push(label.clone());
        names.extend(e.name.clone());
        let kw = keywords.get(&ch).or_else(|| keywords.get(ch.trim_end_matches('\u{fe0f}'))).cloned().unwrap_or_default();
        let tags = c.map(|c| c.tags.clone()).unwrap_or_default();
        classes.push(label);
        texts.push(class_text(&kw, &tags, &names));
    }

    let (mut trainval, mut test) = (Vec::new(), Vec::new());
    for vendor in VENDORS {
        let img_dir = npm_dir.join(format!("emoji-datasource-{vendor}/img/{vendor}/64"));
        for (label, e) in food.iter().enumerate() {
            let image = img_dir.join(&e.image);
            ensure!(image.exists(), "{}: image missing (run scripts/fetch-assets?)", image.display());
            let s = Sample { id: format!("{vendor}/{}", e.image), image, label: label as u32, text: Some(texts[label].clone()) };
            if vendor == test_vendor { test.push(s) } else { trainval.push(s) }
        }
    }
    // Validation: one image of each of round(val_fraction * rows) seeded-random classes, so
    // every class keeps training images.
    let n_classes = classes.len();
    let n_val = ((trainval.len() as f64 * val_fraction).round() as usize).min(n_classes);
    let mut rng = crate::rng::stream(seed, "emoji-val", 0);
    let val_classes = crate::rng::permutation(&mut rng, n_classes);
    let mut val_row = vec![None; n_classes];
    let train_vendors = VENDORS.len() - 1;
    for &c in &val_classes[..n_val] {
        val_row[c] = Some(c + n_classes * rand::Rng::random_range(&mut rng, 0..train_vendors));
    }
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (i, s) in trainval.into_iter().enumerate() {
        if val_row[i % n_classes] == Some(i) { val.push(s) } else { train.push(s) }
    }
    Ok(Dataset { name: format!("emoji-food(test={test_vendor})"), classes, train, val, test })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_drops_the_names_and_repeats() {
        let kw = vec!["hot_dog".into(), "food".into(), "hotdog".into(), "sausage".into()];
        let tags = vec!["sausage".into(), "frankfurter".into()];
        let names = vec!["hotdog".into(), "hot dog".into(), "HOT DOG".into()];
        assert_eq!(class_text(&kw, &tags, &names), "food, sausage, frankfurter");
    }
}
