"""Losses that remedy imbalance, exact to their papers (see shared/SPEC.md sections 1 and 2).

Every function takes ``weight=None``, ``reduction="mean" | "sum" | "none"`` and ``avg_factor=None``
(divide the sum by it, e.g. by the number of positives); each has a thin ``nn.Module`` twin.
"""

from balancedet.losses.backend import set_compile
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
from balancedet.losses.reduce import weight_reduce_loss

__all__ = [
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
