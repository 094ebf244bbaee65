"""Balanced L1 loss (Pang et al., "Libra R-CNN", CVPR 2019, arXiv 1904.02701, eq. 8).

Inliers (``|x| < 1``) get a larger gradient than smooth L1 gives them, so that the many easy
samples are not drowned out by the few outliers; outliers keep a constant gradient ``gamma``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from balancedet.losses.reduce import check_reduction, weight_reduce_loss
from balancedet.losses.sigmoid_terms import upcast
from balancedet.losses.smooth_l1 import check_pair

__all__ = ["balanced_l1_loss", "BalancedL1Loss"]


def check_balanced_l1_params(alpha: float, gamma: float, beta: float) -> None:
    """``alpha > 0``, ``gamma > 0``, ``beta >= 0`` (ValueError naming the offending value)."""
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha!r}")
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0, got {gamma!r}")
    if not beta >= 0:
        raise ValueError(f"beta must be >= 0, got {beta!r}")


def balanced_l1_loss(
    pred: Tensor,
    target: Tensor,
    *,
    alpha: float = 0.5,
    gamma: float = 1.5,
    beta: float = 1.0,
    weight: Tensor | None = None,
    reduction: str = "mean",
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """Balanced L1 loss, eq. 8 of arXiv 1904.02701, element-wise over any shape.

    With ``b = e^(gamma / alpha) - 1`` (so that ``alpha ln(b + 1) = gamma``; ``b = e^3 - 1`` for
    the defaults) and ``t = |pred - target| / beta``::

        f(t) = alpha / b (b t + 1) ln(b t + 1) - alpha t      for t < 1
        f(t) = gamma t + gamma / b - alpha                    otherwise
        L    = beta * f(t)

    ``dL/d|x| = f'(t)`` is ``alpha ln(b t + 1)`` inside and ``gamma`` outside, so value and gradient
    are continuous at ``|x| = beta`` for every ``beta``; ``beta = 1`` is the paper's equation and
    ``beta = 0`` its limit ``gamma |x|``. This is the scaling PyTorch's smooth L1 uses for its
    ``beta``. mmdetection instead divides by ``beta`` only inside the logarithm, which keeps the value
    continuous but makes the gradient jump at ``|x| = beta`` (from 1.70 to 1.50 for ``beta = 0.11``).

    Args:
        pred: any shape, e.g. ``(N, 4)`` box deltas.
        target: the shape of ``pred``, finite.
        alpha: inlier gradient scale (0.5 in the paper).
        gamma: outlier gradient, the constant ``dL/d|x|`` for ``|x| >= beta`` (1.5 in the paper).
        beta: the threshold between inliers and outliers (1 in the paper).
        weight: the shape of ``pred``, or ``(N,)``.

    Returns the loss of ``pred``'s shape for ``reduction="none"`` (float32 for half inputs), else a
    scalar. Half / bf16 inputs are computed in float32.
    """
    check_pair(pred, target)
    check_reduction(reduction, avg_factor)
    check_balanced_l1_params(alpha, gamma, beta)
    diff = (upcast(pred) - upcast(target)).abs()
    if beta == 0:
        loss = gamma * diff
    else:
        b = math.expm1(gamma / alpha)
        t = diff / beta
        # f(t) = f(u) + gamma (t - u) with u = min(t, 1): one expression for both branches, whose
        # inlier part never sees a large t (no overflow, no NaN gradient from an unused branch);
        # written with t - u rather than a second clamp so that the gradient at t = 1 is gamma.
        u = t.clamp(max=1.0)
        bu = b * u
        inlier = (alpha / b) * (bu + 1.0) * torch.log1p(bu) - alpha * u
        loss = beta * (inlier + gamma * (t - u))
    return weight_reduce_loss(loss, weight, reduction, avg_factor)


class BalancedL1Loss(nn.Module):
    """``balanced_l1_loss`` as a module (Libra R-CNN's box loss: alpha 0.5, gamma 1.5, beta 1)."""

    self_normalizing = False
    needs_decoded_boxes = False

    def __init__(
        self,
        alpha: float = 0.5,
        gamma: float = 1.5,
        beta: float = 1.0,
        reduction: str = "mean",
        loss_weight: float = 1.0,
    ):
        super().__init__()
        check_balanced_l1_params(alpha, gamma, beta)
        check_reduction(reduction, None)
        self.alpha, self.gamma, self.beta = alpha, gamma, beta
        self.reduction, self.loss_weight = reduction, loss_weight

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None = None, avg_factor=None) -> Tensor:
        loss = balanced_l1_loss(
            pred,
            target,
            alpha=self.alpha,
            gamma=self.gamma,
            beta=self.beta,
            weight=weight,
            reduction=self.reduction,
            avg_factor=avg_factor,
        )
        return self.loss_weight * loss
