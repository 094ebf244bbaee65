"""IoU-balanced negative sampling (Pang et al., "Libra R-CNN", CVPR 2019, arXiv 1904.02701, sec. 3.1).

Hard negatives (IoU with a box close to the background threshold) are rare among random RoIs.
Libra R-CNN splits the negatives' IoU interval into ``K`` equal bins (K=3) and draws ``N/K``
negatives uniformly from each, so that the selection probability of a negative in bin ``k`` is
``N / (K M_k)`` (eq. 2); bins that run short are topped up from the remaining negatives. Its code
adds a floor: negatives below ``floor_thr`` are drawn at random with ``floor_fraction`` of the budget.

Two departures from mmdetection's sampler: the bins cover the IoU range
``[min, max]`` of this image's own binned negatives instead of ``[floor_thr, max IoU over all
candidates]``, which with ground truth added as proposals is 1.0 and leaves the top bin empty; and
the selection runs in torch on the tensors' device (mmdetection uses numpy on the CPU, per image,
with ``np.int``, which NumPy >= 1.24 no longer has). The remainder ``N mod K`` goes to the highest
bins (one each, hardest first) instead of a random top-up, so a full bin gets an exact quota.

Libra R-CNN's full box-head sampler (sec. 3.1 and its released config: 512 RoIs, a quarter positive,
instance-balanced positives, ``K = 3``, no floor set) is ``libra_sampler()``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from balancedet.samplers.base import (
    Candidates,
    Sample,
    check_needs,
    random_keys,
    rank_in_group,
    scaled_count,
    select_first,
    split,
)
from balancedet.samplers.instance_balanced import InstanceBalancedPosSampler
from balancedet.samplers.random import RandomSampler

__all__ = ["IoUBalancedNegSampler", "libra_sampler"]


class IoUBalancedNegSampler:
    """Libra R-CNN's sampler: positives from ``pos_sampler``, IoU-balanced negatives filling to ``num``.

    Args:
        num: candidates kept per image.
        pos_fraction: largest share of positives (used by the default positive sampler).
        num_bins: ``K``, equal IoU bins over the binned negatives' own ``[min, max]`` (1: uniform).
        floor_thr: negatives with IoU below it (``== 0`` when it is 0) form the floor set, drawn
            uniformly; the others are binned. Negative: no floor set, every negative is binned.
        floor_fraction: share of the negative budget left to the floor set (mmdetection's default 0).
        pos_sampler: any object with ``pos_mask(matched, generator) -> (..., M) bool``, e.g.
            ``InstanceBalancedPosSampler`` (Libra R-CNN's positives, see ``libra_sampler``); default
            ``RandomSampler(num, pos_fraction)``.

    ``sampler(candidates) -> Sample`` reads ``max_iou`` (``needs = {"max_iou"}``, the assigner's
    per-candidate best IoU), ``matched`` and ``generator``; no host sync.

    With ``N = num - kept positives`` negatives wanted: ``Nb = floor(N (1 - floor_fraction))`` go to
    the bins, ``Nb // K`` per bin plus one for each of the ``Nb mod K`` highest bins; bins short of
    their quota are topped up uniformly from the other binned negatives up to ``Nb``; the floor set
    then gets ``N`` minus what the bins gave, and any shortfall is drawn uniformly from all negatives left.
    """

    needs: frozenset[str] = frozenset({"max_iou"})

    def __init__(
        self,
        num: int = 512,
        pos_fraction: float = 0.25,
        num_bins: int = 3,
        floor_thr: float = -1.0,
        floor_fraction: float = 0.0,
        pos_sampler: object | None = None,
    ) -> None:
        if not isinstance(num, int) or num < 0:
            raise ValueError(f"num must be a non-negative int, got {num!r}")
        if not isinstance(num_bins, int) or num_bins < 1:
            raise ValueError(f"num_bins must be a positive int, got {num_bins!r}")
        if not 0.0 <= floor_fraction <= 1.0:
            raise ValueError(f"floor_fraction must lie in [0, 1], got {floor_fraction!r}")
        self.pos_sampler = RandomSampler(num, pos_fraction) if pos_sampler is None else pos_sampler
        if not callable(getattr(self.pos_sampler, "pos_mask", None)):
            raise TypeError(f"pos_sampler must have a pos_mask(matched, generator) method, got {pos_sampler!r}")
        self.num = num
        self.num_bins = num_bins
        self.floor_thr = floor_thr
        self.floor_fraction = floor_fraction

    def split_negatives(self, matched: Tensor, max_iou: Tensor) -> tuple[Tensor, Tensor]:
        """``(binned, floor)``: the negatives that are IoU-binned and those in the floor set."""
        _, neg = split(matched)
        if self.floor_thr > 0:
            return neg & (max_iou >= self.floor_thr), neg & (max_iou < self.floor_thr)
        if self.floor_thr == 0:
            return neg & (max_iou > 0), neg & (max_iou == 0)
        return neg, torch.zeros_like(neg)

    def bin_index(self, max_iou: Tensor, binned: Tensor) -> Tensor:
        """``(..., M)`` int64: bin ``0..K-1`` of each binned negative over their own IoU range, ``K`` elsewhere.

        Bins are ``[lo + k w, lo + (k+1) w)`` with ``w = (hi - lo) / K``; the top edge ``hi`` falls in
        the last bin, and all negatives fall in bin 0 when ``hi == lo``.
        """
        iou = max_iou.float()
        k = self.num_bins
        if iou.shape[-1] == 0:
            return torch.full(iou.shape, k, dtype=torch.int64, device=iou.device)
        lo = torch.where(binned, iou, torch.inf).amin(-1, keepdim=True)
        hi = torch.where(binned, iou, -torch.inf).amax(-1, keepdim=True)
        width = (hi - lo) / k
        scaled = torch.where(width > 0, (iou - lo) / torch.where(width > 0, width, 1.0), 0.0)
        index = scaled.nan_to_num(0.0).floor().clamp(0, k - 1).long()
        return torch.where(binned, index, k)

    def neg_mask(
        self, matched: Tensor, max_iou: Tensor, num_expected: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """``(..., M)`` bool: ``num_expected`` (int tensor broadcasting against ``(..., 1)``) negatives per image."""
        k = self.num_bins
        _, neg = split(matched)
        binned, floor = self.split_negatives(matched, max_iou)
        keys = random_keys(matched, generator, 4)
        num_binned = scaled_count(1.0 - self.floor_fraction, num_expected)
        bins = self.bin_index(max_iou, binned)
        extra = (torch.arange(k, device=matched.device) >= k - num_binned % k).long()
        quota = torch.cat([num_binned // k + extra, torch.zeros_like(num_binned)], dim=-1)
        kept = binned & (rank_in_group(bins, keys[0]) < quota.gather(-1, bins))
        kept |= select_first(binned & ~kept, keys[1], num_binned - kept.sum(-1, keepdim=True))
        kept |= select_first(floor, keys[2], num_expected - kept.sum(-1, keepdim=True))
        return kept | select_first(neg & ~kept, keys[3], num_expected - kept.sum(-1, keepdim=True))

    def __call__(self, candidates: Candidates) -> Sample:
        """``pos_sampler``'s positives and IoU-balanced negatives filling to ``num``, per image."""
        check_needs(self, candidates)
        matched, generator = candidates.matched, candidates.generator
        pos = self.pos_sampler.pos_mask(matched, generator)
        num_neg = (self.num - pos.sum(-1, keepdim=True)).clamp(min=0)
        return Sample(pos, self.neg_mask(matched, candidates.max_iou, num_neg, generator))


def libra_sampler(
    num: int = 512, pos_fraction: float = 0.25, num_bins: int = 3, floor_thr: float = -1.0, floor_fraction: float = 0.0
) -> IoUBalancedNegSampler:
    """Libra R-CNN's box-head sampler (sec. 3.1): instance-balanced positives, IoU-balanced negatives.

    The defaults are the paper's released Faster R-CNN config (mmdetection's ``configs/libra_rcnn``:
    512 RoIs, ``pos_fraction=0.25``, ``num_bins=3``, ``floor_thr=-1``, ``floor_fraction=0``); the
    arguments are ``IoUBalancedNegSampler``'s, and ``num`` and ``pos_fraction`` also go to the
    ``InstanceBalancedPosSampler``. ``needs = {"max_iou"}``.
    """
    return IoUBalancedNegSampler(
        num,
        pos_fraction,
        num_bins,
        floor_thr,
        floor_fraction,
        pos_sampler=InstanceBalancedPosSampler(num, pos_fraction),
    )
