"""The dense head shared by RetinaNet and GFL: two conv towers over every pyramid level.

RetinaNet (Lin et al., ICCV 2017, arXiv 1708.02002, sec. 4, fig. 3) has a classification subnet and
a box subnet, each four 3x3 convs of 256 channels with ReLU, ending in ``K * A`` sigmoid logits and
``4 * A`` box deltas; the weights are shared by all levels. The GFL head (Li et al., NeurIPS 2020,
arXiv 2006.04388, and its released configuration) is the same with one anchor point per location,
GroupNorm after each hidden conv (as FCOS/ATSS), ``4 * (reg_max + 1)`` distribution logits and a
learnable per-level ``Scale`` on the regression output (FCOS, arXiv 1904.01355, sec. 3.2).

Initialisation (focal paper, sec. 4.1): every new conv N(0, 0.01) with bias 0, except the
classification output's bias ``b = -log((1 - pi) / pi)`` (sec. 3.3). A conv followed by a
normalisation has no bias (the norm's shift replaces it).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from balancedet.losses.focal import prior_bias
from balancedet.models.norms import check_norm, norm_layer

__all__ = ["DenseHead", "Scale", "conv_tower", "flatten_level"]


class Scale(nn.Module):
    """A learnable scalar (init 1) multiplying one level's regression output (FCOS, arXiv 1904.01355, sec. 3.2)."""

    def __init__(self, init: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def _init_conv(conv: nn.Conv2d, bias: float = 0.0) -> None:
    nn.init.normal_(conv.weight, std=0.01)
    if conv.bias is not None:
        nn.init.constant_(conv.bias, bias)


def conv_tower(in_channels: int, channels: int, num_convs: int, norm: str | None, groups: int = 32) -> nn.Sequential:
    """``num_convs`` x (3x3 conv, optional norm (``groups`` for GroupNorm), ReLU), N(0, 0.01) weights."""
    layers: list[nn.Module] = []
    for i in range(num_convs):
        conv = nn.Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1, bias=norm is None)
        _init_conv(conv)
        layers.append(conv)
        if norm is not None:
            layers.append(norm_layer(norm, groups)(channels))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def flatten_level(x: Tensor, width: int) -> Tensor:
    """``(B, A * width, H, W) -> (B, H * W * A, width)``: row-major locations, then the ``A`` anchors."""
    b, _, h, w = x.shape
    return x.view(b, -1, width, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, width)


class DenseHead(nn.Module):
    """Classification and regression towers shared across levels.

    Args:
        in_channels: channels of the pyramid levels.
        num_classes: ``K`` object classes (one sigmoid each, no background output).
        num_anchors: ``A`` priors per location (9 for RetinaNet, 1 for GFL).
        reg_width: regression outputs per prior (4 deltas; ``4 * (reg_max + 1)`` for GFL).
        channels: width of the hidden convs (256).
        num_convs: hidden 3x3 convs per tower (4).
        norm: ``None`` (RetinaNet paper), ``"gn"`` (GFL), or any of ``balancedet.models.norms.NORMS``;
            statistics are per level (each level runs alone).
        prior_prob: ``pi`` of the classification bias init (0.01).
        norm_groups: GroupNorm groups (32, or ``gcd(32, channels)``); narrow test heads want fewer, since
            a group of one channel on a 1x1 level normalises a single value.
        num_scales: ``0`` for no per-level scale, else one ``Scale`` per level (GFL: the number of levels).

    ``forward(levels) -> (cls, reg)``: per-level lists of ``(B, H_l W_l A, K)`` logits and
    ``(B, H_l W_l A, reg_width)`` outputs, in the order of ``balancedet.boxes.AnchorGenerator``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        num_anchors: int,
        reg_width: int,
        channels: int = 256,
        num_convs: int = 4,
        norm: str | None = None,
        prior_prob: float = 0.01,
        norm_groups: int = 32,
        num_scales: int = 0,
    ):
        super().__init__()
        if min(in_channels, num_classes, num_anchors, reg_width, channels) < 1 or num_convs < 0 or num_scales < 0:
            raise ValueError(
                "DenseHead: in_channels, num_classes, num_anchors, reg_width, channels must be >= 1 and "
                f"num_convs, num_scales >= 0; got {in_channels}, {num_classes}, {num_anchors}, {reg_width}, "
                f"{channels}, {num_convs}, {num_scales}"
            )
        check_norm(norm, "DenseHead")
        self.num_classes, self.num_anchors, self.reg_width = num_classes, num_anchors, reg_width
        self.cls_tower = conv_tower(in_channels, channels, num_convs, norm, norm_groups)
        self.reg_tower = conv_tower(in_channels, channels, num_convs, norm, norm_groups)
        last = channels if num_convs else in_channels
        self.cls_logits = nn.Conv2d(last, num_anchors * num_classes, 3, padding=1)
        self.reg_output = nn.Conv2d(last, num_anchors * reg_width, 3, padding=1)
        _init_conv(self.cls_logits, prior_bias(prior_prob))
        _init_conv(self.reg_output)
        self.scales = nn.ModuleList(Scale() for _ in range(num_scales))

    def forward(self, levels: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        if self.scales and len(levels) != len(self.scales):
            raise ValueError(f"DenseHead: {len(levels)} levels for {len(self.scales)} per-level scales")
        cls = [flatten_level(self.cls_logits(self.cls_tower(x)), self.num_classes) for x in levels]
        reg = [self.reg_output(self.reg_tower(x)) for x in levels]
        if self.scales:
            reg = [scale(r) for scale, r in zip(self.scales, reg, strict=True)]
        return cls, [flatten_level(r, self.reg_width) for r in reg]
