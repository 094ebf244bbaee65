"""Priors (anchors) of a dense detector and the codings between them and the head's regression output.

A ``Priors`` holds every level's anchors concatenated, with each anchor's level stride. RetinaNet
has 9 anchors per location (arXiv 1708.02002, sec. 4); GFL one square anchor of side
``octave_base_scale * stride`` per location, used by ATSS for the assignment and through its centre
(the anchor point) for the distances (arXiv 2006.04388; ATSS, arXiv 1912.02424, sec. 3).

A coding turns the head's ``(B, A, R)`` regression output into boxes and ground-truth boxes into
regression targets, given the priors: ``DeltaCoding`` (R-CNN deltas, ``R = 4``) and
``DistributionCoding`` (GFL's general distribution, ``R = 4 * (reg_max + 1)``). The criterion and
the post-processing of a detector share one coding, so training and inference decode alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from balancedet.boxes import AnchorGenerator, DeltaXYWHCoder, DistancePointCoder

__all__ = ["DeltaCoding", "DistributionCoding", "PriorGenerator", "Priors", "distribution_expectation"]


@dataclass(frozen=True)
class Priors:
    """The anchors of all levels: ``anchors (A, 4)`` xyxy pixels, ``strides (A,)``, ``num_per_level``."""

    anchors: Tensor
    strides: Tensor
    num_per_level: tuple[int, ...]

    @property
    def points(self) -> Tensor:
        """``(A, 2)`` anchor centres ``(x, y)``."""
        return (self.anchors[:, :2] + self.anchors[:, 2:]) / 2

    def split(self, t: Tensor, dim: int = 0) -> list[Tensor]:
        """``t`` cut along ``dim`` into the levels' parts."""
        return list(torch.split(t, list(self.num_per_level), dim=dim))


class PriorGenerator:
    """``AnchorGenerator`` returning ``Priors``; ``generator([f.shape[-2:] for f in levels], device)``.

    Args: as ``balancedet.boxes.AnchorGenerator`` (sizes, strides, ratios, scales, offset).
    """

    def __init__(
        self,
        sizes: Sequence[float],
        strides: Sequence[int],
        ratios: Sequence[float] = (1.0,),
        scales: Sequence[float] = (1.0,),
        offset: float = 0.0,
    ):
        self.anchors = AnchorGenerator(sizes, strides, ratios, scales, offset)
        self._cache: dict[tuple, Priors] = {}

    @property
    def num_levels(self) -> int:
        return self.anchors.num_levels

    @property
    def num_anchors_per_location(self) -> int:
        return self.anchors.num_anchors_per_location

    def __call__(self, feature_sizes: Sequence[Sequence[int]], device: torch.device) -> Priors:
        sizes = tuple(tuple(int(v) for v in s[-2:]) for s in feature_sizes)
        key = (sizes, str(device))
        if key not in self._cache:
            counts = tuple(self.anchors.num_anchors_per_level(sizes))
            strides = torch.cat(
                [torch.full((n,), float(s), device=device) for n, s in zip(counts, self.anchors.strides, strict=True)]
            )
            if len(self._cache) > 64:
                self._cache.clear()
            self._cache[key] = Priors(self.anchors(sizes, device, torch.float32), strides, counts)
        return self._cache[key]


class DeltaCoding:
    """R-CNN deltas ``(dx, dy, dw, dh)`` relative to each anchor (``DeltaXYWHCoder``; RetinaNet: stds 1)."""

    reg_width = 4

    def __init__(self, coder: DeltaXYWHCoder | None = None):
        self.coder = coder if coder is not None else DeltaXYWHCoder()

    def decode(self, reg: Tensor, priors: Priors) -> Tensor:
        """``(B, A, 4)`` deltas -> ``(B, A, 4)`` boxes."""
        return self.coder.decode(priors.anchors, reg)

    def encode(self, boxes: Tensor, priors: Priors) -> Tensor:
        """``(B, A, 4)`` boxes matched to the anchors -> ``(B, A, 4)`` delta targets."""
        return self.coder.encode(priors.anchors, boxes)


def distribution_expectation(logits: Tensor, reg_max: int) -> Tensor:
    """Expected box sides ``(..., 4 * (reg_max + 1)) -> (..., 4)``, in units of the level's stride.

    GFL sec. 3, "Distribution Focal Loss": ``y_hat = sum_{i=0}^{reg_max} P(y_i) y_i`` with ``y_i = i``
    and ``P`` the softmax over the ``reg_max + 1`` bins of a side. Channels are side-major
    ``(l, t, r, b)``, each a block of ``reg_max + 1`` bins. Half / bf16 logits are computed in float32.
    """
    bins = reg_max + 1
    if logits.shape[-1] != 4 * bins:
        raise ValueError(
            f"distribution logits must have 4 * (reg_max + 1) = {4 * bins} channels last, got {tuple(logits.shape)}"
        )
    x = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
    prob = x.unflatten(-1, (4, bins)).softmax(dim=-1)
    return prob @ torch.arange(bins, dtype=prob.dtype, device=prob.device)


class DistributionCoding:
    """GFL's general distribution of the distances from the anchor point to the four sides, in strides.

    ``reg_max + 1`` bins per side (the GFL paper's convention: ``reg_max = 16`` means 17 bins, see
    docs/conventions.md); decoding takes the expectation (``distribution_expectation``). ``encode``
    gives the DFL targets: distances in strides clamped to ``[0, reg_max - 0.01]`` (GFL, eq. 6).
    """

    def __init__(self, reg_max: int = 16):
        if reg_max < 1:
            raise ValueError(f"DistributionCoding: reg_max must be >= 1, got {reg_max}")
        self.reg_max = reg_max
        self.reg_width = 4 * (reg_max + 1)

    def decode(self, reg: Tensor, priors: Priors) -> Tensor:
        return DistancePointCoder().decode(priors.points, distribution_expectation(reg, self.reg_max), priors.strides)

    def encode(self, boxes: Tensor, priors: Priors) -> Tensor:
        return DistancePointCoder(max_distance=self.reg_max).encode(priors.points, boxes, priors.strides)
