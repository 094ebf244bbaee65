"""Input validation shared by the losses: cheap shape checks always, value checks by policy.

Shape and dtype checks cost nothing and always run. Value checks (label range, NaN
targets) read the data: on CPU they raise ``ValueError`` at once; on an accelerator the
default policy ("auto") queues a device-side assertion (``torch._assert_async``) instead,
so that a loss never forces a host synchronisation. ``set_value_checks("always")`` raises
``ValueError`` on every device (at the cost of a sync), ``"never"`` skips them. The
environment variable ``BALANCEDET_CHECKS`` sets the initial policy.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

_POLICIES = ("auto", "always", "never")
_policy = os.environ.get("BALANCEDET_CHECKS", "auto")
if _policy not in _POLICIES:
    raise ValueError(f"BALANCEDET_CHECKS must be one of {_POLICIES}, got {_policy!r}")


def set_value_checks(policy: str) -> None:
    """Choose how value checks run: ``"auto"`` (default), ``"always"`` or ``"never"``."""
    global _policy
    if policy not in _POLICIES:
        raise ValueError(f"policy must be one of {_POLICIES}, got {policy!r}")
    _policy = policy


def _value_check(ok: Tensor, message: str, device: torch.device) -> None:
    if _policy == "never" or torch.compiler.is_compiling():
        return
    if device.type == "cpu" or _policy == "always":
        if not bool(ok):
            raise ValueError(message)
    else:
        torch._assert_async(ok, message)


def shape_str(t: Tensor) -> str:
    return str(tuple(t.shape))


def check_float(name: str, t: Tensor, dim: int | None = None) -> None:
    """``t`` must be a floating tensor (of ``dim`` dimensions when given)."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype} with shape {shape_str(t)}")
    if dim is not None and t.dim() != dim:
        raise ValueError(f"{name} must have {dim} dimensions, got shape {shape_str(t)}")


def check_same_shape(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} must have the same shape, got {shape_str(a)} and {shape_str(b)}")


def check_labels(name: str, labels: Tensor, n: int, low: int, high: int) -> None:
    """``labels`` must be an integer ``(n,)`` tensor with values in ``[low, high]``."""
    if not isinstance(labels, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got dtype {labels.dtype} with shape {shape_str(labels)}")
    if labels.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {shape_str(labels)}")
    if n == 0:
        return
    ok = (labels.min() >= low) & (labels.max() <= high)
    _value_check(ok, f"{name} (shape {shape_str(labels)}) must lie in [{low}, {high}]", labels.device)


def check_finite(name: str, t: Tensor) -> None:
    """``t`` must contain no NaN or infinity."""
    if t.numel() == 0:
        return
    _value_check(torch.isfinite(t).all(), f"{name} (shape {shape_str(t)}) contains NaN or infinite values", t.device)


def check_range(name: str, t: Tensor, low: float, high: float) -> None:
    """``t`` must be finite with values in ``[low, high]``."""
    if t.numel() == 0:
        return
    ok = torch.isfinite(t).all() & (t.min() >= low) & (t.max() <= high)
    _value_check(ok, f"{name} (shape {shape_str(t)}) must be finite and lie in [{low}, {high}]", t.device)


def split_targets(logits: Tensor, targets: Tensor) -> tuple[Tensor | None, Tensor | None]:
    """Sigmoid-loss targets as ``(labels, None)`` for integer labels ``(N,)`` (``C`` = background) or
    ``(None, targets)`` for float targets of the logits' shape ``(N, C)`` in [0, 1], validated."""
    n, c = logits.shape
    if isinstance(targets, Tensor) and targets.is_floating_point():
        if targets.shape != logits.shape:
            raise ValueError(
                f"float targets must have the shape of logits {shape_str(logits)}, got {shape_str(targets)}"
            )
        check_range("targets", targets, 0.0, 1.0)
        return None, targets
    check_labels("targets", targets, n, 0, c)
    return targets, None
