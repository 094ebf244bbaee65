"""Samplers: which candidates (anchors, RoIs) enter the losses.

One protocol (``docs/conventions.md``): a detector describes its candidates in a ``Candidates``
(``matched``: ``>= 0`` positive, ``-1`` background, ``-2`` ignored; and, where a sampler needs them,
``max_iou``, per-candidate ``cls_loss`` / ``box_loss``, ``boxes``, training ``progress``, a
``generator``), and every sampler is ``sampler(candidates) -> Sample``: ``pos`` / ``neg`` bool masks
of ``matched``'s shape, batched over a leading image dimension, with no host sync (OHEM's optional
NMS excepted). ``sampler.needs`` lists the fields it must be given besides ``matched``, so that the
detector computes only those (OHEM also adds ``box_loss`` to its ranking loss when one is given);
``Sample.weight()`` is the ``weight`` mask the losses take.

==============================  =================================  ===================================
sampler                         paper                              ``needs``
==============================  =================================  ===================================
``RandomSampler``               Faster R-CNN, sec. 3.1.3           none
``InstanceBalancedPosSampler``  Libra R-CNN (positives)            none
``IoUBalancedNegSampler``       Libra R-CNN, sec. 3.1 (negatives)  ``max_iou``
``libra_sampler()``             Libra R-CNN, sec. 3.1 (both)       ``max_iou``
``OHEMSampler``                 OHEM, sec. 4.1                     ``cls_loss`` (+ ``boxes`` with NMS)
``HardNegativeMiner``           SSD, sec. 2.2                      ``cls_loss``
``SOHEMSampler``                S-OHEM                             ``cls_loss``, ``box_loss``
==============================  =================================  ===================================
"""

from balancedet.samplers.base import Candidates, Sample
from balancedet.samplers.hard_negative import HardNegativeMiner
from balancedet.samplers.instance_balanced import InstanceBalancedPosSampler
from balancedet.samplers.iou_balanced import IoUBalancedNegSampler, libra_sampler
from balancedet.samplers.ohem import OHEMSampler, nms_keep
from balancedet.samplers.random import RandomSampler
from balancedet.samplers.sohem import LINEAR_SHIFT_SCHEDULE, OHEM_SCHEDULE, SOHEMSampler, Stage, Stratum

__all__ = [
    "LINEAR_SHIFT_SCHEDULE",
    "Candidates",
    "HardNegativeMiner",
    "InstanceBalancedPosSampler",
    "IoUBalancedNegSampler",
    "OHEMSampler",
    "OHEM_SCHEDULE",
    "RandomSampler",
    "SOHEMSampler",
    "Sample",
    "Stage",
    "Stratum",
    "libra_sampler",
    "nms_keep",
]
