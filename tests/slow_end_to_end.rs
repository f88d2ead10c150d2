//! End-to-end through the real binary, as a user runs it: synth -> ablate -> eval.
//! The slowest target of the suite (still seconds, on tiny sizes).

use std::path::Path;
use std::process::{Command, Output};

fn marnet(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_marnet")).arg("--quiet").args(args).output().unwrap();
    out
}

fn ok(args: &[&str]) -> String {
    let out = marnet(args);
    assert!(out.status.success(), "marnet {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

const SMALL: &[&str] = &["--classes", "8", "--dv", "24", "--ds", "24", "--n-train", "600", "--n-val", "150", "--n-test", "300", "--text-rank", "6", "--vis-noise", "1.0", "--bg-scale", "1.0"];
/// Model sizes (the first six words), then the training budget.
const TINY_MODEL: &[&str] = &["--d", "16", "--hidden", "32", "--temb", "8", "--epochs", "3", "--batch", "32"];

#[test]
fn synth_ablate_eval_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |s: &str| tmp.path().join(s).display().to_string();
    let cache = p("cache");
    ok(&[&["synth", "--out", &cache], SMALL].concat());
    for split in ["train", "val", "test"] {
        assert!(Path::new(&cache).join(format!("{split}.safetensors")).exists());
    }

    let runs = p("runs");
    let table = ok(&[&["ablate", "--cache", &cache, "--out", &runs, "--seeds", "2"], TINY_MODEL].concat());
    for row in ["| Baseline |", "| +EMA |", "| +MLP |", "| +CDR(MLP) |", "| +Fusion (MARNet) |"] {
        assert!(table.contains(row), "row {row} missing from:\n{table}");
    }
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(Path::new(&runs).join("ablation.json")).unwrap()).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 5);
    for row in json.as_array().unwrap() {
        assert_eq!(row["test_top1"].as_array().unwrap().len(), 2);
    }

    // Eval of a saved run reproduces the test accuracy recorded at training time.
    let run = Path::new(&runs).join("marnet").join("seed0");
    let eval = ok(&["eval", "--model", &run.display().to_string(), "--cache", &cache, "--split", "test"]);
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("best").join("metrics.json")).unwrap()).unwrap();
    let top1 = 100.0 * metrics["test"]["final_head"]["top1"].as_f64().unwrap();
    assert!(eval.contains(&format!("| test | 300 | {top1:.2} |")), "eval {eval} vs recorded {top1:.2}");
}

#[test]
fn compare_prints_every_alignment_row() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache").display().to_string();
    ok(&[&["synth", "--out", &cache], SMALL].concat());
    let out = tmp.path().join("cmp");
    let args = ["compare", "--cache", &cache, "--out", &out.display().to_string(), "--seeds", "1"];
    // Eight epochs: the EMA arms learn slower than the baseline in a 16-d shared space.
    let table = ok(&[&args[..], &TINY_MODEL[..6], &["--epochs", "8", "--batch", "32"]].concat());
    for row in ["| Visual baseline |", "| SWD |", "| SSAN |", "| CDD |", "| SDM |", "| TEAM |", "| ITA |", "| MARNet |"] {
        assert!(table.contains(row), "row {row} missing from:\n{table}");
    }
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("comparison.json")).unwrap()).unwrap();
    // Every alignment arm learned something: well above the 12.5% chance of 8 classes.
    for row in json.as_array().unwrap() {
        let top1 = row["test_top1"][0].as_f64().unwrap();
        assert!(top1 > 0.3, "{}: top1 {top1}", row["row"]);
    }
}

#[test]
fn bad_paths_fail_with_a_message() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing");
    let out = marnet(&["train", "--cache", &missing.display().to_string(), "--out", "x"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("feature cache folder not found") && err.contains("missing"), "{err}");
    let out = marnet(&["eval", "--model", &missing.display().to_string(), "--cache", "x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no checkpoint folder"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// SIGKILL `marnet train` once its first epoch is saved, rerun with `--resume`: the final
/// metrics equal those of an uninterrupted run with the same seed.
#[test]
fn killed_training_resumes_to_the_same_result() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache").display().to_string();
    ok(&["synth", "--out", &cache, "--classes", "8", "--dv", "32", "--ds", "32", "--n-train", "3000", "--n-val", "200", "--n-test", "300"]);
    let args = |out: &str| -> Vec<String> {
        ["train", "--cache", &cache, "--out", out, "--epochs", "6", "--hidden", "256", "--d", "32", "--resume"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let straight = tmp.path().join("straight").display().to_string();
    ok(&args(&straight).iter().map(String::as_str).collect::<Vec<_>>());

    let killed = tmp.path().join("killed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_marnet"))
        .arg("--quiet")
        .args(args(&killed.display().to_string()))
        .spawn()
        .unwrap();
    let marker = killed.join("last").join("metrics.json");
    let t0 = std::time::Instant::now();
    while !marker.exists() && t0.elapsed().as_secs() < 120 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // A kill between the two renames of a checkpoint swap leaves the previous one in `last.old`.
    let saved = if marker.exists() { marker.clone() } else { killed.join("last.old").join("metrics.json") };
    let epochs_before: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&saved).unwrap()).unwrap();
    assert!(epochs_before["epochs_done"].as_u64().unwrap() < 6, "the run finished before it could be killed");
    ok(&args(&killed.display().to_string()).iter().map(String::as_str).collect::<Vec<_>>());

    let metrics = |dir: &str| -> serde_json::Value {
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(Path::new(dir).join("best").join("metrics.json")).unwrap()).unwrap();
        for h in v["history"].as_array_mut().unwrap() {
            h["train_seconds"] = 0.into();
            h["val_seconds"] = 0.into();
        }
        v
    };
    assert_eq!(metrics(&straight), metrics(&killed.display().to_string()));
}
