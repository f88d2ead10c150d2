"""extract, a bundle's Predictor and the command line's `predict` on real emoji images (needs the
assets of scripts/fetch-assets: under CI=true their absence fails the test)."""

import json
import os

import numpy as np
import pytest

import marnet
from conftest import ROOT

ASSETS = ROOT / "assets"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, cli):
    if not (ASSETS / "npm" / "emoji-datasource-apple").exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"no assets in {ASSETS}: run scripts/fetch-assets")
        pytest.skip(f"SKIPPED: no assets in {ASSETS} (scripts/fetch-assets)")
    d = tmp_path_factory.mktemp("predict")
    cache = marnet.extract(None, d / "cache", assets=ASSETS, limit=24, batch=8, progress=False)
    assert cache.path == d / "cache" and len(cache.split("train")) > 0
    again = marnet.extract(None, d / "cache", assets=ASSETS, limit=24, batch=8, progress=False)
    np.testing.assert_array_equal(again.split("test").visual, cache.split("test").visual)
    marnet.train(cache, d / "run", epochs=2, dim=64, hidden=128, progress=False)
    cli("export", "--model", d / "run", "--out", d / "bundle", "--assets", ASSETS)
    apple = ASSETS / "npm/emoji-datasource-apple/img/apple/64"
    images = [apple / i.removeprefix("apple/") for i in cache.split("test").ids]
    return d / "bundle", images, cache


def test_predict_images_equals_the_command_line(bundle, cli, tmp_path):
    path, images, _ = bundle
    p = marnet.Predictor.load(path)
    ours = p.predict_images(images + [tmp_path / "missing.png"], top_k=3, progress=False)
    listing = tmp_path / "images.txt"
    listing.write_text("\n".join(map(str, images)))
    theirs = [json.loads(line) for line in cli("predict", "--model", path, "--format", "jsonl", "--top-k", "3", listing).splitlines()]
    assert ours[:-1] == theirs
    assert "error" in ours[-1] and len(ours[0]["top"]) == 3 and ours[0]["top"][0]["class"] in p.classes


def test_predict_features_gives_probabilities_that_do_not_depend_on_the_batch(bundle):
    path, _, cache = bundle
    p = marnet.Predictor.load(path)
    x = cache.split("test").visual
    probs = p.predict_features(x)
    assert probs.shape == (len(x), len(p.classes)) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(p.predict_features(x[1:2].astype(np.float64)), probs[1:2], rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match=r"this bundle's heads take \[N, 1280\]"):
        p.predict_features(np.zeros((2, 5), np.float32))
    with pytest.raises(RuntimeError, match="is a training run, not a bundle"):
        marnet.Predictor.load(path.parent / "run")
