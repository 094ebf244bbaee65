"""Random sampling of RoIs / anchors (Ren et al., "Faster R-CNN", NeurIPS 2015, arXiv 1506.01497).

Faster R-CNN trains its box head on 512 RoIs per image with at most 25% positives (sec. 3.1.3 and
Fast R-CNN, Girshick, ICCV 2015, sec. 2.3) and its RPN on 256 anchors with at most 50% (sec. 3.1.3);
negatives fill the rest. Both subsets are uniform: each candidate gets a random key and the
``k`` smallest keys among the eligible are kept (one sort, no Python sets).
"""

from __future__ import annotations

import torch
from torch import Tensor

from balancedet.samplers.base import (
    Candidates,
    Sample,
    check_needs,
    negative_quota,
    random_keys,
    select_first,
    split,
)

__all__ = ["RandomSampler"]


class RandomSampler:
    """Uniform positives up to ``num * pos_fraction``, uniform negatives filling to ``num``.

    Args:
        num: candidates kept per image (512 for the box head, 256 for the RPN).
        pos_fraction: largest share of positives (0.25 for the box head, 0.5 for the RPN).
        neg_pos_ub: when ``>= 0``, at most ``floor(neg_pos_ub * max(num_pos, 1))`` negatives.

    ``sampler(candidates)`` reads only ``matched`` and ``generator`` (``needs`` is empty) and returns a
    ``Sample`` of ``matched``'s shape without a host sync. Deterministic for a seeded ``generator``.
    """

    needs: frozenset[str] = frozenset()

    def __init__(self, num: int = 512, pos_fraction: float = 0.25, neg_pos_ub: float = -1.0) -> None:
        if not isinstance(num, int) or num < 0:
            raise ValueError(f"num must be a non-negative int, got {num!r}")
        if not 0.0 <= pos_fraction <= 1.0:
            raise ValueError(f"pos_fraction must lie in [0, 1], got {pos_fraction!r}")
        self.num = num
        self.pos_fraction = pos_fraction
        self.neg_pos_ub = neg_pos_ub
        self.num_pos_expected = int(num * pos_fraction)

    def pos_mask(self, matched: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``(..., M)`` bool: a uniform subset of at most ``num_pos_expected`` positives per image."""
        pos, _ = split(matched)
        return select_first(pos, random_keys(matched, generator), self.num_pos_expected)

    def __call__(self, candidates: Candidates) -> Sample:
        """The kept positives (``pos_mask``) and uniform negatives filling to ``num``, per image."""
        check_needs(self, candidates)
        matched, generator = candidates.matched, candidates.generator
        pos = self.pos_mask(matched, generator)
        num_neg = negative_quota(self.num, pos.sum(-1, keepdim=True), self.neg_pos_ub)
        _, neg = split(matched)
        return Sample(pos, select_first(neg, random_keys(matched, generator), num_neg))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num={self.num}, pos_fraction={self.pos_fraction}, neg_pos_ub={self.neg_pos_ub})"
