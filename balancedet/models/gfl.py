"""Generalized Focal Loss detector (Li et al., "Generalized Focal Loss: Learning Qualified and Distributed
Bounding Boxes for Dense Object Detection", NeurIPS 2020, arXiv 2006.04388).

An assembly of the shared skeleton (``balancedet.models.detector.DenseDetector``): ResNet + FPN (P3-P7,
P6 from P5 as GFL's released configuration), the dense head with one anchor point per location,
GroupNorm and a per-level ``Scale``, ending in

- a joint classification-IoU branch (sec. 3, "QFL"): ``C`` sigmoid outputs whose target at a
  positive is the IoU of its decoded predicted box with its ground truth (0 elsewhere), trained with
  Quality Focal Loss (eq. 5, beta = 2);
- a general distribution of each box side (sec. 3, "DFL"): ``reg_max + 1 = 17`` bins per side, the side
  being the expectation ``sum_i P(i) * i`` times the level's stride, trained with Distribution Focal Loss
  (eq. 6, weight 0.25) and the GIoU loss (weight 2.0) on the decoded box.

Positives come from ATSS (Zhang et al., CVPR 2020, arXiv 1912.02424) on one square anchor of side
``8 * stride`` per point. Our ``reg_max`` is the GFL paper's: ``reg_max = 16`` means 17 bins.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from balancedet.analysis.kinds import example_kinds
from balancedet.assign import AssignResult, ATSSAssigner
from balancedet.boxes import aligned_box_iou
from balancedet.boxes.anchors import FPN_STRIDES
from balancedet.losses.gfl import DistributionFocalLoss, QualityFocalLoss
from balancedet.losses.iou import GIoULoss
from balancedet.models.batching import pad_targets
from balancedet.models.detector import DenseCriterion, DenseDetector, call_loss, check_num_classes, record_kinds
from balancedet.models.heads import DenseHead
from balancedet.models.normalizer import PositiveNormalizer
from balancedet.models.postprocess import DensePostProcess
from balancedet.models.priors import DistributionCoding, PriorGenerator, Priors
from balancedet.models.pyramid import build_pyramid

__all__ = ["GFL", "GFLCriterion"]


class GFLCriterion(DenseCriterion):
    """The GFL training losses of a batch (arXiv 2006.04388, sec. 3, "Training Dense Detectors with GFL").

    Computed for all images at once, after one ATSS call:

    - ``loss_cls``: the classification loss over every non-ignored (point, class), divided by the number
      of positives (``normalizer``, summed across processes). With a loss that declares
      ``needs_quality_targets`` (QFL, the default) the target at a positive's class is the detached IoU
      of its decoded predicted box with its ground truth, 0 elsewhere; any other sigmoid loss (the focal
      loss, the GFL paper's baseline) gets the class labels.
    - ``loss_box``: ``box_loss`` (default ``GIoULoss(loss_weight=2.0)``) on the decoded boxes.
    - ``loss_dfl``: ``dfl_weight`` (0.25) times DFL (eq. 6) averaged over the four sides, targets in
      strides clamped to ``[0, reg_max - 0.01]``; ``dfl_weight=0`` trains the general distribution
      without DFL (the paper's Table 1 ablation) and returns no ``loss_dfl``.

    The two box terms weigh each positive by its detached predicted score (the max over classes of the
    sigmoid) and divide by the sum of those weights (``box_weight_normalizer``, at least 1), as the GFL
    reference implementation does (the paper's total loss writes ``1 / N_pos`` for all three terms). Both
    normalisers divide the all-reduced value by the world size, so with DDP's gradient averaging the
    batch's summed loss is divided by the batch's total count or weight over all processes.

    The box terms run densely over all points with zero weights off the positives: selecting the
    positives would need a data-dependent size, i.e. a host synchronisation.
    """

    def __init__(
        self,
        num_classes: int,
        coding: DistributionCoding | None = None,
        cls_loss: Callable[..., Tensor] | None = None,
        box_loss: Callable[..., Tensor] | None = None,
        dfl_weight: float = 0.25,
        assigner: Callable[..., object] | None = None,
        normalizer: PositiveNormalizer | None = None,
    ):
        super().__init__(num_classes)
        self.coding = coding if coding is not None else DistributionCoding()
        self.cls_loss = cls_loss if cls_loss is not None else QualityFocalLoss(beta=2.0)
        self.box_loss = box_loss if box_loss is not None else GIoULoss(loss_weight=2.0)
        if not getattr(self.box_loss, "needs_decoded_boxes", False):
            raise ValueError("GFLCriterion: box_loss must compare decoded boxes (IoU/GIoU: needs_decoded_boxes)")
        if dfl_weight < 0:
            raise ValueError(f"GFLCriterion: dfl_weight must be >= 0, got {dfl_weight}")
        self.dfl_loss = DistributionFocalLoss(loss_weight=dfl_weight) if dfl_weight > 0 else None
        self.assigner = assigner if assigner is not None else ATSSAssigner(topk=9)
        self.normalizer = normalizer if normalizer is not None else PositiveNormalizer()
        self.box_weight_normalizer = PositiveNormalizer()

    def forward(
        self, cls_logits: Tensor, reg: Tensor, priors: Priors, targets: Sequence[dict[str, Tensor]]
    ) -> dict[str, Tensor]:
        k = self.num_classes
        gt_boxes, gt_labels = pad_targets(targets, priors.anchors.device)
        assign = self.assigner(priors.anchors, list(priors.num_per_level), gt_boxes, gt_labels, k)
        positive, valid = assign.positive, assign.labels >= 0
        labels = torch.where(valid, assign.labels, k).reshape(-1)
        pred_boxes = self.coding.decode(reg, priors)
        target_boxes = assign.matched_values(gt_boxes).to(pred_boxes.dtype)
        with torch.no_grad():
            # off the positives the IoU is meaningless (possibly 0/0) and replaced by 0
            iou = aligned_box_iou(pred_boxes, target_boxes).clamp(0.0, 1.0)
            quality = torch.where(positive, iou, 0.0)
            box_weight = torch.where(positive, cls_logits.sigmoid().amax(dim=2).to(iou.dtype), 0.0)

        cls_target = (labels, quality.reshape(-1)) if getattr(self.cls_loss, "needs_quality_targets", False) else labels
        num_pos = self.normalizer(positive.sum())
        weight = valid.reshape(-1).to(quality.dtype)
        logits = cls_logits.reshape(-1, k)
        losses = {"loss_cls": call_loss(self.cls_loss, logits, cls_target, weight, num_pos)}
        if self.record_stats:
            kinds = example_kinds(logits, labels)
            self.stats = record_kinds(self.cls_loss, logits, cls_target, weight, losses["loss_cls"], kinds)
        weight_sum = self.box_weight_normalizer(box_weight.sum())
        losses["loss_box"] = call_loss(
            self.box_loss, pred_boxes.reshape(-1, 4), target_boxes.reshape(-1, 4), box_weight.reshape(-1), weight_sum
        )
        if self.dfl_loss is not None:
            distances = self.coding.encode(target_boxes, priors)
            # avg_factor 4 * sum(w): the mean over the four sides of each positive, then the weighted mean
            losses["loss_dfl"] = call_loss(
                self.dfl_loss,
                reg.reshape(-1, self.coding.reg_max + 1),
                distances.reshape(-1),
                box_weight.unsqueeze(-1).expand(-1, -1, 4).reshape(-1),
                4 * weight_sum,
            )
        return losses

    @torch.no_grad()
    def assign(self, priors: Priors, targets: Sequence[dict[str, Tensor]]) -> AssignResult:
        """The ``(B, A)`` ATSS assignment ``forward`` trains on, without the losses (``balancedet analyze``)."""
        gt_boxes, gt_labels = pad_targets(targets, priors.anchors.device)
        return self.assigner(priors.anchors, list(priors.num_per_level), gt_boxes, gt_labels, self.num_classes)


class GFL(DenseDetector):
    """Generalized Focal Loss detector (arXiv 2006.04388), torchvision's ``model(images, targets)`` contract.

    Args:
        num_classes: ``C``, not counting background.
        backbone: a ResNet depth (18, 34, 50, 101; random init, frozen BN, stem and layer1 frozen) or a
            module with ``out_channels`` and ``strides``, e.g. ``ResNetBackbone(50, weights=...)``.
        neck: a module with ``out_channels`` and ``strides``; default FPN (256 channels, P6 from P5 as GFL's
            released configuration). ``balancedet.models.build_pyramid`` builds either, with Libra's BFP.
        head: default ``DenseHead(neck.out_channels, C, 1, 4 * (reg_max + 1), norm="gn", num_scales=L)``:
            4 convs of 256 with GroupNorm, a ``Scale`` per level, prior bias pi = 0.01.
        strides: the pyramid's strides (P3-P7: 8 to 128).
        reg_max: largest distance in strides; ``reg_max + 1`` bins per side (17 in the paper).
        octave_base_scale: ATSS anchors are squares of side ``octave_base_scale * stride`` (8).
        point_offset: points are ``(index + point_offset) * stride`` (0, as GFL's released code).
        cls_loss, box_loss, dfl_weight, assigner, normalizer: ``GFLCriterion``'s (QFL beta 2; GIoU weight
            2.0; DFL weight 0.25; ``ATSSAssigner(topk=9)``; ``PositiveNormalizer()``).
        postprocess: default ``DensePostProcess(nms_iou=0.6)`` (GFL's released configuration).
        size_divisible: a list of images is padded to a multiple of it (32: C5's stride).

    Training returns ``{"loss_cls", "loss_box", "loss_dfl"}``; evaluation one dict per image with
    ``"boxes"``, ``"scores"`` (the joint classification-IoU sigmoid) and ``"labels"``.
    """

    def __init__(
        self,
        num_classes: int,
        backbone: nn.Module | int = 50,
        *,
        strides: Sequence[int] = FPN_STRIDES,
        reg_max: int = 16,
        octave_base_scale: float = 8.0,
        point_offset: float = 0.0,
        neck: nn.Module | None = None,
        head: nn.Module | None = None,
        cls_loss: Callable[..., Tensor] | None = None,
        box_loss: Callable[..., Tensor] | None = None,
        dfl_weight: float = 0.25,
        assigner: Callable[..., object] | None = None,
        normalizer: PositiveNormalizer | None = None,
        postprocess: DensePostProcess | None = None,
        size_divisible: int = 32,
    ):
        check_num_classes(num_classes, "GFL")
        strides = tuple(int(s) for s in strides)
        backbone, neck = build_pyramid(backbone, strides, extra_from="p5", neck=neck, where="GFL")
        priors = PriorGenerator([octave_base_scale * s for s in strides], strides, offset=point_offset)
        coding = DistributionCoding(reg_max)
        if head is None:
            head = DenseHead(neck.out_channels, num_classes, 1, coding.reg_width, norm="gn", num_scales=len(strides))
        criterion = GFLCriterion(num_classes, coding, cls_loss, box_loss, dfl_weight, assigner, normalizer)
        if postprocess is None:
            postprocess = DensePostProcess(nms_iou=0.6)
        super().__init__(backbone, neck, head, priors, coding, criterion, num_classes, postprocess, size_divisible)
