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
"""

from __future__ import annotations

import json
from pathlib import Path

from balancedet.data.records import (
    BOX_TOLERANCE,
    RecordErrors,
    RecordSet,
    as_number,
    check_xyxy,
    make_record,
    read_image_size,
)

__all__ = ["load_coco"]


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
    """
    file = Path(annotation_file)
    image_dir = Path(image_dir)
    try:
        with open(file, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise ValueError(f"{file}: annotation file not found") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{file}: not valid JSON ({error})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{file}: missing or malformed 'images' list")
    annotations = data.get("annotations", [])
    if not isinstance(annotations, list):
        raise ValueError(f"{file}: 'annotations' is not a list")
    if not image_dir.is_dir():
        raise ValueError(f"{file}: image folder {image_dir} does not exist")
    category_ids, class_names = _category_table(data, file)
    label_of = {category_id: label for label, category_id in enumerate(category_ids)}
    errors = RecordErrors(file, skip_bad)

    images: dict[int, dict] = {}
    dropped_images: set[int] = set()
    for index, entry in enumerate(data["images"]):
        image_id = entry.get("id") if isinstance(entry, dict) else None
        if isinstance(image_id, bool) or not isinstance(image_id, int):
            errors(f"{file}: image #{index} {entry!r} has no integer 'id'")
            continue
        where = f"{file}: image id {image_id}"
        name = entry.get("file_name")
        if image_id in images or image_id in dropped_images:
            errors(f"{where}: duplicate image id")
            dropped_images.add(image_id)
            images.pop(image_id, None)
            continue
        if not isinstance(name, str) or not name:
            errors(f"{where}: missing 'file_name'")
            dropped_images.add(image_id)
            continue
        path = image_dir / name
        if not path.is_file():
            errors(f"{where}: image file {path} not found")
            dropped_images.add(image_id)
            continue
        width, height = entry.get("width"), entry.get("height")
        if width is None or height is None:
            try:
                width, height = read_image_size(path)
            except OSError as error:
                errors(f"{where}: cannot read image {path} ({error})")
                dropped_images.add(image_id)
                continue
        width_number, height_number = as_number(width), as_number(height)
        if width_number is None or height_number is None or width_number < 1 or height_number < 1:
            errors(f"{where}: bad size width={width!r} height={height!r}")
            dropped_images.add(image_id)
            continue
        images[image_id] = {
            "file": path,
            "width": int(width_number),
            "height": int(height_number),
            "boxes": [],
            "labels": [],
            "iscrowd": [],
            "areas": [],
        }

    for index, annotation in enumerate(annotations):
        if not isinstance(annotation, dict):
            errors(f"{file}: annotation #{index} is not an object")
            continue
        annotation_id = annotation.get("id", f"#{index}")
        image_id = annotation.get("image_id")
        where = f"{file}: annotation id {annotation_id} (image id {image_id})"
        if image_id in dropped_images:
            continue
        image = images.get(image_id)
        if image is None:
            errors(f"{where}: unknown image id")
            continue
        category_id = annotation.get("category_id")
        if category_id not in label_of or isinstance(category_id, bool):
            errors(f"{where}: unknown category id {category_id!r}")
            continue
        raw = annotation.get("bbox")
        shown = json.dumps(raw)
        if not isinstance(raw, list) or len(raw) != 4:
            errors(f"{where}: bbox {shown} is not a list of 4 numbers [x, y, w, h]")
            continue
        numbers = [as_number(v) for v in raw]
        if any(v is None for v in numbers):
            errors(f"{where}: bbox {shown} has a non-numeric or non-finite value")
            continue
        x, y, w, h = numbers
        box, problem = check_xyxy(x, y, x + w, y + h, image["width"], image["height"], tolerance)
        if problem is not None:
            errors(f"{where}: bbox {shown} {problem}")
            continue
        crowd = annotation.get("iscrowd", 0)
        if crowd not in (0, 1):
            errors(f"{where}: iscrowd {crowd!r} is not 0 or 1")
            continue
        area = as_number(annotation.get("area"))
        image["boxes"].append(box)
        image["labels"].append(label_of[category_id])
        image["iscrowd"].append(bool(crowd))
        image["areas"].append(area if area is not None and area >= 0 else w * h)

    records = [
        make_record(
            image["file"],
            image["width"],
            image["height"],
            image_id,
            image["boxes"],
            image["labels"],
            iscrowd=image["iscrowd"],
            areas=image["areas"],
        )
        for image_id, image in images.items()
    ]
    return RecordSet(records, class_names, category_ids, errors.summarise())
