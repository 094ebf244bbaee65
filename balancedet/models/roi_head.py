"""The second stage of an FPN Faster R-CNN: RoIAlign over P2-P5, the 2-fc box head, RoI targets and sampling.

Lin et al., "Feature Pyramid Networks for Object Detection", CVPR 2017 (arXiv 1612.03144), sec. 4.2, on
Fast R-CNN (Girshick, ICCV 2015) as Faster R-CNN (Ren et al., NeurIPS 2015, arXiv 1506.01497) uses it:

- **Pooling**: a RoI of width ``w`` and height ``h`` on the input image is pooled from ``P_k`` with eq. 1,
  ``k = floor(k0 + log2(sqrt(wh) / 224))``, ``k0 = 4``, clamped to the levels present (P2-P5); 7x7 RoIAlign
  (He et al., Mask R-CNN, arXiv 1703.06870) with 2 samples per bin side (Detectron's
  ``ROI_XFORM_SAMPLING_RATIO``), by ``MultiLevelRoIAlign`` (``balancedet.models.roi_align``): on the CPU
  one sparse matrix product over the whole batch and every level, equal to
  ``torchvision.ops.MultiScaleRoIAlign`` (eq. 1 with torchvision's ``eps`` of 1e-6, so that a 224-pixel
  RoI stays on P4 despite rounding) and several times faster than its single-threaded CPU kernels;
  elsewhere torchvision's. The level scales are inferred from the padded batch size, which ``FasterRCNN``
  passes.
- **Box head** (sec. 4.2, "2-fc"): two hidden 1024-d fc layers, each followed by ReLU, then a softmax
  over ``K + 1`` classes (background at column 0, docs/conventions.md) and class-specific deltas,
  ``4 K`` outputs (none for background, which has no box), regressing targets scaled by the stds
  ``(0.1, 0.1, 0.2, 0.2)``.
- **Targets** (Fast R-CNN sec. 2.3, Detectron's FPN settings): the ground-truth boxes are added to the
  proposals; a RoI whose best IoU is >= 0.5 is foreground with its box's class, below 0.5 background
  (Detectron's ``BG_THRESH_LO = 0``; Fast R-CNN's 0.1 floor was a heuristic the FPN configs drop), no
  low-quality matches: ``MaxIoUAssigner(0.5, 0.5, low_quality=False)``.
- **Sampling** through the shared sampler protocol; by default 512 RoIs per image, at most a quarter
  foreground (``RandomSampler(512, 0.25)``).
- **Losses**: softmax CE over the sampled RoIs and smooth L1 (beta 1) on the deltas of the ground-truth
  class at the sampled foreground RoIs, both divided by the number of sampled RoIs (Detectron,
  torchvision).

**OHEM** (Shrivastava et al., CVPR 2016, arXiv 1604.03540, sec. 4) and any sampler that needs the
per-RoI losses (``cls_loss`` / ``box_loss`` in its ``needs``: ``OHEMSampler``, ``SOHEMSampler``) run the
paper's **two passes**: a read-only pass of the box head over every RoI (the same weights, under
``torch.no_grad()``) gives the per-RoI loss (CE + smooth L1, beta 1, 0 off the foreground); the sampler
keeps the hardest (OHEM: NMS at 0.7 among the RoIs by loss, then the ``B / N = 64`` worst per image, no
foreground fraction); then only the kept RoIs are pooled again and go forward and backward through the
head, their losses divided by their number. An earlier version ran one pass over every RoI with the
loss masked to the kept rows: the same gradient (the head has no batch statistics, so a RoI's outputs
do not depend on which others share the pass, and a masked row's gradient is exactly 0), but a
backward through the fc layers and RoIAlign for every RoI, and it measured 1.58x the step time of
random sampling. The two passes measured 0.97x random's step (ResNet-18, 64-channel FPN, 256-wide head,
2 images of 128 px, 300 proposals, 128 random RoIs per image; one CPU thread). The kept RoIs are
pooled a second time rather than indexed out of the first pass because RoIAlign's backward visits every
RoI of its input, zero gradient or not; the gradient reaching the pyramid is that of the kept RoIs'
features either way. A ``feature_transform`` (A-Fast-RCNN's ASDN) applies in the training pass only:
the hard RoIs are ranked on the features as pooled, as the paper's read-only network sees them, and the
transform then changes what the head trains on.
Any other sampler picks its RoIs first, and only those go through the head.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from balancedet.assign import MaxIoUAssigner
from balancedet.assign.result import IGNORE
from balancedet.boxes import DeltaXYWHCoder, valid_boxes
from balancedet.losses.cross_entropy import CrossEntropyLoss, cross_entropy
from balancedet.losses.smooth_l1 import SmoothL1Loss, smooth_l1_loss
from balancedet.models.batching import pad_targets
from balancedet.models.detector import KindStats, check_num_classes, record_kinds, softmax_kinds
from balancedet.models.roi_align import MultiLevelRoIAlign
from balancedet.models.rpn import clip_to_images, sampled_losses, sampler_candidates, top_after_nms
from balancedet.samplers import Candidates, RandomSampler, Sample

__all__ = ["BoxHead", "FastRCNNCriterion", "RoIHead", "RoITargets", "ROI_STDS", "ROI_SMOOTH_L1_BETA"]

#: Faster R-CNN's box-head target stds (torchvision's ``BoxCoder`` weights 10, 10, 5, 5; Detectron's
#: ``BBOX_REG_WEIGHTS``).
ROI_STDS = (0.1, 0.1, 0.2, 0.2)
#: Fast R-CNN's smooth L1 (eq. 3) on the std-scaled targets; Detectron's box-head ``SmoothL1Loss`` too.
ROI_SMOOTH_L1_BETA = 1.0


class BoxHead(nn.Module):
    """FPN's "2-fc" head and the Fast R-CNN predictor on pooled RoI features.

    Args:
        in_channels: channels of the pooled features (the pyramid's).
        num_classes: ``K`` object classes.
        pool_size: side of the pooled features (7).
        representation_size: width of the two hidden fc layers (1024).

    ``forward(pooled (N, C, S, S)) -> (logits (N, K + 1), deltas (N, K, 4))``, background at logit 0.
    Initialisation as Detectron's ``fast_rcnn_heads``: the hidden layers Caffe2's XavierFill (uniform,
    fan-in), the classifier N(0, 0.01), the regressor N(0, 0.001), biases 0.
    """

    def __init__(self, in_channels: int, num_classes: int, pool_size: int = 7, representation_size: int = 1024):
        super().__init__()
        check_num_classes(num_classes, "BoxHead")
        if min(in_channels, pool_size, representation_size) < 1:
            raise ValueError(
                f"BoxHead: in_channels, pool_size, representation_size must be >= 1, got {in_channels}, "
                f"{pool_size}, {representation_size}"
            )
        self.num_classes, self.pool_size = num_classes, pool_size
        self.fc1 = nn.Linear(in_channels * pool_size * pool_size, representation_size)
        self.fc2 = nn.Linear(representation_size, representation_size)
        self.cls_score = nn.Linear(representation_size, num_classes + 1)
        self.bbox_pred = nn.Linear(representation_size, 4 * num_classes)
        for fc in (self.fc1, self.fc2):
            nn.init.kaiming_uniform_(fc.weight, a=1)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        for fc in (self.fc1, self.fc2, self.cls_score, self.bbox_pred):
            nn.init.zeros_(fc.bias)

    def forward(self, pooled: Tensor) -> tuple[Tensor, Tensor]:
        x = torch.relu(self.fc1(pooled.flatten(1)))
        x = torch.relu(self.fc2(x))
        return self.cls_score(x), self.bbox_pred(x).view(-1, self.num_classes, 4)


@dataclass(frozen=True)
class RoITargets:
    """The RoIs of a batch (proposals and added ground truth) with their targets, padded to ``(B, R)``.

    Attributes:
        boxes: ``(B, R, 4)`` RoIs; rows past an image's count are ``(0, 0, 1, 1)``.
        matched: ``(B, R)`` int64: ground-truth index (foreground), -1 background, -2 ignored (padding, or
            an assigner's ignore band if it has one).
        labels: ``(B, R)`` int64 softmax labels: 0 background (and padding), ``c + 1`` for class ``c``.
        max_iou: ``(B, R)`` each RoI's best IoU with the image's ground truth.
        target_boxes: ``(B, R, 4)`` the matched ground-truth box (the RoI itself off the foreground).
    """

    boxes: Tensor
    matched: Tensor
    labels: Tensor
    max_iou: Tensor
    target_boxes: Tensor

    @property
    def valid(self) -> Tensor:
        """``(B, R)`` bool: the RoIs that may enter the losses (not padding, not ignored)."""
        return self.matched != IGNORE


class FastRCNNCriterion(nn.Module):
    """RoI targets, RoI sampling and the box head's losses.

    Args:
        num_classes: ``K``.
        coder: ``DeltaXYWHCoder(stds=ROI_STDS)``; shared with the inference of ``RoIHead``.
        cls_loss: ``(logits (N, K + 1), labels (N,), weight, avg_factor)``, background 0; default
            ``CrossEntropyLoss()``.
        box_loss: ``(pred (N, 4), target (N, 4), weight, avg_factor)`` on the ground-truth class's deltas,
            or on decoded boxes when it declares ``needs_decoded_boxes``; default ``SmoothL1Loss(beta=1.0)``.
        assigner: default ``MaxIoUAssigner(0.5, 0.5, low_quality=False)``, called once per image (each
            image has its own RoIs).
        sampler: default ``RandomSampler(512, 0.25)``; any sampler of the protocol. The fields it may need:
            ``max_iou`` (Libra), ``boxes`` (the RoIs, OHEM's NMS), ``cls_loss`` (detached CE) and
            ``box_loss`` (detached smooth L1, beta 1, summed over the deltas, 0 off the foreground).
        add_gt_as_proposals: add the (valid) ground-truth boxes to each image's proposals (True).

    ``match(proposals, targets) -> RoITargets``; ``sample(targets, rows, logits, deltas) -> Sample``;
    ``forward(logits, deltas, targets, sample, rows) -> {"loss_cls", "loss_box"}``. ``rows (B, R)`` bool
    names the RoIs the head ran on, in row-major order. With ``record_stats = True`` each call keeps the
    ``KindStats`` of its classification loss over the sampled RoIs in ``stats`` (``DenseCriterion``'s
    switch; the kinds by ``softmax_kinds``).
    """

    stats_name = "roi"
    record_stats = False

    def __init__(
        self,
        num_classes: int,
        coder: DeltaXYWHCoder | None = None,
        cls_loss: Callable[..., Tensor] | None = None,
        box_loss: Callable[..., Tensor] | None = None,
        assigner: Callable[..., object] | None = None,
        sampler: Callable[[Candidates], Sample] | None = None,
        add_gt_as_proposals: bool = True,
    ):
        super().__init__()
        self.num_classes = check_num_classes(num_classes, "FastRCNNCriterion")
        self.coder = coder if coder is not None else DeltaXYWHCoder(stds=ROI_STDS)
        self.cls_loss = cls_loss if cls_loss is not None else CrossEntropyLoss()
        self.box_loss = box_loss if box_loss is not None else SmoothL1Loss(beta=ROI_SMOOTH_L1_BETA)
        self.assigner = assigner if assigner is not None else MaxIoUAssigner(0.5, 0.5, low_quality=False)
        self.sampler = sampler if sampler is not None else RandomSampler(512, 0.25)
        self.add_gt_as_proposals = add_gt_as_proposals
        self.progress = 0.0
        self.stats: KindStats | None = None

    @property
    def needs_head_outputs(self) -> bool:
        """Whether the sampler ranks by the head's losses (OHEM, S-OHEM): every RoI then goes through the head."""
        return bool({"cls_loss", "box_loss"} & set(self.sampler.needs))

    @torch.no_grad()
    def match(self, proposals: Sequence[Tensor], targets: Sequence[dict[str, Tensor]]) -> RoITargets:
        """Assign each image's RoIs (its proposals, then its valid ground truth) and pad them to ``(B, R)``."""
        if len(proposals) != len(targets):
            raise ValueError(f"FastRCNNCriterion: {len(proposals)} proposal sets for {len(targets)} targets")
        device = proposals[0].device if proposals else torch.device("cpu")
        per_image = []
        for i, (rois, target) in enumerate(zip(proposals, targets, strict=True)):
            gt_boxes, gt_labels = pad_targets([target], device)
            rois = rois.to(gt_boxes.dtype)
            if self.add_gt_as_proposals:
                usable = valid_boxes(gt_boxes[0]) & (gt_labels[0] >= 0)
                rois = torch.cat((rois, gt_boxes[0][usable]))
            assign = self.assigner(rois, gt_boxes, gt_labels, self.num_classes, image_ids=[i])
            target_boxes = torch.where(assign.positive[..., None], assign.matched_values(gt_boxes), rois)
            per_image.append((rois, assign, target_boxes[0]))
        batch, size = len(per_image), max((r.shape[0] for r, _, _ in per_image), default=0)
        boxes = torch.tensor([0.0, 0.0, 1.0, 1.0], device=device).repeat(batch, size, 1)
        matched = torch.full((batch, size), IGNORE, dtype=torch.long, device=device)
        labels = torch.zeros((batch, size), dtype=torch.long, device=device)
        max_iou = torch.zeros((batch, size), device=device)
        target_boxes = boxes.clone()
        for i, (rois, assign, matched_boxes) in enumerate(per_image):
            n = rois.shape[0]
            boxes[i, :n], target_boxes[i, :n] = rois, matched_boxes
            matched[i, :n], max_iou[i, :n] = assign.matched[0], assign.max_iou[0]
            labels[i, :n] = torch.where(assign.positive[0], assign.labels[0] + 1, 0)
        return RoITargets(boxes, matched, labels, max_iou, target_boxes)

    def row_targets(self, targets: RoITargets, rows: Tensor, deltas: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(labels, rois, target_boxes, class_deltas)`` of the head's rows: the deltas of each RoI's
        ground-truth class ``(N, 4)`` (class 0's for background rows, whose box weight is 0)."""
        labels = targets.labels[rows]
        cls = (labels - 1).clamp(min=0)
        picked = deltas.gather(1, cls[:, None, None].expand(-1, 1, 4)).squeeze(1)
        return labels, targets.boxes[rows], targets.target_boxes[rows], picked

    def sample(
        self,
        targets: RoITargets,
        rows: Tensor | None = None,
        logits: Tensor | None = None,
        deltas: Tensor | None = None,
    ) -> Sample:
        """The sampler's choice among the RoIs, ``(B, R)`` masks. A sampler that needs the losses
        (``needs_head_outputs``) needs the head's ``logits (N, K + 1)`` and ``deltas (N, K, 4)`` on ``rows``."""
        fields: dict[str, Callable[[], Tensor]] = {"max_iou": lambda: targets.max_iou, "boxes": lambda: targets.boxes}
        if self.needs_head_outputs:
            if rows is None or logits is None or deltas is None:
                raise ValueError(f"FastRCNNCriterion: {type(self.sampler).__name__} needs the head's outputs on rows")
            cls_row, box_row = self.per_roi_losses(targets, rows, logits, deltas)
            fields["cls_loss"] = lambda: torch.zeros_like(targets.max_iou).masked_scatter(rows, cls_row)
            fields["box_loss"] = lambda: torch.zeros_like(targets.max_iou).masked_scatter(rows, box_row)
        return self.sampler(sampler_candidates(self.sampler, targets.matched, fields, self.progress))

    @torch.no_grad()
    def per_roi_losses(
        self, targets: RoITargets, rows: Tensor, logits: Tensor, deltas: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Detached ``(cls, box)`` losses ``(N,)`` of the rows: CE, and smooth L1 (beta 1) summed over the
        deltas of the ground-truth class (0 off the foreground), OHEM's multitask loss (sec. 4.1)."""
        labels, rois, target_boxes, picked = self.row_targets(targets, rows, deltas)
        ce = cross_entropy(logits.detach().float(), labels, reduction="none")
        encoded = self.coder.encode(rois, target_boxes)
        box = smooth_l1_loss(picked.detach().float(), encoded, beta=ROI_SMOOTH_L1_BETA, reduction="none").sum(-1)
        return ce, torch.where(labels > 0, box, 0.0)

    def forward(
        self, logits: Tensor, deltas: Tensor, targets: RoITargets, sample: Sample, rows: Tensor
    ) -> dict[str, Tensor]:
        labels, rois, target_boxes, picked = self.row_targets(targets, rows, deltas)
        if getattr(self.box_loss, "needs_decoded_boxes", False):
            pred, target = self.coder.decode(rois, picked), target_boxes
        else:
            pred, target = picked, self.coder.encode(rois, target_boxes)
        loss_cls, loss_box = sampled_losses(
            self.cls_loss, self.box_loss, logits, labels, pred, target, sample.pos[rows], sample.keep[rows]
        )
        if self.record_stats:
            weight = sample.keep[rows].float()
            self.stats = record_kinds(self.cls_loss, logits, labels, weight, loss_cls, softmax_kinds(logits, labels))
        return {"loss_cls": loss_cls, "loss_box": loss_box}


class RoIHead(nn.Module):
    """Multi-scale RoIAlign, the box head, and its training losses or its detections.

    Args:
        box_head: ``pooled (N, C, S, S) -> (logits (N, K + 1), deltas (N, K, 4))`` with ``num_classes``
            and ``pool_size`` (``BoxHead``).
        criterion: ``FastRCNNCriterion``; its ``coder`` also decodes the detections.
        num_levels: pyramid levels pooled from, the finest first (4: P2-P5).
        sampling_ratio: RoIAlign samples per bin side (2, Detectron's FPN setting).
        score_thresh: detections must score above it (0.05).
        nms_iou: class-wise NMS threshold (0.5).
        max_detections: detections per image (100).
        feature_transform: training only, applied to the pooled features of the RoIs that train (for OHEM
            the kept ones, after the selection pass) before the box head:
            ``(pooled (N, C, S, S), targets: RoITargets, rows (B, R)) -> (pooled, extra_losses)``, its losses
            merged into the head's (the adversary of A-Fast-RCNN, ``balancedet.models.a_fast_rcnn``). None:
            the features go to the box head as pooled.

    ``forward(levels, proposals, image_sizes, input_size, targets=None)``: ``levels`` the first
    ``num_levels`` pyramid levels of the padded ``(B, 3, H, W)`` batch, ``input_size = (H, W)`` (the
    pooler infers each level's scale from it), ``proposals`` one ``(P_i, 4)`` tensor per image. Training:
    ``{"loss_cls", "loss_box"}``; eval: one ``{"boxes", "scores", "labels"}`` per image, labels 0-based.
    """

    def __init__(
        self,
        box_head: nn.Module,
        criterion: FastRCNNCriterion,
        num_levels: int = 4,
        sampling_ratio: int = 2,
        score_thresh: float = 0.05,
        nms_iou: float = 0.5,
        max_detections: int = 100,
        feature_transform: Callable[[Tensor, RoITargets, Tensor], tuple[Tensor, dict[str, Tensor]]] | None = None,
    ):
        super().__init__()
        if getattr(box_head, "num_classes", None) != criterion.num_classes:
            raise ValueError(
                f"RoIHead: the box head has {getattr(box_head, 'num_classes', None)} classes, the criterion "
                f"{criterion.num_classes}"
            )
        if num_levels < 1 or not 0 <= score_thresh < 1 or not 0 < nms_iou <= 1 or max_detections < 1:
            raise ValueError(
                "RoIHead: need num_levels >= 1, score_thresh in [0, 1), nms_iou in (0, 1], max_detections >= 1; "
                f"got {num_levels}, {score_thresh}, {nms_iou}, {max_detections}"
            )
        self.box_head, self.criterion, self.num_levels = box_head, criterion, num_levels
        self.pooler = MultiLevelRoIAlign(num_levels, box_head.pool_size, sampling_ratio)
        self.score_thresh, self.nms_iou, self.max_detections = score_thresh, nms_iou, max_detections
        self.feature_transform = feature_transform

    def pool(self, levels: Sequence[Tensor], boxes: Sequence[Tensor], input_size: tuple[int, int]) -> Tensor:
        """``(sum_i N_i, C, S, S)`` features of each image's ``boxes (N_i, 4)``, level by eq. 1 of the FPN paper."""
        if len(levels) != self.num_levels:
            raise ValueError(f"RoIHead: {len(levels)} pyramid levels for {self.num_levels}")
        return self.pooler(levels, boxes, input_size)

    def forward(
        self,
        levels: Sequence[Tensor],
        proposals: Sequence[Tensor],
        image_sizes: Sequence[tuple[int, int]],
        input_size: tuple[int, int],
        targets: Sequence[dict[str, Tensor]] | None = None,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        if not self.training:
            logits, deltas = self.box_head(self.pool(levels, proposals, input_size))
            return self.detections(logits, deltas, proposals, image_sizes)
        if targets is None or len(targets) != len(proposals):
            raise ValueError(f"RoIHead: training needs one target per image ({len(proposals)})")
        roi_targets = self.criterion.match(proposals, targets)
        if self.criterion.needs_head_outputs:
            sample, rows, pooled = self.mine(levels, roi_targets, input_size)
        else:
            sample = self.criterion.sample(roi_targets)
            rows = sample.keep
            pooled = self.pool(levels, _rows_of(roi_targets.boxes, rows), input_size)
        # the transform (A-Fast-RCNN's ASDN) sees the RoIs that train only; for OHEM they were ranked on the
        # features as pooled (see ``mine``)
        pooled, extra = self.transform(pooled, roi_targets, rows)
        logits, deltas = self.box_head(pooled)
        return {**self.criterion(logits, deltas, roi_targets, sample, rows), **extra}

    def mine(
        self, levels: Sequence[Tensor], targets: RoITargets, input_size: tuple[int, int]
    ) -> tuple[Sample, Tensor, Tensor]:
        """OHEM's two passes (Shrivastava et al., sec. 4): ``(sample, rows, pooled)``, the sampler's choice
        after a gradient-free pass of the box head over every valid RoI, ``rows (B, R)`` the chosen RoIs and
        ``pooled`` their features, still attached to the pyramid, for the training pass."""
        valid = targets.valid
        with torch.no_grad():
            # the paper's read-only RoI network: the same weights, no graph over the ~2000 RoIs
            logits, deltas = self.box_head(self.pool(levels, _rows_of(targets.boxes, valid), input_size))
        sample = self.criterion.sample(targets, valid, logits, deltas)
        rows = sample.keep & valid
        # pooled again for the chosen RoIs rather than indexed out of the pass above: RoIAlign's backward
        # visits every RoI of its input, zero gradient or not, and over all RoIs it cost more than the fc layers
        return sample, rows, self.pool(levels, _rows_of(targets.boxes, rows), input_size)

    def transform(self, pooled: Tensor, targets: RoITargets, rows: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The training features the box head sees, and any losses of the transform (none without one)."""
        if self.feature_transform is None:
            return pooled, {}
        return self.feature_transform(pooled, targets, rows)

    @torch.no_grad()
    def detections(
        self, logits: Tensor, deltas: Tensor, proposals: Sequence[Tensor], image_sizes: Sequence[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        """Fast R-CNN inference: per class, boxes decoded from the RoIs, clipped, scored by the softmax;
        those above ``score_thresh``, class-wise NMS, the ``max_detections`` best per image."""
        num_classes = self.criterion.num_classes
        counts = torch.tensor([p.shape[0] for p in proposals], device=logits.device)
        image = torch.arange(len(proposals), device=logits.device).repeat_interleave(counts)
        rois = torch.cat(list(proposals)).float() if proposals else deltas.new_zeros((0, 4), dtype=torch.float32)
        sizes = torch.tensor(image_sizes, device=logits.device)[image]
        boxes = clip_to_images(self.criterion.coder.decode(rois[:, None, :], deltas.float()), sizes[:, None, :])
        scores = logits.float().softmax(-1)[:, 1:]
        labels = torch.arange(num_classes, device=logits.device).expand_as(scores)
        keep = scores > self.score_thresh
        boxes, scores, labels, image = boxes[keep], scores[keep], labels[keep], image[:, None].expand_as(keep)[keep]
        kept = top_after_nms(
            boxes, scores, labels, num_classes, image, len(proposals), self.nms_iou, self.max_detections
        )
        return [{"boxes": boxes[k], "scores": scores[k], "labels": labels[k]} for k in kept]


def _rows_of(boxes: Tensor, rows: Tensor) -> list[Tensor]:
    """Each image's boxes ``(B, R, 4)`` at ``rows (B, R)``: the row-major order of ``boxes[rows]``."""
    return [b[r] for b, r in zip(boxes, rows, strict=True)]
