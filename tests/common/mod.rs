//! Helpers shared by the integration tests that need fetched assets or run the binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Whether a missing asset fails the test instead of skipping it: under CI (`CI=true`, which CI
/// sets) or with `MARNET_REQUIRE_ASSETS=1`.
pub fn assets_required() -> bool {
    let set = |var: &str| std::env::var(var).is_ok_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"));
    set("CI") || set("MARNET_REQUIRE_ASSETS")
}

/// `assets/REL` (or `$MARNET_ASSETS/REL`) if `scripts/fetch-assets` put it there; otherwise
/// panics when [`assets_required`], else prints SKIPPED and returns `None`.
pub fn asset(rel: &str) -> Option<PathBuf> {
    let root = std::env::var("MARNET_ASSETS").ok().filter(|v| !v.is_empty()).unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/assets").into());
    let p = Path::new(&root).join(rel);
    if p.exists() {
        return Some(p);
    }
    let msg = format!("{} is absent; run scripts/fetch-assets", p.display());
    assert!(!assets_required(), "{msg} (assets are required under CI=true or MARNET_REQUIRE_ASSETS=1)");
    eprintln!("SKIPPED: {msg}");
    None
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

/// A running `marnet serve`: the child process (killed on drop) and its `host:port`.
pub struct Server(pub std::process::Child, pub String);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

/// Starts `marnet serve --model BUNDLE --addr 127.0.0.1:0 EXTRA...` and waits for its
/// `listening on` line.
pub fn serve(bundle: &Path, extra: &[&str]) -> Server {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_marnet"))
        .args(["serve", "--model", bundle.to_str().unwrap(), "--addr", "127.0.0.1:0"])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.trim().strip_prefix("listening on http://").unwrap_or_else(|| panic!("unexpected first line `{line}`")).to_string();
    Server(child, addr)
}

/// A synthetic cache's settings from `synth` flags, space-separated (the rest at their defaults).
pub fn synth_config(flags: &str) -> marnet::synth::SynthConfig {
    marnet::options::parse(&flags.split_whitespace().collect::<Vec<_>>()).unwrap()
}

/// Writes `text` to `root/rel`, creating folders.
pub fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}
