//! The built-in emoji benchmarks: emoji as classes, one image per vendor (Google, Twitter,
//! Apple, Facebook; 64 px), and as text the emoji's keywords (emojilib) and CLDR tags
//! (emojibase) without its own name. Training uses some vendors and testing a held-out one: a
//! real domain shift, with text only at training time.
//!
//! `emoji-food` takes the Food & Drink emoji; `emoji-all` every emoji but flags and the
//! skin-tone/hair components. Either can add the training vendors' skin-tone variants as extra
//! training images of their base emoji.

use super::dataset::{Dataset, Sample};
use anyhow::{Context, Result, ensure};
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

pub const VENDORS: [&str; 4] = ["google", "twitter", "apple", "facebook"];

/// Which emoji become classes (only those that all four vendors draw).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selection {
    /// The "Food & Drink" category: `emoji-food`.
    Food,
    /// Every category except "Flags" and "Component": `emoji-all`.
    AllButFlagsAndComponents,
}

impl Selection {
    /// The dataset name this selection gives.
    pub fn dataset_name(self) -> &'static str {
        match self {
            Selection::Food => "emoji-food",
            Selection::AllButFlagsAndComponents => "emoji-all",
        }
    }

    fn includes(self, category: &str) -> bool {
        match self {
            Selection::Food => category == "Food & Drink",
            Selection::AllButFlagsAndComponents => category != "Flags" && category != "Component",
        }
    }
}

#[derive(Deserialize)]
struct EmojiEntry {
    name: Option<String>,
    unified: String,
    image: String,
    short_names: Vec<String>,
    category: String,
    /// Skin tone (e.g. `1F3FB`) to the variant's image; sorted, so samples come in a fixed order.
    #[serde(default)]
    skin_variations: BTreeMap<String, SkinVariation>,
    /// Holds the `has_img_<vendor>` flags.
    #[serde(flatten)]
    extra: HashMap<String, Value>,
}

#[derive(Deserialize)]
struct SkinVariation {
    image: String,
    #[serde(flatten)]
    extra: HashMap<String, Value>,
}

#[derive(Deserialize)]
struct CldrEntry {
    hexcode: String,
    label: String,
    #[serde(default)]
    tags: Vec<String>,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    crate::fsutil::read_json(path).context("the emoji datasets need the packages scripts/fetch-assets downloads")
}

/// Whether `vendor` draws the image these `has_img_<vendor>` flags describe.
fn draws(flags: &HashMap<String, Value>, vendor: &str) -> bool {
    flags.get(&format!("has_img_{vendor}")) == Some(&Value::Bool(true))
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

/// The text sources an emoji's label and text come from.
struct TextSources {
    keywords: HashMap<String, Vec<String>>,
    cldr: HashMap<String, CldrEntry>,
}

impl TextSources {
    fn read(npm_dir: &Path) -> Result<TextSources> {
        let keywords = read_json(&npm_dir.join("emojilib/dist/emoji-en-US.json"))?;
        let cldr: Vec<CldrEntry> = read_json(&npm_dir.join("emojibase-data/en/data.json"))?;
        let cldr = cldr.into_iter().map(|c| (c.hexcode.clone(), c)).collect();
        Ok(TextSources { keywords, cldr })
    }

    /// The emoji's label (CLDR label, else lower-case Unicode name, else first short name) and
    /// its class text.
    fn label_and_text(&self, e: &EmojiEntry) -> (String, String) {
        let ch: String = e.unified.split('-').filter_map(|h| u32::from_str_radix(h, 16).ok().and_then(char::from_u32)).collect();
        let c = self.cldr.get(e.unified.as_str()).or_else(|| self.cldr.get(e.unified.trim_end_matches("-FE0F")));
        let label = c
            .map(|c| c.label.clone())
            .or_else(|| e.name.as_ref().map(|n| n.to_lowercase()))
            .or_else(|| e.short_names.first().cloned())
            .unwrap_or_else(|| e.unified.clone());
        let mut names = e.short_names.clone();
        names.push(label.clone());
        names.extend(e.name.clone());
        let kw = self.keywords.get(&ch).or_else(|| self.keywords.get(ch.trim_end_matches('\u{fe0f}'))).cloned().unwrap_or_default();
        let tags = c.map(|c| c.tags.clone()).unwrap_or_default();
        let text = class_text(&kw, &tags, &names);
        (label, text)
    }
}

/// Class names made unique: a label shared by several emoji gets each one's code point appended
/// (`label (1F600)`).
fn unique_names(labels: Vec<String>, entries: &[&EmojiEntry]) -> Vec<String> {
    let mut count: HashMap<&str, usize> = HashMap::new();
    for l in &labels {
        *count.entry(l.as_str()).or_default() += 1;
    }
    let shared: Vec<bool> = labels.iter().map(|l| count[l.as_str()] > 1).collect();
    labels.into_iter().zip(shared).zip(entries).map(|((l, s), e)| if s { format!("{l} ({})", e.unified) } else { l }).collect()
}

/// `vendor`'s 64-px image `file`, as a sample of class `label`; the image must exist.
fn sample(npm_dir: &Path, vendor: &str, file: &str, label: usize, text: &str) -> Result<Sample> {
    let image: PathBuf = npm_dir.join(format!("emoji-datasource-{vendor}/img/{vendor}/64/{file}"));
    ensure!(image.exists(), "{}: image missing (run scripts/fetch-assets?)", image.display());
    Ok(Sample { id: format!("{vendor}/{file}"), image, label: label as u32, text: Some(text.to_string()), group: None, origin: String::new() })
}

/// Splits the training vendors' rows (vendor-major, one per class each) into train and val:
/// one image of each of round(val_fraction * rows) seeded-random classes goes to val, so every
/// class keeps training images.
fn split_val(trainval: Vec<Sample>, n_classes: usize, val_fraction: f64, seed: u64) -> (Vec<Sample>, Vec<Sample>) {
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
    (train, val)
}

/// Every skin-tone variant `vendor` draws of each class, as training samples of that class.
/// Their ids are `{vendor}/train-only/{file}` ([`super::dataset::TRAIN_ONLY`]): a
/// leave-one-vendor-out fold never puts them in val or test.
fn skin_samples(npm_dir: &Path, vendor: &str, chosen: &[&EmojiEntry], texts: &[String]) -> Result<Vec<Sample>> {
    let mut out = Vec::new();
    for (label, e) in chosen.iter().enumerate() {
        for v in e.skin_variations.values().filter(|v| draws(&v.extra, vendor)) {
            let s = sample(npm_dir, vendor, &v.image, label, &texts[label])?;
            out.push(Sample { id: format!("{vendor}/{}{}", super::dataset::TRAIN_ONLY, v.image), ..s });
        }
    }
    Ok(out)
}

/// Reads an emoji dataset from the npm packages under `npm_dir` (`assets/npm`): the emoji of
/// `selection` that all four vendors draw are the classes. `test_vendor` is held out for test;
/// `val_fraction` of the remaining rows (seeded, at most one per class) become validation. With
/// `skin_tones`, every skin-tone variant a training vendor draws is an extra training image of
/// its base emoji (never in val or test). Sample ids are `{vendor}/{image file}`
/// (`{vendor}/train-only/{image file}` for the skin-tone variants).
pub fn emoji(npm_dir: &Path, selection: Selection, test_vendor: &str, val_fraction: f64, seed: u64, skin_tones: bool) -> Result<Dataset> {
    ensure!(VENDORS.contains(&test_vendor), "unknown vendor `{test_vendor}` (one of {VENDORS:?})");
    let emoji_json = npm_dir.join("emoji-datasource/emoji.json");
    let entries: Vec<EmojiEntry> = read_json(&emoji_json)?;
    let sources = TextSources::read(npm_dir)?;
    let chosen: Vec<&EmojiEntry> = entries.iter().filter(|e| selection.includes(&e.category) && VENDORS.iter().all(|v| draws(&e.extra, v))).collect();
    let name = selection.dataset_name();
    ensure!(!chosen.is_empty(), "{}: no {name} emoji with images from every vendor", emoji_json.display());

    let (labels, texts): (Vec<String>, Vec<String>) = chosen.iter().map(|e| sources.label_and_text(e)).unzip();
    let classes = unique_names(labels, &chosen);

    let (mut trainval, mut test) = (Vec::new(), Vec::new());
    for vendor in VENDORS {
        for (label, e) in chosen.iter().enumerate() {
            let s = sample(npm_dir, vendor, &e.image, label, &texts[label])?;
            if vendor == test_vendor { test.push(s) } else { trainval.push(s) }
        }
    }
    let (mut train, val) = split_val(trainval, classes.len(), val_fraction, seed);
    if skin_tones {
        for vendor in VENDORS.into_iter().filter(|&v| v != test_vendor) {
            train.extend(skin_samples(npm_dir, vendor, &chosen, &texts)?);
        }
    }
    let tones = if skin_tones { ", skin tones" } else { "" };
    Ok(Dataset { name: format!("{name}(test={test_vendor}{tones})"), classes, train, val, test })
}

/// `emoji-food`: the Food & Drink emoji (see [`emoji`]), without skin-tone variants.
pub fn emoji_food(npm_dir: &Path, test_vendor: &str, val_fraction: f64, seed: u64) -> Result<Dataset> {
    emoji(npm_dir, Selection::Food, test_vendor, val_fraction, seed, false)
}

/// `emoji-all`: every emoji but flags and components (see [`emoji`]); `skin_tones` adds the
/// training vendors' skin-tone variants as extra training images.
pub fn emoji_all(npm_dir: &Path, test_vendor: &str, val_fraction: f64, seed: u64, skin_tones: bool) -> Result<Dataset> {
    emoji(npm_dir, Selection::AllButFlagsAndComponents, test_vendor, val_fraction, seed, skin_tones)
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
