//! Tables run again into their own folder, through the real binary on tiny synthetic caches:
//! other settings are refused (naming what differs) unless `--force`, the same settings reuse
//! finished runs and train what is missing or stale, and every table says which it did. Also
//! `report`: swapped in whole or not at all, the classes its t-SNE leaves out named.

mod common;
use common::ok;
use std::path::Path;
use std::process::Command;

/// The tiny model of every run here, but for `--dim`, `--epochs` and `--seeds` (see [`table`]).
const TINY: &[&str] = &["--hidden", "32", "--time-embedding-dim", "8", "--batch", "8"];

/// A synthetic cache (4 classes unless `extra` says) with 8-d features at `dir`, seeded.
fn synth(dir: &Path, seed: &str, extra: &[&str]) {
    let dir = dir.to_str().unwrap();
    let classes: &[&str] = if extra.contains(&"--classes") { &[] } else { &["--classes", "4"] };
    let args = ["synth", "--out", dir, "--n-train", "80", "--n-val", "20", "--n-test", "40", "--visual-dim", "8", "--text-dim", "8", "--seed", seed];
    ok(&[&args[..], classes, extra].concat());
}

/// `marnet ARGS` without `--quiet`: (success, stdout, stderr).
fn run(args: &[&str]) -> (bool, String, String) {
    run_in(Path::new("."), args)
}

fn run_in(cwd: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_marnet")).current_dir(cwd).args(args).output().unwrap();
    (out.status.success(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

/// `COMMAND --cache CACHE --out OUT` with the tiny model, `--seeds 1 --epochs 1 --dim 16` unless
/// `flags` sets them, then `flags`.
fn table(command: &str, cache: &Path, out: &Path, flags: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [command, "--cache", cache.to_str().unwrap(), "--out", out.to_str().unwrap()].map(String::from).to_vec();
    for (flag, default) in [("--seeds", "1"), ("--epochs", "1"), ("--dim", "16")] {
        if !flags.contains(&flag) {
            args.extend([flag.to_string(), default.to_string()]);
        }
    }
    args.extend(TINY.iter().chain(flags).map(|s| s.to_string()));
    args
}

fn run_table(command: &str, cache: &Path, out: &Path, flags: &[&str]) -> (bool, String, String) {
    let args = table(command, cache, out, flags);
    run(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Runs a table that must succeed; returns (stdout, stderr).
fn table_ok(command: &str, cache: &Path, out: &Path, flags: &[&str]) -> (String, String) {
    let (success, stdout, stderr) = run_table(command, cache, out, flags);
    assert!(success, "{command} {flags:?} failed:\n{stderr}");
    (stdout, stderr)
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&read(p)).unwrap()
}

#[test]
fn a_table_rerun_with_other_settings_is_refused_and_force_retrains_only_those_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let (cache, t) = (tmp.path().join("cache"), tmp.path().join("t"));
    synth(&cache, "0", &["--groups", "3"]);
    let (stdout, stderr) = table_ok("ablate", &cache, &t, &[]);
    assert!(stdout.contains(": 1 seed, 1 epoch;") && !stdout.contains("1 seeds"), "{stdout}");
    assert!(stderr.contains("reused 0 finished runs, trained 5\n"), "{stderr}");
    let (md, weights) = (read(&t.join("ablation.md")), read(&t.join("marnet/seed0/best/model.safetensors")));
    assert!(String::from_utf8_lossy(&md).contains("Acc-5 is 100% with 4 classes, whatever the model does."), "a trivial top-5 is said");
    let untouched = |what: &str| {
        assert_eq!(read(&t.join("ablation.md")), md, "{what}: the table is untouched");
        assert_eq!(read(&t.join("marnet/seed0/best/model.safetensors")), weights, "{what}: the run is untouched");
    };

    let (success, _, err) = run_table("ablate", &cache, &t, &["--epochs", "2", "--variants", "baseline"]);
    let said = format!(
        "{}: a table made with other settings is here (--epochs 1 → 2, rows baseline,ema,mlp,cdr,marnet → baseline); --force replaces it, or choose another --out",
        t.display()
    );
    assert!(!success && err.contains(&said), "{err}");
    untouched("--epochs 2");
    for (flags, diff) in [
        (&["--seeds", "2"][..], "(--seeds 1 → 2)"),
        (&["--dim", "32"], "(--dim 16 → 32)"),
        (&["--lr", "0.01"], "(--lr 0.001 → 0.01)"),
        (&["--residual"], "(--residual off → on)"),
        (&["--leave-one-out"], "(--leave-one-out off → on)"),
    ] {
        let (success, _, err) = run_table("ablate", &cache, &t, flags);
        assert!(!success && err.contains(diff) && err.contains("--force replaces it"), "{flags:?}: {err}");
        untouched(&format!("{flags:?}"));
    }

    // The same settings: every finished run reused, the same table.
    let (_, stderr) = table_ok("ablate", &cache, &t, &[]);
    assert!(stderr.contains("reused 5 finished runs, trained 0\n"), "{stderr}");
    untouched("the same settings");

    // --force: the runs whose settings differ are trained again; nothing else is deleted.
    let (stdout, stderr) = table_ok("ablate", &cache, &t, &["--epochs", "2", "--variants", "baseline", "--force"]);
    assert!(stderr.contains("reused 0 finished runs, trained 1 (1 made with other settings)\n"), "{stderr}");
    assert!(stdout.contains(": 1 seed, 2 epochs;"), "{stdout}");
    for checkpoint in ["best", "last"] {
        let run = t.join("baseline/seed0").join(checkpoint);
        assert_eq!(json(&run.join("config.json"))["train"]["epochs"], 2, "{checkpoint}");
        assert_eq!(json(&run.join("metrics.json"))["history"][0]["epoch"], 1, "{checkpoint}: trained from the start");
    }
    assert_eq!(json(&t.join("ablation.json"))["rows"].as_array().unwrap().len(), 1);
    assert_eq!(read(&t.join("marnet/seed0/best/model.safetensors")), weights, "a row not asked for is kept");
    let (_, stderr) = table_ok("ablate", &cache, &t, &["--epochs", "2", "--variants", "baseline,marnet", "--force"]);
    assert!(stderr.contains("reused 1 finished run, trained 1 (1 made with other settings)\n"), "{stderr}");
}

#[test]
fn added_rows_an_interrupted_table_and_a_changed_cache_train_only_what_is_missing_or_stale() {
    let tmp = tempfile::tempdir().unwrap();
    let (cache, t) = (tmp.path().join("cache"), tmp.path().join("t"));
    synth(&cache, "0", &[]);
    table_ok("ablate", &cache, &t, &["--variants", "baseline,marnet"]);
    // Rows added, everything else the same: only the new row trains.
    let (_, stderr) = table_ok("ablate", &cache, &t, &["--variants", "baseline,ema,marnet"]);
    assert!(stderr.contains("reused 2 finished runs, trained 1\n"), "{stderr}");
    assert_eq!(json(&t.join("ablation.json"))["rows"].as_array().unwrap().len(), 3);
    // Rows left out are refused.
    let (success, _, err) = run_table("ablate", &cache, &t, &["--variants", "baseline"]);
    assert!(!success && err.contains("(rows baseline,ema,marnet → baseline)"), "{err}");
    // Interrupted: one run stopped after epoch 1 of 2 (its `last/` says so), no table yet.
    table_ok("ablate", &cache, &t, &["--variants", "baseline,ema,marnet", "--epochs", "2", "--force"]);
    std::fs::remove_file(t.join("ablation.json")).unwrap();
    let last = t.join("ema/seed0/last/metrics.json");
    let mut state = json(&last);
    state["epochs_done"] = 1.into();
    state["history"].as_array_mut().unwrap().truncate(1);
    std::fs::write(&last, serde_json::to_vec(&state).unwrap()).unwrap();
    let (_, stderr) = table_ok("ablate", &cache, &t, &["--variants", "baseline,ema,marnet", "--epochs", "2"]);
    assert!(stderr.contains("reused 2 finished runs, trained 1 (1 interrupted, continued)\n"), "{stderr}");
    // The cache extracted again with other data: every run is stale and trained again.
    synth(&cache, "1", &[]);
    let (_, stderr) = table_ok("ablate", &cache, &t, &["--variants", "baseline,ema,marnet", "--epochs", "2"]);
    assert!(stderr.contains("reused 0 finished runs, trained 3 (3 stale: made from another cache)\n"), "{stderr}");
    // --quiet: no such line.
    let args = table("ablate", &cache, &t, &["--variants", "baseline,ema,marnet", "--epochs", "2"]);
    let (success, _, stderr) = run(&[&["--quiet"][..], &args.iter().map(String::as_str).collect::<Vec<_>>()].concat());
    assert!(success && stderr.is_empty(), "{stderr}");
}

/// A row whose training would refuse its settings (a token-level alignment on a cache without
/// tokens) stops the table before any row trains, so that fixing it leaves no runs to refuse.
#[test]
fn a_row_that_cannot_train_stops_the_table_before_any_row_trains() {
    let tmp = tempfile::tempdir().unwrap();
    let (cache, out) = (tmp.path().join("cache"), tmp.path().join("t"));
    synth(&cache, "0", &[]);
    let (success, _, err) = run_table("compare", &cache, &out, &["--methods", "team-tokens,ita"]);
    assert!(!success && err.contains("nothing was trained") && err.contains("TEAM (tokens)") && err.contains("marnet extract --tokens"), "{err}");
    assert!(!out.join("baseline").exists(), "the baseline row trained first");
}

/// `compare` into an `ablate` folder shares its baseline and MARNet runs: runs made with other
/// settings are refused too, and the same settings reuse them.
#[test]
fn compare_refuses_runs_of_another_table_made_with_other_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let (cache, t) = (tmp.path().join("cache"), tmp.path().join("t"));
    synth(&cache, "0", &[]);
    table_ok("ablate", &cache, &t, &["--variants", "baseline,marnet"]);
    let (success, _, err) = run_table("compare", &cache, &t, &["--methods", "swd", "--epochs", "2"]);
    assert!(!success, "{err}");
    assert!(err.contains("runs made with other settings are here (2 runs, e.g. `baseline/seed0`: --epochs 1 → 2); --force trains them again"), "{err}");
    assert!(!t.join("align-swd").exists() && !t.join("comparison.json").exists(), "nothing trained");
    let (_, stderr) = table_ok("compare", &cache, &t, &["--methods", "swd"]);
    assert!(stderr.contains("reused 2 finished runs, trained 1\n"), "{stderr}");
    let (success, _, err) = run_table("compare", &cache, &t, &["--methods", "swd", "--align-weight", "0.5"]);
    assert!(!success && err.contains("a table made with other settings is here (--align-weight 1 → 0.5)"), "{err}");
}

/// `demo` owns its folder: its tables run again with other settings train those runs again
/// instead of stopping (the library call `demo` makes).
#[test]
fn tables_that_replace_other_settings_train_those_runs_again() {
    use marnet::experiments::{Existing, TableSpec, ablation_arms, run_table};
    use marnet::model::marnet::{ModelOptions, Variant};
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    synth(&cache, "0", &[]);
    let cache = marnet::features::FeatureCache::open(&cache).unwrap();
    let dev = candle_core::Device::Cpu;
    let spec = |epochs: &str, dim: &str| {
        let model: ModelOptions = marnet::options::parse(&[&["--dim", dim][..], TINY[..4].as_ref()].concat()).unwrap();
        let train = marnet::options::parse(&["--epochs", epochs, "--batch", "8"]).unwrap();
        let base = model.config(Variant::Marnet, cache.train.dv, cache.train.ds, cache.num_classes());
        let spec = TableSpec {
            what: "Ablation".into(),
            first_column: "Module".into(),
            file: "ablation".into(),
            out: tmp.path().join("t"),
            seeds: vec![0],
            leave_one_out: false,
            fold_val: Default::default(),
            train,
            command: "test".into(),
            existing: Existing::Replace,
            task: None,
        };
        (ablation_arms(&base, &[Variant::Baseline, Variant::Marnet]), spec)
    };
    let quiet = marnet::train::Verbosity::Quiet;
    for (epochs, dim) in [("1", "16"), ("2", "16"), ("1", "8")] {
        let (arms, spec) = spec(epochs, dim);
        let t = run_table(&cache, &arms, &spec, quiet, &dev).unwrap_or_else(|e| panic!("--epochs {epochs} --dim {dim}: {e:#}"));
        assert_eq!(t.train.epochs.to_string(), epochs);
        let config = json(&tmp.path().join("t/marnet/seed0/best/config.json"));
        assert_eq!((config["train"]["epochs"].to_string(), config["model"]["d"].to_string()), (epochs.to_string(), dim.to_string()));
        assert_eq!(json(&tmp.path().join("t/marnet/seed0/best/metrics.json"))["epochs_done"].to_string(), epochs);
    }
}

/// A report that fails leaves the previous one as it was; the changed-cache error names the
/// cache by its real path and says what to do for single runs and for tables.
#[test]
fn a_failed_report_leaves_the_previous_one_and_names_the_changed_cache_plainly() {
    let Some(font) = common::asset("npm/dejavu-fonts-ttf/ttf/DejaVuSans.ttf") else { return };
    let tmp = tempfile::tempdir().unwrap();
    synth(&tmp.path().join("cache"), "0", &[]);
    let args = table("ablate", Path::new("cache"), Path::new("ab"), &["--variants", "baseline,marnet"]);
    let (success, _, err) = run_in(tmp.path(), &args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(success, "{err}");
    let font = font.display().to_string();
    let (success, _, err) = run_in(tmp.path(), &["report", "ab", "--font", &font]);
    assert!(success, "{err}");
    let report = tmp.path().join("ab/report");
    std::fs::write(report.join("tables.md"), "the previous report").unwrap();
    let html = read(&report.join("report.html"));
    synth(&tmp.path().join("cache"), "1", &[]);
    let real = tmp.path().join("cache").canonicalize().unwrap().display().to_string();
    for args in [&["report", "ab", "--font", &font][..], &["eval", "--model", "ab/marnet/seed0"]] {
        let (success, _, err) = run_in(tmp.path(), args);
        assert!(!success && err.contains(&format!("{real}: the feature cache changed since the model at")), "{args:?}: {err}");
        assert!(!err.contains("/../") && err.contains(&format!("`eval --model ab/marnet/seed0 --cache {real}`")), "{args:?}: {err}");
        assert!(err.contains("train again (`train --force`; `ablate`/`compare` retrain such runs when run again)"), "{args:?}: {err}");
    }
    assert_eq!(read(&report.join("tables.md")), b"the previous report", "nothing of the failed report is swapped in");
    assert_eq!(read(&report.join("report.html")), html);
    assert!(!tmp.path().join("ab/report.tmp").exists(), "no half-written report is left");
}

/// Figure 3 names the classes it draws and those it leaves out, with the flag that draws them.
#[test]
fn the_tsne_figure_names_the_classes_it_leaves_out() {
    let Some(font) = common::asset("npm/dejavu-fonts-ttf/ttf/DejaVuSans.ttf") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (cache, t) = (tmp.path().join("cache"), tmp.path().join("t"));
    synth(&cache, "0", &["--classes", "6"]);
    table_ok("ablate", &cache, &t, &["--variants", "baseline,marnet"]);
    let font = font.display().to_string();
    ok(&["report", t.to_str().unwrap(), "--font", &font, "--tsne-per-class", "3"]);
    let stats = json(&t.join("report/figures.json"));
    let (drawn, left) = (stats["tsne_classes"].as_array().unwrap(), stats["tsne_classes_left_out"].as_array().unwrap());
    assert_eq!((drawn.len(), left.len()), (5, 1), "{stats}");
    let note = String::from_utf8(read(&t.join("report/fig3_tsne.txt"))).unwrap();
    let left = left[0].as_str().unwrap();
    assert!(note.contains("15 test images") && note.contains("3 per class"), "{note}");
    assert!(note.contains(&format!("left out: `{left}`")) && note.contains("--tsne-classes 6"), "{note}");
    let html = String::from_utf8(read(&t.join("report/report.html"))).unwrap();
    assert!(html.contains("--tsne-classes 6"), "the caption says it");
    ok(&["report", t.to_str().unwrap(), "--font", &font, "--tsne-per-class", "3", "--tsne-classes", "6"]);
    let stats = json(&t.join("report/figures.json"));
    assert_eq!((stats["tsne_classes"].as_array().unwrap().len(), stats["tsne_classes_left_out"].as_array().unwrap().len()), (6, 0), "{stats}");
    // A table written before run cards were recorded: the card says what it does not know.
    let mut table = json(&t.join("ablation.json"));
    assert!(table["card"]["cpu"].as_str().is_some_and(|c| !c.is_empty()), "{table}");
    table.as_object_mut().unwrap().remove("card");
    std::fs::write(t.join("ablation.json"), table.to_string()).unwrap();
    ok(&["report", t.to_str().unwrap(), "--font", &font]);
    let html = String::from_utf8(read(&t.join("report/report.html"))).unwrap();
    assert!(html.contains("<dt>Date</dt><dd><em>not recorded</em></dd>"), "{html}");
}
