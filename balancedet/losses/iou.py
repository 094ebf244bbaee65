"""IoU losses on decoded boxes: UnitBox's IoU loss and the GIoU loss.

``iou_loss``: Yu et al., "UnitBox: An Advanced Object Detection Network", ACM MM 2016
(arXiv 1608.01471), ``-ln(IoU)``, with the linear ``1 - IoU`` and square ``1 - IoU^2`` variants.
``giou_loss``: Rezatofighi et al., "Generalized Intersection over Union", CVPR 2019
(arXiv 1902.09630), ``1 - GIoU``; weight 2.0 in the GFL head.

Boxes are ``(x1, y1, x2, y2)`` with ``x1 <= x2`` and ``y1 <= y2``, compared pair by pair
(row ``i`` of ``pred`` with row ``i`` of ``target``). The geometry is ``balancedet.boxes.ops``'s
element-wise IoU / GIoU. ``torchvision.ops.generalized_box_iou_loss`` gives the same values (a
test compares them) but builds the intersection with boolean-mask indexing, a ``nonzero`` that
forces a host synchronisation on CUDA, and computes half inputs in half precision.
"""

from __future__ import annotations

from torch import Tensor, nn

from balancedet.boxes.ops import aligned_box_iou, aligned_generalized_box_iou
from balancedet.losses.checks import check_finite, check_float, check_same_shape, shape_str
from balancedet.losses.reduce import check_reduction, weight_reduce_loss
from balancedet.losses.sigmoid_terms import upcast

__all__ = ["iou_loss", "giou_loss", "IoULoss", "GIoULoss"]

IOU_MODES = ("log", "linear", "square")


def _check_boxes(pred: Tensor, target: Tensor) -> None:
    for name, boxes in (("pred", pred), ("target", target)):
        check_float(name, boxes)
        if boxes.dim() != 2 or boxes.shape[1] != 4:
            raise ValueError(f"{name} must have shape (N, 4), got {shape_str(boxes)}")
    check_same_shape("pred", pred, "target", target)
    check_finite("target", target)


def _check_eps(eps: float) -> None:
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")


def box_weight(weight: Tensor | None, n: int) -> Tensor | None:
    """A per-box ``(N,)`` weight from ``(N,)`` or ``(N, 4)`` (the mean over the four coordinates)."""
    if weight is None:
        return None
    if weight.shape == (n, 4):
        return weight.mean(dim=1)
    if weight.shape == (n,):
        return weight
    raise ValueError(f"weight must have shape ({n},) or ({n}, 4), got {shape_str(weight)}")


def iou_loss(
    pred: Tensor,
    target: Tensor,
    *,
    mode: str = "log",
    eps: float = 1e-6,
    weight: Tensor | None = None,
    reduction: str = "mean",
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """IoU loss of aligned box pairs (UnitBox, Yu et al. 2016).

    ``IoU = inter / (union + eps)``; the loss is ``-ln(max(IoU, eps))`` for ``mode="log"`` (the
    paper's), ``1 - IoU`` for ``"linear"`` and ``1 - IoU^2`` for ``"square"``. Two empty boxes have
    IoU 0: the log loss is then ``-ln(eps)``, finite, with zero gradient.

    Args:
        pred: ``(N, 4)`` decoded predicted boxes, xyxy.
        target: ``(N, 4)`` ground-truth boxes, xyxy, finite.
        mode: ``"log"`` | ``"linear"`` | ``"square"``.
        eps: added to the union, and the floor of the IoU in the log mode.
        weight: ``(N,)``, or ``(N, 4)`` whose mean over the four coordinates weighs each box
            (the per-coordinate weights box heads already build for smooth L1).

    Returns ``(N,)`` for ``reduction="none"``, else a scalar; ``mean`` averages over boxes. Half /
    bf16 inputs are computed in float32.
    """
    _check_boxes(pred, target)
    check_reduction(reduction, avg_factor)
    if mode not in IOU_MODES:
        raise ValueError(f"mode must be one of {IOU_MODES}, got {mode!r}")
    _check_eps(eps)
    w = box_weight(weight, pred.shape[0])
    iou = aligned_box_iou(upcast(pred), upcast(target), eps=eps)
    if mode == "log":
        loss = -iou.clamp(min=eps).log()
    elif mode == "linear":
        loss = 1.0 - iou
    else:
        loss = 1.0 - iou * iou
    return weight_reduce_loss(loss, w, reduction, avg_factor)


def giou_loss(
    pred: Tensor,
    target: Tensor,
    *,
    eps: float = 1e-7,
    weight: Tensor | None = None,
    reduction: str = "mean",
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """GIoU loss ``1 - GIoU`` of aligned box pairs (Rezatofighi et al., CVPR 2019, Algorithm 1).

    ``GIoU = IoU - (|C| - |A u B|) / |C|`` with ``C`` the smallest box enclosing both, ``eps`` added
    to the union and to ``|C|`` (as ``torchvision.ops.generalized_box_iou_loss``). The loss lies in
    ``[0, 2)``: 0 for identical boxes, above 1 for disjoint ones. Degenerate (zero-area) boxes give
    a finite loss and gradient.

    Args:
        pred: ``(N, 4)`` decoded predicted boxes, xyxy.
        target: ``(N, 4)`` ground-truth boxes, xyxy, finite.
        weight: ``(N,)``, or ``(N, 4)`` whose mean over the four coordinates weighs each box.

    Returns ``(N,)`` for ``reduction="none"``, else a scalar; ``mean`` averages over boxes. Half /
    bf16 inputs are computed in float32.
    """
    _check_boxes(pred, target)
    check_reduction(reduction, avg_factor)
    _check_eps(eps)
    w = box_weight(weight, pred.shape[0])
    loss = 1.0 - aligned_generalized_box_iou(upcast(pred), upcast(target), eps=eps)
    return weight_reduce_loss(loss, w, reduction, avg_factor)


class IoULoss(nn.Module):
    """``iou_loss`` as a module."""

    self_normalizing = False
    needs_decoded_boxes = True

    def __init__(self, mode: str = "log", eps: float = 1e-6, reduction: str = "mean", loss_weight: float = 1.0):
        super().__init__()
        if mode not in IOU_MODES:
            raise ValueError(f"mode must be one of {IOU_MODES}, got {mode!r}")
        _check_eps(eps)
        check_reduction(reduction, None)
        self.mode, self.eps, self.reduction, self.loss_weight = mode, eps, reduction, loss_weight

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None = None, avg_factor=None) -> Tensor:
        loss = iou_loss(
            pred, target, mode=self.mode, eps=self.eps, weight=weight, reduction=self.reduction, avg_factor=avg_factor
        )
        return self.loss_weight * loss


class GIoULoss(nn.Module):
    """``giou_loss`` as a module (loss weight 2.0 in the GFL head)."""

    self_normalizing = False
    needs_decoded_boxes = True

    def __init__(self, eps: float = 1e-7, reduction: str = "mean", loss_weight: float = 1.0):
        super().__init__()
        _check_eps(eps)
        check_reduction(reduction, None)
        self.eps, self.reduction, self.loss_weight = eps, reduction, loss_weight

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None = None, avg_factor=None) -> Tensor:
        loss = giou_loss(pred, target, eps=self.eps, weight=weight, reduction=self.reduction, avg_factor=avg_factor)
        return self.loss_weight * loss
