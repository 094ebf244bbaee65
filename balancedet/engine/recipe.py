"""A training recipe fitted to the user's dataset: input size, anchor check and schedule from the training split.

``balancedet train --data my.yaml`` without ``--config`` starts from the ``user_data`` preset and calls
``fit_recipe``, which reads the training records (image sizes and boxes, no pixels) and chooses:

- **the input size** (``data.min_size``, ``data.max_size``; the resize takes the shorter side to
  ``min_size`` and caps the longer one at ``max_size``, ``balancedet.data.transforms``). ``min_size`` is
  the images' native shorter side (the median), raised until the small objects of *every* class (the
  ``SMALL_PERCENTILE``-th percentile of each class's box short sides, so a rare class of small objects
  counts as much as a common one) reach ``target_object_side``, what the detector's smallest prior
  matches wherever the object lies on the stride-8 grid. The raise stops at ``MAX_UPSCALE`` times the
  native size and where a padded batch would exceed ``PIXELS_PER_BATCH``. ``max_size`` is ``min_size``
  times the ``ASPECT_PERCENTILE``-th percentile of the images' aspect ratios: only the most elongated
  images are capped.
- **an anchor check** after that resize, as ultralytics' AutoAnchor (``check_anchors``): the best possible
  recall (BPR) is the share of training boxes that the assigner can give a positive. RetinaNet: the box's
  best anchor on the grid has IoU >= ``pos_iou`` (0.5), i.e. a positive without the low-quality matches
  (``anchor_best_iou``, exact: the best position of an anchor shape is the grid point nearest the box
  centre). GFL: the ATSS assigner itself, run on the resized boxes (``atss_covered``), since ATSS has no
  fixed IoU threshold. Below ``MIN_BPR`` (AutoAnchor's 0.98) overall or for a class, a line warns. For
  RetinaNet without explicit ``model.anchor_sizes`` the recipe also tries anchors half as large (2 strides
  instead of the paper's 4, as the digits preset) and keeps the set of higher BPR (``fit_retinanet_anchors``).
- **a schedule** whatever the dataset's size (``choose_schedule``): at least ``MIN_STEPS`` steps and the
  preset's epochs; the warm-up at most ``WARMUP_SHARE`` of the run; the decays at the 1x schedule's
  proportions (``DECAY_AT``); about ``EVALUATIONS`` evaluations per run.

Every key the user set with ``--set`` is kept as given (the recipe's line says so and what it would have
chosen). ``fit_recipe`` returns the new configuration and human-readable lines for the start of training.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from balancedet.assign import ATSSAssigner
from balancedet.boxes.anchors import FPN_STRIDES, AnchorGenerator, feature_map_sizes
from balancedet.data import BadRecordWarning, DataSpec, RecordSet
from balancedet.engine.config import parse_override
from balancedet.engine.data import epoch_batches
from balancedet.models.priors import PriorGenerator

__all__ = [
    "MIN_STEPS",
    "PIXELS_PER_BATCH",
    "BoxTable",
    "anchor_best_iou",
    "atss_covered",
    "box_table",
    "choose_input_size",
    "choose_schedule",
    "explicit_keys",
    "fit_recipe",
    "input_size",
    "resized_sizes",
    "target_object_side",
]

#: Fewest optimiser steps of a run. The digits presets reach their AP (0.52 RetinaNet, 0.68 GFL, from
#: scratch) in 937 steps (5 epochs of 187 batches); a user's few hundred images give 18 steps an epoch,
#: and 5 epochs of them (90 steps, shorter than the 100-step warm-up) leave the rarest class at AP 0.
MIN_STEPS = 1000
#: Largest share of the run spent in the linear warm-up (100 of MIN_STEPS = 1000).
WARMUP_SHARE = 0.1
#: Learning-rate decays at these fractions of the run: epochs 8 and 11 of 12, the 1x schedule of
#: Detectron and mmdetection (and of ``retinanet_r50_fpn`` / ``gfl_r50``).
DECAY_AT = (8 / 12, 11 / 12)
#: About this many evaluations per run (each also decides ``best.pt``); more only slow training down.
EVALUATIONS = 10
#: The low percentile of box short sides that must stay matchable: robust to a few mislabelled specks.
SMALL_PERCENTILE = 5.0
#: Largest upscaling of the images' native shorter side: detectron2's 800 px on COCO's 480-px photos is
#: 1.67x; beyond 2x interpolation adds pixels without detail, at a cost that grows with the square.
MAX_UPSCALE = 2.0
#: Memory budget: pixels of one padded training batch (8 Mi: 16 images of 512 x 1024). The user_data
#: preset's GFL ResNet-18-FPN (64 channels) peaks at about 650 bytes per pixel in a training step
#: (measured on the CPU, 2 and 4 images of 512 x 640), i.e. about 5.3 GiB: an 8 GB GPU's worth.
PIXELS_PER_BATCH = 8 * 2**20
#: ``max_size`` lets this percentile of the images' aspect ratios (longer / shorter side) go uncapped.
ASPECT_PERCENTILE = 95.0
#: Input sizes are multiples of this (C5's stride); the batches are padded to ``data.size_divisible`` anyway.
SIZE_STEP = 32
#: AutoAnchor's threshold on the best possible recall (ultralytics ``check_anchors``, thr 0.98).
MIN_BPR = 0.98
#: ATSS is run on at most this many images (evenly spaced) for the GFL recall: about 5 s on one CPU
#: thread at 512 x 854 with 7 boxes an image.
BPR_IMAGES = 1000
#: The model types whose assignment ``check_anchors`` reproduces.
CHECKED_TYPES = ("retinanet", "gfl")
#: Smallest object side, in strides of P3, that the recipe asks for whatever the assigner: below 2 strides
#: an object covers fewer than 2 x 2 P3 locations, i.e. hardly one feature of its own.
MIN_SIDE_STRIDES = 2.0


@dataclass(frozen=True)
class BoxTable:
    """The training boxes as the recipe sees them (ignore regions, i.e. crowd and difficult, left out).

    Attributes:
        widths, heights: ``(N,)`` int64 native image sizes.
        boxes: ``(G, 4)`` float64 xyxy pixels in the native images.
        labels: ``(G,)`` int64 contiguous class indices.
        image: ``(G,)`` int64 index of each box's image in ``widths``.
        class_names: the ``C`` names.
    """

    widths: np.ndarray
    heights: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    image: np.ndarray
    class_names: list[str]


def box_table(records: RecordSet) -> BoxTable:
    """Gather the records' image sizes and non-ignored boxes into flat arrays."""
    items = records.records
    keep = [~r.ignore for r in items]
    boxes = [r.boxes[k] for r, k in zip(items, keep, strict=True)]
    return BoxTable(
        widths=np.array([r.width for r in items], dtype=np.int64),
        heights=np.array([r.height for r in items], dtype=np.int64),
        boxes=np.concatenate(boxes).astype(np.float64) if items else np.zeros((0, 4)),
        labels=np.concatenate([r.labels[k] for r, k in zip(items, keep, strict=True)]) if items else np.zeros(0, int),
        image=np.repeat(np.arange(len(items)), [len(b) for b in boxes]).astype(np.int64),
        class_names=list(records.class_names),
    )


def resized_sizes(
    widths: np.ndarray, heights: np.ndarray, min_size: int, max_size: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """``(new_widths, new_heights)`` of ``DetectionTransform``'s resize, with torchvision's rounding.

    ``torchvision.transforms.v2.Resize(min_size, max_size=max_size)``: the shorter side becomes
    ``min_size`` and the longer ``int(min_size * long / short)``; if that exceeds ``max_size``, the longer
    side becomes ``max_size`` and the shorter ``int(max_size * min_size / new_long)``.
    """
    widths, heights = np.asarray(widths, np.float64), np.asarray(heights, np.float64)
    short, long = np.minimum(widths, heights), np.maximum(widths, heights)
    new_short = np.full_like(short, float(min_size))
    new_long = np.floor(min_size * long / short)
    if max_size is not None:
        capped = new_long > max_size
        new_short = np.where(capped, np.floor(max_size * new_short / new_long), new_short)
        new_long = np.where(capped, float(max_size), new_long)
    portrait = widths <= heights
    new_w = np.where(portrait, new_short, new_long).astype(np.int64)
    new_h = np.where(portrait, new_long, new_short).astype(np.int64)
    return new_w, new_h


def _resize_boxes(table: BoxTable, min_size: int, max_size: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The boxes after the resize, ``(G, 4)``, whether the transform keeps each one (it drops boxes under
    1 px, ``SanitizeBoundingBoxes``), and the resized image sizes ``(N, 2)`` as ``(width, height)``."""
    new_w, new_h = resized_sizes(table.widths, table.heights, min_size, max_size)
    fx = (new_w / table.widths)[table.image]
    fy = (new_h / table.heights)[table.image]
    boxes = table.boxes * np.stack((fx, fy, fx, fy), axis=1)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    kept = (w >= 1) & (h >= 1) & (w * h >= 1)
    return boxes, kept, np.stack((new_w, new_h), axis=1)


def _short_sides(boxes: np.ndarray) -> np.ndarray:
    return np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])


def target_object_side(model: dict[str, Any], strides: Sequence[int] = FPN_STRIDES) -> tuple[float, str]:
    """The smallest object side (px, after the resize) the recipe asks for, and why, for a resolved ``model``.

    RetinaNet: the side of the smallest square box that one of P3's anchors covers with IoU >= ``pos_iou``
    (MaxIoUAssigner's 0.5) wherever the box lies, i.e. with its centre half a stride off the nearest anchor
    centre in both directions (20 px with the digits preset's 16-px anchors, 23 px with the paper's 32 px).
    GFL: ATSS takes positives among the anchor points inside the box, and a box wider than the stride holds
    one wherever it lies; the ATSS paper's anchor-size ablation (sides of 5 to 9 strides) finds it robust to
    the prior's side, which therefore sets no further limit. Both at least ``MIN_SIDE_STRIDES`` strides of
    P3 (16 px).
    """
    stride = float(strides[0])
    floor = MIN_SIDE_STRIDES * stride
    if model["type"] == "gfl":
        return floor, f"GFL/ATSS: {MIN_SIDE_STRIDES:g} strides of P3"
    if model["type"] != "retinanet":
        return floor, f"{MIN_SIDE_STRIDES:g} strides of P3"
    pos_iou = float(model["assigner_args"].get("pos_iou", 0.5))
    generator = AnchorGenerator(model["anchor_sizes"], strides, model["anchor_ratios"], model["anchor_scales"])
    shapes = generator.base_anchors(0).numpy()
    aw, ah = shapes[:, 2] - shapes[:, 0], shapes[:, 3] - shapes[:, 1]
    sides = np.arange(1.0, 8 * float(aw.max()), 0.5)[:, None]
    half = stride / 2
    # box [-b/2, b/2]^2 against anchors centred at (half, half): overlap per axis
    ix = np.clip(np.minimum(sides / 2, half + aw / 2) - np.maximum(-sides / 2, half - aw / 2), 0, None)
    iy = np.clip(np.minimum(sides / 2, half + ah / 2) - np.maximum(-sides / 2, half - ah / 2), 0, None)
    inter = ix * iy
    iou = (inter / (sides**2 + aw * ah - inter)).max(axis=1)
    matched = np.flatnonzero(iou >= pos_iou)
    side = float(sides[matched[0], 0]) if matched.size else float(aw.min())
    return max(side, floor), f"RetinaNet: IoU >= {pos_iou:g} with a {model['anchor_sizes'][0]:g}-px P3 anchor anywhere"


@dataclass(frozen=True)
class SizeChoice:
    """What ``choose_input_size`` found: the sizes, the native size, the class that set them, the cap that bound."""

    min_size: int
    max_size: int
    native: int
    wanted: int
    binding_class: int | None
    cap: str | None


def _round_up(value: float, step: int) -> int:
    return int(math.ceil(value / step - 1e-9)) * step


def _batch_pixels(table: BoxTable, min_size: int, max_size: int, batch_size: int, size_divisible: int) -> int:
    """Pixels of the largest padded batch: the tallest and the widest resized image may share one."""
    new_w, new_h = resized_sizes(table.widths, table.heights, min_size, max_size)
    return batch_size * _round_up(int(new_h.max()), size_divisible) * _round_up(int(new_w.max()), size_divisible)


def _max_size_for(table: BoxTable, min_size: int) -> int:
    aspect = np.maximum(table.widths, table.heights) / np.minimum(table.widths, table.heights)
    return max(int(math.ceil(min_size * float(np.percentile(aspect, ASPECT_PERCENTILE)) - 1e-9)), min_size + 1)


def class_percentiles(table: BoxTable, sides: np.ndarray) -> dict[int, float]:
    """``{class: SMALL_PERCENTILE-th percentile of sides}`` for the classes that have boxes."""
    return {int(c): float(np.percentile(sides[table.labels == c], SMALL_PERCENTILE)) for c in np.unique(table.labels)}


def _small_sides(table: BoxTable, min_size: int, max_size: int | None = -1) -> dict[int, float]:
    """Each class's small box short side after the resize (``max_size=-1``: the recipe's for ``min_size``)."""
    boxes, _, _ = _resize_boxes(table, min_size, _max_size_for(table, min_size) if max_size == -1 else max_size)
    return class_percentiles(table, _short_sides(boxes))


def choose_input_size(table: BoxTable, target: float, batch_size: int, size_divisible: int) -> SizeChoice:
    """``min_size`` and ``max_size`` for ``table``: native, raised until every class's small boxes reach
    ``target`` px, at most ``MAX_UPSCALE`` x native and ``PIXELS_PER_BATCH`` (module docstring)."""
    short = np.minimum(table.widths, table.heights)
    native = int(np.median(short))
    aspect = float(np.percentile(np.maximum(table.widths, table.heights) / short, ASPECT_PERCENTILE))
    binding, wanted = None, float(native)
    if table.labels.size:
        # resized side per unit of min_size, with max_size = aspect * min_size
        per_unit = np.minimum(1.0 / short, aspect / np.maximum(table.widths, table.heights))[table.image]
        small = class_percentiles(table, _short_sides(table.boxes) * per_unit)
        binding = min(small, key=small.get)
        wanted = max(wanted, target / small[binding])
    size = _round_up(wanted, SIZE_STEP)
    # the estimate ignores the resize's rounding down: step up until the exact resize reaches the target
    while binding is not None and min(_small_sides(table, size).values()) < target and size < 2 * wanted:
        size += SIZE_STEP
    wanted, cap = size, None
    upscale_cap = max(SIZE_STEP, int(MAX_UPSCALE * native) // SIZE_STEP * SIZE_STEP)
    if size > upscale_cap:
        size, cap = upscale_cap, f"{MAX_UPSCALE:g}x the native size"
    while size > SIZE_STEP and (
        _batch_pixels(table, size, _max_size_for(table, size), batch_size, size_divisible) > PIXELS_PER_BATCH
    ):
        size -= SIZE_STEP
        cap = f"the memory budget of {PIXELS_PER_BATCH / 2**20:g} Mi padded pixels a batch"
    return SizeChoice(size, _max_size_for(table, size), native, wanted, binding, cap)


def anchor_best_iou(
    boxes: np.ndarray,
    canvas: np.ndarray,
    shapes: Sequence[np.ndarray],
    strides: Sequence[int],
) -> np.ndarray:
    """Each box's best IoU with any anchor of the grid: ``boxes: (G, 4)`` xyxy, ``canvas: (G, 2)`` the
    ``(height, width)`` the network sees for each box's image, ``shapes[l]: (A_l, 2)`` the anchor
    ``(width, height)`` of level ``l``, centred on ``(j * stride, i * stride)`` for ``j < ceil(width / stride)``.

    For fixed sizes the IoU of two boxes falls with the distance of their centres along each axis, so the
    best anchor of a shape is the one at the grid point nearest the box centre: ``O(G * A_l)`` per level
    instead of ``O(G * H * W * A_l)``. Returns ``(G,)`` float64.
    """
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    best = np.zeros(len(boxes))
    for shape, stride in zip(shapes, strides, strict=True):
        cells_y, cells_x = np.ceil(canvas[:, 0] / stride), np.ceil(canvas[:, 1] / stride)
        ax = np.clip(np.rint(cx / stride), 0, cells_x - 1)[:, None] * stride
        ay = np.clip(np.rint(cy / stride), 0, cells_y - 1)[:, None] * stride
        aw, ah = shape[None, :, 0], shape[None, :, 1]
        ix = np.minimum(boxes[:, 2:3], ax + aw / 2) - np.maximum(boxes[:, 0:1], ax - aw / 2)
        iy = np.minimum(boxes[:, 3:4], ay + ah / 2) - np.maximum(boxes[:, 1:2], ay - ah / 2)
        inter = np.clip(ix, 0, None) * np.clip(iy, 0, None)
        iou = inter / ((bw * bh)[:, None] + aw * ah - inter)
        best = np.maximum(best, iou.max(axis=1))
    return best


def atss_covered(
    boxes: np.ndarray,
    image: np.ndarray,
    canvases: np.ndarray,
    octave_base_scale: float,
    assigner_args: dict[str, Any],
    strides: Sequence[int] = FPN_STRIDES,
    images: Iterable[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Which boxes ATSS gives at least one positive, on GFL's priors (squares of ``octave_base_scale *
    stride``): ``boxes: (G, 4)`` resized, ``image: (G,)``, ``canvases: (N, 2)`` padded ``(height, width)``.

    ``images``: the image indices to run (default all). Images of one canvas run as one padded batch, as in
    training. Returns ``(covered, evaluated)``, both ``(G,)`` bool (``evaluated``: the box's image was run).
    """
    chosen = np.arange(len(canvases)) if images is None else np.fromiter(images, dtype=np.int64)
    covered = np.zeros(len(boxes), dtype=bool)
    evaluated = np.isin(image, chosen)
    assigner = ATSSAssigner(**{**assigner_args, "check_inputs": False})
    priors = PriorGenerator([octave_base_scale * s for s in strides], strides)
    order = np.flatnonzero(evaluated)
    keys = canvases[image[order]]
    for key in np.unique(keys, axis=0):
        rows = order[(keys == key).all(axis=1)]
        members, slot = np.unique(image[rows], return_inverse=True)
        counts = np.bincount(slot, minlength=len(members))
        # a box's place in its image's padded list: the rows of one image are contiguous, in image order
        position = np.arange(len(rows)) - (np.cumsum(counts) - counts)[slot]
        gt = torch.zeros(len(members), int(counts.max()), 4, dtype=torch.float64)
        labels = torch.full((len(members), int(counts.max())), -1, dtype=torch.long)
        gt[slot, position] = torch.from_numpy(boxes[rows])
        labels[slot, position] = 0
        level = priors(feature_map_sizes((int(key[0]), int(key[1])), strides), torch.device("cpu"))
        matched = assigner(level.anchors.double(), list(level.num_per_level), gt, labels, 1).matched
        hit = torch.zeros(len(members), labels.shape[1] + 1, dtype=torch.bool)
        hit.scatter_(1, (matched + 1).clamp(min=0), True)
        covered[rows] = hit[slot, position + 1].numpy()
    return covered, evaluated


@dataclass(frozen=True)
class Coverage:
    """A best possible recall: overall, per class, and how it was measured."""

    overall: float
    per_class: dict[int, float]
    how: str


def check_anchors(
    table: BoxTable, model: dict[str, Any], min_size: int, max_size: int | None, size_divisible: int
) -> Coverage:
    """The BPR of ``model``'s assigner on ``table`` resized to ``(min_size, max_size)`` (module docstring).

    A box the transform drops (under 1 px) counts as missed. GFL runs ATSS on at most ``BPR_IMAGES``
    images, evenly spaced. ``model["type"]`` is one of ``CHECKED_TYPES``.
    """
    boxes, kept, sizes = _resize_boxes(table, min_size, max_size)
    canvases = np.stack(
        [
            np.ceil(sizes[:, 1] / size_divisible) * size_divisible,
            np.ceil(sizes[:, 0] / size_divisible) * size_divisible,
        ],
        axis=1,
    ).astype(np.int64)
    if model["type"] == "retinanet":
        pos_iou = float(model["assigner_args"].get("pos_iou", 0.5))
        generator = AnchorGenerator(model["anchor_sizes"], FPN_STRIDES, model["anchor_ratios"], model["anchor_scales"])
        shapes = []
        for level in range(generator.num_levels):
            base = generator.base_anchors(level).numpy()
            shapes.append(np.stack((base[:, 2] - base[:, 0], base[:, 3] - base[:, 1]), axis=1))
        hit = anchor_best_iou(boxes, canvases[table.image], shapes, FPN_STRIDES) >= pos_iou
        measured = np.ones(len(boxes), dtype=bool)
        how = f"best anchor IoU >= {pos_iou:g}"
    else:
        count = len(table.widths)
        sample = np.unique(np.linspace(0, count - 1, min(count, BPR_IMAGES)).round().astype(np.int64))
        hit, measured = atss_covered(
            boxes, table.image, canvases, float(model["octave_base_scale"]), model["assigner_args"], images=sample
        )
        how = "ATSS positives" + (f", {len(sample)} of {count} images" if len(sample) < count else "")
    hit &= kept
    overall = float(hit[measured].mean()) if measured.any() else 1.0
    per_class = {int(c): float(hit[measured & (table.labels == c)].mean()) for c in np.unique(table.labels[measured])}
    return Coverage(overall, per_class, how)


def explicit_keys(overrides: Sequence[str]) -> set[str]:
    """``{"section.key", ...}`` set by ``--set`` (``model.box_loss_args.beta=...`` gives ``model.box_loss_args``)."""
    return {f"{section}.{key}" for section, key, _ in map(parse_override, overrides)}


def choose_schedule(num_images: int, train: dict[str, Any], explicit: set[str]) -> tuple[dict[str, Any], list[str]]:
    """Epochs, warm-up, milestones and evaluation interval for ``num_images`` training images.

    ``train``: the configuration's ``train`` section (its ``epochs`` is the least the recipe runs, its
    ``warmup_iters`` the longest warm-up). Keys in ``explicit`` (``"train.epochs"``, ...) are kept. Returns
    the values of the ``train`` section and the lines that explain them.
    """
    steps = len(epoch_batches(num_images, train["batch_size"], train["seed"], 0))
    lines = []
    epochs = max(int(train["epochs"]), math.ceil(MIN_STEPS / steps))
    if "train.epochs" in explicit:
        lines.append(_kept("train.epochs", train["epochs"], epochs))
        epochs = int(train["epochs"])
    total = epochs * steps
    warmup = min(int(train["warmup_iters"]), int(total * WARMUP_SHARE))
    if "train.warmup_iters" in explicit:
        lines.append(_kept("train.warmup_iters", train["warmup_iters"], warmup))
        warmup = int(train["warmup_iters"])
    # whole epochs once there are 12 or more (a shift of at most 1/24 of the run), else fractions of one
    milestones = [round(f * epochs) if epochs >= 12 else _number(round(f * epochs, 2)) for f in DECAY_AT]
    if "train.milestones" in explicit:
        lines.append(_kept("train.milestones", train["milestones"], milestones))
        milestones = train["milestones"]
    interval = max(1, math.ceil(epochs / EVALUATIONS))
    if "train.eval_interval" in explicit:
        lines.append(_kept("train.eval_interval", train["eval_interval"], interval))
        interval = train["eval_interval"]
    share = warmup / total if total else 0.0
    floor = "" if "train.epochs" in explicit else f" (at least {MIN_STEPS})"
    summary = (
        f"recipe: {num_images} images / batch {train['batch_size']} = {_count(steps, 'step')} an epoch; "
        f"{_count(epochs, 'epoch')} = "
        f"{total} steps{floor}; warm-up {warmup} steps ({share:.0%} of the run); "
        f"lr x{train['lr_decay']:g} at epochs {', '.join(f'{m:g}' for m in milestones or [])}; "
        f"evaluation every {_count(interval, 'epoch')}"
    )
    if total < MIN_STEPS:
        lines.append(f"recipe: warning: {total} steps is fewer than the {MIN_STEPS} the recipe asks for")
    if share > WARMUP_SHARE:
        lines.append(f"recipe: warning: the warm-up takes {share:.0%} of the run (the recipe keeps it <= 10%)")
    values = {"epochs": epochs, "warmup_iters": warmup, "milestones": milestones, "eval_interval": interval}
    return values, [summary, *lines]


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def _kept(key: str, given: Any, chosen: Any) -> str:
    return f"recipe: {key}={given} kept from --set (the recipe would choose {chosen})"


def _sizes(sizes: Sequence[float]) -> str:
    return "[" + ", ".join(f"{s:g}" for s in sizes) + "]"


def _names(table: BoxTable, values: dict[int, float], unit: str = "", fmt: str = ".0f") -> str:
    return ", ".join(f"'{table.class_names[c]}' {v:{fmt}}{unit}" for c, v in sorted(values.items(), key=lambda x: x[1]))


def input_size(
    table: BoxTable, model: dict[str, Any], data: dict[str, Any], batch_size: int, explicit: set[str]
) -> tuple[SizeChoice, int | None, int | None, list[str]]:
    """The recipe's ``SizeChoice`` for ``model``, the ``(min_size, max_size)`` to train with (``data``'s own
    where they are in ``explicit``; a ``max_size`` to go with an explicit ``min_size``), and the lines saying
    which keys were kept."""
    choice = choose_input_size(table, target_object_side(model)[0], batch_size, int(data["size_divisible"]))
    min_size, max_size, lines = choice.min_size, choice.max_size, []
    if "data.min_size" in explicit:
        lines.append(_kept("data.min_size", data["min_size"], min_size))
        min_size = data["min_size"]
        max_size = _max_size_for(table, min_size) if min_size is not None else None
    if "data.max_size" in explicit:
        lines.append(_kept("data.max_size", data["max_size"], max_size))
        max_size = data["max_size"]
        if "data.min_size" not in explicit and max_size is not None and min_size >= max_size:
            min_size = max_size - 1  # the resize needs max_size > min_size
    return choice, min_size, max_size, lines


def fit_retinanet_anchors(
    table: BoxTable, model: dict[str, Any], data: dict[str, Any], batch_size: int, explicit: set[str]
) -> list[tuple[list[float], float]]:
    """RetinaNet's candidate anchor sizes with their BPR, each at the input size the recipe gives it: the
    configured sizes, then the same halved (2 strides of P3 instead of the paper's 4: the digits preset's).
    The first of highest BPR wins (``fit_recipe``)."""
    options = []
    for sizes in (list(model["anchor_sizes"]), [s / 2 for s in model["anchor_sizes"]]):
        candidate = {**model, "anchor_sizes": sizes}
        _, min_size, max_size, _ = input_size(table, candidate, data, batch_size, explicit)
        coverage = check_anchors(table, candidate, min_size, max_size, int(data["size_divisible"]))
        options.append((sizes, coverage.overall))
    return options


def fit_recipe(config: dict[str, Any], spec: DataSpec, explicit: set[str]) -> tuple[dict[str, Any], list[str]]:
    """``config`` with the recipe's input size, anchors (RetinaNet) and schedule for ``spec``'s training split.

    Args:
        config: a loaded configuration (``load_config``; typically the ``user_data`` preset with ``--set``).
        spec: the dataset; its ``train`` split is read (errors name the file and the record, as in training).
        explicit: the ``section.key`` names the user set (``explicit_keys``): kept as given.

    Returns:
        The new configuration (a copy) and the lines to print at the start of training.
    """
    config = copy.deepcopy(config)
    data, train, model = config["data"], config["train"], config["model"]
    with warnings.catch_warnings():
        # training reads the split again and reports the dropped records there
        warnings.simplefilter("ignore", BadRecordWarning)
        records = spec.load("train", skip_bad=data["skip_bad"])
    if not records.records:
        raise ValueError(f"dataset {data['dataset']}: the training split has no images")
    table = box_table(records)
    counts = np.bincount(table.labels, minlength=len(table.class_names))
    rarest = f" (fewest: '{table.class_names[int(counts.argmin())]}', {int(counts.min())})" if counts.size > 1 else ""
    lines = [
        f"recipe: {len(table.widths)} training images, {len(table.labels)} boxes, "
        f"{len(table.class_names)} classes{rarest}"
    ]
    batch_size, divisible = int(train["batch_size"]), int(data["size_divisible"])
    anchor_line = None
    if model["type"] == "retinanet" and "model.anchor_sizes" not in explicit and table.labels.size:
        options = fit_retinanet_anchors(table, model, data, batch_size, explicit)
        sizes, _ = max(options, key=lambda option: option[1])  # max keeps the first of equal BPR
        (preset, preset_bpr), (half, half_bpr) = options
        verdict = "the configured ones" if sizes == preset else "half the configured ones"
        anchor_line = (
            f"recipe: model.anchor_sizes {_sizes(sizes)}: {verdict} (BPR {preset_bpr:.1%} with {_sizes(preset)}, "
            f"{half_bpr:.1%} with {_sizes(half)}, each at its input size)"
        )
        model["anchor_sizes"] = [_number(s) for s in sizes]
    choice, min_size, max_size, kept = input_size(table, model, data, batch_size, explicit)
    data["min_size"], data["max_size"] = min_size, max_size
    target, why = target_object_side(model)
    lines += kept
    lines.append(_size_line(table, choice, target, why, min_size, max_size, batch_size, divisible))
    if anchor_line:
        lines.append(anchor_line)
    if model["type"] not in CHECKED_TYPES:
        lines.append(f"recipe: no anchor check for model type {model['type']!r} (only {', '.join(CHECKED_TYPES)})")
    elif table.labels.size and min_size is not None:
        coverage = check_anchors(table, model, min_size, max_size, divisible)
        lines.append(
            f"recipe: anchors cover {coverage.overall:.1%} of the boxes ({coverage.how}; by class "
            f"{_names(table, {c: 100 * v for c, v in coverage.per_class.items()}, '%', '.1f')})"
        )
        low = {c: v for c, v in coverage.per_class.items() if v < MIN_BPR}
        if coverage.overall < MIN_BPR or low:
            hint = "model.anchor_sizes" if model["type"] == "retinanet" else "a larger data.min_size"
            lines.append(
                f"recipe: warning: best possible recall below {MIN_BPR:.0%}"
                + (f" for {_names(table, {c: 100 * v for c, v in low.items()}, '%', '.1f')}" if low else "")
                + f": those boxes get no positive of their own (try {hint})"
            )
    values, schedule = choose_schedule(len(table.widths), train, explicit)
    train.update(values)
    lines += schedule
    return config, lines


def _size_line(
    table: BoxTable,
    choice: SizeChoice,
    target: float,
    why: str,
    min_size: int | None,
    max_size: int | None,
    batch_size: int,
    divisible: int,
) -> str:
    """``recipe: smallest boxes ... -> data.min_size ..., data.max_size ...`` and the caps that bound."""
    if not table.labels.size or min_size is None:
        return f"recipe: no boxes to size: data.min_size {min_size}, data.max_size {max_size} (the native size)"
    native_small = class_percentiles(table, _short_sides(table.boxes))
    resized_small = _small_sides(table, min_size, max_size)
    worst = choice.binding_class
    text = (
        f"recipe: smallest boxes {native_small[worst]:.0f} px (class '{table.class_names[worst]}', "
        f"{SMALL_PERCENTILE:g}th percentile of the short sides; by class {_names(table, native_small, ' px')}) "
        f"in images of {choice.native} px (median shorter side); objects need >= {target:g} px ({why}) -> "
        f"data.min_size {min_size}, data.max_size {max_size}: '{table.class_names[worst]}' at "
        f"{resized_small[worst]:.0f} px"
    )
    pixels = _batch_pixels(table, min_size, max_size, batch_size, divisible) if max_size else None
    if pixels:
        text += f"; {batch_size} padded images = {pixels / 2**20:.1f} Mi pixels a batch"
    short = {c: v for c, v in resized_small.items() if v < target}
    if short:
        if min_size != choice.min_size:
            reason = "data.min_size from --set"
        elif choice.cap:
            reason = f"capped at {choice.cap}, the classes wanted {choice.wanted}"
            if choice.cap.startswith("the memory budget"):
                reason += "; a smaller train.batch_size allows a larger size"
        else:
            reason = "data.max_size from --set"
        text += f"; {_names(table, short, ' px')} stay below {target:g} px ({reason})"
    return text
