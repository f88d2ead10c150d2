//! Figure 4's test images as small embedded thumbnails, found from their ids through the cache's
//! `extract.json` (the dataset, its root and the assets). Synthetic caches and images that are
//! no longer there get none.

use super::stats::ExampleRecord;
use crate::checkpoint::Checkpoint;
use base64::Engine;
use std::path::{Path, PathBuf};

/// Thumbnails' longest side, in px.
const SIDE: u32 = 96;

/// Fills each example's `thumbnail` that can be found and decoded.
pub fn add(run: &Checkpoint, examples: &mut [ExampleRecord]) {
    let Some((name, root, assets)) = dataset(run) else { return };
    for e in examples {
        e.thumbnail = crate::data::image_of(&name, root.as_deref(), &assets, &e.id).and_then(|p| data_uri(&p));
    }
}

/// The dataset name, root and assets folder a run's cache was extracted from.
fn dataset(run: &Checkpoint) -> Option<(String, Option<PathBuf>, PathBuf)> {
    let cache = run.cache_dir().ok()?;
    let job: serde_json::Value = crate::fsutil::read_json(&cache.join("extract.json")).ok()?;
    let s = &job["settings"];
    let root = s["root"].as_str().map(PathBuf::from);
    let assets = crate::assets::resolve(s["assets"].as_str().map(Path::new)).ok()?;
    Some((s["dataset"].as_str()?.to_string(), root, assets))
}

/// The image at `path`, shrunk to fit SIDE x SIDE, as a PNG `data:` URI.
fn data_uri(path: &Path) -> Option<String> {
    let img = image::ImageReader::open(path).ok()?.with_guessed_format().ok()?.decode().ok()?;
    let mut png = Vec::new();
    img.thumbnail(SIDE, SIDE).to_rgba8().write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).ok()?;
    Some(format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(&png)))
}
