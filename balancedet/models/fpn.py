"""Feature Pyramid Network with the extra levels of RetinaNet, FCOS/GFL and the FPN RPN.

Lin et al., "Feature Pyramid Networks for Object Detection", CVPR 2017 (arXiv 1612.03144), sec. 3:
a 1x1 lateral conv on each backbone map, a top-down pathway that upsamples the coarser merged map
by nearest neighbour and adds it, then a 3x3 conv on each merged map. RetinaNet (Lin et al.,
ICCV 2017, arXiv 1708.02002, sec. 4 and footnote 2) adds P6 by a 3x3 stride-2 conv on C5 (not P5)
and P7 by a ReLU then a 3x3 stride-2 conv on P6, all with 256 channels. FCOS/GFL build P6 from P5
instead (``extra_from="p5"``). The FPN paper's RPN (sec. 4.1) reads P2-P6 where "P6 is simply a stride
two subsampling of P5" (``extra_from="maxpool"``: a max-pool of kernel 1 and stride 2, no parameters,
as the authors' Detectron); P6 is used by the RPN only, not by the RoI head.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FPN"]

EXTRA_SOURCES = ("c5", "p5", "maxpool")


def _init_conv(conv: nn.Conv2d) -> None:
    # Caffe2's "XavierFill" (uniform, fan-in), which Detectron's FPN used; also torchvision's FPN init.
    nn.init.kaiming_uniform_(conv.weight, a=1)
    nn.init.zeros_(conv.bias)


class FPN(nn.Module):
    """FPN over ``in_channels`` maps (C3, C4, C5 at strides 8, 16, 32) plus ``num_extra`` stride-2 levels.

    Args:
        in_channels: channels of the backbone maps, finest first.
        out_channels: channels of every output level (256 in the papers).
        num_extra: extra levels above the last input (2: P6, P7).
        extra_from: ``"c5"`` (RetinaNet: P6 from the last backbone map), ``"p5"`` (FCOS, GFL) or
            ``"maxpool"`` (FPN RPN: each extra level a kernel-1 stride-2 max-pool of the level below).
        first_stride: stride of the finest input map (8 for C3, 4 for C2).

    ``forward(feats) -> [P3, ..., P7]``, each ``(B, out_channels, H_l, W_l)``; ``strides`` holds
    ``(8, 16, 32, 64, 128)`` for the default configuration. The top-down upsampling goes to the
    exact size of the finer map, so inputs need not be multiples of 32.
    """

    def __init__(
        self,
        in_channels: list[int],
        out_channels: int = 256,
        num_extra: int = 2,
        extra_from: str = "c5",
        first_stride: int = 8,
    ):
        super().__init__()
        if not in_channels or min(in_channels) < 1 or out_channels < 1:
            raise ValueError(f"FPN: in_channels {in_channels} and out_channels {out_channels} must be positive")
        if num_extra < 0:
            raise ValueError(f"FPN: num_extra must be >= 0, got {num_extra}")
        if extra_from not in EXTRA_SOURCES:
            raise ValueError(f"FPN: extra_from must be one of {EXTRA_SOURCES}, got {extra_from!r}")
        self.in_channels, self.out_channels = list(in_channels), out_channels
        self.num_extra, self.extra_from = num_extra, extra_from
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels)
        first = in_channels[-1] if extra_from == "c5" else out_channels
        num_convs = 0 if extra_from == "maxpool" else num_extra
        self.extra = nn.ModuleList(
            nn.Conv2d(first if i == 0 else out_channels, out_channels, 3, stride=2, padding=1) for i in range(num_convs)
        )
        for conv in (*self.lateral, *self.output, *self.extra):
            _init_conv(conv)
        self.strides = tuple(first_stride * 2**i for i in range(len(in_channels) + num_extra))

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        if len(feats) != len(self.lateral):
            raise ValueError(f"FPN: expected {len(self.lateral)} feature maps, got {len(feats)}")
        merged = self.lateral[-1](feats[-1])
        outs = [self.output[-1](merged)]
        for i in range(len(feats) - 2, -1, -1):
            lateral = self.lateral[i](feats[i])
            merged = lateral + F.interpolate(merged, size=lateral.shape[-2:], mode="nearest")
            outs.insert(0, self.output[i](merged))
        if self.extra_from == "maxpool":
            for _ in range(self.num_extra):
                # kernel 1, stride 2: ceil(H / 2) rows, the size a stride-2 3x3 conv with padding 1 gives
                outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
            return outs
        x = feats[-1] if self.extra_from == "c5" else outs[-1]
        for i, conv in enumerate(self.extra):
            # P7 (and above) sees a ReLU of the level below; P6 reads C5/P5 directly (paper, footnote 2).
            x = conv(F.relu(x) if i > 0 else x)
            outs.append(x)
        return outs
