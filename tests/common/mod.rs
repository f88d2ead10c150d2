//! Helpers shared by the integration tests that need fetched assets or run the binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `assets/REL` (or `$MARNET_ASSETS/REL`) if `scripts/fetch-assets` put it there; otherwise
/// prints SKIPPED and returns `None`.
pub fn asset(rel: &str) -> Option<PathBuf> {
    let root = std::env::var("MARNET_ASSETS").unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/assets").into());
    let p = Path::new(&root).join(rel);
    if p.exists() {
        Some(p)
    } else {
        eprintln!("SKIPPED: {} is absent; run scripts/fetch-assets", p.display());
        None
    }
}

/// Runs the `marnet` binary with `--quiet`.
pub fn marnet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_marnet")).arg("--quiet").args(args).output().unwrap()
}

/// Runs `marnet`, asserts success, returns stdout.
pub fn ok(args: &[&str]) -> String {
    let out = marnet(args);
    assert!(out.status.success(), "marnet {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Writes `text` to `root/rel`, creating folders.
pub fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}
