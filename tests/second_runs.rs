//! What a user's second command does with the folders of the first (a new user's trial found
//! these): `train --resume` goes on to the run's own epochs, a table refuses a folder that holds
//! other things, and `eval` says what a train split or a handful of classes make of its numbers.

mod common;
use common::own::{dataset, err_in, extract_args, marnet_in};
use common::{marnet, ok};
use std::process::Command;

const TINY: &[&str] = &["--dim", "16", "--hidden", "32", "--time-embedding-dim", "8", "--batch", "8"];

/// `marnet` without `--quiet`: its stderr.
fn said(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_marnet")).args(args).output().unwrap();
    assert!(out.status.success(), "marnet {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn resume_without_epochs_keeps_the_runs_own_and_an_empty_folder_says_it_starts_anew() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache").display().to_string();
    ok(&["synth", "--out", &cache, "--classes", "4", "--n-train", "80", "--n-val", "0", "--n-test", "40", "--dv", "8", "--ds", "8"]);
    let out = tmp.path().join("run").display().to_string();
    let run = [&["train", "--cache", &cache, "--out", &out][..], TINY].concat();
    ok(&[run.clone(), vec!["--epochs", "2"]].concat());
    let metrics = std::fs::read(tmp.path().join("run/last/metrics.json")).unwrap();
    // Without --epochs, the run's 2 (not the default 10: that would train 8 more epochs).
    let err = said(&[run.clone(), vec!["--resume"]].concat());
    assert!(err.contains("the run already has 2 epochs (--epochs 2): nothing to train"), "{err}");
    assert_eq!(std::fs::read(tmp.path().join("run/last/metrics.json")).unwrap(), metrics, "untouched");
    // Another cache: the refusal says it is the data, and where the run's came from.
    let other = tmp.path().join("other").display().to_string();
    ok(&["synth", "--out", &other, "--classes", "4", "--n-train", "80", "--n-val", "0", "--n-test", "30", "--dv", "8", "--ds", "8"]);
    let res = marnet(&[&["train", "--cache", &other, "--out", &out, "--resume"][..], TINY].concat());
    let err = String::from_utf8_lossy(&res.stderr);
    let trained_on = std::fs::canonicalize(&cache).unwrap();
    assert!(err.contains(&format!("cannot resume: the saved run was made from other data (it was trained on the cache at {};", trained_on.display())), "{err}");
    let fresh = tmp.path().join("fresh").display().to_string();
    let err = said(&["train", "--cache", &cache, "--out", &fresh, "--resume", "--epochs", "1", "--dim", "16", "--hidden", "32", "--time-embedding-dim", "8"]);
    assert!(err.contains(&format!("{fresh}: no run here to resume: training a new one")), "{err}");

    // eval on the run's own train split, which held out its validation rows; 4 classes.
    let report = ok(&["eval", "--model", &out, "--split", "train"]);
    assert!(report.contains("note: these 80 rows include the 8 the run held out for validation (--val-fraction 0.1)"), "{report}");
    assert!(report.contains("note: Acc-5 is 100% with 4 classes, whatever the model does"), "{report}");
    assert!(!ok(&["eval", "--model", &out]).contains("held out"), "the test split holds none of them");
}

#[test]
fn a_table_refuses_a_folder_that_holds_other_things_before_it_trains() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("data/cache").display().to_string();
    ok(&["synth", "--out", &cache, "--classes", "3", "--n-train", "30", "--n-val", "9", "--n-test", "9", "--dv", "8", "--ds", "8"]);
    std::fs::write(tmp.path().join("data/manifest.jsonl"), "{}\n").unwrap();
    std::fs::create_dir_all(tmp.path().join("data/images")).unwrap();
    let data = tmp.path().join("data").display().to_string();
    let args = [&["ablate", "--cache", &cache, "--out", &data, "--seeds", "1", "--epochs", "1", "--variants", "baseline"][..], TINY].concat();
    let out = marnet(&args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("holds other things than tables and their runs (`images`, `manifest.jsonl`)"), "{err}");
    assert!(!tmp.path().join("data/baseline").exists(), "nothing trained");
    // A folder of its own takes the table, and the table again on a rerun.
    let table = tmp.path().join("table").display().to_string();
    let args = [&["ablate", "--cache", &cache, "--out", &table, "--seeds", "1", "--epochs", "1", "--variants", "baseline"][..], TINY].concat();
    ok(&args);
    ok(&args);
}

/// `demo` (its `--dataset` in any case) refuses a folder of other things before it extracts.
#[test]
fn demo_refuses_a_folder_of_other_things_before_extracting() {
    if common::asset("npm").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("notes.txt"), "mine").unwrap();
    let out = tmp.path().display().to_string();
    let res = marnet(&["demo", "--dataset", "Emoji-Food", "--out", &out, "--seeds", "1", "--epochs", "1"]);
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success() && err.contains("holds other things than tables and their runs (`notes.txt`)"), "{err}");
    assert!(!tmp.path().join("cache").exists(), "nothing extracted");
}

/// `--dataset` and named values in any case; a negative number reaches the option's own range check.
#[test]
fn option_values_as_people_type_them() {
    let out = marnet(&["extract", "--dataset", "Manifest", "--out", "nowhere"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--dataset manifest needs --root"), "{err}");
    let out = marnet(&["train", "--cache", "no-such-cache", "--out", "o", "--variant", "MARNet", "--fusion", "Concat"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.code() == Some(1) && err.contains("no-such-cache"), "parsed: {err}");
    let out = marnet(&["train", "--cache", "c", "--out", "o", "--lr", "-1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.code() == Some(2) && err.contains("'--lr <LR>': must be a finite number above 0"), "{err}");
}

/// A test split without text (as "text is optional there" invites) is fine for train and eval;
/// `extract` says at once that `--leave-one-out` will need it, where the rows come in groups.
#[test]
fn extract_says_when_a_whole_split_lacks_the_text_leave_one_out_needs() {
    let tmp = tempfile::tempdir().unwrap();
    let manifest = dataset(tmp.path(), "camera");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let without_test_text = |l: &str| {
        let mut row: serde_json::Map<String, serde_json::Value> = serde_json::from_str(l).unwrap();
        if row["split"] == "test" {
            row.remove("text");
        }
        serde_json::to_string(&row).unwrap()
    };
    let lines: Vec<String> = text.lines().map(without_test_text).collect();
    std::fs::write(&manifest, lines.join("\n")).unwrap();
    let out = marnet_in(tmp.path(), &extract_args("manifest.jsonl", "cache"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(
            "the test rows have no text: train and eval need none there, but --leave-one-out trains on every group in turn and needs every row's text"
        ),
        "{err}"
    );
}

/// `--limit n` takes the first n rows of each split in the manifest's order: a training split left
/// with one class is refused, one left without some classes noted.
#[test]
fn a_limit_that_leaves_training_one_class_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    dataset(tmp.path(), "camera"); // training rows: 4 red, 4 green, 4 blue
    let err = err_in(tmp.path(), &[extract_args("manifest.jsonl", "c3"), vec!["--limit", "3"]].concat());
    assert!(err.contains("--limit 3: the training rows it keeps (the first 3) are all of class `red`"), "{err}");
    assert!(!tmp.path().join("c3").exists());
    let out = marnet_in(tmp.path(), &[extract_args("manifest.jsonl", "c6"), vec!["--limit", "6"]].concat());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("note: --limit 6 keeps the training rows of 2 of the 3 classes"), "{err}");
}
