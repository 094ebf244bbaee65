"""Box coders: what a regression head predicts for a box, relative to its anchor or point.

``DeltaXYWHCoder``: the R-CNN parametrisation (Girshick et al., CVPR 2014, appendix C; Fast R-CNN,
Girshick, ICCV 2015, eq. 2) that RetinaNet uses class-agnostically (Lin et al., arXiv 1708.02002,
sec. 4). ``DistancePointCoder``: distances from a point to the four sides (FCOS; GFL, Li et al.,
arXiv 2006.04388, sec. 3.3), in units of the level's stride.

Both work on any leading dimensions (anchors and boxes broadcast), on any device, and compute in
the promoted dtype of their inputs (at least float32, so bf16 predictions decode in float32).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

#: torchvision's and detectron2's ``bbox_xform_clip``: ``exp(dw)`` stays below 1000 / 16.
DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _check_last_dim(name: str, t: Tensor, size: int, where: str) -> None:
    if t.ndim == 0 or t.shape[-1] != size:
        raise ValueError(f"{where}: {name} must have shape (..., {size}), got {tuple(t.shape)}")


class DeltaXYWHCoder:
    """``(dx, dy, dw, dh)`` of a box relative to an anchor, normalised by ``(delta - means) / stds``.

    With anchor centre ``(xa, ya)`` and size ``(wa, ha)`` and box ``(x, y, w, h)``:
    ``dx = (x - xa) / wa``, ``dy = (y - ya) / ha``, ``dw = log(w / wa)``, ``dh = log(h / ha)``.
    Decoding clamps the de-normalised ``dw, dh`` from above at ``clamp`` (``log(1000/16)``,
    torchvision/detectron2; only from above: a shrink cannot overflow ``exp``).

    ``stds`` are the reciprocals of torchvision's ``BoxCoder(weights)``: RetinaNet uses weights
    ``(1, 1, 1, 1)`` in torchvision (and ``target_stds=(1, 1, 1, 1)`` in mmdetection), hence the
    default; Faster R-CNN's box head uses weights ``(10, 10, 5, 5)``, i.e. stds ``(0.1, 0.1, 0.2, 0.2)``.
    """

    def __init__(
        self,
        means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
        stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
        clamp: float = DEFAULT_SCALE_CLAMP,
    ):
        if len(means) != 4 or len(stds) != 4 or min(stds) <= 0:
            raise ValueError(
                f"DeltaXYWHCoder: means and stds need 4 values, stds > 0; got {tuple(means)}, {tuple(stds)}"
            )
        self.means = tuple(float(m) for m in means)
        self.stds = tuple(float(s) for s in stds)
        self.clamp = float(clamp)

    def _affine(self, like: Tensor) -> tuple[Tensor, Tensor]:
        means = torch.tensor(self.means, dtype=like.dtype, device=like.device)
        stds = torch.tensor(self.stds, dtype=like.dtype, device=like.device)
        return means, stds

    def encode(self, anchors: Tensor, boxes: Tensor) -> Tensor:
        """``anchors: (..., 4)``, ``boxes: (..., 4)`` (broadcast), xyxy -> deltas ``(..., 4)``.

        Anchors must have positive width and height; a box with zero width gives ``dw = -inf``.
        """
        _check_last_dim("anchors", anchors, 4, "DeltaXYWHCoder.encode")
        _check_last_dim("boxes", boxes, 4, "DeltaXYWHCoder.encode")
        dtype = _compute_dtype(anchors, boxes)
        anchors, boxes = anchors.to(dtype), boxes.to(dtype)
        wa = anchors[..., 2] - anchors[..., 0]
        ha = anchors[..., 3] - anchors[..., 1]
        xa = anchors[..., 0] + 0.5 * wa
        ya = anchors[..., 1] + 0.5 * ha
        w = boxes[..., 2] - boxes[..., 0]
        h = boxes[..., 3] - boxes[..., 1]
        x = boxes[..., 0] + 0.5 * w
        y = boxes[..., 1] + 0.5 * h
        deltas = torch.stack(((x - xa) / wa, (y - ya) / ha, torch.log(w / wa), torch.log(h / ha)), dim=-1)
        means, stds = self._affine(deltas)
        return (deltas - means) / stds

    def decode(self, anchors: Tensor, deltas: Tensor) -> Tensor:
        """``anchors: (..., 4)``, ``deltas: (..., 4)`` (broadcast) -> boxes ``(..., 4)`` xyxy."""
        _check_last_dim("anchors", anchors, 4, "DeltaXYWHCoder.decode")
        _check_last_dim("deltas", deltas, 4, "DeltaXYWHCoder.decode")
        dtype = _compute_dtype(anchors, deltas)
        anchors, deltas = anchors.to(dtype), deltas.to(dtype)
        means, stds = self._affine(deltas)
        deltas = deltas * stds + means
        wa = anchors[..., 2] - anchors[..., 0]
        ha = anchors[..., 3] - anchors[..., 1]
        xa = anchors[..., 0] + 0.5 * wa
        ya = anchors[..., 1] + 0.5 * ha
        x = xa + deltas[..., 0] * wa
        y = ya + deltas[..., 1] * ha
        half_w = 0.5 * wa * deltas[..., 2].clamp(max=self.clamp).exp()
        half_h = 0.5 * ha * deltas[..., 3].clamp(max=self.clamp).exp()
        return torch.stack((x - half_w, y - half_h, x + half_w, y + half_h), dim=-1)


class DistancePointCoder:
    """``(l, t, r, b)``: distances from a point to the left, top, right and bottom sides of a box.

    Distances are divided by the point's stride when ``strides`` are given (GFL regresses them in
    units of the level's stride). With ``max_distance`` set, encoded distances are clamped to
    ``[0, max_distance - eps]`` (GFL: ``max_distance = reg_max = 16``; GFL eq. 6 and
    the DFL loss use ``eps = 0.01``, GFL's released code ``0.1``); without it they are returned raw
    (negative for a side the point lies beyond). Decoding does not clamp.
    """

    def __init__(self, max_distance: float | None = None, eps: float = 0.01):
        if max_distance is not None and not max_distance > eps >= 0:
            raise ValueError(f"DistancePointCoder: need max_distance > eps >= 0, got {max_distance} and {eps}")
        self.max_distance = None if max_distance is None else float(max_distance)
        self.eps = float(eps)

    @staticmethod
    def _stride(strides: Tensor | float | None, like: Tensor) -> Tensor | float:
        if strides is None:
            return 1.0
        if isinstance(strides, Tensor):
            return strides.to(like.dtype)[..., None]
        return float(strides)

    def encode(self, points: Tensor, boxes: Tensor, strides: Tensor | float | None = None) -> Tensor:
        """``points: (..., 2)`` as ``(x, y)``, ``boxes: (..., 4)``, ``strides: (...)`` or a number -> ``(..., 4)``."""
        _check_last_dim("points", points, 2, "DistancePointCoder.encode")
        _check_last_dim("boxes", boxes, 4, "DistancePointCoder.encode")
        dtype = _compute_dtype(points, boxes)
        points, boxes = points.to(dtype), boxes.to(dtype)
        distances = torch.cat((points - boxes[..., :2], boxes[..., 2:] - points), dim=-1)
        distances = distances / self._stride(strides, distances)
        if self.max_distance is not None:
            distances = distances.clamp(min=0, max=self.max_distance - self.eps)
        return distances

    def decode(self, points: Tensor, distances: Tensor, strides: Tensor | float | None = None) -> Tensor:
        """``points: (..., 2)``, ``distances: (..., 4)``, ``strides: (...)`` or a number -> boxes ``(..., 4)``."""
        _check_last_dim("points", points, 2, "DistancePointCoder.decode")
        _check_last_dim("distances", distances, 4, "DistancePointCoder.decode")
        dtype = _compute_dtype(points, distances)
        points, distances = points.to(dtype), distances.to(dtype)
        distances = distances * self._stride(strides, distances)
        return torch.cat((points - distances[..., :2], points + distances[..., 2:]), dim=-1)


__all__ = ["DEFAULT_SCALE_CLAMP", "DeltaXYWHCoder", "DistancePointCoder"]
