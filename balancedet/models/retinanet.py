"""RetinaNet (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017, arXiv 1708.02002, sec. 4).

An assembly of the shared skeleton (``balancedet.models.detector.DenseDetector``): ResNet + FPN
(P3-P7, 256 channels, P6 from C5), 9 anchors per location, the dense head (two towers of four 3x3
convs, ``K * A`` sigmoid logits and ``4 * A`` class-agnostic deltas), and ``RetinaNetCriterion``.

The criterion computes the losses for the whole batch at once: one assigner call on ground truth
padded to ``(B, G)``, one classification-loss call on the ``(B * A, K)`` logits of all levels (GHM-C
sees one histogram per step), one box-loss call on all anchors with the positives as weight, both
normalised by the positives of the batch summed across processes. torchvision's RetinaNet loops over
images and normalises each image by its own positives (docs/conventions.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from balancedet.analysis.kinds import example_kinds
from balancedet.assign import AssignResult, MaxIoUAssigner
from balancedet.boxes import DeltaXYWHCoder, aligned_box_iou
from balancedet.boxes.anchors import FPN_STRIDES, RETINANET_RATIOS, RETINANET_SCALES, RETINANET_SIZES
from balancedet.losses.cross_entropy import binary_cross_entropy
from balancedet.losses.focal import FocalLoss
from balancedet.losses.smooth_l1 import SmoothL1Loss, smooth_l1_loss
from balancedet.models.batching import pad_targets
from balancedet.models.detector import DenseCriterion, DenseDetector, call_loss, check_num_classes, record_kinds
from balancedet.models.heads import DenseHead
from balancedet.models.normalizer import PositiveNormalizer
from balancedet.models.postprocess import DensePostProcess
from balancedet.models.priors import DeltaCoding, PriorGenerator, Priors
from balancedet.models.pyramid import build_pyramid
from balancedet.samplers import Candidates

__all__ = ["RetinaNet", "RetinaNetCriterion", "SMOOTH_L1_BETA"]

#: Detectron's RetinaNet smooth-L1 threshold (``RETINANET.BBOX_REG_BETA = 0.11``, about 1/9), used in every
#: dense head; a Faster R-CNN box head uses 1.0 on its std-scaled targets.
SMOOTH_L1_BETA = 0.11


class RetinaNetCriterion(DenseCriterion):
    """Assignment, optional sampling, and the two losses of an anchor-based dense head.

    Args:
        num_classes: ``K``.
        coding: the head's regression coding (``DeltaCoding()``: deltas, stds 1).
        cls_loss: ``(logits (N, K), labels (N,), weight, avg_factor)``; labels use ``K`` for background.
            Default ``FocalLoss(alpha=0.25, gamma=2)`` (the paper, sec. 4.1 / Table 1b).
        box_loss: ``(pred (N, 4), target (N, 4), weight, avg_factor)``, on deltas, or on decoded boxes
            when it declares ``needs_decoded_boxes``. Default smooth L1 with ``beta = 0.11``.
        assigner: ``(anchors, gt_boxes, gt_labels, num_classes) -> AssignResult``; default
            ``MaxIoUAssigner()`` (IoU >= 0.5 positive, < 0.4 negative, low-quality matches).
        sampler: ``None`` (every non-ignored anchor, the paper) or any ``balancedet.samplers`` sampler:
            ``sampler(Candidates) -> Sample``. Of the candidates' fields only those in ``sampler.needs``
            are computed: ``cls_loss`` is the detached sigmoid cross entropy summed over classes (the
            confidence loss OHEM and SSD rank by), ``box_loss`` the detached smooth L1 (beta 0.11) of the
            deltas summed over the four coordinates (0 off the positives), ``boxes`` the decoded
            predictions, ``max_iou`` the assigner's. The kept anchors are the classification weight, the
            kept positives the box-loss weight and the normaliser's count.
        normalizer: ``PositiveNormalizer()`` (positives summed across processes; ``momentum=0.9`` for
            detectron2's EMA).

    ``forward(cls (B, A, K), reg (B, A, 4), priors, targets) -> {"loss_cls", "loss_box"}``.
    """

    def __init__(
        self,
        num_classes: int,
        coding: DeltaCoding | None = None,
        cls_loss: Callable[..., Tensor] | None = None,
        box_loss: Callable[..., Tensor] | None = None,
        assigner: Callable[..., object] | None = None,
        sampler: Callable[[Candidates], object] | None = None,
        normalizer: PositiveNormalizer | None = None,
    ):
        super().__init__(num_classes)
        self.coding = coding if coding is not None else DeltaCoding()
        self.cls_loss = cls_loss if cls_loss is not None else FocalLoss(alpha=0.25, gamma=2.0)
        self.box_loss = box_loss if box_loss is not None else SmoothL1Loss(beta=SMOOTH_L1_BETA)
        self.assigner = assigner if assigner is not None else MaxIoUAssigner()
        self.sampler = sampler
        self.normalizer = normalizer if normalizer is not None else PositiveNormalizer()

    def forward(
        self, cls_logits: Tensor, reg: Tensor, priors: Priors, targets: Sequence[dict[str, Tensor]]
    ) -> dict[str, Tensor]:
        k = self.num_classes
        anchors = priors.anchors
        gt_boxes, gt_labels = pad_targets(targets, anchors.device)
        assign = self.assigner(anchors, gt_boxes, gt_labels, k)
        # Ignored anchors (-1) take the background label; their weight 0 removes them from the loss.
        labels = torch.where(assign.labels < 0, k, assign.labels)
        pos, keep = assign.positive, assign.valid
        # Non-positive anchors regress onto themselves: finite zero targets under a zero weight.
        target_boxes = torch.where(pos[..., None], assign.matched_values(gt_boxes).to(anchors.dtype), anchors)
        if self.sampler is not None:
            sample = self.sampler(self.candidates(assign, cls_logits, labels, reg, target_boxes, priors))
            pos, keep = sample.pos, sample.pos | sample.neg
        num_pos = self.normalizer(pos.sum())

        decoded = self.coding.decode(reg, priors) if self._needs_boxes() else None
        cls_target = labels.reshape(-1)
        if getattr(self.cls_loss, "needs_quality_targets", False):
            with torch.no_grad():
                iou = aligned_box_iou(decoded.detach(), target_boxes).clamp(0.0, 1.0)
            cls_target = (cls_target, torch.where(pos, iou, 0.0).reshape(-1))
        logits, weight = cls_logits.reshape(-1, k), keep.reshape(-1).float()
        loss_cls = call_loss(self.cls_loss, logits, cls_target, weight, num_pos)
        if self.record_stats:
            kinds = example_kinds(logits, labels.reshape(-1))
            self.stats = record_kinds(self.cls_loss, logits, cls_target, weight, loss_cls, kinds)
        if getattr(self.box_loss, "needs_decoded_boxes", False):
            pred, target = decoded, target_boxes
        else:
            pred, target = reg, self.coding.encode(target_boxes, priors)
        # Targets stay float32 under autocast: the losses upcast half/bf16 predictions themselves.
        loss_box = call_loss(
            self.box_loss, pred.reshape(-1, 4), target.reshape(-1, 4), pos.reshape(-1).float(), num_pos
        )
        return {"loss_cls": loss_cls, "loss_box": loss_box}

    @torch.no_grad()
    def assign(self, priors: Priors, targets: Sequence[dict[str, Tensor]]) -> AssignResult:
        """The ``(B, A)`` assignment ``forward`` trains on, without the losses (``balancedet analyze``)."""
        gt_boxes, gt_labels = pad_targets(targets, priors.anchors.device)
        return self.assigner(priors.anchors, gt_boxes, gt_labels, self.num_classes)

    def _needs_boxes(self) -> bool:
        return bool(
            getattr(self.box_loss, "needs_decoded_boxes", False)
            or getattr(self.cls_loss, "needs_quality_targets", False)
        )

    @torch.no_grad()
    def candidates(
        self, assign, cls_logits: Tensor, labels: Tensor, reg: Tensor, target_boxes: Tensor, priors: Priors
    ) -> Candidates:
        """The sampler's view of the anchors: only the fields listed in ``sampler.needs`` are computed."""
        needs = self.sampler.needs
        batch, num = assign.matched.shape
        fields: dict[str, Tensor] = {}
        if "cls_loss" in needs:
            ce = binary_cross_entropy(
                cls_logits.detach().reshape(-1, self.num_classes), labels.reshape(-1), reduction="none"
            )
            fields["cls_loss"] = ce.sum(1).view(batch, num)
        if "box_loss" in needs:
            deltas = self.coding.encode(target_boxes, priors)
            box = smooth_l1_loss(reg.detach().float(), deltas, beta=SMOOTH_L1_BETA, reduction="none").sum(-1)
            fields["box_loss"] = torch.where(assign.positive, box, 0.0)
        if "boxes" in needs:
            fields["boxes"] = self.coding.decode(reg.detach(), priors)
        if "max_iou" in needs:
            fields["max_iou"] = assign.max_iou
        return Candidates(assign.matched, progress=self.progress, **fields)


class RetinaNet(DenseDetector):
    """RetinaNet with pluggable imbalance remedies; ``model(images, targets=None)`` as torchvision's.

    Args:
        num_classes: ``K`` object classes (background is never counted).
        backbone: a ResNet depth (18, 34, 50, 101; random init, frozen BN, stem and layer1 frozen) or a
            module with ``out_channels`` and ``strides``, e.g. ``ResNetBackbone(50, weights=...)``.
        neck: a module with ``out_channels`` and ``strides``; default the paper's FPN (256 channels, P6 from
            C5) over the backbone. ``balancedet.models.build_pyramid`` builds either, with Libra's BFP.
        head: default ``DenseHead(neck.out_channels, K, A, 4)``: the paper's subnets (4 convs of 256, no norm,
            prior bias pi = 0.01).
        anchor_sizes, anchor_strides, anchor_ratios, anchor_scales: 32-512 on strides 8-128, ratios 1:2
            1:1 2:1, scales 2^0 2^(1/3) 2^(2/3) (sec. 4, "Anchors").
        cls_loss, box_loss, assigner, sampler, normalizer: ``RetinaNetCriterion``'s.
        box_coder: default ``DeltaXYWHCoder()`` (stds 1, dw/dh clamp at log(1000/16)).
        postprocess: default ``DensePostProcess()``: score 0.05, top 1000 per level, NMS 0.5, 100 per image.
        size_divisible: a list of images is padded to a multiple of it (32: C5's stride).

    Training returns ``{"loss_cls", "loss_box"}``.
    """

    def __init__(
        self,
        num_classes: int,
        backbone: nn.Module | int = 50,
        *,
        anchor_sizes: Sequence[float] = RETINANET_SIZES,
        anchor_strides: Sequence[int] = FPN_STRIDES,
        anchor_ratios: Sequence[float] = RETINANET_RATIOS,
        anchor_scales: Sequence[float] = RETINANET_SCALES,
        neck: nn.Module | None = None,
        head: nn.Module | None = None,
        cls_loss: Callable[..., Tensor] | None = None,
        box_loss: Callable[..., Tensor] | None = None,
        assigner: Callable[..., object] | None = None,
        sampler: Callable[[Candidates], object] | None = None,
        normalizer: PositiveNormalizer | None = None,
        box_coder: DeltaXYWHCoder | None = None,
        postprocess: DensePostProcess | None = None,
        size_divisible: int = 32,
    ):
        check_num_classes(num_classes, "RetinaNet")
        backbone, neck = build_pyramid(backbone, anchor_strides, extra_from="c5", neck=neck, where="RetinaNet")
        priors = PriorGenerator(anchor_sizes, anchor_strides, anchor_ratios, anchor_scales)
        if head is None:
            head = DenseHead(neck.out_channels, num_classes, priors.num_anchors_per_location, 4)
        coding = DeltaCoding(box_coder)
        criterion = RetinaNetCriterion(num_classes, coding, cls_loss, box_loss, assigner, sampler, normalizer)
        super().__init__(backbone, neck, head, priors, coding, criterion, num_classes, postprocess, size_divisible)
