//! A user's own dataset through the real binary, with tiny encoder fixtures (no fetched assets):
//! caches and runs that work from any folder and after a move, nothing finished replaced
//! unasked, a changed cache refused, a new test set matched by class name, bundles others can read.

mod common;
use common::own::{VIT, dataset, err_in, extract_args, marnet_in, ok_in};
use common::{marnet, ok};
use std::path::{Path, PathBuf};
use std::process::Command;

const TINY: &[&str] = &["--dim", "16", "--hidden", "32", "--time-embedding-dim", "8", "--epochs", "2", "--batch", "8"];

#[test]
fn extract_reuses_the_same_cache_refuses_another_and_replaces_it_with_force() {
    let tmp = tempfile::tempdir().unwrap();
    let manifest = dataset(tmp.path(), "camera");
    let args = extract_args("manifest.jsonl", "cache");
    let first = ok_in(tmp.path(), &args);
    assert!(first.contains("train 12 / val 0 / test 12 rows") && first.contains("wrote cache"), "{first}");
    let record: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(tmp.path().join("cache/extract.json")).unwrap()).unwrap();
    let settings = record["settings"].as_object().unwrap();
    for emoji_only in ["test_vendor", "val_fraction", "seed", "skin_tones", "out"] {
        assert!(!settings.contains_key(emoji_only), "a manifest cache records no `{emoji_only}`: {settings:?}");
    }
    assert_eq!(settings["root"], manifest.display().to_string(), "the manifest, absolute");
    let written = std::fs::metadata(tmp.path().join("cache/train.safetensors")).unwrap().modified().unwrap();
    // The same command from another folder, with absolute paths: the same job, reused.
    let (m, c) = (manifest.display().to_string(), tmp.path().join("cache").display().to_string());
    let again = ok_in(Path::new("/"), &extract_args(&m, &c));
    assert!(again.contains("reused the cache already in"), "{again}");
    assert_eq!(std::fs::metadata(tmp.path().join("cache/train.safetensors")).unwrap().modified().unwrap(), written);
    // Another text for one row: refused, saying why, until --force.
    let text = std::fs::read_to_string(&manifest).unwrap().replacen("tomato, chili, pepper", "tomato", 1);
    std::fs::write(&manifest, text).unwrap();
    let err = err_in(tmp.path(), &args);
    assert!(err.contains("a feature cache is already here, made from other rows of the dataset") && err.contains("--force"), "{err}");
    assert!(err.contains(&format!("train: 1 row changed (file, text, label or group): `photos/phone/red0.png` ({}:1)", manifest.display())), "{err}");
    assert_eq!(std::fs::metadata(tmp.path().join("cache/train.safetensors")).unwrap().modified().unwrap(), written, "refused: untouched");
    ok_in(tmp.path(), &[args.clone(), vec!["--force"]].concat());
    assert_ne!(std::fs::metadata(tmp.path().join("cache/train.safetensors")).unwrap().modified().unwrap(), written);
    // The dataset and its cache moved together, run from inside with `..`: the same rows, reused.
    let moved = tmp.path().join("moved");
    std::fs::create_dir_all(&moved).unwrap();
    for f in ["photos", "manifest.jsonl", "cache"] {
        std::fs::rename(tmp.path().join(f), moved.join(f)).unwrap();
    }
    let again = ok_in(&moved.join("photos"), &extract_args("../manifest.jsonl", "../cache"));
    assert!(again.contains("reused the cache already in"), "{again}");
    for f in ["photos", "manifest.jsonl", "cache"] {
        std::fs::rename(moved.join(f), tmp.path().join(f)).unwrap();
    }
    // Options of the emoji benchmarks are refused with a manifest, and --root with an emoji dataset.
    let err = err_in(tmp.path(), &[args.clone(), vec!["--val-fraction", "0.5"]].concat());
    assert!(err.contains("--val-fraction applies to the emoji datasets only") && err.contains("train --val-fraction"), "{err}");
    let err = err_in(tmp.path(), &["extract", "--root", "manifest.jsonl", "--out", "x"]);
    assert!(err.contains("--root is not used by --dataset emoji-food") && err.contains("--dataset manifest"), "{err}");
    // A cache is not written into a run folder, nor a run into a cache folder.
    std::fs::create_dir_all(tmp.path().join("a-run/best")).unwrap();
    let err = err_in(tmp.path(), &extract_args("manifest.jsonl", "a-run"));
    assert!(err.contains("this folder holds a training run or a bundle (`best`)"), "{err}");
    let err = err_in(tmp.path(), &[&["train", "--cache", "cache", "--out", "cache"][..], TINY].concat());
    assert!(err.contains("cache: this folder holds a feature cache") && err.contains("choose another --out for the run"), "{err}");
    // A folder that holds a cache marnet extract did not make is not replaced either.
    ok(&["synth", "--out", tmp.path().join("synth").to_str().unwrap(), "--classes", "3", "--n-train", "30", "--n-val", "0", "--n-test", "0"]);
    let err = err_in(tmp.path(), &extract_args("manifest.jsonl", "synth"));
    assert!(err.contains("not one `marnet extract` made"), "{err}");
}

/// The dataset in `dir` with image `broken` broken inside its data (its header decodes), and the
/// extraction (batch 1, so 8 rows a block) that stops there: the manifest, the arguments, stderr.
fn stopped_by_a_broken_image(dir: &Path, broken: &str) -> (PathBuf, Vec<&'static str>, String) {
    let manifest = dataset(dir, "camera");
    let png = std::fs::read(dir.join("photos/camera/red0.png")).unwrap();
    std::fs::write(dir.join(broken), common::broken_inside(&png)).unwrap();
    let args = [extract_args("manifest.jsonl", "cache"), vec!["--batch", "1"]].concat();
    let err = err_in(dir, &args);
    (manifest, args, err)
}

/// An extraction that saved blocks and then failed keeps them; a rerun after the manifest changed
/// names the changed rows with their lines, and `--force` starts over.
#[test]
fn a_changed_manifest_against_saved_progress_names_the_rows_that_changed() {
    let tmp = tempfile::tempdir().unwrap();
    // The 12th image (line 12) decodes its header but not its data: the first 8 rows are saved
    // (batch 1 x 8 batches a block), then the run stops.
    let (manifest, args, err) = stopped_by_a_broken_image(tmp.path(), "photos/phone/blue3.png");
    assert!(err.contains("blue3.png") && err.contains("manifest.jsonl:12"), "{err}");
    assert!(tmp.path().join("cache.partial/train-00000.safetensors").exists(), "the saved block is kept");
    // Fix the image, but also change line 2's text and drop line 3.
    image::RgbImage::from_pixel(24, 20, image::Rgb([40, 60, 200])).save(tmp.path().join("photos/phone/blue3.png")).unwrap();
    let lines: Vec<String> = std::fs::read_to_string(&manifest).unwrap().lines().map(String::from).collect();
    let mut edited = lines.clone();
    edited[1] = edited[1].replace("tomato, chili, pepper", "tomato");
    edited.remove(2);
    std::fs::write(&manifest, edited.join("\n")).unwrap();
    let err = err_in(tmp.path(), &args);
    assert!(err.contains("cache.partial: the saved progress of an unfinished extraction is from other rows of the dataset"), "{err}");
    // Line 2's text, and the repaired image's file (now on line 11).
    let m = manifest.display();
    let changed = format!("train: 2 rows changed (file, text, label or group): `photos/phone/red1.png` ({m}:2), `photos/phone/blue3.png` ({m}:11)");
    assert!(err.contains(&changed), "{err}");
    assert!(err.contains("train: 1 row removed: `photos/phone/red2.png`") && err.contains("--force"), "{err}");
    let out = ok_in(tmp.path(), &[args, vec!["--force"]].concat());
    assert!(out.contains("train 11 / val 0 / test 12 rows"), "{out}");
    assert!(!tmp.path().join("cache.partial").exists());
}

/// A rerun after the manifest changed keeps the saved blocks whose rows did not change, names
/// the rows that did, and writes the cache a fresh extraction of the edited manifest writes.
#[test]
fn a_rerun_after_a_fix_keeps_the_blocks_of_unchanged_rows() {
    let tmp = tempfile::tempdir().unwrap();
    // The last test image (line 24): train's blocks 0 (lines 1-8) and 1 (lines 9-12) and test's
    // block 0 (lines 13-20) are saved, then the run stops.
    let (manifest, args, _) = stopped_by_a_broken_image(tmp.path(), "photos/camera/blue3.png");
    // The broken image's line left out, and line 10's photo (train's block 1) replaced.
    let mut lines: Vec<String> = std::fs::read_to_string(&manifest).unwrap().lines().map(String::from).collect();
    lines.truncate(23);
    std::fs::write(&manifest, lines.join("\n")).unwrap();
    image::RgbImage::from_pixel(24, 20, image::Rgb([40, 60, 200])).save(tmp.path().join("photos/phone/blue1.png")).unwrap();
    let out = marnet_in(tmp.path(), &args);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    let m = manifest.display();
    for part in [
        "cache.partial: rows changed since this unfinished extraction was saved:",
        &format!("train: 1 row changed (file, text, label or group): `photos/phone/blue1.png` ({m}:10)"),
        "test: 1 row removed: `photos/camera/blue3.png`",
        "keeping the 2 saved blocks whose rows did not change (16 images) and encoding the rest",
    ] {
        assert!(said.contains(part), "`{part}` in:\n{said}");
    }
    // Had train's block 1 been kept, the cache would hold the replaced photo's features.
    ok_in(tmp.path(), &[extract_args("manifest.jsonl", "fresh"), vec!["--batch", "1"]].concat());
    for f in ["train.safetensors", "test.safetensors", "extract.json", "rows.json", "skipped.jsonl"] {
        let read = |dir: &str| std::fs::read(tmp.path().join(dir).join(f)).unwrap();
        assert!(read("cache") == read("fresh"), "{f} differs from a fresh extraction's");
    }
}

/// Extract, train and export with relative paths in one folder; move the whole folder; every
/// command still works from another folder. A run records its cache relative and absolute.
#[test]
fn a_run_moved_with_its_cache_works_from_any_folder_and_exports_its_own_encoder() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    std::fs::create_dir_all(&a).unwrap();
    dataset(&a, "camera");
    ok_in(&a, &extract_args("manifest.jsonl", "cache"));
    let trained = ok_in(&a, &[&["train", "--cache", "cache", "--out", "runs/r1"][..], TINY].concat());
    assert!(trained.contains("test top1"), "{trained}");
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(a.join("runs/r1/best/config.json")).unwrap()).unwrap();
    assert_eq!(config["cache"], "../../cache");
    assert_eq!(config["visual"], VIT, "the encoder the cache was extracted with, absolute");
    ok_in(&a, &[&["ablate", "--cache", "cache", "--out", "table", "--variants", "baseline,marnet", "--seeds", "1"][..], TINY].concat());
    let b = tmp.path().join("b");
    std::fs::rename(&a, &b).unwrap();
    let report = ok_in(Path::new("/"), &["report", b.join("table").to_str().unwrap()]);
    assert!(report.contains("report.html") && b.join("table/report/report.html").is_file(), "{report}");
    let html = std::fs::read_to_string(b.join("table/report/report.html")).unwrap();
    assert!(html.contains("<b>Small test set</b>: 12 test images, so one image is 8.3 points of top-1"), "the summary warns of 12 test images");
    let run = b.join("runs/r1");
    let eval = ok_in(Path::new("/"), &["eval", "--model", run.to_str().unwrap()]);
    assert!(eval.contains("| test | 12 |"), "{eval}");
    // Export without --visual: the run's own encoder; files readable by others.
    let bundle = b.join("bundle");
    let said = ok_in(Path::new("/"), &["export", "--model", run.to_str().unwrap(), "--out", bundle.to_str().unwrap()]);
    assert!(said.contains("3 classes, visual encoder") && said.contains("reverse steps") && !said.contains("SamplerConfig"), "{said}");
    use std::os::unix::fs::PermissionsExt;
    for f in ["model.safetensors", "config.json", "encoder/model.safetensors"] {
        let mode = std::fs::metadata(bundle.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o044, 0o044, "{f} is {mode:o}: others must be able to read it");
    }
    let mode = std::fs::metadata(run.join("best/model.safetensors")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode & 0o044, 0o044, "checkpoint weights are {mode:o}");
    // An existing bundle is replaced only with --force; another folder with files never.
    let err = err_in(Path::new("/"), &["export", "--model", run.to_str().unwrap(), "--out", bundle.to_str().unwrap()]);
    assert!(err.contains("a bundle is already here; pass --force"), "{err}");
    ok_in(Path::new("/"), &["export", "--model", run.to_str().unwrap(), "--out", bundle.to_str().unwrap(), "--force"]);
    let err = err_in(Path::new("/"), &["export", "--model", run.to_str().unwrap(), "--out", b.join("photos").to_str().unwrap(), "--force"]);
    assert!(err.contains("holds files that are not a bundle's (`camera`, `phone`)") || err.contains("(`phone`, `camera`)"), "{err}");
    std::fs::write(bundle.join("my-notes.txt"), "mine").unwrap();
    let err = err_in(Path::new("/"), &["export", "--model", run.to_str().unwrap(), "--out", bundle.to_str().unwrap(), "--force"]);
    assert!(err.contains("`my-notes.txt`") && bundle.join("my-notes.txt").exists(), "--force replaces a bundle, never other files: {err}");
    assert!(b.join("photos/phone/red0.png").exists());
    // Predict from another folder.
    let pred = ok_in(Path::new("/"), &["predict", "--model", bundle.to_str().unwrap(), b.join("photos/camera").to_str().unwrap()]);
    assert_eq!(pred.lines().count(), 12, "{pred}");
}

#[test]
fn train_refuses_a_run_already_there_unless_resume_or_force() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache").display().to_string();
    ok(&["synth", "--out", &cache, "--classes", "4", "--n-train", "80", "--n-val", "0", "--n-test", "40", "--dv", "8", "--ds", "8"]);
    let out = tmp.path().join("run").display().to_string();
    let args = [&["train", "--cache", &cache, "--out", &out][..], TINY].concat();
    let first = Command::new(env!("CARGO_BIN_EXE_marnet")).args(&args).output().unwrap();
    assert!(first.status.success());
    let said = String::from_utf8_lossy(&first.stderr);
    assert!(said.contains("val: 10% of train, 8 rows, seeded (--seed 0)"), "the carved validation split is reported: {said}");
    let metrics = std::fs::read(tmp.path().join("run/best/metrics.json")).unwrap();
    let err = String::from_utf8(marnet(&args).stderr).unwrap();
    assert!(err.contains("a finished run (2 epochs) is already here; --resume continues it, --force replaces it"), "{err}");
    // (the runs below use `marnet` with --quiet)
    assert_eq!(std::fs::read(tmp.path().join("run/best/metrics.json")).unwrap(), metrics, "untouched");
    // --resume on a finished run says there is nothing to do; with more epochs, that it trains on.
    let said = Command::new(env!("CARGO_BIN_EXE_marnet")).args([args.clone(), vec!["--resume"]].concat()).output().unwrap();
    assert!(String::from_utf8_lossy(&said.stderr).contains("the run already has 2 epochs (--epochs 2): nothing to train"), "{said:?}");
    assert_eq!(std::fs::read(tmp.path().join("run/best/metrics.json")).unwrap(), metrics, "untouched");
    let more = [&["train", "--cache", &cache, "--out", &out][..], &TINY[..6], &["--batch", "8", "--resume", "--epochs", "3"]].concat();
    let said = Command::new(env!("CARGO_BIN_EXE_marnet")).args(&more).output().unwrap();
    assert!(
        String::from_utf8_lossy(&said.stderr).contains("resuming")
            && String::from_utf8_lossy(&said.stderr).contains("training on to epoch 3 (--epochs 3; the run was started for 2)"),
        "{said:?}"
    );
    let err = String::from_utf8(marnet(&[more.clone(), vec!["--lr", "0.01"]].concat()).stderr).unwrap();
    assert!(err.contains("the saved run used other settings (--lr 0.001 → 0.01)") && err.contains("--force"), "{err}");
    // Each setting named by its flag, as typed (not its field: `d`, `schedule.steps`).
    let err = String::from_utf8(marnet(&[more.clone(), vec!["--act", "relu", "--timesteps", "60", "--variant", "ema"]].concat()).stderr).unwrap();
    assert!(err.contains("other settings (--activation silu → relu, --timesteps 50 → 60, --variant marnet → ema)"), "{err}");
    // A folder another process writes into is refused, whatever the flags.
    let held = marnet::lock::OutLock::acquire(Path::new(&out), "test").unwrap();
    let err = String::from_utf8(marnet(&[args.clone(), vec!["--force"]].concat()).stderr).unwrap();
    assert!(err.contains(&format!("another marnet is writing here (`test`, process {}", std::process::id())), "{err}");
    drop(held);
    ok(&[args.clone(), vec!["--force", "--seed", "1"]].concat());
    assert_ne!(std::fs::read(tmp.path().join("run/best/metrics.json")).unwrap(), metrics, "replaced");
}

/// A run's cache extracted again (other data in the same folder) is refused by `eval` and
/// `report` with both fingerprints; `--cache` takes any cache whose classes the model has, by name.
#[test]
fn eval_refuses_a_changed_cache_and_matches_another_by_class_name() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache").display().to_string();
    let synth = |seed: &str| {
        ok(&["synth", "--out", &cache, "--classes", "4", "--n-train", "80", "--n-val", "20", "--n-test", "40", "--dv", "8", "--ds", "8", "--seed", seed])
    };
    synth("0");
    let run = tmp.path().join("run").display().to_string();
    ok(&[&["train", "--cache", &cache, "--out", &run, "--variant", "ema"][..], TINY].concat());
    let preds = tmp.path().join("all.jsonl").display().to_string();
    ok(&["eval", "--model", &run, "--predictions", &preds]);
    synth("1");
    let err = String::from_utf8(marnet(&["eval", "--model", &run]).stderr).unwrap();
    assert!(err.contains("the feature cache changed since the model at") && err.contains("trained on: data ") && err.contains("now:        data "), "{err}");
    assert!(ok(&["eval", "--model", &run, "--cache", &cache]).contains("| test | 40 |"), "explicitly named: evaluated");
    synth("0");

    // A test-only cache with two of the classes, in another order: labels matched by name.
    let full = marnet::features::FeatureCache::open(Path::new(&cache)).unwrap();
    let test = full.test.unwrap();
    let rows: Vec<usize> = (0..test.len()).filter(|&i| test.label[i] == 1 || test.label[i] == 3).collect();
    let mut sub = test.subset(&rows);
    sub.label = sub.label.iter().map(|&l| if l == 3 { 0 } else { 1 }).collect();
    sub.meta.classes = vec![test.meta.classes[3].clone(), test.meta.classes[1].clone()];
    let other = tmp.path().join("other");
    marnet::features::write_splits(&other, &[("test", &sub)]).unwrap();
    let sub_preds = tmp.path().join("sub.jsonl").display().to_string();
    let said = ok(&["eval", "--model", &run, "--cache", other.to_str().unwrap(), "--predictions", &sub_preds]);
    assert!(said.contains(&format!("| test | {} |", rows.len())), "{said}");
    let read = |p: &str| -> Vec<serde_json::Value> { std::fs::read_to_string(p).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect() };
    let (all, some) = (read(&preds), read(&sub_preds));
    for (k, &i) in rows.iter().enumerate() {
        assert_eq!((&some[k]["id"], &some[k]["label"], &some[k]["class"]), (&all[i]["id"], &all[i]["label"], &all[i]["class"]), "row {i}");
    }
    // A class the model does not have is named.
    sub.meta.classes[0] = "durian".into();
    marnet::features::write_splits(&other, &[("test", &sub)]).unwrap();
    let err = String::from_utf8(marnet(&["eval", "--model", &run, "--cache", other.to_str().unwrap()]).stderr).unwrap();
    assert!(err.contains("1 class with rows here is not among the model's 4 classes") && err.contains("`durian`"), "{err}");
}

/// `--leave-one-out` on rows of a single group says where groups come from and what to do.
#[test]
fn leave_one_out_over_one_group_says_how_to_add_groups() {
    let tmp = tempfile::tempdir().unwrap();
    let manifest = dataset(tmp.path(), "camera");
    let one_group = std::fs::read_to_string(&manifest).unwrap().replace(r#""group": "camera""#, r#""group": "phone""#);
    std::fs::write(&manifest, one_group).unwrap();
    ok_in(tmp.path(), &extract_args("manifest.jsonl", "cache"));
    let err = err_in(tmp.path(), &[&["ablate", "--cache", "cache", "--out", "table", "--leave-one-out", "--seeds", "1"][..], TINY].concat());
    assert!(err.contains("--leave-one-out needs rows in at least two groups") && err.contains("the manifest's `group` field"), "{err}");
    assert!(err.contains("are in group `phone` (from"), "the group as text: {err}");
    assert!(!tmp.path().join("table").exists(), "nothing trained");
}

/// A class whose rows are all in one group has no training rows when that group is held out:
/// said plainly, for every fold, before anything trains.
#[test]
fn leave_one_out_names_classes_found_in_one_group_only() {
    let tmp = tempfile::tempdir().unwrap();
    let manifest = dataset(tmp.path(), "camera");
    // `green` only in `phone`, `blue` only in `camera`.
    let text = std::fs::read_to_string(&manifest).unwrap();
    // (`blue` trains from `camera`, so that the cache itself has training rows of every class.)
    let kept: Vec<String> = text
        .lines()
        .filter(|l| !l.contains("photos/camera/green") && !l.contains("photos/phone/blue"))
        .map(|l| if l.contains("photos/camera/blue") { l.replace(r#""split": "test""#, r#""split": "train""#) } else { l.to_string() })
        .collect();
    std::fs::write(&manifest, kept.join("\n") + "\n").unwrap();
    ok_in(tmp.path(), &extract_args("manifest.jsonl", "cache"));
    let err = err_in(tmp.path(), &[&["ablate", "--cache", "cache", "--out", "table", "--leave-one-out", "--seeds", "1"][..], TINY].concat());
    for (class, group) in [("green", "phone"), ("blue", "camera")] {
        let said = format!(
            "class `{class}` has rows only in group `{group}`: with `{group}` held out it has no training rows; add images of it from other groups, or leave out --leave-one-out"
        );
        assert!(err.contains(&said), "{err}");
    }
    assert!(!tmp.path().join("table").exists(), "nothing trained");
}

/// `eval` on a leave-one-out fold run says which fold it evaluated; `--cache` with a new test set
/// takes that cache as it is (no fold of it), test rows only.
#[test]
fn eval_of_a_fold_run_names_its_fold_and_takes_a_new_test_set_as_it_is() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache").display().to_string();
    ok(&["synth", "--out", &cache, "--classes", "3", "--n-train", "60", "--n-val", "0", "--n-test", "30", "--dv", "8", "--ds", "8", "--groups", "2"]);
    let table = tmp.path().join("table").display().to_string();
    ok(&[&["ablate", "--cache", &cache, "--out", &table, "--leave-one-out", "--variants", "ema", "--seeds", "1"][..], TINY].concat());
    let run = tmp.path().join("table/fold-g0/ema/seed0").display().to_string();
    let said = ok(&["eval", "--model", &run]);
    assert!(said.contains(&format!("fold-g0 of {cache} (the run's leave-one-group-out fold)")), "{said}");
    let test = marnet::features::FeatureCache::open(Path::new(&cache)).unwrap().test.unwrap();
    let new = tmp.path().join("new-test");
    marnet::features::write_splits(&new, &[("test", &test)]).unwrap();
    let said = ok(&["eval", "--model", &run, "--cache", new.to_str().unwrap()]);
    assert!(said.contains("| test | 30 |") && !said.contains("fold-g0 of"), "{said}");
    // Exported, it says that it never trained on its fold's group (before this cache's missing
    // encoder stops it).
    let out = marnet(&["export", "--model", &run, "--out", tmp.path().join("bundle").to_str().unwrap()]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("is a run of one leave-one-out fold: it never trained on group `g0`'s images"), "{said}");
}

/// A second new user's findings: a diverged run is refused before anything is saved (and leaves
/// no folder), a table needs a test split before it trains, folders of one kind are not taken
/// for another, and `--predictions` names the true class.
#[test]
fn diverged_runs_missing_test_splits_and_wrong_folders_are_refused_up_front() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache").display().to_string();
    ok(&["synth", "--out", &cache, "--classes", "4", "--n-train", "80", "--n-val", "20", "--n-test", "0", "--dv", "8", "--ds", "8"]);
    let run = tmp.path().join("run").display().to_string();
    let tiny_model = &TINY[..6];
    let err =
        String::from_utf8(marnet(&[&["train", "--cache", &cache, "--out", &run, "--lr", "1000", "--epochs", "2"][..], tiny_model].concat()).stderr).unwrap();
    assert!(err.contains("training diverged in epoch 1: the model's outputs are not finite") && err.contains("nothing of this epoch was saved"), "{err}");
    assert!(!Path::new(&run).exists(), "a failed run leaves no empty folder");
    let table = tmp.path().join("table");
    let err = String::from_utf8(marnet(&[&["ablate", "--cache", &cache, "--out", table.to_str().unwrap(), "--seeds", "1"][..], TINY].concat()).stderr).unwrap();
    assert!(err.contains("the cache has no test split") && !table.join("baseline").exists(), "checked before training: {err}");
    ok(&[&["train", "--cache", &cache, "--out", &run][..], TINY].concat());
    // One kind of folder given for another.
    let err = String::from_utf8(marnet(&["eval", "--model", &cache]).stderr).unwrap();
    assert!(err.contains("this is a feature cache, not a run"), "{err}");
    let err = String::from_utf8(marnet(&[&["train", "--cache", &run, "--out", "x"][..], TINY].concat()).stderr).unwrap();
    assert!(err.contains("this is a training run, not a feature cache"), "{err}");
    let manifest = tmp.path().join("m.jsonl");
    std::fs::write(&manifest, "{}").unwrap();
    let err = String::from_utf8(marnet(&[&["train", "--cache", manifest.to_str().unwrap(), "--out", "x"][..], TINY].concat()).stderr).unwrap();
    assert!(err.contains("a manifest becomes a cache with `marnet extract --dataset manifest"), "{err}");
    let err = String::from_utf8(marnet(&["ablate", "--cache", &cache, "--out", "t", "--fold-val", "group"]).stderr).unwrap();
    assert!(err.contains("--leave-one-out"), "--fold-val needs --leave-one-out: {err}");
    // --predictions names the true class beside its index.
    let preds = tmp.path().join("p.jsonl");
    ok(&["eval", "--model", &run, "--split", "val", "--predictions", preds.to_str().unwrap()]);
    let first: serde_json::Value = serde_json::from_str(std::fs::read_to_string(&preds).unwrap().lines().next().unwrap()).unwrap();
    let classes = marnet::features::FeatureCache::open(Path::new(&cache)).unwrap().train.meta.classes;
    assert_eq!(first["label_class"], classes[first["label"].as_u64().unwrap() as usize], "{first}");
}

/// `--leave-one-out` needs every row's text; `--skip-bad` that loses a class's every training
/// image stops rather than writing a cache that cannot learn it.
#[test]
fn leave_one_out_needs_all_texts_and_skip_bad_keeps_every_class() {
    let tmp = tempfile::tempdir().unwrap();
    let manifest = dataset(tmp.path(), "camera");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let first_test = text.lines().position(|l| l.contains(r#""split": "test""#)).unwrap();
    let lines: Vec<String> =
        text.lines().enumerate().map(|(i, l)| if i == first_test { l.replace(r#""text": "tomato, chili, pepper", "#, "") } else { l.to_string() }).collect();
    std::fs::write(&manifest, lines.join("\n")).unwrap();
    ok_in(tmp.path(), &extract_args("manifest.jsonl", "cache"));
    let err = err_in(tmp.path(), &[&["ablate", "--cache", "cache", "--out", "t", "--leave-one-out", "--seeds", "1"][..], TINY].concat());
    assert!(err.contains("--leave-one-out trains on every group in turn, so every row needs its text, but the test split has none"), "{err}");
    // Every training image of `blue` broken: --skip-bad stops, naming the class.
    for i in 0..4 {
        std::fs::write(tmp.path().join(format!("photos/phone/blue{i}.png")), b"\x89PNG\r\n\x1a\n broken").unwrap();
    }
    let err = err_in(tmp.path(), &[extract_args("manifest.jsonl", "c2"), vec!["--skip-bad"]].concat());
    assert!(err.contains("no training image of class `blue` could be read"), "{err}");
}
