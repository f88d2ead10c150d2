//! Helpers shared by the integration tests that need fetched assets or run the binary.
#![allow(dead_code)]

pub mod own;

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
    serve_on(bundle, "127.0.0.1:0", extra)
}

/// [`serve`] with `--addr ADDR`.
pub fn serve_on(bundle: &Path, addr: &str, extra: &[&str]) -> Server {
    serve_with_stderr(bundle, addr, extra, std::process::Stdio::inherit())
}

/// [`serve_on`] with its stderr going to `stderr` (piped: the test reads it, or closes it).
pub fn serve_with_stderr(bundle: &Path, addr: &str, extra: &[&str], stderr: std::process::Stdio) -> Server {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_marnet"))
        .args(["serve", "--model", bundle.to_str().unwrap(), "--addr", addr])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.trim().strip_prefix("listening on http://").unwrap_or_else(|| panic!("unexpected first line `{line}`")).to_string();
    Server(child, addr)
}

/// A bundle of a briefly trained model (4 classes) on a synthetic cache shaped like the ViT
/// fixture's features, with the fixture as its encoder: no fetched assets needed (made once per
/// test binary).
pub fn fixture_bundle() -> &'static Path {
    static B: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    B.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let vit = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/vit-tiny");
        // --dv: the fixture's hidden size.
        let cfg = synth_config("--classes 4 --dv 32 --ds 16 --n-train 64 --n-val 16 --n-test 0 --text-rank 4 --vis-noise 1.0 --bg-scale 1.0 --n-bg 2 --seed 1");
        let mut cache = marnet::synth::generate(&cfg).unwrap();
        cache.train.meta.visual_encoder = "vit".into();
        cache.val.as_mut().unwrap().meta.visual_encoder = "vit".into();
        cache.write(&dir.join("cache")).unwrap();
        let s = |p: PathBuf| p.display().to_string();
        let (cache, run, bundle) = (s(dir.join("cache")), s(dir.join("run")), dir.join("bundle"));
        ok(&["train", "--cache", &cache, "--out", &run, "--epochs", "1", "--hidden", "16", "--d", "8", "--temb", "8"]);
        ok(&["export", "--model", &run, "--out", &s(bundle.clone()), "--visual", &format!("vit:{vit}")]);
        bundle
    })
}

/// The bytes of a test image in tests/fixtures/images (`coffee.png`: 600x400, 456 KiB;
/// `cmyk.jpg`: 48x32, 2 KiB).
pub fn fixture_image(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images").join(name)).unwrap()
}

/// An HTTP answer.
pub struct Answer {
    pub status: u16,
    /// Names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Reads one answer from `s`, up to its Content-Length (so a kept-alive connection can go on,
/// and a pipelined answer after it is left to read).
pub fn read_answer(s: &mut impl std::io::Read) -> Answer {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).expect("no answer");
        assert!(n > 0, "connection closed before the answer: {}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.trim_end().split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines.map(|l| l.split_once(':').unwrap()).map(|(n, v)| (n.to_ascii_lowercase(), v.trim().to_string())).collect();
    let len: usize = headers.iter().find(|(n, _)| n == "content-length").expect("answer without content-length").1.parse().unwrap();
    let mut body = vec![0; len];
    s.read_exact(&mut body).expect("the answer's body");
    Answer { status, headers, body: String::from_utf8_lossy(&body).into_owned() }
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

/// A PNG broken inside its image data (as a bad disk sector leaves it): its chunks are all
/// there, the header decodes and it ends with `IEND`, so only decoding finds it broken.
pub fn broken_inside(png: &[u8]) -> Vec<u8> {
    let mut out = png.to_vec();
    let mut at = 8; // after the signature: chunks of length, type, data, CRC
    while at + 8 <= out.len() {
        let len = u32::from_be_bytes(out[at..at + 4].try_into().unwrap()) as usize;
        if &out[at + 4..at + 8] == b"IDAT" {
            out[at + 8..at + 8 + len].iter_mut().skip(len / 4).for_each(|b| *b = 0xAB);
            return out;
        }
        at += 12 + len;
    }
    panic!("a PNG without image data");
}
