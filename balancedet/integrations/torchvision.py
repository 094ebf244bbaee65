"""Train torchvision's detectors with balancedet's losses and samplers.

- **RetinaNet**: ``torchvision.models.detection.RetinaNet`` computes its classification loss in
  ``model.head.classification_head.compute_loss(targets, head_outputs, matched_idxs)``, a Python loop
  over images calling ``torchvision.ops.sigmoid_focal_loss`` on one-hot targets built per image.
  ``use_balancedet_loss`` replaces that method on the instance by a batched version that calls one of
  ours once for the whole batch: the focal loss (fused, far less memory for backward), FL*, the CE
  baselines, or ``GHMC`` (one gradient-density histogram per step over all images and levels).
- **Faster R-CNN**: ``torchvision.models.detection.FasterRCNN`` samples its RoIs in
  ``model.roi_heads`` (``RoIHeads.select_training_samples``: 512 per image at a quarter foreground,
  ``BalancedPositiveNegativeSampler``) and computes the box head's losses in ``fastrcnn_loss`` (softmax
  CE, smooth L1 with beta 1/9). ``use_balancedet_roi_heads`` swaps ``model.roi_heads`` for a
  ``BalancedRoIHeads`` holding the same modules (the state dict keeps its keys), whose training pass
  takes any sampler of the ``balancedet.samplers`` protocol (``libra_sampler()``, ``OHEMSampler``...)
  and any box loss (``BalancedL1Loss``...); inference is torchvision's, unchanged.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import box_iou

from balancedet.assign.result import BACKGROUND, IGNORE
from balancedet.losses.cross_entropy import CrossEntropyLoss, cross_entropy
from balancedet.losses.smooth_l1 import SmoothL1Loss, smooth_l1_loss
from balancedet.models.batching import pad_targets
from balancedet.models.detector import call_loss
from balancedet.models.normalizer import PositiveNormalizer
from balancedet.models.roi_head import ROI_SMOOTH_L1_BETA
from balancedet.models.rpn import sampled_losses, sampler_candidates
from balancedet.samplers import Candidates, Sample

__all__ = [
    "BalancedRoIHeads",
    "NORMALIZATIONS",
    "RoIBatch",
    "TORCHVISION_BOX_BETA",
    "use_balancedet_loss",
    "use_balancedet_roi_heads",
]

NORMALIZATIONS = ("image", "batch")
#: torchvision's ``Matcher.BETWEEN_THRESHOLDS``: anchors in the ignore band.
_BETWEEN_THRESHOLDS = -2


def use_balancedet_loss(
    model: nn.Module,
    loss: Callable[..., Tensor],
    normalization: str = "image",
    normalizer: PositiveNormalizer | None = None,
) -> nn.Module:
    """Swap the classification loss of a torchvision ``RetinaNet`` for ``loss``; returns ``model``.

    Args:
        model: a ``torchvision.models.detection.RetinaNet`` (its ``head.classification_head``).
        loss: called as ``loss(logits (N, C), labels (N,), weight=(N,), avg_factor=...)`` with ``C``
            meaning background (``FocalLoss()``, ``sigmoid_focal_loss``...). A loss that declares
            ``self_normalizing`` (``GHMC``: one histogram per step over all images and levels) gets the
            non-ignored mask as its weight and no ``avg_factor``: its own normaliser replaces both.
        normalization: ``"image"`` keeps torchvision's semantics (each image's loss divided by its
            own positives, then the mean over images), so that ``FocalLoss()`` reproduces
            torchvision's value; ``"batch"`` divides the batch's summed loss by its positives, summed
            across processes by ``normalizer`` (the focal paper's normaliser, sec. 4).
        normalizer: for ``"batch"``; default ``PositiveNormalizer()``. It is registered on the head
            as ``balancedet_normalizer`` so that an EMA state is checkpointed with the model.

    The replacement runs on the batch at once: labels are gathered from padded ground truth, the
    ignore band (``matched_idxs == -2``) gets weight 0, and the per-image normalisation becomes a
    per-anchor weight, so there is no loop over images and no host synchronisation in the loss.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"use_balancedet_loss: normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    head = getattr(getattr(model, "head", None), "classification_head", None)
    if head is None or not hasattr(head, "num_classes"):
        raise TypeError(f"use_balancedet_loss: expected a torchvision RetinaNet, got {type(model).__name__}")
    if isinstance(loss, nn.Module):
        head.balancedet_loss = loss  # registered: a GHMC histogram moves and saves with the model
    if normalization == "batch":
        head.balancedet_normalizer = normalizer if normalizer is not None else PositiveNormalizer()

    def compute_loss(
        self, targets: list[dict[str, Tensor]], head_outputs: dict[str, Tensor], matched_idxs: list[Tensor]
    ) -> Tensor:
        logits = head_outputs["cls_logits"]
        batch, num_anchors, num_classes = logits.shape
        matched = torch.stack(matched_idxs)
        _, gt_labels = pad_targets(targets, logits.device)
        positive = matched >= 0
        if gt_labels.shape[1] == 0:
            labels = torch.full_like(matched, num_classes)
        else:
            labels = torch.where(positive, gt_labels.gather(1, matched.clamp(min=0)), num_classes)
        valid = (matched != _BETWEEN_THRESHOLDS).to(logits.dtype)
        if getattr(loss, "self_normalizing", False):
            weight, avg_factor = valid, None
        elif normalization == "image":
            per_image = positive.sum(1).clamp(min=1).to(logits.dtype) * batch
            weight, avg_factor = valid / per_image[:, None], logits.new_ones(())
        else:
            weight, avg_factor = valid, self.balancedet_normalizer(positive.sum())
        return call_loss(loss, logits.reshape(-1, num_classes), labels.reshape(-1), weight.reshape(-1), avg_factor)

    head.compute_loss = types.MethodType(compute_loss, head)
    return model


#: torchvision's ``fastrcnn_loss``: smooth L1 with beta 1/9 on the box head's deltas (Detectron's beta 1
#: is ``balancedet.models.roi_head.ROI_SMOOTH_L1_BETA``); the default box loss here, so that only what is
#: asked for changes.
TORCHVISION_BOX_BETA = 1.0 / 9.0


@dataclass(frozen=True)
class RoIBatch:
    """A batch's RoIs (proposals, then every ground-truth box, as torchvision adds them), padded to ``(B, R)``.

    Attributes:
        boxes: ``(B, R, 4)`` RoIs; padding rows are ``(0, 0, 1, 1)``.
        labels: ``(B, R)`` int64 torchvision's labels: class ``>= 1``, 0 background, -1 ignored (and padding).
        matched: ``(B, R)`` int64 the sampler protocol's: ground-truth index, -1 background, -2 ignored.
        max_iou: ``(B, R)`` each RoI's best IoU with its image's ground truth (0 without any).
        target_boxes: ``(B, R, 4)`` the matched ground-truth box (the RoI itself off the foreground).
        counts: RoIs per image.
    """

    boxes: Tensor
    labels: Tensor
    matched: Tensor
    max_iou: Tensor
    target_boxes: Tensor
    counts: list[int]

    @property
    def valid(self) -> Tensor:
        """``(B, R)`` bool: RoIs that may be sampled (not padding, not in an ignore band)."""
        return self.matched != IGNORE


class BalancedRoIHeads(RoIHeads):
    """torchvision's ``RoIHeads`` whose training samples RoIs with a balancedet sampler and scores them with
    balancedet losses; the same modules (pooler, box head, predictor), matcher, box coder and inference.

    Args:
        roi_heads: a torchvision ``RoIHeads`` of a box-only Faster R-CNN (no mask or keypoint branch).
        sampler: any sampler of the ``balancedet.samplers`` protocol, applied to the whole batch at once:
            ``libra_sampler(512, 0.25)`` (Libra R-CNN, sec. 3.1), ``OHEMSampler(64, mode="budget",
            nms_iou=0.7)`` (OHEM, sec. 4), ``RandomSampler(512, 0.25)``... ``None`` keeps torchvision's
            own ``fg_bg_sampler`` (same RNG calls, so the same RoIs for the same seed).
        cls_loss: ``(logits (N, K + 1), labels (N,), weight, avg_factor)`` with background 0; default
            ``CrossEntropyLoss()`` (torchvision's ``F.cross_entropy``).
        box_loss: ``(pred (N, 4), target (N, 4), weight, avg_factor)`` on the ground-truth class's deltas
            (or on decoded boxes for a loss that ``needs_decoded_boxes``), the targets encoded by
            torchvision's ``BoxCoder`` (weights 10, 10, 5, 5: our stds 0.1, 0.1, 0.2, 0.2); default
            ``SmoothL1Loss(beta=1/9)``, torchvision's. Libra R-CNN's is ``BalancedL1Loss()`` (beta 1).

    Both losses are divided by the number of sampled RoIs, as ``fastrcnn_loss`` does. Only the sampled RoIs
    go through the head with gradient. A sampler that ranks by loss (``cls_loss`` in its ``needs``: OHEM,
    S-OHEM) first gets every RoI through the head without gradient and their per-RoI CE + smooth L1
    (beta 1, OHEM's multitask loss, sec. 4.1): the paper's two passes (sec. 4.2, a read-only network
    that ranks, then a forward-backward on the selected RoIs), with one set of weights instead of a
    copy. For OHEM's 64 of ~1000 RoIs per image this costs less than ``balancedet.models.roi_head``'s
    single masked pass (a backward through the fc layers for every RoI) and, for a head without batch
    statistics (torchvision's ``TwoMLPHead``), gives the same gradient.
    ``progress`` (in [0, 1]) is handed to the sampler for scheduled ones (S-OHEM).

    The matching is torchvision's (``proposal_matcher`` on ``box_iou``), so with ``sampler=None`` and the
    default losses the training losses are torchvision's own.
    """

    def __init__(
        self,
        roi_heads: RoIHeads,
        sampler: Callable[[Candidates], Sample] | None = None,
        cls_loss: Callable[..., Tensor] | None = None,
        box_loss: Callable[..., Tensor] | None = None,
    ):
        if not isinstance(roi_heads, RoIHeads):
            raise TypeError(f"BalancedRoIHeads: expected a torchvision RoIHeads, got {type(roi_heads).__name__}")
        if roi_heads.has_mask() or roi_heads.has_keypoint():
            raise TypeError("BalancedRoIHeads: box heads only (Faster R-CNN): no mask or keypoint branch")
        fg_bg = roi_heads.fg_bg_sampler
        super().__init__(
            roi_heads.box_roi_pool,
            roi_heads.box_head,
            roi_heads.box_predictor,
            roi_heads.proposal_matcher.high_threshold,
            roi_heads.proposal_matcher.low_threshold,
            fg_bg.batch_size_per_image,
            fg_bg.positive_fraction,
            roi_heads.box_coder.weights,
            roi_heads.score_thresh,
            roi_heads.nms_thresh,
            roi_heads.detections_per_img,
        )
        # the very objects torchvision built (and a user may have changed), not copies of their settings
        self.proposal_matcher, self.fg_bg_sampler = roi_heads.proposal_matcher, fg_bg
        self.box_coder = roi_heads.box_coder
        self.box_similarity = roi_heads.box_similarity
        self.training = roi_heads.training
        self.sampler = sampler
        self.cls_loss = cls_loss if cls_loss is not None else CrossEntropyLoss()
        self.box_loss = box_loss if box_loss is not None else SmoothL1Loss(beta=TORCHVISION_BOX_BETA)
        self.progress = 0.0

    @property
    def needs_head_outputs(self) -> bool:
        """Whether the sampler ranks by the head's losses (OHEM, S-OHEM)."""
        return self.sampler is not None and bool({"cls_loss", "box_loss"} & set(self.sampler.needs))

    @torch.no_grad()
    def match(self, proposals: list[Tensor], targets: list[dict[str, Tensor]]) -> RoIBatch:
        """Each image's proposals and ground truth matched as ``assign_targets_to_proposals`` does, padded."""
        dtype, device = proposals[0].dtype, proposals[0].device
        per_image = []
        for rois, target in zip(proposals, targets, strict=True):
            gt_boxes, gt_labels = target["boxes"].to(dtype), target["labels"]
            rois = torch.cat((rois, gt_boxes))  # torchvision's add_gt_proposals: every box, as given
            if gt_boxes.numel() == 0:
                # a background image: every RoI is a negative (torchvision's branch for it)
                labels = torch.zeros(rois.shape[0], dtype=torch.int64, device=device)
                index, max_iou, matched_boxes = labels, rois.new_zeros(rois.shape[0]), rois
            else:
                quality = box_iou(gt_boxes, rois)
                matches = self.proposal_matcher(quality)
                max_iou = quality.max(dim=0).values
                index = matches.clamp(min=0)
                labels = gt_labels[index].to(torch.int64)
                labels[matches == self.proposal_matcher.BELOW_LOW_THRESHOLD] = 0
                labels[matches == self.proposal_matcher.BETWEEN_THRESHOLDS] = -1
                matched_boxes = gt_boxes[index]
            matched = torch.where(labels > 0, index, torch.where(labels == 0, BACKGROUND, IGNORE))
            per_image.append((rois, labels, matched, max_iou, torch.where((labels > 0)[:, None], matched_boxes, rois)))
        counts = [r.shape[0] for r, *_ in per_image]
        batch, size = len(per_image), max(counts, default=0)
        boxes = torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=dtype, device=device).repeat(batch, size, 1)
        target_boxes = boxes.clone()
        labels = torch.full((batch, size), -1, dtype=torch.int64, device=device)
        matched = torch.full((batch, size), IGNORE, dtype=torch.int64, device=device)
        max_iou = torch.zeros((batch, size), dtype=dtype, device=device)
        for i, (rois, label, match, iou, matched_boxes) in enumerate(per_image):
            n = rois.shape[0]
            boxes[i, :n], labels[i, :n], matched[i, :n], max_iou[i, :n] = rois, label, match, iou
            target_boxes[i, :n] = matched_boxes
        return RoIBatch(boxes, labels, matched, max_iou, target_boxes, counts)

    def run_head(
        self, features: dict[str, Tensor], batch: RoIBatch, rows: Tensor, image_shapes: list[tuple[int, int]]
    ) -> tuple[Tensor, Tensor]:
        """``(logits (N, K + 1), deltas (N, K + 1, 4))`` of the RoIs at ``rows (B, R)``, in row-major order."""
        rois = [b[r] for b, r in zip(batch.boxes, rows, strict=True)]
        logits, deltas = self.box_predictor(self.box_head(self.box_roi_pool(features, rois, image_shapes)))
        return logits, deltas.reshape(logits.shape[0], -1, 4)

    def row_targets(self, batch: RoIBatch, rows: Tensor, deltas: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(labels, rois, target_boxes, class_deltas (N, 4))`` at ``rows``: each RoI's deltas for its label
        (background's for negatives, whose box weight is 0)."""
        labels = batch.labels[rows].clamp(min=0)
        picked = deltas[torch.arange(deltas.shape[0], device=deltas.device), labels]
        return labels, batch.boxes[rows], batch.target_boxes[rows], picked

    @torch.no_grad()
    def per_roi_losses(self, batch: RoIBatch, rows: Tensor, logits: Tensor, deltas: Tensor) -> tuple[Tensor, Tensor]:
        """Detached ``(cls, box)`` losses ``(N,)`` at ``rows``: CE, and smooth L1 (beta 1) summed over the
        deltas (0 off the foreground), OHEM's multitask loss (arXiv 1604.03540, sec. 4.1)."""
        labels, rois, target_boxes, picked = self.row_targets(batch, rows, deltas)
        ce = cross_entropy(logits.detach().float(), labels, reduction="none")
        encoded = self.box_coder.encode_single(target_boxes, rois)
        box = smooth_l1_loss(picked.detach().float(), encoded, beta=ROI_SMOOTH_L1_BETA, reduction="none").sum(-1)
        return ce, torch.where(labels > 0, box, 0.0)

    def sample(
        self, batch: RoIBatch, rows: Tensor | None = None, logits: Tensor | None = None, deltas: Tensor | None = None
    ) -> Sample:
        """The kept RoIs as ``(B, R)`` masks; a loss-ranking sampler needs the head's outputs on ``rows``."""
        if self.sampler is None:
            labels = [label[:n] for label, n in zip(batch.labels, batch.counts, strict=True)]
            pos, neg = self.fg_bg_sampler(labels)
            masks = torch.zeros((2, *batch.labels.shape), dtype=torch.bool, device=batch.labels.device)
            for i, (p, q, n) in enumerate(zip(pos, neg, batch.counts, strict=True)):
                masks[0, i, :n], masks[1, i, :n] = p.bool(), q.bool()
            return Sample(masks[0], masks[1])
        fields: dict[str, Callable[[], Tensor]] = {"max_iou": lambda: batch.max_iou, "boxes": lambda: batch.boxes}
        if self.needs_head_outputs:
            if rows is None or logits is None or deltas is None:
                raise ValueError(f"BalancedRoIHeads: {type(self.sampler).__name__} needs the head's outputs on rows")
            cls_row, box_row = self.per_roi_losses(batch, rows, logits, deltas)
            fields["cls_loss"] = lambda: torch.zeros_like(batch.max_iou).masked_scatter(rows, cls_row.to(batch.max_iou))
            fields["box_loss"] = lambda: torch.zeros_like(batch.max_iou).masked_scatter(rows, box_row.to(batch.max_iou))
        return self.sampler(sampler_candidates(self.sampler, batch.matched, fields, self.progress))

    def losses(
        self, batch: RoIBatch, sample: Sample, rows: Tensor, logits: Tensor, deltas: Tensor
    ) -> dict[str, Tensor]:
        """``{"loss_classifier", "loss_box_reg"}`` (torchvision's names) over the sampled RoIs among ``rows``."""
        labels, rois, target_boxes, picked = self.row_targets(batch, rows, deltas)
        if getattr(self.box_loss, "needs_decoded_boxes", False):
            pred, target = self.box_coder.decode_single(picked, rois), target_boxes
        else:
            pred, target = picked, self.box_coder.encode_single(target_boxes, rois)
        loss_cls, loss_box = sampled_losses(
            self.cls_loss, self.box_loss, logits, labels, pred, target, sample.pos[rows], sample.keep[rows]
        )
        return {"loss_classifier": loss_cls, "loss_box_reg": loss_box}

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        if not self.training:
            return super().forward(features, proposals, image_shapes, targets)
        self.check_targets(targets)
        for t in targets:
            if not t["boxes"].is_floating_point():
                raise TypeError(f"target boxes must of float type, instead got {t['boxes'].dtype}")
            if t["labels"].dtype != torch.int64:
                raise TypeError(f"target labels must of int64 type, instead got {t['labels'].dtype}")
        batch = self.match(proposals, targets)
        if self.needs_head_outputs:
            # OHEM / S-OHEM: a forward pass without gradient over every RoI ranks them (the paper's
            # read-only network), then the kept ones get a forward-backward pass of their own
            with torch.no_grad():
                every = batch.valid
                sample = self.sample(batch, every, *self.run_head(features, batch, every, image_shapes))
        else:
            sample = self.sample(batch)
        rows = sample.keep
        logits, deltas = self.run_head(features, batch, rows, image_shapes)
        return [], self.losses(batch, sample, rows, logits, deltas)


def use_balancedet_roi_heads(
    model: nn.Module,
    sampler: Callable[[Candidates], Sample] | None = None,
    cls_loss: Callable[..., Tensor] | None = None,
    box_loss: Callable[..., Tensor] | None = None,
) -> nn.Module:
    """Give a torchvision ``FasterRCNN`` a balancedet RoI sampler and box-head losses; returns ``model``.

    ``model.roi_heads`` becomes ``BalancedRoIHeads(model.roi_heads, sampler, cls_loss, box_loss)``, which
    holds the same modules, so the parameters, the optimiser's references and the state-dict keys stay.
    Libra R-CNN's box head (Pang et al., CVPR 2019, sec. 3.1 and 3.3) is
    ``use_balancedet_roi_heads(model, libra_sampler(512, 0.25), box_loss=BalancedL1Loss())``; its BFP
    neck is not part of the RoI heads (``balancedet.models.bfp.BalancedFeaturePyramid`` can wrap the
    backbone's FPN). OHEM (Shrivastava et al., CVPR 2016, sec. 4) is
    ``OHEMSampler(64, mode="budget", nms_iou=0.7)``.
    """
    roi_heads = getattr(model, "roi_heads", None)
    if not isinstance(roi_heads, RoIHeads):
        raise TypeError(f"use_balancedet_roi_heads: expected a torchvision FasterRCNN, got {type(model).__name__}")
    # a BalancedRoIHeads is a RoIHeads too: patching again replaces its sampler and losses
    model.roi_heads = BalancedRoIHeads(roi_heads, sampler, cls_loss, box_loss)
    return model
