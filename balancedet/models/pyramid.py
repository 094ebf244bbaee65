"""The feature pyramid every detector reads: a backbone, then FPN (optionally with a Balanced Feature Pyramid).

``build_pyramid`` is the one place a detector's trunk is put together: a ResNet depth (or any module
with ``out_channels`` and ``strides``), the FPN of Lin et al. (CVPR 2017, arXiv 1612.03144) with the
extra stride-2 levels the detector's strides need (P3-P7 for the dense heads, P2-P6 for the Faster R-CNN
RPN, whose P6 is a max-pool of P5), and Libra R-CNN's BFP (Pang et al., CVPR 2019,
arXiv 1904.02701, sec. 3.2) refining at P4, the level of stride 16, as in the paper.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from balancedet.models.backbones import ResNetBackbone
from balancedet.models.bfp import REFINES, BalancedFeaturePyramid
from balancedet.models.fpn import FPN

__all__ = ["FeaturePyramid", "build_backbone", "build_pyramid", "BFP_REFINE_STRIDE"]

#: The BFP gathers and refines at P4 (Libra R-CNN, sec. 3.2: "the intermediate size").
BFP_REFINE_STRIDE = 16


class FeaturePyramid(nn.Module):
    """The neck: FPN over the backbone's maps, then (optionally) the Balanced Feature Pyramid.

    Args:
        in_channels, in_strides: the backbone maps' channels and strides, finest first.
        strides: the output levels' strides (e.g. ``(8, 16, 32, 64, 128)`` for P3-P7); levels beyond the
            backbone's are extra stride-2 convs (max-pools with ``extra_from="maxpool"``).
        channels: channels of every level (256 in the papers).
        extra_from: where P6 comes from: ``"c5"`` (RetinaNet), ``"p5"`` (FCOS, GFL) or ``"maxpool"`` (a
            kernel-1 stride-2 max-pool of P5: the FPN paper's RPN, sec. 4.1).
        bfp: ``None`` (plain FPN) or the BFP refinement: ``"non_local"`` (the paper), ``"conv"``, ``"none"``.

    ``forward(maps) -> [P_l]``, ``out_channels`` (an int) and ``strides`` as attributes.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        in_strides: Sequence[int],
        strides: Sequence[int],
        channels: int = 256,
        extra_from: str = "c5",
        bfp: str | None = None,
    ):
        super().__init__()
        in_strides, strides = tuple(int(s) for s in in_strides), tuple(int(s) for s in strides)
        if len(in_channels) != len(in_strides):
            raise ValueError(f"FeaturePyramid: {len(in_channels)} input channels for {len(in_strides)} input strides")
        expected = tuple(in_strides[0] * 2**i for i in range(len(strides)))
        if strides[: len(in_strides)] != in_strides or strides != expected:
            raise ValueError(
                f"FeaturePyramid: strides {strides} must start with the backbone's {in_strides} and double per level"
            )
        if bfp is not None and bfp not in REFINES:
            raise ValueError(f"FeaturePyramid: bfp must be None or one of {REFINES}, got {bfp!r}")
        if bfp is not None and BFP_REFINE_STRIDE not in strides:
            raise ValueError(f"FeaturePyramid: the BFP refines at stride {BFP_REFINE_STRIDE}, absent from {strides}")
        self.fpn = FPN(list(in_channels), channels, len(strides) - len(in_strides), extra_from, in_strides[0])
        self.bfp = (
            None
            if bfp is None
            else BalancedFeaturePyramid(channels, len(strides), strides.index(BFP_REFINE_STRIDE), bfp)
        )
        self.out_channels, self.strides = channels, strides

    def forward(self, maps: list[Tensor]) -> list[Tensor]:
        levels = self.fpn(maps)
        return self.bfp(levels) if self.bfp is not None else levels


def build_backbone(
    backbone: nn.Module | int,
    weights: str | None = None,
    norm: str = "frozen_bn",
    frozen_stages: int = 1,
    levels: tuple[int, ...] = (3, 4, 5),
    where: str = "detector",
) -> nn.Module:
    """``ResNetBackbone(depth, ...)`` for an int, else the module itself (it needs ``out_channels``, ``strides``)."""
    if isinstance(backbone, int) and not isinstance(backbone, bool):
        return ResNetBackbone(backbone, weights, norm, frozen_stages, levels)
    if not isinstance(backbone, nn.Module):
        raise TypeError(f"{where}: backbone must be a ResNet depth or an nn.Module, got {type(backbone).__name__}")
    for attribute in ("out_channels", "strides"):
        if not isinstance(getattr(backbone, attribute, None), (list, tuple)):
            raise TypeError(
                f"{where}: the backbone module needs an {attribute} attribute (a list of ints, finest first)"
            )
    return backbone


def build_pyramid(
    backbone: nn.Module | int,
    strides: Sequence[int],
    *,
    extra_from: str = "c5",
    weights: str | None = None,
    norm: str = "frozen_bn",
    frozen_stages: int = 1,
    channels: int = 256,
    bfp: str | None = None,
    neck: nn.Module | None = None,
    where: str = "detector",
) -> tuple[nn.Module, nn.Module]:
    """``(backbone, neck)`` producing the levels of ``strides``; a given neck needs ``out_channels``, ``strides``.

    ``extra_from`` is where P6 comes from (``"c5"``: RetinaNet, ``"p5"``: GFL/FCOS, ``"maxpool"``: the FPN
    RPN); a first stride of 4 makes a ResNet depth return C2-C5. ``weights``, ``norm``,
    ``frozen_stages`` go to ``ResNetBackbone`` when ``backbone`` is a depth; ``channels`` and ``bfp`` to the
    default ``FeaturePyramid``.
    """
    first = int(strides[0]).bit_length() - 1
    levels = tuple(k for k in (2, 3, 4, 5) if k >= first)
    backbone = build_backbone(backbone, weights, norm, frozen_stages, levels, where)
    if neck is not None and bfp is not None:
        raise ValueError(
            f"{where}: bfp={bfp!r} applies to the default FPN neck; append the BFP to a custom neck yourself"
        )
    if neck is None:
        neck = FeaturePyramid(backbone.out_channels, backbone.strides, strides, channels, extra_from, bfp)
    if not isinstance(getattr(neck, "out_channels", None), int):
        raise TypeError(f"{where}: the neck needs an out_channels attribute (an int)")
    if tuple(getattr(neck, "strides", ())) != tuple(strides):
        raise ValueError(
            f"{where}: the neck's strides {tuple(getattr(neck, 'strides', ()))} differ from {tuple(strides)}"
        )
    return backbone, neck
