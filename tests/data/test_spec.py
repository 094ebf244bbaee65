"""Dataset YAML files: path resolution, the three formats, the built-in name, and clear errors."""

from __future__ import annotations

import re

import numpy as np
import pytest

from balancedet.data import load_data_spec
from balancedet.data import spec as spec_module
from tests.data.scene import CLASS_NAMES, write_coco, write_voc, write_yolo


def _yaml(folder, text: str):
    file = folder / "data.yaml"
    file.write_text(text)
    return file


def test_coco_yaml_with_a_root_path(tmp_path):
    write_coco(tmp_path / "root")
    file = _yaml(
        tmp_path,
        "format: coco\npath: root\n"
        "train: {images: images, annotations: annotations.json}\n"
        "val: {images: images, annotations: annotations.json}\n",
    )
    spec = load_data_spec(file)
    assert spec.format == "coco" and set(spec.splits) == {"train", "val"}
    assert spec.split("val").images == (tmp_path / "root" / "images").resolve()
    assert len(spec.load("train").records) == 3


def test_coco_names_must_match_the_categories(tmp_path):
    write_coco(tmp_path)
    file = _yaml(tmp_path, "format: coco\nval: {images: images, annotations: annotations.json}\nnames: [dog, cat]\n")
    with pytest.raises(ValueError, match=re.escape(f"{file}: names ['dog', 'cat'] differ")):
        load_data_spec(file).load("val")


def test_yolo_yaml_derives_the_labels_folder_and_reads_names_as_a_mapping(tmp_path):
    labels, images = write_yolo(tmp_path)
    file = _yaml(tmp_path, "format: yolo\ntrain: images\nnames: {0: cat, 1: dog}\n")
    spec = load_data_spec(tmp_path)  # a folder holding data.yaml
    assert spec.source == file.resolve()
    assert spec.names == CLASS_NAMES
    assert spec.split("train").annotations == labels.resolve()
    np.testing.assert_array_equal(spec.load("train").records[0].labels, [0, 1])


def test_voc_splits_share_the_collected_names(tmp_path):
    annotations, _ = write_voc(tmp_path)
    (tmp_path / "train.txt").write_text("b\n")  # only dogs
    (tmp_path / "val.txt").write_text("a\nc\n")
    _yaml(
        tmp_path,
        "format: voc\n"
        "train: {images: images, annotations: Annotations, image_set: train.txt}\n"
        "val: {images: images, annotations: Annotations, image_set: val.txt}\n",
    )
    spec = load_data_spec(tmp_path / "data.yaml")
    train, val = spec.load("train"), spec.load("val")
    assert train.class_names == val.class_names == CLASS_NAMES
    np.testing.assert_array_equal(train.records[0].labels, [1])


def test_the_builtin_name_prepares_digits(tmp_path, monkeypatch):
    write_coco(tmp_path)
    _yaml(tmp_path, "format: coco\nval: {images: images, annotations: annotations.json}\n")
    monkeypatch.setattr(spec_module, "prepare_digits", lambda *args, **kwargs: tmp_path)
    spec = load_data_spec()
    assert spec.name == "digits" and spec.format == "coco"


def test_digits_format_passes_options(tmp_path, monkeypatch):
    write_coco(tmp_path / "made")
    _yaml(tmp_path / "made", "format: coco\nval: {images: images, annotations: annotations.json}\n")
    seen = {}

    def fake_prepare(root, **options):
        seen.update(root=root, **options)
        return tmp_path / "made"

    monkeypatch.setattr(spec_module, "prepare_digits", fake_prepare)
    file = tmp_path / "lt.yaml"
    file.write_text("format: digits\npath: cache\noptions: {imbalance: 100, num_train: 50}\n")
    spec = load_data_spec(file)
    assert spec.name == "lt"
    assert seen == {"root": tmp_path / "cache", "imbalance": 100, "num_train": 50}


ERROR_CASES = [
    ("val: {images: images, annotations: annotations.json}\n", "missing key 'format'"),
    ("format: kitti\n", "unknown format 'kitti'"),
    ("format: coco\nnames: [a]\n", "no split given"),
    ("format: coco\nval: {annotations: annotations.json}\n", "val: missing key 'images'"),
    ("format: coco\nval: {images: images}\n", "val: missing key 'annotations'"),
    ("format: coco\nval: images\n", "val must be a mapping"),
    ("format: coco\nval: {images: pics, annotations: annotations.json}\n", "val.images: folder"),
    ("format: coco\nval: {images: images, annotations: nope.json}\n", "val.annotations: file"),
    ("format: coco\nval: {images: images, annotations: annotations.json, labels: x}\n", "val: unknown key(s) labels"),
    ("format: coco\nval: {images: images, annotations: annotations.json, image_set: a}\n", "for the voc format only"),
    ("format: yolo\nval: {images: images}\n", "missing key 'names'"),
    ("format: yolo\nval: {images: images}\nnames: {1: a}\n", "keys 0..0"),
    ("format: coco\npath: elsewhere\nval: {images: images, annotations: annotations.json}\n", "path: folder"),
    ("format: [unclosed\n", "not valid YAML"),
    ("- a list\n", "expected a mapping"),
    ("format: digits\noptions: {colour: red}\n", "bad digits options"),
]


@pytest.mark.parametrize("text, message", ERROR_CASES)
def test_yaml_errors_name_the_yaml(tmp_path, text, message):
    write_coco(tmp_path)
    file = _yaml(tmp_path, text)
    with pytest.raises(ValueError, match=re.escape(message)) as caught:
        load_data_spec(file)
    assert str(file.name) in str(caught.value)


def test_unknown_split_and_unknown_dataset(tmp_path):
    write_coco(tmp_path)
    file = _yaml(tmp_path, "format: coco\nval: {images: images, annotations: annotations.json}\n")
    with pytest.raises(ValueError, match=re.escape(f"{file.resolve()}: no split 'train' (it has val)")):
        load_data_spec(file).load("train")
    with pytest.raises(ValueError, match="no such YAML file or built-in dataset"):
        load_data_spec(tmp_path / "missing.yaml")
