"""What an assigner hands to samplers and losses."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

#: ``matched`` value of an anchor assigned to background.
BACKGROUND = -1
#: ``matched`` value of an anchor in the ignore band (neither positive nor negative).
IGNORE = -2


@dataclass
class AssignResult:
    """Per-anchor assignment of a batch of images (or of one image, without the batch dimension).

    Attributes:
        matched: ``(B, A)`` int64, index of the matched ground-truth box in the image's (padded)
            box list for positives, ``BACKGROUND`` (-1) for negatives, ``IGNORE`` (-2) for ignored.
        labels: ``(B, A)`` int64 in the losses' convention: the class for positives,
            ``num_classes`` for background, and -1 for ignored anchors.
        max_iou: ``(B, A)`` float, each anchor's best IoU over the image's valid boxes (0 without
            boxes); IoU-balanced sampling bins the negatives by it.
        num_classes: ``C``, the background label.
    """

    matched: Tensor
    labels: Tensor
    max_iou: Tensor
    num_classes: int

    @property
    def positive(self) -> Tensor:
        return self.matched >= 0

    @property
    def negative(self) -> Tensor:
        return self.matched == BACKGROUND

    @property
    def valid(self) -> Tensor:
        """Anchors that enter the classification loss (positives and negatives)."""
        return self.matched != IGNORE

    def matched_values(self, per_box: Tensor) -> Tensor:
        """Each anchor's value from its matched box: ``per_box: (B, G, ...)`` -> ``(B, A, ...)``.

        E.g. the regression targets from the padded ``gt_boxes``. Only positives' rows are
        meaningful; the others hold box 0's value (or zeros when the batch has no boxes).
        """
        batch, num_anchors = self.matched.shape
        if per_box.shape[:1] != (batch,) or per_box.ndim < 2:
            raise ValueError(f"matched_values: per_box must be (B={batch}, G, ...), got {tuple(per_box.shape)}")
        if per_box.shape[1] == 0:
            return per_box.new_zeros((batch, num_anchors, *per_box.shape[2:]))
        index = self.matched.clamp(min=0)
        index = index.reshape(batch, num_anchors, *([1] * (per_box.ndim - 2))).expand(-1, -1, *per_box.shape[2:])
        return per_box.gather(1, index)

    def num_positives(self) -> Tensor:
        """Number of positives as a 0-dim tensor (no host sync), the focal-loss normaliser before max(., 1)."""
        return self.positive.sum()
