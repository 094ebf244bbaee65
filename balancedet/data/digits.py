"""The built-in dataset "digits": cluttered scenes of real handwritten digits, generated offline.

Each scene is a canvas (default 128 x 128 RGB) holding 1 to 6 digits taken from scikit-learn's
bundled handwritten digits (``sklearn.datasets.load_digits``: 1797 real 8 x 8 scans, no download),
upscaled bicubically to 14-56 px tall (so they are smooth, not blocky), with random aspect,
colour, contrast and position; objects overlap little (IoU below ``max_iou``, and at most 40% of
the smaller box covered). The background is dark, coloured, with a low-frequency texture, faint
clutter strokes and pixel noise. Distractors are drawn as hard negatives and are *not* annotated:
straight strokes, arcs, and fragments of other digits (a half or a corner of a scan) in the same
colours and sizes as the digits. With ``invert_fraction`` a share of the scenes is inverted (dark
digits on a bright background).

The 10 classes are "0".."9" (COCO category ids 1..10). ``imbalance`` makes the training split
long-tailed: class ``k`` is drawn with probability proportional to ``imbalance ** (-k / 9)``, so
"0" is ``imbalance`` times as frequent as "9"; the validation split uses ``val_imbalance``
(balanced by default, so that every class's AP is measured on enough boxes). The scans of each
class are split once (``val_fraction`` of them to validation): training and validation scenes,
distractor fragments included, never share a scan.

Everything is a function of the options: the same options give byte-identical json and pixels.
``prepare_digits`` writes the PNGs, a COCO json per split and a ``data.yaml`` into a cache folder
named by a hash of the options, atomically (a temporary folder renamed at the end), and reuses it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing
import os
import shutil
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw

__all__ = [
    "DIGITS_CLASSES",
    "DigitsOptions",
    "class_probabilities",
    "default_cache_root",
    "digit_indices",
    "digit_sources",
    "prepare_digits",
    "render_scene",
]

DIGITS_VERSION = 1
"""Bumped whenever the generator changes what it draws, so that stale caches are not reused."""

DIGITS_CLASSES = [str(digit) for digit in range(10)]

_SPLIT_CODES = {"train": 0, "val": 1}
_SUPERSAMPLE = 4
_FRAGMENT_SHAPES = ((4, 8), (3, 8), (4, 5), (5, 4), (4, 4))  # at most half a scan


@dataclass(frozen=True)
class DigitsOptions:
    """What a digits dataset is made of; every field takes part in the cache folder's name.

    Attributes:
        seed: seed of every random choice (numpy ``Generator``).
        num_train, num_val: scenes per split.
        image_size: canvas side in pixels.
        objects: ``(min, max)`` annotated digits per scene, drawn uniformly (fewer if they do not fit).
        object_size: ``(min, max)`` digit height in pixels, drawn log-uniformly.
        max_iou: largest IoU allowed between two annotated digits.
        distractors: ``(min, max)`` unannotated strokes, arcs and digit fragments per scene.
        imbalance: training class frequency ratio, most ("0") to least ("9") frequent; 1 is balanced.
        val_imbalance: the same for the validation split.
        invert_fraction: share of scenes inverted to dark digits on a bright background.
        val_fraction: share of each class's scans reserved for validation scenes.
    """

    seed: int = 0
    num_train: int = 3000
    num_val: int = 300
    image_size: int = 128
    objects: tuple[int, int] = (1, 6)
    object_size: tuple[float, float] = (14.0, 56.0)
    max_iou: float = 0.3
    distractors: tuple[int, int] = (1, 5)
    imbalance: float = 1.0
    val_imbalance: float = 1.0
    invert_fraction: float = 0.0
    val_fraction: float = 0.25

    def __post_init__(self) -> None:
        # Normalise types (YAML gives lists and ints) so that equal options hash alike.
        for name, kind in (("objects", int), ("object_size", float), ("distractors", int)):
            value = tuple(kind(v) for v in getattr(self, name))
            if len(value) != 2 or value[0] > value[1] or value[0] < 0:
                raise ValueError(f"digits option {name} must be (min, max) with 0 <= min <= max, got {value!r}")
            object.__setattr__(self, name, value)
        for name in ("seed", "num_train", "num_val", "image_size"):
            object.__setattr__(self, name, int(getattr(self, name)))
        for name in ("max_iou", "imbalance", "val_imbalance", "invert_fraction", "val_fraction"):
            object.__setattr__(self, name, float(getattr(self, name)))
        if self.object_size[0] < 4 or self.object_size[1] > self.image_size:
            raise ValueError(f"digits option object_size {self.object_size} must lie in [4, image_size]")
        if self.num_train < 0 or self.num_val < 0 or self.image_size < 16:
            raise ValueError(f"digits options need num_train, num_val >= 0 and image_size >= 16, got {self!r}")
        if self.imbalance < 1 or self.val_imbalance < 1:
            raise ValueError(f"digits imbalance ratios must be >= 1, got {self.imbalance}, {self.val_imbalance}")
        if not 0 < self.val_fraction < 1 or not 0 <= self.invert_fraction <= 1 or not 0 < self.max_iou <= 1:
            raise ValueError(f"digits options out of range: {self!r}")

    def key(self) -> str:
        """Short hash of the options and the generator version: the cache folder's suffix."""
        text = json.dumps({"version": DIGITS_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:12]


def default_cache_root() -> Path:
    """``$BALANCEDET_CACHE`` if set, else ``~/.cache/balancedet``."""
    return Path(os.environ.get("BALANCEDET_CACHE") or Path.home() / ".cache" / "balancedet")


def class_probabilities(imbalance: float, num_classes: int = 10) -> np.ndarray:
    """``(C,)`` exponential long-tail profile: ``p_k`` proportional to ``imbalance ** (-k / (C - 1))``."""
    weights = float(imbalance) ** (-np.arange(num_classes) / max(num_classes - 1, 1))
    return weights / weights.sum()


def digit_indices(seed: int, val_fraction: float, targets: np.ndarray) -> dict[str, list[np.ndarray]]:
    """Split the scans: ``{split: [sorted indices of class k's scans]}``, train and val disjoint.

    Args:
        seed: shuffles each class's scans before ``val_fraction`` of them (at least one) go to val.
        val_fraction: share of each class for validation.
        targets: ``(N,)`` class of every scan (``load_digits().target``).
    """
    rng = np.random.default_rng([seed, 7])
    split: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    for digit in range(10):
        indices = rng.permutation(np.flatnonzero(targets == digit))
        num_val = max(1, int(round(len(indices) * val_fraction)))
        split["val"].append(np.sort(indices[:num_val]))
        split["train"].append(np.sort(indices[num_val:]))
    return split


def digit_sources(seed: int, val_fraction: float) -> dict[str, list[np.ndarray]]:
    """The scans each split may use: ``{split: [class k's scans as (n_k, 8, 8) float32 in [0, 1]]}``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    split = digit_indices(seed, val_fraction, digits.target)
    return {name: [images[indices] for indices in per_class] for name, per_class in split.items()}


def _resize(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bicubic resize of a 2-D float32 array (PIL mode ``F``), clipped to [0, 1]."""
    image = Image.fromarray(array, mode="F").resize((width, height), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(image), 0.0, 1.0)


def _glyph(scan: np.ndarray, height: int, width: int) -> np.ndarray:
    """Alpha ``(h, w)`` of an 8 x 8 scan (a one-pixel empty border added) upscaled to ``height x width``.

    A contrast curve turns the bicubic blur into strokes with soft, antialiased edges.
    """
    padded = np.zeros((scan.shape[0] + 2, scan.shape[1] + 2), dtype=np.float32)
    padded[1:-1, 1:-1] = scan
    grown = _resize(padded, max(3, round(height * 10 / 8)), max(3, round(width * 10 / 8)))
    return np.clip((grown - 0.2) * 2.5, 0.0, 1.0)


def _stroke(
    rng: np.random.Generator, size: int, arc: bool, width: float, supersample: int = _SUPERSAMPLE
) -> np.ndarray:
    """Intensity ``(size, size)`` in [0, 1] of one straight stroke or arc with round ends.

    Drawn ``supersample`` times larger then reduced, so its edges are antialiased; ``width`` is the
    stroke width as a fraction of ``size``.
    """
    big = size * supersample
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    pen = max(1.0, big * width)
    margin = pen / 2 + 1
    if arc:
        w, h = rng.uniform(0.4, 1.0, 2) * (big - 2 * margin)
        left, top = margin + rng.uniform(0, big - 2 * margin - w), margin + rng.uniform(0, big - 2 * margin - h)
        start = rng.uniform(0, 360)
        draw.arc([left, top, left + w, top + h], start, start + rng.uniform(60, 220), fill=255, width=round(pen))
    else:
        # Never near vertical, so that a stroke cannot pass for a "1".
        angle = np.deg2rad(rng.uniform(-50, 50))
        half = rng.uniform(0.25, 0.5) * (big - 2 * margin)
        dx, dy = half * np.cos(angle), half * np.sin(angle)
        cx = rng.uniform(margin + abs(dx), big - margin - abs(dx))
        cy = rng.uniform(margin + abs(dy), big - margin - abs(dy))
        x0, y0, x1, y1 = cx - dx, cy - dy, cx + dx, cy + dy
        draw.line([x0, y0, x1, y1], fill=255, width=round(pen))
        for x, y in ((x0, y0), (x1, y1)):
            draw.ellipse([x - pen / 2, y - pen / 2, x + pen / 2, y + pen / 2], fill=255)
    return np.asarray(canvas.reduce(supersample), dtype=np.float32) / 255.0


def _fragment(rng: np.random.Generator, scan: np.ndarray, height: int) -> np.ndarray:
    """Alpha of a piece of a scan (at most half of it), at the scale a ``height``-px digit would have."""
    rows, cols = _FRAGMENT_SHAPES[rng.integers(len(_FRAGMENT_SHAPES))]
    top, left = rng.integers(0, 9 - rows), rng.integers(0, 9 - cols)
    piece = scan[top : top + rows, left : left + cols]
    scale = height / 8
    return _glyph(piece, round(rows * scale), round(cols * scale))


def _tight_box(alpha: np.ndarray, threshold: float = 0.3) -> tuple[int, int, int, int] | None:
    """``(x1, y1, x2, y2)`` of the pixels with ``alpha > threshold`` (pixel-edge coordinates), or None."""
    rows = np.flatnonzero(alpha.max(axis=1) > threshold)
    cols = np.flatnonzero(alpha.max(axis=0) > threshold)
    if rows.size == 0 or cols.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _overlaps(box: np.ndarray, boxes: list[np.ndarray], max_iou: float, max_cover: float) -> bool:
    """Whether ``box`` has IoU >= max_iou with one of ``boxes``, or covers >= max_cover of the smaller one."""
    if not boxes:
        return False
    others = np.stack(boxes)
    width = np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0])
    height = np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1])
    inter = np.clip(width, 0, None) * np.clip(height, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    iou = inter / (area + areas - inter)
    cover = inter / np.minimum(area, areas)
    return bool((iou >= max_iou).any() or (cover >= max_cover).any())


def _paint(canvas: np.ndarray, alpha: np.ndarray, top: int, left: int, colour: np.ndarray) -> None:
    """Alpha-blend ``colour`` into ``canvas (H, W, 3)`` through ``alpha (h, w)`` placed at ``(top, left)``."""
    h, w = alpha.shape
    region = canvas[top : top + h, left : left + w]
    a = alpha[:, :, None]
    region *= 1.0 - a
    region += a * colour


@functools.lru_cache(maxsize=8)
def _smooth_basis(size: int, knots: int) -> np.ndarray:
    """``(size, knots)`` Gaussian interpolation weights (rows sum to 1): ``basis @ grid`` is a smooth curve."""
    position = np.linspace(0.0, knots - 1.0, size)[:, None]
    weights = np.exp(-0.5 * ((position - np.arange(knots)[None, :]) / 0.6) ** 2)
    basis = (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)
    basis.flags.writeable = False
    return basis


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """``(S, S, 3)`` float32: a dark colour, a smooth low-frequency texture and faint clutter strokes."""
    base = rng.uniform(0.0, 0.3, 3).astype(np.float32)
    grid = rng.uniform(-1.0, 1.0, (5, 5, 3)).astype(np.float32) * np.float32(rng.uniform(0.03, 0.12))
    basis = _smooth_basis(size, 5)
    texture = np.tensordot(np.tensordot(basis, grid, axes=(1, 0)), basis, axes=(1, 1))  # (S, 3, S)
    canvas = base + texture.transpose(0, 2, 1)
    for _ in range(rng.integers(0, 4)):
        clutter = _stroke(rng, size, arc=bool(rng.integers(2)), width=rng.uniform(0.03, 0.15), supersample=2)
        x1, y1, x2, y2 = _tight_box(clutter, 0.0) or (0, 0, 0, 0)
        opacity, colour = np.float32(rng.uniform(0.05, 0.2)), rng.uniform(0.3, 0.8, 3).astype(np.float32)
        _paint(canvas, clutter[y1:y2, x1:x2] * opacity, y1, x1, colour)
    return canvas


def _place(
    rng: np.random.Generator,
    canvas: np.ndarray,
    alpha: np.ndarray,
    boxes: list[np.ndarray],
    max_iou: float,
    max_cover: float,
    attempts: int = 10,
) -> np.ndarray | None:
    """Paint ``alpha`` in a random colour at a random place where its ink box overlaps ``boxes`` little.

    Returns the ink box ``(4,) float32`` xyxy, or ``None`` when no place was found in ``attempts`` draws.
    """
    size = canvas.shape[0]
    alpha = alpha[:size, :size]
    tight = _tight_box(alpha)
    if tight is None:
        return None
    for _ in range(attempts):
        top = int(rng.integers(0, size - alpha.shape[0] + 1))
        left = int(rng.integers(0, size - alpha.shape[1] + 1))
        box = np.array([left + tight[0], top + tight[1], left + tight[2], top + tight[3]], dtype=np.float32)
        if not _overlaps(box, boxes, max_iou, max_cover):
            colour = rng.uniform(0.55, 1.0, 3).astype(np.float32)
            _paint(canvas, alpha * np.float32(rng.uniform(0.75, 1.0)), top, left, colour)
            return box
    return None


def render_scene(
    rng: np.random.Generator,
    sources: list[np.ndarray],
    probabilities: np.ndarray,
    options: DigitsOptions,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one scene.

    Args:
        rng: the scene's generator.
        sources: per class, the scans it may use, ``(n_k, 8, 8)`` float32 in [0, 1].
        probabilities: ``(10,)`` class probabilities of the annotated digits.
        options: sizes, counts and overlap limits.

    Returns:
        ``image (S, S, 3) uint8``, ``boxes (G, 4) float32`` xyxy pixels (tight around the ink),
        ``labels (G,) int64`` in 0..9.
    """
    size = options.image_size
    canvas = _background(rng, size)
    low, high = np.log(options.object_size)
    boxes: list[np.ndarray] = []
    labels: list[int] = []
    for _ in range(rng.integers(options.objects[0], options.objects[1] + 1)):
        label = int(rng.choice(10, p=probabilities))
        scan = sources[label][rng.integers(len(sources[label]))]
        height = float(np.exp(rng.uniform(low, high)))
        alpha = _glyph(scan, round(height), round(height * rng.uniform(0.75, 1.15)))
        box = _place(rng, canvas, alpha, boxes, options.max_iou, 0.4)
        if box is not None:
            boxes.append(box)
            labels.append(label)
    for _ in range(rng.integers(options.distractors[0], options.distractors[1] + 1)):
        side = round(float(np.exp(rng.uniform(low, high))))
        kind = rng.integers(3)
        if kind == 2:
            source = sources[rng.integers(10)]
            alpha = _fragment(rng, source[rng.integers(len(source))], side)
        else:
            alpha = _glyph(_stroke(rng, 8, arc=bool(kind), width=rng.uniform(0.2, 0.3)), side, side)
        _place(rng, canvas, alpha, boxes, 0.05, 0.1)
    canvas += rng.standard_normal((size, size, 1), dtype=np.float32) * np.float32(rng.uniform(0.005, 0.025))
    if rng.uniform() < options.invert_fraction:
        canvas = 1.0 - canvas
    image = (np.clip(canvas, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return image, np.asarray(boxes, dtype=np.float32).reshape(-1, 4), np.asarray(labels, dtype=np.int64)


def _render_chunk(
    image_dir: Path, split: str, options: DigitsOptions, sources: list[np.ndarray], indices: range
) -> list[tuple[list[list[float]], list[int]]]:
    """Render and save the scenes ``indices`` of a split; return each one's boxes and labels."""
    probabilities = class_probabilities(options.imbalance if split == "train" else options.val_imbalance)
    results = []
    for index in indices:
        rng = np.random.default_rng([options.seed, _SPLIT_CODES[split], index])
        pixels, boxes, labels = render_scene(rng, sources, probabilities, options)
        Image.fromarray(pixels).save(image_dir / f"{index:06d}.png", compress_level=1)
        results.append((boxes.tolist(), labels.tolist()))
    return results


def _write_split(folder: Path, split: str, options: DigitsOptions, sources: list[np.ndarray], workers: int) -> None:
    """Render the scenes of one split into ``folder/images/<split>/`` and ``folder/<split>.json``.

    Each scene has its own generator, seeded by ``(seed, split, index)``, so the result does not
    depend on ``workers`` (processes sharing the rendering).
    """
    count = options.num_train if split == "train" else options.num_val
    image_dir = folder / "images" / split
    image_dir.mkdir(parents=True)
    step = max(1, -(-count // (4 * workers)))
    chunks = [range(start, min(start + step, count)) for start in range(0, count, step)]
    if workers > 1 and len(chunks) > 1:
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = [pool.submit(_render_chunk, image_dir, split, options, sources, chunk) for chunk in chunks]
            scenes = [scene for future in futures for scene in future.result()]
    else:
        scenes = [scene for chunk in chunks for scene in _render_chunk(image_dir, split, options, sources, chunk)]
    images, annotations = [], []
    for index, (boxes, labels) in enumerate(scenes):
        image_id = index + 1
        name = f"{index:06d}.png"
        images.append({"id": image_id, "file_name": name, "width": options.image_size, "height": options.image_size})
        for (x1, y1, x2, y2), label in zip(boxes, labels, strict=True):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": label + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
    coco = {
        "info": {"description": f"balancedet digits, {split}", "version": DIGITS_VERSION, "options": asdict(options)},
        "licenses": [],
        "categories": [{"id": k + 1, "name": name, "supercategory": "digit"} for k, name in enumerate(DIGITS_CLASSES)],
        "images": images,
        "annotations": annotations,
    }
    (folder / f"{split}.json").write_text(json.dumps(coco), encoding="utf-8")


def prepare_digits(root: Path | str | None = None, *, workers: int | None = None, **options: object) -> Path:
    """Generate the digits dataset once and return its folder (reused when it exists).

    Args:
        root: cache root; ``None`` means ``$BALANCEDET_CACHE`` or ``~/.cache/balancedet``.
        workers: rendering processes (forked); ``None`` means the usable CPUs, at most 8. The output
            does not depend on it.
        **options: fields of ``DigitsOptions`` (seed=0, num_train=3000, num_val=300, image_size=128,
            objects=(1, 6), object_size=(14, 56), max_iou=0.3, distractors=(1, 5), imbalance=1,
            val_imbalance=1, invert_fraction=0, val_fraction=0.25).

    Returns:
        ``root/digits-<hash of options>`` holding ``data.yaml`` (format coco), ``train.json``,
        ``val.json``, ``options.json`` and ``images/{train,val}/*.png``. The folder appears only
        complete: it is written under a temporary name and renamed at the end, so a killed run leaves
        no half cache (only a hidden ``.digits-*.tmp-*`` folder that a later run ignores).
    """
    settings = DigitsOptions(**options)  # type: ignore[arg-type]
    if workers is None:
        workers = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 8)
    workers = max(1, workers)
    root = Path(root) if root is not None else default_cache_root()
    final = root / f"digits-{settings.key()}"
    if (final / "data.yaml").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    temporary = root / f".digits-{settings.key()}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    temporary.mkdir()
    try:
        sources = digit_sources(settings.seed, settings.val_fraction)
        for split in ("train", "val"):
            _write_split(temporary, split, settings, sources[split], workers)
        (temporary / "options.json").write_text(
            json.dumps({"version": DIGITS_VERSION, **asdict(settings)}, indent=2), encoding="utf-8"
        )
        spec = {
            "format": "coco",
            "train": {"images": "images/train", "annotations": "train.json"},
            "val": {"images": "images/val", "annotations": "val.json"},
            "names": DIGITS_CLASSES,
        }
        (temporary / "data.yaml").write_text(
            "# balancedet built-in digits scenes (generator options in options.json)\n"
            + yaml.safe_dump(spec, sort_keys=False, default_flow_style=None),
            encoding="utf-8",
        )
        try:
            temporary.rename(final)
        except OSError:
            if not (final / "data.yaml").is_file():
                raise
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)
    return final
