"""``balancedet bench detector``: training throughput of our RetinaNet and Faster R-CNN against torchvision's.

Both detectors get the same backbone (torchvision's ResNet, default ResNet-18 without pretrained
weights, trainable BN or frozen BN in both, stem and first stage frozen in both), the same FPN
(P3-P7, 256 channels, P6 from C5), the same heads (4 convs of 256), the same 9 anchors per
location, the same number of classes, the same L1 box loss (torchvision's), the same images and
boxes and the same optimiser (SGD, momentum 0.9). torchvision's ``GeneralizedRCNNTransform`` is
given ``min_size = max_size =`` the image size so it does not resize; it still normalises the
images, which our step does too (``(x - mean) / std``) so that both pay for it.

Two stages are timed, each model in turn (A, B, A, B, ...) so that both see the same background
load on a shared machine:

- ``step``: a whole training step (forward, backward, ``optimizer.step()``) at ``--size``; it is
  dominated by the convolutions, which are the same in both models;
- ``loss``: what happens after the heads (anchors, assignment, losses and their backward) on
  fixed head outputs, at a COCO-like scale (``--loss-size 800x1344``, 80 classes): this is where
  the implementations differ (one batched assignment and one fused focal-loss call against
  torchvision's per-image loops and ``torchvision.ops.sigmoid_focal_loss``);
- ``rcnn``: a whole training step of a two-stage detector at ``--size``: our ``FasterRCNN`` against
  torchvision's ``FasterRCNN`` on the same ResNet (C2-C5, stem and first stage frozen in both), FPN
  P2-P6 of 256 channels with P6 a max-pool of P5, RPN (3 anchors per location, 32-512 px, 2000 per
  level before NMS 0.7, 1000 per image after it: torchvision's 2000 is set to our 1000), 512 RoIs per
  image at a quarter foreground, 7x7 RoIAlign and 2-fc head of 1024, the same number of classes; and
  two remedies on our model, timed in the same round: OHEM (``OHEMSampler(64, "budget", nms_iou=0.7)``,
  every RoI through the head) and Libra R-CNN as its preset trains it (BFP with a non-local block at
  P4, ``libra_sampler(512, 0.25)``, Balanced L1, the RPN's ``neg_pos_ub=5``), reported against our
  random sampling. The box predictors differ by design: torchvision regresses a box for the
  background class too (``4 (K + 1)`` outputs against our ``4 K``).

- ``pool``: multi-scale RoIAlign alone, forward and backward, on the ``rcnn`` stage's problem (P2-P5 of 256
  channels for ``--batch`` images of ``--size``, ``--rois`` RoIs per image of sides from 16 px to the image's):
  our sparse products (``balancedet.models.roi_align``) against ``torchvision.ops.MultiScaleRoIAlign``, and
  the largest difference of their values and of their gradients, on the same inputs.

Peak memory is read from the CPU allocator through ``torch.profiler`` (``profile_memory=True``):
each allocation event carries the bytes allocated since profiling started and still live, whose
maximum over the step, less its value before the first allocation, is the step's peak on top of
what existed before it (weights, optimiser state). It is exact and deterministic where sampling
the resident set size is blurred by ``malloc`` caching. The profiler's counter outlives a session
(blocks freed between sessions are never subtracted), so by default each measurement runs in a
fresh process (``--memory subprocess``). Memory that kernels take outside PyTorch's allocator
(oneDNN scratch pads) is not seen, for either model.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch
from torch import Tensor, nn

from balancedet.bench.common import format_table, human_bytes
from balancedet.boxes.anchors import feature_map_sizes
from balancedet.losses.balanced_l1 import BalancedL1Loss
from balancedet.losses.smooth_l1 import L1Loss
from balancedet.models.backbones import ResNetBackbone
from balancedet.models.faster_rcnn import FasterRCNN
from balancedet.models.pyramid import build_pyramid
from balancedet.models.retinanet import RetinaNet
from balancedet.models.roi_align import MultiLevelRoIAlign
from balancedet.models.rpn import RPN_STRIDES
from balancedet.samplers import OHEMSampler, RandomSampler, libra_sampler

IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)
GOAL_SPEEDUP = 1.5
KINDS = ("balancedet", "torchvision")
#: The two-stage round: our Faster R-CNN (random sampling), torchvision's, then our two remedies.
RCNN_KINDS = ("balancedet", "torchvision", "ohem", "libra")
RCNN_NAMES = {
    "balancedet": "balancedet Faster R-CNN",
    "torchvision": "torchvision Faster R-CNN",
    "ohem": "balancedet Faster R-CNN + OHEM",
    "libra": "balancedet Libra R-CNN",
}
STAGES = ("step", "loss", "rcnn", "pool")
POOL_NAMES = {"balancedet": "balancedet RoIAlign (sparse)", "torchvision": "torchvision MultiScaleRoIAlign"}
#: channels of the pyramid the pool stage pools from (the FPN's)
POOL_CHANNELS = 256
#: Goals of the two-stage round: ours no slower than torchvision's; a remedy's step against random sampling.
GOAL_RCNN_SPEEDUP = 1.0
#: our RoIAlign is written only because it is faster than torchvision's on the CPU: it must stay so
GOAL_POOL_SPEEDUP = 1.0
GOAL_REMEDY_RATIO = {"ohem": 1.3, "libra": 1.1}


@dataclass(frozen=True)
class Config:
    """One stage's problem: backbone, batch of ``batch`` images of ``height x width``, classes, boxes (and,
    for the two-stage round, RoIs and proposals per image)."""

    depth: int = 18
    norm: str = "bn"
    batch: int = 4
    height: int = 256
    width: int = 256
    classes: int = 10
    boxes: int = 4
    threads: int | None = None
    #: two-stage round only: RoIs per image in the box head (random and Libra sampling) and proposals per
    #: training image after NMS, in both models (the papers' 512 and 1000; tests use fewer)
    rois: int = 512
    proposals: int = 1000


def make_batch(
    batch: int, height: int, width: int, num_classes: int, boxes_per_image: int, seed: int = 0
) -> tuple[Tensor, list[dict[str, Tensor]]]:
    """Random images in [0, 1] and ``boxes_per_image`` random boxes (side 16 px to half the image) each."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand((batch, 3, height, width), generator=g)
    extent = torch.tensor([width, height], dtype=torch.float32)
    targets = []
    for _ in range(batch):
        wh = 16 + torch.rand((boxes_per_image, 2), generator=g) * (extent / 2 - 16)
        xy = torch.rand((boxes_per_image, 2), generator=g) * (extent - wh)
        labels = torch.randint(0, num_classes, (boxes_per_image,), generator=g)
        targets.append({"boxes": torch.cat((xy, xy + wh), dim=1), "labels": labels})
    return images, targets


def build_ours(depth: int, norm: str, num_classes: int) -> RetinaNet:
    backbone = ResNetBackbone(depth, weights=None, norm=norm, frozen_stages=1)
    return RetinaNet(num_classes, backbone, box_loss=L1Loss())


def build_torchvision(depth: int, norm: str, num_classes: int, height: int, width: int) -> nn.Module:
    from torchvision.models.detection import RetinaNet as TVRetinaNet
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops import FrozenBatchNorm2d
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    c5 = 512 if depth < 50 else 2048
    backbone = resnet_fpn_backbone(
        backbone_name=f"resnet{depth}",
        weights=None,
        norm_layer=nn.BatchNorm2d if norm == "bn" else FrozenBatchNorm2d,
        trainable_layers=3,  # layer2-4: stem and layer1 frozen, as our frozen_stages=1
        returned_layers=[2, 3, 4],
        extra_blocks=LastLevelP6P7(c5, 256),  # in != out channels: P6 from C5, as the paper and ours
    )
    # min_size / max_size equal to the image's sides: the transform's resize keeps the size.
    return TVRetinaNet(backbone, num_classes, min_size=min(height, width), max_size=max(height, width))


def build_ours_rcnn(kind: str, cfg: Config) -> FasterRCNN:
    """Our Faster R-CNN with random RoI sampling (``"balancedet"``), OHEM (``"ohem"``) or as Libra R-CNN."""
    backbone = ResNetBackbone(cfg.depth, weights=None, norm=cfg.norm, frozen_stages=1, levels=(2, 3, 4, 5))
    proposals = {"rpn_post_nms_top_n_train": cfg.proposals}
    if kind == "balancedet":
        return FasterRCNN(cfg.classes, backbone, roi_sampler=RandomSampler(cfg.rois, 0.25), **proposals)
    if kind == "ohem":
        # OHEM's B / N = 128 / 2 RoIs per image after NMS 0.7 (arXiv 1604.03540, sec. 4), as the builder's
        sampler = OHEMSampler(64, mode="budget", nms_iou=0.7)
        return FasterRCNN(cfg.classes, backbone, roi_sampler=sampler, **proposals)
    if kind == "libra":
        # libra_rcnn_r50_fpn's parts: BFP at P4, IoU-balanced sampling, Balanced L1, the RPN's neg_pos_ub 5
        backbone, neck = build_pyramid(backbone, RPN_STRIDES, extra_from="maxpool", bfp="non_local")
        return FasterRCNN(
            cfg.classes,
            backbone,
            neck,
            rpn_sampler=RandomSampler(256, 0.5, neg_pos_ub=5),
            roi_sampler=libra_sampler(cfg.rois, 0.25),
            box_loss=BalancedL1Loss(alpha=0.5, gamma=1.5, beta=1.0),
            **proposals,
        )
    raise ValueError(f"build_ours_rcnn: kind must be one of {RCNN_KINDS}, got {kind!r}")


def build_torchvision_rcnn(cfg: Config) -> nn.Module:
    from torchvision.models.detection import FasterRCNN as TVFasterRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops import FrozenBatchNorm2d

    backbone = resnet_fpn_backbone(
        backbone_name=f"resnet{cfg.depth}",
        weights=None,
        norm_layer=nn.BatchNorm2d if cfg.norm == "bn" else FrozenBatchNorm2d,
        trainable_layers=3,  # layer2-4: stem and layer1 frozen, as our frozen_stages=1
        returned_layers=[1, 2, 3, 4],  # C2-C5; the default extra block is P6 as a max-pool of P5, as ours
    )
    # torchvision counts the background among its classes; its 2000 proposals per training image
    # become our (and detectron2's) 1000 so that both heads see as many RoIs
    return TVFasterRCNN(
        backbone,
        cfg.classes + 1,
        min_size=min(cfg.height, cfg.width),
        max_size=max(cfg.height, cfg.width),
        rpn_post_nms_top_n_train=cfg.proposals,
        box_batch_size_per_image=cfg.rois,
    )


def build_model(kind: str, cfg: Config, stage: str = "step") -> nn.Module:
    torch.manual_seed(0)
    if stage == "pool":
        return MultiLevelRoIAlign(4, 7, 2, kernel="sparse" if kind == "balancedet" else "torchvision")
    if stage == "rcnn":
        if kind == "torchvision":
            return build_torchvision_rcnn(cfg)
        return build_ours_rcnn(kind, cfg)
    if kind == "balancedet":
        return build_ours(cfg.depth, cfg.norm, cfg.classes)
    return build_torchvision(cfg.depth, cfg.norm, cfg.classes, cfg.height, cfg.width)


def make_step(model: nn.Module, images: Tensor, targets: list[dict[str, Tensor]], ours: bool) -> Callable[[], None]:
    """A training step: forward (with the image normalisation), backward and an SGD update."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-4, momentum=0.9)
    mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    model.train()

    def step() -> None:
        if ours:
            losses = model((images - mean) / std, targets)
        else:
            losses = model(list(images), targets)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()

    return step


def make_loss_stage(model: nn.Module, cfg: Config, ours: bool) -> Callable[[], None]:
    """Anchors, assignment, losses and their backward on fixed head outputs of a ``cfg`` batch."""
    from torchvision.models.detection.image_list import ImageList

    _, targets = make_batch(cfg.batch, cfg.height, cfg.width, cfg.classes, cfg.boxes)
    sizes = feature_map_sizes((cfg.height, cfg.width))
    num_anchors = 9 * sum(h * w for h, w in sizes)
    g = torch.Generator().manual_seed(1)
    # Logits near the prior (p = 0.01), small deltas: what the heads give early in training.
    cls = (torch.randn((cfg.batch, num_anchors, cfg.classes), generator=g) - 4.6).requires_grad_()
    box = (0.1 * torch.randn((cfg.batch, num_anchors, 4), generator=g)).requires_grad_()
    model.train()
    if ours:

        def stage() -> None:
            priors = model.prior_generator(sizes, cls.device)
            losses = model.criterion(cls, box, priors, targets)
            sum(losses.values()).backward()

        return stage
    image_list = ImageList(torch.empty(cfg.batch, 3, cfg.height, cfg.width), [(cfg.height, cfg.width)] * cfg.batch)
    feats = [torch.empty(cfg.batch, 1, h, w) for h, w in sizes]  # only their sizes are read

    def tv_stage() -> None:
        anchors = model.anchor_generator(image_list, feats)
        losses = model.compute_loss(targets, {"cls_logits": cls, "bbox_regression": box}, anchors)
        sum(losses.values()).backward()

    return tv_stage


def pool_problem(cfg: Config) -> tuple[list[Tensor], list[Tensor], tuple[int, int]]:
    """The pool stage's pyramid (P2-P5 of ``POOL_CHANNELS``), ``cfg.rois`` boxes per image (sides 16 px to the
    image's, some reaching past its border) and the padded input size."""
    g = torch.Generator().manual_seed(0)
    levels = [
        torch.randn((cfg.batch, POOL_CHANNELS, -(-cfg.height // s), -(-cfg.width // s)), generator=g)
        for s in (4, 8, 16, 32)
    ]
    extent = torch.tensor([cfg.width, cfg.height], dtype=torch.float32)
    boxes = []
    for _ in range(cfg.batch):
        wh = 16 + torch.rand((cfg.rois, 2), generator=g) * (extent - 16)
        xy = torch.rand((cfg.rois, 2), generator=g) * extent - wh / 2
        boxes.append(torch.cat((xy, xy + wh), dim=1))
    return levels, boxes, (cfg.height, cfg.width)


def pool_upstream(cfg: Config) -> Tensor:
    """The fixed gradient the pool stage sends back through the pooled features."""
    return torch.randn((cfg.batch * cfg.rois, POOL_CHANNELS, 7, 7), generator=torch.Generator().manual_seed(1))


def make_pool_stage(model: nn.Module, cfg: Config) -> Callable[[], tuple[Tensor, list[Tensor]]]:
    """RoIAlign of the pool stage's problem, forward and backward; a call returns the pooled features and
    the pyramid's gradient."""
    levels, boxes, size = pool_problem(cfg)
    inputs = [level.requires_grad_() for level in levels]
    grad = pool_upstream(cfg)

    def stage() -> tuple[Tensor, list[Tensor]]:
        for level in inputs:
            level.grad = None
        pooled = model(inputs, boxes, size)
        pooled.backward(grad)
        return pooled.detach(), [level.grad for level in inputs]

    return stage


def pool_difference(cfg: Config) -> tuple[float, float]:
    """The largest absolute difference between our pooled features and torchvision's, and between the
    pyramid gradients they give."""
    (ours, our_grads), (theirs, their_grads) = (make_pool_stage(build_model(k, cfg, "pool"), cfg)() for k in KINDS)
    grads = max((a - b).abs().max().item() for a, b in zip(our_grads, their_grads, strict=True))
    return (ours - theirs).abs().max().item(), grads


def build_step(kind: str, stage: str, cfg: Config) -> tuple[nn.Module, Callable[[], None]]:
    model = build_model(kind, cfg, stage)
    if stage == "pool":
        return model, make_pool_stage(model, cfg)
    ours = kind != "torchvision"
    if stage in ("step", "rcnn"):
        images, targets = make_batch(cfg.batch, cfg.height, cfg.width, cfg.classes, cfg.boxes)
        return model, make_step(model, images, targets, ours)
    return model, make_loss_stage(model, cfg, ours)


def peak_step_bytes(step: Callable[[], None]) -> int | None:
    """Peak bytes allocated during one call of ``step`` and live at that moment (profiler allocator events).

    ``None`` when this version of PyTorch does not expose the events.
    """
    from torch.profiler import ProfilerActivity, profile

    try:
        from torch._C._profiler import _EventType

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            step()
        events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
        while stack:
            event = stack.pop()
            stack.extend(event.children)
            if event.tag == _EventType.Allocation:
                events.append((event.start_time_ns, event.extra_fields.total_allocated, event.extra_fields.alloc_size))
    except (ImportError, AttributeError, RuntimeError):
        return None
    if not events:
        return 0
    events.sort()
    baseline = events[0][1] - events[0][2]
    return max(total for _, total, _ in events) - baseline


def _memory_worker(kind: str, stage: str, cfg: dict, queue) -> None:
    config = Config(**cfg)
    if config.threads:
        torch.set_num_threads(config.threads)
    _, step = build_step(kind, stage, config)
    step()
    step()
    queue.put(peak_step_bytes(step))


def peak_in_subprocess(kind: str, stage: str, cfg: Config, timeout: float = 600.0) -> int | None:
    """``peak_step_bytes`` of a fresh process that builds the model and runs two steps first."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=_memory_worker, args=(kind, stage, asdict(cfg), queue))
    process.start()
    try:
        return queue.get(timeout=timeout)
    finally:
        process.join()


@dataclass
class Result:
    kind: str
    seconds: float
    first_seconds: float
    peak_bytes: int | None
    params: int


def time_interleaved(steps: list[Callable[[], None]], repeat: int, warmup: int) -> list[tuple[float, float]]:
    """Median seconds per call of each step and its first call's time, the steps run in turn.

    Alternating the models (A, B, A, B, ...) exposes both to the same load on a shared machine;
    timing one model after the other lets a change in background load pass for a speed-up.
    """
    first = []
    for step in steps:
        start = time.perf_counter()
        step()
        first.append(time.perf_counter() - start)
    for _ in range(max(warmup - 1, 0)):
        for step in steps:
            step()
    times: list[list[float]] = [[] for _ in steps]
    for _ in range(repeat):
        for step, record in zip(steps, times, strict=True):
            start = time.perf_counter()
            step()
            record.append(time.perf_counter() - start)
    return [(statistics.median(t), f) for t, f in zip(times, first, strict=True)]


def stage_kinds(stage: str) -> tuple[str, ...]:
    """The models a stage times, in the order of its table (torchvision's second)."""
    return RCNN_KINDS if stage == "rcnn" else KINDS


def run_stage(stage: str, cfg: Config, repeat: int, warmup: int, memory: str) -> list[Result]:
    kinds = stage_kinds(stage)
    built = [build_step(kind, stage, cfg) for kind in kinds]
    timings = time_interleaved([step for _, step in built], repeat, warmup)
    results = []
    for kind, (model, step), (seconds, first) in zip(kinds, built, timings, strict=True):
        if memory == "subprocess":
            peak = peak_in_subprocess(kind, stage, cfg)
        elif memory == "inline":
            peak = peak_step_bytes(step)
        else:
            peak = None
        results.append(Result(kind, seconds, first, peak, sum(p.numel() for p in model.parameters())))
    return results


def format_stage(stage: str, cfg: Config, results: list[Result]) -> str:
    by_kind = {r.kind: r for r in results}
    base = by_kind["torchvision"]
    rcnn = stage == "rcnn"
    rows = []
    names = RCNN_NAMES if rcnn else POOL_NAMES if stage == "pool" else {k: f"{k} RetinaNet" for k in KINDS}
    for r in results:
        row = [
            names[r.kind],
            f"{r.seconds * 1e3:.1f}",
            f"{cfg.batch / r.seconds:.2f}",
            f"{base.seconds / r.seconds:.2f}x",
        ]
        if rcnn:
            row.append("" if r.kind == "torchvision" else f"{r.seconds / by_kind['balancedet'].seconds:.2f}x")
        row += [
            human_bytes(r.peak_bytes) if r.peak_bytes is not None else "n/a",
            f"{r.params / 1e6:.2f}M",
            f"{r.first_seconds * 1e3:.0f}",
        ]
        rows.append(row)
    what = {
        "step": "training step",
        "loss": "loss stage (anchors + assignment + losses + backward)",
        "rcnn": "two-stage training step",
        "pool": "multi-scale RoIAlign, forward and backward",
    }[stage]
    title = f"{what}: {cfg.batch} images {cfg.height}x{cfg.width}, {cfg.classes} classes, {cfg.boxes} boxes/image"
    if stage == "pool":
        title = (
            f"{what}: {cfg.batch} images {cfg.height}x{cfg.width}, P2-P5 of {POOL_CHANNELS} channels, "
            f"{cfg.rois} RoIs/image, 7x7, 2x2 samples a bin"
        )
    header = ["model", "ms", "images/s", "vs torchvision", *(["time vs random"] if rcnn else [])]
    header += ["peak memory", "params", "1st call ms"]
    return f"{title}\n{format_table(header, rows)}"


def summary(stage: str, results: list[Result], difference: tuple[float, float] | None = None) -> str:
    """One line: the speed-up over torchvision and the memory against it, and the goals met or missed; for
    the pool stage, ``difference`` (``pool_difference``) too."""
    by_kind = {r.kind: r for r in results}
    ours, theirs = by_kind["balancedet"], by_kind["torchvision"]
    speedup = theirs.seconds / ours.seconds
    known = ours.peak_bytes is not None and theirs.peak_bytes is not None
    memory = "unknown" if not known else "not above" if ours.peak_bytes <= theirs.peak_bytes else "ABOVE"
    goal = ""
    if stage in ("step", "rcnn", "pool"):
        want = {"step": GOAL_SPEEDUP, "rcnn": GOAL_RCNN_SPEEDUP, "pool": GOAL_POOL_SPEEDUP}[stage]
        goal = f" (goal >= {want}x: {'met' if speedup >= want else 'MISSED'})"
    line = f"{stage}: speed-up {speedup:.2f}x{goal}; peak memory {memory} torchvision's"
    if difference is not None:
        line += f"; largest difference from torchvision's: values {difference[0]:.1e}, gradients {difference[1]:.1e}"
    for kind, limit in GOAL_REMEDY_RATIO.items():
        if kind in by_kind:
            ratio = by_kind[kind].seconds / ours.seconds
            line += f"; {kind} {ratio:.2f}x random (goal <= {limit}x: {'met' if ratio <= limit else 'MISSED'})"
    return line


def _size(text: str) -> tuple[int, int]:
    height, _, width = text.partition("x")
    return int(height), int(width or height)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="balancedet bench detector", description=__doc__.split("\n")[0])
    parser.add_argument("--depth", type=int, default=18, choices=[18, 34, 50, 101], help="ResNet depth")
    parser.add_argument("--norm", choices=["bn", "frozen_bn"], default="bn", help="backbone norm, in both models")
    parser.add_argument("--size", type=_size, default=(256, 256), help="training-step image size, H or HxW")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--boxes", type=int, default=4, help="ground-truth boxes per image")
    parser.add_argument("--loss-size", type=_size, default=(800, 1344), help="loss-stage image size")
    parser.add_argument("--loss-batch", type=int, default=2)
    parser.add_argument("--loss-classes", type=int, default=80)
    parser.add_argument("--loss-boxes", type=int, default=20)
    parser.add_argument("--rois", type=int, default=512, help="two-stage and pool rounds: box-head RoIs per image")
    parser.add_argument("--proposals", type=int, default=1000, help="two-stage round: proposals per training image")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--memory", choices=["subprocess", "inline", "off"], default="subprocess")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    step_cfg = Config(args.depth, args.norm, args.batch, *args.size, args.classes, args.boxes, args.threads)
    configs = {
        "step": step_cfg,
        "loss": Config(
            args.depth, args.norm, args.loss_batch, *args.loss_size, args.loss_classes, args.loss_boxes, args.threads
        ),
        "rcnn": replace(step_cfg, rois=args.rois, proposals=args.proposals),
        "pool": replace(step_cfg, rois=args.rois),
    }
    print(
        f"balancedet bench detector: RetinaNet (P3-P7) and Faster R-CNN (P2-P6), ResNet-{args.depth} ({args.norm}) "
        f"+ FPN, SGD on CPU (threads={torch.get_num_threads()}, torch {torch.__version__}), median of "
        f"{args.repeat}, memory: {args.memory}"
    )
    for stage in args.stages:
        cfg = configs[stage]
        results = run_stage(stage, cfg, args.repeat, args.warmup, args.memory)
        print(format_stage(stage, cfg, results))
        difference = pool_difference(cfg) if stage == "pool" else None
        print(summary(stage, results, difference) + "\n", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
