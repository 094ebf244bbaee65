"""Detection transforms (``torchvision.transforms.v2`` on ``tv_tensors``) and the padding collate.

``DetectionTransform`` resizes keeping the aspect ratio (shorter side to ``min_size``, longer side
capped at ``max_size``, as in torchvision's detectors), flips horizontally at random when training,
converts to float in [0, 1] and normalises with the ImageNet mean and std. Boxes (XYXY) follow every
geometric step; boxes that end up smaller than 1 px are removed with their labels and flags.

The steps are those of the composed ``torchvision.transforms.v2`` pipeline (``Resize``,
``RandomHorizontalFlip``, ``ClampBoundingBoxes``, ``SanitizeBoundingBoxes``, ``ToDtype``,
``Normalize``), called as torchvision's functional kernels on plain tensors: the composed pipeline
spent 4.6 ms per 128-px image wrapping and unwrapping ``tv_tensors`` (about 10% of the digits
presets' training step), the kernels 0.07 ms. The outputs are the same, random flips included
(one ``torch.rand(1)`` draw per image, as ``RandomHorizontalFlip``): ``tests/data/test_transforms.py``
compares the two.

``collate_detection`` pads a batch at the bottom and right to a common size divisible by
``size_divisible`` (the FPN's largest stride) and returns ``images (B, 3, H, W) float32`` and the
list of target dicts.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DetectionCollate",
    "DetectionTransform",
    "boxes_to_original",
    "collate_detection",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DetectionTransform:
    """Resize, (train) flip, float, normalise; the boxes follow.

    Args:
        train: flip horizontally with probability ``flip_prob``; off for evaluation.
        min_size: target length of the shorter side; ``None`` keeps the size.
        max_size: cap on the longer side (``None``: no cap); must exceed ``min_size``.
        flip_prob: probability of the horizontal flip when training.
        mean, std: per-channel normalisation of the [0, 1] image.
    """

    def __init__(
        self,
        *,
        train: bool,
        min_size: int | None = 800,
        max_size: int | None = 1333,
        flip_prob: float = 0.5,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        if min_size is not None and max_size is not None and max_size <= min_size:
            raise ValueError(f"max_size ({max_size}) must be larger than min_size ({min_size})")
        self.train, self.flip_prob = train, flip_prob
        self.min_size, self.max_size = min_size, max_size
        self.mean, self.std = list(mean), list(std)

    def __call__(self, image: Tensor, boxes: Tensor, labels: Tensor, ignore: Tensor) -> dict[str, Tensor]:
        """Transform one image and its boxes.

        Args:
            image: ``(3, H, W)`` uint8.
            boxes: ``(G, 4)`` float32 xyxy pixels.
            labels: ``(G,)`` int64.
            ignore: ``(G,)`` bool, ignore regions (crowd, difficult).

        Returns:
            ``{"image": (3, h, w) float32 normalised, "boxes": (G', 4), "labels": (G',), "ignore": (G',)}``
            with the boxes in the transformed image and degenerate ones removed.
        """
        xyxy = tv_tensors.BoundingBoxFormat.XYXY
        canvas = (int(image.shape[-2]), int(image.shape[-1]))
        boxes = boxes.reshape(-1, 4)
        if self.min_size is not None:
            size = [self.min_size]
            image = F.resize_image(image, size, max_size=self.max_size, antialias=True)
            boxes, canvas = F.resize_bounding_boxes(boxes, canvas, size, max_size=self.max_size, format=xyxy)
        if self.train and self.flip_prob > 0 and not torch.rand(1) >= self.flip_prob:
            image = F.horizontal_flip_image(image)
            boxes = F.horizontal_flip_bounding_boxes(boxes, format=xyxy, canvas_size=canvas)
        # "soft", the mode of a BoundingBoxes made without one, which ClampBoundingBoxes() follows
        boxes = F.clamp_bounding_boxes(boxes, format=xyxy, canvas_size=canvas, clamping_mode="soft")
        boxes, valid = F.sanitize_bounding_boxes(boxes, format=xyxy, canvas_size=canvas, min_size=1.0, min_area=1.0)
        image = F.normalize_image(F.to_dtype_image(image, torch.float32, scale=True), self.mean, self.std)
        return {"image": image, "boxes": boxes.reshape(-1, 4), "labels": labels[valid], "ignore": ignore[valid]}

    def __repr__(self) -> str:
        return f"DetectionTransform(train={self.train}, min_size={self.min_size}, max_size={self.max_size})"


def boxes_to_original(boxes: Tensor, target: dict) -> Tensor:
    """Map ``(N, 4)`` xyxy boxes in the transformed (unflipped) image back to the original pixels."""
    scale_y, scale_x = target["scale"]
    factors = boxes.new_tensor([scale_x, scale_y, scale_x, scale_y])
    return boxes / factors


def collate_detection(batch: list[tuple[Tensor, dict]], size_divisible: int = 128) -> tuple[Tensor, list[dict]]:
    """Stack a batch of ``(image (3, h_i, w_i), target)`` into one padded tensor.

    Args:
        batch: the dataset items.
        size_divisible: the padded height and width are the batch maxima rounded up to a multiple of it.

    Returns:
        ``images (B, 3, H, W) float32`` (zero padding at the bottom and right, i.e. the mean colour
        after normalisation) and the list of targets unchanged (their ``size`` is the unpadded size).
    """
    if not batch:
        raise ValueError("cannot collate an empty batch")
    if size_divisible < 1:
        raise ValueError(f"size_divisible must be >= 1, got {size_divisible}")
    images = [image for image, _ in batch]
    height = max(image.shape[-2] for image in images)
    width = max(image.shape[-1] for image in images)
    height = -(-height // size_divisible) * size_divisible
    width = -(-width // size_divisible) * size_divisible
    padded = images[0].new_zeros((len(images), images[0].shape[0], height, width))
    for index, image in enumerate(images):
        padded[index, :, : image.shape[-2], : image.shape[-1]] = image
    return padded, [target for _, target in batch]


class DetectionCollate:
    """``collate_detection`` with a fixed ``size_divisible``, picklable for ``DataLoader`` workers."""

    def __init__(self, size_divisible: int = 128) -> None:
        self.size_divisible = size_divisible

    def __call__(self, batch: list[tuple[Tensor, dict]]) -> tuple[Tensor, list[dict]]:
        return collate_detection(batch, self.size_divisible)
