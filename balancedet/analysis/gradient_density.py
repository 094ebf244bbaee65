"""The gradient-norm density of a sigmoid classifier, and how CE, the focal loss and GHM-C reweight it.

Li, Liu, Wang, "Gradient Harmonized Single-stage Detector", AAAI 2019, arXiv 1811.05181: the gradient
of the sigmoid cross entropy with respect to a logit has the norm ``g = |p - y|`` (eq. 4); a converged
dense detector has a huge mass of elements near ``g = 0`` (the easy negatives) and a smaller peak near
``g = 1`` (fig. 1, left). Cut ``[0, 1]`` into ``M`` equal bins (``M = 30``, the authors' setting), the
density of an element of bin ``j`` is ``GD = R_j * M`` (sec. 3.3, unit region) and GHM-C weighs its
loss by ``beta = N / GD`` (eq. 7); the authors' code uses the number of non-empty bins for ``M``, so
``beta_j = N / (R_j * n_nonempty)``, which is ``balancedet.losses.GHMC``'s weight with ``momentum=0``.
The focal loss changes the gradient norm of an element of norm ``g`` to ``|dFL/dx|`` (fig. 3 of the GHM
paper compares the three): here by autograd through ``balancedet.losses.sigmoid_focal_loss``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from balancedet.losses import sigmoid_focal_loss

__all__ = [
    "GHM_BINS",
    "bin_edges",
    "bin_index",
    "density_counts",
    "focal_gradient_ratio",
    "ghm_weights",
    "gradient_norm",
]

#: ``M``, the number of gradient-norm bins of GHM-C (the authors' RetinaNet configuration).
GHM_BINS = 30


def gradient_norm(logits: Tensor, labels: Tensor) -> Tensor:
    """``(N, C)`` float ``g = |sigmoid(x) - y|`` (GHM eq. 4) of ``logits: (N, C)``, ``labels: (N,)`` with
    ``C`` = background (``y`` is 1 at a positive's class, 0 elsewhere)."""
    num_classes = logits.shape[1]
    target = torch.zeros_like(logits, dtype=torch.float64)
    positive = labels < num_classes
    target[positive.nonzero(as_tuple=True)[0], labels[positive]] = 1.0
    return (logits.detach().double().sigmoid() - target).abs()


def bin_index(g: Tensor, bins: int = GHM_BINS) -> Tensor:
    """``min(floor(g * M), M - 1)``: the bin of each gradient norm, ``g = 1`` in the last bin."""
    return (g * bins).long().clamp(0, bins - 1)


def bin_edges(bins: int = GHM_BINS) -> Tensor:
    """The ``M + 1`` edges ``j / M`` of the bins, float64."""
    return torch.arange(bins + 1, dtype=torch.float64) / bins


def density_counts(g: Tensor, bins: int = GHM_BINS) -> Tensor:
    """``(M,)`` int64 ``R_j``: how many of the gradient norms ``g`` (any shape) fall in each bin."""
    return torch.bincount(bin_index(g, bins).reshape(-1), minlength=bins)


def ghm_weights(counts: Tensor) -> Tensor:
    """``(M,)`` float64 GHM-C weights ``beta_j = N / (R_j * n_nonempty)`` of the bin counts ``R``
    (GHM eq. 7 with the authors' ``n_nonempty`` for ``M``), 0 for an empty bin."""
    r = counts.double()
    filled = r > 0
    return torch.where(filled, r.sum() / (r * filled.sum()).clamp(min=1.0), 0.0)


def focal_gradient_ratio(g: Tensor, gamma: float = 2.0) -> Tensor:
    """``|dFL/dx| / |dCE/dx|`` of an element whose CE gradient norm is ``g`` in ``(0, 1)``: the factor
    by which the focal loss (``alpha`` off: it only scales positives against negatives) reweighs it.

    The element is a positive with ``p = 1 - g`` (a negative with ``p = g`` gives the same ratio);
    the gradient comes from ``sigmoid_focal_loss`` itself, in float64.
    """
    g = g.detach().double().reshape(-1)
    with torch.enable_grad():
        x = torch.logit(1.0 - g).unsqueeze(1).requires_grad_()
        labels = torch.zeros(len(g), dtype=torch.long)
        loss = sigmoid_focal_loss(x, labels, alpha=None, gamma=gamma, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return grad.squeeze(1).abs() / g
