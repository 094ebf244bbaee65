"""The one skeleton of every balancedet detector, in the spirit of torchvision's ``GeneralizedRCNN``
and DETR's model / ``SetCriterion`` split.

``DenseDetector(backbone, neck, head, prior_generator, coding, criterion, postprocess)``:

    images -> batch_images -> backbone -> neck (FPN [+ BFP]) -> head -> per-level (cls, reg)
    training: criterion(cls, reg, priors, targets) -> {"loss_*": 0-dim tensors}
    eval:     postprocess(coding.decode(reg, priors), sigmoid(cls), image_sizes) -> [{"boxes", "scores", "labels"}]

The network predicts; the criterion (target assignment, sampling, loss weighting, normalisation)
turns predictions and targets into losses and holds no learnable parameters, only the loss modules'
running state (GHM histograms, the positive-count EMA). RetinaNet and GFL are assemblies of these
parts (``balancedet.models.retinanet``, ``balancedet.models.gfl``); every part is a constructor
argument, so a remedy is swapped by passing another part, never by copying a detector.

Protocols a part follows (no detector asks ``isinstance`` of a part):

- a loss is ``loss(pred, target, weight=None, avg_factor=None)``; a loss with ``self_normalizing =
  True`` (GHM-C/R) is given no ``avg_factor``; a box loss with ``needs_decoded_boxes = True``
  (IoU, GIoU) gets decoded boxes instead of regression targets; a classification loss with
  ``needs_quality_targets = True`` (QFL) gets ``(labels, scores)``;
- a sampler is ``sampler(Candidates) -> Sample`` and lists in ``needs`` the fields it reads;
- a coding (``balancedet.models.priors``) has ``decode(reg, priors)`` and ``encode(boxes, priors)``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from balancedet.analysis.kinds import EASY_NEGATIVE, EASY_POSITIVE, HARD_NEGATIVE, HARD_POSITIVE
from balancedet.models.batching import batch_images
from balancedet.models.postprocess import DensePostProcess
from balancedet.models.priors import PriorGenerator, Priors

__all__ = [
    "DenseCriterion",
    "DenseDetector",
    "DensePostProcess",
    "KindStats",
    "call_loss",
    "check_num_classes",
    "element_losses",
    "record_kinds",
    "softmax_kinds",
]


def check_num_classes(num_classes: object, where: str) -> int:
    """``num_classes`` as an int >= 1 (background never counted), else ``ValueError`` naming ``where``."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"{where}: num_classes must be a positive int (background not counted), got {num_classes!r}")
    return num_classes


def call_loss(
    loss: Callable[..., Tensor], pred: Tensor, target, weight: Tensor | None, avg_factor: Tensor | None
) -> Tensor:
    """``loss(pred, target, weight=weight, avg_factor=...)``, without ``avg_factor`` for a self-normalising loss."""
    if getattr(loss, "self_normalizing", False):
        avg_factor = None
    return loss(pred, target, weight=weight, avg_factor=avg_factor)


@dataclass
class KindStats:
    """One step's four kinds of examples (``balancedet.analysis.kinds``) in a criterion's classification
    loss, detached, on the loss's device, in the order of ``KIND_NAMES``.

    ``count (4,)`` float64: the examples of each kind that count (weight > 0: the non-ignored or sampled
    anchors, the sampled RoIs). ``loss (4,)`` float64: each kind's part of the loss the step trained on
    (the four add up to it), or None for a loss without an element-wise form (``element_losses``).
    """

    count: Tensor
    loss: Tensor | None


def element_losses(loss: Callable[..., Tensor], pred: Tensor, target, weight: Tensor) -> Tensor | None:
    """``(N,)`` each example's loss summed over its classes, on the detached ``pred``: from the loss's own
    ``element_losses(pred, target, weight=...)`` when it has one (GHM-C, whose weights come from its
    running histogram: it gives the terms of its last call instead of being called again), else from
    ``loss`` called again with ``reduction="none"`` (on a shallow copy: the training call is left as it
    was); None for a loss with neither."""
    terms = getattr(loss, "element_losses", None)
    if callable(terms):
        with torch.no_grad():
            out = terms(pred.detach(), target, weight=weight)
        return out.reshape(pred.shape[0], -1).sum(1)
    if not hasattr(loss, "reduction"):
        return None
    elementwise = copy.copy(loss)
    elementwise.reduction = "none"
    with torch.no_grad():
        out = elementwise(pred.detach(), target, weight=weight)
    return out.reshape(pred.shape[0], -1).sum(1)


def record_kinds(
    loss: Callable[..., Tensor], pred: Tensor, target, weight: Tensor, trained: Tensor, kinds: Tensor
) -> KindStats:
    """``KindStats`` of a classification loss's call ``loss(pred, target, weight=weight, ...) = trained``;
    ``kinds (N,)`` from ``example_kinds`` (sigmoid heads) or ``softmax_kinds``.

    The element-wise losses are summed per kind and scaled so that the four parts add up to ``trained``,
    whose ``avg_factor`` (the positives of the step) and ``loss_weight`` they then include. Sums by
    ``index_add_``, no boolean indexing: no host synchronisation.
    """
    keep = (weight > 0).double()
    count = torch.zeros(4, dtype=torch.float64, device=kinds.device).index_add_(0, kinds, keep)
    per_example = element_losses(loss, pred, target, weight)
    if per_example is None:
        return KindStats(count, None)
    sums = torch.zeros_like(count).index_add_(0, kinds, per_example.detach().double())
    total = sums.sum()
    return KindStats(count, torch.where(total > 0, sums * (trained.detach().double() / total), 0.0))


def softmax_kinds(logits: Tensor, labels: Tensor, threshold: float = 0.5) -> Tensor:
    """``(N,)`` kinds by ``example_kinds``' rule (hard iff ``p_t < threshold``) for a softmax head:
    ``logits (N, K + 1)``, ``labels (N,)`` with background at 0, ``p_t`` the softmax probability of the label."""
    p_t = logits.detach().float().softmax(1).gather(1, labels.unsqueeze(1)).squeeze(1)
    hard = p_t < threshold
    return torch.where(
        labels > 0, torch.where(hard, HARD_POSITIVE, EASY_POSITIVE), torch.where(hard, HARD_NEGATIVE, EASY_NEGATIVE)
    )


class DenseCriterion(nn.Module):
    """What ``DenseDetector`` calls in training: ``forward(cls (B, A, K), reg (B, A, R), priors, targets)
    -> {"loss_*": Tensor}`` on the concatenated levels, ``targets[i] = {"boxes", "labels"}``.

    ``progress`` (training progress in [0, 1], set through ``DenseDetector.set_progress``) is read by
    samplers with a schedule (S-OHEM's stages). With ``record_stats = True`` (off by default: the
    training diagnostics, ``balancedet.engine.diagnostics``, turn it on) each call also keeps the
    ``KindStats`` of its classification loss in ``stats``; the losses are the same either way.
    """

    #: the diagnostics' name of this criterion's classification loss (results.csv's column prefix)
    stats_name = "cls"
    record_stats = False

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.progress = 0.0
        self.stats: KindStats | None = None


class DenseDetector(nn.Module):
    """A dense detector made of parts; ``model(images, targets=None)`` as torchvision's detectors.

    Args:
        backbone: ``images (B, 3, H, W) -> [maps]`` (e.g. ``ResNetBackbone``).
        neck: ``[maps] -> [levels]`` with ``out_channels`` and ``strides`` (e.g. ``FeaturePyramid``).
        head: ``[levels] -> (cls, reg)`` per-level lists of ``(B, A_l, K)`` and ``(B, A_l, R)``, with
            ``num_classes``, ``num_anchors`` (priors per location) and ``reg_width`` (``R``) attributes.
        prior_generator: ``(feature_sizes, device) -> Priors`` (``PriorGenerator``).
        coding: ``decode(reg, priors) -> boxes`` (``DeltaCoding``, ``DistributionCoding``), shared with the
            criterion, so that training and inference decode alike.
        criterion: ``(cls (B, A, K), reg (B, A, R), priors, targets) -> {"loss_*": Tensor}``; its
            ``progress`` attribute (training progress in [0, 1], set by ``set_progress``) is read by
            samplers with a schedule (S-OHEM).
        num_classes: ``K`` (background never counted).
        postprocess: ``(boxes, scores, image_sizes) -> detections`` on per-level decoded boxes and
            sigmoid scores; default ``DensePostProcess()``.
        size_divisible: a list of images is zero-padded to a multiple of it (32: C5's stride).

    Training: ``images`` a normalised ``(B, 3, H, W)`` tensor or a list of ``(3, H_i, W_i)`` tensors,
    ``targets[i] = {"boxes": (G_i, 4) xyxy pixels, "labels": (G_i,) int64 in [0, K)}`` (``G_i = 0`` is
    legal) -> the criterion's loss dict. Eval: one ``{"boxes", "scores", "labels"}`` per image, in the
    input image's coordinates.
    """

    def __init__(
        self,
        backbone: nn.Module,
        neck: nn.Module,
        head: nn.Module,
        prior_generator: PriorGenerator,
        coding,
        criterion: nn.Module,
        num_classes: int,
        postprocess: nn.Module | None = None,
        size_divisible: int = 32,
    ):
        super().__init__()
        name = type(self).__name__
        check_num_classes(num_classes, name)
        if prior_generator.num_levels != len(neck.strides):
            raise ValueError(f"{name}: {prior_generator.num_levels} prior levels for the neck's {len(neck.strides)}")
        expected = (num_classes, prior_generator.num_anchors_per_location, coding.reg_width)
        got = tuple(getattr(head, a, None) for a in ("num_classes", "num_anchors", "reg_width"))
        if got != expected:
            raise ValueError(f"{name}: the head has (num_classes, num_anchors, reg_width) {got}, expected {expected}")
        self.backbone, self.neck, self.head = backbone, neck, head
        self.prior_generator, self.coding = prior_generator, coding
        self.criterion = criterion
        self.postprocess = postprocess if postprocess is not None else DensePostProcess()
        self.num_classes, self.size_divisible = num_classes, size_divisible

    def features(self, images: Tensor) -> list[Tensor]:
        """The pyramid levels of a padded ``(B, 3, H, W)`` batch."""
        return self.neck(self.backbone(images))

    def set_progress(self, fraction: float) -> None:
        """Tell the criterion how far training has gone (``step / total``), for scheduled samplers."""
        self.criterion.progress = min(max(float(fraction), 0.0), 1.0)

    def forward(
        self, images: Tensor | Sequence[Tensor], targets: Sequence[dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        name = type(self).__name__
        batch, image_sizes = batch_images(images if isinstance(images, Tensor) else list(images), self.size_divisible)
        if self.training and (targets is None or len(targets) != batch.shape[0]):
            got = None if targets is None else len(targets)
            raise ValueError(f"{name}: training needs one target per image ({batch.shape[0]}), got {got}")
        cls_levels, reg_levels, priors = self.head_outputs(batch)
        if self.training:
            return self.criterion(torch.cat(cls_levels, 1), torch.cat(reg_levels, 1), priors, list(targets))
        return self.predict(cls_levels, reg_levels, priors, image_sizes)

    def head_outputs(self, batch: Tensor) -> tuple[list[Tensor], list[Tensor], Priors]:
        """The head's per-level ``(B, A_l, K)`` logits and ``(B, A_l, R)`` regression of a padded
        ``(B, 3, H, W)`` batch, and their priors: what ``forward`` hands to the criterion or to
        ``predict`` (``balancedet analyze`` reads them too)."""
        levels = self.features(batch)
        if len(levels) != self.prior_generator.num_levels:
            name = type(self).__name__
            raise ValueError(f"{name}: {len(levels)} pyramid levels for {self.prior_generator.num_levels} prior levels")
        cls_levels, reg_levels = self.head(levels)
        return cls_levels, reg_levels, self.prior_generator([f.shape[-2:] for f in levels], batch.device)

    @torch.no_grad()
    def predict(
        self, cls_levels: list[Tensor], reg_levels: list[Tensor], priors: Priors, image_sizes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        """Detections from the head's per-level outputs: decode, sigmoid, then ``postprocess``."""
        boxes = [
            self.coding.decode(r, Priors(a, s, (a.shape[0],)))
            for r, a, s in zip(reg_levels, priors.split(priors.anchors), priors.split(priors.strides), strict=True)
        ]
        return self.postprocess(boxes, [c.float().sigmoid() for c in cls_levels], image_sizes)
