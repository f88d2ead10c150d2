//! Real weights fetched by `scripts/fetch-assets` (skipped, with a message, when absent).

use candle_core::Device;
use marnet::encoders::text::TextEncoder;
use std::path::{Path, PathBuf};

fn asset(rel: &str) -> Option<PathBuf> {
    let root = std::env::var("MARNET_ASSETS").unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/assets").into());
    let p = Path::new(&root).join(rel);
    if p.exists() {
        Some(p)
    } else {
        eprintln!("SKIPPED: {} is absent; run scripts/fetch-assets", p.display());
        None
    }
}

#[test]
fn minilm_matches_the_reference_similarity() {
    let Some(dir) = asset("minilm") else { return };
    let enc = TextEncoder::load(&dir, &Device::Cpu).unwrap();
    assert_eq!(enc.dim(), 384);
    let e = enc.embed(&["A man is eating food.", "A man is eating a piece of bread."]).unwrap();
    let v = e.to_vec2::<f32>().unwrap();
    for row in &v {
        let norm: f32 = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
    }
    let cos: f32 = v[0].iter().zip(&v[1]).map(|(a, b)| a * b).sum();
    assert!((cos - 0.755).abs() < 0.01, "cosine {cos}");
    // Batching pads: the same sentence alone gives the same embedding.
    let alone = enc.embed(&["A man is eating food."]).unwrap().to_vec2::<f32>().unwrap();
    assert!(alone[0].iter().zip(&v[0]).all(|(a, b)| (a - b).abs() < 1e-5));
}
