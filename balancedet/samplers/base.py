"""The sampler protocol (``Candidates`` in, ``Sample`` out) and the vectorised selection primitives.

Every sampler is called the same way, ``sampler(candidates) -> Sample``, and declares in ``needs``
the ``Candidates`` fields it reads besides ``matched`` (a subset of ``max_iou``, ``cls_loss``,
``box_loss``, ``boxes``), so that a detector computes only those (``docs/conventions.md``). A needed
field left ``None`` raises a ``ValueError`` naming the sampler and the field.

No sampler loops over candidates. Each one draws a random key per candidate (or reads a loss),
sorts once, and compares every candidate's rank among the eligible ones (or inside its group: a
ground-truth box, an IoU bin) with a quota held in a tensor. Quotas that depend on the data (the
number of positives present, say) therefore never reach the host, and a call runs without a host
synchronisation on any device (OHEM's optional NMS excepted). The result is a pair of bool masks,
fed to the losses directly (``weight=sample.weight()``).

``Sample.pos_idx`` / ``neg_idx`` / ``indices`` turn the masks of one image into index sets with
``torch.nonzero``: how many positives an image has is data, so their size is data-dependent and this
is the one host synchronisation on CUDA, paid only by a caller that gathers rows.

Conventions (``balancedet.assign.result``): ``matched >= 0`` positive (index of the matched
ground-truth box), ``-1`` background, ``-2`` ignored; ignored candidates are never kept. Every
sampler works along the last dimension, so it takes one image ``(M,)`` or a batch ``(B, M)``, and
each image of a batch gets its own quotas. Ties between equal keys or losses go to the candidate with
the lower index.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from balancedet.assign.result import BACKGROUND

__all__ = [
    "Candidates",
    "Sample",
    "check_needs",
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
class Candidates:
    """What a detector knows about its candidates (anchors or RoIs), batched over images.

    Attributes:
        matched: ``(B, M)`` or ``(M,)`` integer: ``>= 0`` index of the matched ground-truth box,
            ``-1`` background, ``-2`` ignored (``AssignResult.matched``).
        max_iou: ``matched``'s shape, float: each candidate's best IoU with any ground-truth box
            (``AssignResult.max_iou``; IoU-balanced sampling bins the negatives by it).
        cls_loss: ``matched``'s shape, float: per-candidate classification loss, computed without
            gradient (``reduction="none"``, summed over classes).
        box_loss: ``matched``'s shape, float: per-candidate localisation loss, 0 off the positives
            (samplers treat it as 0 there whatever it holds).
        boxes: ``(..., M, 4)`` ``(x1, y1, x2, y2)`` candidate boxes (OHEM's NMS).
        progress: training progress in [0, 1] (S-OHEM's stages).
        generator: the random samplers' source of keys; ``None`` uses torch's global generator.

    Shapes, dtypes and devices are checked here (no host sync); which fields must be present is
    checked by each sampler against its ``needs``.
    """

    matched: Tensor
    max_iou: Tensor | None = None
    cls_loss: Tensor | None = None
    box_loss: Tensor | None = None
    boxes: Tensor | None = None
    progress: float = 0.0
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        check_matched(self.matched)
        for name in ("max_iou", "cls_loss", "box_loss"):
            value = getattr(self, name)
            if value is not None:
                check_like(name, value, self.matched)
        if self.boxes is not None:
            _check_boxes(self.boxes, self.matched)
        if isinstance(self.progress, bool) or not isinstance(self.progress, int | float):
            raise TypeError(f"progress must be a Python float, got {type(self.progress).__name__}")
        if not 0.0 <= self.progress <= 1.0:
            raise ValueError(f"progress must lie in [0, 1], got {self.progress!r}")
        if self.generator is not None and not isinstance(self.generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(self.generator).__name__}")


@dataclass(frozen=True)
class Sample:
    """The candidates a sampler kept: two disjoint bool masks of ``matched``'s shape.

    Attributes:
        pos: ``(..., M)`` bool, the kept positives.
        neg: ``(..., M)`` bool, the kept negatives.

    ``loss(logits, labels, weight=sample.weight().flatten(), reduction="sum")`` equals the loss of
    the gathered rows ``logits[sample.indices]`` (one image) without copying the logits.
    """

    pos: Tensor
    neg: Tensor

    def __post_init__(self) -> None:
        for name in ("pos", "neg"):
            value = getattr(self, name)
            if not isinstance(value, Tensor) or value.dtype != torch.bool:
                what = type(value).__name__ if not isinstance(value, Tensor) else f"dtype {value.dtype}"
                raise TypeError(f"Sample.{name} must be a bool tensor, got {what}")
        if self.pos.shape != self.neg.shape:
            raise ValueError(f"Sample.pos {_shape(self.pos)} and Sample.neg {_shape(self.neg)} must have one shape")

    @property
    def keep(self) -> Tensor:
        """``(..., M)`` bool: every kept candidate (``pos | neg``)."""
        return self.pos | self.neg

    def weight(self, part: str = "all", dtype: torch.dtype = torch.float32) -> Tensor:
        """``(..., M)`` mask for the losses: 1 at the kept candidates, 0 elsewhere.

        Args:
            part: ``"all"`` (classification loss), ``"pos"`` (regression loss) or ``"neg"``.
            dtype: dtype of the mask.
        """
        if part == "all":
            mask = self.keep
        elif part == "pos":
            mask = self.pos
        elif part == "neg":
            mask = self.neg
        else:
            raise ValueError(f"part must be 'all', 'pos' or 'neg', got {part!r}")
        return mask.to(dtype)

    def _nonzero(self, mask: Tensor) -> Tensor:
        if mask.dim() != 1:
            raise ValueError(f"index sets are per image: masks must be (M,), got {_shape(mask)} (index an image first)")
        return torch.nonzero(mask).flatten()

    @property
    def pos_idx(self) -> Tensor:
        """``(P,)`` int64 ascending indices of the kept positives of one image (host sync on CUDA)."""
        return self._nonzero(self.pos)

    @property
    def neg_idx(self) -> Tensor:
        """``(N,)`` int64 ascending indices of the kept negatives of one image (host sync on CUDA)."""
        return self._nonzero(self.neg)

    @property
    def indices(self) -> Tensor:
        """``(P + N,)`` int64: the positives' indices, then the negatives' (host sync on CUDA)."""
        return torch.cat([self.pos_idx, self.neg_idx])


def check_needs(sampler: object, candidates: Candidates) -> None:
    """``candidates`` must be a ``Candidates`` holding every field in ``sampler.needs``."""
    name = type(sampler).__name__
    if not isinstance(candidates, Candidates):
        raise TypeError(f"{name} takes a Candidates, got {type(candidates).__name__}")
    missing = sorted(field for field in sampler.needs if getattr(candidates, field) is None)
    if missing:
        raise ValueError(f"{name} needs Candidates field(s) {', '.join(missing)}, got None")


def check_matched(matched: Tensor) -> None:
    """``matched`` must be an integer ``(M,)`` or ``(B, M)`` tensor."""
    if not isinstance(matched, Tensor):
        raise TypeError(f"matched must be a torch.Tensor, got {type(matched).__name__}")
    if matched.dtype.is_floating_point or matched.dtype.is_complex or matched.dtype == torch.bool:
        raise TypeError(f"matched must be an integer tensor, got dtype {matched.dtype} with shape {_shape(matched)}")
    if matched.dim() not in (1, 2):
        raise ValueError(f"matched must have shape (M,) or (B, M), got {_shape(matched)}")


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


def _check_boxes(boxes: Tensor, matched: Tensor) -> None:
    if not isinstance(boxes, Tensor):
        raise TypeError(f"boxes must be a torch.Tensor, got {type(boxes).__name__}")
    want = (*matched.shape, 4)
    if boxes.shape != want:
        raise ValueError(f"boxes must have shape {want} (matched's, then 4), got {_shape(boxes)}")
    if boxes.device != matched.device:
        raise ValueError(f"boxes is on {boxes.device} but matched is on {matched.device}")


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
