"""Generalized Focal Loss: QFL, DFL and their general form (Li et al., NeurIPS 2020, arXiv 2006.04388).

``quality_focal_loss`` (eq. 5) trains a joint classification-IoU score with a soft target;
``distribution_focal_loss`` (eq. 6) trains a discrete distribution over box-side distances;
``generalized_focal_loss`` (eq. 7) is the form both specialise.

Convention on ``reg_max``: we follow the GFL paper and its code, where ``reg_max = 16`` means
the distribution has ``reg_max + 1 = 17`` bins (0..16). Ultralytics' ``reg_max = 16`` means 16
bins. Here the number of bins is simply ``logits.shape[1]``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from balancedet.losses.backend import fused_kernel
from balancedet.losses.checks import check_finite, check_float, check_labels, check_range, shape_str
from balancedet.losses.reduce import check_reduction, expand_weight, scale_tensor, weight_reduce_loss
from balancedet.losses.sigmoid_terms import (
    negative_focal_terms,
    negative_kernel,
    patch_positives,
    pow_minus_one,
    power,
    sigmoid_parts,
    upcast,
)

__all__ = [
    "quality_focal_loss",
    "distribution_focal_loss",
    "generalized_focal_loss",
    "QualityFocalLoss",
    "DistributionFocalLoss",
]


def quality_terms(x: Tensor, y: Tensor, beta: float, with_grad: bool) -> tuple[Tensor, Tensor | None]:
    """QFL of one element with soft target ``y`` and its gradient.

    ``L = |y - s|^beta * BCE(x, y)`` with ``s = sigmoid(x)``; with ``d = s - y``:
    ``dL/dx = sign(d) |d|^(beta-1) (beta s (1-s) BCE + d^2)``.
    """
    p, q, lg = sigmoid_parts(x)
    ce = x.clamp_min(0) - x * y + lg
    d = p - y
    ad = d.abs()
    loss = power(ad, beta) * ce
    if not with_grad:
        return loss, None
    if beta == 0.0:
        return loss, d
    grad = torch.sign(d) * pow_minus_one(ad, beta) * (beta * p * q * ce + d * d)
    return loss, grad


class _FusedQuality(torch.autograd.Function):
    """As the focal loss's ``_FusedFocal``: one saved gradient, float32 for half/bf16 logits."""

    @staticmethod
    def forward(ctx, x, labels, scores, w, scale, beta, reduce):  # noqa: D102
        loss, grad = _quality_forward(x, labels, scores, w, scale, beta, True, reduce)
        ctx.save_for_backward(grad)
        ctx.input_dtype = x.dtype
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):  # noqa: D102
        (grad,) = ctx.saved_tensors
        grad_x = (grad * grad_output.to(grad.dtype)).to(ctx.input_dtype)
        return grad_x, None, None, None, None, None, None


def _quality_forward(x, labels, scores, w, scale, beta, with_grad, reduce):
    # Negatives (every element but each positive row's label column) are focal negatives with
    # gamma = beta and no alpha; the N label entries are patched with the soft-target formula.
    loss, grad = negative_kernel(x, w, scale, 1.0, beta, with_grad, reduce)
    if x.shape[0] == 0 or x.shape[1] == 0:
        return loss, grad
    col = labels.clamp(max=x.shape[1] - 1).unsqueeze(1)
    xp = upcast(x.gather(1, col).squeeze(1))
    pos = quality_terms(xp, scores.to(xp.dtype), beta, with_grad)
    neg = negative_focal_terms(xp, beta, False)
    loss = patch_positives(x, labels, w, scale, loss, grad, reduce, pos, neg)
    return loss, grad


def quality_focal_loss(
    logits: Tensor,
    labels: Tensor,
    scores: Tensor,
    *,
    beta: float = 2.0,
    weight: Tensor | None = None,
    reduction: str = "mean",
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """Quality Focal Loss, eq. 5 of arXiv 2006.04388, element-wise over ``(N, C)``.

    ``QFL(s) = -|y - s|^beta ((1 - y) log(1 - s) + y log(s))`` where, for row ``n``, ``y`` is
    ``scores[n]`` at column ``labels[n]`` and 0 elsewhere (all 0 for background rows).

    Args:
        logits: ``(N, C)`` joint classification-quality logits.
        labels: ``(N,)`` int64, ``C`` meaning background.
        scores: ``(N,)`` quality targets in [0, 1] (the detached IoU of the decoded box with its
            ground truth for positives; ignored for background rows).
        beta: the focusing exponent (2 in the paper).
        weight: ``(N,)`` or ``(N, C)``.

    ``reduction="none"`` returns ``(N, C)``; ``mean`` averages over all ``N * C`` elements unless
    ``avg_factor`` is given (mmdetection sums over classes first and averages over ``N``; with
    ``avg_factor``, the form detectors use, both agree). Fused fast path as in the focal loss.
    """
    check_float("logits", logits, dim=2)
    check_reduction(reduction, avg_factor)
    n, c = logits.shape
    check_labels("labels", labels, n, 0, c)
    check_float("scores", scores, dim=1)
    if scores.shape != (n,):
        raise ValueError(f"scores must have shape ({n},), got {shape_str(scores)}")
    check_range("scores", scores, 0.0, 1.0)
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta!r}")
    w = expand_weight(weight, logits.shape)
    cdtype = upcast(logits).dtype
    if w is not None:
        if w.requires_grad:
            return _reference_quality(logits, labels, scores, beta, weight, reduction, avg_factor)
        w = w.to(cdtype)
    reduce = reduction != "none"
    scale = scale_tensor(logits.numel(), reduction, avg_factor, cdtype, logits.device)
    scores = scores.detach()
    if torch.is_grad_enabled() and logits.requires_grad:
        return _FusedQuality.apply(logits, labels, scores, w, scale, float(beta), reduce)
    loss, _ = _quality_forward(logits, labels, scores, w, scale, float(beta), False, reduce)
    return loss


def _reference_quality(logits, labels, scores, beta, weight, reduction, avg_factor) -> Tensor:
    """Plain autograd composition of eq. 5, used when ``weight`` needs a gradient."""
    xc = upcast(logits)
    n, c = xc.shape
    fg = (labels < c).to(xc.dtype)
    y = torch.zeros_like(xc).scatter(1, labels.clamp(max=c - 1).unsqueeze(1), (scores.to(xc.dtype) * fg).unsqueeze(1))
    s = torch.sigmoid(xc)
    ce = torch.nn.functional.binary_cross_entropy_with_logits(xc, y, reduction="none")
    return weight_reduce_loss((y - s).abs().pow(beta) * ce, weight, reduction, avg_factor)


def _neighbour_mass(xc: Tensor, left: Tensor, w_left: Tensor, w_right: Tensor) -> Tensor:
    """``(N, bins)`` target mass: ``w_left`` at bin ``left``, ``w_right`` at ``left + 1``, 0 elsewhere.

    Built by comparing against the bin index instead of scattering, so that a compiled kernel keeps
    it in registers: no ``N x bins`` tensor is written.
    """
    bins = torch.arange(xc.shape[1], device=xc.device).unsqueeze(0)
    li = left.unsqueeze(1)
    return torch.where(bins == li, w_left.unsqueeze(1), 0.0) + torch.where(bins == li + 1, w_right.unsqueeze(1), 0.0)


@fused_kernel
def _distribution_forward(x: Tensor, left: Tensor, w_left: Tensor, w_right: Tensor, coef: Tensor, reduce: bool):
    """Per-row ``coef * (logsumexp(x) - w_l x_l - w_r x_r)`` (summed when ``reduce``) and the row's log-sum-exp."""
    xc = upcast(x)
    lse = torch.logsumexp(xc, dim=1)
    loss = (lse - (_neighbour_mass(xc, left, w_left, w_right) * xc).sum(1)) * coef
    return (loss.sum() if reduce else loss), lse


@fused_kernel
def _distribution_backward(x: Tensor, lse: Tensor, left: Tensor, w_left: Tensor, w_right: Tensor, row: Tensor):
    """``row * (softmax(x) - mass)``: the gradient of eq. 6 with respect to the logits."""
    xc = upcast(x)
    grad = torch.exp(xc - lse.unsqueeze(1)) - _neighbour_mass(xc, left, w_left, w_right)
    return (grad * row.unsqueeze(1)).to(x.dtype)


class _FusedDistribution(torch.autograd.Function):
    """One log-sum-exp per row; backward recomputes the softmax from the saved input.

    Saved for backward: the ``(N,)`` row statistics and the input itself, no ``N x bins`` tensor.
    """

    @staticmethod
    def forward(ctx, x, left, w_left, w_right, coef, reduce):  # noqa: D102
        loss, lse = _distribution_forward(x, left, w_left, w_right, coef, reduce)
        ctx.save_for_backward(x, lse, left, w_left, w_right, coef)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):  # noqa: D102
        x, lse, left, w_left, w_right, coef = ctx.saved_tensors
        row = coef * grad_output
        return _distribution_backward(x, lse, left, w_left, w_right, row), None, None, None, None, None


def distribution_focal_loss(
    logits: Tensor,
    target: Tensor,
    *,
    weight: Tensor | None = None,
    reduction: str = "mean",
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """Distribution Focal Loss, eq. 6 of arXiv 2006.04388.

    ``DFL(S_l, S_r) = -((y_r - y) log S_l + (y - y_l) log S_r)`` with ``y_l = floor(y)``,
    ``y_r = y_l + 1`` and ``S`` the softmax over the bins.

    Args:
        logits: ``(N, reg_max + 1)`` distribution logits (17 bins for the paper's reg_max = 16).
        target: ``(N,)`` float distances in units of the level's stride; clamped to
            ``[0, reg_max - 0.01]`` so that ``y_r`` is a valid bin.
        weight: ``(N,)``.
    Returns ``(N,)`` for ``reduction="none"``.
    """
    check_float("logits", logits, dim=2)
    check_reduction(reduction, avg_factor)
    n, bins = logits.shape
    if bins < 2:
        raise ValueError(f"logits must have at least 2 bins, got shape {shape_str(logits)}")
    check_float("target", target, dim=1)
    if target.shape != (n,):
        raise ValueError(f"target must have shape ({n},), got {shape_str(target)}")
    check_finite("target", target)
    cdtype = upcast(logits).dtype
    t = target.detach().to(cdtype).clamp(0.0, bins - 1 - 0.01)
    left = t.floor().long()
    w_left = (left + 1).to(cdtype) - t
    w_right = t - left.to(cdtype)
    w = expand_weight(weight, torch.Size((n,)))
    if w is not None and w.requires_grad:
        log_s = torch.log_softmax(upcast(logits), dim=1)
        loss = -(w_left * log_s.gather(1, left.unsqueeze(1)).squeeze(1)) - w_right * log_s.gather(
            1, (left + 1).unsqueeze(1)
        ).squeeze(1)
        return weight_reduce_loss(loss, weight, reduction, avg_factor)
    scale = scale_tensor(n, reduction, avg_factor, cdtype, logits.device)
    coef = scale.expand(n) if w is None else w.to(cdtype) * scale
    return _FusedDistribution.apply(logits, left, w_left, w_right, coef, reduction != "none")


def generalized_focal_loss(
    log_prob_left: Tensor,
    log_prob_right: Tensor,
    target: Tensor,
    target_left: Tensor,
    target_right: Tensor,
    *,
    beta: float = 2.0,
    weight: Tensor | None = None,
    reduction: str = "mean",
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """The general form, eq. 7 of arXiv 2006.04388 (element-wise, any shape).

    ``GFL(p_l, p_r) = -|y - (y_l p_l + y_r p_r)|^beta ((y_r - y) log p_l + (y - y_l) log p_r)``.
    Probabilities enter as logarithms so that callers can pass ``logsigmoid`` / ``log_softmax``
    values and stay finite. QFL is ``y_l = 0, y_r = 1, log p_r = logsigmoid(x),
    log p_l = logsigmoid(-x)``; DFL is ``beta = 0`` with the two neighbouring bins.
    """
    for name, t in (
        ("log_prob_right", log_prob_right),
        ("target", target),
        ("target_left", target_left),
        ("target_right", target_right),
    ):
        check_float(name, t)
        if t.shape != log_prob_left.shape:
            raise ValueError(
                f"{name} must have the shape of log_prob_left {shape_str(log_prob_left)}, got {shape_str(t)}"
            )
    check_float("log_prob_left", log_prob_left)
    check_reduction(reduction, avg_factor)
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta!r}")
    estimate = target_left * log_prob_left.exp() + target_right * log_prob_right.exp()
    ce = -((target_right - target) * log_prob_left + (target - target_left) * log_prob_right)
    loss = ce if beta == 0.0 else (target - estimate).abs().pow(beta) * ce
    return weight_reduce_loss(loss, weight, reduction, avg_factor)


def _describe(value) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of shape {shape_str(value)}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of length {len(value)}"
    return type(value).__name__


class QualityFocalLoss(nn.Module):
    """``quality_focal_loss`` as a module: ``loss(logits, (labels, scores), weight=None, avg_factor=None)``.

    The target is one ``(labels, scores)`` tuple (``labels (N,)`` int64 with ``C`` = background,
    ``scores (N,)`` the IoU target at each label) so that the module keeps the two-argument loss
    protocol of docs/conventions.md; ``needs_quality_targets`` tells a detector to build it.
    """

    self_normalizing = False
    needs_quality_targets = True

    def __init__(self, beta: float = 2.0, reduction: str = "mean", loss_weight: float = 1.0):
        super().__init__()
        self.beta, self.reduction, self.loss_weight = beta, reduction, loss_weight

    def forward(self, logits: Tensor, target: tuple[Tensor, Tensor], weight: Tensor | None = None, avg_factor=None):
        if not isinstance(target, (tuple, list)) or len(target) != 2:
            raise TypeError(f"target must be a (labels, scores) pair, got {_describe(target)}")
        labels, scores = target
        loss = quality_focal_loss(
            logits,
            labels,
            scores,
            beta=self.beta,
            weight=weight,
            reduction=self.reduction,
            avg_factor=avg_factor,
        )
        return self.loss_weight * loss


class DistributionFocalLoss(nn.Module):
    """``distribution_focal_loss`` as a module (loss weight 0.25 in the GFL head)."""

    self_normalizing = False

    def __init__(self, reduction: str = "mean", loss_weight: float = 1.0):
        super().__init__()
        self.reduction, self.loss_weight = reduction, loss_weight

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None, avg_factor=None):
        loss = distribution_focal_loss(logits, target, weight=weight, reduction=self.reduction, avg_factor=avg_factor)
        return self.loss_weight * loss
