from pathlib import Path

import numpy as np
import pytest
import torch

from balancedet.analysis.dataset_stats import (
    SIZE_EDGES,
    anchor_shapes,
    assignment_statistics,
    box_shapes,
    boxes_per_image,
    class_frequencies,
    resized_boxes,
)
from balancedet.assign import MaxIoUAssigner
from balancedet.data import ImageRecord, RecordSet
from balancedet.models.batching import pad_targets
from balancedet.models.priors import PriorGenerator


def test_class_counts_order_and_long_tail_ratio():
    out = class_frequencies(np.array([0, 0, 0, 1, 2, 2]), ["a", "b", "c", "d"])
    assert out["counts"] == {"a": 3, "b": 1, "c": 2, "d": 0}
    assert out["order"] == ["a", "c", "b", "d"]
    assert out["max_min_ratio"] == 3.0 and out["absent"] == ["d"]


def test_boxes_per_image():
    out = boxes_per_image(np.array([0, 2, 2, 5]))
    assert (out["mean"], out["median"], out["max"], out["without_boxes"]) == (2.25, 2.0, 5, 1)
    assert out["histogram"] == [1, 0, 2, 0, 0, 1]


def test_box_sizes_and_ratios():
    # sqrt(w h): 10 and 20; h / w: 1 and 4
    out = box_shapes(np.array([[0, 0, 10, 10], [5, 5, 15, 45]], dtype=float))
    assert out["size"]["p50"] == pytest.approx(15.0) and out["ratio"]["p50"] == pytest.approx(2.5)
    histogram = out["size"]["histogram"]
    assert sum(histogram) == 2
    assert histogram[np.searchsorted(SIZE_EDGES, 10.0, side="right") - 1] == 1
    assert histogram[np.searchsorted(SIZE_EDGES, 20.0, side="right") - 1] == 1


def record(boxes, labels, ignore=None, width=100, height=50):
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    n = len(boxes)
    ignore = np.zeros(n, bool) if ignore is None else np.asarray(ignore)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return ImageRecord(Path("x.png"), width, height, 1, boxes, np.asarray(labels), ignore, np.zeros(n, bool), area)


def test_boxes_follow_the_resize_and_ignored_or_tiny_ones_go():
    # 100 x 50 with min_size 25: scale 0.5; the crowd box and the box 1 px wide after the resize are dropped
    boxes = [[10, 10, 30, 50], [0, 0, 40, 40], [50, 10, 51.5, 40]]
    records = RecordSet([record(boxes, [0, 1, 2], ignore=[False, True, False])], ["a", "b", "c"], [1, 2, 3])
    ((size, resized, labels),) = resized_boxes(records, 25, None)
    assert size == (25, 50)
    assert resized.tolist() == [[5.0, 5.0, 15.0, 25.0]] and labels.tolist() == [0]


def test_coverage_and_levels_on_anchors_where_the_answer_is_known():
    # a 64 x 64 canvas; level 1: stride 16, 16-px squares centred on 0, 16, 32, 48 (16 anchors); level 2:
    # stride 32, 32-px squares centred on 0 and 32 (4 anchors). Box A is the anchor centred on (16, 16)
    # (IoU 1); box B, 4 x 4 inside the anchor centred on (48, 48), reaches IoU 16 / 256 there and no more:
    # a low-quality match only; box C lies beyond every anchor: no positive.
    generator = PriorGenerator([16, 32], [16, 32])
    assigner = MaxIoUAssigner(0.5, 0.4)
    boxes = torch.tensor([[8.0, 8, 24, 24], [40, 40, 44, 44], [58, 58, 63, 63]])
    images = [((64, 64), boxes, torch.tensor([0, 1, 0]))]

    def assign(priors, targets):
        return assigner(priors.anchors, *pad_targets(targets, priors.anchors.device), 2)

    out = assignment_statistics(images, generator, assign, assigner.pos_iou, size_divisible=64)
    coverage = out["coverage"]
    assert coverage["boxes"] == 3
    assert coverage["above_threshold"] == pytest.approx(1 / 3)
    assert coverage["low_quality_only"] == pytest.approx(1 / 3)
    assert coverage["none"] == pytest.approx(1 / 3)
    assert coverage["positives_per_box"]["histogram"] == [1, 2]
    # A's neighbours overlap it by at most IoU 64 / 448 < 0.4: background, nothing ignored
    levels = [(lv["foreground"], lv["background"], lv["ignored"]) for lv in out["levels"]]
    assert levels == [(2, 14, 0), (0, 4, 0)]
    assert out["levels"][0]["background_per_foreground"] == 7.0
    assert out["levels"][1]["background_per_foreground"] is None
    # without a threshold (ATSS) there is no low-quality class
    out = assignment_statistics(images, generator, assign, None, size_divisible=64)
    assert out["coverage"]["low_quality_only"] is None
    assert out["coverage"]["above_threshold"] == pytest.approx(2 / 3)


def test_anchor_shapes_list_every_size_and_ratio():
    shapes = anchor_shapes(PriorGenerator([32, 64], [8, 16], ratios=[0.5, 1.0, 2.0], scales=[1.0, 2.0]))
    assert shapes["sizes"] == [32.0, 64.0, 64.0, 128.0]
    assert shapes["ratios"] == [0.5, 1.0, 2.0] and shapes["strides"] == [8, 16]
