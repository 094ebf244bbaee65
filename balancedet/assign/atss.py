"""Adaptive Training Sample Selection (Zhang et al., "Bridging the Gap Between Anchor-based and
Anchor-free Detection via Adaptive Training Sample Selection", CVPR 2020, arXiv 1912.02424, Alg. 1).

For each ground-truth box ``g``: on every level take the ``k`` anchors whose centres are closest
to ``g``'s centre (k = 9); over these candidates compute the IoU mean ``m_g`` and standard
deviation ``v_g``; positives are the candidates with ``IoU >= m_g + v_g`` whose centre lies inside
``g``; an anchor selected by several boxes goes to the one of highest IoU. Everything else is
background (ATSS has no ignore band). GFL (Li et al., arXiv 2006.04388) uses it with one square
anchor of side ``8 * stride`` per location (``balancedet.boxes.anchors.points_to_anchors``).

Conventions of the authors' code (sfzhang15/ATSS) that the paper leaves open, followed here:
``v_g`` is the unbiased (N - 1) standard deviation (0 when there is a single candidate); "inside"
means the centre is more than ``center_eps = 0.01`` pixel from every side; ties in IoU go to the
lowest box index. Ties in distance at the k-th place go to the lowest anchor index (the authors'
``topk`` leaves them unspecified); distances are compared squared (the same order as Euclidean
distances, without the ties that a square root can create).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from balancedet.assign.max_iou import build_result, default_max_elements, empty_result, prepare_ground_truth
from balancedet.assign.result import BACKGROUND, AssignResult
from balancedet.boxes.ops import box_centres, broadcast_box_iou


def _closest(dist: Tensor, k: int) -> Tensor:
    """``dist: (B, N, G)`` -> ``(B, k, G)`` indices of the ``k`` smallest along ``N``, ties to the lowest index."""
    kth = dist.topk(k, dim=1, largest=False).values.amax(dim=1, keepdim=True)
    below = dist < kth
    at = dist == kth
    room = k - below.sum(dim=1, keepdim=True)
    selected = below | (at & (at.cumsum(dim=1) <= room))
    # exactly k ones per column, so the k largest of ``selected`` are exactly the selected anchors
    return selected.to(dist.dtype).topk(k, dim=1).indices


class ATSSAssigner:
    """ATSS (arXiv 1912.02424), batched over images with padded ground truth.

    Args:
        topk: candidates per level and box (9 in the paper, with one anchor per location as in
            GFL; the authors' code takes ``topk * A`` with ``A`` anchors per location).
        center_eps: an anchor centre must be more than this inside every side of the box.
        max_elements: bound on ``B_group * A * G`` for the dense blocks of one group of images
            (images are processed in groups; one image at least); ``None`` picks the default by device.
        check_inputs: validate labels and warn about degenerate boxes (one host sync per call).
    """

    def __init__(
        self,
        topk: int = 9,
        center_eps: float = 0.01,
        max_elements: int | None = None,
        check_inputs: bool = True,
    ):
        if topk < 1:
            raise ValueError(f"ATSSAssigner: topk must be >= 1, got {topk}")
        if max_elements is not None and max_elements < 1:
            raise ValueError(f"ATSSAssigner: max_elements must be >= 1, got {max_elements}")
        self.topk = int(topk)
        self.center_eps = float(center_eps)
        self.max_elements = max_elements
        self.check_inputs = bool(check_inputs)

    def __call__(
        self,
        anchors: Tensor,
        num_anchors_per_level: Sequence[int],
        gt_boxes: Tensor,
        gt_labels: Tensor,
        num_classes: int,
        image_ids: Sequence[object] | None = None,
    ) -> AssignResult:
        """Assign ``anchors: (A, 4)`` (levels concatenated, ``num_anchors_per_level`` of each) to
        ``gt_boxes: (B, G, 4)`` padded, ``gt_labels: (B, G)`` (-1 for padding). ``AssignResult`` of ``(B, A)``.
        """
        anchors, boxes, area, valid = prepare_ground_truth(
            anchors, gt_boxes, gt_labels, num_classes, image_ids, self.check_inputs, "ATSSAssigner"
        )
        counts = [int(n) for n in num_anchors_per_level]
        if sum(counts) != anchors.shape[0] or min(counts, default=0) < 0:
            raise ValueError(
                f"ATSSAssigner: num_anchors_per_level {counts} must be >= 0 and sum to the {anchors.shape[0]} anchors"
            )
        batch, num_boxes = gt_labels.shape
        num_anchors = anchors.shape[0]
        if num_boxes == 0 or num_anchors == 0:
            return empty_result(batch, num_anchors, gt_labels, anchors.dtype, num_classes)
        max_elements = self.max_elements or default_max_elements(anchors.device)
        group = max(1, max_elements // (num_anchors * num_boxes))
        parts = [
            self._assign(anchors, counts, boxes[s : s + group], area[s : s + group], valid[s : s + group])
            for s in range(0, batch, group)
        ]
        matched = torch.cat([p[0] for p in parts])
        max_iou = torch.cat([p[1] for p in parts])
        return build_result(matched, gt_labels, max_iou, num_classes)

    def _assign(
        self, anchors: Tensor, counts: list[int], boxes: Tensor, area: Tensor, valid: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``matched: (b, A)`` and ``max_iou: (b, A)`` for a group of ``b`` images."""
        iou = broadcast_box_iou(anchors, boxes, area)  # (b, A, G); 0 for padded/degenerate boxes
        max_iou = iou.amax(dim=2)
        centres = box_centres(anchors)  # (A, 2)
        box_centre = box_centres(boxes)  # (b, G, 2)

        candidates = []
        start = 0
        for count in counts:
            k = min(self.topk, count)
            if k:
                c = centres[start : start + count]
                dist = (c[None, :, None, 0] - box_centre[:, None, :, 0]).square()
                dist += (c[None, :, None, 1] - box_centre[:, None, :, 1]).square()
                candidates.append(_closest(dist, k) + start)
            start += count
        candidates = torch.cat(candidates, dim=1)  # (b, K, G) anchor indices, distinct per (image, box)
        cand_iou = iou.gather(1, candidates)
        threshold = cand_iou.mean(dim=1, keepdim=True)
        if cand_iou.shape[1] > 1:
            threshold = threshold + cand_iou.std(dim=1, keepdim=True)

        cand_centre = centres[candidates]  # (b, K, G, 2)
        inside = (
            torch.stack(
                (
                    cand_centre[..., 0] - boxes[:, None, :, 0],
                    cand_centre[..., 1] - boxes[:, None, :, 1],
                    boxes[:, None, :, 2] - cand_centre[..., 0],
                    boxes[:, None, :, 3] - cand_centre[..., 1],
                ),
                dim=-1,
            ).amin(dim=-1)
            > self.center_eps
        )
        positive = (cand_iou >= threshold) & inside & valid[:, None, :]

        # IoU of each (anchor, box) pair where the anchor is a positive candidate of the box, else -1
        pos_iou = torch.full_like(iou, -1.0).scatter_(1, candidates, torch.where(positive, cand_iou, -1.0))
        best, owner = pos_iou.max(dim=2)
        matched = torch.where(best >= 0, owner, torch.full_like(owner, BACKGROUND))
        return matched, max_iou


__all__ = ["ATSSAssigner"]
