//! A user's own small dataset on disk and the binary run from a chosen folder, for the tests of
//! the own-data chain (tiny encoder fixtures, no fetched assets).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs `marnet --quiet ARGS` in folder `cwd`.
pub fn marnet_in(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_marnet")).current_dir(cwd).arg("--quiet").args(args).output().unwrap()
}

/// [`marnet_in`], asserting success: its stdout.
pub fn ok_in(cwd: &Path, args: &[&str]) -> String {
    let out = marnet_in(cwd, args);
    assert!(out.status.success(), "marnet {args:?} in {} failed:\n{}", cwd.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// [`marnet_in`], asserting failure: its stderr.
pub fn err_in(cwd: &Path, args: &[&str]) -> String {
    let out = marnet_in(cwd, args);
    assert!(!out.status.success(), "marnet {args:?} should have failed");
    String::from_utf8(out.stderr).unwrap()
}

/// `dir/photos/<group>/<class><i>.png` (a class's colour plus noise) and `dir/manifest.jsonl`:
/// 3 classes, 2 groups, 4 images each per group; `test_group` tests, the rest trains.
pub fn dataset(dir: &Path, test_group: &str) -> PathBuf {
    let classes = [("red", [200u8, 30, 30], "tomato, chili, pepper"), ("green", [30, 180, 40], "lettuce, basil, lime"), ("blue", [40, 60, 200], "berry, plum")];
    let mut lines = vec![];
    for (g, group) in ["phone", "camera"].into_iter().enumerate() {
        std::fs::create_dir_all(dir.join("photos").join(group)).unwrap();
        for (c, (name, rgb, text)) in classes.iter().enumerate() {
            for i in 0..4u32 {
                let img = image::RgbImage::from_fn(24, 20, |x, y| {
                    let n = ((x * 7 + y * 13 + i * 31 + c as u32 * 17 + g as u32 * 5) % 40) as u8;
                    image::Rgb(rgb.map(|v| v.saturating_add(n)))
                });
                let rel = format!("photos/{group}/{name}{i}.png");
                img.save(dir.join(&rel)).unwrap();
                let split = if group == test_group { "test" } else { "train" };
                lines.push(format!(r#"{{"image": "{rel}", "label": "{name}", "text": "{text}", "split": "{split}", "group": "{group}"}}"#));
            }
        }
    }
    let path = dir.join("manifest.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// `extract` arguments with the tiny ViT and BERT fixtures.
pub fn extract_args<'a>(manifest: &'a str, out: &'a str) -> Vec<&'a str> {
    vec!["extract", "--dataset", "manifest", "--root", manifest, "--out", out, "--visual", VIT, "--text", TEXT]
}

pub const VIT: &str = concat!("vit:", env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/vit-tiny");
pub const TEXT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/text-plain");
