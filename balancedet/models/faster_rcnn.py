"""Faster R-CNN with a Feature Pyramid Network (Ren et al., NeurIPS 2015, arXiv 1506.01497; Lin et al.,
CVPR 2017, arXiv 1612.03144, sec. 4), on the parts the dense detectors share.

    images -> batch_images -> backbone (C2-C5) -> neck (FPN P2-P6, P6 a max-pool of P5 [+ BFP])
           -> RPN (P2-P6): proposals [+ loss_rpn_cls, loss_rpn_box]
           -> RoI head (P2-P5): RoIAlign by FPN eq. 1, 2-fc head [+ loss_cls, loss_box] or detections

The network predicts; the two criteria (``RPNCriterion``, ``FastRCNNCriterion``) hold the assignment,
sampling and loss weighting, and no learnable parameters. Each part is a constructor argument: Libra
R-CNN (Pang et al., CVPR 2019, arXiv 1904.02701) is this model with ``roi_sampler=libra_sampler()``, a
neck with the Balanced Feature Pyramid and ``box_loss=BalancedL1Loss(beta=1.0)``; OHEM (Shrivastava et
al., CVPR 2016) is ``roi_sampler=OHEMSampler(64, mode="budget", nms_iou=0.7)``
(``balancedet.models.roi_head`` explains its two passes). The papers' settings per place are in
``balancedet.engine.build``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from balancedet.boxes import DeltaXYWHCoder
from balancedet.models.batching import batch_images
from balancedet.models.detector import check_num_classes
from balancedet.models.priors import PriorGenerator
from balancedet.models.pyramid import build_pyramid
from balancedet.models.roi_head import ROI_STDS, BoxHead, FastRCNNCriterion, RoIHead
from balancedet.models.rpn import RPN, RPN_RATIOS, RPN_SIZES, RPN_STRIDES, RPNCriterion, RPNHead
from balancedet.samplers import Candidates, Sample

__all__ = ["FasterRCNN", "ROI_LEVELS", "ROI_POOL_SIZE"]

#: The RoI head pools from P2-P5; P6 serves the RPN only (FPN paper, sec. 4.2).
ROI_LEVELS = 4
#: The default box head pools 7x7 RoIAlign features (FPN paper, sec. 4.2; Detectron's FPN configs,
#: ``FAST_RCNN.ROI_XFORM_RESOLUTION: 7``).
ROI_POOL_SIZE = 7


class FasterRCNN(nn.Module):
    """Faster R-CNN + FPN with pluggable samplers and losses; ``model(images, targets=None)`` as torchvision's.

    Args:
        num_classes: ``K`` object classes (background is never counted).
        backbone: a ResNet depth (random init, frozen BN, stem and layer1 frozen) or a module with
            ``out_channels`` and ``strides`` returning C2-C5 (strides 4-32).
        neck: a module with ``out_channels`` and ``strides == (4, 8, 16, 32, 64)``; default the FPN with 256
            channels and P6 a max-pool of P5 (``build_pyramid(..., extra_from="maxpool")``, optionally with BFP).
        anchor_sizes, anchor_ratios: the RPN's anchors, 32-512 on P2-P6 and 1:2, 1:1, 2:1 (FPN sec. 4.1).
        rpn_head: default ``RPNHead(neck.out_channels, 3)``.
        rpn_cls_loss, rpn_box_loss, rpn_assigner, rpn_sampler: ``RPNCriterion``'s (BCE, smooth L1 beta 1/9,
            IoU 0.7 / 0.3 with low-quality matches, 256 anchors at half positive).
        rpn_pre_nms_top_n_train, rpn_pre_nms_top_n_test, rpn_post_nms_top_n_train, rpn_post_nms_top_n_test,
            rpn_nms_iou: ``RPN``'s (2000 / 1000 per level, 1000 / 1000 per image, 0.7).
        box_head: default ``BoxHead(neck.out_channels, K, ROI_POOL_SIZE, representation_size)``, 7x7.
        representation_size: the 2-fc head's width (1024).
        roi_sampler, roi_assigner, cls_loss, box_loss, add_gt_as_proposals: ``FastRCNNCriterion``'s (512 RoIs
            at a quarter foreground, IoU 0.5, CE, smooth L1 beta 1, ground truth added).
        box_coder: default ``DeltaXYWHCoder(stds=(0.1, 0.1, 0.2, 0.2))``.
        score_thresh, nms_iou, max_detections: ``RoIHead``'s inference (0.05, 0.5, 100).
        size_divisible: a list of images is padded to a multiple of it (32: C5's stride).

    Training: ``images`` a normalised ``(B, 3, H, W)`` tensor or a list of ``(3, H_i, W_i)`` tensors,
    ``targets[i] = {"boxes": (G_i, 4) xyxy pixels, "labels": (G_i,) int64 in [0, K)}`` ->
    ``{"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box"}``. Eval: one ``{"boxes", "scores",
    "labels"}`` per image, labels 0-based as the dense detectors'.
    """

    def __init__(
        self,
        num_classes: int,
        backbone: nn.Module | int = 50,
        neck: nn.Module | None = None,
        *,
        anchor_sizes: Sequence[float] = RPN_SIZES,
        anchor_ratios: Sequence[float] = RPN_RATIOS,
        rpn_head: nn.Module | None = None,
        rpn_cls_loss: Callable[..., Tensor] | None = None,
        rpn_box_loss: Callable[..., Tensor] | None = None,
        rpn_assigner: Callable[..., object] | None = None,
        rpn_sampler: Callable[[Candidates], Sample] | None = None,
        rpn_pre_nms_top_n_train: int = 2000,
        rpn_pre_nms_top_n_test: int = 1000,
        rpn_post_nms_top_n_train: int = 1000,
        rpn_post_nms_top_n_test: int = 1000,
        rpn_nms_iou: float = 0.7,
        box_head: nn.Module | None = None,
        representation_size: int = 1024,
        roi_sampler: Callable[[Candidates], Sample] | None = None,
        roi_assigner: Callable[..., object] | None = None,
        cls_loss: Callable[..., Tensor] | None = None,
        box_loss: Callable[..., Tensor] | None = None,
        add_gt_as_proposals: bool = True,
        box_coder: DeltaXYWHCoder | None = None,
        score_thresh: float = 0.05,
        nms_iou: float = 0.5,
        max_detections: int = 100,
        size_divisible: int = 32,
    ):
        super().__init__()
        self.num_classes = check_num_classes(num_classes, "FasterRCNN")
        self.backbone, self.neck = build_pyramid(
            backbone, RPN_STRIDES, extra_from="maxpool", neck=neck, where="FasterRCNN"
        )
        priors = PriorGenerator(anchor_sizes, RPN_STRIDES, anchor_ratios)
        if rpn_head is None:
            rpn_head = RPNHead(self.neck.out_channels, priors.num_anchors_per_location)
        rpn_criterion = RPNCriterion(None, rpn_cls_loss, rpn_box_loss, rpn_assigner, rpn_sampler)
        self.rpn = RPN(
            rpn_head,
            priors,
            rpn_criterion,
            rpn_pre_nms_top_n_train,
            rpn_pre_nms_top_n_test,
            rpn_post_nms_top_n_train,
            rpn_post_nms_top_n_test,
            rpn_nms_iou,
        )
        if box_head is None:
            box_head = BoxHead(self.neck.out_channels, num_classes, ROI_POOL_SIZE, representation_size)
        coder = box_coder if box_coder is not None else DeltaXYWHCoder(stds=ROI_STDS)
        criterion = FastRCNNCriterion(
            num_classes, coder, cls_loss, box_loss, roi_assigner, roi_sampler, add_gt_as_proposals
        )
        self.roi_head = RoIHead(box_head, criterion, ROI_LEVELS, 2, score_thresh, nms_iou, max_detections)
        self.size_divisible = size_divisible

    def features(self, images: Tensor) -> list[Tensor]:
        """The pyramid levels P2-P6 of a padded ``(B, 3, H, W)`` batch."""
        return self.neck(self.backbone(images))

    def set_progress(self, fraction: float) -> None:
        """Tell both criteria how far training has gone (``step / total``), for scheduled samplers (S-OHEM)."""
        progress = min(max(float(fraction), 0.0), 1.0)
        self.rpn.criterion.progress = progress
        self.roi_head.criterion.progress = progress

    def forward(
        self, images: Tensor | Sequence[Tensor], targets: Sequence[dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        batch, image_sizes = batch_images(images if isinstance(images, Tensor) else list(images), self.size_divisible)
        if self.training and (targets is None or len(targets) != batch.shape[0]):
            got = None if targets is None else len(targets)
            raise ValueError(f"FasterRCNN: training needs one target per image ({batch.shape[0]}), got {got}")
        levels = self.features(batch)
        input_size = (int(batch.shape[-2]), int(batch.shape[-1]))
        if not self.training:
            return self.predict(levels, image_sizes, input_size)
        proposals, rpn_losses = self.rpn(levels, image_sizes, list(targets))
        roi_losses = self.roi_head(levels[:ROI_LEVELS], proposals, image_sizes, input_size, list(targets))
        return {**rpn_losses, **roi_losses}

    @torch.no_grad()
    def predict(
        self, levels: list[Tensor], image_sizes: list[tuple[int, int]], input_size: tuple[int, int]
    ) -> list[dict[str, Tensor]]:
        """Detections from the pyramid levels: the RPN's test proposals, then the RoI head's inference."""
        proposals, _ = self.rpn(levels, image_sizes)
        return self.roi_head(levels[:ROI_LEVELS], proposals, image_sizes, input_size)
