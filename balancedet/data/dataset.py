"""The torch ``Dataset`` over records of any format, and their COCO-format ground truth.

``DetectionDataset`` decodes an image, checks its size against the record, applies a
``DetectionTransform`` and returns ``(image (3, h, w) float32, target)``; ``target`` holds

- ``boxes (G, 4) float32`` xyxy in the resized image, the training targets (ignore regions excluded),
- ``labels (G,) int64`` in ``0..C-1``,
- ``ignore_boxes (K, 4) float32`` the ignore regions (COCO crowd, VOC difficult), resized alike,
- ``image_id int`` (the source's id, for evaluation), ``orig_size (h, w)``, ``size (h, w)`` after the
  resize and before padding, ``scale (sy, sx)`` = resized / original per axis.

``coco_ground_truth`` writes the records back as a COCO dict with the original image and category
ids, so the COCO evaluator (faster-coco-eval) scores VOC, YOLO and digits exactly like COCO: ignore
regions become ``iscrowd=1`` (never counted as missed, detections on them not counted as false).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from balancedet.data.records import ImageRecord, RecordSet
from balancedet.data.spec import DataSpec, load_data_spec
from balancedet.data.transforms import DetectionTransform

__all__ = ["DetectionDataset", "build_dataset", "coco_ground_truth", "instance_counts"]


class DetectionDataset(Dataset):
    """Images and boxes of one split, transformed for a detector.

    Args:
        records: the images, from any loader.
        class_names: ``C`` names, label ``k`` = ``class_names[k]``.
        category_ids: ``C`` source category ids (for evaluation in the source's ids).
        transforms: a ``DetectionTransform``; ``None`` means no resize, no flip, only float + normalise.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        class_names: Sequence[str],
        category_ids: Sequence[int],
        transforms: DetectionTransform | None = None,
    ) -> None:
        if len(class_names) != len(category_ids):
            raise ValueError(f"{len(class_names)} class names but {len(category_ids)} category ids")
        self.records = list(records)
        self.class_names = list(class_names)
        self.category_ids = list(category_ids)
        self.transforms = transforms if transforms is not None else DetectionTransform(train=False, min_size=None)

    @classmethod
    def from_record_set(cls, record_set: RecordSet, transforms: DetectionTransform | None = None) -> DetectionDataset:
        return cls(record_set.records, record_set.class_names, record_set.category_ids, transforms)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[Tensor, dict]:
        record = self.records[index]
        with Image.open(record.file) as image:
            if image.size != (record.width, record.height):
                raise ValueError(
                    f"{record.file}: image id {record.image_id}: the image is {image.size[0]}x{image.size[1]} "
                    f"but its annotation says {record.width}x{record.height}"
                )
            pixels = TF.pil_to_tensor(image.convert("RGB"))
        ignore = torch.from_numpy(record.ignore)
        out = self.transforms(pixels, torch.from_numpy(record.boxes), torch.from_numpy(record.labels), ignore)
        height, width = out["image"].shape[-2:]
        keep = ~out["ignore"]
        target = {
            "boxes": out["boxes"][keep],
            "labels": out["labels"][keep],
            "ignore_boxes": out["boxes"][~keep],
            "image_id": record.image_id,
            "orig_size": (record.height, record.width),
            "size": (int(height), int(width)),
            "scale": (height / record.height, width / record.width),
        }
        return out["image"], target

    def ground_truth(self) -> dict:
        """``coco_ground_truth`` of this dataset's records."""
        return coco_ground_truth(self.records, self.category_ids, self.class_names)


def coco_ground_truth(
    records: Sequence[ImageRecord], category_ids: Sequence[int], class_names: Sequence[str] | None = None
) -> dict:
    """A COCO-format dict of the records, for the COCO evaluator.

    Args:
        records: the images, with their original ``image_id``.
        category_ids: label ``k`` becomes category ``category_ids[k]``.
        class_names: category names (default: the ids as strings).

    Returns:
        ``{"images", "annotations", "categories"}``: bbox ``[x, y, w, h]`` in original pixels, ``area``
        from the record (COCO's segment area where the source had one), ``iscrowd`` = the ignore flag.
    """
    names = list(class_names) if class_names is not None else [str(i) for i in category_ids]
    lookup = np.asarray(category_ids, dtype=np.int64)
    images, annotations = [], []
    for record in records:
        images.append(
            {"id": record.image_id, "file_name": Path(record.file).name, "width": record.width, "height": record.height}
        )
        xywh = record.boxes.astype(np.float64)
        xywh[:, 2:] -= xywh[:, :2]
        for box, label, area, crowd in zip(
            xywh.tolist(), lookup[record.labels].tolist(), record.areas.tolist(), record.ignore.tolist(), strict=True
        ):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": record.image_id,
                    "category_id": label,
                    "bbox": box,
                    "area": area,
                    "iscrowd": int(crowd),
                }
            )
    categories = [{"id": int(i), "name": name} for i, name in zip(category_ids, names, strict=True)]
    return {"images": images, "annotations": annotations, "categories": categories}


def instance_counts(records: Sequence[ImageRecord], num_classes: int) -> np.ndarray:
    """``(C,)`` int64: the number of (non-ignored) boxes of each class, e.g. to see a long tail."""
    labels = [record.labels[~record.ignore] for record in records]
    flat = np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)
    return np.bincount(flat, minlength=num_classes)


def build_dataset(
    spec: DataSpec | str | Path,
    split: str,
    *,
    train: bool,
    min_size: int | None = 800,
    max_size: int | None = 1333,
    skip_bad: bool = False,
) -> DetectionDataset:
    """Load ``split`` of a dataset (a ``DataSpec``, a YAML path or a built-in name) with its transforms.

    Args:
        spec: the dataset.
        split: ``"train"``, ``"val"`` (or another split the YAML names).
        train: random horizontal flip on (training) or off (evaluation).
        min_size, max_size: the resize of ``DetectionTransform``.
        skip_bad: drop malformed records with a warning instead of raising.
    """
    if not isinstance(spec, DataSpec):
        spec = load_data_spec(spec)
    transforms = DetectionTransform(train=train, min_size=min_size, max_size=max_size)
    return DetectionDataset.from_record_set(spec.load(split, skip_bad=skip_bad), transforms)
