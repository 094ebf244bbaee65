"""COCO json annotations (``images``, ``annotations``, ``categories``) as a ``RecordSet``.

- Categories may have any integer ids (COCO's 1..90 with gaps); sorted by id they become the
  contiguous labels ``0..C-1``, and ``RecordSet.category_ids`` maps them back. Categories without
  any box are kept.
- ``bbox`` is ``[x, y, w, h]`` in pixels; it becomes ``x1, y1, x2, y2``, clipped to the image when it
  sticks out by at most ``tolerance`` pixels.
- ``iscrowd=1`` boxes are kept as ignore regions (``ImageRecord.iscrowd``): they are not training
  targets (``DetectionDataset`` passes them as ``ignore_boxes``), and the ground truth for evaluation
  keeps them as crowd regions, exactly as the COCO protocol wants.
- Images without annotations are legal; a file without an ``annotations`` list (an image-info test
  file) loads as images without boxes.
- ``width``/``height`` missing from an image entry are read from the image header.

Malformed records (missing image file, duplicate image id, unknown image or category id, a bbox
that is not four finite numbers, has a negative or zero width or height, or lies outside the image)
raise ``ValueError`` naming the json file and the record, e.g.
``annotations.json: annotation id 17 (image id 5): bbox [1, 2, -3, 4] has negative width``;
with ``skip_bad=True`` they are dropped (an image with a bad entry is dropped with its boxes; a bad
annotation alone is dropped) and summarised in one warning.

Large files (COCO's 118k training images, 860k boxes) load as columns, not objects: the json is
read a block at a time and its ``annotations`` parsed one element at a time (by ``json``'s own
scanner) into numpy columns, so the text of a 100k-image file (160 MB) and its parsed objects
(1 GB) are never held whole. The columns are checked in a few vectorised passes and grouped by
image with one stable sort; each ``ImageRecord`` is made when it is read (``PackedRecords``). An
annotation that the vectorised checks do not pass as plainly valid (a wrong type, an unknown id, a
box with a problem) goes through the per-record check, so its message, or its acceptance (e.g. a
number given as a string), is that of the one-by-one check.
"""

from __future__ import annotations

import gc
import json
import math
import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain, islice
from json.scanner import make_scanner
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from balancedet.data.records import (
    BOX_TOLERANCE,
    PackedRecords,
    RecordErrors,
    RecordSet,
    as_number,
    check_xyxy,
    read_image_size,
)

__all__ = ["load_coco"]

#: Annotations parsed into objects at a time before they become columns (bounds the objects alive).
CHUNK = 8192
#: Characters of the json read at a time.
BLOCK = 1 << 22
#: Characters that must follow a parsed value in the text read for the value to be whole: a number
#: cut at the end of a block (``1e`` of ``1e5``) parses as a shorter number.
LOOKAHEAD = 64
#: Images of one folder checked with one ``stat`` each; from the next on, the folder is listed once.
STAT_LIMIT = 32

_WHITESPACE = re.compile(r"[ \t\n\r]*")
_SPACE = frozenset(" \t\n\r")
_INT64 = (-(2**63), 2**63 - 1)
_EXACT = 2**53  # integers up to this magnitude survive a round trip through float64
_ABSENT = object()


def _category_table(data: dict, file: Path) -> tuple[list[int], list[str]]:
    categories = data.get("categories")
    if not isinstance(categories, list):
        raise ValueError(f"{file}: missing or malformed 'categories' list")
    table: dict[int, str] = {}
    for index, category in enumerate(categories):
        category_id = category.get("id") if isinstance(category, dict) else None
        if isinstance(category_id, bool) or not isinstance(category_id, int):
            raise ValueError(f"{file}: category #{index} {category!r} has no integer 'id'")
        if category_id in table:
            raise ValueError(f"{file}: category id {category_id} appears twice")
        table[category_id] = str(category.get("name", category_id))
    ids = sorted(table)
    return ids, [table[i] for i in ids]


@dataclass
class _Annotations:
    """The top-level ``annotations`` array as columns; row ``k`` is the array's ``k``-th element.

    Row ``k`` is *plain* when the element is an object whose ``id`` (or its absence), ``image_id``
    and ``category_id`` are JSON integers, ``iscrowd`` 0 or 1 (or absent), ``bbox`` four JSON
    numbers (integers exactly representable as floats) and ``area`` a number (or absent): the
    columns then hold all that the per-record check reads, and ``element(k)`` rebuilds the object.
    The other elements are kept as parsed in ``raw`` (placeholders in the columns).
    """

    plain: np.ndarray
    ids: np.ndarray
    has_id: np.ndarray
    image_ids: np.ndarray
    category_ids: np.ndarray
    xywh: np.ndarray
    integral: np.ndarray
    iscrowd: np.ndarray
    areas: np.ndarray
    raw: dict[int, Any]

    def __len__(self) -> int:
        return len(self.plain)

    def element(self, index: int) -> Any:
        """Element ``index`` as ``json`` parsed it (a plain one rebuilt from the columns)."""
        if index in self.raw:
            return self.raw[index]
        values = self.xywh[index].tolist()
        area = float(self.areas[index])
        element = {
            "image_id": int(self.image_ids[index]),
            "category_id": int(self.category_ids[index]),
            "bbox": [int(v) if exact else v for v, exact in zip(values, self.integral[index].tolist(), strict=True)],
            "iscrowd": int(self.iscrowd[index]),
            "area": None if math.isnan(area) else area,
        }
        if self.has_id[index]:
            element["id"] = int(self.ids[index])
        return element


def _int_column(values: list) -> tuple[np.ndarray, np.ndarray]:
    """``(int64 values, plain)``: plain where a value is a JSON integer that fits int64 (bools excluded)."""
    if set(map(type, values)) <= {int}:
        try:
            return np.array(values, dtype=np.int64), np.ones(len(values), dtype=bool)
        except OverflowError:
            pass
    plain = np.array([type(v) is int and _INT64[0] <= v <= _INT64[1] for v in values], dtype=bool)
    column = np.array([v if ok else 0 for v, ok in zip(values, plain.tolist(), strict=True)], dtype=np.int64)
    return column, plain


def _exact_number(value: object) -> bool:
    return type(value) is float or (type(value) is int and abs(value) <= _EXACT)


def _box_column(values: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``((n, 4) float64 [x, y, w, h], (n, 4) integral, plain)``: plain where a value is a list of four
    JSON numbers, its integers at most 2**53 in magnitude."""
    count = len(values)
    if set(map(type, values)) <= {list} and set(map(len, values)) <= {4}:
        flat = list(chain.from_iterable(values))
        if set(map(type, flat)) <= {int, float}:
            try:
                column = np.array(flat, dtype=np.float64).reshape(count, 4)
            except OverflowError:
                column = None
            if column is not None:
                integral = np.fromiter(map(int.__instancecheck__, flat), dtype=bool, count=4 * count).reshape(count, 4)
                plain = ~(integral & (np.abs(column) > _EXACT)).any(axis=1)
                return column, integral, plain
    plain = np.array(
        [type(box) is list and len(box) == 4 and all(map(_exact_number, box)) for box in values], dtype=bool
    )
    boxes = [box if ok else [0.0] * 4 for box, ok in zip(values, plain.tolist(), strict=True)]
    integral = np.array([[type(v) is int for v in box] for box in boxes], dtype=bool).reshape(count, 4)
    return np.array(boxes, dtype=np.float64).reshape(count, 4), integral, plain


def _area_column(values: list) -> tuple[np.ndarray, np.ndarray]:
    """``(float64 areas, NaN where absent, plain)``: plain where a value is a JSON number or absent."""
    if set(map(type, values)) <= {int, float}:
        try:
            return np.array(values, dtype=np.float64), np.ones(len(values), dtype=bool)
        except OverflowError:
            pass
    plain = np.array([v is None or _exact_number(v) for v in values], dtype=bool)
    numbers = [math.nan if v is None or not ok else v for v, ok in zip(values, plain.tolist(), strict=True)]
    return np.array(numbers, dtype=np.float64), plain


def _columns(chunk: list, start: int) -> tuple[list[np.ndarray], dict[int, Any]]:
    """The columns of ``_Annotations`` of parsed elements, the first being element ``start``, and the
    elements that are not plain."""
    objects = [a if type(a) is dict else {} for a in chunk]
    plain = np.array([type(a) is dict for a in chunk], dtype=bool)
    given_ids = [a.get("id", _ABSENT) for a in objects]
    has_id = np.array([v is not _ABSENT for v in given_ids], dtype=bool)
    ids, ok_id = _int_column([0 if v is _ABSENT else v for v in given_ids])
    image_ids, ok_image = _int_column([a.get("image_id") for a in objects])
    category_ids, ok_category = _int_column([a.get("category_id") for a in objects])
    xywh, integral, ok_box = _box_column([a.get("bbox") for a in objects])
    crowd, ok_crowd = _int_column([a.get("iscrowd", 0) for a in objects])
    areas, ok_area = _area_column([a.get("area") for a in objects])
    plain &= ok_id & ok_image & ok_category & ok_box & ok_crowd & ok_area & ((crowd == 0) | (crowd == 1))
    raw = {start + k: chunk[k] for k in np.flatnonzero(~plain).tolist()}
    return [plain, ids, has_id, image_ids, category_ids, xywh, integral, crowd.astype(bool), areas], raw


def _annotation_table(elements: Iterable[Any]) -> _Annotations:
    """``_Annotations`` of the elements, ``CHUNK`` parsed objects at a time."""
    elements = iter(elements)
    parts, raw = [], {}
    while True:
        chunk = list(islice(elements, CHUNK))
        columns, odd = _columns(chunk, CHUNK * len(parts))
        parts.append(columns)
        raw.update(odd)
        if len(chunk) < CHUNK:
            break
    return _Annotations(*[np.concatenate([part[i] for part in parts]) for i in range(len(parts[0]))], raw)


class _Reader:
    """The json text read ``BLOCK`` characters at a time: ``value()`` parses the value at ``pos`` with
    ``json``'s own scanner, reading on when the value may run past the text read."""

    def __init__(self, handle: TextIO) -> None:
        self.handle = handle
        self.scan = make_scanner(json.JSONDecoder())
        self.text, self.pos, self.end = "", 0, False

    def read(self, size: int = BLOCK) -> bool:
        """Drop the text before ``pos`` and read ``size`` more characters; ``False`` at the end of the file."""
        if self.end:
            return False
        block = self.handle.read(size)
        self.text, self.pos = self.text[self.pos :] + block, 0
        self.end = len(block) < size
        return True

    def peek(self) -> str:
        """The next character that is not whitespace (``pos`` moves to it), ``""`` at the end."""
        while True:
            self.pos = _WHITESPACE.match(self.text, self.pos).end()
            if self.pos < len(self.text) or not self.read():
                return self.text[self.pos : self.pos + 1]

    def expect(self, character: str, message: str) -> None:
        if self.peek() != character:
            raise json.JSONDecodeError(message, self.text, self.pos)
        self.pos += 1

    def value(self) -> Any:
        self.peek()
        size = BLOCK
        while True:
            try:
                value, end = self.scan(self.text, self.pos)
                if end + LOOKAHEAD <= len(self.text) or self.end:
                    self.pos = end
                    return value
            except (StopIteration, json.JSONDecodeError):
                if self.end:
                    raise json.JSONDecodeError("Expecting value", self.text, self.pos) from None
            self.read(size)
            size *= 2  # a long value is read in O(its length), not parsed again for every block

    def elements(self) -> Iterator[Any]:
        """The elements of the array at ``pos``, parsed one at a time."""
        self.expect("[", "Expecting '['")
        if self.peek() == "]":
            self.pos += 1
            return
        scan, skip = self.scan, _WHITESPACE.match
        while True:
            # inline, what value() and peek() do, where the element and its separator lie well
            # inside the text read: their calls took a third of the parse's time
            text, pos = self.text, self.pos
            try:
                value, pos = scan(text, pos)
            except (StopIteration, json.JSONDecodeError):
                pos = -1
            if pos < 0 or (pos + LOOKAHEAD > len(text) and not self.end):
                value = self.value()
                text, pos = self.text, self.pos
            self.pos = pos
            yield value
            separator = text[pos : pos + 1]
            if separator not in (",", "]"):
                separator = self.peek()
                text, pos = self.text, self.pos
            pos += 1
            if text[pos : pos + 1] in _SPACE:
                pos = skip(text, pos).end()
            self.pos = pos
            if separator == "]":
                return
            if separator != ",":
                raise json.JSONDecodeError("Expecting ',' delimiter", text, pos - 1)


def _read_object(reader: _Reader) -> dict[str, Any] | None:
    """The top-level object, its ``annotations`` as ``_Annotations``; ``None`` if the text is not an object.

    Raises ``json.JSONDecodeError`` where the text is not valid JSON (with a message of its own).
    """
    if reader.peek() != "{":
        return None
    reader.pos += 1
    data: dict[str, Any] = {}
    if reader.peek() == "}":
        reader.pos += 1
    else:
        while True:
            if reader.peek() != '"':
                raise json.JSONDecodeError("Expecting property name", reader.text, reader.pos)
            key = reader.value()
            reader.expect(":", "Expecting ':' delimiter")
            array = reader.peek() == "["
            if key == "annotations" and array:
                data[key] = _annotation_table(reader.elements())
            elif key == "images" and array:
                data[key] = list(reader.elements())
            else:
                data[key] = reader.value()
            separator = reader.peek()
            reader.pos += 1
            if separator == "}":
                break
            if separator != ",":
                raise json.JSONDecodeError("Expecting ',' delimiter", reader.text, reader.pos - 1)
    if reader.peek() != "":
        raise json.JSONDecodeError("Extra data", reader.text, reader.pos)
    return data


@contextmanager
def _without_cycle_collection() -> Iterator[None]:
    """Pause Python's cycle collector: each of its full passes walks every object still alive, and
    those passes made parsing a 100k-image file take 9 s instead of 4.5 s. Parsed JSON holds no
    cycles; reference counting frees it as usual."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _read_json(file: Path) -> Any:
    """The parsed json file, its ``annotations`` (if an array) as ``_Annotations``.

    A top-level object is parsed a block of text and an element at a time; anything else, or a file
    that is not valid JSON (to report ``json``'s own message), by ``json.loads``.
    """
    try:
        with open(file, encoding="utf-8") as handle, _without_cycle_collection():
            data = _read_object(_Reader(handle))
        if data is not None:
            return data
    except FileNotFoundError:
        raise ValueError(f"{file}: annotation file not found") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{file}: not valid JSON ({error})") from None
    except json.JSONDecodeError:
        pass
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{file}: not valid JSON ({error})") from None
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        data["annotations"] = _annotation_table(data["annotations"])
    return data


class _ImageFiles:
    """``Path(path).is_file()`` for many paths: a folder holding more than ``STAT_LIMIT`` of them is
    listed once (one ``scandir`` instead of 100,000 ``stat`` calls), the others are checked one by
    one. Paths are strings: 100,000 ``Path`` objects take a second and ~30 MB."""

    def __init__(self, image_dir: Path) -> None:
        self.root = str(image_dir)
        self.checked: dict[str, int] = {}
        self.listings: dict[str, set[str]] = {}

    def path(self, name: str) -> str:
        return os.path.join(self.root, name)

    def exists(self, path: str) -> bool:
        folder, base = os.path.split(path)
        if base in ("", ".", "..") or (os.altsep and os.altsep in base):
            return Path(path).is_file()  # pathlib's reading of an odd name
        listing = self.listings.get(folder)
        if listing is None:
            self.checked[folder] = self.checked.get(folder, 0) + 1
            if self.checked[folder] <= STAT_LIMIT:
                return Path(path).is_file()
            try:
                with os.scandir(folder or ".") as entries:
                    listing = {entry.name for entry in entries if entry.is_file()}
            except OSError:
                listing = set()
            self.listings[folder] = listing
        return base in listing


@dataclass
class _Images:
    """The kept images in the json's order (``row_of``: image id -> row), and the dropped ids."""

    files: list[str]
    widths: list[int]
    heights: list[int]
    ids: list[int]
    row_of: dict[int, int]
    dropped: set[int]


def _read_images(entries: list, file: Path, image_dir: Path, errors: RecordErrors) -> _Images:
    images = _Images([], [], [], [], {}, set())
    files = _ImageFiles(image_dir)
    duplicates: set[int] = set()
    for index, entry in enumerate(entries):
        image_id = entry.get("id") if isinstance(entry, dict) else None
        if isinstance(image_id, bool) or not isinstance(image_id, int):
            errors(f"{file}: image #{index} {entry!r} has no integer 'id'")
            continue
        where = f"{file}: image id {image_id}"
        name = entry.get("file_name")
        if image_id in images.row_of or image_id in images.dropped:
            errors(f"{where}: duplicate image id")
            images.dropped.add(image_id)
            if image_id in images.row_of:
                duplicates.add(images.row_of.pop(image_id))
            continue
        if not isinstance(name, str) or not name:
            errors(f"{where}: missing 'file_name'")
            images.dropped.add(image_id)
            continue
        path = files.path(name)
        if not files.exists(path):
            errors(f"{where}: image file {Path(path)} not found")
            images.dropped.add(image_id)
            continue
        width, height = entry.get("width"), entry.get("height")
        if width is None or height is None:
            try:
                width, height = read_image_size(Path(path))
            except OSError as error:
                errors(f"{where}: cannot read image {Path(path)} ({error})")
                images.dropped.add(image_id)
                continue
        width_number, height_number = as_number(width), as_number(height)
        if width_number is None or height_number is None or width_number < 1 or height_number < 1:
            errors(f"{where}: bad size width={width!r} height={height!r}")
            images.dropped.add(image_id)
            continue
        images.row_of[image_id] = len(images.ids)
        images.files.append(path)
        images.widths.append(int(width_number))
        images.heights.append(int(height_number))
        images.ids.append(image_id)
    if duplicates:  # an image whose id comes again later is dropped with its first entry
        keep = [row for row in range(len(images.ids)) if row not in duplicates]
        images.files = [images.files[row] for row in keep]
        images.widths = [images.widths[row] for row in keep]
        images.heights = [images.heights[row] for row in keep]
        images.ids = [images.ids[row] for row in keep]
        images.row_of = {image_id: row for row, image_id in enumerate(images.ids)}
    return images


def _check_annotation(
    annotation: Any,
    index: int,
    file: Path,
    images: _Images,
    label_of: dict[int, int],
    tolerance: float,
    errors: RecordErrors,
) -> tuple[int, tuple[float, float, float, float], int, bool, float] | None:
    """One annotation checked alone: ``(image row, clipped box, label, crowd, area)``, or ``None``
    when it is dropped (reported to ``errors``, or silently with its dropped image)."""
    if not isinstance(annotation, dict):
        errors(f"{file}: annotation #{index} is not an object")
        return None
    annotation_id = annotation.get("id", f"#{index}")
    image_id = annotation.get("image_id")
    where = f"{file}: annotation id {annotation_id} (image id {image_id})"
    if image_id in images.dropped:
        return None
    row = images.row_of.get(image_id)
    if row is None:
        errors(f"{where}: unknown image id")
        return None
    category_id = annotation.get("category_id")
    if category_id not in label_of or isinstance(category_id, bool):
        errors(f"{where}: unknown category id {category_id!r}")
        return None
    raw = annotation.get("bbox")
    shown = json.dumps(raw)
    if not isinstance(raw, list) or len(raw) != 4:
        errors(f"{where}: bbox {shown} is not a list of 4 numbers [x, y, w, h]")
        return None
    numbers = [as_number(v) for v in raw]
    if any(v is None for v in numbers):
        errors(f"{where}: bbox {shown} has a non-numeric or non-finite value")
        return None
    x, y, w, h = numbers
    box, problem = check_xyxy(x, y, x + w, y + h, images.widths[row], images.heights[row], tolerance)
    if problem is not None:
        errors(f"{where}: bbox {shown} {problem}")
        return None
    crowd = annotation.get("iscrowd", 0)
    if crowd not in (0, 1):
        errors(f"{where}: iscrowd {crowd!r} is not 0 or 1")
        return None
    area = as_number(annotation.get("area"))
    return row, box, label_of[category_id], bool(crowd), area if area is not None and area >= 0 else w * h


def _annotation_rows(
    annotations: _Annotations,
    file: Path,
    images: _Images,
    category_ids: list[int],
    tolerance: float,
    errors: RecordErrors,
) -> tuple[np.ndarray, ...]:
    """``(image row, clipped xyxy float64, label, crowd, area float64)`` of the kept annotations, in
    the json's order: the plainly valid ones in vectorised passes, the others one by one."""
    label_of = {category_id: label for label, category_id in enumerate(category_ids)}
    rows = np.array([images.row_of.get(i, -1) for i in annotations.image_ids.tolist()], dtype=np.int64)
    labels = np.array([label_of.get(i, -1) for i in annotations.category_ids.tolist()], dtype=np.int64)
    # row -1 (an unknown image) reads the size 0 x 0 appended here, and fails the checks below
    width = np.array([*images.widths, 0], dtype=np.float64)[rows]
    height = np.array([*images.heights, 0], dtype=np.float64)[rows]
    x1, y1, w, h = annotations.xywh.T
    x2, y2 = x1 + w, y1 + h
    clipped = np.stack(
        [np.maximum(x1, 0.0), np.maximum(y1, 0.0), np.minimum(x2, width), np.minimum(y2, height)], axis=1
    )
    with np.errstate(invalid="ignore"):  # a NaN or an infinity fails the checks, as it should
        good = (
            annotations.plain
            & (rows >= 0)
            & (labels >= 0)
            & np.isfinite(annotations.xywh).all(axis=1)
            & (x2 > x1)
            & (y2 > y1)
            & (x1 >= -tolerance)
            & (y1 >= -tolerance)
            & (x2 <= width + tolerance)
            & (y2 <= height + tolerance)
            & (clipped[:, 2] > clipped[:, 0])
            & (clipped[:, 3] > clipped[:, 1])
        )
        areas = np.where(np.isfinite(annotations.areas) & (annotations.areas >= 0), annotations.areas, w * h)
    crowd = annotations.iscrowd.copy()
    for index in np.flatnonzero(~good).tolist():
        checked = _check_annotation(annotations.element(index), index, file, images, label_of, tolerance, errors)
        if checked is not None:
            rows[index], clipped[index], labels[index], crowd[index], areas[index] = checked
            good[index] = True
    return rows[good], clipped[good], labels[good], crowd[good], areas[good]


def load_coco(
    annotation_file: Path | str,
    image_dir: Path | str,
    *,
    skip_bad: bool = False,
    tolerance: float = BOX_TOLERANCE,
) -> RecordSet:
    """Read a COCO detection json whose ``file_name`` entries are relative to ``image_dir``.

    Args:
        annotation_file: the json file.
        image_dir: folder the images' ``file_name`` is relative to.
        skip_bad: drop malformed records with one summary warning instead of raising.
        tolerance: pixels a box may lie outside its image (it is clipped) before it is malformed.

    Returns:
        ``RecordSet`` in the json's image order; ``image_id`` and ``category_ids`` are the json's own.
        Its ``records`` are a ``PackedRecords``: each ``ImageRecord`` is made when it is read.
    """
    file = Path(annotation_file)
    image_dir = Path(image_dir)
    data = _read_json(file)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{file}: missing or malformed 'images' list")
    annotations = data.get("annotations", _ABSENT)
    if annotations is _ABSENT:  # an image-info file
        annotations = _annotation_table([])
    if not isinstance(annotations, _Annotations):
        raise ValueError(f"{file}: 'annotations' is not a list")
    if not image_dir.is_dir():
        raise ValueError(f"{file}: image folder {image_dir} does not exist")
    category_ids, class_names = _category_table(data, file)
    errors = RecordErrors(file, skip_bad)
    images = _read_images(data.pop("images"), file, image_dir, errors)
    rows, boxes, labels, crowd, areas = _annotation_rows(annotations, file, images, category_ids, tolerance, errors)
    del data, annotations
    # one stable sort groups the boxes by image and keeps the json's order within each image
    order = np.argsort(rows, kind="stable")
    counts = np.bincount(rows, minlength=len(images.ids))
    records = PackedRecords(
        files=images.files,
        widths=images.widths,
        heights=images.heights,
        image_ids=images.ids,
        starts=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        boxes=boxes[order].astype(np.float32),
        labels=labels[order].astype(np.int64),
        iscrowd=crowd[order],
        difficult=np.zeros(len(order), dtype=bool),
        areas=areas[order].astype(np.float32),
    )
    return RecordSet(records, class_names, category_ids, errors.summarise())
