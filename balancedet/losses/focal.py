"""Focal loss and its relatives (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017).

``sigmoid_focal_loss`` is eq. 5 of arXiv 1708.02002: ``FL(p_t) = -alpha_t (1 - p_t)^gamma log(p_t)``,
computed from logits (never ``log(p)``) so that it stays finite and keeps growing linearly for
logits of +-100 in float32 and under bf16/fp16 autocast. ``focal_loss_star`` is the appendix
variant FL*, ``softmax_focal_loss`` the same modulation on softmax probabilities, and
``prior_bias`` the classification-bias initialisation of sec. 3.3.

The sigmoid focal loss has a fused fast path: one custom autograd function that computes the
loss and its gradient in the same pass and keeps a single ``N x C`` tensor (the gradient) for
backward, where ``torchvision.ops.sigmoid_focal_loss`` keeps eight. Integer labels are read
directly: the ``N x C`` pass evaluates every element as a negative, and the ``N`` positive
elements are patched afterwards with gathers and scatters, so no one-hot tensor is built.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from balancedet.losses.checks import check_float, check_labels, shape_str, split_targets
from balancedet.losses.reduce import check_reduction, expand_weight, scale_tensor, weight_reduce_loss
from balancedet.losses.sigmoid_terms import (
    negative_focal_terms,
    negative_kernel,
    patch_positives,
    positive_focal_terms,
    power,
    soft_kernel,
    upcast,
)

__all__ = [
    "prior_bias",
    "sigmoid_focal_loss",
    "softmax_focal_loss",
    "focal_loss_star",
    "FocalLoss",
    "SoftmaxFocalLoss",
    "FocalLossStar",
]


def prior_bias(pi: float = 0.01) -> float:
    """Bias of the last classification conv so that every anchor starts at probability ``pi``.

    Focal loss paper, sec. 3.3 and 4.1: ``b = -log((1 - pi) / pi)``; with pi = 0.01 the
    ~100k easy negatives do not swamp the first iterations.
    """
    if not 0.0 < pi < 1.0:
        raise ValueError(f"pi must lie in (0, 1), got {pi!r}")
    return -math.log((1.0 - pi) / pi)


def _focal_forward(
    x: Tensor,
    labels: Tensor | None,
    targets: Tensor | None,
    w: Tensor | None,
    scale: Tensor,
    alpha: float | None,
    gamma: float,
    with_grad: bool,
    reduce: bool,
) -> tuple[Tensor, Tensor | None]:
    if targets is not None:
        return soft_kernel(x, targets, w, scale, alpha, gamma, with_grad, reduce)
    alpha_neg = 1.0 if alpha is None else 1.0 - alpha
    alpha_pos = 1.0 if alpha is None else alpha
    loss, grad = negative_kernel(x, w, scale, alpha_neg, gamma, with_grad, reduce)
    if x.shape[0] == 0 or x.shape[1] == 0:
        return loss, grad
    col = labels.clamp(max=x.shape[1] - 1).unsqueeze(1)
    xp = upcast(x.gather(1, col).squeeze(1))
    pos_loss, pos_grad = positive_focal_terms(xp, gamma, with_grad)
    neg_loss, _ = negative_focal_terms(xp, gamma, False)
    pos_loss = pos_loss * alpha_pos
    if pos_grad is not None:
        pos_grad = pos_grad * alpha_pos
    loss = patch_positives(x, labels, w, scale, loss, grad, reduce, (pos_loss, pos_grad), (neg_loss * alpha_neg, None))
    return loss, grad


class _FusedFocal(torch.autograd.Function):
    """Loss and gradient in one pass; backward multiplies the one saved tensor by grad_output.

    The saved gradient is float32 for half/bf16 logits and is cast to their dtype only after the
    multiplication (see ``sigmoid_terms``): an fp16 copy flushes small gradients to zero and
    overflows once multiplied by a GradScaler scale.
    """

    @staticmethod
    def forward(ctx, x, labels, targets, w, scale, alpha, gamma, reduce):  # noqa: D102
        loss, grad = _focal_forward(x, labels, targets, w, scale, alpha, gamma, True, reduce)
        ctx.save_for_backward(grad)
        ctx.input_dtype = x.dtype
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):  # noqa: D102
        (grad,) = ctx.saved_tensors
        grad_x = (grad * grad_output.to(grad.dtype)).to(ctx.input_dtype)
        return grad_x, None, None, None, None, None, None, None


def _reference_sigmoid_focal(
    x: Tensor, y: Tensor, alpha: float | None, gamma: float, w: Tensor | None, reduction: str, avg_factor
) -> Tensor:
    """Plain autograd composition of eq. 5 (used when ``weight`` needs a gradient; the test oracle
    for the fused path is an independent float64 implementation in the tests)."""
    xc = upcast(x)
    yc = y.to(xc.dtype)
    p = torch.sigmoid(xc)
    ce = F.binary_cross_entropy_with_logits(xc, yc, reduction="none")
    m = p * (1 - yc) + (1 - p) * yc
    loss = ce * power(m, gamma)
    if alpha is not None:
        loss = loss * (alpha * yc + (1 - alpha) * (1 - yc))
    return weight_reduce_loss(loss, w, reduction, avg_factor)


def sigmoid_focal_loss(
    logits: Tensor,
    targets: Tensor,
    *,
    alpha: float | None = 0.25,
    gamma: float = 2.0,
    weight: Tensor | None = None,
    reduction: str = "mean",
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """Sigmoid focal loss, eq. 5 of arXiv 1708.02002, element-wise over ``(N, C)``.

    Args:
        logits: ``(N, C)`` classification logits, one sigmoid per class (no background column).
        targets: ``(N,)`` int64 class indices with ``C`` meaning background, or ``(N, C)`` float
            one-hot / soft targets in [0, 1] (soft targets use ``1 - p_t = p(1-y) + (1-p)y``).
        alpha: weight of positives (``1 - alpha`` for negatives); ``None`` turns balancing off.
        gamma: focusing parameter; ``gamma = 0`` is alpha-balanced cross entropy.
        weight: ``(N,)`` or ``(N, C)`` element weights (ignored anchors get 0).
        reduction: ``"none"`` (``(N, C)``), ``"mean"`` or ``"sum"``.
        avg_factor: with ``"mean"``, divide the sum by this (e.g. the number of positives).

    Returns a float32 loss for half/bf16 logits, in the logits' dtype otherwise. The gradient
    flows to ``logits`` (and to ``weight`` if it requires one, through the plain path).
    """
    check_float("logits", logits, dim=2)
    check_reduction(reduction, avg_factor)
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma!r}")
    if alpha is not None and not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1] or be None, got {alpha!r}")
    labels, soft = split_targets(logits, targets)
    w = expand_weight(weight, logits.shape)
    if w is not None and w.requires_grad:
        y = soft if soft is not None else _one_hot(labels, logits.shape[1])
        return _reference_sigmoid_focal(logits, y, alpha, gamma, weight, reduction, avg_factor)
    return _run_fused(logits, labels, soft, w, alpha, gamma, reduction, avg_factor)


def _run_fused(logits, labels, soft, w, alpha, gamma, reduction, avg_factor) -> Tensor:
    reduce = reduction != "none"
    cdtype = upcast(logits).dtype
    scale = scale_tensor(logits.numel(), reduction, avg_factor, cdtype, logits.device)
    if w is not None:
        w = w.to(cdtype)
    if torch.is_grad_enabled() and logits.requires_grad:
        return _FusedFocal.apply(logits, labels, soft, w, scale, alpha, float(gamma), reduce)
    loss, _ = _focal_forward(logits, labels, soft, w, scale, alpha, float(gamma), False, reduce)
    return loss


def _one_hot(labels: Tensor, num_classes: int) -> Tensor:
    """``(N, C)`` float one-hot with the background index ``C`` mapping to an all-zero row."""
    return F.one_hot(labels.long(), num_classes + 1)[:, :num_classes].float()


def softmax_focal_loss(
    logits: Tensor,
    labels: Tensor,
    *,
    gamma: float = 2.0,
    alpha: float | Tensor | None = None,
    weight: Tensor | None = None,
    reduction: str = "mean",
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """Focal modulation on a softmax over ``C + 1`` classes, background being class 0.

    ``FL = -alpha_t (1 - p_t)^gamma log p_t`` with ``p_t`` the softmax probability of the true
    class, computed from ``log_softmax``. ``alpha`` is ``None``, a float (weight of the foreground
    classes, ``1 - alpha`` for background) or a ``(C + 1,)`` tensor of per-class weights.

    Args:
        logits: ``(N, C + 1)``; column 0 is background.
        labels: ``(N,)`` int64 in ``[0, C]``.
    Returns ``(N,)`` for ``reduction="none"``.
    """
    check_float("logits", logits, dim=2)
    check_reduction(reduction, avg_factor)
    n, k = logits.shape
    check_labels("labels", labels, n, 0, k - 1)
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma!r}")
    xc = upcast(logits)
    logpt = F.log_softmax(xc, dim=1).gather(1, labels.long().unsqueeze(1)).squeeze(1)
    loss = -logpt if gamma == 0.0 else -power(-torch.expm1(logpt), gamma) * logpt
    if alpha is not None:
        if isinstance(alpha, Tensor):
            if alpha.shape != (k,):
                raise ValueError(f"alpha tensor must have shape ({k},), got {shape_str(alpha)}")
            alpha_t = alpha.to(loss).gather(0, labels.long())
        else:
            if not 0.0 <= alpha <= 1.0:
                raise ValueError(f"alpha must lie in [0, 1], got {alpha!r}")
            alpha_t = torch.where(labels == 0, 1.0 - alpha, alpha).to(loss.dtype)
        loss = loss * alpha_t
    return weight_reduce_loss(loss, weight, reduction, avg_factor)


def focal_loss_star(
    logits: Tensor,
    targets: Tensor,
    *,
    gamma: float = 2.0,
    beta: float = 1.0,
    weight: Tensor | None = None,
    reduction: str = "mean",
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """FL*, the appendix A variant of arXiv 1708.02002.

    With ``y`` in {-1, +1} and ``x_t = y x``: ``p_t* = sigmoid(gamma x_t + beta)`` and
    ``FL* = -log(p_t*) / gamma = softplus(-(gamma x_t + beta)) / gamma``. Targets as in
    ``sigmoid_focal_loss`` (int labels with ``C`` = background, or a 0/1 ``(N, C)`` tensor).
    """
    check_float("logits", logits, dim=2)
    check_reduction(reduction, avg_factor)
    if gamma <= 0:
        raise ValueError(f"gamma must be > 0 for FL*, got {gamma!r}")
    labels, soft = split_targets(logits, targets)
    xc = upcast(logits)
    y01 = soft.to(xc.dtype) if soft is not None else _one_hot(labels, logits.shape[1]).to(xc.dtype)
    xt = (2.0 * y01 - 1.0) * xc
    loss = F.softplus(-(gamma * xt + beta)) / gamma
    return weight_reduce_loss(loss, weight, reduction, avg_factor)


class FocalLoss(nn.Module):
    """``sigmoid_focal_loss`` as a module; ``loss_weight`` scales the result."""

    self_normalizing = False
    needs_quality_targets = False

    def __init__(
        self,
        alpha: float | None = 0.25,
        gamma: float = 2.0,
        reduction: str = "mean",
        loss_weight: float = 1.0,
    ):
        super().__init__()
        self.alpha, self.gamma, self.reduction, self.loss_weight = alpha, gamma, reduction, loss_weight

    def forward(self, logits: Tensor, targets: Tensor, weight: Tensor | None = None, avg_factor=None) -> Tensor:
        loss = sigmoid_focal_loss(
            logits,
            targets,
            alpha=self.alpha,
            gamma=self.gamma,
            weight=weight,
            reduction=self.reduction,
            avg_factor=avg_factor,
        )
        return self.loss_weight * loss

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}, reduction={self.reduction!r}"


class SoftmaxFocalLoss(nn.Module):
    """``softmax_focal_loss`` as a module (background = class 0)."""

    self_normalizing = False
    needs_quality_targets = False

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: float | None = None,
        reduction: str = "mean",
        loss_weight: float = 1.0,
    ):
        super().__init__()
        self.gamma, self.alpha, self.reduction, self.loss_weight = gamma, alpha, reduction, loss_weight

    def forward(self, logits: Tensor, labels: Tensor, weight: Tensor | None = None, avg_factor=None) -> Tensor:
        loss = softmax_focal_loss(
            logits,
            labels,
            gamma=self.gamma,
            alpha=self.alpha,
            weight=weight,
            reduction=self.reduction,
            avg_factor=avg_factor,
        )
        return self.loss_weight * loss


class FocalLossStar(nn.Module):
    """``focal_loss_star`` (FL*) as a module."""

    self_normalizing = False
    needs_quality_targets = False

    def __init__(self, gamma: float = 2.0, beta: float = 1.0, reduction: str = "mean", loss_weight: float = 1.0):
        super().__init__()
        self.gamma, self.beta, self.reduction, self.loss_weight = gamma, beta, reduction, loss_weight

    def forward(self, logits: Tensor, targets: Tensor, weight: Tensor | None = None, avg_factor=None) -> Tensor:
        loss = focal_loss_star(
            logits,
            targets,
            gamma=self.gamma,
            beta=self.beta,
            weight=weight,
            reduction=self.reduction,
            avg_factor=avg_factor,
        )
        return self.loss_weight * loss
