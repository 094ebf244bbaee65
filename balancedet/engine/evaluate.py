"""COCO evaluation of a detector on a dataset split: AP, AP50, AP75, APs/m/l, AR@100, per class.

The metrics come from faster-coco-eval (the COCO protocol, not re-implemented). Datasets in any
format (COCO, VOC, YOLO, digits) are evaluated through the same COCO-format ground truth, with the
dataset's original image and category ids; predictions are mapped back to the original image size.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from faster_coco_eval import COCO, COCOeval_faster
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader
from torchvision.ops import box_iou

from balancedet.data import DetectionDataset, boxes_to_original
from balancedet.data.images import read_image
from balancedet.engine.checkpoint import load_model
from balancedet.engine.data import eval_loader, load_split
from balancedet.engine.plots import plot_confusion, plot_image_grid, plot_pr_curves
from balancedet.engine.runtime import amp_dtype, increment_dir, resolve_device

#: ``metrics.json`` keys, in faster-coco-eval's ``stats`` order (indices 0-5 and 8).
METRIC_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")
_STATS_INDEX = (0, 1, 2, 3, 4, 5, 8)


def to_original(boxes: torch.Tensor, target: dict[str, Any]) -> torch.Tensor:
    """Boxes in the resized input back to the original image: undo the resize, clip to the image."""
    out = boxes_to_original(boxes, target)
    h, w = (int(v) for v in target["orig_size"])
    out[:, 0::2] = out[:, 0::2].clamp(0, w)
    out[:, 1::2] = out[:, 1::2].clamp(0, h)
    return out


@torch.no_grad()
def predict_loader(
    model: nn.Module, loader: DataLoader, device: torch.device, amp: torch.dtype | None = None
) -> list[tuple[dict[str, Any], dict[str, torch.Tensor]]]:
    """``(target, detections)`` per image, detections in original-image pixels on the CPU."""
    was_training = model.training
    model.eval()
    out = []
    try:
        for images, targets in loader:
            images = images.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                detections = model(images)
            for target, det in zip(targets, detections, strict=True):
                boxes = to_original(det["boxes"].float().cpu(), target)
                out.append(
                    (target, {"boxes": boxes, "scores": det["scores"].float().cpu(), "labels": det["labels"].cpu()})
                )
    finally:
        model.train(was_training)
    return out


def coco_results(predictions: Sequence[tuple[dict[str, Any], dict[str, torch.Tensor]]], category_ids: Sequence[int]):
    """COCO result records ``{image_id, category_id, bbox [x, y, w, h], score}``."""
    ids = torch.as_tensor(list(category_ids))
    results = []
    for target, det in predictions:
        boxes = det["boxes"].double()
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1).tolist()
        cats = ids[det["labels"]].tolist()
        for box, cat, score in zip(xywh, cats, det["scores"].tolist(), strict=True):
            results.append(
                {"image_id": int(target["image_id"]), "category_id": int(cat), "bbox": box, "score": float(score)}
            )
    return results


def coco_evaluate(
    ground_truth: dict[str, Any], results: list[dict[str, Any]], category_ids: Sequence[int]
) -> dict[str, Any]:
    """Run the COCO protocol. Returns ``metrics`` (``METRIC_KEYS`` -> fraction), ``per_class_ap``
    (AP per contiguous class, NaN for a class without ground truth), ``precision`` at IoU 0.5
    ``(101 recall points, K)`` and the ``recall`` thresholds."""
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):
        gt = COCO(ground_truth)
        if not results:
            # No detection at all: AP 0 for every class that has ground truth, undefined otherwise.
            present = {a["category_id"] for a in ground_truth.get("annotations", []) if not a.get("iscrowd", 0)}
            nan = float("nan") if not present else 0.0
            k = len(category_ids)
            return {
                "metrics": dict.fromkeys(METRIC_KEYS, nan),
                "per_class_ap": [0.0 if c in present else float("nan") for c in category_ids],
                "precision50": np.zeros((101, k)),
                "recall_thresholds": np.linspace(0, 1, 101),
            }
        dt = gt.loadRes(results)
        evaluator = COCOeval_faster(gt, dt, iouType="bbox")
        evaluator.params.catIds = [int(c) for c in category_ids]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = evaluator.stats
    metrics = {
        key: max(float(stats[i]), 0.0) if stats[i] >= 0 else float("nan")
        for key, i in zip(METRIC_KEYS, _STATS_INDEX, strict=True)
    }
    # precision: (T IoUs, R recalls, K classes, A areas, M max-dets); -1 where a class has no ground truth.
    precision = np.asarray(evaluator.eval["precision"])
    per_class = []
    for k in range(precision.shape[2]):
        p = precision[:, :, k, 0, -1]
        per_class.append(float(p[p > -1].mean()) if (p > -1).any() else float("nan"))
    p50 = precision[0, :, :, 0, -1]
    return {
        "metrics": metrics,
        "per_class_ap": per_class,
        "precision50": np.where(p50 > -1, p50, 0.0),
        "recall_thresholds": np.asarray(evaluator.params.recThrs),
    }


def confusion_matrix(
    predictions: Sequence[tuple[dict[str, Any], dict[str, torch.Tensor]]],
    num_classes: int,
    score_thresh: float = 0.25,
    iou_thresh: float = 0.5,
) -> np.ndarray:
    """``(K + 1, K + 1)`` counts, rows = predicted class (last: background = missed object),
    columns = true class (last: background = false detection), as ultralytics draws it.

    Each ground-truth box is matched greedily, highest score first, to one detection of IoU >= 0.5.
    """
    matrix = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    for target, det in predictions:
        gt_boxes = to_original(target["boxes"].float(), target)
        gt_labels = target["labels"]
        keep = det["scores"] >= score_thresh
        boxes, labels = det["boxes"][keep], det["labels"][keep]
        order = det["scores"][keep].argsort(descending=True)
        boxes, labels = boxes[order], labels[order]
        taken = torch.zeros(len(gt_boxes), dtype=torch.bool)
        if len(gt_boxes) and len(boxes):
            iou = box_iou(boxes, gt_boxes)
            for i in range(len(boxes)):
                candidates = torch.where(~taken & (iou[i] >= iou_thresh), iou[i], -1.0)
                j = int(candidates.argmax())
                if candidates[j] >= 0:
                    taken[j] = True
                    matrix[int(labels[i]), int(gt_labels[j])] += 1
                else:
                    matrix[int(labels[i]), num_classes] += 1
        else:
            for label in labels.tolist():
                matrix[label, num_classes] += 1
        for j in torch.nonzero(~taken).flatten().tolist():
            matrix[num_classes, int(gt_labels[j])] += 1
    return matrix


def evaluate_model(
    model: nn.Module, dataset: DetectionDataset, config: dict[str, Any], device: torch.device, amp: torch.dtype | None
) -> tuple[dict[str, Any], list]:
    """COCO metrics of ``model`` on ``dataset`` (``coco_evaluate``'s report) and the predictions
    (original-image pixels)."""
    predictions = predict_loader(model, eval_loader(dataset, config), device, amp)
    results = coco_results(predictions, dataset.category_ids)
    return coco_evaluate(dataset.ground_truth(), results, dataset.category_ids), predictions


def per_class_table(report: dict[str, Any], class_names: Sequence[str]) -> str:
    lines = [f"{'class':<20} {'AP':>6}"]
    for name, ap in zip(class_names, report["per_class_ap"], strict=True):
        lines.append(f"{name:<20} {ap:6.3f}" if math.isfinite(ap) else f"{name:<20} {'-':>6}")
    return "\n".join(lines)


def summary_line(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {metrics[k]:.3f}" for k in METRIC_KEYS)


def write_metrics_json(metrics: dict[str, float], path: Path) -> None:
    """``metrics.json``: ``METRIC_KEYS``; JSON has no NaN, so a metric without ground truth (e.g.
    APl with no large object) is null."""
    finite = {k: (metrics[k] if math.isfinite(metrics[k]) else None) for k in METRIC_KEYS}
    path.write_text(json.dumps(finite, indent=2))


def write_pr_curve(report: dict[str, Any], class_names: Sequence[str], path: Path) -> None:
    """``PR_curve.png`` of a ``coco_evaluate`` report, each class labelled with its AP50."""
    precision = report["precision50"]
    ap50 = [
        float(precision[:, k].mean()) if math.isfinite(ap) else float("nan")
        for k, ap in enumerate(report["per_class_ap"])
    ]
    plot_pr_curves(precision, report["recall_thresholds"], class_names, ap50, path)


def write_eval_artifacts(
    report: dict[str, Any],
    predictions: list,
    dataset: DetectionDataset,
    output: Path,
    num_batches: int,
    batch_size: int = 16,
) -> None:
    """``PR_curve.png``, ``confusion_matrix.png`` and, for the first ``num_batches`` validation
    batches, ultralytics' ``val_batch{i}_labels.jpg`` (ground truth) and ``val_batch{i}_pred.jpg``
    (detections of score >= ``GRID_SCORE_THRESH``).

    A batch is ``batch_size`` consecutive images of ``predictions`` (the dataset's order), at most 16,
    the most a 4x4 mosaic shows. Both are drawn on the original images: predictions are in original
    pixels already, and the ground truth is the records' boxes (ignore regions, crowd or difficult,
    left out, as in training).
    """
    write_pr_curve(report, dataset.class_names, output / "PR_curve.png")
    matrix = confusion_matrix(predictions, len(dataset.class_names))
    plot_confusion(matrix, dataset.class_names, output / "confusion_matrix.png")
    by_id = {r.image_id: r for r in dataset.records}
    per_grid = max(1, min(batch_size, 16))
    for i in range(num_batches):
        batch = predictions[i * per_grid : (i + 1) * per_grid]
        if not batch:
            break
        records = [by_id[int(target["image_id"])] for target, _ in batch]
        images = []
        for record in records:
            # as the model saw it: EXIF orientation applied, 16-bit scaled, so the boxes land on the objects
            pixels = read_image(record.file, record.image_id)
            images.append(Image.fromarray(pixels.permute(1, 2, 0).numpy()))
        kept = [~r.ignore for r in records]
        titles = [Path(r.file).name for r in records]
        plot_image_grid(
            images,
            [r.boxes[k] for r, k in zip(records, kept, strict=True)],
            [r.labels[k] for r, k in zip(records, kept, strict=True)],
            None,
            dataset.class_names,
            output / f"val_batch{i}_labels.jpg",
            titles=titles,
        )
        plot_image_grid(
            images,
            [det["boxes"] for _, det in batch],
            [det["labels"] for _, det in batch],
            [det["scores"] for _, det in batch],
            dataset.class_names,
            output / f"val_batch{i}_pred.jpg",
            titles=titles,
        )


def evaluate_checkpoint(
    checkpoint: str,
    data: str | None = None,
    split: str = "val",
    output: str | None = None,
    device: str = "auto",
    batch_size: int | None = None,
) -> dict[str, Any]:
    """``balancedet eval``: COCO metrics of a checkpoint on a dataset split, per-class AP, PR curve.

    ``data`` defaults to the dataset the checkpoint was trained on; its class names must match the
    checkpoint's (same names in the same order), since the model's outputs are indexed by them.
    """
    dev = resolve_device(device)
    model, ckpt = load_model(checkpoint, dev)
    config = ckpt["config"]
    if data is not None:
        config["data"]["dataset"] = data
    if batch_size is not None:
        config["train"]["batch_size"] = batch_size
    dataset = load_split(config, split, train=False)
    if list(dataset.class_names) != list(ckpt["class_names"]):
        raise ValueError(
            f"dataset {config['data']['dataset']}: classes {list(dataset.class_names)} differ from the checkpoint's "
            f"{list(ckpt['class_names'])} ({checkpoint})"
        )
    report, _ = evaluate_model(model, dataset, config, dev, amp_dtype(config["train"]["amp"], dev))
    folder = increment_dir(Path(output or "runs/eval/exp"))
    folder.mkdir(parents=True)
    write_pr_curve(report, dataset.class_names, folder / "PR_curve.png")
    write_metrics_json(report["metrics"], folder / "metrics.json")
    print(f"{split}: {len(dataset)} images, {summary_line(report['metrics'])}")
    print(per_class_table(report, dataset.class_names))
    print(f"results in {folder}")
    return {"output": folder, **report}
