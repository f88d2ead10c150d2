"""Shared fixtures: small class-separable arrays, and the `marnet` binary to compare with."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

import marnet

ROOT = Path(__file__).resolve().parents[2]


def arrays(n=40, dv=8, ds=6, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, classes, n)
    visual = rng.normal(size=(n, dv)) + label[:, None]
    text = rng.normal(size=(n, ds)) + label[:, None]
    return dict(visual=visual.astype(np.float32), text=text.astype(np.float32), label=label)


def saved_cache(folder, seed=0, **kw):
    a = arrays(seed=seed, **kw)
    t = arrays(seed=seed + 100, **kw)
    cache = marnet.FeatureCache.from_numpy(train=a, test=dict(visual=t["visual"], label=t["label"]), classes=[f"c{i}" for i in range(kw.get("classes", 4))])
    cache.save(folder)
    return cache


@pytest.fixture(scope="session")
def cli():
    """Runs the command-line binary (MARNET, else the checkout's target/debug/marnet)."""
    binary = Path(os.environ.get("MARNET", ROOT / "target/debug/marnet"))
    if not binary.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"no marnet binary at {binary}: build it (cargo test --no-run) or set MARNET")
        pytest.skip(f"SKIPPED: no marnet binary at {binary} (set MARNET)")

    def run(*args):
        return subprocess.run([str(binary), "--quiet", *map(str, args)], check=True, capture_output=True, text=True).stdout

    return run


def read_json(path):
    with open(path) as f:
        return json.load(f)
