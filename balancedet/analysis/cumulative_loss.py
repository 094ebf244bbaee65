"""The cumulative distribution of the focal loss over positives and negatives (the focal paper's fig. 4).

Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017, arXiv 1708.02002, sec. 3.2 and fig. 4:
the per-anchor loss of a converged model, for positives and negatives separately, sorted from low to
high and normalised to sum to one; the curve is the loss share of the fraction ``f`` of examples with
the smallest losses. With growing ``gamma`` the negatives' curve bends down: for ``gamma = 2`` nearly
all the negatives' loss comes from a small fraction of them, while the positives' curve changes little.
The loss is the focal loss without alpha (alpha weighs positives against negatives, and the two are
normalised apart), summed over the classes of each anchor.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from balancedet.losses import sigmoid_focal_loss

__all__ = ["GAMMAS", "CumulativeLoss", "cumulative_curve"]

#: The gammas of the focal paper's fig. 4.
GAMMAS = (0.0, 0.5, 1.0, 2.0)


def cumulative_curve(losses: Tensor | np.ndarray, fractions: np.ndarray) -> np.ndarray | None:
    """The share of the total of ``losses`` held by the fraction ``f`` of them with the smallest values,
    at each ``f`` of ``fractions`` (in ``[0, 1]``), linear between the ``n + 1`` points ``i / n``.
    ``None`` when there is no loss to share (no example, or all losses 0)."""
    values = np.sort(np.asarray(losses, dtype=np.float64).reshape(-1))
    total = values.sum()
    if values.size == 0 or total <= 0:
        return None
    points = np.concatenate([[0.0], np.cumsum(values) / total])
    return np.interp(fractions, np.linspace(0.0, 1.0, values.size + 1), points)


class CumulativeLoss:
    """Per-anchor focal losses of positives and negatives for each gamma, gathered image by image.

    ``add(logits (N, C), labels (N,))`` takes one image's non-ignored anchors (``C`` = background):
    all its positives, and at most ``max_negatives`` of its negatives drawn uniformly without
    replacement (``generator``), which keeps the memory bounded on large images and leaves the
    distribution unbiased; ``result(points)`` the curves on ``points`` equally spaced fractions.
    """

    def __init__(self, gammas: tuple[float, ...] = GAMMAS, max_negatives: int = 20_000, seed: int = 0):
        self.gammas, self.max_negatives = gammas, max_negatives
        self.generator = torch.Generator().manual_seed(seed)
        self.losses: dict[str, list[Tensor]] = {"positive": [], "negative": []}
        self.negatives_seen = 0

    @torch.no_grad()
    def add(self, logits: Tensor, labels: Tensor) -> None:
        logits, labels = logits.detach().double().cpu(), labels.cpu()
        positive = labels < logits.shape[1]
        negative = positive.logical_not().nonzero(as_tuple=True)[0]
        self.negatives_seen += len(negative)
        if len(negative) > self.max_negatives:
            negative = negative[torch.randperm(len(negative), generator=self.generator)[: self.max_negatives]]
        for kind, rows in (("positive", positive.nonzero(as_tuple=True)[0]), ("negative", negative)):
            x, y = logits[rows], labels[rows]
            per_gamma = [
                sigmoid_focal_loss(x, y, alpha=None, gamma=gamma, reduction="none").sum(1) for gamma in self.gammas
            ]
            self.losses[kind].append(torch.stack(per_gamma, 1))

    def result(self, points: int = 101) -> dict[str, Any]:
        """``{"fractions", "positive": {gamma: curve}, "negative": {...}, counts, "hardest_20pct"}``;
        ``hardest_20pct`` is the loss share of the 20% of examples with the largest losses."""
        fractions = np.linspace(0.0, 1.0, points)
        out: dict[str, Any] = {"fractions": fractions.tolist(), "gammas": list(self.gammas)}
        for kind, parts in self.losses.items():
            losses = torch.cat(parts) if parts else torch.zeros(0, len(self.gammas), dtype=torch.float64)
            curves, hardest = {}, {}
            for i, gamma in enumerate(self.gammas):
                curve = cumulative_curve(losses[:, i], fractions)
                curves[str(gamma)] = None if curve is None else curve.tolist()
                at = cumulative_curve(losses[:, i], np.array([0.8]))
                hardest[str(gamma)] = None if at is None else float(1.0 - at[0])
            out[kind] = {"count": len(losses), "curves": curves, "hardest_20pct": hardest}
        out["negative"]["seen"] = self.negatives_seen
        return out
