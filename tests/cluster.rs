//! Work split over a cluster's job array, through the real binary, with the scheduler's
//! environment set by hand (scripts/slurm-check runs the same on a real Slurm): extraction
//! shards merge into the cache one extraction writes, byte for byte, and a broken set is
//! refused naming every problem; a table's tasks, then the same command without `--task`, give
//! the one-process table.

mod common;
use common::own::{TEXT, VIT};
use common::{asset, ok};
use std::path::Path;
use std::process::{Command, Output};

/// `marnet ARGS` with the environment variables `env` set (and Slurm's/Kubernetes' cleared).
fn marnet_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_marnet"));
    for var in
        ["SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_MAX", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_STEP", "JOB_COMPLETION_INDEX"]
    {
        cmd.env_remove(var);
    }
    cmd.args(args).envs(env.iter().copied()).output().unwrap()
}

fn ok_env(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = marnet_env(args, env);
    assert!(out.status.success(), "marnet {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap() + &String::from_utf8_lossy(&out.stderr)
}

fn err_env(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = marnet_env(args, env);
    assert!(!out.status.success(), "marnet {args:?} should fail");
    String::from_utf8(out.stderr).unwrap()
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn extraction_shards_of_a_slurm_array_merge_into_the_one_process_cache() {
    let Some(lite0) = asset("efficientnet-lite0") else { return };
    let assets = lite0.parent().unwrap().to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let p = |rel: &str| tmp.path().join(rel).display().to_string();
    let extract = ["extract", "--assets", assets, "--limit", "30", "--batch", "4", "--quiet"];
    ok_env(&[&extract[..], &["--out", &p("one")]].concat(), &[]);
    // `--array=1-3`: task ids 1..3 are slices 0..2.
    for id in ["1", "2", "3"] {
        let slurm = [("SLURM_ARRAY_TASK_ID", id), ("SLURM_ARRAY_TASK_MIN", "1"), ("SLURM_ARRAY_TASK_MAX", "3"), ("SLURM_ARRAY_TASK_COUNT", "3")];
        ok_env(&[&extract[..], &["--shard", "env", "--out", &p(&format!("shards/{id}"))]].concat(), &slurm);
    }
    let recorded: serde_json::Value = serde_json::from_slice(&read(&tmp.path().join("shards/1/extract.json"))).unwrap();
    assert_eq!(recorded["settings"]["shard"], "0/3", "the slice is recorded, not `env`");
    // Given in any order.
    let said = ok(&["merge-shards", "--out", &p("merged"), &p("shards/3"), &p("shards/1"), &p("shards/2")]);
    assert!(said.contains("merged 3 shards"), "{said}");
    for split in ["train", "val", "test"] {
        let (a, b) = (tmp.path().join(format!("one/{split}.safetensors")), tmp.path().join(format!("merged/{split}.safetensors")));
        assert!(read(&a) == read(&b), "{split}: the merged cache is not the one-process cache");
    }
    let (one, merged): (serde_json::Value, serde_json::Value) = (
        serde_json::from_slice(&read(&tmp.path().join("one/extract.json"))).unwrap(),
        serde_json::from_slice(&read(&tmp.path().join("merged/extract.json"))).unwrap(),
    );
    assert_eq!(one["settings"], merged["settings"], "the merged cache records the one extraction's settings");
    // The same merge again is reused, and so is the one extraction's cache; another cache there
    // is refused.
    for out in ["merged", "one"] {
        assert!(ok(&["merge-shards", "--out", &p(out), &p("shards/1"), &p("shards/2"), &p("shards/3")]).contains("reused"));
    }
    ok_env(&["extract", "--assets", assets, "--limit", "20", "--batch", "4", "--quiet", "--shard", "0/3", "--out", &p("shards/0-other")], &[]);
    let err = err_env(&["merge-shards", "--out", &p("shards/0-other"), &p("shards/1"), &p("shards/2"), &p("shards/3")], &[]);
    assert!(err.contains("another cache is already here, made with other settings (--limit 20 → 30, --shard 0/3 → unset); --force replaces it"), "{err}");

    // A broken set: shard 1 unfinished, shard 2 missing, a shard 0 of other settings, a
    // folder that is no shard. Every problem is named at once.
    std::fs::create_dir_all(p("shards/2.partial")).unwrap();
    std::fs::copy(p("shards/2/extract.json"), p("shards/2.partial/job.json")).unwrap();
    std::fs::remove_dir_all(p("shards/2")).unwrap();
    std::fs::remove_dir_all(p("shards/3")).unwrap();
    let err = err_env(&["merge-shards", "--out", &p("m2"), &p("shards/1"), &p("shards/2.partial"), &p("shards/0-other"), &p("one")], &[]);
    for want in [
        "shard 1/3 (array task 1 of --array=0-2, 2 of --array=1-3) is unfinished; rerun its extraction (the whole array, or `extract --shard 1/3`",
        "shard 2/3 (array task 2 of --array=0-2, 3 of --array=1-3) is missing",
        "--limit 30 → 20",
        "shard 0/3 given twice",
        "extracted without --shard",
    ] {
        assert!(err.contains(want), "`{want}` not in:\n{err}");
    }
    assert!(!tmp.path().join("m2").exists(), "nothing is written when the set is refused");
}

#[test]
fn shard_and_task_env_outside_an_array_or_stepped_is_refused_plainly() {
    let err = err_env(&["extract", "--out", "/nonexistent/x", "--shard", "env"], &[]);
    assert!(err.contains("not inside a Slurm array task") && err.contains("give i/n"), "{err}");
    let stepped = [
        ("SLURM_ARRAY_TASK_ID", "2"),
        ("SLURM_ARRAY_TASK_MIN", "0"),
        ("SLURM_ARRAY_TASK_MAX", "6"),
        ("SLURM_ARRAY_TASK_COUNT", "4"),
        ("SLURM_ARRAY_TASK_STEP", "2"),
    ];
    let err = err_env(&["ablate", "--cache", "/nonexistent", "--out", "/nonexistent/t", "--task", "env"], &stepped);
    assert!(err.contains("--task env") && err.contains("--array=0-3"), "{err}");
    let err = err_env(&["ablate", "--cache", "/nonexistent", "--out", "/nonexistent/t", "--task", "env"], &[("JOB_COMPLETION_INDEX", "1")]);
    assert!(err.contains("--task env/N"), "{err}");
}

#[test]
fn a_tables_tasks_then_the_same_command_give_the_one_process_table() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |rel: &str| tmp.path().join(rel).display().to_string();
    ok(&["synth", "--out", &p("cache"), "--classes", "4", "--groups", "3", "--n-train", "90", "--n-val", "0", "--n-test", "30", "--dv", "8", "--ds", "8"]);
    let table = |out: &str| -> Vec<String> {
        [
            "ablate",
            "--cache",
            &p("cache"),
            "--out",
            &p(out),
            "--leave-one-out",
            "--seeds",
            "2",
            "--epochs",
            "1",
            "--dim",
            "16",
            "--hidden",
            "32",
            "--time-embedding-dim",
            "8",
            "--batch",
            "8",
        ]
        .map(String::from)
        .to_vec()
    };
    let args = |v: &[String], extra: &[&str]| -> Vec<String> { v.iter().cloned().chain(extra.iter().map(|s| s.to_string())).collect() };
    let run = |v: Vec<String>, env: &[(&str, &str)]| ok_env(&v.iter().map(String::as_str).collect::<Vec<_>>(), env);
    let one = run(table("one"), &[]);
    assert!(one.contains("trained 30"), "3 folds x 5 rows x 2 seeds: {one}");
    // Task 0 of 3 as given, tasks 1 and 2 from a Kubernetes Indexed Job's index.
    let t0 = run(args(&table("arr"), &["--task", "0/3"]), &[]);
    assert!(t0.contains("task 0/3, 10 runs of 30: reused 0 finished runs, trained 10"), "{t0}");
    assert!(t0.contains("the same command without --task writes the table") && !tmp.path().join("arr/ablation.json").exists(), "a task writes no table: {t0}");
    for i in ["1", "2"] {
        run(args(&table("arr"), &["--task", "env/3"]), &[("JOB_COMPLETION_INDEX", i)]);
    }
    // A task run again (a resubmitted one) reuses its finished runs.
    assert!(run(args(&table("arr"), &["--task", "2/3"]), &[]).contains("reused 10 finished runs, trained 0"));
    let assembled = run(table("arr"), &[]);
    assert!(assembled.contains("reused 30 finished runs, trained 0"), "{assembled}");
    let rows = |dir: &str| -> Vec<serde_json::Value> {
        let t: serde_json::Value = serde_json::from_slice(&read(&tmp.path().join(dir).join("ablation.json"))).unwrap();
        t["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let keep = ["key", "folds", "test_top1", "test_top5", "val_top1", "cdr_head_top1", "test_cosine", "vs_baseline", "vs_ema"];
                serde_json::Value::Object(keep.iter().map(|k| (k.to_string(), r[*k].clone())).collect())
            })
            .collect()
    };
    assert_eq!(rows("arr"), rows("one"), "the assembled table is the one-process table");
    // Its run card says the runs were trained by earlier commands (the tasks), not by this one.
    let card = |dir: &str| serde_json::from_slice::<serde_json::Value>(&read(&tmp.path().join(dir).join("ablation.json"))).unwrap()["card"].clone();
    assert_eq!((card("arr")["runs"].as_u64(), card("arr")["reused_runs"].as_u64()), (Some(30), Some(30)));
    assert_eq!((card("one")["runs"].as_u64(), card("one")["reused_runs"].as_u64()), (Some(30), Some(0)));
    ok(&["report", &p("arr")]);
    let html = String::from_utf8(read(&tmp.path().join("arr/report/report.html"))).unwrap();
    assert!(html.contains("(30 of the 30 runs reused from earlier commands: the machine, threads and time above are the last command"), "the card");
    // `report` on a run inside it names the table's folder.
    let fold = std::fs::read_dir(tmp.path().join("arr")).unwrap().flatten().find(|e| e.file_name().to_string_lossy().starts_with("fold-")).unwrap().path();
    let err = err_env(&["report", &fold.join("marnet/seed0").display().to_string()], &[]);
    assert!(err.contains(&format!("this folder is inside the table in {}: `marnet report {}`", p("arr"), p("arr"))), "{err}");
}

/// `dir/m.jsonl` over 12 flat-colour images of 2 classes (8 train, 4 test); `texts[c]` is class
/// c's text.
fn manifest(dir: &Path, texts: [&str; 2]) -> String {
    let lines: Vec<String> = (0..12u8)
        .map(|i| {
            let (c, split) = (i % 2, if i < 8 { "train" } else { "test" });
            image::RgbImage::from_pixel(16, 16, image::Rgb([40 + 200 * c, 20 * i, 90])).save(dir.join(format!("{i}.png"))).unwrap();
            format!(r#"{{"image": "{i}.png", "label": "c{c}", "text": "{}", "split": "{split}"}}"#, texts[c as usize])
        })
        .collect();
    std::fs::write(dir.join("m.jsonl"), lines.join("\n")).unwrap();
    dir.join("m.jsonl").display().to_string()
}

#[test]
fn a_merge_is_the_one_extraction_and_refuses_shards_of_other_rows_or_a_wrong_out() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |rel: &str| tmp.path().join(rel).display().to_string();
    let m = manifest(tmp.path(), ["red and round", "green leaf"]);
    let extract = |out: &str, extra: &[&str]| {
        ok(&[&["extract", "--dataset", "manifest", "--root", &m, "--visual", VIT, "--text", TEXT, "--out", out][..], extra].concat())
    };
    extract(&p("one"), &[]);
    extract(&p("s/0"), &["--shard", "0/2"]);
    extract(&p("s/1"), &["--shard", "1/2"]);
    // More shards than the largest split (train, 8) has rows: refused in every task, also in
    // one whose slice has rows (19 of 20: a test row).
    let err = err_env(&["extract", "--dataset", "manifest", "--root", &m, "--visual", VIT, "--text", TEXT, "--out", &p("s/x"), "--shard", "19/20"], &[]);
    assert!(err.contains("--shard 19/20: more shards than rows") && err.contains("use at most 8 shards"), "{err}");
    // A leftover empty progress folder beside a finished shard is no problem.
    std::fs::create_dir_all(p("s/1.partial")).unwrap();
    ok(&["merge-shards", "--out", &p("merged"), &p("s/0"), &p("s/1"), &p("s/1.partial")]);
    for file in ["train.safetensors", "test.safetensors", "extract.json", "rows.json"] {
        assert!(read(&tmp.path().join("one").join(file)) == read(&tmp.path().join("merged").join(file)), "{file} differs from one extraction's");
    }
    // So extract into the merged cache with the same settings reuses it.
    let said = extract(&p("merged"), &[]);
    assert!(said.contains("reused the cache already in"), "{said}");

    // Shard 1 again from an edited manifest: other rows, same settings.
    manifest(tmp.path(), ["red and round", "a green leaf"]);
    extract(&p("s/1-edited"), &["--shard", "1/2"]);
    let err = err_env(&["merge-shards", "--out", &p("m2"), &p("s/0"), &p("s/1-edited")], &[]);
    assert!(err.contains("the shards come from 2 extractions, the second made from other rows of the dataset than the first:"), "{err}");
    assert!(err.contains("s/0 (extracted ") && err.contains("s/1-edited (extracted ") && err.contains("made before you last changed the dataset"), "{err}");
    // --out: one of the shards, or a folder holding a run.
    let err = err_env(&["merge-shards", "--force", "--out", &p("s/0"), &p("s/0"), &p("s/1")], &[]);
    assert!(err.contains("--out is (or holds) the shard"), "{err}");
    ok(&["train", "--cache", &p("merged"), "--out", &p("run"), "--epochs", "1", "--dim", "16", "--hidden", "32", "--batch", "8"]);
    let err = err_env(&["merge-shards", "--out", &p("run"), &p("s/0"), &p("s/1")], &[]);
    assert!(err.contains("holds other things than a feature cache"), "{err}");
}
