"""The pictures of a run: loss and metric curves, PR curves, confusion matrix, drawn predictions,
and the ultralytics-style mosaics of validation images with their labels or predictions."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: training machines have no screen

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402
from torchvision.utils import draw_bounding_boxes  # noqa: E402

from balancedet.analysis.kinds import KIND_NAMES  # noqa: E402


def plot_results(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """``results.png``: every ``loss*`` column and every metric column of ``results.csv`` per epoch, and
    the imbalance diagnostics' panels (``diagnostics_panels``)."""
    if not rows:
        return
    epochs = [r["epoch"] for r in rows]
    panels = [(k, {k: k}) for k in rows[0] if k.startswith("loss")]
    panels += [(k, {k: k}) for k in rows[0] if k in ("AP", "AP50", "AP75", "AR100", "lr")]
    panels += diagnostics_panels(rows[0])
    cols = min(4, len(panels))
    lines = -(-len(panels) // cols)
    fig, axes = plt.subplots(lines, cols, figsize=(3.2 * cols, 2.6 * lines), squeeze=False)
    for ax, (title, curves) in zip(axes.flat, panels, strict=False):
        for key, label in curves.items():
            values = [float(r[key]) if r.get(key) not in (None, "") else np.nan for r in rows]
            ax.plot(epochs, values, marker="o", markersize=3, label=label)
        if len(curves) > 1:
            ax.legend(fontsize=6)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def diagnostics_panels(columns: Sequence[str]) -> list[tuple[str, dict[str, str]]]:
    """``(title, {column: label})`` panels of the imbalance diagnostics' columns
    (``balancedet.engine.diagnostics``): per criterion ``{name}``, its four ``{name}_{kind}_share``
    curves together, then its ``{name}_fg_fraction``."""
    panels = []
    for key in columns:
        if not key.endswith("_fg_fraction"):
            continue
        name = key.removesuffix("_fg_fraction")
        shares = {f"{name}_{kind}_share": kind for kind in KIND_NAMES if f"{name}_{kind}_share" in columns}
        if shares:
            panels.append((f"{name} loss shares", shares))
        panels.append((key, {key: key}))
    return panels


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


#: ultralytics' 20 class colours, so that a class has the same colour as in an ultralytics run.
GRID_PALETTE = (
    (255, 56, 56), (255, 157, 151), (255, 112, 31), (255, 178, 29), (207, 210, 49),
    (72, 249, 10), (146, 204, 23), (61, 219, 134), (26, 147, 52), (0, 212, 187),
    (44, 153, 168), (0, 194, 255), (52, 69, 147), (100, 115, 255), (0, 24, 236),
    (132, 56, 255), (82, 0, 133), (203, 56, 255), (255, 149, 200), (255, 55, 199),
)  # fmt: skip

#: Score below which a prediction is not drawn: ultralytics' ``plot_images`` threshold, and that of
#: ``confusion_matrix``, so the grid shows the detections the confusion matrix counts.
GRID_SCORE_THRESH = 0.25


def grid_layout(num_images: int, max_images: int = 16) -> tuple[int, int]:
    """``(rows, columns)`` of a mosaic of ``num_images`` (at most ``max_images``): as square as
    possible, 4x4 for 16, without empty rows (5 images: 2 rows of 3)."""
    n = max(1, min(num_images, max_images))
    cols = math.ceil(math.sqrt(n))
    return math.ceil(n / cols), cols


def grid_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's default font at ``size`` pixels (a scalable font since Pillow 10.1); older Pillow
    only has its 11-pixel bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: no size argument
        return ImageFont.load_default()


def plot_image_grid(
    images: Sequence[Image.Image],
    boxes_per_image: Sequence[np.ndarray | torch.Tensor],
    labels_per_image: Sequence[np.ndarray | torch.Tensor],
    scores_per_image: Sequence[np.ndarray | torch.Tensor] | None,
    class_names: Sequence[str],
    path: Path | None = None,
    *,
    titles: Sequence[str] | None = None,
    score_thresh: float = GRID_SCORE_THRESH,
    max_images: int = 16,
    min_tile: int = 320,
    max_size: int = 1920,
) -> Image.Image | None:
    """A mosaic of up to ``max_images`` images with their boxes, as ultralytics' ``val_batch*_labels.jpg``
    (``scores_per_image=None``: ground truth, labelled with the class name) and ``val_batch*_pred.jpg``
    (labelled ``name score``, only scores >= ``score_thresh``, the best drawn last, on top).

    Every image sits in a square tile, top left, scaled to fill it: tiles are ``min_tile`` pixels at
    least, so that a 128-pixel image (the digits scenes) is scaled UP and its labels can be read, and
    larger images keep their size until the mosaic would pass ``max_size``. Boxes (``xyxy`` in the
    image's own pixels) are drawn after the scaling, so lines and text have the same size in every
    tile; upscaling is nearest-neighbour, showing the image's real pixels.

    Returns the mosaic (also saved to ``path`` when given), or ``None`` without images.
    """
    n = min(len(images), max_images)
    if n == 0:
        return None
    rows, cols = grid_layout(n, max_images)
    longest = max(max(im.size) for im in images[:n])
    tile = max(min_tile, min(longest, max_size // cols))
    font_size = max(12, min(32, round(tile / 20)))
    font = grid_font(font_size)
    line = max(2, round(tile / 160))
    mosaic = Image.new("RGB", (cols * tile, rows * tile), (255, 255, 255))
    draw = ImageDraw.Draw(mosaic)
    for i in range(n):
        image = images[i].convert("RGB")
        scale = tile / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        resample = Image.NEAREST if scale >= 1 else Image.BILINEAR  # Pillow 9.0 has no Image.Resampling
        x0, y0 = (i % cols) * tile, (i // cols) * tile
        cell = (x0, y0, x0 + tile, y0 + tile)
        mosaic.paste(image.resize(size, resample), (x0, y0))
        boxes = np.asarray(boxes_per_image[i], dtype=np.float64).reshape(-1, 4)
        labels = np.asarray(labels_per_image[i]).reshape(-1).astype(np.int64)
        if len(labels) != len(boxes):
            raise ValueError(f"image {i}: {len(boxes)} boxes but {len(labels)} labels")
        if scores_per_image is None:
            order = np.arange(len(boxes))
            texts = [class_names[int(c)] for c in labels]
        else:
            scores = np.asarray(scores_per_image[i], dtype=np.float64).reshape(-1)
            order = [j for j in np.argsort(scores, kind="stable") if scores[j] >= score_thresh]
            texts = [f"{class_names[int(c)]} {s:.2f}" for c, s in zip(labels, scores, strict=True)]
        for j in order:
            color = GRID_PALETTE[int(labels[j]) % len(GRID_PALETTE)]
            x1, y1, x2, y2 = (float(v) * scale for v in boxes[j])
            box = (x0 + x1, y0 + y1, x0 + max(x2, x1 + 1), y0 + max(y2, y1 + 1))
            draw.rectangle(box, outline=color, width=line)
            _draw_label(draw, texts[j], box, color, font, cell)
        if titles is not None:  # the file name, bottom left, to find the image
            _draw_label(draw, titles[i][:40], (x0, y0 + tile - line, x0, y0 + tile), (0, 0, 0), font, cell)
        draw.rectangle((x0, y0, x0 + tile - 1, y0 + tile - 1), outline=(255, 255, 255), width=line)
    if path is not None:
        mosaic.save(path, quality=95)
    return mosaic


def _draw_label(
    draw: ImageDraw.ImageDraw,
    text: str,
    box: tuple[float, float, float, float],
    color: tuple[int, int, int],
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    tile: tuple[int, int, int, int],
) -> None:
    """``text`` on a band of the box's colour above its top-left corner (inside the box when the
    tile has no room above), kept inside the tile; black text on light colours, white on dark."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    width, height = right - left + 4, bottom - top + 4
    x = min(max(box[0], tile[0]), tile[2] - width)
    y = box[1] - height if box[1] - height >= tile[1] else box[1]
    draw.rectangle((x, y, x + width - 1, y + height - 1), fill=color)
    luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    draw.text((x + 2 - left, y + 2 - top), text, fill=(0, 0, 0) if luminance > 150 else (255, 255, 255), font=font)
