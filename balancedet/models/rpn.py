"""The Region Proposal Network of an FPN Faster R-CNN.

Ren et al., "Faster R-CNN", NeurIPS 2015 (arXiv 1506.01497), sec. 3.1, with the FPN adaptation of Lin et
al., "Feature Pyramid Networks for Object Detection", CVPR 2017 (arXiv 1612.03144), sec. 4.1:

- **Head**: a 3x3 conv (as many channels as the levels, ReLU) and two sibling 1x1 convs, one objectness
  logit and 4 deltas per anchor, shared by every level P2-P6. One sigmoid logit per anchor (FPN's
  Detectron and torchvision) rather than the paper's two-class softmax: the two are the same model.
  Every conv N(0, 0.01), bias 0 (Detectron's and torchvision's initialisation).
- **Anchors**: one scale per level, side ``8 x stride`` (areas 32^2 .. 512^2 on P2-P6), ratios 1:2, 1:1,
  2:1: 3 per location. Boxes are decoded with R-CNN deltas of stds 1 (no target normalisation).
- **Targets** (Faster R-CNN sec. 3.1.2): class-agnostic max-IoU assignment, IoU >= 0.7 positive, < 0.3
  negative, in between ignored; each ground-truth box also claims its highest-IoU anchors (ties
  included): ``MaxIoUAssigner(0.7, 0.3, low_quality=True)``. Anchors that cross the image border take
  part, as in detectron2, torchvision and mmdetection (the paper and Detectron ignore them in training).
- **Sampling** (sec. 3.1.3): 256 anchors per image, at most half positive, ``RandomSampler(256, 0.5)``,
  or any sampler of the shared protocol (``balancedet.samplers``).
- **Losses** (eq. 1): sigmoid BCE on the sampled anchors and smooth L1 (beta 1/9, Detectron's and
  torchvision's RPN) on the deltas of the sampled positives, both divided by the number of anchors
  sampled in the batch: ``N_cls = N_reg`` = the mini-batch of eq. 1 and ``lambda = 1``, as Detectron and
  torchvision normalise (the paper's ``N_reg ~ 2400`` with ``lambda = 10`` weighs the two terms about
  equally too and, sec. 3.1.2, "the normalization as above is not required"). With 256 non-ignored
  anchors in every image that count is the constant ``256 x images`` of detectron2.
- **Proposals** (Detectron's FPN RPN, which detectron2's ``find_top_rpn_proposals`` keeps): for each
  image and level the ``pre_nms_top_n`` anchors of highest objectness (2000 in training, 1000 at test);
  decode, clip to the image, drop boxes narrower or lower than ``min_size``; NMS at IoU 0.7 within each
  level; then the ``post_nms_top_n`` best of all levels per image. The post-NMS count is per image:
  1000 in training and at test, detectron2's ``Base-RCNN-FPN`` setting, which equals Detectron's 2000
  per 2-image batch (Detectron applies its training limit to the batch; torchvision keeps 2000 per
  image). The proposals carry no gradient (the paper's approximate joint training).

The whole batch goes through one top-k per level, one decode, one clip and one ``batched_nms`` whose
groups are (image, level) pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms, remove_small_boxes

from balancedet.analysis.kinds import example_kinds
from balancedet.assign import MaxIoUAssigner
from balancedet.assign.result import AssignResult
from balancedet.losses.cross_entropy import BinaryCrossEntropyLoss, binary_cross_entropy
from balancedet.losses.smooth_l1 import SmoothL1Loss, smooth_l1_loss
from balancedet.models.batching import pad_targets
from balancedet.models.detector import KindStats, call_loss, record_kinds
from balancedet.models.heads import flatten_level
from balancedet.models.priors import DeltaCoding, PriorGenerator, Priors
from balancedet.samplers import Candidates, RandomSampler, Sample

__all__ = [
    "RPN",
    "RPNCriterion",
    "RPNHead",
    "RPN_RATIOS",
    "RPN_SIZES",
    "RPN_SMOOTH_L1_BETA",
    "RPN_STRIDES",
    "clip_to_images",
    "sampled_losses",
    "sampler_candidates",
    "top_after_nms",
]

#: P2-P6 (FPN paper, sec. 4.1).
RPN_STRIDES = (4, 8, 16, 32, 64)
#: Anchor areas 32^2 .. 512^2 on P2-P6: side 8 x stride (FPN paper, sec. 4.1).
RPN_SIZES = (32.0, 64.0, 128.0, 256.0, 512.0)
#: Aspect ratios h / w of 1:2, 1:1, 2:1 (FPN paper, sec. 4.1).
RPN_RATIOS = (0.5, 1.0, 2.0)
#: Detectron's FPN RPN box loss (``SmoothL1Loss(beta=1/9)``), also torchvision's.
RPN_SMOOTH_L1_BETA = 1.0 / 9.0


def sampler_candidates(
    sampler: Callable[[Candidates], Sample],
    matched: Tensor,
    fields: Mapping[str, Callable[[], Tensor]],
    progress: float,
) -> Candidates:
    """The sampler's view of the candidates: ``matched`` and the fields ``sampler.needs`` lists.

    ``fields`` maps a ``Candidates`` field to a function computing it, called only when the sampler
    needs it. A needed ``cls_loss`` brings ``box_loss`` along: OHEM ranks by their sum, the paper's
    multitask loss (arXiv 1604.03540, sec. 4.1), when both are given.
    """
    wanted = set(sampler.needs) | ({"box_loss"} if "cls_loss" in sampler.needs else set())
    return Candidates(matched, progress=progress, **{name: fields[name]() for name in wanted if name in fields})


def sampled_losses(
    cls_loss: Callable[..., Tensor],
    box_loss: Callable[..., Tensor],
    logits: Tensor,
    labels: Tensor,
    box_pred: Tensor,
    box_target: Tensor,
    pos: Tensor,
    keep: Tensor,
) -> tuple[Tensor, Tensor]:
    """Classification loss over the kept candidates, box loss over the positives, both divided by
    the number kept (the two-stage normalisation of Detectron and torchvision, at least 1).

    ``logits (N, C)``, ``labels (N,)``, ``box_pred`` / ``box_target (N, 4)``, ``pos`` / ``keep (N,)`` bool.
    The box loss is computed on the positive rows gathered out of ``box_pred`` (as torchvision's RPN and
    box head index them): the same sum as weighting every row by ``pos``, but the loss's backward then
    keeps ``(P, 4)`` predictions and targets instead of ``(N, 4)``, through the whole backward pass of the
    network behind it (the RPN's losses are among the first nodes built, so the last ones run).
    """
    num = keep.sum().clamp(min=1).float()
    rows = pos.nonzero().squeeze(1)
    ones = torch.ones(rows.shape, dtype=box_pred.dtype, device=box_pred.device)
    return (
        call_loss(cls_loss, logits, labels, keep.float(), num),
        call_loss(box_loss, box_pred[rows], box_target[rows], ones, num),
    )


def clip_to_images(boxes: Tensor, sizes: Tensor) -> Tensor:
    """``boxes (..., 4)`` clipped to ``[0, W] x [0, H]`` of ``sizes (..., 2)`` as ``(H, W)`` (broadcast)."""
    wh = sizes.flip(-1).to(boxes.dtype)
    return torch.minimum(boxes.clamp(min=0), torch.cat((wh, wh), dim=-1))


def top_after_nms(
    boxes: Tensor,
    scores: Tensor,
    groups: Tensor,
    num_groups: int,
    image: Tensor,
    num_images: int,
    iou: float,
    top_n: int,
) -> list[Tensor]:
    """Indices of the ``top_n`` best candidates of each image after NMS within each group, best first.

    ``boxes (N, 4)``, ``scores (N,)``, ``groups (N,)`` int64 in ``[0, num_groups)`` (FPN level or class),
    ``image (N,)`` int64 in ``[0, num_images)``. One ``torchvision.ops.batched_nms`` over the (image, group)
    pairs; its result is sorted by decreasing score, so each image's first ``top_n`` are its best.
    """
    keep = batched_nms(boxes, scores, image * num_groups + groups, iou)
    kept_image = image[keep]
    return [keep[kept_image == i][:top_n] for i in range(num_images)]


class RPNHead(nn.Module):
    """A 3x3 conv + ReLU, then 1x1 convs to ``A`` objectness logits and ``4 A`` deltas, on every level.

    ``forward(levels) -> (objectness, deltas)``: per-level lists of ``(B, H_l W_l A, 1)`` and
    ``(B, H_l W_l A, 4)``, in the order of ``balancedet.boxes.AnchorGenerator``.
    """

    def __init__(self, in_channels: int, num_anchors: int = 3):
        super().__init__()
        if in_channels < 1 or num_anchors < 1:
            raise ValueError(f"RPNHead: in_channels and num_anchors must be >= 1, got {in_channels}, {num_anchors}")
        self.num_anchors = num_anchors
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.objectness = nn.Conv2d(in_channels, num_anchors, 1)
        self.deltas = nn.Conv2d(in_channels, 4 * num_anchors, 1)
        for conv in (self.conv, self.objectness, self.deltas):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, levels: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        objectness, deltas = [], []
        for x in levels:
            t = F.relu(self.conv(x))
            objectness.append(flatten_level(self.objectness(t), 1))
            deltas.append(flatten_level(self.deltas(t), 4))
        return objectness, deltas


class RPNCriterion(nn.Module):
    """The RPN's training losses for a batch: class-agnostic assignment, sampling, BCE and box loss.

    Args:
        coding: the anchors' deltas (``DeltaCoding()``: stds 1).
        cls_loss: ``(logits (N, 1), labels (N,), weight, avg_factor)`` with label 0 object, 1 background;
            default ``BinaryCrossEntropyLoss()``.
        box_loss: on deltas, or on decoded boxes when it declares ``needs_decoded_boxes``; default
            ``SmoothL1Loss(beta=1/9)``.
        assigner: default ``MaxIoUAssigner(pos_iou=0.7, neg_iou=0.3, min_pos_iou=0, low_quality=True)``.
        sampler: default ``RandomSampler(256, 0.5)``; any sampler of the protocol. Of the ``Candidates``
            fields only those it needs are computed: ``cls_loss`` the detached BCE, ``box_loss`` the
            detached smooth L1 (beta 1/9) summed over the deltas (0 off the positives), ``boxes`` the
            decoded anchors, ``max_iou`` the assigner's.

    ``forward(objectness (B, A, 1), deltas (B, A, 4), priors, targets) -> {"loss_rpn_cls", "loss_rpn_box"}``,
    both divided by the number of sampled anchors of the batch (see the module docstring). With
    ``record_stats = True`` each call keeps the ``KindStats`` of its objectness loss over the sampled
    anchors in ``stats`` (``DenseCriterion``'s switch).
    """

    stats_name = "rpn"
    record_stats = False

    def __init__(
        self,
        coding: DeltaCoding | None = None,
        cls_loss: Callable[..., Tensor] | None = None,
        box_loss: Callable[..., Tensor] | None = None,
        assigner: Callable[..., object] | None = None,
        sampler: Callable[[Candidates], Sample] | None = None,
    ):
        super().__init__()
        self.coding = coding if coding is not None else DeltaCoding()
        self.cls_loss = cls_loss if cls_loss is not None else BinaryCrossEntropyLoss()
        self.box_loss = box_loss if box_loss is not None else SmoothL1Loss(beta=RPN_SMOOTH_L1_BETA)
        self.assigner = assigner if assigner is not None else MaxIoUAssigner(0.7, 0.3, 0.0, low_quality=True)
        self.sampler = sampler if sampler is not None else RandomSampler(256, 0.5)
        self.progress = 0.0
        self.stats: KindStats | None = None

    def match(self, priors: Priors, targets: Sequence[dict[str, Tensor]]) -> tuple[AssignResult, Tensor]:
        """``(assign, target_boxes)``: the class-agnostic ``AssignResult`` ``(B, A)`` and each anchor's
        matched box ``(B, A, 4)`` (the anchor itself off the positives: finite zero deltas)."""
        anchors = priors.anchors
        gt_boxes, gt_labels = pad_targets(targets, anchors.device)
        # objectness knows one class, "object": every real box is class 0, padding stays -1
        assign = self.assigner(anchors, gt_boxes, torch.where(gt_labels >= 0, 0, -1), 1)
        matched = assign.matched_values(gt_boxes).to(anchors.dtype)
        return assign, torch.where(assign.positive[..., None], matched, anchors)

    def forward(
        self, objectness: Tensor, deltas: Tensor, priors: Priors, targets: Sequence[dict[str, Tensor]]
    ) -> dict[str, Tensor]:
        assign, target_boxes = self.match(priors, targets)
        positive = assign.positive
        labels = (~positive).long()
        encoded = self.coding.encode(target_boxes, priors)
        batch, num = positive.shape
        fields = {
            "cls_loss": lambda: binary_cross_entropy(
                objectness.detach().reshape(-1, 1), labels.reshape(-1), reduction="none"
            ).view(batch, num),
            "box_loss": lambda: torch.where(
                positive,
                smooth_l1_loss(deltas.detach().float(), encoded, beta=RPN_SMOOTH_L1_BETA, reduction="none").sum(-1),
                0.0,
            ),
            "boxes": lambda: self.coding.decode(deltas.detach(), priors),
            "max_iou": lambda: assign.max_iou,
        }
        sample = self.sampler(sampler_candidates(self.sampler, assign.matched, fields, self.progress))
        if getattr(self.box_loss, "needs_decoded_boxes", False):
            pred, target = self.coding.decode(deltas, priors), target_boxes
        else:
            pred, target = deltas, encoded
        keep = sample.keep.reshape(-1)
        # The losses see the sampled anchors only (256 an image of ~16k-200k), as torchvision's do: weighted
        # over all anchors they kept the batch's logits, deltas, targets and masks alive through the backward
        # pass, which put the step's peak memory above torchvision's. The RPN synchronises anyway (its NMS).
        index = keep.nonzero().squeeze(1)
        loss_cls, loss_box = sampled_losses(
            self.cls_loss,
            self.box_loss,
            objectness.reshape(-1, 1)[index],
            labels.reshape(-1)[index],
            pred.reshape(-1, 4)[index],
            target.reshape(-1, 4)[index],
            sample.pos.reshape(-1)[index],
            keep[index],
        )
        if self.record_stats:
            logits, flat = objectness.reshape(-1, 1), labels.reshape(-1)
            weight = sample.keep.reshape(-1).float()
            self.stats = record_kinds(self.cls_loss, logits, flat, weight, loss_cls, example_kinds(logits, flat))
        return {"loss_rpn_cls": loss_cls, "loss_rpn_box": loss_box}


class RPN(nn.Module):
    """Proposals (and, in training, the RPN losses) from the pyramid levels.

    Args:
        head: ``levels -> (objectness, deltas)`` per-level lists (``RPNHead``) with ``num_anchors``.
        prior_generator: the anchors (``PriorGenerator(RPN_SIZES, RPN_STRIDES, RPN_RATIOS)``).
        criterion: ``RPNCriterion()``; its ``coding`` also decodes the proposals.
        pre_nms_top_n_train, pre_nms_top_n_test: anchors kept per level and image before NMS (2000, 1000).
        post_nms_top_n_train, post_nms_top_n_test: proposals kept per image after NMS (1000, 1000).
        nms_iou: NMS threshold within a level (0.7).
        min_size: proposals narrower or lower than it (pixels) are dropped (1e-3: only empty boxes,
            torchvision's value; Detectron's 0).

    ``forward(levels, image_sizes, targets=None) -> (proposals, losses)``: one ``(P_i, 4)`` detached box
    tensor per image, best first, and ``{"loss_rpn_cls", "loss_rpn_box"}`` in training (``{}`` in eval).
    """

    def __init__(
        self,
        head: nn.Module,
        prior_generator: PriorGenerator,
        criterion: RPNCriterion | None = None,
        pre_nms_top_n_train: int = 2000,
        pre_nms_top_n_test: int = 1000,
        post_nms_top_n_train: int = 1000,
        post_nms_top_n_test: int = 1000,
        nms_iou: float = 0.7,
        min_size: float = 1e-3,
    ):
        super().__init__()
        counts = (pre_nms_top_n_train, pre_nms_top_n_test, post_nms_top_n_train, post_nms_top_n_test)
        if min(counts) < 1 or not 0 < nms_iou <= 1 or min_size < 0:
            raise ValueError(
                f"RPN: top-n counts must be >= 1, nms_iou in (0, 1], min_size >= 0; got {counts}, {nms_iou}, {min_size}"
            )
        if getattr(head, "num_anchors", None) != prior_generator.num_anchors_per_location:
            raise ValueError(
                f"RPN: the head has {getattr(head, 'num_anchors', None)} anchors per location, the prior generator "
                f"{prior_generator.num_anchors_per_location}"
            )
        self.head, self.prior_generator = head, prior_generator
        self.criterion = criterion if criterion is not None else RPNCriterion()
        self.pre_nms_top_n_train, self.pre_nms_top_n_test = pre_nms_top_n_train, pre_nms_top_n_test
        self.post_nms_top_n_train, self.post_nms_top_n_test = post_nms_top_n_train, post_nms_top_n_test
        self.nms_iou, self.min_size = nms_iou, min_size

    def forward(
        self,
        levels: Sequence[Tensor],
        image_sizes: Sequence[tuple[int, int]],
        targets: Sequence[dict[str, Tensor]] | None = None,
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        if len(levels) != self.prior_generator.num_levels:
            raise ValueError(f"RPN: {len(levels)} pyramid levels for {self.prior_generator.num_levels} anchor levels")
        objectness, deltas = self.head(levels)
        priors = self.prior_generator([f.shape[-2:] for f in levels], levels[0].device)
        proposals = self.proposals(objectness, deltas, priors, image_sizes)
        if not self.training:
            return proposals, {}
        if targets is None or len(targets) != len(image_sizes):
            raise ValueError(f"RPN: training needs one target per image ({len(image_sizes)})")
        return proposals, self.criterion(torch.cat(objectness, 1), torch.cat(deltas, 1), priors, targets)

    @torch.no_grad()
    def proposals(
        self,
        objectness: Sequence[Tensor],
        deltas: Sequence[Tensor],
        priors: Priors,
        image_sizes: Sequence[tuple[int, int]],
    ) -> list[Tensor]:
        """Per image ``(P_i, 4)`` proposals, best first (see the module docstring for the steps)."""
        pre = self.pre_nms_top_n_train if self.training else self.pre_nms_top_n_test
        post = self.post_nms_top_n_train if self.training else self.post_nms_top_n_test
        boxes = self.coding.decode(torch.cat(deltas, 1).detach(), priors)
        scores = torch.cat(objectness, 1).detach().squeeze(-1).float()
        batch = scores.shape[0]
        top_scores, top_index, top_level = [], [], []
        start = 0
        for level, count in enumerate(priors.num_per_level):
            # logits rank like probabilities: no sigmoid needed for top-k and NMS
            s, i = scores[:, start : start + count].topk(min(pre, count), dim=1)
            top_scores.append(s)
            top_index.append(i + start)
            top_level.append(torch.full_like(i, level))
            start += count
        index = torch.cat(top_index, 1)
        sizes = torch.tensor(image_sizes, device=boxes.device)
        picked = clip_to_images(boxes.gather(1, index[..., None].expand(-1, -1, 4)), sizes[:, None, :])
        flat_boxes, flat_scores = picked.reshape(-1, 4), torch.cat(top_scores, 1).reshape(-1)
        image = torch.arange(batch, device=boxes.device).repeat_interleave(index.shape[1])
        level = torch.cat(top_level, 1).reshape(-1)
        big = remove_small_boxes(flat_boxes, self.min_size)
        flat_boxes, flat_scores, image, level = flat_boxes[big], flat_scores[big], image[big], level[big]
        kept = top_after_nms(flat_boxes, flat_scores, level, len(top_level), image, batch, self.nms_iou, post)
        return [flat_boxes[k] for k in kept]

    @property
    def coding(self) -> DeltaCoding:
        return self.criterion.coding
