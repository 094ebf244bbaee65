"""Generalized Focal Loss detector (Li et al., "Generalized Focal Loss: Learning Qualified and Distributed
Bounding Boxes for Dense Object Detection", NeurIPS 2020, arXiv 2006.04388).

A ResNet + FPN (P3-P7) one-stage detector with one anchor point per location (shared/SPEC.md section 4).
Its head has RetinaNet's two towers of ``num_convs`` 3x3 convolutions (GroupNorm, as in the GFL
paper), shared across levels, ending in

- a joint classification-IoU branch (sec. 3, "QFL"): ``C`` sigmoid outputs whose target at a
  positive is the IoU of its decoded predicted box with its ground truth (0 elsewhere), trained with
  Quality Focal Loss (``balancedet.losses.gfl.quality_focal_loss``, beta = 2);
- a general distribution of each box side (sec. 3, "DFL"): ``reg_max + 1 = 17`` bins per side, the side
  being the expectation ``sum_i P(i) * i`` (the discretised integral of sec. 3) times the level's stride,
  trained with Distribution Focal Loss (eq. 6, weight 0.25) and the GIoU loss (weight 2.0) on the decoded box.

Positives come from ATSS (Zhang et al., CVPR 2020, arXiv 1912.02424) on one square anchor of side
``8 * stride`` per point. Our ``reg_max`` is the GFL paper's: ``reg_max = 16`` means 17 bins.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from balancedet.assign import AssignResult, ATSSAssigner
from balancedet.boxes import AnchorPoints, DistancePointCoder, aligned_box_iou, points_to_anchors
from balancedet.boxes.anchors import FPN_STRIDES
from balancedet.losses.focal import prior_bias
from balancedet.losses.gfl import distribution_focal_loss, quality_focal_loss
from balancedet.losses.iou import giou_loss
from balancedet.models.backbones import ResNetBackbone
from balancedet.models.batching import batch_images, pad_targets
from balancedet.models.bfp import BalancedFeaturePyramid
from balancedet.models.fpn import FPN
from balancedet.models.normalizer import PositiveNormalizer
from balancedet.models.postprocess import detections_from_levels

__all__ = ["GFL", "GFLHead", "Scale", "distribution_expectation", "gfl_loss"]

HEAD_NORMS = ("group", None)


class Scale(nn.Module):
    """A learnable scalar (init 1) multiplying one level's regression output.

    The head's convolutions are shared across levels whose targets (in strides) have different
    spreads; a per-level factor lets each level rescale its logits (FCOS, Tian et al., ICCV 2019,
    arXiv 1904.01355, sec. 3.2; kept by the GFL head).
    """

    def __init__(self, init: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def distribution_expectation(logits: Tensor, reg_max: int) -> Tensor:
    """Expected box sides ``(..., 4 * (reg_max + 1)) -> (..., 4)``, in units of the level's stride.

    GFL sec. 3, "Distribution Focal Loss", the discretised integral ``y_hat = sum_{i=0}^{reg_max} P(y_i) y_i``
    with ``y_i = i`` and ``P`` the softmax over the ``reg_max + 1`` bins of each side. The channels are
    side-major: ``(l, t, r, b)``, each a block of ``reg_max + 1`` consecutive bins. Half / bf16 logits are
    computed in float32.
    """
    bins = reg_max + 1
    if logits.shape[-1] != 4 * bins:
        raise ValueError(
            f"distribution logits must have 4 * (reg_max + 1) = {4 * bins} channels last, got {tuple(logits.shape)}"
        )
    x = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
    prob = x.unflatten(-1, (4, bins)).softmax(dim=-1)
    return prob @ torch.arange(bins, dtype=prob.dtype, device=prob.device)


def _init_conv(conv: nn.Conv2d, bias: float = 0.0) -> None:
    # Focal loss paper, sec. 4.1 (kept by GFL): new head convs start at N(0, 0.01), bias 0.
    nn.init.normal_(conv.weight, std=0.01)
    if conv.bias is not None:
        nn.init.constant_(conv.bias, bias)


def _tower(in_channels: int, channels: int, num_convs: int, norm: str | None, groups: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(num_convs):
        # a conv followed by a normalisation has no use for a bias (the norm's shift replaces it)
        conv = nn.Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1, bias=norm is None)
        _init_conv(conv)
        layers.append(conv)
        if norm == "group":
            layers.append(nn.GroupNorm(groups, channels))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class GFLHead(nn.Module):
    """The GFL head (arXiv 2006.04388 and its released configuration), shared across levels.

    Two towers of ``num_convs`` 3x3 convs of ``channels`` (ReLU, GroupNorm of ``norm_groups`` groups
    unless ``norm=None``), as RetinaNet's subnets, one point per location. The classification tower
    ends in ``num_classes`` joint classification-IoU logits (bias ``prior_bias(prior_prob)``), the box
    tower in ``4 * (reg_max + 1)`` distribution logits multiplied by a per-level ``Scale``.

    Args:
        in_channels: channels of the pyramid features.
        num_classes: ``C``, without background.
        num_levels: number of pyramid levels (one ``Scale`` each).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        num_levels: int = 5,
        channels: int = 256,
        num_convs: int = 4,
        reg_max: int = 16,
        norm: str | None = "group",
        norm_groups: int = 32,
        prior_prob: float = 0.01,
    ):
        super().__init__()
        if num_classes < 1 or num_levels < 1 or channels < 1 or num_convs < 0 or reg_max < 1:
            raise ValueError(
                f"GFLHead: need num_classes, num_levels, channels, reg_max >= 1 and num_convs >= 0, got "
                f"{num_classes}, {num_levels}, {channels}, {reg_max} and {num_convs}"
            )
        if norm not in HEAD_NORMS:
            raise ValueError(f"GFLHead: norm must be one of {HEAD_NORMS}, got {norm!r}")
        if norm == "group" and channels % norm_groups:
            raise ValueError(f"GFLHead: channels {channels} must be divisible by norm_groups {norm_groups}")
        self.num_classes, self.reg_max = num_classes, reg_max
        self.cls_tower = _tower(in_channels, channels, num_convs, norm, norm_groups)
        self.reg_tower = _tower(in_channels, channels, num_convs, norm, norm_groups)
        width = channels if num_convs else in_channels
        self.cls_logits = nn.Conv2d(width, num_classes, 3, padding=1)
        self.reg_logits = nn.Conv2d(width, 4 * (reg_max + 1), 3, padding=1)
        _init_conv(self.cls_logits, prior_bias(prior_prob))
        _init_conv(self.reg_logits)
        self.scales = nn.ModuleList(Scale(1.0) for _ in range(num_levels))

    def forward(self, features: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """``features``: one ``(B, in_channels, H_l, W_l)`` map per level.

        Returns per level ``cls_logits: (B, H_l * W_l, C)`` and ``reg_logits: (B, H_l * W_l, 4 * (reg_max + 1))``,
        locations row-major (the order of ``AnchorPoints``).
        """
        if len(features) != len(self.scales):
            raise ValueError(f"GFLHead: expected {len(self.scales)} feature maps, got {len(features)}")
        cls_out, reg_out = [], []
        for feature, scale in zip(features, self.scales, strict=True):
            cls = self.cls_logits(self.cls_tower(feature))
            reg = scale(self.reg_logits(self.reg_tower(feature)))
            cls_out.append(cls.flatten(2).transpose(1, 2))
            reg_out.append(reg.flatten(2).transpose(1, 2))
        return cls_out, reg_out


def gfl_loss(
    cls_logits: Tensor,
    reg_logits: Tensor,
    points: Tensor,
    strides: Tensor,
    assignment: AssignResult,
    gt_boxes: Tensor,
    *,
    reg_max: int = 16,
    beta: float = 2.0,
    qfl_weight: float = 1.0,
    dfl_weight: float = 0.25,
    giou_weight: float = 2.0,
    num_pos_normalizer: Callable[[Tensor], Tensor] | None = None,
    box_weight_normalizer: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, Tensor]:
    """The GFL training losses of a batch (arXiv 2006.04388, sec. 3, "Training Dense Detectors with GFL").

    Computed for all images at once:

    - ``loss_qfl``: Quality Focal Loss over every non-ignored (point, class); the target at a positive's
      class is the detached IoU of its decoded predicted box with its ground truth, 0 elsewhere; the sum is
      divided by the number of positives (``num_pos_normalizer``, at least 1).
    - ``loss_dfl``: ``dfl_weight`` times DFL (eq. 6) averaged over the four sides, targets in strides
      clamped to ``[0, reg_max - 0.01]`` (shared/SPEC.md section 1);
    - ``loss_giou``: ``giou_weight`` times ``1 - GIoU`` of the decoded box.

    The two box losses weigh each positive by its detached predicted score, the max over classes of the
    joint sigmoid, and divide by the sum of those weights (``box_weight_normalizer``, at least 1). This is
    what the GFL reference implementation does (mmdetection's ``GFLHead`` too, with the same clamp at 1);
    the paper's total loss writes ``1 / N_pos`` for all three terms.

    ``GFL`` passes ``PositiveNormalizer``s for both: the all-reduced value divided by the world size, so
    that with DDP's gradient averaging the batch's summed loss is divided by the batch's total count or
    weight over all processes.

    The box terms run densely over all points with zero weights off the positives: selecting the
    positives would need a data-dependent size, i.e. a host synchronisation.

    Args:
        cls_logits: ``(B, A, C)`` joint classification-IoU logits.
        reg_logits: ``(B, A, 4 * (reg_max + 1))`` distribution logits (``GFLHead`` layout).
        points: ``(A, 2)`` location centres ``(x, y)`` in pixels; ``strides: (A,)`` their levels' strides.
        assignment: ``(B, A)`` assignment (``labels``: class, ``C`` background, -1 ignored).
        gt_boxes: ``(B, G, 4)`` padded ground truth, xyxy pixels.
        num_pos_normalizer, box_weight_normalizer: ``0-dim Tensor -> 0-dim Tensor``; ``None`` clamps
            the local value at 1 (single process).
    """
    batch, num_points, num_classes = cls_logits.shape
    bins = reg_max + 1
    if reg_logits.shape != (batch, num_points, 4 * bins):
        raise ValueError(
            f"gfl_loss: reg_logits must be {(batch, num_points, 4 * bins)} for cls_logits {tuple(cls_logits.shape)} "
            f"and reg_max {reg_max}, got {tuple(reg_logits.shape)}"
        )
    if points.shape != (num_points, 2) or strides.shape != (num_points,):
        raise ValueError(
            f"gfl_loss: points must be ({num_points}, 2) and strides ({num_points},), "
            f"got {tuple(points.shape)} and {tuple(strides.shape)}"
        )
    if assignment.labels.shape != (batch, num_points):
        raise ValueError(f"gfl_loss: assignment is {tuple(assignment.labels.shape)}, expected {(batch, num_points)}")
    normalize_pos = num_pos_normalizer or _clamp_at_one
    normalize_weight = box_weight_normalizer or _clamp_at_one

    positive = assignment.positive
    labels = assignment.labels
    distances = distribution_expectation(reg_logits, reg_max)  # (B, A, 4) in strides
    pred_boxes = DistancePointCoder().decode(points, distances, strides)
    target_boxes = assignment.matched_values(gt_boxes).to(pred_boxes.dtype)
    with torch.no_grad():
        # the QFL target; off the positives the IoU is meaningless (possibly 0/0) and replaced by 0
        iou = aligned_box_iou(pred_boxes, target_boxes).clamp(0.0, 1.0)
        quality = torch.where(positive, iou, torch.zeros_like(iou))
        box_weight = torch.where(positive, cls_logits.sigmoid().amax(dim=2).to(iou.dtype), torch.zeros_like(iou))

    valid = labels >= 0
    qfl = quality_focal_loss(
        cls_logits.reshape(-1, num_classes),
        torch.where(valid, labels, num_classes).reshape(-1),
        quality.reshape(-1),
        beta=beta,
        weight=valid.reshape(-1).to(quality.dtype),
        avg_factor=normalize_pos(positive.sum()),
    )

    weight_sum = normalize_weight(box_weight.sum())
    giou = giou_loss(
        pred_boxes.reshape(-1, 4), target_boxes.reshape(-1, 4), weight=box_weight.reshape(-1), avg_factor=weight_sum
    )
    target_distances = DistancePointCoder(max_distance=reg_max).encode(points, target_boxes, strides)
    # avg_factor 4 * sum(w): the mean over the four sides of each positive, then the weighted mean
    dfl = distribution_focal_loss(
        reg_logits.reshape(-1, bins),
        target_distances.reshape(-1),
        weight=box_weight.unsqueeze(-1).expand(-1, -1, 4).reshape(-1),
        avg_factor=4 * weight_sum,
    )
    return {"loss_qfl": qfl_weight * qfl, "loss_dfl": dfl_weight * dfl, "loss_giou": giou_weight * giou}


def _clamp_at_one(value: Tensor) -> Tensor:
    return value.float().clamp(min=1.0)


class GFL(nn.Module):
    """Generalized Focal Loss detector (Li et al., NeurIPS 2020, arXiv 2006.04388), torchvision's contract.

    ``model(images, targets)``: ``images`` a ``(B, 3, H, W)`` normalised tensor or a list of ``(3, H_i, W_i)``
    tensors (padded to a multiple of ``size_divisible``); ``targets`` a list of dicts with ``"boxes"``:
    ``(G, 4)`` xyxy pixels and ``"labels"``: ``(G,)`` int64 in ``[0, num_classes)`` (``G = 0`` is legal).
    Training returns ``{"loss_qfl", "loss_dfl", "loss_giou"}`` (``gfl_loss``, one ATSS call and one loss
    call for the whole batch); evaluation returns one dict per image with ``"boxes"``, ``"scores"`` (the
    joint classification-IoU sigmoid) and ``"labels"``, in the input image's coordinates.

    Args:
        num_classes: ``C``, not counting background.
        backbone: a module returning a list of maps with an ``out_channels`` list, or a ResNet depth
            (18, 34, 50, 101) built as ``ResNetBackbone(depth, backbone_weights, backbone_norm, frozen_stages)``.
        backbone_weights, backbone_norm, frozen_stages: see ``ResNetBackbone`` (used with a depth).
        neck: a module mapping the backbone maps to the pyramid, with an ``out_channels`` int; default
            ``FPN(backbone.out_channels, fpn_channels, num_extra, extra_from="p5")`` with enough extra
            levels for ``strides`` (P6 from P5, as GFL's released configuration; RetinaNet's is C5).
        fpn_channels: channels of the default FPN (256).
        bfp: ``None``, or the refinement of a Libra Balanced Feature Pyramid appended to the neck
            (``"non_local"``, ``"conv"``, ``"none"``; refine level P4).
        head_channels, num_convs, head_norm, head_norm_groups, prior_prob: ``GFLHead``'s (256, 4,
            GroupNorm of 32 groups, 0.01).
        strides: the pyramid's strides (P3-P7: 8 to 128).
        reg_max: largest distance in strides; ``reg_max + 1`` bins per side (17 in the paper).
        octave_base_scale: ATSS anchors are squares of side ``octave_base_scale * stride`` (8).
        point_offset: points are ``(index + point_offset) * stride`` (0, as GFL's released code).
        qfl_beta, qfl_weight, dfl_weight, giou_weight: loss hyper-parameters (2, 1, 0.25, 2).
        assigner: ``(anchors, num_anchors_per_level, gt_boxes, gt_labels, num_classes) -> AssignResult``;
            default ``ATSSAssigner(topk=9)``.
        normalizer: QFL's ``PositiveNormalizer()`` by default (positives summed across processes);
            the box losses' sum of weights always uses a plain ``PositiveNormalizer()``.
        score_thresh, topk_candidates, nms_iou, max_detections: inference (0.05, 1000 per level,
            class-wise NMS at 0.6 as GFL's released configuration, 100).
        size_divisible: a list of images is padded to a multiple of it (32: C5's stride).
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
        head_channels: int = 256,
        num_convs: int = 4,
        head_norm: str | None = "group",
        head_norm_groups: int = 32,
        prior_prob: float = 0.01,
        strides: Sequence[int] = FPN_STRIDES,
        reg_max: int = 16,
        octave_base_scale: float = 8.0,
        point_offset: float = 0.0,
        qfl_beta: float = 2.0,
        qfl_weight: float = 1.0,
        dfl_weight: float = 0.25,
        giou_weight: float = 2.0,
        assigner: Callable[..., AssignResult] | None = None,
        normalizer: PositiveNormalizer | None = None,
        score_thresh: float = 0.05,
        topk_candidates: int = 1000,
        nms_iou: float = 0.6,
        max_detections: int = 100,
        size_divisible: int = 32,
    ):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"GFL: num_classes must be a positive int (background not counted), got {num_classes!r}")
        if isinstance(backbone, int):
            backbone = ResNetBackbone(backbone, backbone_weights, backbone_norm, frozen_stages)
        elif not isinstance(backbone, nn.Module) or not hasattr(backbone, "out_channels"):
            raise TypeError(
                f"GFL: backbone must be a ResNet depth or a module with out_channels, got {type(backbone).__name__}"
            )
        strides = tuple(int(s) for s in strides)
        self.backbone = backbone
        if neck is None:
            num_extra = len(strides) - len(backbone.out_channels)
            neck = FPN(list(backbone.out_channels), fpn_channels, num_extra=max(num_extra, 0), extra_from="p5")
            if tuple(neck.strides) != strides:
                raise ValueError(f"GFL: strides {strides} do not match the FPN's {tuple(neck.strides)}")
        if not isinstance(getattr(neck, "out_channels", None), int):
            raise ValueError("GFL: the neck needs an out_channels attribute (an int)")
        self.neck = neck
        self.bfp = None if bfp is None else BalancedFeaturePyramid(neck.out_channels, len(strides), 1, bfp)
        self.head = GFLHead(
            neck.out_channels,
            num_classes,
            num_levels=len(strides),
            channels=head_channels,
            num_convs=num_convs,
            reg_max=reg_max,
            norm=head_norm,
            norm_groups=head_norm_groups,
            prior_prob=prior_prob,
        )
        self.num_classes, self.reg_max = num_classes, reg_max
        self.points = AnchorPoints(strides, offset=point_offset)
        self.octave_base_scale = float(octave_base_scale)
        self.assigner = assigner if assigner is not None else ATSSAssigner(topk=9)
        self.loss_args = {
            "beta": qfl_beta,
            "qfl_weight": qfl_weight,
            "dfl_weight": dfl_weight,
            "giou_weight": giou_weight,
        }
        self.normalizer = normalizer if normalizer is not None else PositiveNormalizer()
        self.box_weight_normalizer = PositiveNormalizer()
        self.score_thresh, self.topk_candidates = score_thresh, topk_candidates
        self.nms_iou, self.max_detections = nms_iou, max_detections
        self.size_divisible = size_divisible

    def features(self, images: Tensor) -> list[Tensor]:
        """``(B, 3, H, W)`` -> the pyramid ``[P3, ..., P7]`` (after the BFP when enabled)."""
        features = self.neck(self.backbone(images))
        return self.bfp(features) if self.bfp is not None else features

    def forward(
        self, images: Tensor | Sequence[Tensor], targets: Sequence[dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        if self.training and targets is None:
            raise ValueError("GFL: targets are required in training mode")
        batch, image_sizes = batch_images(images if isinstance(images, Tensor) else list(images), self.size_divisible)
        features = self.features(batch)
        if len(features) != self.points.num_levels:
            raise ValueError(f"GFL: {len(features)} pyramid levels for {self.points.num_levels} strides")
        cls_levels, reg_levels = self.head(features)
        points, strides = self.points([f.shape[-2:] for f in features], device=batch.device)
        if self.training:
            return self.loss(cls_levels, reg_levels, points, strides, targets, len(image_sizes))
        return self.postprocess(cls_levels, reg_levels, points, strides, image_sizes)

    def loss(
        self,
        cls_levels: list[Tensor],
        reg_levels: list[Tensor],
        points: Tensor,
        strides: Tensor,
        targets: Sequence[dict[str, Tensor]],
        batch: int,
    ) -> dict[str, Tensor]:
        """One ATSS call for the whole batch, then ``gfl_loss`` on the concatenated levels."""
        if len(targets) != batch:
            raise ValueError(f"GFL: {len(targets)} targets for a batch of {batch} images")
        gt_boxes, gt_labels = pad_targets(targets, points.device)
        anchors = points_to_anchors(points, strides, self.octave_base_scale)
        assignment = self.assigner(anchors, [c.shape[1] for c in cls_levels], gt_boxes, gt_labels, self.num_classes)
        return gfl_loss(
            torch.cat(cls_levels, dim=1),
            torch.cat(reg_levels, dim=1),
            points,
            strides,
            assignment,
            gt_boxes,
            reg_max=self.reg_max,
            num_pos_normalizer=self.normalizer,
            box_weight_normalizer=self.box_weight_normalizer,
            **self.loss_args,
        )

    @torch.no_grad()
    def postprocess(
        self,
        cls_levels: list[Tensor],
        reg_levels: list[Tensor],
        points: Tensor,
        strides: Tensor,
        image_sizes: list[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        """Decode every level (box sides = expectation x stride), then threshold, top-k, NMS, keep."""
        boxes, scores = [], []
        start = 0
        for cls, reg in zip(cls_levels, reg_levels, strict=True):
            end = start + cls.shape[1]
            distances = distribution_expectation(reg, self.reg_max)
            boxes.append(DistancePointCoder().decode(points[start:end], distances, strides[start:end]))
            scores.append(cls.float().sigmoid())
            start = end
        return detections_from_levels(
            boxes,
            scores,
            image_sizes,
            score_thresh=self.score_thresh,
            topk=self.topk_candidates,
            nms_iou=self.nms_iou,
            max_dets=self.max_detections,
        )
