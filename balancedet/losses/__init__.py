"""Losses that remedy imbalance, exact to their papers (see shared/SPEC.md sections 1 and 2).

Every function takes ``weight=None``, ``reduction="mean" | "sum" | "none"`` and ``avg_factor=None``
(divide the sum by it, e.g. by the number of positives); each has a thin ``nn.Module`` twin.
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
