"""``balancedet predict``: run a trained checkpoint on image files or folders.

Writes ``predictions.json`` (COCO result records, plus ``file_name``, with the dataset's original
category ids, boxes in original-image pixels) and each image with its detections drawn.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from balancedet.data.images import read_image
from balancedet.engine.checkpoint import load_model
from balancedet.engine.data import make_collate, make_transform
from balancedet.engine.evaluate import to_original
from balancedet.engine.plots import draw_predictions
from balancedet.engine.runtime import increment_dir, resolve_device

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def collect_images(paths: Sequence[str | Path]) -> list[Path]:
    """Image files named directly or found (sorted) in the named folders."""
    files: list[Path] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            found = sorted(p for p in entry.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ValueError(f"{entry}: folder holds no image ({', '.join(IMAGE_SUFFIXES)})")
            files += found
        elif entry.is_file():
            files.append(entry)
        else:
            raise ValueError(f"{entry}: no such file or folder")
    return files


@torch.no_grad()
def predict_images(
    checkpoint: str,
    images: Sequence[str | Path],
    output: str | Path | None = None,
    score_thresh: float = 0.25,
    device: str = "auto",
    batch_size: int = 8,
) -> dict[str, Any]:
    """``balancedet predict``: detections of score >= ``score_thresh`` in each image, written to
    ``predictions.json`` and drawn on the images, in a fresh folder (default ``runs/predict/exp``)."""
    dev = resolve_device(device)
    model, ckpt = load_model(checkpoint, dev)
    config, class_names, category_ids = ckpt["config"], ckpt["class_names"], ckpt["category_ids"]
    transform = make_transform(config["data"], train=False)
    collate = make_collate(config)
    files = collect_images(images)
    folder = increment_dir(Path(output or "runs/predict/exp"))
    folder.mkdir(parents=True)

    results: list[dict[str, Any]] = []
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        batch, originals = [], []
        for path in chunk:
            # the decode training used (EXIF orientation, 16-bit scaled, strict): boxes in displayed pixels
            pixels = read_image(path)
            out = transform(
                pixels, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.bool)
            )
            h, w = out["image"].shape[-2:]
            height, width = pixels.shape[-2:]
            target = {"orig_size": (height, width), "scale": (h / height, w / width)}
            batch.append((out["image"], target))
            originals.append(pixels)
        tensor, targets = collate(batch)
        detections = model(tensor.to(dev))
        for offset, (path, rgb, target, det) in enumerate(zip(chunk, originals, targets, detections, strict=True)):
            keep = det["scores"] >= score_thresh
            kept = {
                "boxes": to_original(det["boxes"][keep].float().cpu(), target),
                "scores": det["scores"][keep].float().cpu(),
                "labels": det["labels"][keep].cpu(),
            }
            for box, score, label in zip(
                kept["boxes"].tolist(), kept["scores"].tolist(), kept["labels"].tolist(), strict=True
            ):
                results.append(
                    {
                        "image_id": start + offset,
                        "file_name": str(path),
                        "category_id": int(category_ids[label]),
                        "category": class_names[label],
                        "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                        "score": score,
                    }
                )
            drawn = draw_predictions(rgb, kept, class_names, score_thresh)
            name = folder / f"{path.stem}_pred.jpg"
            if name.exists():  # same file name in two folders
                name = folder / f"{path.stem}_{start + offset}_pred.jpg"
            drawn.save(name, quality=90)
    (folder / "predictions.json").write_text(json.dumps(results, indent=1))
    print(f"{len(files)} images, {len(results)} detections (score >= {score_thresh}); results in {folder}")
    return {"output": folder, "results": results}
