"""The cross-entropy baselines of the focal loss paper (arXiv 1708.02002, sec. 3.1 and Table 1a).

``binary_cross_entropy`` is the alpha-balanced CE of eq. 3, one sigmoid per class: it is the
focal loss with ``gamma = 0`` and shares its fused path. ``cross_entropy`` is the softmax
classifier of two-stage heads, background being class 0, with the same alpha balancing.
"""

from __future__ import annotations

from torch import Tensor, nn

from balancedet.losses.focal import sigmoid_focal_loss, softmax_focal_loss

__all__ = ["binary_cross_entropy", "cross_entropy", "BinaryCrossEntropyLoss", "CrossEntropyLoss"]


def binary_cross_entropy(
    logits: Tensor,
    targets: Tensor,
    *,
    alpha: float | None = None,
    weight: Tensor | None = None,
    reduction: str = "mean",
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """Alpha-balanced sigmoid cross entropy, eq. 3: ``CE = -alpha_t log(p_t)``.

    Same arguments as ``sigmoid_focal_loss`` (targets: ``(N,)`` int with ``C`` = background, or
    ``(N, C)`` float). ``alpha=None`` is plain BCE; the paper's best CE baseline uses 0.75.
    """
    return sigmoid_focal_loss(
        logits, targets, alpha=alpha, gamma=0.0, weight=weight, reduction=reduction, avg_factor=avg_factor
    )


def cross_entropy(
    logits: Tensor,
    labels: Tensor,
    *,
    alpha: float | Tensor | None = None,
    weight: Tensor | None = None,
    reduction: str = "mean",
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """Softmax cross entropy over ``C + 1`` classes (column 0 = background), alpha-balanced.

    ``alpha`` as in ``softmax_focal_loss``: a float weighs foreground classes by ``alpha`` and
    background by ``1 - alpha``; a ``(C + 1,)`` tensor gives per-class weights.
    """
    return softmax_focal_loss(
        logits, labels, gamma=0.0, alpha=alpha, weight=weight, reduction=reduction, avg_factor=avg_factor
    )


class BinaryCrossEntropyLoss(nn.Module):
    """``binary_cross_entropy`` as a module."""

    self_normalizing = False
    needs_quality_targets = False

    def __init__(self, alpha: float | None = None, reduction: str = "mean", loss_weight: float = 1.0):
        super().__init__()
        self.alpha, self.reduction, self.loss_weight = alpha, reduction, loss_weight

    def forward(self, logits: Tensor, targets: Tensor, weight: Tensor | None = None, avg_factor=None) -> Tensor:
        loss = binary_cross_entropy(
            logits, targets, alpha=self.alpha, weight=weight, reduction=self.reduction, avg_factor=avg_factor
        )
        return self.loss_weight * loss


class CrossEntropyLoss(nn.Module):
    """``cross_entropy`` as a module."""

    self_normalizing = False
    needs_quality_targets = False

    def __init__(self, alpha: float | Tensor | None = None, reduction: str = "mean", loss_weight: float = 1.0):
        super().__init__()
        self.alpha, self.reduction, self.loss_weight = alpha, reduction, loss_weight

    def forward(self, logits: Tensor, labels: Tensor, weight: Tensor | None = None, avg_factor=None) -> Tensor:
        loss = cross_entropy(
            logits, labels, alpha=self.alpha, weight=weight, reduction=self.reduction, avg_factor=avg_factor
        )
        return self.loss_weight * loss
