"""One normalisation factory for backbones, necks and heads.

- ``"bn"``: trainable ``BatchNorm2d`` (Ioffe and Szegedy, ICML 2015); sensible from scratch with
  a few images per batch.
- ``"frozen_bn"``: ``torchvision.ops.FrozenBatchNorm2d``, fixed affine statistics: RetinaNet's and
  GFL's choice when fine-tuning ImageNet weights with 2 images per GPU (arXiv 1708.02002, sec. 4.1).
- ``"gn"``: ``GroupNorm`` (Wu and He, ECCV 2018, arXiv 1803.08494) with 32 groups, or
  ``gcd(32, channels)`` for narrow layers that 32 does not divide; independent of the batch size.
  The GFL and FCOS/ATSS heads use it.
- ``"sync_bn"``: ``SyncBatchNorm``, batch statistics over every process of a distributed run
  (a plain ``BatchNorm2d`` in a single process).
- ``None``: no normalisation (the RetinaNet paper's heads).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import nn
from torchvision.ops import FrozenBatchNorm2d

__all__ = ["NORMS", "norm_layer", "check_norm"]

NORMS = ("bn", "frozen_bn", "gn", "sync_bn")


def check_norm(norm: str | None, where: str, allow_none: bool = True) -> None:
    """Raise ``ValueError`` naming ``where`` unless ``norm`` is one of ``NORMS`` (or ``None`` when allowed)."""
    if norm is None and allow_none:
        return
    if norm not in NORMS:
        options = ", ".join((*NORMS, *(("None",) if allow_none else ())))
        raise ValueError(f"{where}: norm must be one of {options}; got {norm!r}")


def norm_layer(norm: str, groups: int = 32) -> Callable[[int], nn.Module]:
    """Factory ``channels -> module`` for one of ``NORMS``."""
    check_norm(norm, "norm_layer", allow_none=False)
    if norm == "frozen_bn":
        return FrozenBatchNorm2d
    if norm == "bn":
        return nn.BatchNorm2d
    if norm == "sync_bn":
        return nn.SyncBatchNorm
    return lambda channels: nn.GroupNorm(math.gcd(groups, channels), channels)
