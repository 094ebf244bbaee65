"""The pictures of a run: loss and metric curves, PR curves, confusion matrix, drawn predictions."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: training machines have no screen

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision.utils import draw_bounding_boxes  # noqa: E402


def plot_results(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """``results.png``: every ``loss*`` column and every metric column of ``results.csv`` per epoch."""
    if not rows:
        return
    epochs = [r["epoch"] for r in rows]
    columns = [k for k in rows[0] if k.startswith("loss")] + [
        k for k in rows[0] if k in ("AP", "AP50", "AP75", "AR100", "lr")
    ]
    cols = min(4, len(columns))
    lines = -(-len(columns) // cols)
    fig, axes = plt.subplots(lines, cols, figsize=(3.2 * cols, 2.6 * lines), squeeze=False)
    for ax, key in zip(axes.flat, columns, strict=False):
        values = [float(r[key]) if r.get(key) not in (None, "") else np.nan for r in rows]
        ax.plot(epochs, values, marker="o", markersize=3)
        ax.set_title(key)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(columns) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_pr_curves(
    precision50: np.ndarray, recall: np.ndarray, class_names: Sequence[str], per_class_ap50: Sequence[float], path: Path
) -> None:
    """``PR_curve.png``: precision-recall at IoU 0.5 per class (thin) and averaged (thick)."""
    fig, ax = plt.subplots(figsize=(6, 5))
    show_legend = len(class_names) <= 20
    for k, name in enumerate(class_names):
        ap = per_class_ap50[k]
        label = f"{name} {ap:.3f}" if np.isfinite(ap) else f"{name} (no boxes)"
        ax.plot(recall, precision50[:, k], linewidth=1, alpha=0.6, label=label if show_legend else None)
    finite = [k for k, ap in enumerate(per_class_ap50) if np.isfinite(ap)]
    if finite:
        mean = precision50[:, finite].mean(1)
        ax.plot(
            recall,
            mean,
            linewidth=3,
            color="blue",
            label=f"all classes {np.mean([per_class_ap50[k] for k in finite]):.3f} AP50",
        )
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_title("Precision-recall at IoU 0.5")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusion(matrix: np.ndarray, class_names: Sequence[str], path: Path) -> None:
    """``confusion_matrix.png``: columns are true classes, rows predictions; normalised per column."""
    names = [*class_names, "background"]
    totals = matrix.sum(0, keepdims=True)
    norm = np.divide(matrix, totals, out=np.zeros(matrix.shape, dtype=float), where=totals > 0)
    size = max(4.0, 0.45 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    image = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    if len(names) <= 30:
        for i in range(len(names)):
            for j in range(len(names)):
                if matrix[i, j]:
                    ax.text(
                        j,
                        i,
                        f"{norm[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="white" if norm[i, j] > 0.5 else "black",
                    )
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set_title("Confusion matrix (score >= 0.25, IoU >= 0.5)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_predictions(
    image: Image.Image | torch.Tensor,
    detections: dict[str, torch.Tensor],
    class_names: Sequence[str],
    score_thresh: float = 0.25,
) -> Image.Image:
    """The image with its detections of score >= ``score_thresh`` drawn and labelled."""
    if isinstance(image, Image.Image):
        tensor = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).contiguous()
    else:
        tensor = image
    keep = detections["scores"] >= score_thresh
    boxes = detections["boxes"][keep].float()
    labels = [
        f"{class_names[int(c)]} {s:.2f}"
        for c, s in zip(detections["labels"][keep], detections["scores"][keep].tolist(), strict=True)
    ]
    palette = [
        "#e6194b",
        "#3cb44b",
        "#4363d8",
        "#f58231",
        "#911eb4",
        "#46f0f0",
        "#f032e6",
        "#bcf60c",
        "#fabebe",
        "#008080",
    ]
    colors = [palette[int(c) % len(palette)] for c in detections["labels"][keep]]
    if len(boxes):
        tensor = draw_bounding_boxes(tensor, boxes, labels=labels, colors=colors, width=2)
    return Image.fromarray(tensor.permute(1, 2, 0).numpy())
