"""Balanced Feature Pyramid (Pang et al., "Libra R-CNN", CVPR 2019, arXiv 1904.02701, sec. 3.2).

Every level is resized to the size of one middle level (max pooling for finer levels, nearest
interpolation for coarser ones) and the maps are averaged, ``C = 1/L sum_l C_l`` (eq. 2), so each
resolution receives equal information from all the others. The balanced map is refined by an
embedded-Gaussian non-local block (Wang et al., "Non-local Neural Networks", CVPR 2018,
arXiv 1711.07971, eq. 2-3) or a 3x3 conv, resized back to every level with the reverse procedure
and added to it as a residual.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BalancedFeaturePyramid", "NonLocal2d", "REFINES"]

REFINES = ("non_local", "conv", "none")


class NonLocal2d(nn.Module):
    """Embedded-Gaussian non-local block: ``z = x + W_z(softmax(theta(x)^T phi(x)) g(x))`` (arXiv 1711.07971).

    Args:
        channels: input and output channels.
        reduction: ``theta``, ``phi`` and ``g`` have ``channels // reduction`` channels (Libra uses 1).
        use_scale: divide the dot products by ``sqrt(inter_channels)`` (off in Libra's BFP).

    ``W_z`` starts at zero (paper, sec. 4.1) so the block is the identity at initialisation; the
    three embeddings start from N(0, 0.01) as in mmcv's ``NonLocal2d``. Memory is ``(H W)^2`` per
    image for the attention map.
    """

    def __init__(self, channels: int, reduction: int = 1, use_scale: bool = False):
        super().__init__()
        inter = max(channels // reduction, 1)
        self.inter_channels, self.use_scale = inter, use_scale
        self.theta = nn.Conv2d(channels, inter, 1)
        self.phi = nn.Conv2d(channels, inter, 1)
        self.g = nn.Conv2d(channels, inter, 1)
        self.out = nn.Conv2d(inter, channels, 1)
        for conv in (self.theta, self.phi, self.g):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        theta = self.theta(x).flatten(2).transpose(1, 2)  # (B, HW, C')
        phi = self.phi(x).flatten(2)  # (B, C', HW)
        g = self.g(x).flatten(2).transpose(1, 2)  # (B, HW, C')
        logits = torch.bmm(theta, phi)
        if self.use_scale:
            logits = logits / math.sqrt(self.inter_channels)
        y = torch.bmm(logits.softmax(dim=-1), g).transpose(1, 2).reshape(b, self.inter_channels, h, w)
        return x + self.out(y)


class BalancedFeaturePyramid(nn.Module):
    """Libra R-CNN's BFP on a list of same-channel maps, finest first.

    Args:
        channels: channels of every level.
        num_levels: number of levels (5 for P3-P7).
        refine_level: index of the level whose size the maps are gathered at (Libra: P4, the third
            of P2-P6; index 1 of P3-P7, as mmdetection's RetinaNet configuration).
        refine: ``"non_local"`` (the paper), ``"conv"`` (a 3x3 conv) or ``"none"`` (integration only).

    ``forward(feats) -> feats`` with the same shapes: ``out_l = feats_l + resize_l(refine(mean))``.
    """

    def __init__(self, channels: int = 256, num_levels: int = 5, refine_level: int = 1, refine: str = "non_local"):
        super().__init__()
        if not 0 <= refine_level < num_levels:
            raise ValueError(f"BalancedFeaturePyramid: refine_level {refine_level} outside [0, {num_levels})")
        if refine not in REFINES:
            raise ValueError(f"BalancedFeaturePyramid: refine must be one of {REFINES}, got {refine!r}")
        self.channels, self.num_levels, self.refine_level, self.refine_type = channels, num_levels, refine_level, refine
        if refine == "non_local":
            self.refine: nn.Module = NonLocal2d(channels)
        elif refine == "conv":
            self.refine = nn.Conv2d(channels, channels, 3, padding=1)
            nn.init.kaiming_uniform_(self.refine.weight, a=1)
            nn.init.zeros_(self.refine.bias)
        else:
            self.refine = nn.Identity()

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        if len(feats) != self.num_levels:
            raise ValueError(f"BalancedFeaturePyramid: expected {self.num_levels} levels, got {len(feats)}")
        size = feats[self.refine_level].shape[-2:]
        gathered = [
            F.adaptive_max_pool2d(f, size) if i < self.refine_level else F.interpolate(f, size=size, mode="nearest")
            for i, f in enumerate(feats)
        ]
        balanced = self.refine(torch.stack(gathered).mean(dim=0))
        outs = []
        for i, f in enumerate(feats):
            if i < self.refine_level:
                residual = F.interpolate(balanced, size=f.shape[-2:], mode="nearest")
            else:
                residual = F.adaptive_max_pool2d(balanced, f.shape[-2:])
            outs.append(f + residual)
        return outs
