"""One small scene written as COCO json, Pascal VOC xml and YOLO txt, for the loader tests."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

CLASS_NAMES = ["cat", "dog"]
COCO_CATEGORY_IDS = [3, 7]
# file name, width, height
IMAGES = [("a.png", 64, 48), ("b.png", 40, 50), ("c.png", 30, 30)]
# per image: (x1, y1, x2, y2) in pixels and the contiguous label; c.png has no object
OBJECTS = {
    "a.png": [((2, 3, 20, 30), 0), ((30, 10, 60, 40), 1)],
    "b.png": [((5, 5, 35, 45), 1)],
    "c.png": [],
}


def write_images(root: Path) -> Path:
    folder = root / "images"
    folder.mkdir(parents=True, exist_ok=True)
    for index, (name, width, height) in enumerate(IMAGES):
        Image.new("RGB", (width, height), (40 * index, 90, 160)).save(folder / name)
    return folder


def coco_dict() -> dict:
    images = [{"id": 10 * (k + 1), "file_name": name, "width": w, "height": h} for k, (name, w, h) in enumerate(IMAGES)]
    annotations = []
    for k, (name, _, _) in enumerate(IMAGES):
        for (x1, y1, x2, y2), label in OBJECTS[name]:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": 10 * (k + 1),
                    "category_id": COCO_CATEGORY_IDS[label],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i, "name": n} for i, n in zip(COCO_CATEGORY_IDS, CLASS_NAMES, strict=True)]
    return {"images": images, "annotations": annotations, "categories": categories}


def write_coco(root: Path, data: dict | None = None) -> tuple[Path, Path]:
    images = write_images(root)
    file = root / "annotations.json"
    file.write_text(json.dumps(coco_dict() if data is None else data))
    return file, images


def voc_xml(name: str, width: int, height: int, objects: list[tuple[tuple, str]], difficult: bool = False) -> str:
    parts = [f"<annotation><filename>{name}</filename>"]
    parts.append(f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>")
    for (x1, y1, x2, y2), label in objects:
        parts.append(
            f"<object><name>{label}</name><difficult>{int(difficult)}</difficult>"
            f"<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
        )
    return "".join(parts) + "</annotation>"


def write_voc(root: Path) -> tuple[Path, Path]:
    images = write_images(root)
    folder = root / "Annotations"
    folder.mkdir(parents=True, exist_ok=True)
    for name, width, height in IMAGES:
        # VOC pixels are 1-based and inclusive: the edge x1 is pixel x1 + 1
        objects = [((x1 + 1, y1 + 1, x2, y2), CLASS_NAMES[label]) for (x1, y1, x2, y2), label in OBJECTS[name]]
        (folder / f"{Path(name).stem}.xml").write_text(voc_xml(name, width, height, objects))
    return folder, images


def write_yolo(root: Path) -> tuple[Path, Path]:
    images = write_images(root)
    folder = root / "labels"
    folder.mkdir(parents=True, exist_ok=True)
    for name, width, height in IMAGES:
        lines = [
            f"{label} {(x1 + x2) / 2 / width:.6f} {(y1 + y2) / 2 / height:.6f} "
            f"{(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f}"
            for (x1, y1, x2, y2), label in OBJECTS[name]
        ]
        if lines:
            (folder / f"{Path(name).stem}.txt").write_text("\n".join(lines) + "\n")
    return folder, images
