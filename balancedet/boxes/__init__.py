"""Boxes: anchors and anchor points, box coders, and IoU geometry (docs/conventions.md)."""

from balancedet.boxes.anchors import AnchorGenerator, AnchorPoints, feature_map_sizes, points_to_anchors
from balancedet.boxes.coders import DeltaXYWHCoder, DistancePointCoder
from balancedet.boxes.ops import (
    aligned_box_iou,
    aligned_generalized_box_iou,
    box_area,
    box_centres,
    box_iou,
    broadcast_box_iou,
    generalized_box_iou,
    valid_boxes,
)

__all__ = [
    "AnchorGenerator",
    "AnchorPoints",
    "DeltaXYWHCoder",
    "DistancePointCoder",
    "aligned_box_iou",
    "aligned_generalized_box_iou",
    "box_area",
    "box_centres",
    "box_iou",
    "broadcast_box_iou",
    "feature_map_sizes",
    "generalized_box_iou",
    "points_to_anchors",
    "valid_boxes",
]
