"""The Adversarial Spatial Dropout Network of A-Fast-RCNN (Wang, Shrivastava, Gupta, "A-Fast-RCNN: Hard
Positive Generation via Adversary for Object Detection", CVPR 2017, arXiv 1704.03414, sec. 3.1).

ASDN looks at the ``d x d`` RoI-pooled features of a positive RoI and predicts which cells to drop (zero in
every channel) so that the detector's classifier fails on it; the detector trains on the occluded features
and so learns from hard positives it would rarely see. The rules here follow the authors' released Caffe
code (github.com/xiaolonw/adversarial-frcnn; the files named below), which is where the exact numbers live:

- **Network** (paper Fig. 3; ``models/pascal_voc/VGG16/fast_rcnn_adv/train.prototxt``, ``conv6_mask`` to
  ``conv10_mask``): on the pooled features, four 3x3 convolutions of 256 channels (padding 1, each with a
  ReLU) and a 3x3 convolution to one channel: a ``d x d`` map of logits, its sigmoid the probability that a
  cell is dropped. MSRA (He) initialisation, biases 0, as the pre-training prototxt (the joint stage copies
  those weights). Its input is detached (``roi_pool5_readonly`` with ``propagate_down: false``): ASDN never
  trains the backbone.
- **Pre-training target** (sec. 3.1, "Model pre-training"; ``ASDNPretrainDataLayer`` and
  ``ASDNPretrainLossLayer`` in ``lib/roi_data_layer/layer.py``): a ``d/3 x d/3`` window slides over each
  positive RoI's features; each window in turn is zeroed in all channels and the frozen classifier scores
  the result; the window under which the ground-truth class's softmax probability is lowest (its
  cross-entropy highest) is the RoI's target mask, 1 inside the window. For ``d = 7`` the code uses a
  window of 2 (``drop_size``) at stride 2 (``drop_stride``), ``ceil(7 / 2) = 4`` start positions per axis
  and a last window moved back inside the map: starts 0, 2, 4, 5, 16 windows. Ties go to the first window
  in row-major order, as the code's strict ``<`` does.
- **Pre-training loss** (same files): sigmoid binary cross-entropy between ASDN's logits and the target,
  averaged over the cells of the positive RoIs; the code back-propagates every target cell but only a random
  40% of the other cells (``drop_neg``, ``rand_thres = 0.4``), which we write as a loss weight of 1 on
  target cells and a Bernoulli(0.4) weight elsewhere (same gradient; the code's reported value also counts
  the unweighted cells).
- **Mask sampling** in joint training (sec. 3.1, "Generating adversarial examples": importance sampling of
  the top third of the cells; ``ASDNDataLayer.thres_mask_rand`` with ``count_drop: 15``,
  ``permute_count: 20``, ``count_drop_neg: 0``): per positive RoI the 20 cells of highest drop probability
  are the candidates and 15 of them, drawn uniformly without replacement, are dropped (15 of 49 is the
  paper's third). Negatives are never masked.
- **Joint loss** (sec. 3.1, "Joint learning": the adversary is trained towards the masks that made the
  detector fail; ``ASDNLossLayer``, ``score_thres: 0.1``, ``loss_weight: 0.0025``): the sampled mask is the
  target of a sigmoid BCE on ASDN's logits, kept only for a positive RoI whose ground-truth probability
  fell by more than 0.1 under the mask (``p_after + 0.1 < p_before``, both from the detector's classifier;
  the loss of every other RoI is 0), summed and divided by the number of RoIs the head ran on times ``d^2``.
  The mask reaches the detector as a constant (``mask_thres_block``, ``propagate_down: false``): the
  detector's loss never trains ASDN, and ASDN's loss never trains the detector.
- **Clean images** (``ASDNDataLayer``/``ASDNLossLayer`` with ``iter_size: 2``, ``maintain_before: 1``): the
  code accumulates two images per update and leaves one of each pair unmasked (the detector still sees
  clean positives) with no ASDN loss. ``unmasked_every = 2`` does the same over the stream of images:
  counting images from 0, every second one (1, 3, 5, ...) is left clean; ``0`` masks every image.

The functions below are the rules; ``ASDN`` holds the network and the rules' settings. The stages and how
the detector uses this are in ``balancedet.models.a_fast_rcnn``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ASDN",
    "asdn_joint_loss",
    "asdn_pretrain_loss",
    "occlusion_windows",
    "pretrain_mask_targets",
    "sample_drop_mask",
    "true_class_prob",
    "window_starts",
]


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """The start of each sliding window along one axis of a ``size``-long map.

    ``ceil(size / stride)`` starts ``0, stride, 2 stride, ...``; a window that would run past the edge is
    moved back to end at it (``ASDNPretrainDataLayer.generate_feature`` moves it by one cell, which is the
    same for its ``d = 7``, window 2, stride 2: starts 0, 2, 4, 5). Duplicates are dropped.
    """
    if not 1 <= window <= size or stride < 1:
        raise ValueError(f"window_starts: need 1 <= window <= size and stride >= 1, got {window}, {size}, {stride}")
    return sorted({min(i * stride, size - window) for i in range(math.ceil(size / stride))})


def occlusion_windows(size: int, window: int, stride: int, device: torch.device | None = None) -> Tensor:
    """``(W, size, size)`` bool: each sliding window of the pre-training target, True inside, in row-major
    order of their starts (the order of the authors' loop: rows outer, columns inner)."""
    starts = window_starts(size, window, stride)
    masks = torch.zeros((len(starts) ** 2, size, size), dtype=torch.bool, device=device)
    for k, (y, x) in enumerate((y, x) for y in starts for x in starts):
        masks[k, y : y + window, x : x + window] = True
    return masks


def true_class_prob(logits: Tensor, labels: Tensor) -> Tensor:
    """``(N,)`` the softmax probability of each row's label (``logits (N, K + 1)``, background at 0)."""
    return logits.float().softmax(-1).gather(1, labels[:, None]).squeeze(1)


@torch.no_grad()
def pretrain_mask_targets(
    features: Tensor, labels: Tensor, classify: Callable[[Tensor], Tensor], windows: Tensor
) -> tuple[Tensor, Tensor]:
    """ASDN's pre-training targets: for each positive RoI the window whose zeroing raises the classifier's
    cross-entropy most (A-Fast-RCNN sec. 3.1; ``ASDNPretrainLossLayer``: the lowest ground-truth probability).

    Args:
        features: ``(P, C, S, S)`` pooled features of positive RoIs.
        labels: ``(P,)`` their softmax labels (``>= 1``).
        classify: ``(N, C, S, S) -> (N, K + 1)`` logits, the detector's (frozen) classifier.
        windows: ``(W, S, S)`` bool, ``occlusion_windows``.

    Returns ``(targets (P, S, S) float, 1 in the chosen window; chosen (P,) int64 window index)``; ties go
    to the first window. One classifier pass per window over all the RoIs, not one per (RoI, window).
    """
    losses = []
    for window in windows:
        occluded = features.masked_fill(window, 0.0)
        losses.append(F.cross_entropy(classify(occluded).float(), labels, reduction="none"))
    if features.shape[0] == 0:
        chosen = torch.zeros((0,), dtype=torch.long, device=features.device)
    else:
        chosen = torch.stack(losses, 1).argmax(1)  # the first maximum on ties
    return windows[chosen].to(features.dtype), chosen


def asdn_pretrain_loss(logits: Tensor, targets: Tensor, keep_negative: float = 0.4, generator=None) -> Tensor:
    """Sigmoid BCE of ASDN's ``logits (P, S, S)`` against ``targets (P, S, S)`` (1 = drop), mean over the
    ``P * S * S`` cells; a cell outside the target counts with probability ``keep_negative`` (the
    authors' ``drop_neg`` gradient mask, 0.4), every target cell always. 0 (with a graph) for ``P = 0``."""
    if not 0.0 <= keep_negative <= 1.0:
        raise ValueError(f"asdn_pretrain_loss: keep_negative must be in [0, 1], got {keep_negative}")
    targets = targets.to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none")
    draw = torch.rand(targets.shape, generator=generator, device=targets.device) < keep_negative
    weight = torch.where(targets > 0, 1.0, draw.float())
    return (weight * bce).sum() / max(targets.numel(), 1)


@torch.no_grad()
def sample_drop_mask(scores: Tensor, num_drop: int = 15, num_candidates: int = 20, generator=None) -> Tensor:
    """The cells to drop, ``(N, S, S)`` bool: per row, ``num_drop`` cells drawn uniformly without replacement
    among the ``num_candidates`` of highest ``scores (N, S, S)`` (ASDN's logits or probabilities; the order
    is the same). The authors' importance sampling of the top third (``ASDNDataLayer.thres_mask_rand``:
    15 of the top 20 of 49 cells)."""
    n, height, width = scores.shape
    cells = height * width
    if not 1 <= num_drop <= num_candidates <= cells:
        raise ValueError(
            f"sample_drop_mask: need 1 <= num_drop <= num_candidates <= {cells} cells, got {num_drop}, {num_candidates}"
        )
    top = scores.reshape(n, cells).topk(num_candidates, dim=1).indices
    pick = torch.rand((n, num_candidates), generator=generator, device=scores.device).argsort(1)[:, :num_drop]
    dropped = torch.zeros((n, cells), dtype=torch.bool, device=scores.device)
    dropped.scatter_(1, top.gather(1, pick), True)
    return dropped.view(n, height, width)


def asdn_joint_loss(
    logits: Tensor, dropped: Tensor, prob_before: Tensor, prob_after: Tensor, num_rows: int, score_thresh: float = 0.1
) -> Tensor:
    """ASDN's joint-training loss (``ASDNLossLayer``): sigmoid BCE of ``logits (P, S, S)`` towards the sampled
    ``dropped (P, S, S)`` mask, for the positive RoIs whose ground-truth probability fell by more than
    ``score_thresh`` under it (``prob_after + score_thresh < prob_before``, both ``(P,)``), summed and
    divided by ``num_rows * S * S`` (``num_rows``: every RoI the head ran on, negatives included)."""
    bce = F.binary_cross_entropy_with_logits(logits.float(), dropped.float(), reduction="none").flatten(1).sum(1)
    fooled = (prob_after + score_thresh < prob_before).float()
    cells = logits.shape[-1] * logits.shape[-2]
    return (fooled * bce).sum() / max(num_rows * cells, 1)


class ASDN(nn.Module):
    """The Adversarial Spatial Dropout Network and the settings of its rules (see the module docstring).

    Args:
        in_channels: channels of the pooled RoI features (the pyramid's).
        pool_size: ``d``, the side of the pooled features (7).
        hidden_channels: width of the hidden convolutions (256, the authors' on VGG16's 512 channels).
        num_convs: hidden 3x3 convolutions before the 1-channel output (4: ``conv6_mask``-``conv9_mask``).
        window_size, window_stride: the pre-training window and its stride (2, 2 for ``d = 7``: ``d/3``
            rounded down, the authors' ``drop_size``, ``drop_stride``).
        keep_negative: the share of non-target cells the pre-training loss counts (0.4, ``drop_neg``).
        num_drop, num_candidates: joint training drops ``num_drop`` cells among the ``num_candidates`` most
            likely (15 of the top 20, ``count_drop``, ``permute_count``).
        score_thresh: a sampled mask trains ASDN when it lowered the ground-truth probability by more than
            this (0.1, ``score_thres``).
        unmasked_every: every ``unmasked_every``-th image of the joint stage is left clean (2: one image in
            two, ``iter_size: 2``, ``maintain_before: 1``); 0 masks every image.
        pretrain_loss_weight, joint_loss_weight: the weights of ASDN's loss in the two stages (1 and
            0.0025, the ``loss_weight`` of the pre-training and joint prototxts).

    ``forward(features (N, C, d, d)) -> logits (N, d, d)``, the sigmoid of a logit the probability of
    dropping that cell. The buffer ``images_seen`` counts the joint stage's images (for ``unmasked_every``)
    and travels with the state dict, so a resumed run keeps the alternation.
    """

    def __init__(
        self,
        in_channels: int,
        pool_size: int = 7,
        hidden_channels: int = 256,
        num_convs: int = 4,
        window_size: int = 2,
        window_stride: int = 2,
        keep_negative: float = 0.4,
        num_drop: int = 15,
        num_candidates: int = 20,
        score_thresh: float = 0.1,
        unmasked_every: int = 2,
        pretrain_loss_weight: float = 1.0,
        joint_loss_weight: float = 0.0025,
    ):
        super().__init__()
        if min(in_channels, pool_size, hidden_channels) < 1 or num_convs < 0:
            raise ValueError(
                f"ASDN: in_channels, pool_size, hidden_channels must be >= 1 and num_convs >= 0, got {in_channels}, "
                f"{pool_size}, {hidden_channels}, {num_convs}"
            )
        if not 1 <= num_drop <= num_candidates <= pool_size * pool_size:
            raise ValueError(
                f"ASDN: need 1 <= num_drop <= num_candidates <= pool_size^2 = {pool_size**2}, got {num_drop}, "
                f"{num_candidates}"
            )
        if not 0.0 <= keep_negative <= 1.0 or unmasked_every < 0 or min(pretrain_loss_weight, joint_loss_weight) < 0:
            raise ValueError(
                "ASDN: need keep_negative in [0, 1], unmasked_every >= 0 and loss weights >= 0, got "
                f"{keep_negative}, {unmasked_every}, {pretrain_loss_weight}, {joint_loss_weight}"
            )
        self.pool_size = pool_size
        self.register_buffer("windows", occlusion_windows(pool_size, window_size, window_stride), persistent=False)
        self.window_size, self.window_stride, self.keep_negative = window_size, window_stride, keep_negative
        self.num_drop, self.num_candidates, self.score_thresh = num_drop, num_candidates, score_thresh
        self.unmasked_every = unmasked_every
        self.pretrain_loss_weight, self.joint_loss_weight = pretrain_loss_weight, joint_loss_weight
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(num_convs):
            layers += [nn.Conv2d(channels, hidden_channels, 3, padding=1), nn.ReLU(inplace=True)]
            channels = hidden_channels
        layers.append(nn.Conv2d(channels, 1, 3, padding=1))
        self.layers = nn.Sequential(*layers)
        for m in self.layers:
            if isinstance(m, nn.Conv2d):
                # Caffe's "msra" filler: N(0, 2 / fan_in)
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        self.register_buffer("images_seen", torch.zeros((), dtype=torch.long))

    def forward(self, features: Tensor) -> Tensor:
        return self.layers(features).squeeze(1)

    def pretrain_loss(self, features: Tensor, labels: Tensor, classify: Callable[[Tensor], Tensor]) -> Tensor:
        """Stage 2: the weighted BCE towards the window of highest loss, on the positives' detached
        ``features (P, C, d, d)`` with ``labels (P,)``, under the frozen ``classify``."""
        features = features.detach()
        targets, _ = pretrain_mask_targets(features, labels, classify, self.windows)
        return self.pretrain_loss_weight * asdn_pretrain_loss(self(features), targets, self.keep_negative)

    @torch.no_grad()
    def masked_images(self, num_images: int) -> Tensor:
        """``(num_images,)`` bool: which of the next images are masked (not left clean); advances the count."""
        index = self.images_seen + torch.arange(num_images, device=self.images_seen.device)
        self.images_seen += num_images
        if self.unmasked_every == 0:
            return torch.ones_like(index, dtype=torch.bool)
        return (index + 1) % self.unmasked_every != 0

    def joint_step(
        self, features: Tensor, labels: Tensor, classify: Callable[[Tensor], Tensor], num_rows: int
    ) -> tuple[Tensor, Tensor]:
        """Stage 3 on the positives to mask, ``features (P, C, d, d)`` with ``labels (P,)``; ``num_rows`` RoIs
        went through the head in all. Returns the sampled ``dropped (P, d, d)`` bool mask and ASDN's
        weighted loss, which depends on ASDN's parameters only: its input is detached and the
        probabilities before and after masking come from ``classify`` without gradient."""
        features = features.detach()
        logits = self(features)
        dropped = sample_drop_mask(logits.detach(), self.num_drop, self.num_candidates)
        with torch.no_grad():
            before = true_class_prob(classify(features), labels)
            after = true_class_prob(classify(features * (~dropped).to(features.dtype)[:, None]), labels)
        loss = asdn_joint_loss(logits, dropped, before, after, num_rows, self.score_thresh)
        return dropped, self.joint_loss_weight * loss
