"""Detection transforms (``torchvision.transforms.v2`` on ``tv_tensors``) and the padding collate.

``DetectionTransform`` resizes keeping the aspect ratio (shorter side to ``min_size``, longer side
capped at ``max_size``, as in torchvision's detectors), flips horizontally at random when training,
converts to float in [0, 1] and normalises with the ImageNet mean and std. Boxes (``BoundingBoxes``
in XYXY format) follow every geometric step; boxes that end up smaller than 1 px are removed with
their labels and flags (``SanitizeBoundingBoxes``).

``collate_detection`` pads a batch at the bottom and right to a common size divisible by
``size_divisible`` (the FPN's largest stride) and returns ``images (B, 3, H, W) float32`` and the
list of target dicts.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2

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


def _labels_and_flags(sample: dict) -> tuple[Tensor, Tensor]:
    """What ``SanitizeBoundingBoxes`` must filter along with the boxes."""
    return sample["labels"], sample["ignore"]


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
        steps: list[v2.Transform] = []
        if min_size is not None:
            steps.append(v2.Resize(min_size, max_size=max_size, antialias=True))
        if train and flip_prob > 0:
            steps.append(v2.RandomHorizontalFlip(flip_prob))
        steps += [
            v2.ClampBoundingBoxes(),
            v2.SanitizeBoundingBoxes(min_size=1.0, min_area=1.0, labels_getter=_labels_and_flags),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
        ]
        self.train = train
        self.min_size, self.max_size = min_size, max_size
        self.pipeline = v2.Compose(steps)

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
        height, width = image.shape[-2:]
        sample = {
            "image": tv_tensors.Image(image),
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width)),
            "labels": labels,
            "ignore": ignore,
        }
        out = self.pipeline(sample)
        return {
            "image": out["image"].as_subclass(Tensor),
            "boxes": out["boxes"].as_subclass(Tensor).reshape(-1, 4),
            "labels": out["labels"],
            "ignore": out["ignore"],
        }

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
