"""Smooth L1 (Huber) and L1 box-regression losses, the baselines of the regression remedies.

Smooth L1 comes from Fast R-CNN (Girshick, ICCV 2015, eq. 3, with ``beta = 1``); its descendants
use ``beta = 1/9`` on box deltas. The element-wise work is ``torch.nn.functional``'s.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from balancedet.losses.checks import check_finite, check_float, check_same_shape
from balancedet.losses.reduce import check_reduction, weight_reduce_loss
from balancedet.losses.sigmoid_terms import upcast

__all__ = ["smooth_l1_loss", "l1_loss", "SmoothL1Loss", "L1Loss"]


def check_pair(pred: Tensor, target: Tensor) -> None:
    """``pred`` and ``target`` are floating tensors of one shape, ``target`` finite."""
    check_float("pred", pred)
    check_float("target", target)
    check_same_shape("pred", pred, "target", target)
    check_finite("target", target)


def smooth_l1_loss(
    pred: Tensor,
    target: Tensor,
    *,
    beta: float = 1.0,
    weight: Tensor | None = None,
    reduction: str = "mean",
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """Smooth L1 loss, element-wise over any shape.

    With ``x = pred - target``: ``0.5 x^2 / beta`` for ``|x| < beta``, else ``|x| - 0.5 beta``
    (PyTorch's convention; ``beta = 0`` is plain L1).

    Args:
        pred: any shape, e.g. ``(N, 4)`` box deltas.
        target: the shape of ``pred``, finite.
        beta: the threshold (1 in Fast R-CNN, 1/9 in its descendants' box heads).
        weight: the shape of ``pred``, or ``(N,)``.

    Returns the loss of ``pred``'s shape for ``reduction="none"``, else a scalar. Half / bf16
    inputs are computed in float32.
    """
    check_reduction(reduction, avg_factor)
    if not beta >= 0:
        raise ValueError(f"beta must be >= 0, got {beta!r}")
    check_pair(pred, target)
    loss = F.smooth_l1_loss(upcast(pred), upcast(target), reduction="none", beta=beta)
    return weight_reduce_loss(loss, weight, reduction, avg_factor)


def l1_loss(
    pred: Tensor,
    target: Tensor,
    *,
    weight: Tensor | None = None,
    reduction: str = "mean",
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """L1 loss ``|pred - target|``, element-wise over any shape (arguments as ``smooth_l1_loss``)."""
    check_reduction(reduction, avg_factor)
    check_pair(pred, target)
    return weight_reduce_loss((upcast(pred) - upcast(target)).abs(), weight, reduction, avg_factor)


class SmoothL1Loss(nn.Module):
    """``smooth_l1_loss`` as a module."""

    self_normalizing = False
    needs_decoded_boxes = False

    def __init__(self, beta: float = 1.0, reduction: str = "mean", loss_weight: float = 1.0):
        super().__init__()
        if not beta >= 0:
            raise ValueError(f"beta must be >= 0, got {beta!r}")
        check_reduction(reduction, None)
        self.beta, self.reduction, self.loss_weight = beta, reduction, loss_weight

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None = None, avg_factor=None) -> Tensor:
        loss = smooth_l1_loss(
            pred, target, beta=self.beta, weight=weight, reduction=self.reduction, avg_factor=avg_factor
        )
        return self.loss_weight * loss


class L1Loss(nn.Module):
    """``l1_loss`` as a module."""

    self_normalizing = False
    needs_decoded_boxes = False

    def __init__(self, reduction: str = "mean", loss_weight: float = 1.0):
        super().__init__()
        check_reduction(reduction, None)
        self.reduction, self.loss_weight = reduction, loss_weight

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None = None, avg_factor=None) -> Tensor:
        loss = l1_loss(pred, target, weight=weight, reduction=self.reduction, avg_factor=avg_factor)
        return self.loss_weight * loss
