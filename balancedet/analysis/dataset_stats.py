"""What a dataset asks of a detector before any training: class and box statistics, and what the
configured priors and assigner make of the boxes.

- class frequencies (the long tail: the ratio of the most to the least frequent class), boxes per
  image, box sizes ``sqrt(w h)`` and aspect ratios ``h / w`` in the network's input pixels (after the
  configured resize), against the configured anchor sizes and ratios;
- the assignment the detector trains on (its own assigner on its own priors, as in training): per
  ground-truth box the number of positive anchors, and whether any of them reaches the positive IoU
  threshold, or the box only gets low-quality matches (Faster R-CNN, arXiv 1506.01497, sec. 3.1.2: the
  anchors of highest IoU with it), or none at all (it then never trains the classifier); and the
  foreground : background : ignored anchors per FPN level, the imbalance the focal loss addresses
  (Lin et al., arXiv 1708.02002, sec. 3: about 1:1000 in RetinaNet).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou

from balancedet.assign import BACKGROUND, IGNORE, AssignResult
from balancedet.boxes.anchors import feature_map_sizes
from balancedet.data import RecordSet
from balancedet.engine.recipe import resized_sizes
from balancedet.models.priors import PriorGenerator, Priors

__all__ = [
    "ImageBoxes",
    "RATIO_EDGES",
    "SIZE_EDGES",
    "anchor_shapes",
    "assignment_statistics",
    "box_coverage",
    "coverage_summary",
    "box_shapes",
    "boxes_per_image",
    "class_frequencies",
    "level_counts",
    "level_summary",
    "resized_boxes",
]

#: Histogram edges of box sizes ``sqrt(w h)``: quarter octaves from 1 to 4096 pixels.
SIZE_EDGES = 2.0 ** np.arange(0.0, 12.01, 0.25)
#: Histogram edges of aspect ratios ``h / w``: quarter octaves from 1/16 to 16.
RATIO_EDGES = 2.0 ** np.arange(-4.0, 4.01, 0.25)

#: One image as the network sees it: ``(height, width)`` after the resize, its boxes ``(G, 4)`` xyxy and
#: labels ``(G,)`` in those pixels (ignore regions left out, as the training targets).
ImageBoxes = tuple[tuple[int, int], Tensor, Tensor]


def class_frequencies(labels: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Box counts per class, the classes from most to least frequent, and the ratio of the largest to
    the smallest count among the classes present (``absent``: classes without a box)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(class_names))
    order = np.argsort(-counts, kind="stable")
    present = counts[counts > 0]
    return {
        "counts": {str(class_names[k]): int(counts[k]) for k in range(len(class_names))},
        "order": [str(class_names[k]) for k in order],
        "max_min_ratio": float(present.max() / present.min()) if present.size else None,
        "absent": [str(class_names[k]) for k in range(len(class_names)) if counts[k] == 0],
    }


def boxes_per_image(counts: np.ndarray) -> dict[str, Any]:
    """Summary and histogram (``histogram[n]`` = images with ``n`` boxes) of the boxes per image."""
    counts = np.asarray(counts, dtype=np.int64)
    if counts.size == 0:
        return {"images": 0, "mean": None, "median": None, "max": None, "without_boxes": 0, "histogram": []}
    return {
        "images": int(counts.size),
        "mean": float(counts.mean()),
        "median": float(np.median(counts)),
        "max": int(counts.max()),
        "without_boxes": int((counts == 0).sum()),
        "histogram": np.bincount(counts).tolist(),
    }


def _histogram(values: np.ndarray, edges: np.ndarray) -> list[int]:
    """Counts on ``edges``, values outside the range counted in the first or last bin."""
    return np.histogram(np.clip(values, edges[0], edges[-1]), bins=edges)[0].tolist()


def box_shapes(boxes: np.ndarray) -> dict[str, Any]:
    """Sizes ``sqrt(w h)`` and aspect ratios ``h / w`` of ``boxes: (G, 4)`` xyxy: 5th, 50th and 95th
    percentiles and histograms on ``SIZE_EDGES`` and ``RATIO_EDGES``."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    sizes, ratios = np.sqrt(w * h), h / w
    out: dict[str, Any] = {"count": int(len(boxes))}
    for name, values, edges in (("size", sizes, SIZE_EDGES), ("ratio", ratios, RATIO_EDGES)):
        percentiles = np.percentile(values, [5, 50, 95]).tolist() if len(values) else [None] * 3
        out[name] = {
            "p5": percentiles[0],
            "p50": percentiles[1],
            "p95": percentiles[2],
            "edges": edges.tolist(),
            "histogram": _histogram(values, edges),
        }
    return out


def anchor_shapes(prior_generator: PriorGenerator) -> dict[str, Any]:
    """The configured anchors: every size (level size x scale, ascending), the ratios, the strides."""
    anchors = prior_generator.anchors
    return {
        "sizes": sorted(s * k for s in anchors.sizes for k in anchors.scales),
        "ratios": list(anchors.ratios),
        "strides": list(anchors.strides),
    }


def resized_boxes(records: RecordSet, min_size: int | None, max_size: int | None) -> list[ImageBoxes]:
    """Each record's non-ignored boxes after ``DetectionTransform``'s resize (no flip), with the resized
    image size; boxes under 1 pixel wide, high or in area are dropped, as the transform drops them."""
    items = records.records
    widths = np.array([r.width for r in items], dtype=np.int64)
    heights = np.array([r.height for r in items], dtype=np.int64)
    if min_size is None:
        new_w, new_h = widths, heights
    else:
        new_w, new_h = resized_sizes(widths, heights, min_size, max_size)
    out = []
    for record, w0, h0, w1, h1 in zip(items, widths, heights, new_w, new_h, strict=True):
        keep = ~record.ignore
        scale = np.array([w1 / w0, h1 / h0, w1 / w0, h1 / h0])
        boxes = record.boxes[keep].astype(np.float64) * scale
        bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        kept = (bw >= 1) & (bh >= 1) & (bw * bh >= 1)
        out.append(
            (
                (int(h1), int(w1)),
                torch.from_numpy(boxes[kept]).float(),
                torch.from_numpy(record.labels[keep][kept].astype(np.int64)),
            )
        )
    return out


def box_coverage(
    assign: AssignResult, anchors: Tensor, gt_boxes: Sequence[Tensor], pos_iou: float | None
) -> tuple[Tensor, Tensor]:
    """Per ground-truth box of a batch: its number of positive anchors, and how many of them have an
    IoU of at least ``pos_iou`` with it (``None``: an assigner without a fixed threshold, e.g. ATSS,
    where every positive counts). ``assign``: ``(B, A)``; ``gt_boxes[b]``: ``(G_b, 4)``, the boxes in
    the order the assignment indexes them. Returns two ``(sum G_b,)`` int64 tensors."""
    positives, above = [], []
    for b, boxes in enumerate(gt_boxes):
        matched = assign.matched[b]
        anchor = (matched >= 0).nonzero(as_tuple=True)[0]
        owner = matched[anchor]
        positives.append(torch.bincount(owner, minlength=len(boxes)))
        if pos_iou is None or len(anchor) == 0:
            above.append(positives[-1].clone())
            continue
        iou = box_iou(boxes.to(anchors), anchors[anchor])
        reaches = iou[owner, torch.arange(len(anchor), device=anchors.device)] >= pos_iou
        above.append(torch.bincount(owner[reaches], minlength=len(boxes)))
    empty = torch.zeros(0, dtype=torch.int64)
    return (torch.cat(positives).cpu() if positives else empty), (torch.cat(above).cpu() if above else empty)


def level_counts(assign: AssignResult, num_per_level: Sequence[int]) -> Tensor:
    """``(L, 3)`` int64 foreground, background and ignored anchors of each level, summed over the batch."""
    matched = assign.matched.cpu()
    per_level = torch.split(matched, list(num_per_level), dim=1)
    return torch.stack(
        [torch.stack([(m >= 0).sum(), (m == BACKGROUND).sum(), (m == IGNORE).sum()]) for m in per_level]
    ).to(torch.int64)


def assignment_statistics(
    images: Sequence[ImageBoxes],
    prior_generator: PriorGenerator,
    assign: Callable[[Priors, list[dict[str, Tensor]]], AssignResult],
    pos_iou: float | None,
    size_divisible: int,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """The detector's training assignment of ``images``: box coverage and per-level anchor counts.

    Images are padded as a batch of their own size is (to a multiple of ``size_divisible``), grouped by
    that size and assigned ``batch_size`` at a time with ``assign(priors, targets)`` (the criterion's).
    """
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, (size, _, _) in enumerate(images):
        groups[tuple(-(-v // size_divisible) * size_divisible for v in size)].append(i)
    strides = prior_generator.anchors.strides
    positives, above, levels = [], [], None
    for canvas, members in groups.items():
        priors = prior_generator(feature_map_sizes(canvas, strides), torch.device(device))
        for start in range(0, len(members), batch_size):
            chunk = [images[i] for i in members[start : start + batch_size]]
            targets = [{"boxes": boxes.to(device), "labels": labels.to(device)} for _, boxes, labels in chunk]
            result = assign(priors, targets)
            pos, reach = box_coverage(result, priors.anchors, [t["boxes"] for t in targets], pos_iou)
            positives.append(pos)
            above.append(reach)
            counts = level_counts(result, priors.num_per_level)
            levels = counts if levels is None else levels + counts
    positives_t = torch.cat(positives) if positives else torch.zeros(0, dtype=torch.int64)
    above_t = torch.cat(above) if above else torch.zeros(0, dtype=torch.int64)
    return {
        "pos_iou": pos_iou,
        "coverage": coverage_summary(positives_t, above_t, pos_iou),
        "levels": level_summary(levels, strides),
    }


def coverage_summary(positives: Tensor, above: Tensor, pos_iou: float | None) -> dict[str, Any]:
    """Shares of the boxes with a positive at or above the threshold, with only low-quality positives
    (``None`` without a threshold), and with none; the positives per box."""
    n = len(positives)
    none = int((positives == 0).sum())
    above_count = int((above > 0).sum())
    low_quality = n - none - above_count
    values = positives.double()
    return {
        "boxes": n,
        "above_threshold": above_count / n if n else None,
        "low_quality_only": (low_quality / n if n else None) if pos_iou is not None else None,
        "none": none / n if n else None,
        "positives_per_box": {
            "mean": float(values.mean()) if n else None,
            "median": float(values.median()) if n else None,
            "max": int(positives.max()) if n else None,
            "histogram": torch.bincount(positives).tolist() if n else [],
        },
    }


def level_summary(levels: Tensor | None, strides: Sequence[int]) -> list[dict[str, Any]]:
    """Per level: its stride, the foreground, background and ignored counts, and ``background /
    foreground`` (``None`` without foreground)."""
    if levels is None:
        return []
    out = []
    for stride, (fg, bg, ignored) in zip(strides, levels.tolist(), strict=True):
        out.append(
            {
                "stride": stride,
                "foreground": fg,
                "background": bg,
                "ignored": ignored,
                "background_per_foreground": bg / fg if fg else None,
            }
        )
    return out
