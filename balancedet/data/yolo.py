"""YOLO txt labels (one ``.txt`` per image, lines ``cls cx cy w h`` normalised to 0..1) as a ``RecordSet``.

- The images are every file with a known image extension under the image folder (recursively),
  sorted by relative path; ``image_id`` is the 1-based position in that order. The label of
  ``images/sub/x.jpg`` is ``labels/sub/x.txt``; a missing label file means an image without objects,
  and label files without an image are ignored (as ultralytics does).
- The image size is read from the image header (PIL opens lazily, the pixels are not decoded).
- ``cls`` indexes ``class_names`` (the data YAML's ``names``); ``category_ids`` are ``1..C``.
- Segment lines (polygons, more than 5 fields) are not supported: they are malformed.

Malformed records (a line without exactly 5 fields, a non-numeric value, a class index that is not
an integer in ``0..C-1``, a negative or zero width or height, a box outside the image by more than
``tolerance`` pixels, an unreadable image) raise ``ValueError`` naming the label file and the line;
with ``skip_bad=True`` a bad line is dropped, an unreadable image is dropped, and one summary
warning is emitted.
"""

from __future__ import annotations

from pathlib import Path

from balancedet.data.records import (
    BOX_TOLERANCE,
    IMAGE_EXTENSIONS,
    RecordErrors,
    RecordSet,
    as_number,
    check_xyxy,
    make_record,
    read_image_size,
)

__all__ = ["load_yolo", "labels_dir_for"]


def labels_dir_for(image_dir: Path) -> Path:
    """Ultralytics' convention: the last ``images`` component of the path replaced by ``labels``."""
    parts = list(image_dir.parts)
    for index in range(len(parts) - 1, -1, -1):
        if parts[index] == "images":
            parts[index] = "labels"
            return Path(*parts)
    raise ValueError(f"{image_dir}: no 'images' folder in the path to derive the labels folder from; name it")


def load_yolo(
    label_dir: Path | str,
    image_dir: Path | str,
    class_names: list[str],
    *,
    skip_bad: bool = False,
    tolerance: float = BOX_TOLERANCE,
) -> RecordSet:
    """Read YOLO txt labels for the images under ``image_dir``.

    Args:
        label_dir: folder of ``.txt`` files mirroring ``image_dir``.
        image_dir: folder of the images (searched recursively).
        class_names: the classes; ``cls`` in a line is the index into this list.
        skip_bad: drop malformed records with one summary warning instead of raising.
        tolerance: pixels a box may lie outside its image (it is clipped) before it is malformed.
    """
    label_dir, image_dir = Path(label_dir), Path(image_dir)
    if not image_dir.is_dir():
        raise ValueError(f"{image_dir}: image folder does not exist")
    if not class_names:
        raise ValueError(f"{label_dir}: YOLO labels need the class names (the data YAML's 'names')")
    num_classes = len(class_names)
    errors = RecordErrors(label_dir, skip_bad)
    images = sorted(p for p in image_dir.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    records = []
    for image_id, path in enumerate(images, start=1):
        label_file = (label_dir / path.relative_to(image_dir)).with_suffix(".txt")
        try:
            width, height = read_image_size(path)
        except OSError as error:
            errors(f"{label_file}: cannot read image {path} ({error})")
            continue
        boxes, labels = [], []
        lines = label_file.read_text(encoding="utf-8").splitlines() if label_file.is_file() else []
        for number, line in enumerate(lines, start=1):
            fields = line.split()
            if not fields:
                continue
            where = f"{label_file}: line {number} {line.strip()!r}"
            if len(fields) != 5:
                errors(f"{where}: expected 5 fields 'cls cx cy w h', got {len(fields)}")
                continue
            values = [as_number(field) for field in fields]
            if any(value is None for value in values):
                errors(f"{where}: has a non-numeric or non-finite value")
                continue
            cls, cx, cy, w, h = values
            if cls != int(cls) or not 0 <= cls < num_classes:
                errors(f"{where}: class index {fields[0]} is not an integer in 0..{num_classes - 1}")
                continue
            cx, w = cx * width, w * width
            cy, h = cy * height, h * height
            box, problem = check_xyxy(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, width, height, tolerance)
            if problem is not None:
                errors(f"{where}: box {problem}")
                continue
            boxes.append(box)
            labels.append(int(cls))
        records.append(make_record(path, width, height, image_id, boxes, labels))
    category_ids = list(range(1, num_classes + 1))
    return RecordSet(records, [str(name) for name in class_names], category_ids, errors.summarise())
