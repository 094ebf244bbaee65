"""The IoU spread of the hardest negatives against randomly sampled ones (Libra R-CNN's fig. 2).

Pang et al., "Libra R-CNN: Towards Balanced Learning for Object Detection", CVPR 2019, arXiv 1904.02701,
sec. 3.1: hard negatives are not spread like random ones. Over 60% of the negatives that hard mining
picks overlap a ground-truth box by IoU > 0.05, while random sampling picks only about 30% there,
because most negatives lie on the background far from any object.

Here, per image, the ``NEG_POS_RATIO x`` (at least one) positives' count of negatives with the largest
classification loss (the sigmoid CE summed over classes, the confidence loss OHEM and SSD rank by:
Shrivastava et al., CVPR 2016; Liu et al., ECCV 2016) against as many negatives drawn uniformly, each
with its best IoU over the image's ground-truth boxes (the assigner's ``max_iou``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["IOU_EDGES", "NEG_POS_RATIO", "OVERLAP_IOU", "HardNegativeSpread", "hard_and_random", "iou_spread"]

#: Negatives per positive, as OHEM's dense use and SSD's hard-negative mining keep them (3:1).
NEG_POS_RATIO = 3
#: The overlap the Libra paper counts (IoU > 0.05).
OVERLAP_IOU = 0.05
#: Histogram edges of the negatives' IoU: 0.05-wide bins over [0, 1].
IOU_EDGES = np.linspace(0.0, 1.0, 21)


def hard_and_random(
    loss: Tensor, max_iou: Tensor, negative: Tensor, num: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """The IoUs of the ``num`` negatives of largest ``loss`` and of ``num`` negatives drawn uniformly
    without replacement, of one image: ``loss, max_iou: (A,)``, ``negative: (A,)`` bool. ``num`` is
    capped at the number of negatives."""
    index = negative.nonzero(as_tuple=True)[0]
    num = min(int(num), len(index))
    hardest = index[loss[index].topk(num).indices]
    drawn = index[torch.randperm(len(index), generator=generator)[:num].to(index.device)]
    return max_iou[hardest], max_iou[drawn]


def iou_spread(ious: Tensor | np.ndarray, edges: np.ndarray = IOU_EDGES) -> dict[str, Any]:
    """Histogram of ``ious`` on ``edges`` (fractions; the top edge included), their mean and the share
    above ``OVERLAP_IOU``."""
    values = np.asarray(ious, dtype=np.float64).reshape(-1)
    counts, _ = np.histogram(values, bins=edges)
    n = values.size
    return {
        "count": int(n),
        "histogram": counts.tolist(),
        "fractions": (counts / n).tolist() if n else [0.0] * len(counts),
        "mean_iou": float(values.mean()) if n else None,
        "above_overlap": float((values > OVERLAP_IOU).mean()) if n else None,
    }


class HardNegativeSpread:
    """``hard_and_random`` image by image: ``add(loss, max_iou, negative, num_positive)``; ``result()``
    the two ``iou_spread``s, the rule's parameters and the histogram edges."""

    def __init__(self, ratio: int = NEG_POS_RATIO, seed: int = 0):
        self.ratio = ratio
        self.generator = torch.Generator().manual_seed(seed)
        self.hard: list[Tensor] = []
        self.random: list[Tensor] = []

    @torch.no_grad()
    def add(self, loss: Tensor, max_iou: Tensor, negative: Tensor, num_positive: int) -> None:
        hard, drawn = hard_and_random(
            loss.cpu(), max_iou.cpu().double(), negative.cpu(), self.ratio * max(num_positive, 1), self.generator
        )
        self.hard.append(hard)
        self.random.append(drawn)

    def result(self) -> dict[str, Any]:
        hard = torch.cat(self.hard) if self.hard else torch.zeros(0)
        drawn = torch.cat(self.random) if self.random else torch.zeros(0)
        return {
            "rule": f"per image the {self.ratio} x max(positives, 1) negatives of largest CE against as many "
            "drawn at random",
            "overlap_iou": OVERLAP_IOU,
            "edges": IOU_EDGES.tolist(),
            "hard": iou_spread(hard.numpy()),
            "random": iou_spread(drawn.numpy()),
        }
