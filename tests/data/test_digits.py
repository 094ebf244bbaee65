"""The built-in digits scenes: determinism, cache, atomic write, disjoint sources, long tail."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from balancedet.data import DIGITS_CLASSES, DigitsOptions, class_probabilities, load_data_spec, prepare_digits
from balancedet.data import digits as digits_module
from balancedet.data.digits import default_cache_root, digit_indices

SMALL = {"num_train": 6, "num_val": 3, "image_size": 96}


@pytest.fixture(scope="module")
def long_tail(tmp_path_factory) -> Path:
    """160 training scenes with imbalance 20 (val balanced), generated once for the module."""
    root = tmp_path_factory.mktemp("digits")
    return prepare_digits(root, workers=1, seed=1, num_train=160, num_val=40, imbalance=20.0)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_json_and_pixels_whatever_the_workers(tmp_path):
    first = prepare_digits(tmp_path / "a", workers=1, seed=3, **SMALL)
    second = prepare_digits(tmp_path / "b", workers=2, seed=3, **SMALL)
    assert first.name == second.name
    assert _files(first) == _files(second)
    other = prepare_digits(tmp_path / "a", workers=1, seed=4, **SMALL)
    assert other != first
    assert (other / "train.json").read_bytes() != (first / "train.json").read_bytes()
    assert (other / "images/train/000000.png").read_bytes() != (first / "images/train/000000.png").read_bytes()


def test_cache_is_reused(tmp_path, monkeypatch):
    folder = prepare_digits(tmp_path, workers=1, **SMALL)

    def fail(*args, **kwargs):
        raise AssertionError("the cache should have been reused")

    monkeypatch.setattr(digits_module, "_write_split", fail)
    assert prepare_digits(tmp_path, workers=1, **SMALL) == folder


def test_a_failed_run_leaves_no_half_cache(tmp_path, monkeypatch):
    real = digits_module._write_split
    calls = []

    def crash_on_val(folder, split, *args):
        calls.append(split)
        if split == "val":
            raise KeyboardInterrupt
        return real(folder, split, *args)

    monkeypatch.setattr(digits_module, "_write_split", crash_on_val)
    with pytest.raises(KeyboardInterrupt):
        prepare_digits(tmp_path, workers=1, **SMALL)
    assert calls == ["train", "val"]
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(digits_module, "_write_split", real)
    # a temporary folder left by a killed run is neither reused nor in the way
    stale = tmp_path / f".digits-{DigitsOptions(**SMALL).key()}.tmp-1-dead"
    (stale / "images").mkdir(parents=True)
    folder = prepare_digits(tmp_path, workers=1, **SMALL)
    assert (folder / "data.yaml").is_file() and (folder / "val.json").is_file()


def test_cache_root_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("BALANCEDET_CACHE", str(tmp_path))
    assert default_cache_root() == tmp_path
    monkeypatch.delenv("BALANCEDET_CACHE")
    assert default_cache_root() == Path.home() / ".cache" / "balancedet"


def test_train_and_val_scans_are_disjoint():
    targets = load_digits().target
    split = digit_indices(0, 0.25, targets)
    train = np.concatenate(split["train"])
    val = np.concatenate(split["val"])
    assert np.intersect1d(train, val).size == 0
    assert np.union1d(train, val).size == len(targets) == 1797
    for digit in range(10):
        assert (targets[split["train"][digit]] == digit).all() and (targets[split["val"][digit]] == digit).all()
        assert len(split["val"][digit]) >= 40
    assert not np.array_equal(np.concatenate(digit_indices(1, 0.25, targets)["val"]), val)


def test_class_probabilities_follow_the_exponential_profile():
    p = class_probabilities(100.0)
    assert p.sum() == pytest.approx(1.0)
    assert p[0] / p[-1] == pytest.approx(100.0)
    assert (np.diff(p) < 0).all()
    np.testing.assert_allclose(p[1:] / p[:-1], 100.0 ** (-1 / 9))
    np.testing.assert_allclose(class_probabilities(1.0), np.full(10, 0.1))


def _counts(folder: Path, split: str) -> np.ndarray:
    data = json.loads((folder / f"{split}.json").read_text())
    return np.bincount([a["category_id"] - 1 for a in data["annotations"]], minlength=10)


def test_long_tail_option_changes_class_frequencies(long_tail):
    train, val = _counts(long_tail, "train"), _counts(long_tail, "val")
    expected = class_probabilities(20.0) * train.sum()
    # 160 scenes, ~550 digits: the head is ~20 times the tail, and the profile is followed
    assert train[0] > 8 * max(train[9], 1)
    assert train[:5].sum() > 3 * train[5:].sum()
    assert np.abs(train - expected).max() < 5 * np.sqrt(expected.max())
    assert val.min() > 0 and val.max() < 3 * val.min()  # validation stays balanced


def test_scenes_are_well_formed(long_tail):
    data = json.loads((long_tail / "train.json").read_text())
    assert [c["name"] for c in data["categories"]] == DIGITS_CLASSES
    assert [c["id"] for c in data["categories"]] == list(range(1, 11))
    per_image: dict[int, list] = {}
    for a in data["annotations"]:
        per_image.setdefault(a["image_id"], []).append(a["bbox"])
    counts = [len(per_image.get(i["id"], [])) for i in data["images"]]
    assert max(counts) <= 6 and np.mean(counts) > 2.5
    heights = []
    for boxes in per_image.values():
        xyxy = np.array([[x, y, x + w, y + h] for x, y, w, h in boxes])
        assert (xyxy >= 0).all() and (xyxy <= 128).all()
        heights += list(xyxy[:, 3] - xyxy[:, 1])
        tl = np.maximum(xyxy[:, None, :2], xyxy[None, :, :2])
        br = np.minimum(xyxy[:, None, 2:], xyxy[None, :, 2:])
        inter = np.clip(br - tl, 0, None).prod(-1)
        area = (xyxy[:, 2:] - xyxy[:, :2]).prod(-1)
        iou = inter / (area[:, None] + area[None, :] - inter)
        np.fill_diagonal(iou, 0)
        assert iou.max() < 0.3
    assert 10 <= min(heights) and max(heights) <= 58


def test_generated_folder_is_a_dataset_spec(long_tail):
    spec = load_data_spec(long_tail)
    assert spec.format == "coco" and spec.names == DIGITS_CLASSES
    records = spec.load("val")
    assert len(records.records) == 40 and records.category_ids == list(range(1, 11))


def test_options_from_yaml_hash_like_the_defaults():
    assert DigitsOptions(objects=[1, 6], object_size=[14, 56], imbalance=1).key() == DigitsOptions().key()
    assert DigitsOptions(imbalance=10).key() != DigitsOptions().key()


def test_bad_options_are_refused(tmp_path):
    with pytest.raises(ValueError, match="objects"):
        DigitsOptions(objects=(3, 1))
    with pytest.raises(ValueError, match="imbalance"):
        DigitsOptions(imbalance=0.5)
    with pytest.raises(TypeError):
        prepare_digits(tmp_path, colour="red")
