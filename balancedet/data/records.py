"""The record every loader produces, and the bookkeeping of malformed records.

COCO json, Pascal VOC xml, YOLO txt and the built-in digits scenes all become a ``RecordSet``:
a sequence of ``ImageRecord`` (boxes as ``xyxy`` pixels, labels contiguous in ``0..C-1``), the class
names, and ``category_ids`` mapping each contiguous label back to the source's category id
(COCO's own ids; ``1..C`` for VOC and YOLO), so that evaluation treats every format like COCO.

A malformed record raises ``ValueError`` naming the file and the record. With ``skip_bad=True``
the loader drops it instead, and emits one ``BadRecordWarning`` with the count and the first few
messages; the dropped messages stay in ``RecordSet.skipped``.

A large split keeps its records as flat arrays (``PackedRecords``, what ``load_coco`` returns):
100,000 ``ImageRecord`` objects of five small arrays each would take ~100 MB and a second to make,
where the arrays take a few bytes per box and each record is made when it is read.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import overload

import numpy as np

from balancedet.data.images import image_size

__all__ = [
    "BOX_TOLERANCE",
    "IMAGE_EXTENSIONS",
    "BadRecordWarning",
    "ImageRecord",
    "PackedRecords",
    "RecordSet",
]

BOX_TOLERANCE = 2.0
"""Pixels a box may stick out of its image before it counts as malformed (it is clipped)."""

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class BadRecordWarning(UserWarning):
    """Malformed records were dropped because the loader was called with ``skip_bad=True``."""


@dataclass(frozen=True, eq=False)
class ImageRecord:
    """One image and its objects, whatever the source format.

    Attributes:
        file: path of the image.
        width, height: image size in pixels, from the annotation or else the image header.
        image_id: the source's image id (COCO), or the 1-based position in the loader's order (VOC, YOLO,
            sorted by file name or in image-set order).
        boxes: ``(G, 4)`` float32 ``x1, y1, x2, y2`` in pixels, clipped to the image, ``x2 > x1``, ``y2 > y1``.
        labels: ``(G,)`` int64 contiguous class index in ``0..C-1``.
        iscrowd: ``(G,)`` bool, COCO ``iscrowd=1`` regions.
        difficult: ``(G,)`` bool, VOC ``difficult=1`` objects.
        areas: ``(G,)`` float32, the COCO ``area`` field where given (segment area), else the box area.
    """

    file: Path
    width: int
    height: int
    image_id: int
    boxes: np.ndarray
    labels: np.ndarray
    iscrowd: np.ndarray
    difficult: np.ndarray
    areas: np.ndarray

    @property
    def ignore(self) -> np.ndarray:
        """``(G,)`` bool: boxes that are ignore regions (crowd or difficult), not training targets."""
        return self.iscrowd | self.difficult

    def __len__(self) -> int:
        return int(self.labels.shape[0])


class PackedRecords(Sequence[ImageRecord]):
    """The ``ImageRecord``s of a split as flat arrays; ``records[i]`` makes record ``i`` (its arrays
    are copies, as independent as those of a record made alone).

    Args:
        files, widths, heights, image_ids: ``N`` of each, per image.
        starts: ``(N + 1,)`` int64: image ``i``'s boxes are rows ``starts[i]:starts[i + 1]`` of the
            per-box arrays.
        boxes: ``(M, 4)`` float32 xyxy; ``labels``: ``(M,)`` int64; ``iscrowd``, ``difficult``: ``(M,)``
            bool; ``areas``: ``(M,)`` float32; the fields of ``ImageRecord``.
    """

    def __init__(
        self,
        files: Sequence[Path | str],
        widths: Sequence[int],
        heights: Sequence[int],
        image_ids: Sequence[int],
        starts: np.ndarray,
        boxes: np.ndarray,
        labels: np.ndarray,
        iscrowd: np.ndarray,
        difficult: np.ndarray,
        areas: np.ndarray,
    ) -> None:
        count, total = len(files), len(labels)
        if len(widths) != count or len(heights) != count or len(image_ids) != count or len(starts) != count + 1:
            raise ValueError(f"PackedRecords: {count} files but per-image arrays of other lengths")
        if any(len(v) != total for v in (boxes, iscrowd, difficult, areas)) or int(starts[-1]) != total:
            raise ValueError(f"PackedRecords: {total} labels but per-box arrays of other lengths")
        self.files, self.widths, self.heights = list(files), list(widths), list(heights)
        self.image_ids, self.starts = list(image_ids), starts
        self.boxes, self.labels, self.iscrowd, self.difficult, self.areas = boxes, labels, iscrowd, difficult, areas

    def __len__(self) -> int:
        return len(self.files)

    @overload
    def __getitem__(self, index: int) -> ImageRecord: ...

    @overload
    def __getitem__(self, index: slice) -> list[ImageRecord]: ...

    def __getitem__(self, index: int | slice) -> ImageRecord | list[ImageRecord]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(f"record {index} of {len(self)}")
        index %= len(self)
        rows = slice(int(self.starts[index]), int(self.starts[index + 1]))
        return ImageRecord(
            file=Path(self.files[index]),
            width=self.widths[index],
            height=self.heights[index],
            image_id=self.image_ids[index],
            boxes=self.boxes[rows].copy(),
            labels=self.labels[rows].copy(),
            iscrowd=self.iscrowd[rows].copy(),
            difficult=self.difficult[rows].copy(),
            areas=self.areas[rows].copy(),
        )


@dataclass(frozen=True)
class RecordSet:
    """The records of one split, with the class names and ids they refer to.

    Attributes:
        records: one ``ImageRecord`` per image kept, in the loader's order (a list, or ``PackedRecords``).
        class_names: ``C`` names; label ``k`` is ``class_names[k]``.
        category_ids: ``C`` source category ids; label ``k`` is category ``category_ids[k]``.
        skipped: messages of the malformed records dropped under ``skip_bad=True``.
    """

    records: Sequence[ImageRecord]
    class_names: list[str]
    category_ids: list[int]
    skipped: tuple[str, ...] = field(default=())

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


class RecordErrors:
    """Raise at the first malformed record, or (``skip_bad``) collect them for one summary warning."""

    def __init__(self, source: Path, skip_bad: bool) -> None:
        self.source = source
        self.skip_bad = skip_bad
        self.messages: list[str] = []

    def __call__(self, message: str) -> None:
        if not self.skip_bad:
            raise ValueError(message)
        self.messages.append(message)

    def summarise(self, shown: int = 3) -> tuple[str, ...]:
        """Emit the summary warning (if anything was dropped) and return all messages."""
        if self.messages:
            first = "; ".join(self.messages[:shown])
            more = f" (and {len(self.messages) - shown} more)" if len(self.messages) > shown else ""
            warnings.warn(
                f"{self.source}: skipped {len(self.messages)} malformed record(s): {first}{more}",
                BadRecordWarning,
                stacklevel=3,
            )
        return tuple(self.messages)


def as_number(value: object) -> float | None:
    """``value`` as a finite float, or ``None`` if it is not a finite real number (bools excluded)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def check_xyxy(
    x1: float, y1: float, x2: float, y2: float, width: int, height: int, tolerance: float
) -> tuple[tuple[float, float, float, float] | None, str | None]:
    """Validate one box against its image; return ``(clipped box, None)`` or ``(None, problem)``."""
    if x2 < x1:
        return None, "has negative width"
    if y2 < y1:
        return None, "has negative height"
    if x2 == x1:
        return None, "has zero width"
    if y2 == y1:
        return None, "has zero height"
    if x1 < -tolerance or y1 < -tolerance or x2 > width + tolerance or y2 > height + tolerance:
        return None, f"lies outside the {width}x{height} image by more than {tolerance:g} px"
    clipped = (max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height)))
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        return None, f"is empty once clipped to the {width}x{height} image"
    return clipped, None


def read_image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` from the image header (the pixels are not decoded), as displayed: EXIF
    orientation applied, as ``balancedet.data.images.read_image`` reads the pixels."""
    return image_size(path)


def find_image(directory: Path, stem: str) -> Path | None:
    """The image ``directory/stem.<ext>`` for the first known extension that exists, else ``None``."""
    for extension in IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS):
        candidate = directory / f"{stem}{extension}"
        if candidate.is_file():
            return candidate
    return None


def make_record(
    file: Path,
    width: int,
    height: int,
    image_id: int,
    boxes: list[tuple[float, float, float, float]],
    labels: list[int],
    iscrowd: list[bool] | None = None,
    difficult: list[bool] | None = None,
    areas: list[float] | None = None,
) -> ImageRecord:
    """Build an ``ImageRecord`` from per-object Python lists (flags default to False, areas to box areas)."""
    count = len(labels)
    box_array = np.asarray(boxes, dtype=np.float32).reshape(count, 4)
    if areas is None:
        area_array = (box_array[:, 2] - box_array[:, 0]) * (box_array[:, 3] - box_array[:, 1])
    else:
        area_array = np.asarray(areas, dtype=np.float32).reshape(count)
    return ImageRecord(
        file=file,
        width=int(width),
        height=int(height),
        image_id=int(image_id),
        boxes=box_array,
        labels=np.asarray(labels, dtype=np.int64).reshape(count),
        iscrowd=np.asarray(iscrowd if iscrowd is not None else [False] * count, dtype=bool).reshape(count),
        difficult=np.asarray(difficult if difficult is not None else [False] * count, dtype=bool).reshape(count),
        areas=area_array.astype(np.float32),
    )
