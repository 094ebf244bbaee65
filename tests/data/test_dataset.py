"""DetectionDataset targets, build_dataset from a YAML, and the COCO ground truth for the evaluator."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import torch
from faster_coco_eval import COCO, COCOeval_faster
from torch.utils.data import DataLoader

from balancedet.data import (
    DetectionCollate,
    DetectionDataset,
    DetectionTransform,
    build_dataset,
    coco_ground_truth,
    instance_counts,
    load_coco,
    load_voc,
    load_yolo,
)
from tests.data.scene import CLASS_NAMES, COCO_CATEGORY_IDS, coco_dict, write_coco, write_voc, write_yolo


@pytest.fixture
def crowd_scene(tmp_path):
    data = coco_dict()
    data["annotations"][0]["iscrowd"] = 1
    return load_coco(*write_coco(tmp_path, data))


def test_targets_hold_resized_boxes_ignore_regions_and_sizes(crowd_scene):
    dataset = DetectionDataset.from_record_set(crowd_scene, DetectionTransform(train=False, min_size=96, max_size=200))
    assert len(dataset) == 3 and dataset.num_classes == 2
    image, target = dataset[0]  # a.png, 64x48 -> 128x96
    assert image.shape == (3, 96, 128) and image.dtype == torch.float32
    assert target["image_id"] == 10
    assert target["orig_size"] == (48, 64) and target["size"] == (96, 128)
    assert target["scale"] == (2.0, 2.0)
    torch.testing.assert_close(target["boxes"], torch.tensor([[60.0, 20.0, 120.0, 80.0]]))
    torch.testing.assert_close(target["labels"], torch.tensor([1]))
    torch.testing.assert_close(target["ignore_boxes"], torch.tensor([[4.0, 6.0, 40.0, 60.0]]))
    _, empty = dataset[2]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].dtype == torch.int64


def test_an_image_whose_size_disagrees_with_its_record_is_an_error(crowd_scene):
    record = dataclasses.replace(crowd_scene.records[1], width=41)
    dataset = DetectionDataset([record], CLASS_NAMES, COCO_CATEGORY_IDS)
    message = f"{record.file}: image id 20: the image is 40x50 but its annotation says 41x50"
    with pytest.raises(ValueError, match=re.escape(message)):
        dataset[0]


def test_build_dataset_from_a_yaml_and_batch_it(tmp_path):
    write_coco(tmp_path)
    (tmp_path / "data.yaml").write_text("format: coco\ntrain: {images: images, annotations: annotations.json}\n")
    dataset = build_dataset(tmp_path / "data.yaml", "train", train=True, min_size=64, max_size=128)
    loader = DataLoader(dataset, batch_size=3, collate_fn=DetectionCollate(128))
    images, targets = next(iter(loader))
    assert images.shape == (3, 3, 128, 128)
    assert [t["image_id"] for t in targets] == [10, 20, 30]
    assert np.array_equal(instance_counts(dataset.records, 2), [1, 2])


def test_ground_truth_loads_in_faster_coco_eval_and_scores_itself_perfectly(crowd_scene):
    gt_dict = coco_ground_truth(crowd_scene.records, crowd_scene.category_ids, crowd_scene.class_names)
    gt = COCO(gt_dict)
    assert sorted(gt.getImgIds()) == [10, 20, 30]
    assert sorted(gt.getCatIds()) == COCO_CATEGORY_IDS
    crowd = [a for a in gt_dict["annotations"] if a["iscrowd"]]
    assert len(crowd) == 1 and crowd[0]["bbox"] == [2.0, 3.0, 18.0, 27.0]
    detections = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
        for a in gt_dict["annotations"]
        if not a["iscrowd"]
    ]
    evaluator = COCOeval_faster(gt, gt.loadRes(detections), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(1.0)


def test_ground_truth_is_the_same_whatever_the_source_format(tmp_path):
    def strip(gt):
        return [(a["bbox"], a["area"], a["iscrowd"]) for a in gt["annotations"]]

    coco = load_coco(*write_coco(tmp_path / "coco"))
    voc = load_voc(*write_voc(tmp_path / "voc"))
    yolo = load_yolo(*write_yolo(tmp_path / "yolo"), CLASS_NAMES)
    reference = strip(coco_ground_truth(coco.records, coco.category_ids))
    for other in (voc, yolo):
        gt = coco_ground_truth(other.records, other.category_ids, other.class_names)
        assert [c["id"] for c in gt["categories"]] == [1, 2]
        for (box, area, crowd), (ref_box, ref_area, ref_crowd) in zip(strip(gt), reference, strict=True):
            np.testing.assert_allclose(box, ref_box, atol=1e-3)
            assert area == pytest.approx(ref_area, abs=0.1) and crowd == ref_crowd
