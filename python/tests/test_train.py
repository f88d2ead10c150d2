"""Training, evaluation and tables from Python give the command line's numbers exactly."""

import signal
import subprocess
import sys
import time

import pytest

import marnet
from conftest import read_json, saved_cache

SMALL = dict(dim=16, hidden=32)


def test_train_takes_the_command_lines_options_by_keyword(tmp_path):
    cache = saved_cache(tmp_path / "cache")
    run = marnet.train(cache, tmp_path / "run", variant="baseline", epochs=2, progress=False, **SMALL)
    assert run.best_epoch in (1, 2) and 0.0 <= run.test["final_head"]["top1"] <= 1.0
    assert run.path.is_absolute() and repr(run).startswith(f"Run('{run.path}', best_epoch={run.best_epoch},")
    with pytest.raises(ValueError, match="^invalid value '0' for '--epochs <EPOCHS>': must be at least 1$"):
        marnet.train(cache, tmp_path / "run2", epochs=0)
    with pytest.raises(ValueError, match="^invalid value '-1' for '--epochs <EPOCHS>'"):
        marnet.train(cache, tmp_path / "run2", epochs=-1)
    with pytest.raises(ValueError, match="give one"):
        marnet.train(cache, tmp_path / "run", resume=True, force=True)
    with pytest.raises(ValueError, match="--epoch"):
        marnet.train(cache, tmp_path / "run2", epoch=3)
    with pytest.raises(RuntimeError, match="run"):
        marnet.train(cache, tmp_path / "run", variant="baseline", epochs=2, progress=False, **SMALL)


def test_an_unsaved_cache_is_refused_with_what_to_do(tmp_path):
    from conftest import arrays

    cache = marnet.FeatureCache.from_numpy(train=arrays(), classes=list("abcd"))
    with pytest.raises(ValueError, match=r"save it first \(cache.save\(folder\)\)"):
        marnet.train(cache, tmp_path / "run", epochs=1)


def test_a_head_trained_from_python_equals_the_command_lines(tmp_path, cli):
    """Same cache, seed and options: the same test metrics, bit for bit, and evaluate() = eval."""
    saved_cache(tmp_path / "cache", seed=3)
    ours = marnet.train(str(tmp_path / "cache"), tmp_path / "py", epochs=3, seed=5, progress=False, **SMALL)
    cli("train", "--cache", tmp_path / "cache", "--out", tmp_path / "cli", "--epochs", "3", "--dim", "16", "--hidden", "32", "--seed", "5")
    assert ours.test == read_json(tmp_path / "cli" / "best" / "metrics.json")["test"]
    cli("eval", "--model", tmp_path / "cli", "--json", tmp_path / "eval.json", "--steps", "5")
    theirs = read_json(tmp_path / "eval.json")
    mine = ours.evaluate(steps=5)
    assert mine["result"] == theirs["result"] and mine["split"] == theirs["split"] == "test"


def test_ablate_returns_the_table_the_command_line_writes(tmp_path, cli):
    saved_cache(tmp_path / "cache", seed=4)
    opts = dict(seeds=2, epochs=2, **SMALL)
    table = marnet.ablate(tmp_path / "cache", tmp_path / "py", variants=["baseline", "ema"], progress=False, **opts)
    assert [r["row"] for r in table.rows] == ["Baseline", "+EMA"]
    assert table.to_markdown().rstrip() == open(tmp_path / "py" / "ablation.md").read().rstrip()
    cli("ablate", "--cache", tmp_path / "cache", "--out", tmp_path / "cli", "--variants", "baseline,ema", "--seeds", "2", "--epochs", "2", "--dim", "16", "--hidden", "32")
    theirs = read_json(tmp_path / "cli" / "ablation.json")["rows"]
    assert [r["test_top1"] for r in table.rows] == [r["test_top1"] for r in theirs]
    with pytest.raises(ValueError, match="variants: unknown `fusion` \\(expected one of baseline, ema, mlp, cdr, marnet"):
        marnet.ablate(tmp_path / "cache", tmp_path / "x", variants=["fusion"])


def test_ctrl_c_stops_training_and_leaves_a_run_that_resumes(tmp_path):
    saved_cache(tmp_path / "cache", n=20000, dv=64, ds=64, classes=10)
    opts = dict(epochs=2, dim=64, hidden=128)
    # Ctrl-C as in an interactive session: a shell without job control starts background jobs
    # (a CI runner's, say) with SIGINT ignored, and Python keeps that disposition.
    child = (
        "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); import marnet; "
        f"marnet.train({str(tmp_path / 'cache')!r}, {str(tmp_path / 'run')!r}, progress=False, **{opts!r})"
    )
    p = subprocess.Popen([sys.executable, "-c", child], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (tmp_path / "run").exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)
    assert p.poll() is None, "training ended before it was interrupted: " + p.stderr.read()
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode != 0 and "KeyboardInterrupt" in err and "rerun with --resume" in err, err
    with pytest.raises(RuntimeError, match="interrupted run"):
        marnet.train(tmp_path / "cache", tmp_path / "run", progress=False, **opts)
    # Without epochs=, resume trains on to the run's own 2 (not the default 10).
    same = {k: v for k, v in opts.items() if k != "epochs"}
    resumed = marnet.train(tmp_path / "cache", tmp_path / "run", resume=True, progress=False, **same)
    straight = marnet.train(tmp_path / "cache", tmp_path / "straight", progress=False, **opts)
    assert resumed.test == straight.test


def test_extract_takes_a_manifest_or_a_dataset_and_names_a_missing_file(tmp_path):
    with pytest.raises(ValueError, match="not both"):
        marnet.extract(tmp_path / "data.jsonl", tmp_path / "cache", dataset="emoji-food")
    with pytest.raises(RuntimeError, match="data.jsonl"):
        marnet.extract(tmp_path / "data.jsonl", tmp_path / "cache", progress=False)
