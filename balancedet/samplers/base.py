"""What every sampler returns, and the vectorised selection primitives the samplers share.

No sampler loops over candidates. Each one draws a random key per candidate (or reads a loss),
sorts once, and compares every candidate's rank among the eligible ones (or inside its group: a
ground-truth box, an IoU bin) with a quota held in a tensor. Quotas that depend on the data (the
number of positives present, say) therefore never reach the host, and the samplers' ``masks``
methods run without a host synchronisation on any device.

``__call__`` turns those masks into index sets with ``torch.nonzero``: how many positives an image
has is data, so the size of ``SampleResult.pos_idx`` is data-dependent and this is the one host
synchronisation of a call on CUDA. A training loop that wants none feeds the masks to the losses
directly (``weight=(pos | neg).float()``).

Conventions (``balancedet.assign.result``): ``matched >= 0`` positive (index of the matched
ground-truth box), ``-1`` background, ``-2`` ignored. Every sampler works along the last dimension,
so ``masks`` accepts one image ``(M,)`` or a batch ``(B, M)``; ``__call__`` takes one image.
Ties between equal keys or losses go to the candidate with the lower index.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from balancedet.assign.result import BACKGROUND

__all__ = [
    "SampleResult",
    "to_weight",
    "random_keys",
    "select_first",
    "sort_groups",
    "rank_in_group",
    "negative_quota",
    "scaled_count",
    "split",
    "valid",
    "check_matched",
    "check_like",
]

#: A per-image quota: a Python int, or an int64 tensor broadcasting against ``(..., 1)``.
Quota = int | Tensor


def _shape(t: Tensor) -> str:
    return str(tuple(t.shape))


@dataclass(frozen=True)
class SampleResult:
    """The candidates a sampler kept in one image.

    Attributes:
        pos_idx: ``(P,)`` int64, ascending indices of the kept positives, on the input's device.
        neg_idx: ``(N,)`` int64, ascending indices of the kept negatives, on the input's device.
    """

    pos_idx: Tensor
    neg_idx: Tensor

    @classmethod
    def from_masks(cls, pos: Tensor, neg: Tensor) -> SampleResult:
        """Index sets of two ``(M,)`` bool masks (``torch.nonzero``: one host sync on CUDA)."""
        if pos.dim() != 1 or pos.shape != neg.shape:
            raise ValueError(f"masks must be two (M,) tensors of one image, got {_shape(pos)} and {_shape(neg)}")
        return cls(torch.nonzero(pos).flatten(), torch.nonzero(neg).flatten())

    @property
    def indices(self) -> Tensor:
        """``(P + N,)`` int64: the positives' indices, then the negatives'."""
        return torch.cat([self.pos_idx, self.neg_idx])

    @property
    def num_pos(self) -> int:
        return self.pos_idx.numel()

    @property
    def num_neg(self) -> int:
        return self.neg_idx.numel()


def to_weight(result: SampleResult, num: int, *, part: str = "all", dtype: torch.dtype = torch.float32) -> Tensor:
    """``(num,)`` weight mask for the losses: 1 at the kept candidates, 0 elsewhere.

    Args:
        result: a sampler's output for an image with ``num`` candidates.
        num: ``M``, the number of candidates (rows of the logits).
        part: ``"all"`` (classification loss), ``"pos"`` (regression loss) or ``"neg"``.
        dtype: dtype of the mask.

    ``loss(logits, labels, weight=to_weight(r, M), reduction="sum")`` equals the loss of the gathered
    rows ``logits[r.indices]`` without copying the logits.
    """
    if part == "all":
        idx = result.indices
    elif part == "pos":
        idx = result.pos_idx
    elif part == "neg":
        idx = result.neg_idx
    else:
        raise ValueError(f"part must be 'all', 'pos' or 'neg', got {part!r}")
    weight = torch.zeros(num, dtype=dtype, device=idx.device)
    return weight.index_fill_(0, idx, 1)


def check_matched(matched: Tensor, *, one_image: bool = False) -> None:
    """``matched`` must be an integer ``(M,)`` (or, unless ``one_image``, ``(B, M)``) tensor."""
    if not isinstance(matched, Tensor):
        raise TypeError(f"matched must be a torch.Tensor, got {type(matched).__name__}")
    if matched.dtype.is_floating_point or matched.dtype.is_complex or matched.dtype == torch.bool:
        raise TypeError(f"matched must be an integer tensor, got dtype {matched.dtype} with shape {_shape(matched)}")
    dims = (1,) if one_image else (1, 2)
    if matched.dim() not in dims:
        what = "(M,)" if one_image else "(M,) or (B, M)"
        raise ValueError(f"matched must have shape {what}, got {_shape(matched)}")


def check_like(name: str, t: Tensor, matched: Tensor) -> None:
    """``t`` must be a floating tensor of ``matched``'s shape on its device."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype} with shape {_shape(t)}")
    if t.shape != matched.shape:
        raise ValueError(f"{name} must have the shape of matched {_shape(matched)}, got {_shape(t)}")
    if t.device != matched.device:
        raise ValueError(f"{name} is on {t.device} but matched is on {matched.device}")


def random_keys(like: Tensor, generator: torch.Generator | None = None, n: int | None = None) -> Tensor:
    """Uniform keys in [0, 1) of ``like``'s shape (``(n, *like.shape)`` when ``n`` is given) on its device.

    Drawn from ``generator`` (on the generator's device); a generator on another device than
    ``like`` costs one copy of the keys.
    """
    shape = like.shape if n is None else (n, *like.shape)
    if generator is None:
        return torch.rand(shape, device=like.device)
    return torch.rand(shape, generator=generator, device=generator.device).to(like.device)


def _lex_order(keys: Tensor | tuple[Tensor, ...], descending: bool) -> Tensor:
    """Permutation along the last dim sorting by ``keys`` (primary first), ties by lower index."""
    keys = (keys,) if isinstance(keys, Tensor) else keys
    order = torch.argsort(keys[-1], dim=-1, descending=descending, stable=True)
    for key in reversed(keys[:-1]):
        order = order.gather(-1, torch.argsort(key.gather(-1, order), dim=-1, descending=descending, stable=True))
    return order


def select_first(eligible: Tensor, key: Tensor | tuple[Tensor, ...], k: Quota, *, descending: bool = False) -> Tensor:
    """The ``k`` eligible candidates that come first when sorted by ``key`` (per row of the last dim).

    Args:
        eligible: ``(..., M)`` bool.
        key: ``(..., M)`` sort key, or a tuple of keys (primary first, later ones break ties).
        k: how many to keep: an int or an int tensor broadcasting against ``(..., 1)``; fewer are kept
            where fewer are eligible.
        descending: keep the largest keys (losses) instead of the smallest (random keys).

    Returns ``(..., M)`` bool. One sort and one cumulative sum: the rank of a candidate among the
    eligible is the running count of eligible candidates in sorted order, exact under ties.
    """
    order = _lex_order(key, descending)
    rank_sorted = eligible.gather(-1, order).cumsum(-1) - 1
    rank = torch.empty_like(rank_sorted).scatter_(-1, order, rank_sorted)
    return eligible & (rank < k)


def sort_groups(group: Tensor, key: Tensor, *, descending: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """Sort along the last dim by (``group`` ascending, ``key``), ties by lower index.

    Returns ``(order, sorted_group, rank)``: the permutation, ``group`` in that order, and each sorted
    element's rank inside its group (0 for the group's first). Two sorts and a ``searchsorted``; the
    number of groups need not be known.
    """
    order = torch.argsort(key, dim=-1, descending=descending, stable=True)
    g = group.gather(-1, order)
    by_group = torch.argsort(g, dim=-1, stable=True)
    order = order.gather(-1, by_group)
    g = g.gather(-1, by_group).contiguous()
    start = torch.searchsorted(g, g)
    rank = torch.arange(g.shape[-1], device=g.device) - start
    return order, g, rank


def rank_in_group(group: Tensor, key: Tensor, *, descending: bool = False) -> Tensor:
    """``(..., M)`` int64: each element's rank inside its ``group`` when ordered by ``key``."""
    order, _, rank = sort_groups(group, key, descending=descending)
    return torch.empty_like(rank).scatter_(-1, order, rank)


def negative_quota(num: int, num_pos: Tensor, neg_pos_ub: float = -1.0) -> Tensor:
    """Negatives wanted next to ``num_pos`` kept positives: fill to ``num``, and at most
    ``floor(neg_pos_ub * max(num_pos, 1))`` when ``neg_pos_ub >= 0`` (mmdetection's ``BaseSampler``)."""
    quota = num - num_pos
    if neg_pos_ub >= 0:
        quota = torch.minimum(quota, scaled_count(neg_pos_ub, num_pos.clamp(min=1)))
    return quota


def scaled_count(ratio: float, count: Tensor) -> Tensor:
    """``floor(ratio * count)`` as int64, in float64 (float32 on MPS, which has no float64)."""
    dtype = torch.float32 if count.device.type == "mps" else torch.float64
    return torch.floor(ratio * count.to(dtype)).long()


def split(matched: Tensor) -> tuple[Tensor, Tensor]:
    """``(positive, negative)`` bool masks of ``matched``; ignored candidates are in neither."""
    return matched >= 0, matched == BACKGROUND


def valid(matched: Tensor) -> Tensor:
    """Candidates that are positive or negative (not ignored)."""
    return (matched >= 0) | (matched == BACKGROUND)
