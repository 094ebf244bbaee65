"""SSD's hard negative mining (Liu et al., "SSD: Single Shot MultiBox Detector", ECCV 2016, arXiv 1512.02325).

After matching, most default boxes are negatives. SSD sorts them by confidence loss and keeps the
top ones so that the ratio of negatives to positives is at most 3:1 (sec. 2.2, "Hard negative
mining"), per image. Batched here with a rank trick: one sort of the whole ``(B, M)`` loss tensor
along the anchors, a running count of negatives in sorted order gives each negative its rank, and
that rank is compared with the image's quota; no loop over images, no host sync.
"""

from __future__ import annotations

from torch import Tensor

from balancedet.samplers.base import check_like, check_matched, scaled_count, select_first, split

__all__ = ["HardNegativeMiner"]


class HardNegativeMiner:
    """Keep every positive and the hardest negatives at neg:pos <= ``neg_pos_ratio``, per image.

    Args:
        neg_pos_ratio: negatives kept per positive (3 in SSD); an image keeps
            ``max(floor(neg_pos_ratio * num_pos), min_neg)`` negatives, or all it has if fewer.
        min_neg: negatives kept even without positives (0, as in SSD: a background-only image adds
            no classification loss).

    ``miner(matched, losses)`` with ``matched`` ``(B, M)`` int64 (or ``(M,)``) and ``losses`` the
    per-anchor confidence loss of the same shape (computed by the caller, detached here) returns a
    ``(B, M)`` bool mask of the kept anchors (positives and mined negatives), to be used as the
    classification loss's ``weight``. Equal losses go to the lower anchor index.
    """

    def __init__(self, neg_pos_ratio: float = 3.0, min_neg: int = 0) -> None:
        if neg_pos_ratio < 0 or min_neg < 0:
            raise ValueError(f"neg_pos_ratio and min_neg must be >= 0, got {neg_pos_ratio!r} and {min_neg!r}")
        self.neg_pos_ratio = neg_pos_ratio
        self.min_neg = min_neg

    def __call__(self, matched: Tensor, losses: Tensor) -> Tensor:
        check_matched(matched)
        check_like("losses", losses, matched)
        pos, neg = split(matched)
        quota = scaled_count(self.neg_pos_ratio, pos.sum(-1, keepdim=True)).clamp(min=self.min_neg)
        return pos | select_first(neg, losses.detach(), quota, descending=True)
