"""Train torchvision's RetinaNet with a balancedet classification loss.

``torchvision.models.detection.RetinaNet`` computes its classification loss in
``model.head.classification_head.compute_loss(targets, head_outputs, matched_idxs)``, a Python loop
over images calling ``torchvision.ops.sigmoid_focal_loss`` on one-hot targets built per image.
``use_balancedet_loss`` replaces that method on the instance by a batched version that calls one of
ours once for the whole batch: the focal loss (fused, far less memory for backward), FL*, the CE
baselines, or ``GHMC`` (one gradient-density histogram per step over all images and levels).
"""

from __future__ import annotations

import types
from collections.abc import Callable

import torch
from torch import Tensor, nn

from balancedet.models.batching import pad_targets
from balancedet.models.detector import call_loss
from balancedet.models.normalizer import PositiveNormalizer

__all__ = ["use_balancedet_loss", "NORMALIZATIONS"]

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
