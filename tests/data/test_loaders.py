"""COCO, VOC and YOLO loaders: one scene read alike from the three formats, and malformed records."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from balancedet.data import BadRecordWarning, load_coco, load_voc, load_yolo
from tests.data.scene import (
    CLASS_NAMES,
    COCO_CATEGORY_IDS,
    IMAGES,
    OBJECTS,
    coco_dict,
    voc_xml,
    write_coco,
    write_voc,
    write_yolo,
)


def _expected(name: str) -> tuple[np.ndarray, np.ndarray]:
    objects = OBJECTS[name]
    boxes = np.array([box for box, _ in objects], dtype=np.float32).reshape(-1, 4)
    return boxes, np.array([label for _, label in objects], dtype=np.int64)


def _check_scene(record_set, image_ids):
    assert record_set.class_names == CLASS_NAMES
    assert [r.file.name for r in record_set.records] == [name for name, _, _ in IMAGES]
    assert [r.image_id for r in record_set.records] == image_ids
    for record, (name, width, height) in zip(record_set.records, IMAGES, strict=True):
        boxes, labels = _expected(name)
        assert (record.width, record.height) == (width, height)
        assert record.boxes.dtype == np.float32 and record.boxes.shape == (len(labels), 4)
        assert record.labels.dtype == np.int64
        np.testing.assert_allclose(record.boxes, boxes, atol=1e-3)
        np.testing.assert_array_equal(record.labels, labels)
        assert not record.ignore.any()


def test_the_three_formats_give_the_same_records(tmp_path):
    coco = load_coco(*write_coco(tmp_path / "coco"))
    voc = load_voc(*write_voc(tmp_path / "voc"))
    yolo = load_yolo(*write_yolo(tmp_path / "yolo"), CLASS_NAMES)
    _check_scene(coco, [10, 20, 30])
    _check_scene(voc, [1, 2, 3])
    _check_scene(yolo, [1, 2, 3])
    assert coco.category_ids == COCO_CATEGORY_IDS
    assert voc.category_ids == yolo.category_ids == [1, 2]
    assert len(coco.records[2]) == len(yolo.records[2]) == 0  # an image without boxes is legal


def test_coco_sorts_arbitrary_category_ids_and_keeps_empty_categories(tmp_path):
    data = coco_dict()
    data["categories"] = [{"id": 42, "name": "zebra"}] + data["categories"] + [{"id": 1, "name": "ant"}]
    rs = load_coco(*write_coco(tmp_path, data))
    assert rs.category_ids == [1, 3, 7, 42]
    assert rs.class_names == ["ant", "cat", "dog", "zebra"]
    np.testing.assert_array_equal(rs.records[0].labels, [1, 2])


def test_coco_crowd_boxes_are_ignore_regions_and_missing_sizes_read_from_the_header(tmp_path):
    data = coco_dict()
    data["annotations"][0]["iscrowd"] = 1
    data["annotations"][0]["area"] = 123.0
    del data["images"][1]["width"]
    rs = load_coco(*write_coco(tmp_path, data))
    np.testing.assert_array_equal(rs.records[0].iscrowd, [True, False])
    np.testing.assert_array_equal(rs.records[0].ignore, [True, False])
    assert rs.records[0].areas[0] == 123.0
    assert (rs.records[1].width, rs.records[1].height) == (40, 50)


def test_coco_boxes_slightly_outside_are_clipped(tmp_path):
    data = coco_dict()
    data["annotations"][1]["bbox"] = [30, 10, 35.5, 30]  # x2 = 65.5 > 64 by less than the tolerance
    rs = load_coco(*write_coco(tmp_path, data))
    np.testing.assert_allclose(rs.records[0].boxes[1], [30, 10, 64, 40])


def test_voc_difficult_flag_and_image_set_and_collected_names(tmp_path):
    annotations, images = write_voc(tmp_path)
    (annotations / "a.xml").write_text(voc_xml("a.png", 64, 48, [((3, 4, 20, 30), "cat")], difficult=True))
    image_set = tmp_path / "val.txt"
    image_set.write_text("c\na -1\n")
    rs = load_voc(annotations, images, image_set=image_set)
    assert [r.file.name for r in rs.records] == ["c.png", "a.png"]
    assert [r.image_id for r in rs.records] == [1, 2]
    assert rs.class_names == ["cat", "dog"]  # collected from every xml of the folder, sorted
    np.testing.assert_array_equal(rs.records[1].difficult, [True])
    np.testing.assert_array_equal(rs.records[1].ignore, [True])


def _mutated(path: list, value) -> dict:
    data = coco_dict()
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return data


A1, A2, A3 = "annotation id 1 (image id 10)", "annotation id 2 (image id 10)", "annotation id 3 (image id 20)"
COCO_CASES = [
    (["annotations", 0, "bbox"], [1, 2, -3, 4], f"{A1}: bbox [1, 2, -3, 4] has negative width"),
    (["annotations", 0, "bbox"], [1, 2, 3, -4], f"{A1}: bbox [1, 2, 3, -4] has negative height"),
    (["annotations", 0, "bbox"], [1, 2, 0, 4], f"{A1}: bbox [1, 2, 0, 4] has zero width"),
    (["annotations", 1, "bbox"], [1, "x", 3, 4], f'{A2}: bbox [1, "x", 3, 4] has a non-numeric'),
    (["annotations", 1, "bbox"], [1, 2, 3], f"{A2}: bbox [1, 2, 3] is not a list of 4"),
    (["annotations", 2, "bbox"], [30, 30, 50, 50], f"{A3}: bbox [30, 30, 50, 50] lies outside the 40x50 image"),
    (["annotations", 2, "category_id"], 5, f"{A3}: unknown category id 5"),
    (["annotations", 2, "image_id"], 99, "annotation id 3 (image id 99): unknown image id"),
    (["images", 1, "file_name"], "missing.png", "image id 20: image file"),
]


@pytest.mark.parametrize("path, value, message", COCO_CASES)
def test_coco_malformed_records_name_the_file_and_the_record(tmp_path, path, value, message):
    file, images = write_coco(tmp_path, _mutated(path, value))
    with pytest.raises(ValueError, match=re.escape(f"{file}: {message}")):
        load_coco(file, images)


def test_coco_skip_bad_drops_and_counts_with_one_warning(tmp_path):
    data = coco_dict()
    data["annotations"][0]["bbox"] = [1, 2, -3, 4]
    data["annotations"][2]["category_id"] = 5
    data["images"][2]["file_name"] = "missing.png"
    file, images = write_coco(tmp_path, data)
    with pytest.warns(BadRecordWarning, match="skipped 3 malformed record") as caught:
        rs = load_coco(file, images, skip_bad=True)
    assert len(caught) == 1
    assert len(rs.skipped) == 3
    assert [r.image_id for r in rs.records] == [10, 20]
    assert len(rs.records[0]) == 1 and len(rs.records[1]) == 0


def test_coco_file_level_errors(tmp_path):
    file, images = write_coco(tmp_path)
    file.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_coco(file, images)
    data = coco_dict()
    data["categories"].append({"id": 3, "name": "again"})
    file.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="category id 3 appears twice"):
        load_coco(file, images)
    with pytest.raises(ValueError, match="annotation file not found"):
        load_coco(tmp_path / "nope.json", images)


def _write_bad_voc(tmp_path, xml: str):
    annotations, images = write_voc(tmp_path)
    (annotations / "b.xml").write_text(xml)
    return annotations, images


BOX = "bndbox (xmin, ymin, xmax, ymax) ="
VOC_CASES = [
    (voc_xml("b.png", 40, 50, [((9, 5, 3, 20), "dog")]), f"object 0 ('dog'): {BOX} (9, 5, 3, 20) has negative width"),
    (voc_xml("b.png", 40, 50, [((1, 1, "x", 20), "dog")]), f"object 0 ('dog'): {BOX} (1, 1, x, 20) has a missing"),
    (voc_xml("b.png", 40, 50, [((1, 1, 9, 90), "dog")]), f"object 0 ('dog'): {BOX} (1, 1, 9, 90) lies outside"),
    (voc_xml("b.png", 40, 50, [((1, 1, 9, 9), "dog"), ((1, 1, 9, 9), "cow")]), "object 1 ('cow'): unknown class 'cow'"),
    (voc_xml("gone.png", 40, 50, []), "image"),
    ("<annotation><filename>b.png", "not valid XML"),
]


@pytest.mark.parametrize("xml, message", VOC_CASES)
def test_voc_malformed_records_name_the_file_and_the_record(tmp_path, xml, message):
    annotations, images = _write_bad_voc(tmp_path, xml)
    with pytest.raises(ValueError, match=re.escape(f"{annotations / 'b.xml'}: {message}")):
        load_voc(annotations, images, class_names=CLASS_NAMES)


def test_voc_skip_bad_keeps_the_good_objects(tmp_path):
    xml = voc_xml("b.png", 40, 50, [((9, 5, 3, 20), "dog"), ((2, 2, 10, 10), "cat"), ((1, 1, 9, 9), "cow")])
    annotations, images = _write_bad_voc(tmp_path, xml)
    with pytest.warns(BadRecordWarning, match="skipped 2 malformed"):
        rs = load_voc(annotations, images, class_names=CLASS_NAMES, skip_bad=True)
    assert len(rs.skipped) == 2
    np.testing.assert_allclose(rs.records[1].boxes, [[1, 1, 10, 10]])
    np.testing.assert_array_equal(rs.records[1].labels, [0])


YOLO_CASES = [
    ("0 0.5 0.5 0.2", "line 1 '0 0.5 0.5 0.2': expected 5 fields 'cls cx cy w h', got 4"),
    ("2 0.5 0.5 0.2 0.2", "line 1 '2 0.5 0.5 0.2 0.2': class index 2 is not an integer in 0..1"),
    ("0.5 0.5 0.5 0.2 0.2", "line 1 '0.5 0.5 0.5 0.2 0.2': class index 0.5 is not an integer"),
    ("1 0.5 abc 0.2 0.2", "line 1 '1 0.5 abc 0.2 0.2': has a non-numeric"),
    ("1 0.5 0.5 -0.2 0.2", "line 1 '1 0.5 0.5 -0.2 0.2': box has negative width"),
    ("1 0.5 0.5 0.2 0.2\n\n0 0.9 0.5 0.5 0.2", "line 3 '0 0.9 0.5 0.5 0.2': box lies outside the 40x50 image"),
]


@pytest.mark.parametrize("text, message", YOLO_CASES)
def test_yolo_malformed_lines_name_the_file_and_the_line(tmp_path, text, message):
    labels, images = write_yolo(tmp_path)
    (labels / "b.txt").write_text(text + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{labels / 'b.txt'}: {message}")):
        load_yolo(labels, images, CLASS_NAMES)


def test_yolo_skip_bad_counts_lines(tmp_path):
    labels, images = write_yolo(tmp_path)
    (labels / "b.txt").write_text("0 0.5 0.5 0.2\n1 0.5 0.5 0.5 0.5\n7 0.5 0.5 0.2 0.2\n")
    with pytest.warns(BadRecordWarning, match="skipped 2 malformed"):
        rs = load_yolo(labels, images, CLASS_NAMES, skip_bad=True)
    assert len(rs.skipped) == 2
    np.testing.assert_allclose(rs.records[1].boxes, [[10, 12.5, 30, 37.5]])


def test_yolo_reads_nested_folders_and_ignores_orphan_labels(tmp_path):
    labels, images = write_yolo(tmp_path)
    (images / "sub").mkdir()
    (images / "a.png").rename(images / "sub" / "a.png")
    (labels / "sub").mkdir()
    (labels / "a.txt").rename(labels / "sub" / "a.txt")
    (labels / "orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    rs = load_yolo(labels, images, CLASS_NAMES)
    assert [r.file.relative_to(images).as_posix() for r in rs.records] == ["b.png", "c.png", "sub/a.png"]
    assert len(rs.records[2]) == 2
