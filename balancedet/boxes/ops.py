"""Box geometry on ``(x1, y1, x2, y2)`` tensors in image pixels.

Thin functions over ``torchvision.ops`` where it has them, plus the broadcasting and element-wise
variants the assigners and losses need. Widths are ``x2 - x1`` (no "+1" pixel convention).
"""

from __future__ import annotations

import torch
import torchvision.ops
from torch import Tensor


def box_area(boxes: Tensor) -> Tensor:
    """Area of ``boxes: (..., 4)``, shape ``(...)``; negative for boxes with ``x2 < x1`` xor ``y2 < y1``."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def valid_boxes(boxes: Tensor) -> Tensor:
    """``(...)`` bool: boxes of positive width and height (NaN coordinates count as invalid)."""
    return (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU of ``boxes1: (N, 4)`` and ``boxes2: (M, 4)``, shape ``(N, M)`` (``torchvision.ops.box_iou``)."""
    return torchvision.ops.box_iou(boxes1, boxes2)


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise GIoU (Rezatofighi et al., CVPR 2019), shape ``(N, M)`` (``torchvision.ops.generalized_box_iou``)."""
    return torchvision.ops.generalized_box_iou(boxes1, boxes2)


def aligned_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 0.0) -> Tensor:
    """Element-wise IoU of ``boxes1`` and ``boxes2`` broadcast to a common ``(..., 4)`` shape, shape ``(...)``.

    ``eps`` is added to the union (0 by default: two empty boxes then give NaN).
    """
    iw = (torch.minimum(boxes1[..., 2], boxes2[..., 2]) - torch.maximum(boxes1[..., 0], boxes2[..., 0])).clamp(min=0)
    ih = (torch.minimum(boxes1[..., 3], boxes2[..., 3]) - torch.maximum(boxes1[..., 1], boxes2[..., 1])).clamp(min=0)
    inter = iw * ih
    return inter / (box_area(boxes1) + box_area(boxes2) - inter + eps)


def aligned_generalized_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """Element-wise GIoU (Rezatofighi et al., CVPR 2019, eq. 1) of broadcastable ``(..., 4)`` boxes, shape ``(...)``."""
    iw = (torch.minimum(boxes1[..., 2], boxes2[..., 2]) - torch.maximum(boxes1[..., 0], boxes2[..., 0])).clamp(min=0)
    ih = (torch.minimum(boxes1[..., 3], boxes2[..., 3]) - torch.maximum(boxes1[..., 1], boxes2[..., 1])).clamp(min=0)
    inter = iw * ih
    union = box_area(boxes1) + box_area(boxes2) - inter + eps
    cw = torch.maximum(boxes1[..., 2], boxes2[..., 2]) - torch.minimum(boxes1[..., 0], boxes2[..., 0])
    ch = torch.maximum(boxes1[..., 3], boxes2[..., 3]) - torch.minimum(boxes1[..., 1], boxes2[..., 1])
    hull = cw * ch + eps
    return inter / union - (hull - union) / hull


def broadcast_box_iou(
    anchors: Tensor, boxes: Tensor, boxes_area: Tensor | None = None, *, box_major: bool = False
) -> Tensor:
    """IoU of every anchor with every box of every image: ``anchors: (A, 4)``, ``boxes: (B, G, 4)``.

    Returns ``(B, A, G)`` (anchor-major), or ``(B, G, A)`` with ``box_major``; the latter keeps
    anchors contiguous, so reductions over boxes (per anchor) and over anchors (per box) both run
    vectorised. ``boxes_area: (B, G)`` overrides the boxes' areas (the assigners pass ``inf`` for
    boxes that must score IoU 0). The IoU is torchvision's ``box_iou`` formula, step for step, so
    the values equal it bit for bit; each element's value does not depend on the shapes involved
    (a chunk of anchors or a subset of boxes gives the same bits as the full set). In-place steps
    keep the peak at two output-size blocks plus one transient.
    """
    if boxes_area is None:
        boxes_area = box_area(boxes)
    anchors_area = box_area(anchors)
    # coordinates as contiguous columns: broadcasting ops on every-4th-element views do not
    # vectorise on CPU and ran 3-4x slower
    a = anchors.t().contiguous()
    g = boxes.permute(2, 0, 1).contiguous()
    if box_major:
        a, anchors_area = a[:, None, None, :], anchors_area[None, None, :]
        g, boxes_area = g[..., None], boxes_area[:, :, None]
    else:
        a, anchors_area = a[:, None, :, None], anchors_area[None, :, None]
        g, boxes_area = g[:, :, None, :], boxes_area[:, None, :]
    iw = torch.minimum(a[2], g[2])
    iw.sub_(torch.maximum(a[0], g[0])).clamp_(min=0)
    ih = torch.minimum(a[3], g[3])
    ih.sub_(torch.maximum(a[1], g[1])).clamp_(min=0)
    inter = iw.mul_(ih)
    union = torch.add(anchors_area, boxes_area, out=ih).sub_(inter)
    return inter.div_(union)


def box_centres(boxes: Tensor) -> Tensor:
    """``(..., 4) -> (..., 2)`` centres ``((x1 + x2) / 2, (y1 + y2) / 2)``."""
    return (boxes[..., :2] + boxes[..., 2:]) / 2


__all__ = [
    "aligned_box_iou",
    "aligned_generalized_box_iou",
    "box_area",
    "box_centres",
    "box_iou",
    "broadcast_box_iou",
    "generalized_box_iou",
    "valid_boxes",
]
