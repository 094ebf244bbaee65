"""``balancedet bench data``: indexing a large COCO json, and the training loader against the step.

Two questions, each answered in one table.

**Does a large COCO split index fast and lean?** A synthetic COCO detection json of ``--images``
images (default 100,000, COCO's train2017 is 118,287) is written into ``--workdir`` (default: a
temporary folder): COCO's field layout, image ids with gaps, 640-px long sides (three quarters
landscape), a negative-binomial number of boxes per image (mean ``--boxes-per-image`` 7, COCO's 7.3;
about 5% of the images without a box, a long tail to 100), box sizes log-uniform from 4 px to 90% of
the image, 1% ``iscrowd``, a long-tailed choice among 8 categories with COCO's ids (1..90 with gaps),
each box with a polygon ``segmentation`` of ``--vertices`` points (8; COCO's polygons have more) and its
area. ``width`` and ``height`` are in every image entry, so ``load_coco`` reads no image header; it still
checks that each image file exists (one ``stat`` per file for the first few of a folder, then one
listing of the folder), so every image gets a file, empty (the loader never opens it). Writing the
json and the files is timed apart from the load.

``load_coco`` then runs in a fresh process, so that nothing the parent holds counts; the child imports
only ``balancedet.data.coco`` (and with it torch, as every user of the loader does) and reads its own
peak resident set size after its imports, the baseline, and after the load. The peak is ``VmHWM`` of
``/proc/self/status``, the high-water mark of the child's own address space: its ``ru_maxrss`` (and the
parent's ``RUSAGE_CHILDREN``) would start at the parent's resident size, which Linux carries over the
fork and the exec (``ru_maxrss`` serves only where there is no ``/proc``). Reported: the load's wall
time, the absolute peak, its increase over the baseline, what stays resident after the load (and how
much of it the records themselves take), and the median time of ``records[i]`` over ``--reads`` random
indices (each ``ImageRecord`` is made when it is read). The goal, on a 2-core machine: under 10 s and
under 1 GiB above the baseline for 100,000 images. The counts the loader returns (images, boxes,
crowd boxes, boxes per category id) must equal the generated ones, or the benchmark fails. The json was
just written, so it is read from the page cache: the time is the parse's, not the disk's.

**Is the loader's time hidden behind the step?** For a preset (``--config``, default the one
``balancedet train`` uses) the training split is loaded as training loads it
(``balancedet.engine.data.load_split``) and read through the training loader
(``balancedet.engine.data.epoch_loader``) with ``train.workers`` set to each of ``--workers``
(0, 1, 2): ``--batches`` batches each, the first batch (worker start-up) apart from the mean of the
others. The model, optimiser and step are the trainer's (``build_model``, ``make_optimizer``,
``train_step``: forward, backward, optimiser step, on ``--device``), timed on one batch, the median of
``--steps`` after ``--warmup`` steps (the first, with the losses' compilation, shown apart). Then, for
each worker count above 0, the loader is iterated while a real step is done on every batch, and only
the wait in ``next(iterator)`` is timed: a wait near zero means the loading is hidden behind the step.
On a machine with few cores the workers compete with the step's threads, so the step's own time while
overlapped is reported too, and the sum of the two is the time a training step really takes.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from balancedet.bench.common import format_table, human_bytes, synchronize

GOAL_SECONDS = 10.0
GOAL_BYTES = 1 << 30
#: The images the goals are stated for.
GOAL_IMAGES = 100_000
#: Eight of COCO's categories, with their ids (COCO's 80 ids run from 1 to 90 with gaps).
CATEGORIES = {1: "person", 3: "car", 8: "truck", 18: "dog", 27: "backpack", 44: "bottle", 62: "chair", 90: "toothbrush"}
#: Dispersion of the negative binomial of boxes per image: variance = mean + mean**2 / 2.
BOXES_DISPERSION = 2.0
MAX_BOXES = 100
CROWD_FRACTION = 0.01
#: Rows formatted per ``%`` pass and written at once: bounds the text held while writing.
WRITE_CHUNK = 65_536
#: A wait below this share of the step counts as hidden behind it.
HIDDEN_SHARE = 0.05

# ---- part 1: indexing a large COCO json ----------------------------------------------------------


@dataclass
class SyntheticCoco:
    """What ``write_synthetic_coco`` wrote: the files, the counts the loader must return, the timings."""

    annotation_file: Path
    image_dir: Path
    images: int
    annotations: int
    crowd: int
    boxes_per_category: dict[int, int]
    json_bytes: int
    json_seconds: float
    files_seconds: float


def write_synthetic_coco(folder: Path, images: int, boxes_per_image: float, vertices: int, seed: int) -> SyntheticCoco:
    """Write ``folder/annotations.json`` and an empty file per image in ``folder/images`` (see the module
    docstring for what they hold). Every box lies inside its image and is at least 3.99 px wide and tall,
    so the loader keeps every one."""
    folder.mkdir(parents=True, exist_ok=True)
    image_dir = folder / "images"
    image_dir.mkdir(exist_ok=True)
    annotation_file = folder / "annotations.json"
    rng = np.random.default_rng(seed)

    start = time.perf_counter()
    image_ids = np.cumsum(rng.integers(1, 4, size=images))
    landscape = rng.random(images) < 0.75
    short = rng.integers(360, 641, size=images)
    widths = np.where(landscape, 640, short)
    heights = np.where(landscape, short, 640)
    counts = np.minimum(
        rng.negative_binomial(BOXES_DISPERSION, BOXES_DISPERSION / (BOXES_DISPERSION + boxes_per_image), size=images),
        MAX_BOXES,
    )
    owner = np.repeat(np.arange(images), counts)
    # COCO's annotations are not grouped by image: the loader's sort by image is part of the work
    owner = owner[rng.permutation(len(owner))]
    total = len(owner)
    image_w, image_h = widths[owner].astype(np.float64), heights[owner].astype(np.float64)
    w = np.exp(rng.uniform(math.log(4.0), np.log(0.9 * image_w)))
    h = np.clip(w * np.exp(rng.normal(0.0, 0.5, size=total)), 4.0, 0.9 * image_h)
    x = rng.random(total) * (image_w - w)
    y = rng.random(total) * (image_h - h)
    # two decimals as in COCO's files, rounded down: x + w stays inside the image
    x, y, w, h = (np.floor(v * 100.0) / 100.0 for v in (x, y, w, h))
    category_ids = np.array(sorted(CATEGORIES), dtype=np.int64)
    weights = 1.0 / np.arange(1, len(category_ids) + 1)
    categories = rng.choice(category_ids, size=total, p=weights / weights.sum())
    crowd = rng.random(total) < CROWD_FRACTION
    angles = 2.0 * np.pi * np.arange(vertices) / max(vertices, 1)
    polygon = np.empty((total, 2 * vertices))
    polygon[:, 0::2] = x[:, None] + w[:, None] / 2.0 * (1.0 + np.cos(angles))
    polygon[:, 1::2] = y[:, None] + h[:, None] / 2.0 * (1.0 + np.sin(angles))
    # the segment's area, as COCO gives it: the polygon inscribed in the box's ellipse
    areas = (vertices / 2.0) * math.sin(2.0 * math.pi / vertices) * (w / 2.0) * (h / 2.0) if vertices >= 3 else w * h

    image_format = (
        '{"license": %d, "file_name": "%012d.jpg", "coco_url": "http://images.cocodataset.org/train2017/%012d.jpg", '
        '"height": %d, "width": %d, "date_captured": "2013-11-14 16:28:13", "id": %d}'
    )
    segmentation = "[[" + ", ".join(["%.2f"] * (2 * vertices)) + "]]" if vertices else "[]"
    annotation_format = (
        '{"segmentation": ' + segmentation + ', "area": %.2f, "iscrowd": %d, "image_id": %d, '
        '"bbox": [%.2f, %.2f, %.2f, %.2f], "category_id": %d, "id": %d}'
    )
    image_rows = np.column_stack([rng.integers(1, 9, size=images), image_ids, image_ids, heights, widths, image_ids])
    annotation_rows = np.column_stack(
        [polygon, areas, crowd, image_ids[owner], x, y, w, h, categories, np.arange(1, total + 1)]
    )
    with open(annotation_file, "w", encoding="utf-8") as out:
        info = {"description": "balancedet bench data: synthetic COCO-style detection annotations", "version": "1.0"}
        out.write('{"info": ' + json.dumps(info) + ', "licenses": [], "images": [')
        _write_rows(out, image_format, image_rows)
        out.write('], "annotations": [')
        _write_rows(out, annotation_format, annotation_rows)
        entries = [{"supercategory": "object", "id": i, "name": n} for i, n in CATEGORIES.items()]
        out.write('], "categories": ' + json.dumps(entries) + "}")
    json_seconds = time.perf_counter() - start

    start = time.perf_counter()
    flags = os.O_CREAT | os.O_WRONLY | os.O_TRUNC
    root = str(image_dir)
    for image_id in image_ids.tolist():
        os.close(os.open(os.path.join(root, f"{image_id:012d}.jpg"), flags, 0o644))
    files_seconds = time.perf_counter() - start

    ids, per_category = np.unique(categories, return_counts=True)
    return SyntheticCoco(
        annotation_file=annotation_file,
        image_dir=image_dir,
        images=images,
        annotations=total,
        crowd=int(crowd.sum()),
        boxes_per_category={int(i): int(c) for i, c in zip(ids.tolist(), per_category.tolist(), strict=True)},
        json_bytes=annotation_file.stat().st_size,
        json_seconds=json_seconds,
        files_seconds=files_seconds,
    )


def _write_rows(out: Any, row_format: str, rows: np.ndarray) -> None:
    """``rows`` (float64; ``%d`` truncates the integral ones) formatted and joined by ``", "``."""
    for begin in range(0, len(rows), WRITE_CHUNK):
        text = ", ".join([row_format % tuple(row) for row in rows[begin : begin + WRITE_CHUNK].tolist()])
        out.write((", " if begin else "") + text)


#: The child that loads the json: it imports only the loader, so its baseline is what any user of
#: ``load_coco`` pays, and reports one json line on stdout.
_INDEX_CHILD = r"""
import json, random, resource, statistics, sys, time

def status_bytes(key):
    # VmHWM is the peak of this process's own address space; ru_maxrss would not do: Linux carries the
    # parent's resident size at the fork over the exec into it
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return -1

def peak_rss():
    peak = status_bytes("VmHWM")
    if peak >= 0:
        return peak
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB, macOS bytes

import numpy as np
from balancedet.data.coco import load_coco

annotation_file, image_dir, reads, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
baseline = peak_rss()
start = time.perf_counter()
record_set = load_coco(annotation_file, image_dir)
seconds = time.perf_counter() - start
peak, kept = peak_rss(), status_bytes("VmRSS")
records = record_set.records
rng = random.Random(seed)
times = []
for _ in range(reads):
    index = rng.randrange(len(records))
    begin = time.perf_counter_ns()
    records[index]
    times.append(time.perf_counter_ns() - begin)
if hasattr(records, "labels"):  # PackedRecords: the flat per-box arrays
    labels, crowd = records.labels, records.iscrowd
    lists = (records.files, records.widths, records.heights, records.image_ids)
    arrays = (records.starts, records.boxes, records.labels, records.iscrowd, records.difficult, records.areas)
    records_bytes = sum(a.nbytes for a in arrays) + sum(
        sys.getsizeof(values) + sum(map(sys.getsizeof, values)) for values in lists
    )
else:
    records_bytes = -1
    labels = np.concatenate([np.zeros(0, dtype=np.int64)] + [r.labels for r in records])
    crowd = np.concatenate([np.zeros(0, dtype=bool)] + [r.iscrowd for r in records])
per_label = np.bincount(labels, minlength=len(record_set.category_ids)).tolist()
print(json.dumps({
    "seconds": seconds,
    "baseline_rss": baseline,
    "peak_rss": peak,
    "kept_rss": kept,
    "records_bytes": records_bytes,
    "read_ns": statistics.median(times) if times else 0.0,
    "images": len(records),
    "boxes": int(len(labels)),
    "crowd": int(crowd.sum()),
    "category_ids": list(record_set.category_ids),
    "boxes_per_category": {str(c): n for c, n in zip(record_set.category_ids, per_label) if n},
}))
"""


@dataclass
class IndexLoad:
    """What the child measured and counted."""

    seconds: float
    baseline_rss: int
    peak_rss: int
    kept_rss: int
    records_bytes: int
    read_ns: float
    images: int
    boxes: int
    crowd: int
    category_ids: list[int]
    boxes_per_category: dict[int, int]

    @property
    def increase(self) -> int:
        return self.peak_rss - self.baseline_rss


def load_in_subprocess(generated: SyntheticCoco, reads: int, seed: int) -> IndexLoad:
    """Run ``load_coco`` on the generated files in a fresh interpreter; raise ``RuntimeError`` with its
    stderr if it fails."""
    command = [sys.executable, "-c", _INDEX_CHILD, str(generated.annotation_file), str(generated.image_dir)]
    done = subprocess.run([*command, str(reads), str(seed)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the load_coco child exited with {done.returncode}:\n{done.stderr.strip()}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    report["boxes_per_category"] = {int(k): int(v) for k, v in report["boxes_per_category"].items()}
    return IndexLoad(**report)


def count_mismatches(generated: SyntheticCoco, loaded: IndexLoad) -> list[str]:
    """What the loader returned that differs from what was generated (empty when all agree)."""
    problems = []
    for name in ("images", "crowd"):
        if getattr(generated, name) != getattr(loaded, name):
            problems.append(f"{name}: generated {getattr(generated, name)}, loaded {getattr(loaded, name)}")
    if generated.annotations != loaded.boxes:
        problems.append(f"boxes: generated {generated.annotations}, loaded {loaded.boxes}")
    if loaded.category_ids != sorted(CATEGORIES):
        problems.append(f"category ids: generated {sorted(CATEGORIES)}, loaded {loaded.category_ids}")
    if generated.boxes_per_category != loaded.boxes_per_category:
        problems.append(
            f"boxes per category id: generated {generated.boxes_per_category}, loaded {loaded.boxes_per_category}"
        )
    return problems


def index_rows(generated: SyntheticCoco, loaded: IndexLoad, problems: list[str]) -> list[list[str]]:
    if generated.images == GOAL_IMAGES:
        seconds_goal = f"< {GOAL_SECONDS:g} s: {'met' if loaded.seconds < GOAL_SECONDS else 'MISSED'}"
        bytes_goal = f"< {human_bytes(GOAL_BYTES)}: {'met' if loaded.increase < GOAL_BYTES else 'MISSED'}"
    else:  # a fixed cost (the imports, the first pass) does not scale: no goal at other sizes
        seconds_goal = bytes_goal = f"- (goal at {GOAL_IMAGES} images)"
    mean = generated.annotations / max(generated.images, 1)
    return [
        ["images (generated / loaded)", f"{generated.images} / {loaded.images}", "equal"],
        ["boxes (generated / loaded)", f"{generated.annotations} / {loaded.boxes} ({mean:.2f} per image)", "equal"],
        ["crowd boxes (generated / loaded)", f"{generated.crowd} / {loaded.crowd}", "equal"],
        ["json on disk", human_bytes(generated.json_bytes), "-"],
        ["writing the json (not in the load)", f"{generated.json_seconds:.1f} s", "-"],
        [f"creating {generated.images} empty image files (not in the load)", f"{generated.files_seconds:.1f} s", "-"],
        ["load_coco wall time (fresh process)", f"{loaded.seconds:.2f} s", seconds_goal],
        ["peak RSS of the child", human_bytes(loaded.peak_rss), "-"],
        ["  import-only baseline (torch included)", human_bytes(loaded.baseline_rss), "-"],
        ["  peak increase over the baseline", human_bytes(loaded.increase), bytes_goal],
        ["RSS still held after the load", _size(loaded.kept_rss), "-"],
        ["  of which the records (arrays, lists, strings)", _size(loaded.records_bytes), "-"],
        ["records[i], median of random reads", f"{loaded.read_ns / 1e3:.1f} us", "-"],
        ["counts check", "ok" if not problems else "FAILED", "loaded = generated"],
    ]


def _size(n: int) -> str:
    return human_bytes(n) if n >= 0 else "n/a"


def run_index(
    workdir: Path | None, images: int, boxes_per_image: float, vertices: int, reads: int, seed: int
) -> tuple[SyntheticCoco, IndexLoad, list[str]]:
    """Generate (into ``workdir``, kept, or a temporary folder, removed), load in a child, compare."""
    if workdir is not None:
        generated = write_synthetic_coco(Path(workdir), images, boxes_per_image, vertices, seed)
        loaded = load_in_subprocess(generated, reads, seed)
    else:
        with tempfile.TemporaryDirectory(prefix="balancedet-bench-data-") as folder:
            generated = write_synthetic_coco(Path(folder), images, boxes_per_image, vertices, seed)
            loaded = load_in_subprocess(generated, reads, seed)
    return generated, loaded, count_mismatches(generated, loaded)


# ---- part 2: the training loader against the training step ----------------------------------------


@dataclass
class LoaderTiming:
    workers: int
    first_s: float
    per_batch_s: float


@dataclass
class OverlapTiming:
    workers: int
    first_wait_s: float
    wait_s: float
    step_s: float


def with_workers(config: dict[str, Any], workers: int) -> dict[str, Any]:
    config = copy.deepcopy(config)
    config["train"]["workers"] = workers
    return config


def train_batches(dataset: Any, config: dict[str, Any]) -> Iterator[tuple[torch.Tensor, list[dict]]]:
    """The training batches epoch after epoch, each epoch's loader made as the trainer makes it."""
    from balancedet.engine.data import epoch_loader

    epoch = 0
    while True:
        yield from epoch_loader(dataset, config, epoch, 0)
        epoch += 1


def time_loader(dataset: Any, config: dict[str, Any], workers: int, batches: int) -> LoaderTiming:
    """Read ``batches`` training batches with ``workers`` and nothing else: the first one (which starts the
    workers) apart, the mean of the others."""
    stream = train_batches(dataset, with_workers(config, workers))
    try:
        start = time.perf_counter()
        next(stream)
        first = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(batches - 1):
            next(stream)
        rest = time.perf_counter() - start
    finally:
        stream.close()  # the loader's workers stop here, not when the generator is collected
    return LoaderTiming(workers, first, rest / max(batches - 1, 1))


def trainer_state(config: dict[str, Any], dataset: Any, device: torch.device) -> Any:
    """The model, optimiser and gradient scaler as ``balancedet.engine.train.setup`` makes them."""
    from balancedet.engine.build import build_model
    from balancedet.engine.train import memory_format, new_state

    tcfg = config["train"]
    torch.manual_seed(int(tcfg["seed"]))
    model = build_model(config["model"], len(dataset.class_names)).to(device, memory_format=memory_format(tcfg))
    model.train()
    output = Path(tempfile.gettempdir()) / "balancedet-bench-data"
    return new_state(config, output, device, model, dataset, dataset, time.perf_counter())


def timed_step(state: Any, batch: tuple[torch.Tensor, list[dict]]) -> float:
    """Seconds of one ``train_step`` (forward, backward, optimiser step) on ``batch``."""
    from balancedet.engine.train import train_step

    synchronize(state.device)
    start = time.perf_counter()
    train_step(state, *batch)
    synchronize(state.device)
    return time.perf_counter() - start


def time_step(state: Any, batch: tuple[torch.Tensor, list[dict]], steps: int, warmup: int) -> tuple[float, float]:
    """Median seconds of ``steps`` training steps on ``batch`` after ``warmup`` steps, and the first step's."""
    first = timed_step(state, batch)
    for _ in range(max(warmup - 1, 0)):
        timed_step(state, batch)
    return statistics.median(timed_step(state, batch) for _ in range(steps)), first


def time_overlap(state: Any, dataset: Any, config: dict[str, Any], workers: int, batches: int) -> OverlapTiming:
    """Iterate the loader with ``workers`` while doing a training step on each batch; only the wait in
    ``next`` counts as the loader's. The first wait (worker start-up) apart, the mean of the others, and
    the median step while the workers run."""
    stream = train_batches(dataset, with_workers(config, workers))
    waits, steps = [], []
    try:
        for _ in range(batches):
            start = time.perf_counter()
            batch = next(stream)
            waits.append(time.perf_counter() - start)
            steps.append(timed_step(state, batch))
    finally:
        stream.close()
    rest = waits[1:] or waits
    return OverlapTiming(workers, waits[0], sum(rest) / len(rest), statistics.median(steps))


def loader_rows(first_pass: LoaderTiming, loads: list[LoaderTiming], batch_size: int) -> list[list[str]]:
    """One row per worker count, after the first pass over the same batches (files maybe not cached)."""
    labels = ["0, first pass"] + [str(t.workers) for t in loads]
    return [
        [label, f"{t.first_s:.2f}", f"{t.per_batch_s * 1e3:.1f}", f"{batch_size / t.per_batch_s:.0f}"]
        for label, t in zip(labels, [first_pass, *loads], strict=True)
    ]


def overlap_rows(loads: list[LoaderTiming], overlaps: list[OverlapTiming], step_s: float) -> list[list[str]]:
    """One row per worker count: 0 is the serial case (the wait is the load itself), measured alone."""
    rows = []
    serial = {t.workers: t for t in loads}.get(0)
    if serial is not None:
        rows.append(_overlap_row(0, serial.first_s, serial.per_batch_s, step_s, step_s, "serial: not overlapped"))
    for o in overlaps:
        rows.append(_overlap_row(o.workers, o.first_wait_s, o.wait_s, o.step_s, step_s, None))
    return rows


def _overlap_row(
    workers: int, first_s: float, wait_s: float, step_s: float, alone_s: float, note: str | None
) -> list[str]:
    share = wait_s / step_s
    verdict = note or ("hidden" if share < HIDDEN_SHARE else "NOT hidden")
    return [
        str(workers),
        f"{first_s:.2f}",
        f"{wait_s * 1e3:.1f}",
        f"{step_s * 1e3:.0f} ({step_s / alone_s:.2f}x alone)",
        f"{(wait_s + step_s) * 1e3:.0f}",
        f"{share:.1%}",
        verdict,
    ]


def run_loader(
    config: dict[str, Any], workers: list[int], batches: int, steps: int, warmup: int, device: torch.device
) -> dict[str, Any]:
    """Part 2: the preset's training split and loader, its step, and the overlap of the two."""
    from balancedet.data import load_data_spec
    from balancedet.engine.data import load_split

    start = time.perf_counter()
    spec = load_data_spec(config["data"]["dataset"])
    dataset = load_split(config, "train", True, spec)
    ready_s = time.perf_counter() - start
    # every row below reads the same batches (epoch 0's first): this pass brings their files into the
    # page cache first, so that no row pays for the disk but this one
    first_pass = time_loader(dataset, config, 0, batches)
    loads = [time_loader(dataset, config, w, batches) for w in workers]
    state = trainer_state(config, dataset, device)
    stream = train_batches(dataset, with_workers(config, 0))
    batch = next(stream)
    stream.close()
    step_s, first_step_s = time_step(state, batch, steps, warmup)
    overlaps = [time_overlap(state, dataset, config, w, batches) for w in workers if w > 0]
    return {
        "dataset": dataset,
        "ready_s": ready_s,
        "first_pass": first_pass,
        "loads": loads,
        "step_s": step_s,
        "first_step_s": first_step_s,
        "overlaps": overlaps,
        "batch_shape": tuple(batch[0].shape),
    }


# ---- the command ----------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    from balancedet.cli import DEFAULT_PRESET
    from balancedet.losses import backend

    p = argparse.ArgumentParser(prog="balancedet bench data", description=__doc__.split("\n")[0])
    index = p.add_argument_group("indexing a COCO json")
    index.add_argument("--images", type=int, default=GOAL_IMAGES, help=f"images in the json (default {GOAL_IMAGES})")
    index.add_argument("--boxes-per-image", type=float, default=7.0, help="mean boxes per image (default 7)")
    index.add_argument("--vertices", type=int, default=8, help="points of each box's polygon segmentation (0: none)")
    index.add_argument("--reads", type=int, default=1000, help="random records[i] reads timed (default 1000)")
    index.add_argument("--workdir", help="folder for the json and image files, kept (default: a temporary one)")
    index.add_argument("--skip-index", action="store_true", help="skip this part")
    loader = p.add_argument_group("the training loader against the step")
    loader.add_argument("--config", default=DEFAULT_PRESET, help=f"preset or YAML (default {DEFAULT_PRESET})")
    loader.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    loader.add_argument("--batches", type=int, default=30, help="batches read per worker count (default 30)")
    loader.add_argument("--workers", default="0,1,2", help="train.workers values, comma-separated (default 0,1,2)")
    loader.add_argument("--steps", type=int, default=5, help="timed training steps on one batch (default 5)")
    loader.add_argument("--warmup", type=int, default=2, help="training steps before those (default 2)")
    loader.add_argument("--device", default="cpu", help="device of the training step (default cpu)")
    loader.add_argument(
        "--compile", choices=["auto", "always", "never"], default=backend.get_compile(), help="loss kernel backend"
    )
    loader.add_argument("--skip-loader", action="store_true", help="skip this part")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    try:
        workers = sorted({int(w) for w in args.workers.split(",") if w.strip()})
    except ValueError:
        p.error(f"--workers {args.workers!r}: expected comma-separated integers, e.g. 0,1,2")
    if not workers or workers[0] < 0:
        p.error(f"--workers {args.workers!r}: expected one or more counts >= 0")
    for name, low in (("images", 1), ("batches", 2), ("steps", 1), ("warmup", 0), ("reads", 0), ("vertices", 0)):
        if getattr(args, name) < low:
            p.error(f"--{name} must be >= {low}, got {getattr(args, name)}")
    if args.vertices in (1, 2):
        p.error("--vertices: a polygon needs 0 (none) or at least 3 points")
    if args.boxes_per_image <= 0:
        p.error(f"--boxes-per-image must be > 0, got {args.boxes_per_image}")

    print(
        f"balancedet bench data: {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"(threads={torch.get_num_threads()}), Python {sys.version.split()[0]}",
        flush=True,
    )
    failed = False
    if not args.skip_index:
        print(
            f"\nIndexing a COCO json: {args.images} images, ~{args.boxes_per_image:g} boxes each, written then "
            f"loaded by load_coco in a fresh process; goal < {GOAL_SECONDS:g} s and < {human_bytes(GOAL_BYTES)} "
            f"above the import-only baseline for {GOAL_IMAGES} images on a 2-core machine",
            flush=True,
        )
        generated, loaded, problems = run_index(
            args.workdir, args.images, args.boxes_per_image, args.vertices, args.reads, args.seed
        )
        print(format_table(["measure", "value", "goal"], index_rows(generated, loaded, problems)))
        if args.workdir:
            print(f"files kept in {Path(args.workdir).resolve()}")
        for problem in problems:
            print(f"balancedet bench data: error: the loader's counts differ: {problem}", file=sys.stderr)
        failed = bool(problems)
    if not args.skip_loader:
        _print_loader(args, workers)
    return 1 if failed else 0


def _print_loader(args: argparse.Namespace, workers: list[int]) -> None:
    from balancedet.engine.config import load_config
    from balancedet.losses import backend

    backend.set_compile(args.compile)
    config = load_config(args.config, args.overrides)
    device = torch.device(args.device)
    tcfg, data = config["train"], config["data"]
    print(
        f"\nThe training loader against the training step: preset {args.config} ({config['model']['type']}, "
        f"{data['dataset']}, batch {tcfg['batch_size']}, min_size {data['min_size']}, train.workers "
        f"{tcfg['workers']} in the preset), step on {device} (loss kernels {args.compile})",
        flush=True,
    )
    result = run_loader(config, workers, args.batches, args.steps, args.warmup, device)
    print(
        f"training split: {len(result['dataset'])} images, ready in {result['ready_s']:.1f} s; "
        f"batches of {'x'.join(map(str, result['batch_shape']))}"
    )
    print(
        format_table(
            ["workers", "1st batch s", "ms/batch", "images/s"],
            loader_rows(result["first_pass"], result["loads"], tcfg["batch_size"]),
        )
    )
    print(
        f"loader alone: epoch 0's first {args.batches} batches per row, the first batch (worker start-up) apart, "
        "ms/batch the mean of the others; the first pass reads the image files while they may not be in the "
        "page cache, the other rows read them again"
    )
    print(
        f"\ntraining step alone (forward + backward + optimiser step, the trainer's train_step) on one batch: "
        f"median {result['step_s'] * 1e3:.0f} ms of {args.steps} after {args.warmup} warm-up; the first took "
        f"{result['first_step_s']:.1f} s (compilation included)"
    )
    header = ["workers", "1st wait s", "wait ms/step", "step ms", "ms per step", "wait/step", "loading"]
    print(format_table(header, overlap_rows(result["loads"], result["overlaps"], result["step_s"])))
    print(
        f"overlapped: {args.batches} steps per row, each on the next batch; wait: the time in next(iterator), the "
        f"first (worker start-up, paid at every epoch) apart; step ms: the median while the workers run; "
        f"hidden: wait below {HIDDEN_SHARE:.0%} of the step"
    )
