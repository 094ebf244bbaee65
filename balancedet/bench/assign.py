"""``balancedet bench assign``: batched max-IoU assignment against torchvision's, and the Libra samplers.

One run, one process, the same inputs for both sides. Assignment: B images (8) x A anchors
(120,000: RetinaNet's P3-P7 anchors of an 800x800 input) x G boxes (50, sizes log-uniform from 8
pixels to half the image, like COCO's spread) in fp32. Ours is one ``MaxIoUAssigner`` call on the
padded batch, labels included; the baseline is what torchvision's RetinaNet does per image in
``compute_loss``: ``box_iou(gt_boxes, anchors)`` then ``Matcher(0.5, 0.4,
allow_low_quality_matches=True)``. The table gives the median time of each, the speed-up, the peak
memory each allocates, and how often our labels equal torchvision's: everywhere without low-quality
matches (the same rules, bit-identical IoUs), and with them except for anchors that torchvision
hands to their own best box instead of to the box that claimed them (``MaxIoUAssigner`` docstring).
Sampling: IoU-balanced negatives with instance-balanced positives (Libra R-CNN), instance-balanced
positives alone, and the random sampler for reference, on B images x 2000 proposals: time per batch.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torchvision
from torch import Tensor
from torchvision.models.detection._utils import Matcher

from balancedet.assign import MaxIoUAssigner
from balancedet.bench.common import format_table, human_bytes, synchronize, time_call
from balancedet.boxes import AnchorGenerator, feature_map_sizes
from balancedet.samplers import Candidates, InstanceBalancedPosSampler, RandomSampler, libra_sampler

NUM_CLASSES = 80
#: Libra R-CNN's box head: 512 RoIs per image, at most a quarter positive.
SAMPLES, POS_FRACTION = 512, 0.25


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes torch allocates on ``device`` while ``fn`` runs, above what was allocated before.

    CUDA: the caching allocator's own counter, ``torch.cuda.max_memory_allocated``. CPU: torch keeps
    no such counter, ``tracemalloc`` does not see its allocator (c10 calls ``malloc`` directly) and an
    RSS delta mixes in the Python heap and the pages the C library keeps. The profiler with
    ``profile_memory=True`` records every allocation and free of torch's CPU allocator with its size
    and time; the peak is the largest running sum over that timeline: the bytes of live tensors, the
    quantity ``max_memory_allocated`` measures on CUDA.
    """
    if device.type == "cuda":
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    if device.type != "cpu":
        raise ValueError(f"peak_bytes: no peak-memory measurement for device {device}")
    # kineto, the profiler's backend, otherwise logs its start and stop lines to stderr mid-table
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    ]
    running = peak = 0
    for _, nbytes in sorted(events, key=lambda e: e[0]):
        running += nbytes
        peak = max(peak, running)
    return peak


def square_side_for(num_anchors: int, generator: AnchorGenerator) -> int:
    """Smallest square input (a multiple of 32 pixels) whose anchors number at least ``num_anchors``."""
    side = 32
    while sum(generator.num_anchors_per_level(feature_map_sizes((side, side)))) < num_anchors:
        side += 32
    return side


def random_boxes(images: int, boxes: int, side: float, gen: torch.Generator) -> Tensor:
    """``(B, G, 4)`` boxes inside a ``side`` square, width and height log-uniform in ``[8, side / 2]``."""
    wh = torch.exp(torch.empty(images, boxes, 2).uniform_(math.log(8.0), math.log(max(side / 2, 8.0)), generator=gen))
    xy = torch.rand(images, boxes, 2, generator=gen) * (side - wh)
    return torch.cat((xy, xy + wh), dim=-1)


@dataclass
class Problem:
    anchors: Tensor
    boxes: Tensor
    labels: Tensor
    side: int


def make_problem(images: int, anchors: int, boxes: int, device: torch.device, seed: int = 0) -> Problem:
    generator = AnchorGenerator()
    side = square_side_for(anchors, generator)
    gen = torch.Generator().manual_seed(seed)
    return Problem(
        generator(feature_map_sizes((side, side)), device=device)[:anchors],
        random_boxes(images, boxes, side, gen).to(device),
        torch.randint(0, NUM_CLASSES, (images, boxes), generator=gen).to(device),
        side,
    )


def torchvision_matches(problem: Problem, low_quality: bool = True) -> Tensor:
    """torchvision RetinaNet's matching, image by image: ``(B, A)`` in the same -1 / -2 convention."""
    matcher = Matcher(0.5, 0.4, allow_low_quality_matches=low_quality)
    return torch.stack([matcher(torchvision.ops.box_iou(gt, problem.anchors)) for gt in problem.boxes])


def labels_from_matches(matches: Tensor, labels: Tensor) -> Tensor:
    """Losses' labels from torchvision's matches: the class, ``NUM_CLASSES`` for background, -1 ignored."""
    cls = labels.gather(1, matches.clamp(min=0))
    return torch.where(matches >= 0, cls, torch.where(matches == -1, NUM_CLASSES, -1))


def label_agreement(problem: Problem) -> tuple[float, float, int]:
    """Share of equal labels without and with low-quality matches, and the anchors that differ with them."""
    plain = MaxIoUAssigner(low_quality=False)(problem.anchors, problem.boxes, problem.labels, NUM_CLASSES).labels
    ours = MaxIoUAssigner()(problem.anchors, problem.boxes, problem.labels, NUM_CLASSES).labels
    theirs_plain = labels_from_matches(torchvision_matches(problem, low_quality=False), problem.labels)
    theirs = labels_from_matches(torchvision_matches(problem), problem.labels)
    same = (ours == theirs).double().mean().item()
    return (plain == theirs_plain).double().mean().item(), same, int((ours != theirs).sum())


def sampling_inputs(images: int, proposals: int, device: torch.device, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``matched`` and ``max_iou``, ``(B, P)``: proposals around 20 boxes per image (a third jittered
    copies of the boxes, the rest anywhere), assigned at Faster R-CNN's box-head threshold 0.5."""
    gen = torch.Generator().manual_seed(seed)
    side, num_boxes = 800.0, 20
    gt = random_boxes(images, num_boxes, side, gen)
    near = proposals // 3
    source = gt[:, torch.randint(0, num_boxes, (near,), generator=gen)]
    size = (source[..., 2:] - source[..., :2]).repeat(1, 1, 2)
    jittered = source + torch.randn(images, near, 4, generator=gen) * 0.15 * size
    jittered = torch.cat((jittered[..., :2], torch.maximum(jittered[..., 2:], jittered[..., :2] + 1)), dim=-1)
    candidates = torch.cat((jittered, random_boxes(images, proposals - near, side, gen)), dim=1)
    assigner = MaxIoUAssigner(pos_iou=0.5, neg_iou=0.5, low_quality=False)
    labels = torch.zeros(1, num_boxes, dtype=torch.long)
    results = [assigner(candidates[b], gt[b : b + 1], labels, 1) for b in range(images)]
    matched = torch.cat([r.matched for r in results]).to(device)
    return matched, torch.cat([r.max_iou for r in results]).to(device)


@dataclass
class Row:
    case: str
    ours_s: float
    baseline: str = "-"
    base_s: float | None = None
    ours_peak: int | None = None
    base_peak: int | None = None
    agreement: str = "-"

    def cells(self) -> list[str]:
        ratio = self.base_s / self.ours_s if self.base_s is not None else None
        goal = "-"
        if ratio is not None:
            met = ratio >= 2.0 and self.ours_peak <= self.base_peak
            goal = f">= 2x, <= memory: {'met' if met else 'MISSED'}"
        return [
            self.case,
            f"{self.ours_s * 1e3:.1f}",
            self.baseline,
            "-" if self.base_s is None else f"{self.base_s * 1e3:.1f}",
            "-" if ratio is None else f"{ratio:.1f}x",
            goal,
            "-" if self.ours_peak is None else human_bytes(self.ours_peak),
            "-" if self.base_peak is None else human_bytes(self.base_peak),
            self.agreement,
        ]

    @property
    def met(self) -> bool:
        return self.base_s is None or (self.base_s >= 2.0 * self.ours_s and self.ours_peak <= self.base_peak)


def assignment_row(problem: Problem, device: torch.device, repeat: int, warmup: int) -> Row:
    assigner = MaxIoUAssigner()

    def ours() -> object:
        return assigner(problem.anchors, problem.boxes, problem.labels, NUM_CLASSES)

    def theirs() -> object:
        return torchvision_matches(problem)

    ours_s, _ = time_call(ours, device, repeat, warmup)
    base_s, _ = time_call(theirs, device, repeat, warmup)
    plain, same, differ = label_agreement(problem)
    images, num_boxes = problem.labels.shape
    return Row(
        f"MaxIoUAssigner {images}x{problem.anchors.shape[0]}x{num_boxes}",
        ours_s,
        "box_iou + Matcher per image",
        base_s,
        peak_bytes(ours, device),
        peak_bytes(theirs, device),
        f"{same:.2%} ({differ} anchors); {plain:.2%} w/o low-quality",
    )


def sampling_rows(images: int, proposals: int, device: torch.device, repeat: int, warmup: int) -> list[Row]:
    matched, max_iou = sampling_inputs(images, proposals, device)
    gen = torch.Generator(device=device).manual_seed(0)
    candidates = Candidates(matched, max_iou=max_iou, generator=gen)
    samplers = [
        ("IoU-balanced neg + instance-balanced pos", libra_sampler(SAMPLES, POS_FRACTION)),
        ("instance-balanced pos + random neg", InstanceBalancedPosSampler(SAMPLES, POS_FRACTION)),
        ("random (reference)", RandomSampler(SAMPLES, POS_FRACTION)),
    ]
    rows = []
    for name, sampler in samplers:
        fn = partial(sampler, candidates)
        seconds, _ = time_call(fn, device, repeat, warmup)
        sample = fn()
        kept = f"kept {int(sample.pos.sum()) / images:.0f} pos + {int(sample.neg.sum()) / images:.0f} neg per image"
        rows.append(Row(f"{name} {images}x{proposals}", seconds, agreement=kept))
    return rows


HEADER = ["case", "ours ms", "baseline", "base ms", "speed-up", "goal", "ours peak", "base peak", "labels equal"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="balancedet bench assign", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--anchors", type=int, default=120_000, help="RetinaNet anchors of a square input")
    parser.add_argument("--boxes", type=int, default=50, help="ground-truth boxes per image")
    parser.add_argument("--proposals", type=int, default=2000, help="proposals per image for the samplers")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args(argv)
    for name in ("images", "anchors", "boxes", "proposals", "repeat"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")

    device = torch.device(args.device)
    problem = make_problem(args.images, args.anchors, args.boxes, device)
    print(
        f"balancedet bench assign: {args.images} images x {problem.anchors.shape[0]} anchors (RetinaNet P3-P7 of a "
        f"{problem.side}x{problem.side} input) x {args.boxes} boxes, fp32 on {device} "
        f"(threads={torch.get_num_threads()}, torch {torch.__version__}, torchvision {torchvision.__version__}), "
        f"median of {args.repeat}"
    )
    rows = [assignment_row(problem, device, args.repeat, args.warmup)]
    rows += sampling_rows(args.images, args.proposals, device, args.repeat, args.warmup)
    print(format_table(HEADER, [r.cells() for r in rows]))
    print(
        "peak: bytes of tensors torch allocated during one call, above what existed before "
        f"({'torch.cuda.max_memory_allocated' if device.type == 'cuda' else 'torch.profiler allocation timeline'}). "
        "labels equal: share of (image, anchor) labels equal to torchvision's with low-quality matches, "
        "anchors that differ, and the share without them."
    )
    print("all goals met" if all(r.met for r in rows) else "some goals missed")
    return 0
