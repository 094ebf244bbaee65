"""Decoded images kept in memory (``data.cache``): the same items bit for bit as decoding each read, the
``auto`` rule by the decoded size, the pre-flight on a cached split, the engine's ``data.cache`` key."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from balancedet.data import DetectionTransform, load_coco
from balancedet.data import dataset as dataset_module
from balancedet.data.dataset import checked_dataset, decoded_bytes, use_cache
from balancedet.data.images import read_image
from balancedet.data.records import PackedRecords, RecordSet, make_record
from balancedet.engine.config import load_config
from balancedet.engine.data import SeededView, epoch_loader, load_split
from balancedet.engine.train import data_line


def noisy(width: int, height: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def record_set(folder: Path, sizes: list[tuple[int, int]]) -> RecordSet:
    """One PNG or JPEG per size (alternating), one box each, two classes."""
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for k, (width, height) in enumerate(sizes):
        path = folder / (f"{k}.png" if k % 2 == 0 else f"{k}.jpg")
        Image.fromarray(noisy(width, height, k)).save(path)
        records.append(make_record(path, width, height, k + 1, [(2, 3, width - 4, height - 2)], [k % 2]))
    return RecordSet(records, ["a", "b"], [1, 2])


def test_a_cached_split_gives_the_items_of_decoding_each_read(tmp_path):
    records = record_set(tmp_path / "img", [(40, 30), (33, 47), (64, 20), (25, 25)])
    transforms = DetectionTransform(train=True, min_size=48, max_size=80, flip_prob=0.5)
    plain = checked_dataset(records, transforms, source="t.json", train=True, skip_bad=False, cache=False)
    cached = checked_dataset(records, transforms, source="t.json", train=True, skip_bad=False, cache=True)
    assert plain.pixels is None and cached.pixels is not None
    assert cached.cached_bytes == sum(3 * w * h for w, h in [(40, 30), (33, 47), (64, 20), (25, 25)])
    for k, record in enumerate(records.records):  # the cache holds what read_image gives
        assert torch.equal(cached.pixels[k], read_image(record.file, record.image_id))
    before = [p.clone() for p in cached.pixels]
    for epoch in range(3):  # the seeded flips differ by epoch: both flipped and unflipped items are compared
        for index in range(len(records.records)):
            a_image, a_target = SeededView(plain, 5)[(epoch, index)]
            b_image, b_target = SeededView(cached, 5)[(epoch, index)]
            assert torch.equal(a_image, b_image)
            assert torch.equal(a_target["boxes"], b_target["boxes"]) and a_target["size"] == b_target["size"]
    # the transform never wrote into the cached tensors
    assert all(torch.equal(p, q) for p, q in zip(cached.pixels, before, strict=True))


def test_auto_caches_a_split_that_fits_the_budget_and_the_free_memory(tmp_path, monkeypatch):
    records = record_set(tmp_path / "img", [(40, 30), (20, 10)]).records
    size = 3 * (40 * 30 + 20 * 10)
    assert decoded_bytes(records) == size
    monkeypatch.setattr(dataset_module, "available_memory", lambda: 100 * size)
    monkeypatch.setattr(dataset_module, "CACHE_MAX_BYTES", size)
    assert use_cache("auto", records)
    monkeypatch.setattr(dataset_module, "CACHE_MAX_BYTES", size - 1)
    assert not use_cache("auto", records)
    monkeypatch.setattr(dataset_module, "CACHE_MAX_BYTES", 10 * size)
    monkeypatch.setattr(dataset_module, "available_memory", lambda: 4 * size - 4)  # a quarter is below size
    assert not use_cache("auto", records)
    assert use_cache(True, records) and not use_cache(False, records)
    with pytest.raises(ValueError, match=r"data.cache must be auto, true or false, got 'ram'"):
        use_cache("ram", records)


def test_decoded_bytes_of_packed_records_from_their_size_arrays(tmp_path):
    import json

    folder = tmp_path / "images"
    records = record_set(folder, [(40, 30), (33, 47), (64, 20)])
    images = [
        {"id": r.image_id, "file_name": Path(r.file).name, "width": r.width, "height": r.height}
        for r in records.records
    ]
    annotations = [
        {"id": k + 1, "image_id": r.image_id, "category_id": 1, "bbox": [2, 2, 5, 5], "area": 25, "iscrowd": 0}
        for k, r in enumerate(records.records)
    ]
    (tmp_path / "t.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "a"}]})
    )
    loaded = load_coco(tmp_path / "t.json", folder).records
    assert isinstance(loaded, PackedRecords)
    assert decoded_bytes(loaded) == decoded_bytes(list(loaded)) == 3 * (40 * 30 + 33 * 47 + 64 * 20)


def test_a_bad_image_in_a_cached_split_is_found_before_use_whatever_its_size(tmp_path, monkeypatch):
    records = record_set(tmp_path / "img", [(40, 30), (33, 47), (64, 20)])
    bad = Path(records.records[1].file)
    bad.write_bytes(bad.read_bytes()[:100])
    transforms = DetectionTransform(train=True, min_size=None)
    monkeypatch.setattr(dataset_module, "PREFLIGHT_MAX_IMAGES", 1)  # uncached, this split is not checked first
    assert checked_dataset(records, transforms, source="t.json", train=True, skip_bad=False).replace_bad
    with pytest.raises(ValueError, match=rf"{bad}: image id 2"):
        checked_dataset(records, transforms, source="t.json", train=True, skip_bad=False, cache=True)
    with pytest.warns(UserWarning, match=r"t\.json: skipped 1"):
        kept = checked_dataset(records, transforms, source="t.json", train=True, skip_bad=True, cache=True)
    assert [r.image_id for r in kept.records] == [1, 3] and len(kept.pixels) == 2
    assert torch.equal(kept.pixels[1], read_image(records.records[2].file))


def test_the_engine_keeps_the_digits_decoded_and_workers_read_the_same_batches(tiny_data):
    config = load_config("retinanet_digits", [f"data.dataset={tiny_data}", "train.batch_size=2"])
    assert config["data"]["cache"] == "auto"
    cached = load_split(config, "train", True)
    assert cached.pixels is not None and cached.cached_bytes > 0
    off = load_config("retinanet_digits", [f"data.dataset={tiny_data}", "train.batch_size=2", "data.cache=false"])
    plain = load_split(off, "train", True)
    assert plain.pixels is None
    line = data_line(cached, load_split(config, "val", False))
    assert line.startswith(f"data: {len(cached)} training and ") and "kept in memory (training " in line
    assert "decoded as read" in data_line(plain, plain)
    # workers forked from this process read the cache; the batches are those of decoding in one process
    config["train"]["workers"] = 2
    forked = list(epoch_loader(cached, config, 0, 0))
    serial = list(epoch_loader(plain, off, 0, 0))
    assert len(forked) == len(serial) > 0
    for (a, ta), (b, tb) in zip(forked, serial, strict=True):
        assert torch.equal(a, b) and all(torch.equal(x["boxes"], y["boxes"]) for x, y in zip(ta, tb, strict=True))
