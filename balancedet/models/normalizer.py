"""The focal-loss normaliser: the number of positive anchors, summed across processes.

Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017, arXiv 1708.02002, sec. 4: "the
total focal loss of an image is computed as the sum of the focal loss over all ~100k anchors,
normalized by the number of anchors assigned to a ground-truth box". detectron2 replaces that
count by an exponential moving average (momentum 0.9, starting at 100) to damp the noise of small
batches; both are offered here.

Distributed semantics (mmdetection's ``reduce_mean``, which its RetinaNet head lacks; see
docs/conventions.md). Each process holds ``n_p`` positives and a summed loss ``S_p``. DDP *averages* the
gradients of the ``W`` processes, so with a per-process divisor ``D`` the applied gradient is
``grad(sum_p S_p) / (W D)``. The batch-level normalisation of the paper, ``grad(sum_p S_p) /
sum_p n_p``, therefore needs ``D = sum_p n_p / W``: the all-reduced count divided by the world
size, the per-process average. That is what ``PositiveNormalizer`` returns (then ``max(1, .)``);
every process gets the same divisor. Without ``torch.distributed`` initialised ``W = 1``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["PositiveNormalizer"]


class PositiveNormalizer(nn.Module):
    """``max(1, n)`` with ``n`` the positives per process averaged over processes, optionally an EMA of it.

    Args:
        momentum: ``None`` for the plain count (the paper); a value in ``[0, 1)`` for detectron2's
            EMA ``v <- momentum * v + (1 - momentum) * max(1, n)`` (0.9 in detectron2).
        initial: the EMA's starting value (100 in detectron2).
        process_group: the group to sum over (default: the whole world) when ``torch.distributed``
            is initialised. Every process of the group must call the normaliser each step.

    ``normalizer(num_pos)`` takes a 0-dim count (any numeric dtype; no host sync) and returns a
    float32 0-dim tensor without gradient. In training mode the EMA buffer ``value`` is updated
    (and saved in ``state_dict``); in eval mode it is read, blended with the new count, not stored.
    """

    def __init__(self, momentum: float | None = None, initial: float = 100.0, process_group=None):
        super().__init__()
        if momentum is not None and not 0.0 <= momentum < 1.0:
            raise ValueError(f"PositiveNormalizer: momentum must be None or lie in [0, 1), got {momentum!r}")
        if not initial >= 1:
            raise ValueError(f"PositiveNormalizer: initial must be >= 1, got {initial!r}")
        self.momentum, self.initial, self.process_group = momentum, float(initial), process_group
        self.register_buffer("value", torch.tensor(float(initial)))

    def forward(self, num_pos: Tensor) -> Tensor:
        n = torch.as_tensor(num_pos).detach().to(device=self.value.device, dtype=torch.float32).reshape(())
        if dist.is_available() and dist.is_initialized():
            n = n.clone()
            dist.all_reduce(n, group=self.process_group)
            n = n / dist.get_world_size(self.process_group)
        n = n.clamp(min=1.0)
        if self.momentum is None:
            return n
        value = self.momentum * self.value + (1.0 - self.momentum) * n
        if self.training:
            self.value.copy_(value)
        return value

    def extra_repr(self) -> str:
        return f"momentum={self.momentum}, initial={self.initial}"
