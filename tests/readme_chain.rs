//! The README's "Your own data" chain, run as it is written: the shell lines of the block after
//! the `own-data-chain` marker, in a folder holding a small dataset at the paths they name, with
//! this build's `marnet` first on `PATH` and the fetched encoders. If the README changes, this
//! runs the new lines; if they stop working, this fails.

mod common;
use std::path::Path;
use std::process::Command;

/// The shell lines of the fenced block after the marker.
fn readme_chain() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let after = readme.split_once("<!-- own-data-chain").expect("README has the own-data-chain marker").1;
    let block = after.split_once("```sh\n").unwrap().1.split_once("```").unwrap().0;
    block.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from).collect()
}

/// `my-dishes/`: 3 dishes x 2 cameras x 5 photos (a dish's colours and stripes, varied per photo),
/// a manifest (the phone's photos train, the camera's test; group = camera), and `new-photos/`.
fn my_dishes(root: &Path) {
    let dishes = [
        ("ramen", [220u8, 180, 90], "noodles, pork, egg, scallion"),
        ("pho", [200, 120, 60], "rice noodles, beef, basil"),
        ("curry", [90, 160, 60], "rice, potato, carrot"),
    ];
    let photo = |c: usize, rgb: [u8; 3], k: u32| {
        image::RgbImage::from_fn(72, 64, |x, y| {
            let stripe = ((x + y * (c as u32 + 1) + k * 3) / (4 + c as u32)).is_multiple_of(2);
            let n = ((x * 31 + y * 17 + k * 7) % 23) as u8;
            image::Rgb(rgb.map(|v| if stripe { v.saturating_sub(60) } else { v }.saturating_add(n)))
        })
    };
    let dir = root.join("my-dishes");
    let mut lines = vec![];
    for (g, group) in ["phone", "camera"].iter().enumerate() {
        std::fs::create_dir_all(dir.join("photos").join(group)).unwrap();
        for (c, (name, rgb, text)) in dishes.iter().enumerate() {
            for k in 0..5u32 {
                let rel = format!("photos/{group}/{name}-{k}.jpg");
                photo(c, *rgb, k + 10 * g as u32).save(dir.join(&rel)).unwrap();
                let split = if *group == "phone" { "train" } else { "test" };
                lines.push(format!(r#"{{"image": "{rel}", "label": "{name}", "text": "{text}", "split": "{split}", "group": "{group}"}}"#));
            }
        }
    }
    std::fs::write(dir.join("manifest.jsonl"), lines.join("\n") + "\n").unwrap();
    std::fs::create_dir_all(dir.join("new-photos")).unwrap();
    for (c, (_, rgb, _)) in dishes.iter().enumerate() {
        photo(c, *rgb, 99).save(dir.join(format!("new-photos/dish-{}.jpg", c + 1))).unwrap();
    }
}

#[test]
fn the_readme_own_data_chain_runs_as_written() {
    let Some(lite0) = common::asset("efficientnet-lite0") else { return };
    let Some(_) = common::asset("minilm") else { return };
    let lines = readme_chain();
    assert!(lines.len() >= 8 && lines[0].starts_with("marnet extract"), "{lines:?}");
    let tmp = tempfile::tempdir().unwrap();
    my_dishes(tmp.path());
    // The server's port: a free one instead of the README's 8080.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let script = format!("set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n{}\n", lines.join("\n").replace("8080", &port));
    let bin = Path::new(env!("CARGO_BIN_EXE_marnet")).parent().unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let out =
        Command::new("bash").args(["-c", &script]).current_dir(tmp.path()).env("PATH", path).env("MARNET_ASSETS", lite0.parent().unwrap()).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the README chain failed:\n{stdout}\n{stderr}");
    let dir = tmp.path().join("my-dishes");
    assert!(stdout.contains("3 classes; train 15 / val 0 / test 15 rows"), "{stdout}");
    assert!(stderr.contains("val: 10% of train, 2 rows, seeded"), "{stderr}");
    assert!(stdout.contains("| test | 15 |"), "eval's table: {stdout}");
    assert!(stdout.contains("Acc-1 per held-out group (camera / phone)"), "the leave-one-out table: {stdout}");
    assert!(dir.join("ablation/report/report.html").is_file());
    assert!(dir.join("bundle/bundle.json").is_file());
    for k in 1..=3 {
        assert!(stdout.contains(&format!("new-photos/dish-{k}.jpg")), "predict lists every new photo: {stdout}");
    }
    let answer = stdout.lines().last().unwrap();
    let json: serde_json::Value = serde_json::from_str(answer).unwrap_or_else(|e| panic!("{e}: {answer}"));
    assert_eq!(json["top"].as_array().map(Vec::len), Some(3), "{answer}");
}
