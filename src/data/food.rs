//! The paper's datasets in their published on-disk layouts. Every malformed line is reported
//! with its file and line number.

use super::dataset::{Dataset, Sample};
use anyhow::{Context, Result, bail, ensure};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Non-empty lines of a text file with their 1-based line numbers.
fn lines(path: &Path) -> Result<Vec<(usize, String)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    Ok(text.lines().enumerate().map(|(i, l)| (i + 1, l.trim().to_string())).filter(|(_, l)| !l.is_empty()).collect())
}

/// The first of `names` that exists under `root` (tried in order).
fn find(root: &Path, names: &[&str]) -> Result<PathBuf> {
    names.iter().map(|n| root.join(n)).find(|p| p.exists()).with_context(|| format!("{}: none of {names:?} found", root.display()))
}

/// Vireo-Food172: `ready_chinese_food/<class>/<img>.jpg`; `SplitAndIngreLabel/{TR,VAL,TE}.txt`
/// (`/<class>/<file>.jpg`, class 1-based); `IngreLabel.txt` (`<path> v1 .. v353`, each +-1);
/// `IngredientList.txt`; `FoodList.txt`. Text: the image's ingredients, comma-joined.
pub fn vireo172(root: &Path) -> Result<Dataset> {
    let meta = |name: &str| find(root, &[&format!("SplitAndIngreLabel/{name}"), name]);
    let classes: Vec<String> = lines(&meta("FoodList.txt")?)?.into_iter().map(|(_, l)| l).collect();
    let ingredients: Vec<String> = lines(&meta("IngredientList.txt")?)?.into_iter().map(|(_, l)| l).collect();
    let ingre_path = meta("IngreLabel.txt")?;
    let mut text_of: HashMap<String, String> = HashMap::new();
    for (n, line) in lines(&ingre_path)? {
        let mut parts = line.split_whitespace();
        let path = parts.next().unwrap().to_string();
        let flags: Vec<&str> = parts.collect();
        ensure!(
            flags.len() == ingredients.len(),
            "{}:{n}: {} ingredient flags, expected {} (one per line of IngredientList.txt)",
            ingre_path.display(),
            flags.len(),
            ingredients.len()
        );
        let mut present = vec![];
        for (i, f) in flags.iter().enumerate() {
            match *f {
                "1" => present.push(ingredients[i].as_str()),
                "-1" | "0" => {}
                other => bail!("{}:{n}: ingredient flag `{other}` is not 1 or -1", ingre_path.display()),
            }
        }
        text_of.insert(path, present.join(", "));
    }
    let split = |name: &str| -> Result<Vec<Sample>> {
        let path = meta(name)?;
        lines(&path)?
            .into_iter()
            .map(|(n, line)| {
                let rel = line.trim_start_matches('/');
                let class: usize = rel
                    .split('/')
                    .next()
                    .and_then(|c| c.parse().ok())
                    .filter(|&c| (1..=classes.len()).contains(&c))
                    .with_context(|| format!("{}:{n}: `{line}` does not start with a class number 1..={}", path.display(), classes.len()))?;
                Ok(Sample {
                    id: rel.to_string(),
                    image: root.join("ready_chinese_food").join(rel),
                    label: (class - 1) as u32,
                    text: text_of.get(&line).or_else(|| text_of.get(&format!("/{rel}"))).cloned(),
                    group: None,
                    origin: format!("{}:{n}", path.display()),
                })
            })
            .collect()
    };
    let (train, val, test) = (split("TR.txt")?, split("VAL.txt")?, split("TE.txt")?);
    Ok(Dataset { name: "vireo-food172".into(), classes, train, val, test })
}

/// Ingredient-101: Food-101 images `images/<class>/<id>.jpg`; `annotations/classes.txt`,
/// `ingredients.txt` (line i: comma-separated ingredients of class i),
/// `{train,val,test}_images.txt` (`apple_pie/1005649`) and `{train,val,test}_labels.txt`
/// (0-based). Text: the class's ingredients, comma-joined.
pub fn ingredient101(root: &Path) -> Result<Dataset> {
    let meta = |name: &str| find(root, &[&format!("annotations/{name}"), name]);
    let classes: Vec<String> = lines(&meta("classes.txt")?)?.into_iter().map(|(_, l)| l).collect();
    let ingr_path = meta("ingredients.txt")?;
    let texts: Vec<String> =
        lines(&ingr_path)?.into_iter().map(|(_, l)| l.split(',').map(str::trim).filter(|s| !s.is_empty()).collect::<Vec<_>>().join(", ")).collect();
    ensure!(texts.len() == classes.len(), "{}: {} lines for {} classes", ingr_path.display(), texts.len(), classes.len());
    let split = |name: &str| -> Result<Vec<Sample>> {
        let (ip, lp) = (meta(&format!("{name}_images.txt"))?, meta(&format!("{name}_labels.txt"))?);
        let (images, labels) = (lines(&ip)?, lines(&lp)?);
        ensure!(images.len() == labels.len(), "{} has {} lines but {} has {}", ip.display(), images.len(), lp.display(), labels.len());
        images
            .into_iter()
            .zip(labels)
            .map(|((m, img), (n, lab))| {
                let label: usize = lab
                    .parse()
                    .ok()
                    .filter(|&l| l < classes.len())
                    .with_context(|| format!("{}:{n}: label `{lab}` is not a class index 0..{}", lp.display(), classes.len()))?;
                let image = root.join("images").join(format!("{img}.jpg"));
                Ok(Sample {
                    id: img.clone(),
                    image,
                    label: label as u32,
                    text: Some(texts[label].clone()),
                    group: None,
                    origin: format!("{}:{m}", ip.display()),
                })
            })
            .collect()
    };
    let (train, val, test) = (split("train")?, split("val")?, split("test")?);
    Ok(Dataset { name: "ingredient-101".into(), classes, train, val, test })
}
