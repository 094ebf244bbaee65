"""Losses that remedy imbalance, exact to their papers (each module's docstring cites its equations).

Every function takes ``weight=None``, ``reduction="mean" | "sum" | "none"`` and ``avg_factor=None``
(divide the sum by it, e.g. by the number of positives); each has a thin ``nn.Module`` twin. GHM's
functions return the paper's self-normalised scalar and take ``weight`` and ``avg_factor`` only.

Every classification and box loss module is called ``loss(pred, target, weight=None, avg_factor=None)``
(docs/conventions.md) and declares as class attributes what a detector must do for it, so that no
detector asks ``isinstance``:

- ``self_normalizing`` (every module): True for ``GHMC`` and ``GHMR``, which divide by their own
  count of valid elements (arXiv 1811.05181, eqs. 8 and 15); give them ``avg_factor=None``;
- ``needs_quality_targets`` (classification modules): True for ``QualityFocalLoss``, whose target is
  the pair ``(labels (N,) int64 with C = background, scores (N,) IoU at the label)``;
- ``needs_decoded_boxes`` (box modules): True for ``IoULoss`` and ``GIoULoss``, which compare boxes
  ``(x1, y1, x2, y2)`` rather than regression deltas.

For ``GHMC`` / ``GHMR`` the ``weight`` is a ``(N,)`` or ``(N, C)`` / ``(N, K)`` mask: elements with
``weight > 0`` are the valid ones, counted in the histogram, and each element's loss is also
multiplied by its weight (the same thing for a 0/1 mask).
"""

from balancedet.losses.backend import set_compile
from balancedet.losses.balanced_l1 import BalancedL1Loss, balanced_l1_loss
from balancedet.losses.checks import set_value_checks
from balancedet.losses.cross_entropy import (
    BinaryCrossEntropyLoss,
    CrossEntropyLoss,
    binary_cross_entropy,
    cross_entropy,
)
from balancedet.losses.focal import (
    FocalLoss,
    FocalLossStar,
    SoftmaxFocalLoss,
    focal_loss_star,
    prior_bias,
    sigmoid_focal_loss,
    softmax_focal_loss,
)
from balancedet.losses.gfl import (
    DistributionFocalLoss,
    QualityFocalLoss,
    distribution_focal_loss,
    generalized_focal_loss,
    quality_focal_loss,
)
from balancedet.losses.ghm import GHMC, GHMR, ghm_c_loss, ghm_r_loss
from balancedet.losses.iou import GIoULoss, IoULoss, giou_loss, iou_loss
from balancedet.losses.reduce import weight_reduce_loss
from balancedet.losses.smooth_l1 import L1Loss, SmoothL1Loss, l1_loss, smooth_l1_loss

__all__ = [
    "GHMC",
    "GHMR",
    "BalancedL1Loss",
    "GIoULoss",
    "IoULoss",
    "L1Loss",
    "SmoothL1Loss",
    "balanced_l1_loss",
    "ghm_c_loss",
    "ghm_r_loss",
    "giou_loss",
    "iou_loss",
    "l1_loss",
    "smooth_l1_loss",
    "BinaryCrossEntropyLoss",
    "CrossEntropyLoss",
    "DistributionFocalLoss",
    "FocalLoss",
    "FocalLossStar",
    "QualityFocalLoss",
    "SoftmaxFocalLoss",
    "binary_cross_entropy",
    "cross_entropy",
    "distribution_focal_loss",
    "focal_loss_star",
    "generalized_focal_loss",
    "prior_bias",
    "quality_focal_loss",
    "set_compile",
    "set_value_checks",
    "sigmoid_focal_loss",
    "softmax_focal_loss",
    "weight_reduce_loss",
]
