"""Batch images of different sizes and pad ground truth to one tensor per batch.

The detectors compute their losses for the whole batch at once (one assigner call, one loss call),
so images are zero-padded at the bottom and right to a common size, which keeps every pixel's
coordinates (and thus the boxes) unchanged, and ground truth is padded to ``G = max boxes`` with
label ``-1``, the assigners' "no box" value.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["batch_images", "pad_targets"]


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def batch_images(images: Tensor | Sequence[Tensor], size_divisible: int = 128) -> tuple[Tensor, list[tuple[int, int]]]:
    """Stack normalised images into ``(B, 3, H, W)`` and return each image's own ``(H_i, W_i)``.

    Args:
        images: a ``(B, 3, H, W)`` tensor (returned as it is, every image of size ``(H, W)``) or a
            list of ``(3, H_i, W_i)`` tensors, zero-padded at the bottom and right to the largest
            size rounded up to a multiple of ``size_divisible``.
        size_divisible: 128 makes every FPN level up to P7 an exact multiple of the input; 32
            (torchvision's value) is enough for C3-C5 and wastes less.
    """
    if size_divisible < 1:
        raise ValueError(f"batch_images: size_divisible must be >= 1, got {size_divisible}")
    if isinstance(images, Tensor):
        if images.ndim != 4:
            raise ValueError(f"batch_images: a tensor of images must be (B, C, H, W), got {tuple(images.shape)}")
        return images, [(int(images.shape[-2]), int(images.shape[-1]))] * images.shape[0]
    if len(images) == 0:
        raise ValueError("batch_images: no images")
    for i, image in enumerate(images):
        if not isinstance(image, Tensor) or image.ndim != 3 or image.shape[0] != images[0].shape[0]:
            got = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
            raise ValueError(f"batch_images: image {i} must be a (C, H, W) tensor like image 0, got {got}")
    sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    height = _round_up(max(h for h, _ in sizes), size_divisible)
    width = _round_up(max(w for _, w in sizes), size_divisible)
    batch = images[0].new_zeros((len(images), images[0].shape[0], height, width))
    for image, out in zip(images, batch, strict=True):
        out[:, : image.shape[-2], : image.shape[-1]].copy_(image)
    return batch, sizes


def pad_targets(targets: Sequence[dict[str, Tensor]], device: torch.device | str | None) -> tuple[Tensor, Tensor]:
    """``targets[i] = {"boxes": (G_i, 4), "labels": (G_i,)}`` -> ``boxes (B, G, 4)`` float, ``labels (B, G)`` int64.

    ``G = max_i G_i`` (0 when no image has a box); padded boxes are zeros with label ``-1``.
    """
    boxes_list, labels_list = [], []
    for i, target in enumerate(targets):
        boxes, labels = target["boxes"], target["labels"]
        if boxes.ndim != 2 or boxes.shape[-1] != 4 or labels.shape != boxes.shape[:1]:
            raise ValueError(
                f"pad_targets: target {i} needs boxes (G, 4) and labels (G,), got {tuple(boxes.shape)} and "
                f"{tuple(labels.shape)}"
            )
        boxes_list.append(boxes.to(device=device, dtype=boxes.dtype if boxes.is_floating_point() else torch.float32))
        labels_list.append(labels.to(device=device, dtype=torch.int64))
    num = max((b.shape[0] for b in boxes_list), default=0)
    dtype = boxes_list[0].dtype if boxes_list else torch.float32
    gt_boxes = torch.zeros((len(targets), num, 4), dtype=dtype, device=device)
    gt_labels = torch.full((len(targets), num), -1, dtype=torch.int64, device=device)
    for i, (boxes, labels) in enumerate(zip(boxes_list, labels_list, strict=True)):
        gt_boxes[i, : boxes.shape[0]] = boxes
        gt_labels[i, : labels.shape[0]] = labels
    return gt_boxes, gt_labels
