//! Identifies the code a binary was built from, for the fingerprints of runs and caches
//! (`src/fingerprint.rs`): `MARNET_SOURCE_HASH`, FNV-1a of every source file that goes into the
//! library, and `MARNET_GIT_COMMIT`, the checkout's commit (`-dirty` with uncommitted changes;
//! empty outside a git checkout, as in a crate tarball).

use std::path::{Path, PathBuf};
use std::process::Command;

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let mut paths = vec![PathBuf::from("Cargo.toml"), PathBuf::from("Cargo.lock"), PathBuf::from("build.rs")];
    files(Path::new("src"), &mut paths);
    paths.sort();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in &paths {
        let name = p.to_string_lossy().replace('\\', "/");
        for b in name.bytes().chain([0]).chain(std::fs::read(p).unwrap_or_default()).chain([0]) {
            h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
    }
    println!("cargo:rustc-env=MARNET_SOURCE_HASH={h:016x}");
    let commit = match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(c) if git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty()) => format!("{c}-dirty"),
        Some(c) => c,
        None => String::new(),
    };
    println!("cargo:rustc-env=MARNET_GIT_COMMIT={commit}");
    for p in ["src", "Cargo.toml", "Cargo.lock", "build.rs"] {
        println!("cargo:rerun-if-changed={p}");
    }
    if let Some(git_dir) = git(&["rev-parse", "--git-dir"]) {
        for f in ["HEAD", "index"] {
            println!("cargo:rerun-if-changed={git_dir}/{f}");
        }
    }
}
