"""Dense-detector inference: from per-level boxes and class scores to a short list of detections.

RetinaNet's procedure (Lin et al., ICCV 2017, arXiv 1708.02002, sec. 4, "Inference"): on each FPN
level keep the (anchor, class) pairs whose score exceeds 0.05, at most the 1000 best; merge the
levels; apply non-maximum suppression at IoU 0.5 per class; keep the 100 best detections. GFL
(arXiv 2006.04388) uses the same procedure on its joint quality-class scores.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms

__all__ = ["DensePostProcess", "detections_from_levels"]


def detections_from_levels(
    boxes: Sequence[Tensor],
    scores: Sequence[Tensor],
    image_sizes: Sequence[tuple[int, int]],
    score_thresh: float = 0.05,
    topk: int = 1000,
    nms_iou: float = 0.5,
    max_dets: int = 100,
) -> list[dict[str, Tensor]]:
    """Detections of a batch from decoded boxes and probabilities, level by level.

    Args:
        boxes: one ``(B, A_l, 4)`` tensor of decoded ``(x1, y1, x2, y2)`` boxes per level.
        scores: one ``(B, A_l, C)`` tensor of class probabilities per level (sigmoid outputs).
        image_sizes: ``(H_i, W_i)`` of each image; boxes are clipped to it.
        score_thresh: candidates must score strictly above it.
        topk: candidates kept per level and image, over anchors x classes, before NMS.
        nms_iou: class-wise NMS threshold (``torchvision.ops.batched_nms``).
        max_dets: detections kept per image, best first.

    Returns one ``{"boxes": (K, 4), "scores": (K,), "labels": (K,) int64 in [0, C)}`` per image,
    sorted by decreasing score. The top-k of each level is taken over all candidates and then
    thresholded, which keeps the same set as thresholding first (the k best above the threshold are
    the ones of the k best that are above it) while keeping the shapes fixed and batched.
    """
    if len(boxes) != len(scores) or not boxes:
        raise ValueError(
            f"detections_from_levels: need as many box as score levels (> 0), got {len(boxes)} and {len(scores)}"
        )
    batch = scores[0].shape[0]
    if len(image_sizes) != batch:
        raise ValueError(f"detections_from_levels: {len(image_sizes)} image sizes for a batch of {batch}")
    level_boxes, level_scores, level_labels = [], [], []
    for level, (b, s) in enumerate(zip(boxes, scores, strict=True)):
        if b.ndim != 3 or s.ndim != 3 or b.shape[:2] != s.shape[:2] or b.shape[-1] != 4 or s.shape[0] != batch:
            raise ValueError(
                f"detections_from_levels: level {level} needs boxes (B, A, 4) and scores (B, A, C), got "
                f"{tuple(b.shape)} and {tuple(s.shape)}"
            )
        num_classes = s.shape[-1]
        flat = s.reshape(batch, -1)
        k = min(topk, flat.shape[1])
        top_scores, top_idx = flat.topk(k, dim=1)
        anchor = torch.div(top_idx, num_classes, rounding_mode="floor")
        level_boxes.append(b.gather(1, anchor[..., None].expand(-1, -1, 4)))
        level_scores.append(top_scores)
        level_labels.append(top_idx % num_classes)
    all_boxes = torch.cat(level_boxes, dim=1)
    all_scores = torch.cat(level_scores, dim=1)
    all_labels = torch.cat(level_labels, dim=1)

    results = []
    for i, (height, width) in enumerate(image_sizes):
        keep = all_scores[i] > score_thresh
        image_boxes, image_scores, image_labels = all_boxes[i][keep], all_scores[i][keep], all_labels[i][keep]
        image_boxes = torch.stack(
            (
                image_boxes[:, 0].clamp(0, width),
                image_boxes[:, 1].clamp(0, height),
                image_boxes[:, 2].clamp(0, width),
                image_boxes[:, 3].clamp(0, height),
            ),
            dim=1,
        )
        kept = batched_nms(image_boxes, image_scores, image_labels, nms_iou)[:max_dets]
        results.append({"boxes": image_boxes[kept], "scores": image_scores[kept], "labels": image_labels[kept]})
    return results


class DensePostProcess(nn.Module):
    """Dense-detector inference (focal paper, sec. 4, "Inference"; GFL uses the same procedure).

    Per level the ``topk_candidates`` best (anchor, class) candidates above ``score_thresh``; then
    class-wise NMS at ``nms_iou`` and the ``max_detections`` best per image
    (``balancedet.models.postprocess.detections_from_levels``). ``forward(boxes, scores, image_sizes)``
    takes per-level decoded ``(B, A_l, 4)`` boxes and ``(B, A_l, K)`` probabilities.
    """

    def __init__(
        self,
        score_thresh: float = 0.05,
        topk_candidates: int = 1000,
        nms_iou: float = 0.5,
        max_detections: int = 100,
    ):
        super().__init__()
        if not 0 <= score_thresh < 1 or not 0 < nms_iou <= 1 or topk_candidates < 1 or max_detections < 1:
            raise ValueError(
                "DensePostProcess: need score_thresh in [0, 1), nms_iou in (0, 1], topk_candidates and "
                f"max_detections >= 1; got {score_thresh}, {nms_iou}, {topk_candidates}, {max_detections}"
            )
        self.score_thresh, self.topk_candidates = score_thresh, topk_candidates
        self.nms_iou, self.max_detections = nms_iou, max_detections

    @torch.no_grad()
    def forward(
        self, boxes: list[Tensor], scores: list[Tensor], image_sizes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        return detections_from_levels(
            boxes, scores, image_sizes, self.score_thresh, self.topk_candidates, self.nms_iou, self.max_detections
        )
