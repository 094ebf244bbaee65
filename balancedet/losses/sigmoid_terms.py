"""Element-wise sigmoid-loss terms and the fused N x C kernels shared by the focal loss and QFL.

Each ``*_terms`` function returns a loss and its derivative with respect to the logit, written
from logits so that they stay exact for |x| up to 100 in float32. The kernels evaluate them over
``(N, C)`` in one pass (compiled by ``torch.compile`` where possible, see ``backend.py``); the
integer-label losses evaluate every element as a negative and then patch the ``N`` positive
entries with gathers and scatters (``patch_positives``), so no one-hot tensor is ever built.

The gradient a kernel returns (and a fused loss saves for backward) stays in the compute dtype,
float32 for half/bf16 logits: near the prior bias (logit -4.6) a negative's focal gradient is
~2e-6, and divided by a hundred positives ~2e-8, below fp16's smallest subnormal step (6e-8),
while an fp16 copy of a GradScaler scale of 65536 is already inf (fp16 tops out at 65504).
Backward multiplies by ``grad_output`` in float32 and only then casts to the logits' dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from balancedet.losses.backend import fused_kernel


def upcast(x: Tensor) -> Tensor:
    """float32 for half/bf16 inputs (the loss needs the range), the input's own dtype otherwise."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def sigmoid_parts(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(p, 1 - p, log1p(exp(-|x|)))`` from one exponential, each exact for large ``|x|``.

    ``1 - p`` is computed as ``sigmoid(-x)`` rather than by subtraction, so that the modulating
    factor of a confident positive does not round to zero before the loss does.
    """
    e = torch.exp(-x.abs())
    big = 1.0 / (1.0 + e)
    small = e * big
    nonneg = x >= 0
    p = torch.where(nonneg, big, small)
    q = torch.where(nonneg, small, big)
    return p, q, torch.log1p(e)


def power(base: Tensor, exponent: float) -> Tensor:
    if exponent == 0.0:
        return torch.ones_like(base)
    if exponent == 1.0:
        return base
    if exponent == 2.0:
        return base * base
    return base.pow(exponent)


def pow_minus_one(base: Tensor, exponent: float) -> Tensor:
    """``base ** (exponent - 1)``, finite at ``base = 0`` (where it multiplies a zero factor)."""
    if exponent == 1.0:
        return torch.ones_like(base)
    if exponent == 2.0:
        return base
    return base.clamp_min(torch.finfo(base.dtype).tiny).pow(exponent - 1.0)


def negative_focal_terms(x: Tensor, gamma: float, with_grad: bool) -> tuple[Tensor, Tensor | None]:
    """Loss and d(loss)/dx of a negative element (y = 0), without alpha.

    ``L = p^gamma * softplus(x)`` and ``dL/dx = p^gamma * (gamma * (1 - p) * softplus(x) + p)``.
    """
    p, q, lg = sigmoid_parts(x)
    ce = x.clamp_min(0) + lg
    pg = power(p, gamma)
    loss = pg * ce
    if not with_grad:
        return loss, None
    grad = pg * p if gamma == 0.0 else pg * (gamma * q * ce + p)
    return loss, grad


def positive_focal_terms(x: Tensor, gamma: float, with_grad: bool) -> tuple[Tensor, Tensor | None]:
    """Loss and d(loss)/dx of a positive element (y = 1), without alpha.

    ``L = (1 - p)^gamma * softplus(-x)`` and ``dL/dx = -(1 - p)^gamma * (gamma * p * softplus(-x) + 1 - p)``.
    """
    p, q, lg = sigmoid_parts(x)
    ce = (-x).clamp_min(0) + lg
    qg = power(q, gamma)
    loss = qg * ce
    if not with_grad:
        return loss, None
    grad = -(qg * q) if gamma == 0.0 else -qg * (gamma * p * ce + q)
    return loss, grad


def soft_focal_terms(x: Tensor, y: Tensor, gamma: float, with_grad: bool) -> tuple[Tensor, Tensor | None]:
    """Loss and gradient for a soft target ``y`` in [0, 1], without alpha.

    With ``ce = BCE(x, y)`` and ``m = 1 - p_t = p (1 - y) + (1 - p) y`` (torchvision's soft-target
    form, equal to eq. 5 for y in {0, 1}): ``L = m^gamma ce`` and
    ``dL/dx = m^gamma (p - y) + gamma m^(gamma-1) (1 - 2y) p (1 - p) ce``.
    """
    p, q, lg = sigmoid_parts(x)
    ce = x.clamp_min(0) - x * y + lg
    m = p * (1 - y) + q * y
    mg = power(m, gamma)
    loss = mg * ce
    if not with_grad:
        return loss, None
    grad = mg * (p - y)
    if gamma != 0.0:
        grad = grad + gamma * pow_minus_one(m, gamma) * (1 - 2 * y) * p * q * ce
    return loss, grad


@fused_kernel
def negative_kernel(
    x: Tensor, w: Tensor | None, scale: Tensor, alpha_neg: float, gamma: float, with_grad: bool, reduce: bool
) -> tuple[Tensor, Tensor | None]:
    xc = upcast(x)
    loss, grad = negative_focal_terms(xc, gamma, with_grad)
    if alpha_neg != 1.0:
        loss = loss * alpha_neg
    if w is not None:
        loss = loss * w
    if grad is not None:
        factor = scale * alpha_neg if w is None else w * (scale * alpha_neg)
        grad = grad * factor
    return (loss.sum() * scale if reduce else loss), grad


@fused_kernel
def soft_kernel(
    x: Tensor,
    y: Tensor,
    w: Tensor | None,
    scale: Tensor,
    alpha: float | None,
    gamma: float,
    with_grad: bool,
    reduce: bool,
) -> tuple[Tensor, Tensor | None]:
    xc = upcast(x)
    yc = y.to(xc.dtype)
    loss, grad = soft_focal_terms(xc, yc, gamma, with_grad)
    if alpha is not None:
        alpha_t = (1.0 - alpha) + (2.0 * alpha - 1.0) * yc
        loss = loss * alpha_t
        if grad is not None:
            grad = grad * alpha_t
    if w is not None:
        loss = loss * w
    if grad is not None:
        factor = scale if w is None else w * scale
        grad = grad * factor
    return (loss.sum() * scale if reduce else loss), grad


def patch_positives(
    x: Tensor,
    labels: Tensor,
    w: Tensor | None,
    scale: Tensor,
    loss: Tensor,
    grad: Tensor | None,
    reduce: bool,
    pos_terms: tuple[Tensor, Tensor | None],
    neg_terms: tuple[Tensor, Tensor | None],
) -> Tensor:
    """Replace the negative-case values at each row's label column by the positive-case values.

    ``pos_terms``/``neg_terms`` are the (weight-free, scale-free) loss and gradient of the
    gathered entries ``x[n, labels[n]]``; rows whose label is background keep their values.
    """
    num_classes = x.shape[1]
    fg = labels < num_classes
    col = labels.clamp(max=num_classes - 1).unsqueeze(1)
    wp = None
    if w is not None:
        wp = (w.expand_as(x) if w.shape != x.shape else w).gather(1, col).squeeze(1)
    pos_loss, pos_grad = pos_terms
    neg_loss, _ = neg_terms
    if reduce:
        delta = torch.where(fg, pos_loss - neg_loss, torch.zeros_like(pos_loss))
        if wp is not None:
            delta = delta * wp
        loss = loss + delta.sum() * scale
    else:
        new = pos_loss if wp is None else pos_loss * wp
        loss.scatter_(1, col, torch.where(fg, new.to(loss.dtype), loss.gather(1, col).squeeze(1)).unsqueeze(1))
    if grad is not None and pos_grad is not None:
        g = pos_grad * scale if wp is None else pos_grad * (wp * scale)
        current = grad.gather(1, col).squeeze(1)
        grad.scatter_(1, col, torch.where(fg, g.to(grad.dtype), current).unsqueeze(1))
    return loss
