"""The shared ``weight`` / ``reduction`` / ``avg_factor`` convention of every loss.

Detectors sum a loss over all non-ignored anchors and divide by the number of positives
(focal loss paper, sec. 4); that number arrives here as ``avg_factor``. ``weight`` is a
per-element multiplier: shape ``(N,)`` broadcasts over the trailing dimensions of an
``(N, ...)`` loss, or it has the loss's own shape.
"""

from __future__ import annotations

import torch
from torch import Tensor

REDUCTIONS = ("none", "mean", "sum")


def check_reduction(reduction: str, avg_factor: float | Tensor | None) -> None:
    """Validate ``reduction`` and its combination with ``avg_factor``."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if avg_factor is None:
        return
    if reduction != "mean":
        raise ValueError(f"avg_factor is only meaningful with reduction='mean', got reduction={reduction!r}")
    if isinstance(avg_factor, Tensor):
        if avg_factor.numel() != 1:
            raise ValueError(f"avg_factor must be a scalar, got a tensor of shape {tuple(avg_factor.shape)}")
    elif not avg_factor > 0:
        raise ValueError(f"avg_factor must be positive, got {avg_factor!r}")


def expand_weight(weight: Tensor | None, shape: torch.Size, name: str = "weight") -> Tensor | None:
    """Return ``weight`` viewed so that it broadcasts against a loss of ``shape``.

    Accepted: ``None``, a tensor of exactly ``shape``, or a ``(N,)`` tensor for an ``(N, ...)`` loss.
    """
    if weight is None:
        return None
    if weight.shape == shape:
        return weight
    if weight.dim() == 1 and len(shape) >= 1 and weight.shape[0] == shape[0]:
        return weight.view((shape[0],) + (1,) * (len(shape) - 1))
    raise ValueError(
        f"{name} must have shape {tuple(shape)} or ({shape[0] if len(shape) else '?'},), got {tuple(weight.shape)}"
    )


def reduction_scale(numel: int, reduction: str, avg_factor: float | Tensor | None) -> float | Tensor:
    """The factor that turns the (weighted) sum of a loss into its reduced value."""
    if reduction == "sum" or reduction == "none":
        return 1.0
    if avg_factor is None:
        return 1.0 / max(numel, 1)
    return 1.0 / avg_factor


def scale_tensor(
    numel: int, reduction: str, avg_factor: float | Tensor | None, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """``reduction_scale`` as a 0-dim tensor on ``device``, made without a host-to-device copy.

    Fused kernels take it as a tensor so that a new batch size or number of positives does not
    trigger a recompilation.
    """
    if isinstance(avg_factor, Tensor) and reduction == "mean":
        return (1.0 / avg_factor.to(device=device, dtype=dtype)).reshape(())
    return torch.full((), reduction_scale(numel, reduction, avg_factor), dtype=dtype, device=device)


def weight_reduce_loss(
    loss: Tensor,
    weight: Tensor | None = None,
    reduction: str = "mean",
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """Apply an element-wise ``weight`` then reduce (``none`` | ``mean`` | ``sum``).

    ``mean`` divides the sum by ``avg_factor`` when given, else by the number of elements.
    """
    check_reduction(reduction, avg_factor)
    w = expand_weight(weight, loss.shape)
    if w is not None:
        loss = loss * w
    if reduction == "none":
        return loss
    total = loss.sum()
    if reduction == "sum":
        return total
    if avg_factor is None:
        # mean over an empty loss is 0, not NaN: a batch without anchors contributes nothing.
        return total / max(loss.numel(), 1)
    return total / avg_factor
