"""The torch ``Dataset`` over records of any format, and their COCO-format ground truth.

``DetectionDataset`` decodes an image (``balancedet.data.images.read_image``: any mode to 8-bit RGB,
as displayed), checks its size against the record, applies a ``DetectionTransform`` and returns
``(image (3, h, w) float32, target)``; ``target`` holds

- ``boxes (G, 4) float32`` xyxy in the resized image, the training targets (ignore regions excluded),
- ``labels (G,) int64`` in ``0..C-1``,
- ``ignore_boxes (K, 4) float32`` the ignore regions (COCO crowd, VOC difficult), resized alike,
- ``image_id int`` (the source's id, for evaluation), ``orig_size (h, w)``, ``size (h, w)`` after the
  resize and before padding, ``scale (sy, sx)`` = resized / original per axis.

``coco_ground_truth`` writes the records back as a COCO dict with the original image and category
ids, so the COCO evaluator (faster-coco-eval) scores VOC, YOLO and digits exactly like COCO: ignore
regions become ``iscrowd=1`` (never counted as missed, detections on them not counted as false).

Bad images (``checked_dataset``, the way training and evaluation read a split): an evaluated split,
or a training split of at most ``PREFLIGHT_MAX_IMAGES`` images, is decoded in full before it is used
(``check_images``): a bad image is an error naming the file and the image id, or with ``skip_bad``
is dropped with one warning and a count. Every evaluation decodes its whole split anyway, so its
check costs less than one evaluation. A larger training split is checked as it trains: a bad image
is replaced by the next good one of the split, with a warning naming it and the count so far, the
same replacement each time it is met (a resumed run sees the same batches).

Decoded images in memory (``cache``, the config's ``data.cache``): with ``True`` every image of the split
is decoded once, before it is used, by the same pre-flight (so a bad image is found then, whatever the
split's size), and kept as its ``(3, H, W)`` uint8 tensor; each read then costs the transform only.
``"auto"`` (the default) does so when the decoded split fits ``CACHE_MAX_BYTES`` and a quarter of the
memory available; ``False`` decodes each image each time it is read. The transform runs on the cached
tensor as on a decoded one (it never writes into its input), so a cached split gives the same items bit
for bit. Loader worker processes started by fork share the tensors' pages rather than copying them.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from balancedet.data.images import BadImageError, read_image
from balancedet.data.records import BadRecordWarning, ImageRecord, PackedRecords, RecordSet
from balancedet.data.spec import DataSpec, load_data_spec
from balancedet.data.transforms import DetectionTransform
from balancedet.data.verify import PREFLIGHT_MAX_IMAGES, check_images, decode_images

__all__ = [
    "CACHE_MAX_BYTES",
    "DetectionDataset",
    "build_dataset",
    "checked_dataset",
    "coco_ground_truth",
    "decoded_bytes",
    "instance_counts",
    "use_cache",
]

CACHE_MAX_BYTES = 2 * 1024**3
"""Largest decoded split that ``cache="auto"`` keeps in memory (also at most a quarter of what is available).
The digits' 3,300 scenes of 128 x 128 take 162 MB; 2 GiB holds about 2,400 images of 640 x 480."""


class DetectionDataset(Dataset):
    """Images and boxes of one split, transformed for a detector.

    Args:
        records: the images, from any loader.
        class_names: ``C`` names, label ``k`` = ``class_names[k]``.
        category_ids: ``C`` source category ids (for evaluation in the source's ids).
        transforms: a ``DetectionTransform``; ``None`` means no resize, no flip, only float + normalise.
        replace_bad: an image that cannot be read (``BadImageError``) is replaced by the next readable
            one of the records, wrapping around, with a ``BadRecordWarning``; ``replaced`` maps the index
            of each bad image met in this process to its message. Off: the error is raised.
        pixels: each record's decoded ``(3, H, W)`` uint8 image (``decode_images``), read instead of the
            file; ``None``: each read decodes the file.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        class_names: Sequence[str],
        category_ids: Sequence[int],
        transforms: DetectionTransform | None = None,
        replace_bad: bool = False,
        pixels: Sequence[Tensor] | None = None,
    ) -> None:
        if len(class_names) != len(category_ids):
            raise ValueError(f"{len(class_names)} class names but {len(category_ids)} category ids")
        if pixels is not None and len(pixels) != len(records):
            raise ValueError(f"{len(pixels)} decoded images for {len(records)} records")
        # a Sequence is kept as it is: PackedRecords makes each record when it is read
        self.records = records if isinstance(records, Sequence) else list(records)
        self.class_names = list(class_names)
        self.category_ids = list(category_ids)
        self.transforms = transforms if transforms is not None else DetectionTransform(train=False, min_size=None)
        self.replace_bad = replace_bad
        self.replaced: dict[int, str] = {}
        self.pixels = pixels

    @classmethod
    def from_record_set(
        cls,
        record_set: RecordSet,
        transforms: DetectionTransform | None = None,
        replace_bad: bool = False,
        pixels: Sequence[Tensor] | None = None,
    ) -> DetectionDataset:
        return cls(record_set.records, record_set.class_names, record_set.category_ids, transforms, replace_bad, pixels)

    @property
    def cached_bytes(self) -> int:
        """Bytes of the decoded images kept in memory (0 without a cache)."""
        return sum(p.numel() for p in self.pixels) if self.pixels is not None else 0

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[Tensor, dict]:
        if not self.replace_bad:
            return self._item(index)
        count = len(self.records)
        for step in range(count):
            candidate = (index + step) % count
            if candidate in self.replaced:
                continue
            try:
                return self._item(candidate)
            except BadImageError as error:
                self.replaced[candidate] = str(error)
                warnings.warn(
                    f"{error}; skipped, the next image of the split is trained on in its place "
                    f"({len(self.replaced)} bad image(s) met so far)",
                    BadRecordWarning,
                    stacklevel=2,
                )
        raise ValueError(f"none of the {count} images can be read: {next(iter(self.replaced.values()))}")

    def _item(self, index: int) -> tuple[Tensor, dict]:
        record = self.records[index]
        if self.pixels is not None:
            pixels = self.pixels[index]
        else:
            pixels = read_image(record.file, record.image_id, size=(record.width, record.height))
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


def decoded_bytes(records: Sequence[ImageRecord]) -> int:
    """Bytes of the records' images decoded as ``(3, H, W)`` uint8, from the sizes the records hold."""
    if isinstance(records, PackedRecords):  # its per-image sizes, without making each record
        return 3 * int(np.dot(np.asarray(records.widths, np.int64), np.asarray(records.heights, np.int64)))
    return sum(3 * int(r.width) * int(r.height) for r in records)


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (``MemAvailable`` of ``/proc/meminfo``), or None."""
    try:
        with open("/proc/meminfo") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def use_cache(cache: bool | str, records: Sequence[ImageRecord]) -> bool:
    """Whether a split of ``records`` is kept decoded: ``cache`` is ``True``, ``False`` or ``"auto"``
    (the decoded split within ``CACHE_MAX_BYTES`` and a quarter of ``available_memory``)."""
    if isinstance(cache, bool):
        return cache
    if cache != "auto":
        raise ValueError(f"data.cache must be auto, true or false, got {cache!r}")
    size, free = decoded_bytes(records), available_memory()
    return size <= CACHE_MAX_BYTES and (free is None or size <= free // 4)


def checked_dataset(
    record_set: RecordSet,
    transforms: DetectionTransform,
    *,
    source: Path | str,
    train: bool,
    skip_bad: bool,
    cache: bool | str = False,
) -> DetectionDataset:
    """A split as training and evaluation read it, its bad images found first (see the module docstring).

    Args:
        record_set: the split's records.
        transforms: its transforms.
        source: its annotations, named by the warnings.
        train: a training split (only those larger than ``PREFLIGHT_MAX_IMAGES`` go unchecked, unless cached).
        skip_bad: drop the bad images found by the check with one warning instead of raising.
        cache: keep the decoded images in memory (``use_cache``): the check then decodes every image,
            and keeps them.
    """
    if use_cache(cache, record_set.records):
        checked, pixels = decode_images(record_set, source, skip_bad=skip_bad)
        return DetectionDataset.from_record_set(checked, transforms, pixels=pixels)
    if train and len(record_set.records) > PREFLIGHT_MAX_IMAGES:
        return DetectionDataset.from_record_set(record_set, transforms, replace_bad=True)
    return DetectionDataset.from_record_set(check_images(record_set, source, skip_bad=skip_bad), transforms)


def build_dataset(
    spec: DataSpec | str | Path,
    split: str,
    *,
    train: bool,
    min_size: int | None = 800,
    max_size: int | None = 1333,
    flip_prob: float = 0.5,
    skip_bad: bool = False,
    cache: bool | str = False,
) -> DetectionDataset:
    """Load ``split`` of a dataset (a ``DataSpec``, a YAML path or a built-in name) with its transforms:
    the one split builder, which the trainer, ``eval`` and ``analyze`` use too (``engine.data.load_split``).

    Args:
        spec: the dataset.
        split: ``"train"``, ``"val"`` (or another split the YAML names).
        train: random horizontal flip on (training) or off (evaluation).
        min_size, max_size: the resize of ``DetectionTransform``.
        flip_prob: the probability of the horizontal flip of a training image.
        skip_bad: drop malformed records and bad images with a warning instead of raising.
        cache: keep the split's decoded images in memory: ``True``, ``False`` or ``"auto"`` (``use_cache``).
    """
    if not isinstance(spec, DataSpec):
        spec = load_data_spec(spec)
    transforms = DetectionTransform(train=train, min_size=min_size, max_size=max_size, flip_prob=flip_prob)
    records = spec.load(split, skip_bad=skip_bad)
    source = spec.split(split).annotations
    return checked_dataset(records, transforms, source=source, train=train, skip_bad=skip_bad, cache=cache)
