"""Online hard example mining (Shrivastava, Gupta, Girshick, CVPR 2016, arXiv 1604.03540).

OHEM scores every candidate with the current network, without gradients, and trains on the ones
with the highest loss (sec. 4.1): the paper keeps a fixed budget of ``B / N`` RoIs per image
whatever their class (``mode="budget"``), after a class-agnostic NMS at IoU 0.7 among the candidates,
with the loss as score, so that one hard region is not counted many times. The variant common in
detection code (and in the seeds) keeps every positive and the hardest negatives at neg:pos = 3:1
(``mode="ratio"``).

The paper's score is the multitask loss, classification plus localisation (sec. 4.1). The sampler
ranks by ``cls_loss + box_loss`` when the ``Candidates`` carry a ``box_loss`` (0 off the positives,
which have no regression target) and by ``cls_loss`` alone otherwise; a detector may pass
``box_loss`` to follow the paper, and a dense head that ranks negatives only (their box loss is 0
anyway) can leave it out.

mmdetection's OHEM sampler re-runs the RoI head and exists only for two-stage detectors. This one
takes the per-candidate losses the caller already computed (``reduction="none"``), so it serves a
dense head's ~100k anchors as well as a RoI head's proposals:

    with torch.no_grad():
        cls = sigmoid_focal_loss(logits, labels, reduction="none").sum(-1)
    sample = OHEMSampler(num=None)(Candidates(matched, cls_loss=cls))
    loss = sigmoid_focal_loss(logits, labels, weight=sample.weight(), reduction="sum") / sample.pos.sum().clamp(min=1)

Ranking is deterministic: equal losses go to the lower index. Without NMS the selection is one sort
and needs no host sync; ``torchvision.ops.nms`` returns a data-dependent number of boxes and
synchronises on CUDA (the one host sync of this sampler, once per image), and it is quadratic in
the number of overlapping candidates, so for dense heads it is best left off or applied to a
pre-selected top-k.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import nms

from balancedet.samplers.base import (
    Candidates,
    Sample,
    check_needs,
    scaled_count,
    select_first,
    split,
    valid,
)

__all__ = ["OHEMSampler", "nms_keep"]

MODES = ("ratio", "budget")


def nms_keep(boxes: Tensor, scores: Tensor, eligible: Tensor, iou_threshold: float) -> Tensor:
    """``(M,)`` bool: eligible candidates that survive a class-agnostic NMS by ``scores``.

    Args:
        boxes: ``(M, 4)`` ``(x1, y1, x2, y2)``.
        scores: ``(M,)``, higher first (the losses).
        eligible: ``(M,)`` bool; the others neither survive nor suppress.
        iou_threshold: a candidate is removed when its IoU with a higher-scored survivor exceeds it.
    """
    score = torch.where(eligible, scores.float(), -torch.inf)
    keep = torch.zeros_like(eligible)
    keep[nms(boxes.float(), score, iou_threshold)] = True
    return keep & eligible


class OHEMSampler:
    """Hard example mining by a per-candidate loss computed by the caller without gradient.

    Args:
        num: the budget. ``mode="budget"``: the ``num`` highest-loss candidates. ``mode="ratio"``:
            at most ``int(num * pos_fraction)`` positives (the hardest) and at most ``num`` in all;
            ``None`` (dense heads) keeps every positive and bounds the total only by the ratio.
        pos_fraction: largest share of positives in ``"ratio"`` mode with a ``num``.
        neg_pos_ratio: ``"ratio"`` mode keeps ``max(floor(neg_pos_ratio * num_pos), min_neg)``
            hardest negatives (fewer if fewer exist or ``num`` is reached).
        nms_iou: class-agnostic NMS threshold among the candidates before ranking (paper: 0.7);
            ``None`` turns it off. Needs the candidates' ``boxes``.
        mode: ``"ratio"`` or ``"budget"``.
        min_neg: negatives kept in ``"ratio"`` mode even when an image has no positive. The default 0
            is SSD's and the paper-faithful choice (a background-only image then adds no loss);
            a detector trained on many background-only images may want e.g. ``3 * typical positives``
            so that their false positives are still penalised.

    ``sampler(candidates) -> Sample`` reads ``cls_loss`` and, when given, ``box_loss`` (the ranking
    loss is ``score``), and ``boxes`` with NMS: ``needs`` is ``{"cls_loss"}``, plus ``"boxes"`` when
    ``nms_iou`` is set.
    """

    def __init__(
        self,
        num: int | None = 512,
        pos_fraction: float = 0.25,
        neg_pos_ratio: float = 3.0,
        nms_iou: float | None = None,
        mode: str = "ratio",
        min_neg: int = 0,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if num is not None and (not isinstance(num, int) or num < 0):
            raise ValueError(f"num must be a non-negative int or None, got {num!r}")
        if mode == "budget" and num is None:
            raise ValueError("mode='budget' needs a num (the number of candidates kept)")
        if not 0.0 <= pos_fraction <= 1.0:
            raise ValueError(f"pos_fraction must lie in [0, 1], got {pos_fraction!r}")
        if neg_pos_ratio < 0 or min_neg < 0:
            raise ValueError(f"neg_pos_ratio and min_neg must be >= 0, got {neg_pos_ratio!r} and {min_neg!r}")
        if nms_iou is not None and not 0.0 < nms_iou <= 1.0:
            raise ValueError(f"nms_iou must lie in (0, 1] or be None, got {nms_iou!r}")
        self.num = num
        self.pos_fraction = pos_fraction
        self.neg_pos_ratio = neg_pos_ratio
        self.nms_iou = nms_iou
        self.mode = mode
        self.min_neg = min_neg

    @property
    def needs(self) -> frozenset[str]:
        """The ``Candidates`` fields read besides ``matched``: ``cls_loss``, and ``boxes`` with NMS."""
        return frozenset({"cls_loss", "boxes"} if self.nms_iou is not None else {"cls_loss"})

    def score(self, candidates: Candidates) -> Tensor:
        """``(..., M)`` detached ranking loss: ``cls_loss + box_loss`` (0 off positives), or ``cls_loss``."""
        score = candidates.cls_loss.detach()
        if candidates.box_loss is None:
            return score
        return score + torch.where(candidates.matched >= 0, candidates.box_loss.detach(), 0.0)

    def eligible(self, matched: Tensor, score: Tensor, boxes: Tensor | None) -> Tensor:
        """``(..., M)`` bool: the non-ignored candidates, after NMS by ``score`` when ``nms_iou`` is set."""
        eligible = valid(matched)
        if self.nms_iou is None:
            return eligible
        if matched.dim() == 1:
            return nms_keep(boxes, score, eligible, self.nms_iou)
        return torch.stack([nms_keep(b, s, e, self.nms_iou) for b, s, e in zip(boxes, score, eligible, strict=True)])

    def __call__(self, candidates: Candidates) -> Sample:
        """The hardest candidates of each image, by ``score``, in ``mode``."""
        check_needs(self, candidates)
        matched = candidates.matched
        score = self.score(candidates)
        eligible = self.eligible(matched, score, candidates.boxes)
        pos, neg = split(matched)
        if self.mode == "budget":
            kept = select_first(eligible, score, self.num, descending=True)
            return Sample(kept & pos, kept & neg)
        pos = eligible & pos
        if self.num is not None:
            pos = select_first(pos, score, int(self.num * self.pos_fraction), descending=True)
        num_pos = pos.sum(-1, keepdim=True)
        num_neg = scaled_count(self.neg_pos_ratio, num_pos).clamp(min=self.min_neg)
        if self.num is not None:
            num_neg = torch.minimum(num_neg, self.num - num_pos)
        return Sample(pos, select_first(eligible & neg, score, num_neg, descending=True))
