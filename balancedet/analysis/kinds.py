"""The four kinds of training examples of a sigmoid classifier: easy/hard x positive/negative.

Easy examples are many and each has a small loss, hard ones are few with large losses; under plain
cross entropy the easy ones' sum dominates (the focal-loss paper, Lin et al., ICCV 2017, sec. 3 and
fig. 4; the GHM paper, Li et al., AAAI 2019, sec. 3). The hardness rule used throughout balancedet:
an example is *hard* when the classifier gets it wrong at a score threshold of 0.5, i.e. when its
``p_t < 0.5``, with ``p_t`` the probability it gives to the right answer:

- a positive (label ``k < C``): ``p_t = sigmoid(x_k)``, hard when its own class scores below 0.5;
- a negative (label ``C``, background): ``p_t = 1 - max_c sigmoid(x_c)``, hard when some class
  scores 0.5 or more, i.e. it would be a false positive at that threshold.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "EASY_POSITIVE",
    "EASY_NEGATIVE",
    "HARD_NEGATIVE",
    "HARD_POSITIVE",
    "KIND_NAMES",
    "example_kinds",
    "kind_shares",
    "kind_totals",
    "shares_from_totals",
]

EASY_POSITIVE, HARD_POSITIVE, EASY_NEGATIVE, HARD_NEGATIVE = 0, 1, 2, 3
KIND_NAMES = ("easy_pos", "hard_pos", "easy_neg", "hard_neg")


def example_kinds(logits: Tensor, labels: Tensor, threshold: float = 0.5) -> Tensor:
    """``(N,)`` int64 kind of each example (``EASY_POSITIVE`` ... ``HARD_NEGATIVE``).

    Args:
        logits: ``(N, C)`` sigmoid logits.
        labels: ``(N,)`` int64 in ``[0, C]``, ``C`` = background.
        threshold: the score at which an example counts as classified (0.5).
    """
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(
            f"example_kinds: logits (N, C) and labels (N,), got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    num_classes = logits.shape[1]
    positive = labels < num_classes
    prob = logits.detach().float().sigmoid()
    own = prob.gather(1, labels.clamp(max=num_classes - 1).unsqueeze(1)).squeeze(1)
    best = prob.max(dim=1).values if num_classes else prob.new_zeros(len(labels))
    p_t = torch.where(positive, own, 1.0 - best)
    hard = p_t < threshold
    return torch.where(
        positive, torch.where(hard, HARD_POSITIVE, EASY_POSITIVE), torch.where(hard, HARD_NEGATIVE, EASY_NEGATIVE)
    )


def kind_totals(kinds: Tensor, losses: Tensor, weight: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(4,)`` int64 counts and ``(4,)`` float64 loss sums of the four kinds, over the examples with
    ``weight > 0`` (all when ``weight`` is None): what ``kind_shares`` reports, as tensors a caller can
    add up over batches before turning them into shares (``shares_from_totals``)."""
    keep = torch.ones_like(losses, dtype=torch.bool) if weight is None else weight > 0
    counts = torch.bincount(kinds[keep], minlength=4)
    sums = torch.zeros(4, dtype=torch.float64, device=losses.device).index_add_(0, kinds[keep], losses[keep].double())
    return counts, sums


def shares_from_totals(counts: Tensor, sums: Tensor) -> dict[str, dict[str, float]]:
    """``{"easy_pos": {"count": n, "share": s}, ...}`` from ``kind_totals``' counts and sums; the shares
    sum to 1 (all 0 when the total loss is 0)."""
    sums = sums.double()
    total = sums.sum()
    shares = sums / total if total > 0 else torch.zeros_like(sums)
    return {name: {"count": int(counts[i]), "share": float(shares[i])} for i, name in enumerate(KIND_NAMES)}


def kind_shares(kinds: Tensor, losses: Tensor, weight: Tensor | None = None) -> dict[str, dict[str, float]]:
    """Counts and loss shares of the four kinds: ``{"easy_pos": {"count": n, "share": s}, ...}``.

    ``losses``: ``(N,)`` each example's loss (summed over its classes); ``weight``: ``(N,)`` 0/1 of the
    examples that count (ignored anchors 0). Shares sum to 1 (all 0 when the total loss is 0).
    """
    return shares_from_totals(*kind_totals(kinds, losses, weight))
