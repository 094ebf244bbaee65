"""Pascal VOC xml annotations (one ``.xml`` per image) as a ``RecordSet``.

- The images read are those of the optional image-set list (``ImageSets/Main/train.txt``: one stem
  per line, extra columns ignored), else every ``*.xml`` in the folder, sorted by name; ``image_id``
  is the 1-based position in that order.
- The image is ``<filename>`` in the image folder, or ``<stem>.<ext>`` for a known extension when
  the xml has no ``<filename>``. ``<size>`` missing or zero is read from the image header.
- VOC pixel coordinates are 1-based and inclusive (``1..W``); with ``one_based=True`` (the default,
  as in detectron2) a box becomes ``xmin - 1, ymin - 1, xmax, ymax`` in pixel-edge coordinates
  ``0..W``. Pass ``one_based=False`` for files written with 0-based edge coordinates.
- Class names come from ``class_names`` (the data YAML's ``names``; an unknown name is malformed),
  else they are collected from every xml of the folder (not only the image set's, so that splits
  sharing ``Annotations/`` agree) and sorted. ``category_ids`` are ``1..C``.
- ``<difficult>1</difficult>`` objects are kept with ``ImageRecord.difficult`` set: ignore regions in
  training and crowd regions in the COCO-protocol ground truth (never counted as missed), as VOC's
  own evaluation ignores them.

Malformed records (unparsable xml, missing image, an object without a name or a ``bndbox``,
non-numeric, negative, zero-size or out-of-image coordinates, an unknown class) raise ``ValueError``
naming the xml file and the object; with ``skip_bad=True`` a bad file is dropped, a bad object alone
is dropped, and one summary warning is emitted.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from balancedet.data.records import (
    BOX_TOLERANCE,
    RecordErrors,
    RecordSet,
    as_number,
    check_xyxy,
    find_image,
    make_record,
    read_image_size,
)

__all__ = ["collect_voc_names", "load_voc"]

_COORDINATES = ("xmin", "ymin", "xmax", "ymax")


def _text(element: ET.Element | None, tag: str) -> str | None:
    child = element.find(tag) if element is not None else None
    return child.text.strip() if child is not None and child.text is not None else None


def _xml_files(annotation_dir: Path, image_set: Path | None) -> list[Path]:
    if not annotation_dir.is_dir():
        raise ValueError(f"{annotation_dir}: annotation folder does not exist")
    if image_set is None:
        return sorted(annotation_dir.glob("*.xml"))
    try:
        lines = Path(image_set).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ValueError(f"{image_set}: image-set list not found") from None
    return [annotation_dir / f"{line.split()[0]}.xml" for line in lines if line.strip()]


def collect_voc_names(annotation_dirs: list[Path]) -> list[str]:
    """The sorted object names of every ``*.xml`` in the folders (unparsable files are left to the loader)."""
    names: set[str] = set()
    for folder in annotation_dirs:
        for xml_file in sorted(Path(folder).glob("*.xml")):
            try:
                root = ET.parse(xml_file).getroot()
            except ET.ParseError:
                continue
            names.update(name for obj in root.iter("object") if (name := _text(obj, "name")))
    return sorted(names)


def load_voc(
    annotation_dir: Path | str,
    image_dir: Path | str,
    *,
    image_set: Path | str | None = None,
    class_names: list[str] | None = None,
    one_based: bool = True,
    skip_bad: bool = False,
    tolerance: float = BOX_TOLERANCE,
) -> RecordSet:
    """Read a folder of Pascal VOC xml files.

    Args:
        annotation_dir: folder of ``.xml`` files (``Annotations/``).
        image_dir: folder of the images (``JPEGImages/``).
        image_set: optional list of stems to read, one per line.
        class_names: the classes, label ``k`` = ``class_names[k]``; ``None``: ``collect_voc_names([annotation_dir])``.
        one_based: coordinates are VOC's 1-based inclusive pixels (``xmin - 1``, ``ymin - 1`` applied).
        skip_bad: drop malformed records with one summary warning instead of raising.
        tolerance: pixels a box may lie outside its image (it is clipped) before it is malformed.
    """
    annotation_dir, image_dir = Path(annotation_dir), Path(image_dir)
    errors = RecordErrors(annotation_dir, skip_bad)
    parsed: list[tuple[int, Path, ET.Element]] = []
    files = _xml_files(annotation_dir, None if image_set is None else Path(image_set))
    for image_id, xml_file in enumerate(files, start=1):
        try:
            parsed.append((image_id, xml_file, ET.parse(xml_file).getroot()))
        except FileNotFoundError:
            errors(f"{xml_file}: annotation file not found")
        except ET.ParseError as error:
            errors(f"{xml_file}: not valid XML ({error})")

    class_names = collect_voc_names([annotation_dir]) if class_names is None else [str(n) for n in class_names]
    label_of = {name: label for label, name in enumerate(class_names)}

    records = []
    for image_id, xml_file, root in parsed:
        filename = _text(root, "filename")
        path = image_dir / filename if filename else find_image(image_dir, xml_file.stem)
        if path is None or not path.is_file():
            errors(f"{xml_file}: image {path or image_dir / (xml_file.stem + '.*')} not found")
            continue
        size = root.find("size")
        width, height = as_number(_text(size, "width")), as_number(_text(size, "height"))
        if not width or not height:
            try:
                width, height = read_image_size(path)
            except OSError as error:
                errors(f"{xml_file}: cannot read image {path} ({error})")
                continue
        width, height = int(width), int(height)
        boxes, labels, difficult = [], [], []
        for index, obj in enumerate(root.iter("object")):
            name = _text(obj, "name")
            where = f"{xml_file}: object {index} ({name!r})"
            if not name:
                errors(f"{where}: missing <name>")
                continue
            if name not in label_of:
                errors(f"{where}: unknown class {name!r} (known: {', '.join(class_names)})")
                continue
            bndbox = obj.find("bndbox")
            if bndbox is None:
                errors(f"{where}: missing <bndbox>")
                continue
            raw = [_text(bndbox, tag) for tag in _COORDINATES]
            numbers = [as_number(value) for value in raw]
            shown = "(" + ", ".join(str(value) for value in raw) + ")"
            if any(value is None for value in numbers):
                errors(f"{where}: bndbox (xmin, ymin, xmax, ymax) = {shown} has a missing or non-numeric value")
                continue
            x1, y1, x2, y2 = numbers
            offset = 1.0 if one_based else 0.0
            box, problem = check_xyxy(x1 - offset, y1 - offset, x2, y2, width, height, tolerance)
            if problem is not None:
                errors(f"{where}: bndbox (xmin, ymin, xmax, ymax) = {shown} {problem}")
                continue
            flag = _text(obj, "difficult")
            boxes.append(box)
            labels.append(label_of[name])
            difficult.append(flag is not None and as_number(flag) == 1.0)
        records.append(make_record(path, width, height, image_id, boxes, labels, difficult=difficult))
    category_ids = list(range(1, len(class_names) + 1))
    return RecordSet(records, class_names, category_ids, errors.summarise())
