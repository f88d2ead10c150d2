"""numpy in and out of a feature cache: values, dtypes, views, and errors that name the problem."""

import numpy as np
import pytest

import marnet
from conftest import arrays


def test_round_trip_keeps_values_and_converts_float64(tmp_path):
    a = arrays()
    cache = marnet.FeatureCache.from_numpy(train=a, test=dict(visual=a["visual"].astype(np.float64), label=a["label"].astype(np.int32)), classes=list("abcd"))
    cache.save(tmp_path / "cache")
    back = marnet.FeatureCache.load(tmp_path / "cache")
    train = back.split("train")
    assert train.visual.dtype == np.float32 and train.visual.shape == (40, 8)
    np.testing.assert_array_equal(train.visual, a["visual"])
    np.testing.assert_array_equal(train.text, a["text"])
    np.testing.assert_array_equal(train.label, a["label"])
    np.testing.assert_array_equal(back.split("test").visual, a["visual"])
    assert back.split("test").text is None and back.split("val") is None
    assert back.classes == list("abcd") and len(train) == 40 and train.ids[0] == "train/0"
    assert back.path == tmp_path / "cache"


def test_arrays_out_are_read_only_views_of_the_cache():
    a = arrays()
    cache = marnet.FeatureCache.from_numpy(train=a, classes=list("abcd"))
    v1, v2 = cache.split("train").visual, cache.split("train").visual
    assert np.shares_memory(v1, v2), "two reads of a split share the cache's memory"
    with pytest.raises(ValueError, match="read-only"):
        v1[0, 0] = 1.0
    del cache
    assert float(v2.sum()) == pytest.approx(float(a["visual"].sum()), rel=1e-5), "a view keeps the cache alive"


def test_wrong_dtypes_are_type_errors_and_wrong_shapes_value_errors():
    a = arrays()
    classes = list("abcd")
    with pytest.raises(TypeError, match=r"train: `visual` has dtype <U1, expected a 2-D float array"):
        marnet.FeatureCache.from_numpy(train=dict(a, visual=np.full((40, 8), "x")), classes=classes)
    with pytest.raises(TypeError, match="train: `label` has dtype float64, expected a 1-D integer array"):
        marnet.FeatureCache.from_numpy(train=dict(a, label=a["label"].astype(float)), classes=classes)
    with pytest.raises(ValueError, match=r"train: `visual` has shape \[320\], expected a 2-D"):
        marnet.FeatureCache.from_numpy(train=dict(a, visual=a["visual"].ravel()), classes=classes)


def test_bad_values_are_value_errors_naming_split_and_row():
    a = arrays()
    classes = list("abcd")
    with pytest.raises(ValueError, match="train: `visual` has 40 rows but `label` has 39"):
        marnet.FeatureCache.from_numpy(train=dict(a, label=a["label"][:-1]), classes=classes)
    with pytest.raises(ValueError, match=r"train: row 0 has label 9, not a class index 0 to 3 \(4 class names given\)"):
        marnet.FeatureCache.from_numpy(train=dict(a, label=np.full(40, 9)), classes=classes)
    bad = a["text"].copy()
    bad[7, 2] = np.nan
    with pytest.raises(ValueError, match="train: `text` row 7 has a non-finite value"):
        marnet.FeatureCache.from_numpy(train=dict(a, text=bad), classes=classes)
    with pytest.raises(ValueError, match="train: `text` is missing"):
        marnet.FeatureCache.from_numpy(train=dict(visual=a["visual"], label=a["label"]), classes=classes)
    with pytest.raises(ValueError, match="test: unknown key `labels`"):
        marnet.FeatureCache.from_numpy(train=a, test=dict(visual=a["visual"], labels=a["label"]), classes=classes)


def test_a_cache_from_numpy_is_read_by_the_command_line(tmp_path, cli):
    a = arrays()
    marnet.FeatureCache.from_numpy(train=dict(a, ids=[f"v{i % 2}/row{i}" for i in range(40)]), classes=list("abcd")).save(tmp_path / "cache")
    out = cli("train", "--cache", tmp_path / "cache", "--out", tmp_path / "run", "--epochs", "1", "--dim", "8", "--hidden", "16")
    assert "best epoch 1" in out


def test_duplicates_empty_splits_and_occupied_folders_are_refused(tmp_path):
    a = arrays()
    with pytest.raises(ValueError, match="classes: `a` is given twice"):
        marnet.FeatureCache.from_numpy(train=a, classes=list("abca"))
    with pytest.raises(ValueError, match="train: id `x` is given to rows 0 and 1"):
        marnet.FeatureCache.from_numpy(train=dict(a, ids=["x"] * 40), classes=list("abcd"))
    with pytest.raises(ValueError, match="test: no rows"):
        marnet.FeatureCache.from_numpy(train=a, test=dict(visual=a["visual"][:0], label=a["label"][:0]), classes=list("abcd"))
    with pytest.raises(ValueError, match=r"test: `visual` has 3 columns, train's has 8"):
        marnet.FeatureCache.from_numpy(train=a, test=dict(visual=a["visual"][:, :3], label=a["label"]), classes=list("abcd"))
    cache = marnet.FeatureCache.from_numpy(train=a, classes=list("abcd"))
    cache.save(tmp_path / "cache")
    with pytest.raises(ValueError, match="the folder is not empty"):
        cache.save(tmp_path / "cache")
    cache.save(tmp_path / "cache", force=True)
