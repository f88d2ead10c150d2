//! `marnet bench` end to end on a tiny head: each thread count runs in its own process, and
//! the report and JSON carry every measurement.

mod common;

#[test]
fn bench_reports_each_thread_count() {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("bench.json");
    let out = common::ok(&[
        "bench",
        "--dv",
        "16",
        "--ds",
        "12",
        "--classes",
        "5",
        "--d",
        "8",
        "--hidden",
        "32",
        "--temb",
        "8",
        "--iters",
        "3",
        "--infer-batch",
        "8",
        "--sampling-steps",
        "2,3",
        "--thread-counts",
        "1,2",
        "--skip-extraction",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(out.contains("FMA peak") && out.contains("| head training (marnet) |"), "{out}");
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["device"], "cpu");
    let heads = r["heads"].as_array().unwrap();
    assert_eq!(heads.iter().map(|h| h["threads"].as_u64().unwrap()).collect::<Vec<_>>(), vec![1, 2]);
    for h in heads {
        assert!(h["train_step_ms_median"].as_f64().unwrap() > 0.0);
        assert_eq!(h["infer_samples_per_s"].as_array().unwrap().len(), 2);
    }
    // The same step does the same products whatever the thread count.
    let flop = |h: &serde_json::Value| h["train_step_gflop"].as_f64().unwrap();
    assert!(flop(&heads[0]) > 0.0 && flop(&heads[0]) == flop(&heads[1]));
    assert!(r["encoders"].as_array().unwrap().is_empty() && r["decode"].is_null());
}

#[test]
fn bench_refuses_empty_batches_and_zero_threads() {
    for (flag, value, want) in [
        ("--batch", "0", "'--batch <BATCH>': must be at least 1"),
        ("--infer-batch", "0", "'--infer-batch <INFER_BATCH>': must be at least 1"),
        ("--thread-counts", "0", "'--thread-counts <THREAD_COUNTS>': must be at least 1"),
        ("--encoder-batches", "0", "'--encoder-batches <ENCODER_BATCHES>': must be at least 1"),
    ] {
        let out =
            common::marnet(&["bench", "--skip-extraction", "--iters", "1", "--dv", "8", "--ds", "8", "--hidden", "16", "--d", "4", "--temb", "4", flag, value]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(want) && !err.contains("panicked"), "{flag} {value}: {err}");
    }
}

/// `--heads-only` prints one JSON line, and `--json` writes the same numbers to its file.
#[test]
fn heads_only_writes_its_json_where_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("heads.json");
    let tiny = ["--dv", "16", "--ds", "12", "--classes", "5", "--d", "8", "--hidden", "32", "--temb", "8", "--iters", "2", "--infer-batch", "4"];
    let out = common::ok(&[&["bench", "--heads-only", "--sampling-steps", "2", "--json", json.to_str().unwrap()][..], &tiny[..]].concat());
    let printed: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let written: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(printed, written);
    assert!(written["train_step_ms_median"].as_f64().unwrap() > 0.0);
}

/// A `--visual` encoder that cannot load stops the bench before any timing, naming the spec;
/// `--visual` with `--skip-extraction` is refused.
#[test]
fn a_visual_encoder_that_cannot_load_is_named_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing.safetensors");
    let spec = format!("resnet50:{}", missing.display());
    let out = common::marnet(&["bench", "--extraction-only", "--assets", tmp.path().to_str().unwrap(), "--visual", &spec]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains(&format!("--visual {spec}")) && !err.contains("panicked"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("images/s"), "timed something first");
    let out = common::marnet(&["bench", "--skip-extraction", "--visual", &spec]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("cannot be used with"));
}
