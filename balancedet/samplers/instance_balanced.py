"""Instance-balanced positive sampling (Pang et al., "Libra R-CNN", CVPR 2019, arXiv 1904.02701).

Libra R-CNN's code samples the same number of positives for every ground-truth box, so that large
objects, which overlap many proposals, do not take the whole positive budget. mmdetection's
``InstanceBalancedPosSampler`` subtracts Python sets of tensors (hashed by identity, not value)
in its top-up, so it can pick duplicates and return fewer positives than asked (mmdetection 3.3;
reproduced in the tests). Here the quota is exact and the selection has no duplicates by
construction: every positive gets a random key, positives are sorted by (gt index, key), a
positive's rank inside its box's group is compared with that box's quota, and what is still
missing is drawn uniformly from the positives left over.
"""

from __future__ import annotations

import torch
from torch import Tensor

from balancedet.samplers.base import random_keys, select_first, sort_groups, split
from balancedet.samplers.random import RandomSampler

__all__ = ["InstanceBalancedPosSampler"]

_NO_BOX = torch.iinfo(torch.int64).max


class InstanceBalancedPosSampler(RandomSampler):
    """Equal positives per ground-truth box; negatives uniform, as in ``RandomSampler``.

    With ``P = int(num * pos_fraction)`` positives wanted and ``G`` boxes that have at least one
    positive, box ``j`` (the ``j``-th present box by ground-truth index) gets the quota
    ``P // G + (j < P % G)``: the remainder goes to the lowest ground-truth indices. A box with fewer
    positives than its quota gives all of them, and the shortfall is drawn uniformly from the other
    boxes' remaining positives. The result is exactly ``min(P, number of positives)`` distinct positives.

    Args:
        num: candidates kept per image.
        pos_fraction: largest share of positives.
        neg_pos_ub: as in ``RandomSampler``.

    ``sampler(candidates) -> Sample`` as ``RandomSampler`` (``needs`` is empty); ``pos_mask`` alone
    gives the positives to compose with another negative sampler (``libra_sampler``).
    """

    def pos_mask(self, matched: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``(..., M)`` bool: the instance-balanced positives of each image."""
        pos, _ = split(matched)
        wanted = self.num_pos_expected
        keys = random_keys(matched, generator, 2)
        order, box, rank = sort_groups(torch.where(pos, matched.long(), _NO_BOX), keys[0])
        present = box != _NO_BOX
        first = torch.ones_like(present)
        first[..., 1:] = box[..., 1:] != box[..., :-1]
        first &= present
        ordinal = first.cumsum(-1) - 1
        num_boxes = first.sum(-1, keepdim=True).clamp(min=1)
        quota = wanted // num_boxes + (ordinal < wanted % num_boxes).long()
        kept = torch.zeros_like(present).scatter_(-1, order, present & (rank < quota))
        missing = torch.clamp(pos.sum(-1, keepdim=True), max=wanted) - kept.sum(-1, keepdim=True)
        return kept | select_first(pos & ~kept, keys[1], missing)
