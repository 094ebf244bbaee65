"""Anchor boxes and anchor points on the FPN levels.

``AnchorGenerator`` tiles RetinaNet's anchors (Lin et al., "Focal Loss for Dense Object Detection",
ICCV 2017, arXiv 1708.02002, sec. 4): on P3-P7 (strides 8-128) anchors of size 32-512, three
aspect ratios {1:2, 1:1, 2:1} and three scales {2^0, 2^(1/3), 2^(2/3)}, 9 per location.
``AnchorPoints`` gives one point per location for anchor-free heads (GFL, Li et al., NeurIPS
2020, arXiv 2006.04388), and ``points_to_anchors`` turns points into the square anchors that
ATSS compares with the ground truth.

Conventions (docs/conventions.md):

- Boxes are ``(x1, y1, x2, y2)`` in input-image pixels, width ``x2 - x1``.
- Location ``(i, j)`` of a level with stride ``s`` is centred on ``((j + offset) * s, (i + offset) * s)``.
  The default ``offset = 0`` is torchvision's (``AnchorGenerator.grid_anchors`` shifts by
  ``arange(W) * stride``), detectron2's default and mmdetection's ``center_offset=0``, so these
  anchors coincide with the ones pretrained RetinaNet/GFL weights were trained with.
  ``offset = 0.5`` centres them on the cells, ``(j + 0.5) * s`` (detectron2's recommended value
  and mmdetection's point generator for FCOS-style heads).
- Ratio ``r = h / w``: ``w = size * scale / sqrt(r)``, ``h = size * scale * sqrt(r)``, so every
  variant has area exactly ``(size * scale)^2``. Unlike torchvision we do not round the
  half-sizes to integers (which changes areas by up to a few percent).
- Order: level after level; within a level row-major over locations (``y`` then ``x``); at each
  location the ``A = len(ratios) * len(scales)`` anchors, ratio-major (ratio outer, scale inner,
  as torchvision and mmdetection). The flat index is ``level_start + (i * W + j) * A + a``.

Results are cached per (level, feature-map size, device, dtype) and shared between calls: treat
them as read-only.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence

import torch
from torch import Tensor

RETINANET_SIZES = (32.0, 64.0, 128.0, 256.0, 512.0)
FPN_STRIDES = (8, 16, 32, 64, 128)
RETINANET_RATIOS = (0.5, 1.0, 2.0)
RETINANET_SCALES = (1.0, 2.0 ** (1.0 / 3.0), 2.0 ** (2.0 / 3.0))

FeatureSize = Sequence[int]


def feature_map_sizes(image_size: Sequence[int], strides: Sequence[int] = FPN_STRIDES) -> list[tuple[int, int]]:
    """``(H, W)`` of each level for an input of ``image_size = (H, W)``: ``ceil(H / s), ceil(W / s)``.

    This is what a chain of stride-2 3x3 convolutions with padding 1 produces from the input.
    """
    height, width = int(image_size[0]), int(image_size[1])
    return [(-(-height // int(s)), -(-width // int(s))) for s in strides]


def _check_sizes(feature_sizes: Sequence[FeatureSize], num_levels: int, what: str) -> list[tuple[int, int]]:
    if len(feature_sizes) != num_levels:
        raise ValueError(f"{what}: expected {num_levels} feature-map sizes (one per level), got {len(feature_sizes)}")
    sizes = []
    for level, size in enumerate(feature_sizes):
        hw = tuple(int(v) for v in size[-2:])
        if len(hw) != 2 or min(hw) < 0:
            raise ValueError(f"{what}: feature-map size of level {level} must be (H, W) >= 0, got {tuple(size)}")
        sizes.append(hw)
    return sizes


class _Cache:
    """A small least-recently-used cache (multi-scale training sees many feature-map sizes)."""

    def __init__(self, capacity: int = 64):
        self.capacity = capacity
        self._items: OrderedDict[Hashable, object] = OrderedDict()

    def get(self, key: Hashable, make: Callable[[], object]):
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = make()
        self._items[key] = value
        if len(self._items) > self.capacity:
            self._items.popitem(last=False)
        return value


def _grid(height: int, width: int, stride: float, offset: float, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``(H * W, 2)`` location centres ``((j + offset) * stride, (i + offset) * stride)``, row-major."""
    xs = (torch.arange(width, device=device, dtype=dtype) + offset) * stride
    ys = (torch.arange(height, device=device, dtype=dtype) + offset) * stride
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((x.reshape(-1), y.reshape(-1)), dim=1)


class AnchorGenerator:
    """RetinaNet anchors for a list of feature-map sizes (Lin et al., ICCV 2017, arXiv 1708.02002, sec. 4).

    Args:
        sizes: anchor size (the side of the ratio-1, scale-1 anchor) of each level, in pixels.
        strides: stride of each level, in pixels.
        ratios: aspect ratios ``h / w``.
        scales: multipliers of the size (octave scales).
        offset: location centres are ``(index + offset) * stride`` (see the module docstring).
    """

    def __init__(
        self,
        sizes: Sequence[float] = RETINANET_SIZES,
        strides: Sequence[int] = FPN_STRIDES,
        ratios: Sequence[float] = RETINANET_RATIOS,
        scales: Sequence[float] = RETINANET_SCALES,
        offset: float = 0.0,
    ):
        if len(sizes) != len(strides) or not sizes:
            raise ValueError(
                f"AnchorGenerator: sizes {tuple(sizes)} and strides {tuple(strides)} must be non-empty, equal length"
            )
        if min(sizes) <= 0 or min(strides) <= 0 or not ratios or min(ratios) <= 0 or not scales or min(scales) <= 0:
            raise ValueError(
                f"AnchorGenerator: sizes {tuple(sizes)}, strides {tuple(strides)}, ratios {tuple(ratios)} and "
                f"scales {tuple(scales)} must be positive"
            )
        self.sizes = tuple(float(s) for s in sizes)
        self.strides = tuple(int(s) if float(s).is_integer() else float(s) for s in strides)
        self.ratios = tuple(float(r) for r in ratios)
        self.scales = tuple(float(s) for s in scales)
        self.offset = float(offset)
        self._cache = _Cache()

    @property
    def num_levels(self) -> int:
        return len(self.sizes)

    @property
    def num_anchors_per_location(self) -> int:
        return len(self.ratios) * len(self.scales)

    def base_anchors(self, level: int) -> Tensor:
        """``(A, 4)`` float64 anchors of ``level`` centred on the origin, ratio-major."""
        ratios = torch.tensor(self.ratios, dtype=torch.float64)
        side = self.sizes[level] * torch.tensor(self.scales, dtype=torch.float64)
        w = (side[None, :] / ratios.sqrt()[:, None]).reshape(-1)
        h = (side[None, :] * ratios.sqrt()[:, None]).reshape(-1)
        return torch.stack((-w, -h, w, h), dim=1) / 2

    def num_anchors_per_level(self, feature_sizes: Sequence[FeatureSize]) -> list[int]:
        sizes = _check_sizes(feature_sizes, self.num_levels, "AnchorGenerator")
        return [h * w * self.num_anchors_per_location for h, w in sizes]

    def level_anchors(
        self,
        level: int,
        feature_size: FeatureSize,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """``(H * W * A, 4)`` anchors of one level (cached, read-only)."""
        height, width = (int(v) for v in feature_size[-2:])
        device = torch.device(device if device is not None else "cpu")

        def make() -> Tensor:
            # in float64, rounded once to ``dtype``: every dtype gets the nearest value to the exact anchor
            centres = _grid(height, width, self.strides[level], self.offset, device, torch.float64).repeat(1, 2)
            base = self.base_anchors(level).to(device=device)
            return (centres[:, None, :] + base[None, :, :]).reshape(-1, 4).to(dtype)

        return self._cache.get(("level", level, height, width, device, dtype), make)

    def __call__(
        self,
        feature_sizes: Sequence[FeatureSize],
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """All anchors, levels concatenated: ``(sum_l H_l * W_l * A, 4)`` (cached, read-only).

        ``feature_sizes``: one ``(H, W)`` (or a feature map's ``shape``) per level.
        """
        sizes = _check_sizes(feature_sizes, self.num_levels, "AnchorGenerator")
        device = torch.device(device if device is not None else "cpu")

        def make() -> Tensor:
            return torch.cat([self.level_anchors(lvl, hw, device, dtype) for lvl, hw in enumerate(sizes)])

        return self._cache.get(("all", tuple(sizes), device, dtype), make)


class AnchorPoints:
    """One point per feature-map location, with its level's stride, for anchor-free heads (GFL, FCOS).

    Args:
        strides: stride of each level, in pixels.
        offset: points are ``(index + offset) * stride`` (0, GFL's released code; see the module docstring).
    """

    def __init__(self, strides: Sequence[int] = FPN_STRIDES, offset: float = 0.0):
        if not strides or min(strides) <= 0:
            raise ValueError(f"AnchorPoints: strides must be non-empty and positive, got {tuple(strides)}")
        self.strides = tuple(int(s) if float(s).is_integer() else float(s) for s in strides)
        self.offset = float(offset)
        self._cache = _Cache()

    @property
    def num_levels(self) -> int:
        return len(self.strides)

    def num_points_per_level(self, feature_sizes: Sequence[FeatureSize]) -> list[int]:
        return [h * w for h, w in _check_sizes(feature_sizes, self.num_levels, "AnchorPoints")]

    def __call__(
        self,
        feature_sizes: Sequence[FeatureSize],
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> tuple[Tensor, Tensor]:
        """``points: (N, 2)`` as ``(x, y)`` and ``strides: (N,)`` (same dtype), levels concatenated (cached)."""
        sizes = _check_sizes(feature_sizes, self.num_levels, "AnchorPoints")
        device = torch.device(device if device is not None else "cpu")

        def level(lvl: int, hw: tuple[int, int]) -> Tensor:
            return self._cache.get(
                ("level", lvl, hw, device, dtype), lambda: _grid(*hw, self.strides[lvl], self.offset, device, dtype)
            )

        def make() -> tuple[Tensor, Tensor]:
            points = torch.cat([level(lvl, hw) for lvl, hw in enumerate(sizes)])
            strides = torch.cat(
                [
                    torch.full((h * w,), float(s), device=device, dtype=dtype)
                    for (h, w), s in zip(sizes, self.strides, strict=True)
                ]
            )
            return points, strides

        return self._cache.get(("all", tuple(sizes), device, dtype), make)


def points_to_anchors(points: Tensor, strides: Tensor, octave_base_scale: float = 8.0) -> Tensor:
    """Square anchors of side ``octave_base_scale * stride`` centred on ``points``: ``(N, 2), (N,) -> (N, 4)``.

    GFL (arXiv 2006.04388) keeps ATSS's single anchor per location with ``octave_base_scale = 8``
    for the assignment only (Zhang et al., CVPR 2020, arXiv 1912.02424, sec. 3).
    """
    if points.shape[-1] != 2 or strides.shape != points.shape[:-1]:
        raise ValueError(
            "points_to_anchors: points must be (N, 2) and strides (N,), "
            f"got {tuple(points.shape)} and {tuple(strides.shape)}"
        )
    half = (strides * (octave_base_scale / 2))[..., None]
    return torch.cat((points - half, points + half), dim=-1)


__all__ = [
    "FPN_STRIDES",
    "RETINANET_RATIOS",
    "RETINANET_SCALES",
    "RETINANET_SIZES",
    "AnchorGenerator",
    "AnchorPoints",
    "feature_map_sizes",
    "points_to_anchors",
]
