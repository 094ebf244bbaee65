"""The figures of ``balancedet analyze``, each drawn from the numbers it writes to ``analysis.json``
(the section passed in), so that every picture can be checked against the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: analysis machines may have no screen

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from balancedet.analysis.kinds import KIND_NAMES  # noqa: E402

__all__ = [
    "plot_ap_vs_frequency",
    "plot_box_shapes",
    "plot_boxes_per_image",
    "plot_class_frequencies",
    "plot_cumulative_loss",
    "plot_gradient_density",
    "plot_iou_spread",
    "plot_kind_shares",
    "plot_levels",
    "plot_positives_per_box",
]

KIND_LABELS = {"easy_pos": "easy positives", "hard_pos": "hard positives", "easy_neg": "easy negatives"}
KIND_LABELS["hard_neg"] = "hard negatives"
REMEDY_LABELS = {"ce": "cross entropy", "focal": "focal loss (0.25, 2)", "ghmc": "GHM-C (30 bins)"}


def _save(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_class_frequencies(section: dict[str, Any], path: Path) -> None:
    """Boxes per class, most frequent first, the max/min ratio in the title."""
    names = section["order"]
    counts = [section["counts"][n] for n in names]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.25 * len(names) + 2), 3.5))
    ax.bar(range(len(names)), counts, color="tab:blue")
    ax.set_xticks(range(len(names)), names, rotation=90 if len(names) > 12 else 0, fontsize=7)
    ratio = section["max_min_ratio"]
    ax.set_title(f"Boxes per class (max / min {ratio:.1f})" if ratio is not None else "Boxes per class")
    ax.set_ylabel("boxes")
    _save(fig, path)


def plot_boxes_per_image(section: dict[str, Any], path: Path) -> None:
    histogram = section["histogram"]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar(range(len(histogram)), histogram, color="tab:blue")
    ax.set_xlabel("boxes in the image")
    ax.set_ylabel("images")
    mean = section["mean"]
    ax.set_title(f"Boxes per image (mean {mean:.2f})" if mean is not None else "Boxes per image")
    _save(fig, path)


def _log_bars(ax: plt.Axes, edges: list[float], counts: list[int], color: str) -> None:
    edges_a = np.asarray(edges)
    ax.bar(edges_a[:-1], counts, width=np.diff(edges_a), align="edge", color=color, alpha=0.8)
    ax.set_xscale("log", base=2)


def plot_box_shapes(shapes: dict[str, Any], anchors: dict[str, Any], path: Path) -> None:
    """Histograms of box sizes and aspect ratios, the configured anchor sizes and ratios as lines."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for ax, key, marks, label in (
        (axes[0], "size", anchors["sizes"], "box size sqrt(w h), input pixels"),
        (axes[1], "ratio", anchors["ratios"], "aspect ratio h / w"),
    ):
        part = shapes[key]
        _log_bars(ax, part["edges"], part["histogram"], "tab:blue")
        for value in marks:
            ax.axvline(value, color="tab:red", linewidth=1, linestyle="--")
        ax.set_xlabel(label)
        ax.set_ylabel("boxes")
    axes[0].set_title("Box sizes (dashed: anchor sizes)")
    axes[1].set_title("Aspect ratios (dashed: anchor ratios)")
    _save(fig, path)


def plot_positives_per_box(coverage: dict[str, Any], path: Path) -> None:
    histogram = coverage["positives_per_box"]["histogram"]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar(range(len(histogram)), histogram, color="tab:green")
    ax.set_xlabel("positive anchors of the box")
    ax.set_ylabel("boxes")
    none = coverage["none"]
    ax.set_title(f"Positives per box ({100 * none:.1f}% of boxes get none)" if none is not None else "Positives")
    _save(fig, path)


def plot_levels(levels: list[dict[str, Any]], path: Path) -> None:
    """Foreground, background and ignored anchors per level, on a log scale."""
    fig, ax = plt.subplots(figsize=(6, 3.4))
    x = np.arange(len(levels))
    for i, (key, color) in enumerate(
        (("foreground", "tab:green"), ("background", "tab:gray"), ("ignored", "tab:orange"))
    ):
        ax.bar(x + (i - 1) * 0.27, [max(level[key], 0.8) for level in levels], width=0.27, color=color, label=key)
    ax.set_xticks(x, [f"stride {level['stride']}" for level in levels])
    ax.set_yscale("log")
    ax.set_ylabel("anchors")
    ax.set_title("Anchors per FPN level")
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_kind_shares(shares: dict[str, Any], path: Path) -> None:
    """Loss share of each kind under each remedy (stacked), with the kinds' counts in the legend."""
    remedies = [r for r in REMEDY_LABELS if r in shares]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    bottom = np.zeros(len(remedies))
    colors = {"easy_pos": "#9ecae1", "hard_pos": "#08519c", "easy_neg": "#d9d9d9", "hard_neg": "#a50f15"}
    for kind in KIND_NAMES:
        values = np.array([shares[r][kind]["share"] for r in remedies])
        count = shares[remedies[0]][kind]["count"]
        ax.barh(range(len(remedies)), values, left=bottom, color=colors[kind], label=f"{KIND_LABELS[kind]} ({count})")
        bottom += values
    ax.set_yticks(range(len(remedies)), [REMEDY_LABELS[r] for r in remedies])
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of the classification loss")
    ax.set_title("Loss shares of the four kinds (hard iff p_t < 0.5)")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=2)
    _save(fig, path)


def plot_gradient_density(density: dict[str, Any], path: Path) -> None:
    """Left: the gradient-norm histogram of positive and negative elements (GHM paper, fig. 1);
    right: each remedy's weight relative to CE at each gradient norm (the idea of its fig. 3)."""
    edges = np.asarray(density["edges"])
    centres = (edges[:-1] + edges[1:]) / 2
    total = max(sum(density["positive_counts"]) + sum(density["negative_counts"]), 1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    width = np.diff(edges)
    for key, color in (("negative_counts", "tab:gray"), ("positive_counts", "tab:blue")):
        fraction = np.asarray(density[key]) / total
        axes[0].bar(
            edges[:-1],
            np.where(fraction > 0, fraction, np.nan),
            width=width,
            align="edge",
            color=color,
            alpha=0.7,
            label=key.split("_")[0] + " elements",
        )
    axes[0].set_yscale("log")
    axes[0].set_xlabel("gradient norm g = |p - y|")
    axes[0].set_ylabel("fraction of elements")
    axes[0].set_title("Gradient-norm density")
    axes[0].legend(fontsize=8)
    axes[1].plot(centres, np.ones_like(centres), label="cross entropy", color="black")
    axes[1].plot(centres, density["focal_ratio"], label="focal loss (gamma 2)", color="tab:red")
    beta = np.asarray(density["ghm_beta"])
    axes[1].plot(centres, np.where(beta > 0, beta, np.nan), label="GHM-C beta", color="tab:green", marker=".")
    axes[1].set_yscale("log")
    axes[1].set_xlabel("gradient norm g")
    axes[1].set_ylabel("weight relative to CE")
    axes[1].set_title("Reweighting by gradient norm")
    axes[1].legend(fontsize=8)
    _save(fig, path)


def plot_cumulative_loss(section: dict[str, Any], path: Path) -> None:
    """The focal paper's fig. 4: cumulative normalised loss of positives and negatives per gamma."""
    fractions = section["fractions"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, kind in zip(axes, ("positive", "negative"), strict=True):
        for gamma, curve in section[kind]["curves"].items():
            if curve is not None:
                ax.plot(fractions, curve, label=f"gamma {gamma}")
        ax.set_xlabel(f"fraction of {kind} samples")
        ax.set_title(f"{kind.capitalize()} samples ({section[kind]['count']})")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    axes[0].set_ylabel("cumulative normalised loss")
    _save(fig, path)


def plot_iou_spread(section: dict[str, Any], path: Path) -> None:
    """Libra R-CNN's fig. 2 for a dense head: negatives per IoU bin, hardest vs random."""
    edges = np.asarray(section["edges"])
    top = 1
    for key in ("hard", "random"):
        nonzero = np.nonzero(section[key]["histogram"])[0]
        if nonzero.size:
            top = max(top, int(nonzero.max()) + 1)
    fig, ax = plt.subplots(figsize=(6, 3.4))
    width = (edges[1] - edges[0]) * 0.4
    for shift, key, color in ((-0.5, "hard", "tab:red"), (0.5, "random", "tab:gray")):
        part = section[key]
        above = part["above_overlap"]
        label = f"{key} ({100 * above:.0f}% above IoU {section['overlap_iou']})" if above is not None else key
        centres = (edges[:top] + edges[1 : top + 1]) / 2
        ax.bar(centres + shift * width, part["fractions"][:top], width=width, color=color, label=label)
    ax.set_xlabel("best IoU with a ground-truth box")
    ax.set_ylabel("fraction of the negatives")
    ax.set_title("IoU of the hardest vs randomly sampled negatives")
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_ap_vs_frequency(section: dict[str, Any], path: Path) -> None:
    """Per-class AP against the class's training boxes (log scale), each point named."""
    names = [n for n in section["classes"] if section["ap"][n] is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    x = [max(section["train_boxes"][n], 1) for n in names]
    y = [section["ap"][n] for n in names]
    ax.scatter(x, y, color="tab:blue")
    for name, xi, yi in zip(names, x, y, strict=True):
        ax.annotate(name, (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_ylim(0, 1)
    ax.set_xlabel("training boxes of the class")
    ax.set_ylabel("AP (IoU 0.5:0.95)")
    ax.set_title("Per-class AP against training frequency")
    _save(fig, path)
