"""Who takes a dense detector's classification loss: the four kinds under CE, the focal loss and GHM-C.

Every non-ignored anchor is one example; its kind (easy/hard x positive/negative, hard iff
``p_t < 0.5``: ``balancedet.analysis.kinds``) comes from the model's own scores, and its loss is
recomputed from the same logits under each remedy, summed over the classes:

- ``ce``: plain sigmoid cross entropy (the focal paper's eq. 1, ``binary_cross_entropy``);
- ``focal``: the focal loss with the paper's alpha 0.25 and gamma 2 (eq. 5 and Table 1b,
  ``sigmoid_focal_loss``);
- ``ghmc``: GHM-C (Li, Liu, Wang, AAAI 2019, eq. 8) with one gradient-density histogram over every
  element that was added (no running average: the analysis sees the whole split at once), i.e. each
  element's CE times ``beta_j = N / (R_j * n_nonempty)`` (``balancedet.analysis.gradient_density``).

The sums are added up batch by batch; GHM-C's weights depend on the histogram of all batches, so its
sums are kept per kind and gradient-norm bin and weighted at the end. The focal paper (sec. 3.2, fig. 4)
and the GHM paper (sec. 3.1, fig. 1) show the picture this reproduces: under CE the many easy negatives
take most of the loss; the focal loss and GHM-C move it to the hard examples.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from balancedet.analysis.gradient_density import GHM_BINS, bin_edges, bin_index, ghm_weights, gradient_norm
from balancedet.analysis.kinds import KIND_NAMES, example_kinds, kind_totals, shares_from_totals
from balancedet.losses import binary_cross_entropy, sigmoid_focal_loss

__all__ = ["FOCAL_ALPHA", "FOCAL_GAMMA", "REMEDIES", "ShareAccumulator", "remedy_shares", "summary"]

#: The focal loss of the comparison: the paper's setting (sec. 4.1, Table 1b).
FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 2.0
#: The remedies compared, in the order they are reported.
REMEDIES = ("ce", "focal", "ghmc")


class ShareAccumulator:
    """Counts and loss sums of the four kinds under CE, FL and GHM-C, added up over batches.

    ``add(logits (N, C), labels (N,))`` takes the non-ignored examples of a batch (``C`` =
    background); ``result()`` returns, per remedy, ``kind_shares``' ``{"easy_pos": {"count", "share"},
    ...}`` plus ``"loss"``, the remedy's total (CE and FL summed; GHM-C divided by ``N``, as eq. 8), and
    the gradient-norm histogram of the elements (``"density"``: edges, positive and negative counts,
    GHM-C's ``beta`` per bin).
    """

    def __init__(self, bins: int = GHM_BINS, alpha: float = FOCAL_ALPHA, gamma: float = FOCAL_GAMMA):
        self.bins, self.alpha, self.gamma = bins, alpha, gamma
        self.counts = torch.zeros(4, dtype=torch.int64)
        self.sums = {name: torch.zeros(4, dtype=torch.float64) for name in ("ce", "focal")}
        # CE of the elements by (kind of their anchor, gradient-norm bin), for GHM-C's final weighting
        self.ce_by_bin = torch.zeros(4 * bins, dtype=torch.float64)
        self.positive_counts = torch.zeros(bins, dtype=torch.int64)
        self.negative_counts = torch.zeros(bins, dtype=torch.int64)

    @torch.no_grad()
    def add(self, logits: Tensor, labels: Tensor) -> None:
        if logits.ndim != 2 or labels.shape != logits.shape[:1]:
            raise ValueError(
                f"ShareAccumulator.add: logits (N, C) and labels (N,), got {tuple(logits.shape)}, {tuple(labels.shape)}"
            )
        logits = logits.detach().double().cpu()
        labels = labels.cpu()
        kinds = example_kinds(logits, labels)
        ce = binary_cross_entropy(logits, labels, reduction="none")
        focal = sigmoid_focal_loss(logits, labels, alpha=self.alpha, gamma=self.gamma, reduction="none")
        counts, ce_sums = kind_totals(kinds, ce.sum(1))
        self.counts += counts
        self.sums["ce"] += ce_sums
        self.sums["focal"] += kind_totals(kinds, focal.sum(1))[1]
        g = gradient_norm(logits, labels)
        index = bin_index(g, self.bins)
        self.ce_by_bin.index_add_(0, (kinds[:, None] * self.bins + index).reshape(-1), ce.reshape(-1))
        element_positive = torch.zeros_like(g, dtype=torch.bool)
        rows = (labels < logits.shape[1]).nonzero(as_tuple=True)[0]
        element_positive[rows, labels[rows]] = True
        self.positive_counts += torch.bincount(index[element_positive], minlength=self.bins)
        self.negative_counts += torch.bincount(index[~element_positive], minlength=self.bins)

    def result(self) -> dict[str, Any]:
        density = self.positive_counts + self.negative_counts
        beta = ghm_weights(density)
        num = max(int(density.sum()), 1)
        ghm_sums = (self.ce_by_bin.view(4, self.bins) * beta[None, :]).sum(1) / num
        out: dict[str, Any] = {}
        for name, sums in (*self.sums.items(), ("ghmc", ghm_sums)):
            out[name] = {**shares_from_totals(self.counts, sums), "loss": float(sums.sum())}
        out["density"] = {
            "edges": bin_edges(self.bins).tolist(),
            "positive_counts": self.positive_counts.tolist(),
            "negative_counts": self.negative_counts.tolist(),
            "ghm_beta": beta.tolist(),
        }
        return out


def remedy_shares(logits: Tensor, labels: Tensor, bins: int = GHM_BINS) -> dict[str, Any]:
    """``ShareAccumulator``'s result for one set of examples."""
    accumulator = ShareAccumulator(bins)
    accumulator.add(logits, labels)
    return accumulator.result()


def summary(result: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per remedy, the negatives' share of the loss, the easy negatives' share of the negatives' loss,
    and the hard examples' share: the three numbers of the focal paper's argument (sec. 3.2)."""
    out = {}
    for name in REMEDIES:
        share = {k: result[name][k]["share"] for k in KIND_NAMES}
        negative = share["easy_neg"] + share["hard_neg"]
        out[name] = {
            "negative_share": negative,
            "easy_share_of_negative_loss": share["easy_neg"] / negative if negative > 0 else 0.0,
            "hard_share": share["hard_pos"] + share["hard_neg"],
        }
    return out
