"""Samplers: which candidates (anchors, RoIs) enter the losses (shared/SPEC.md section 3).

Each sampler reads an ``AssignResult``'s ``matched`` (``>= 0`` positive, ``-1`` background, ``-2``
ignored) and, where it needs them, ``max_iou`` or per-candidate losses. ``masks(...)`` returns
``(pos, neg)`` bool masks with no host sync (batched over a leading image dimension);
``__call__`` returns a ``SampleResult`` of index tensors for one image, and ``to_weight`` turns it
into the ``weight`` mask the losses take.
"""

from balancedet.samplers.base import SampleResult, to_weight
from balancedet.samplers.hard_negative import HardNegativeMiner
from balancedet.samplers.instance_balanced import InstanceBalancedPosSampler
from balancedet.samplers.iou_balanced import IoUBalancedNegSampler
from balancedet.samplers.ohem import OHEMSampler, nms_keep
from balancedet.samplers.random import RandomSampler
from balancedet.samplers.sohem import LINEAR_SHIFT_SCHEDULE, OHEM_SCHEDULE, SOHEMSampler, Stage, Stratum

__all__ = [
    "LINEAR_SHIFT_SCHEDULE",
    "HardNegativeMiner",
    "InstanceBalancedPosSampler",
    "IoUBalancedNegSampler",
    "OHEMSampler",
    "OHEM_SCHEDULE",
    "RandomSampler",
    "SOHEMSampler",
    "SampleResult",
    "Stage",
    "Stratum",
    "nms_keep",
    "to_weight",
]
