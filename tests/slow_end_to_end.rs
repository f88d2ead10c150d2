//! End-to-end through the real binary, as a user runs it: synth -> ablate -> eval.
//! The slowest target of the suite (still seconds, on tiny sizes).

use std::path::Path;
use std::process::Command;

mod common;
use common::{marnet, ok};

const SMALL: &[&str] = &[
    "--classes",
    "8",
    "--dv",
    "24",
    "--ds",
    "24",
    "--n-train",
    "600",
    "--n-val",
    "150",
    "--n-test",
    "300",
    "--text-rank",
    "6",
    "--vis-noise",
    "1.0",
    "--bg-scale",
    "1.0",
];
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
    assert_eq!(json["rows"].as_array().unwrap().len(), 5);
    assert!(json["command"].as_str().unwrap().contains("ablate"));
    for row in json["rows"].as_array().unwrap() {
        assert_eq!(row["test_top1"].as_array().unwrap().len(), 2);
    }

    // Eval of a saved run reproduces the test accuracy recorded at training time.
    let run = Path::new(&runs).join("marnet").join("seed0");
    let eval = ok(&["eval", "--model", &run.display().to_string(), "--cache", &cache, "--split", "test"]);
    let metrics: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("best").join("metrics.json")).unwrap()).unwrap();
    let top1 = 100.0 * metrics["test"]["final_head"]["top1"].as_f64().unwrap();
    assert!(eval.contains(&format!("| test | 300 | {top1:.2} |")), "eval {eval} vs recorded {top1:.2}");

    // The report from the saved runs: every file, PNGs of the expected sizes.
    let Some(font) = common::asset("npm/dejavu-fonts-ttf/ttf/DejaVuSans.ttf") else { return };
    ok(&["report", &runs, "--font", &font.display().to_string(), "--tsne-per-class", "40", "--examples", "4"]);
    let report = Path::new(&runs).join("report");
    for f in ["tables.md", "tables.json", "figures.json", "report.html", "fig3_tsne.svg", "fig4_examples.svg", "fig4_confidence.svg", "curves.svg"] {
        assert!(report.join(f).is_file(), "{f} missing");
    }
    // Figure 3: legend strip and two panels; Figure 4: a header and 4 examples of 5 bars; the
    // curves: a legend, 5 loss panels in 2 rows of 3, the val panel.
    for (png, size) in
        [("fig3_tsne", (1200, 600)), ("fig4_examples", (1000, 40 + 176 * 4)), ("fig4_confidence", (800, 520)), ("curves", (1200, 40 + 600 + 40 + 380))]
    {
        let img = image::open(report.join(format!("{png}.png"))).unwrap_or_else(|e| panic!("{png}.png: {e}"));
        assert_eq!((img.width(), img.height()), size, "{png}.png");
    }
    let html = std::fs::read_to_string(report.join("report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("+Fusion (MARNet)") && html.contains("ablate"));
    // The run card and the summary come first; the table's run card was recorded (no "not
    // recorded"), the paper's numbers are beside ours, p-values never print as 0.000.
    let (card, summary, results) = (html.find("id=\"run-card\"").unwrap(), html.find("id=\"summary\"").unwrap(), html.find("id=\"results\"").unwrap());
    assert!(card < summary && summary < results, "run card, then summary, then the tables");
    assert!(!html.contains("not recorded") && html.contains("paper: Vireo-Food172") && !html.contains("p=0.000"), "{}", &html[card..results]);
    for row in ["Baseline", "+EMA", "+MLP", "+CDR(MLP)", "+Fusion (MARNet)"] {
        assert_eq!(html[results..].matches(&format!("<td>{row}</td><td>")).count(), 2, "{row}: a row in the table and one in the run details");
    }
    // Synthetic caches have no images: the examples say so rather than show a broken one.
    assert_eq!(html.matches("class=\"nothumb\"").count(), 4);
    let stats: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(report.join("figures.json")).unwrap()).unwrap();
    assert_eq!(stats["tsne_points"], 5 * 40);
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
    for row in json["rows"].as_array().unwrap() {
        let top1 = row["test_top1"][0].as_f64().unwrap();
        assert!(top1 > 0.3, "{}: top1 {top1}", row["row"]);
    }
}

/// `--leave-one-out` on a cache whose ids fall in 3 groups: every group is test once, the
/// table has per-fold accuracies, CIs and paired tests, eval of a fold run uses its fold, and
/// the report's Figure 3 pools the folds' test images.
#[test]
fn leave_one_out_folds_statistics_and_report() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache").display().to_string();
    ok(&[&["synth", "--out", &cache, "--groups", "3"], SMALL].concat());
    let runs = tmp.path().join("lovo").display().to_string();
    let table =
        ok(&[&["ablate", "--cache", &cache, "--out", &runs, "--seeds", "2", "--leave-one-out", "--variants", "baseline,ema,marnet"], TINY_MODEL].concat());
    assert!(table.contains("Acc-1 per held-out group (g0 / g1 / g2)"), "{table}");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(Path::new(&runs).join("ablation.json")).unwrap()).unwrap();
    let rows = json["rows"].as_array().unwrap();
    for row in rows {
        assert_eq!(row["folds"], serde_json::json!(["fold-g0", "fold-g1", "fold-g2"]));
        // 3 folds x 2 seeds.
        assert_eq!(row["test_top1"].as_array().unwrap().len(), 6);
        let (lo, hi) = (row["ci95_top1"][0].as_f64().unwrap(), row["ci95_top1"][1].as_f64().unwrap());
        assert!(lo <= hi && lo > 0.0, "{row}");
    }
    // Paired tests: every row but the baseline against it, over all 1050 rows (each row of the
    // cache is test once).
    assert!(rows[0]["vs_baseline"].is_null());
    let p = &rows[2]["vs_baseline"];
    assert_eq!(p["n"], 1050, "{p}");
    assert!((0.0..=1.0).contains(&p["p_bootstrap"].as_f64().unwrap()));
    for fold in ["fold-g0", "fold-g1", "fold-g2"] {
        assert!(Path::new(&runs).join(fold).join("marnet/seed1/best").is_dir());
    }
    // eval of a fold run, without --cache: its own fold's 350 test rows, as recorded.
    let run = Path::new(&runs).join("fold-g1/marnet/seed0");
    let eval = ok(&["eval", "--model", &run.display().to_string()]);
    let metrics: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("best/metrics.json")).unwrap()).unwrap();
    let top1 = 100.0 * metrics["test"]["final_head"]["top1"].as_f64().unwrap();
    assert!(eval.contains(&format!("| test | 350 | {top1:.2} |")), "{eval} vs {top1:.2}");
    assert!(eval.contains("reconstruction: mean cos(x_CDR, x_s)"), "{eval}");

    let Some(font) = common::asset("npm/dejavu-fonts-ttf/ttf/DejaVuSans.ttf") else { return };
    ok(&["report", &runs, "--font", &font.display().to_string(), "--tsne-per-class", "10", "--examples", "2"]);
    let stats: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(Path::new(&runs).join("report/figures.json")).unwrap()).unwrap();
    // 5 classes x 10 test images from each of the 3 folds.
    assert_eq!(stats["tsne_points"], 5 * 10 * 3);
    // The per-held-out-group chart, and the folds with their test rows on the run card.
    let html = std::fs::read_to_string(Path::new(&runs).join("report/report.html")).unwrap();
    assert!(Path::new(&runs).join("report/folds.svg").is_file() && html.contains("id=\"folds\""));
    assert!(html.contains("3 folds: g0 (350 test), g1 (350 test), g2 (350 test)"), "{html}");
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
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing: no such folder; pass a run folder"), "{}", String::from_utf8_lossy(&out.stderr));
    // A leave-one-out table's runs are a folder further down: the hint names one that is there.
    let table = tmp.path().join("table");
    std::fs::create_dir_all(table.join("fold-phone/marnet/seed0/best")).unwrap();
    std::fs::write(table.join("ablation.json"), "{}").unwrap();
    let out = marnet(&["eval", "--model", &table.display().to_string()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("pass one of its runs, e.g. {}", table.join("fold-phone/marnet/seed0").display())), "{err}");
    let out = marnet(&["predict", "--model", &table.display().to_string(), "x.png"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("not a bundle; a run below it is {}: make a bundle of it with `marnet export", table.join("fold-phone/marnet/seed0").display())),
        "{err}"
    );
    let out = marnet(&["eval", "--model", &table.join("fold-phone").display().to_string()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("not a run (no config.json or best/ here); a run below it: {}", table.join("fold-phone/marnet/seed0").display())), "{err}");
}

/// Outputs never land among a user's own files, and options that would be ignored are refused:
/// `extract --out` the dataset's folder, `train --out` a folder of photos or a file, `train
/// --cache` the dataset instead of its cache, `--val-fraction` with a cache that has a val split.
#[test]
fn outputs_never_land_among_a_users_files() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, path) = (tmp.path(), |rel: &str| tmp.path().join(rel).display().to_string());
    std::fs::create_dir_all(dir.join("photos")).unwrap();
    let mut lines = String::new();
    for (i, label) in ["soup", "cake", "soup", "cake"].iter().enumerate() {
        image::RgbImage::from_pixel(20, 16, image::Rgb([40 * i as u8, 90, 200])).save(dir.join(format!("photos/{i}.png"))).unwrap();
        lines += &format!("{{\"image\": \"photos/{i}.png\", \"label\": \"{label}\", \"text\": \"salt, {label}\", \"split\": \"train\"}}\n");
    }
    std::fs::write(dir.join("manifest.jsonl"), lines).unwrap();
    let (vit, text) =
        (concat!("vit:", env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/vit-tiny"), concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/text-plain"));
    let fails = |args: &[&str], want: &str| {
        let out = marnet(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(want), "marnet {args:?}: expected `{want}` in:\n{err}");
    };
    let (manifest, root) = (path("manifest.jsonl"), path(""));
    let extract = ["extract", "--dataset", "manifest", "--root", &manifest, "--visual", vit, "--text", text, "--out"];
    fails(&[&extract[..], &[&root]].concat(), "this folder holds other things than a feature cache (`manifest.jsonl`, `photos`)");
    assert!(!dir.join("train.safetensors").exists() && !dir.join("extract.json").exists());
    fails(
        &["train", "--cache", &root, "--out", &path("run")],
        &format!("not a feature cache (no train.safetensors here); if this is your dataset, `marnet extract --dataset manifest --root {manifest}"),
    );
    ok(&["synth", "--out", &path("cache"), "--classes", "3", "--n-train", "30", "--n-val", "6", "--n-test", "0"]);
    fails(
        &["train", "--cache", &path("cache"), "--out", &path("photos")],
        "photos: this folder holds other things than a run (`0.png`, `1.png`, `2.png`, `3.png`)",
    );
    fails(&["train", "--cache", &path("cache"), "--out", &manifest], "manifest.jsonl: --out is a file; name a folder");
    fails(
        &["train", "--cache", &path("cache"), "--out", &path("run"), "--val-fraction", "0.3"],
        "has a `val` split of its own (6 rows), which is used as it is",
    );
    assert!(!dir.join("photos/best").exists() && !dir.join("run").exists());
    // A checkpoint left as `best.old` by a kill between a swap's two renames still opens.
    ok(&["train", "--cache", &path("cache"), "--out", &path("run"), "--epochs", "1"]);
    std::fs::rename(dir.join("run/best"), dir.join("run/best.old")).unwrap();
    assert!(ok(&["eval", "--model", &path("run/best"), "--split", "val"]).contains("| val |"));
}

/// A pseudo-random delay (clock nanoseconds), so kills land at different points run to run.
fn random_delay(max_ms: u64) -> std::time::Duration {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() as u64;
    std::time::Duration::from_millis(nanos % max_ms.max(1))
}

fn metrics_without_times(run: &Path) -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("best").join("metrics.json")).unwrap()).unwrap();
    for h in v["history"].as_array_mut().unwrap() {
        h["train_seconds"] = 0.into();
        h["val_seconds"] = 0.into();
    }
    v
}

/// Stops `marnet train` with `signal` at a random point after its first epoch, reruns it with
/// `--resume`, and checks that the final metrics equal those of an uninterrupted run. Returns
/// the interrupted process's exit status, stderr and the checkpoint's metrics at the stop.
fn interrupt_and_resume(signal: &str) -> (std::process::ExitStatus, String, serde_json::Value) {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache").display().to_string();
    ok(&["synth", "--out", &cache, "--classes", "8", "--dv", "32", "--ds", "32", "--n-train", "3000", "--n-val", "200", "--n-test", "300"]);
    let args = |out: &Path| -> Vec<String> {
        let out = out.display().to_string();
        ["train", "--cache", &cache, "--out", &out, "--epochs", "6", "--hidden", "256", "--d", "32", "--batch", "16", "--resume"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let straight = tmp.path().join("straight");
    ok(&args(&straight).iter().map(String::as_str).collect::<Vec<_>>());

    let stopped = tmp.path().join("stopped");
    let child = Command::new(env!("CARGO_BIN_EXE_marnet")).arg("--quiet").args(args(&stopped)).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let marker = stopped.join("last").join("metrics.json");
    let t0 = std::time::Instant::now();
    while !marker.exists() && t0.elapsed().as_secs() < 120 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    std::thread::sleep(random_delay(300));
    let status = Command::new("kill").args([signal, &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    // A kill between the two renames of a checkpoint swap leaves the previous one in `last.old`.
    let saved = if marker.exists() { marker.clone() } else { stopped.join("last.old").join("metrics.json") };
    let at_stop: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&saved).unwrap()).unwrap();
    assert!(at_stop["epochs_done"].as_u64().unwrap() < 6, "the run finished before it could be stopped");
    ok(&args(&stopped).iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(metrics_without_times(&straight), metrics_without_times(&stopped));
    (out.status, String::from_utf8_lossy(&out.stderr).into_owned(), at_stop)
}

/// SIGKILL at a random point: the last complete checkpoint survives, `--resume` ends where an
/// uninterrupted run ends.
#[test]
fn killed_training_resumes_to_the_same_result() {
    let (status, _, _) = interrupt_and_resume("-KILL");
    assert!(!status.success());
}

/// SIGINT (Ctrl-C): the run saves mid-epoch, exits with 130 and says how to continue; the
/// resumed run ends bit-identical to an uninterrupted one.
#[test]
fn ctrl_c_saves_mid_epoch_and_resumes_to_the_same_result() {
    let (status, stderr, at_stop) = interrupt_and_resume("-INT");
    assert_eq!(status.code(), Some(130), "stderr: {stderr}");
    assert!(stderr.contains("rerun with --resume"), "stderr: {stderr}");
    // Stopped inside an epoch (the first epoch's checkpoint was already there).
    assert!(at_stop["partial"]["steps_done"].as_u64().unwrap() >= 1, "{at_stop}");
}

/// A table's stderr holds the rows' summaries, not a line per epoch; `-v` adds the epoch lines
/// and `train` has them by default.
#[test]
fn tables_print_no_epoch_lines_unless_verbose() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |s: &str| tmp.path().join(s).display().to_string();
    let cache = p("cache");
    ok(&[&["synth", "--out", &cache], SMALL].concat());
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_marnet")).args(args).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stderr).unwrap()
    };
    let table = [&["--cache", &cache[..], "--seeds", "2", "--variants", "baseline,ema"][..], TINY_MODEL].concat();
    let quiet_table = run(&[&["ablate", "--out", &p("a")][..], &table].concat());
    assert!(!quiet_table.contains("epoch 1/3"), "{quiet_table}");
    assert!(quiet_table.contains("+EMA: test top1"), "{quiet_table}");
    let verbose = run(&[&["ablate", "-v", "--out", &p("b")][..], &table].concat());
    assert_eq!(verbose.matches("epoch 3/3").count(), 4, "a line per epoch of each run:\n{verbose}");
    let train = run(&[&["train", "--cache", &cache[..], "--out", &p("t")][..], TINY_MODEL].concat());
    assert_eq!(train.matches("epoch ").count(), 3, "{train}");
}

/// Bit-identical results at one thread count, in separate processes, at 1 and at 2 threads
/// (README: across thread counts they may differ in the last digits).
#[test]
fn same_seed_same_thread_count_is_bit_identical_across_processes() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |s: &str| tmp.path().join(s).display().to_string();
    let cache = p("cache");
    ok(&[&["synth", "--out", &cache], SMALL].concat());
    let train = |threads: &str, out: &str| {
        ok(&[&["--threads", threads, "train", "--cache", &cache, "--out", &p(out), "--variant", "marnet"][..], TINY_MODEL].concat());
        metrics_without_times(Path::new(&p(out)))
    };
    for threads in ["1", "2"] {
        let (a, b) = (train(threads, &format!("a{threads}")), train(threads, &format!("b{threads}")));
        assert_eq!(a, b, "{threads} thread(s): two processes differ");
    }
}
