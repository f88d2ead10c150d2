//! Out-of-range option values stop `marnet` at parsing, before it reads or writes a file: exit
//! status 2 (clap's usage error) and a message naming the option and the allowed range.

mod common;

#[test]
fn train_refuses_out_of_range_values_before_touching_the_cache_or_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    for (flag, value, want) in [
        ("--epochs", "0", "invalid value '0' for '--epochs <EPOCHS>': must be at least 1"),
        ("--lr", "0", "invalid value '0' for '--lr <LR>': must be a finite number above 0"),
        ("--val-fraction", "1.5", "invalid value '1.5' for '--val-fraction <VAL_FRACTION>': must be strictly between 0 and 1"),
        ("--timesteps", "1", "invalid value '1' for '--timesteps <T>': must be at least 2"),
        ("--T", "1", "invalid value '1' for '--timesteps <T>': must be at least 2"),
        // Each flag in range, the schedule they make together not (betas scaled by 1000 / T).
        ("--timesteps", "10", "with --beta-end 0.02, use --timesteps 21 or more"),
        ("--beta-start", "0.05", "0 < --beta-start < --beta-end < 1; got 0.05 and 0.02"),
    ] {
        let out = common::marnet(&["train", "--cache", "no-such-cache", "--out", run.to_str().unwrap(), flag, value]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {err}");
        assert!(err.contains(want), "{flag} {value}: {err}");
        assert!(!run.exists(), "{flag} {value}: wrote {}", run.display());
    }
    // A model without diffusion does not use the schedule: nothing to refuse at parsing.
    let out = common::marnet(&["train", "--cache", "no-such-cache", "--out", run.to_str().unwrap(), "--variant", "ema", "--timesteps", "10"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.code() == Some(1) && err.contains("no-such-cache"), "{err}");
    // The tables' commands check the schedule before any row trains.
    for cmd in ["ablate", "compare"] {
        let out = common::marnet(&[cmd, "--cache", "no-such-cache", "--out", run.to_str().unwrap(), "--timesteps", "20"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{cmd}: {err}");
        assert!(err.contains("use --timesteps 21 or more") && !run.exists(), "{cmd}: {err}");
    }
}

/// Output into a pipe whose reader has gone (`marnet eval ... | grep -q`, `| head`) ends the
/// command quietly with status 0, as `cat` would; it used to panic with status 101 (the `cuda`
/// CI smoke test failed on it). The reader is closed before the start, so this is no race.
#[test]
fn a_closed_stdout_pipe_ends_the_command_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_marnet"))
        .args(["--quiet", "synth", "--out", cache.to_str().unwrap(), "--n-train", "40", "--n-val", "10", "--n-test", "20"])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(cache.join("test.safetensors").exists(), "synth did not finish {}", cache.display());
}
