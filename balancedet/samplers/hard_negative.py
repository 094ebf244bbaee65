"""SSD's hard negative mining (Liu et al., "SSD: Single Shot MultiBox Detector", ECCV 2016, arXiv 1512.02325).

After matching, most default boxes are negatives. SSD sorts them by confidence loss and keeps the
top ones so that the ratio of negatives to positives is at most 3:1 (sec. 2.2, "Hard negative
mining"), per image. Batched here with a rank trick: one sort of the whole ``(B, M)`` loss tensor
along the anchors, a running count of negatives in sorted order gives each negative its rank, and
that rank is compared with the image's quota; no loop over images, no host sync.
"""

from __future__ import annotations

from balancedet.samplers.base import Candidates, Sample, check_needs, scaled_count, select_first, split

__all__ = ["HardNegativeMiner"]


class HardNegativeMiner:
    """Keep every positive and the hardest negatives at neg:pos <= ``neg_pos_ratio``, per image.

    Args:
        neg_pos_ratio: negatives kept per positive (3 in SSD); an image keeps
            ``max(floor(neg_pos_ratio * num_pos), min_neg)`` negatives, or all it has if fewer.
        min_neg: negatives kept even without positives (0, as in SSD: a background-only image adds
            no classification loss).

    ``miner(candidates) -> Sample`` reads ``cls_loss`` (``needs = {"cls_loss"}``), the per-anchor
    confidence loss computed by the caller (detached here): ``pos`` is every positive, ``neg`` the
    mined negatives, and ``sample.weight()`` the classification loss's weight. Equal losses go to
    the lower anchor index.
    """

    needs: frozenset[str] = frozenset({"cls_loss"})

    def __init__(self, neg_pos_ratio: float = 3.0, min_neg: int = 0) -> None:
        if neg_pos_ratio < 0 or min_neg < 0:
            raise ValueError(f"neg_pos_ratio and min_neg must be >= 0, got {neg_pos_ratio!r} and {min_neg!r}")
        self.neg_pos_ratio = neg_pos_ratio
        self.min_neg = min_neg

    def __call__(self, candidates: Candidates) -> Sample:
        """Every positive and the ``neg_pos_ratio * num_pos`` highest-loss negatives of each image."""
        check_needs(self, candidates)
        pos, neg = split(candidates.matched)
        quota = scaled_count(self.neg_pos_ratio, pos.sum(-1, keepdim=True)).clamp(min=self.min_neg)
        return Sample(pos, select_first(neg, candidates.cls_loss.detach(), quota, descending=True))
