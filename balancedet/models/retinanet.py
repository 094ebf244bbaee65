"""RetinaNet (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017, arXiv 1708.02002, sec. 4).

ResNet + FPN (P3-P7, 256 channels), 9 anchors per location, a classification subnet (four 3x3
convs with ReLU, then ``K * A`` sigmoid outputs) and a class-agnostic box subnet (the same, then
``4 * A`` deltas), trained with the focal loss normalised by the number of positive anchors
(shared/SPEC.md section 4). Every piece the imbalance remedies act on is a constructor argument:
the classification loss (focal, GHM-C, CE...), the box loss (smooth L1, L1, GHM-R, balanced L1,
GIoU on decoded boxes), the assigner, an optional sampler (OHEM, SSD hard-negative mining) and the
normaliser (plain or EMA, summed across processes).

The losses are computed for the whole batch at once: one assigner call on ground truth padded to
``(B, G)``, one classification-loss call on the ``(B * A, C)`` logits of all levels (GHM-C sees one
histogram per step), one box-loss call on all anchors with the positives as weight. No Python loop
over anchors, none over images beyond padding the ground truth, and no host synchronisation but
the assigner's input check (``MaxIoUAssigner(check_inputs=False)`` removes it). torchvision's
RetinaNet loops over images and normalises each image by its own positives (SPEC section 6).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from balancedet.assign import MaxIoUAssigner
from balancedet.boxes import AnchorGenerator, DeltaXYWHCoder
from balancedet.boxes.anchors import FPN_STRIDES, RETINANET_RATIOS, RETINANET_SCALES, RETINANET_SIZES
from balancedet.losses.focal import FocalLoss, prior_bias, sigmoid_focal_loss
from balancedet.losses.ghm import GHMC, GHMR
from balancedet.losses.iou import GIoULoss, IoULoss
from balancedet.losses.smooth_l1 import SmoothL1Loss
from balancedet.models.backbones import ResNetBackbone
from balancedet.models.batching import batch_images, pad_targets
from balancedet.models.bfp import BalancedFeaturePyramid
from balancedet.models.fpn import FPN
from balancedet.models.normalizer import PositiveNormalizer
from balancedet.models.postprocess import detections_from_levels

__all__ = ["RetinaNet", "RetinaNetHead", "classification_loss", "box_loss_on_boxes"]

#: Detectron's RetinaNet smooth-L1 threshold (``RETINANET.BBOX_REG_BETA = 0.11``, about 1/9).
SMOOTH_L1_BETA = 0.11


def _head_norm(norm: str | None, channels: int) -> nn.Module | None:
    if norm is None:
        return None
    if norm == "gn":
        # 32 groups (Wu and He, ECCV 2018), fewer for narrow heads whose width 32 does not divide.
        return nn.GroupNorm(math.gcd(32, channels), channels)
    raise ValueError(f"RetinaNetHead: norm must be None or 'gn', got {norm!r}")


def _subnet(in_channels: int, channels: int, num_convs: int, norm: str | None) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(num_convs):
        conv = nn.Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1)
        nn.init.normal_(conv.weight, std=0.01)
        nn.init.zeros_(conv.bias)
        layers.append(conv)
        norm_layer = _head_norm(norm, channels)
        if norm_layer is not None:
            layers.append(norm_layer)
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class RetinaNetHead(nn.Module):
    """The classification and box subnets, shared by all levels (arXiv 1708.02002, sec. 4, fig. 3).

    Args:
        in_channels: channels of the pyramid levels.
        num_anchors: ``A``, anchors per location.
        num_classes: ``K``, object classes (no background output: one sigmoid per class).
        channels: width of the hidden convs (256 in the paper).
        num_convs: hidden 3x3 convs per subnet (4 in the paper).
        norm: ``None`` (the paper) or ``"gn"``: GroupNorm (32 groups, or ``gcd(32, channels)``) after
            each hidden conv, as FCOS/ATSS heads, which helps training from scratch. Statistics are
            per level (each level runs alone).
        prior_prob: ``pi`` of the classification bias init ``b = -log((1 - pi) / pi)`` (sec. 3.3).

    Hidden convs and both output convs start from N(0, 0.01) weights and zero bias except the
    classification output's prior bias (sec. 4.1). ``forward(feats)`` returns per-level lists of
    ``(B, H_l W_l A, K)`` logits and ``(B, H_l W_l A, 4)`` deltas, ordered as ``AnchorGenerator``
    (row-major locations, then the ``A`` anchors).
    """

    def __init__(
        self,
        in_channels: int,
        num_anchors: int,
        num_classes: int,
        channels: int = 256,
        num_convs: int = 4,
        norm: str | None = None,
        prior_prob: float = 0.01,
    ):
        super().__init__()
        self.num_anchors, self.num_classes = num_anchors, num_classes
        self.cls_subnet = _subnet(in_channels, channels, num_convs, norm)
        self.box_subnet = _subnet(in_channels, channels, num_convs, norm)
        last = channels if num_convs else in_channels
        self.cls_logits = nn.Conv2d(last, num_anchors * num_classes, 3, padding=1)
        self.box_deltas = nn.Conv2d(last, num_anchors * 4, 3, padding=1)
        for conv in (self.cls_logits, self.box_deltas):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        nn.init.constant_(self.cls_logits.bias, prior_bias(prior_prob))

    @staticmethod
    def _flatten(x: Tensor, width: int) -> Tensor:
        """``(B, A * width, H, W) -> (B, H * W * A, width)``."""
        b, _, h, w = x.shape
        return x.view(b, -1, width, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, width)

    def forward(self, feats: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        cls = [self._flatten(self.cls_logits(self.cls_subnet(f)), self.num_classes) for f in feats]
        box = [self._flatten(self.box_deltas(self.box_subnet(f)), 4) for f in feats]
        return cls, box


def classification_loss(
    loss: Callable[..., Tensor], logits: Tensor, labels: Tensor, weight: Tensor, avg_factor: Tensor
) -> Tensor:
    """Call a classification loss in the library's convention on ``logits (N, C)``, ``labels (N,)``.

    ``labels`` use ``C`` for background; ``weight (N,)`` is 0 for anchors left out (ignored or not
    sampled). ``GHMC`` takes the mask as its ``valid`` argument and normalises by its own count;
    every other loss is called ``loss(logits, labels, weight=weight, avg_factor=avg_factor)`` (the
    modules' ``reduction="mean"`` with ``avg_factor`` divides the weighted sum by it).
    """
    if isinstance(loss, GHMC):
        return loss(logits, labels, weight > 0)
    return loss(logits, labels, weight=weight, avg_factor=avg_factor)


def box_loss_on_boxes(loss: Callable[..., Tensor]) -> bool:
    """Whether a box loss compares decoded boxes (IoU, GIoU) rather than deltas."""
    return isinstance(loss, (IoULoss, GIoULoss))


class RetinaNet(nn.Module):
    """RetinaNet with pluggable imbalance remedies; ``model(images, targets=None)`` as torchvision's.

    Args:
        num_classes: ``K`` object classes (background is never counted).
        backbone: a module returning a list of maps with an ``out_channels`` list, or a ResNet depth
            (18, 34, 50, 101) built as ``ResNetBackbone(depth, backbone_weights, backbone_norm,
            frozen_stages)``.
        backbone_weights, backbone_norm, frozen_stages: see ``ResNetBackbone`` (used with a depth).
        neck: a module mapping the backbone maps to the pyramid, with an ``out_channels`` int;
            default ``FPN(backbone.out_channels, fpn_channels, num_extra, extra_from="c5")`` with
            enough extra levels for the anchor strides (P3-P7).
        fpn_channels: channels of the default FPN (256).
        bfp: ``None``, or the refinement of a Libra Balanced Feature Pyramid appended to the neck
            (``"non_local"``, ``"conv"``, ``"none"``; refine level P4).
        anchor_sizes, anchor_strides, anchor_ratios, anchor_scales: ``AnchorGenerator``'s (32-512 on
            strides 8-128, ratios 1:2 1:1 2:1, scales 2^0 2^(1/3) 2^(2/3)).
        head_channels, num_convs, head_norm, prior_prob: ``RetinaNetHead``'s.
        cls_loss: ``(logits, labels, weight=, avg_factor=)``, or ``GHMC`` (called once per step with
            all levels and the ignore mask); default ``FocalLoss(alpha=0.25, gamma=2)``.
        box_loss: ``(pred, target, weight=, avg_factor=)`` on ``(B A, 4)`` deltas, ``GHMR`` (with the
            positives as ``valid``), or ``IoULoss`` / ``GIoULoss`` on decoded boxes. Default smooth L1
            with ``beta = 0.11`` (the paper's "standard smooth L1", Detectron's threshold;
            torchvision and mmdetection 3 use L1, pass ``L1Loss()`` for that).
        assigner: ``(anchors, gt_boxes, gt_labels, num_classes) -> AssignResult``; default
            ``MaxIoUAssigner()`` (IoU >= 0.5 positive, < 0.4 negative, low-quality matches).
        sampler: ``None`` (all non-ignored anchors, the paper), an ``OHEMSampler``-like object with
            ``masks(matched, losses[, boxes]) -> (pos, neg)``, or a ``HardNegativeMiner``-like
            callable ``(matched, losses) -> keep``. Anchors are ranked by their detached per-anchor
            classification loss (the focal loss with ``cls_loss``'s alpha/gamma when it has them,
            else the sigmoid CE); the kept anchors become the classification weight mask and the
            kept positives the box-loss mask and the normaliser's count.
        normalizer: ``PositiveNormalizer()`` by default (positives summed across processes);
            ``PositiveNormalizer(momentum=0.9)`` for detectron2's EMA.
        box_coder: default ``DeltaXYWHCoder()`` (stds 1, dw/dh clamp at log(1000/16)).
        score_thresh, topk_candidates, nms_iou, max_detections: inference (0.05, 1000, 0.5, 100).
        size_divisible: a list of images is padded to a multiple of it (32: C5's stride).

    Training: ``model(images, targets)`` with ``images`` a normalised ``(B, 3, H, W)`` tensor or a
    list of ``(3, H_i, W_i)`` tensors and ``targets[i] = {"boxes": (G_i, 4) xyxy pixels, "labels":
    (G_i,) int64 in [0, K)}`` returns ``{"loss_cls", "loss_box"}``. Eval: a list of ``{"boxes",
    "scores", "labels"}`` per image, in the input image's coordinates.
    """

    def __init__(
        self,
        num_classes: int,
        backbone: nn.Module | int = 50,
        *,
        backbone_weights: str | None = None,
        backbone_norm: str = "frozen_bn",
        frozen_stages: int = 1,
        neck: nn.Module | None = None,
        fpn_channels: int = 256,
        bfp: str | None = None,
        anchor_sizes: Sequence[float] = RETINANET_SIZES,
        anchor_strides: Sequence[int] = FPN_STRIDES,
        anchor_ratios: Sequence[float] = RETINANET_RATIOS,
        anchor_scales: Sequence[float] = RETINANET_SCALES,
        head_channels: int = 256,
        num_convs: int = 4,
        head_norm: str | None = None,
        prior_prob: float = 0.01,
        cls_loss: Callable[..., Tensor] | None = None,
        box_loss: Callable[..., Tensor] | None = None,
        assigner: Callable[..., object] | None = None,
        sampler: object | None = None,
        normalizer: PositiveNormalizer | None = None,
        box_coder: DeltaXYWHCoder | None = None,
        score_thresh: float = 0.05,
        topk_candidates: int = 1000,
        nms_iou: float = 0.5,
        max_detections: int = 100,
        size_divisible: int = 32,
    ):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"RetinaNet: num_classes must be a positive int, got {num_classes!r}")
        self.num_classes = num_classes
        if isinstance(backbone, int):
            backbone = ResNetBackbone(backbone, backbone_weights, backbone_norm, frozen_stages)
        if not hasattr(backbone, "out_channels"):
            raise ValueError("RetinaNet: the backbone needs an out_channels attribute (a list of ints)")
        self.backbone = backbone
        if neck is None:
            num_extra = len(anchor_strides) - len(backbone.out_channels)
            neck = FPN(list(backbone.out_channels), fpn_channels, num_extra=max(num_extra, 0), extra_from="c5")
        if not isinstance(getattr(neck, "out_channels", None), int):
            raise ValueError("RetinaNet: the neck needs an out_channels attribute (an int)")
        self.neck = neck
        self.bfp = None if bfp is None else BalancedFeaturePyramid(neck.out_channels, len(anchor_strides), 1, bfp)
        self.anchor_generator = AnchorGenerator(anchor_sizes, anchor_strides, anchor_ratios, anchor_scales)
        self.head = RetinaNetHead(
            neck.out_channels,
            self.anchor_generator.num_anchors_per_location,
            num_classes,
            head_channels,
            num_convs,
            head_norm,
            prior_prob,
        )
        self.cls_loss = cls_loss if cls_loss is not None else FocalLoss(alpha=0.25, gamma=2.0)
        self.box_loss = box_loss if box_loss is not None else SmoothL1Loss(beta=SMOOTH_L1_BETA)
        self.assigner = assigner if assigner is not None else MaxIoUAssigner()
        self.sampler = sampler
        self.normalizer = normalizer if normalizer is not None else PositiveNormalizer()
        self.box_coder = box_coder if box_coder is not None else DeltaXYWHCoder()
        self.score_thresh, self.topk_candidates = score_thresh, topk_candidates
        self.nms_iou, self.max_detections = nms_iou, max_detections
        self.size_divisible = size_divisible

    def features(self, images: Tensor) -> list[Tensor]:
        """The pyramid levels of a padded ``(B, 3, H, W)`` batch."""
        feats = self.neck(self.backbone(images))
        return self.bfp(feats) if self.bfp is not None else feats

    def forward(
        self, images: Tensor | list[Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        batch, image_sizes = batch_images(images, self.size_divisible)
        if self.training:
            if targets is None or len(targets) != batch.shape[0]:
                got = None if targets is None else len(targets)
                raise ValueError(f"RetinaNet: training needs one target per image ({batch.shape[0]}), got {got}")
        feats = self.features(batch)
        if len(feats) != self.anchor_generator.num_levels:
            levels = self.anchor_generator.num_levels
            raise ValueError(f"RetinaNet: {len(feats)} pyramid levels for {levels} anchor levels")
        cls_levels, box_levels = self.head(feats)
        if self.training:
            anchors = self.anchor_generator([f.shape[-2:] for f in feats], batch.device, torch.float32)
            return self.compute_loss(torch.cat(cls_levels, 1), torch.cat(box_levels, 1), anchors, targets)
        level_anchors = [
            self.anchor_generator.level_anchors(level, f.shape[-2:], f.device, torch.float32)
            for level, f in enumerate(feats)
        ]
        return self.detect(cls_levels, box_levels, level_anchors, image_sizes)

    def compute_loss(
        self, cls_logits: Tensor, box_deltas: Tensor, anchors: Tensor, targets: list[dict[str, Tensor]]
    ) -> dict[str, Tensor]:
        """Losses of a batch: ``cls_logits (B, A, K)``, ``box_deltas (B, A, 4)``, ``anchors (A, 4)``."""
        num_classes = cls_logits.shape[-1]
        gt_boxes, gt_labels = pad_targets(targets, anchors.device)
        assign = self.assigner(anchors, gt_boxes, gt_labels, num_classes)
        # Ignored anchors (-1) take the background label; their weight 0 removes them from the loss.
        labels = torch.where(assign.labels < 0, num_classes, assign.labels).reshape(-1)
        logits = cls_logits.reshape(-1, num_classes)
        pos = assign.positive
        keep = assign.valid
        if self.sampler is not None:
            pos, keep = self._sample(logits, labels, assign.matched, box_deltas, anchors)
        num_pos = self.normalizer(pos.sum())
        loss_cls = classification_loss(self.cls_loss, logits, labels, keep.reshape(-1).float(), num_pos)

        # Non-positive anchors regress onto themselves: finite zero targets under a zero weight.
        target_boxes = torch.where(pos[..., None], assign.matched_values(gt_boxes).to(anchors.dtype), anchors)
        if box_loss_on_boxes(self.box_loss):
            pred = self.box_coder.decode(anchors, box_deltas)
            target = target_boxes
        else:
            pred = box_deltas
            target = self.box_coder.encode(anchors, target_boxes)
        # Targets stay float32 under autocast: the losses upcast half/bf16 predictions themselves.
        pred, target, pos_flat = pred.reshape(-1, 4), target.reshape(-1, 4), pos.reshape(-1)
        if isinstance(self.box_loss, GHMR):
            loss_box = self.box_loss(pred, target, pos_flat)
        else:
            loss_box = self.box_loss(pred, target, weight=pos_flat.float(), avg_factor=num_pos)
        return {"loss_cls": loss_cls, "loss_box": loss_box}

    def _ranking_losses(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Detached per-anchor classification loss ``(N,)`` that the sampler ranks by."""
        alpha = getattr(self.cls_loss, "alpha", None)
        gamma = getattr(self.cls_loss, "gamma", 0.0)
        with torch.no_grad():
            return sigmoid_focal_loss(logits.detach(), labels, alpha=alpha, gamma=gamma, reduction="none").sum(1)

    def _sample(
        self, logits: Tensor, labels: Tensor, matched: Tensor, box_deltas: Tensor, anchors: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``(pos, keep)`` masks ``(B, A)`` of the sampler: kept positives, all kept anchors."""
        losses = self._ranking_losses(logits, labels).view(matched.shape)
        if hasattr(self.sampler, "masks"):
            boxes = None
            if getattr(self.sampler, "nms_iou", None) is not None:
                boxes = self.box_coder.decode(anchors, box_deltas.detach())
            pos, neg = self.sampler.masks(matched, losses, boxes)
            return pos, pos | neg
        keep = self.sampler(matched, losses)
        return keep & (matched >= 0), keep

    @torch.no_grad()
    def detect(
        self,
        cls_levels: list[Tensor],
        box_levels: list[Tensor],
        level_anchors: list[Tensor],
        image_sizes: list[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        """Detections from per-level outputs (sec. 4, "Inference"): see ``detections_from_levels``."""
        boxes = [self.box_coder.decode(a, d) for a, d in zip(level_anchors, box_levels, strict=True)]
        scores = [c.float().sigmoid() for c in cls_levels]
        return detections_from_levels(
            boxes, scores, image_sizes, self.score_thresh, self.topk_candidates, self.nms_iou, self.max_detections
        )
