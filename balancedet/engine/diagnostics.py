"""Training-time imbalance diagnostics: which examples take the classification loss, epoch by epoch.

The focal-loss paper (Lin et al., ICCV 2017, sec. 3.2 and fig. 4) and the GHM paper (Li et al., AAAI
2019, sec. 3.1 and fig. 1) show that under cross entropy the many easy negatives take most of the loss,
and that their remedies move it to the hard examples. This callback measures that split on the loss a
run actually trains on (focal loss, QFL, cross entropy...), with the project's four kinds of examples
(easy/hard x positive/negative, hard iff ``p_t < 0.5``: ``balancedet.analysis.kinds``).

At the start of the run every criterion of the model that can record (``record_stats``: the dense
head's, or the RPN's and the RoI head's) is switched on; each then keeps its step's ``KindStats``
(``balancedet.models.detector``): the kinds' counts and parts of the classification loss, on the
device. After each step they are added to ``state.sums`` with the losses (one host copy per
criterion), so a run resumed mid-epoch continues them exactly, and each epoch's row of
``results.csv`` gets, per criterion ``{name}`` (``cls`` for a dense head, ``rpn`` and ``roi`` for the
two stages) and kind ``{kind}`` (``easy_pos``, ``hard_pos``, ``easy_neg``, ``hard_neg``):

- ``{name}_{kind}_count``: the kind's examples per step, averaged over the epoch's steps; the examples
  are the non-ignored anchors of a dense head (the sampled ones when it has a sampler), the RPN's
  sampled anchors and the RoI head's sampled RoIs;
- ``{name}_{kind}_loss``: the kind's part of the classification loss trained on (``loss_cls``,
  ``loss_rpn_cls``), averaged likewise: the four add up to that loss's column;
- ``{name}_{kind}_share``: that part over the four's sum, in [0, 1], the four summing to 1;
- ``{name}_fg_fraction``: positives / (positives + negatives) among those examples.

``results.png`` draws a criterion's four shares in one panel and its foreground fraction in another
(``balancedet.engine.plots``). The element-wise losses come from the loss called with
``reduction="none"``, or from its own ``element_losses``: GHM-C, whose weights come from its running
histogram, gives the terms of its last call (eq. 8 of Li et al.) from that call's weight table. A loss
with neither (none of the project's classification losses) gets the counts and the foreground fraction
but no loss parts or shares, with a warning. ``train.diagnostics: false`` leaves the criteria switched
off; the losses, and so the weights, are the same either way. In a run of several processes only rank
0 records, on its part of each batch.

Cost: one more call of the classification loss per step, without gradient, with ``reduction="none"``
(for GHM-C: its bins and weighted terms again, without the histogram), and a sigmoid (softmax) over the
logits for the kinds. On a 2-core AVX-512 AMD EPYC, one thread, the recording took 16.6 ms of CPU per
step of ``retinanet_digits`` (1.9% of its 0.88-s step: the focal loss over 49,104 anchors x 10 classes
again) and 2.8 ms per step of ``gfl_digits`` (0.3%); steps timed in pairs on the same batch, with and
without, differed by 0.4% and 0.8% of CPU time (medians of 60 pairs).
With an empty Inductor cache the first recording step also compiles the loss's element-wise kernel
(7-10 s, once per machine).
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from balancedet.analysis.kinds import EASY_POSITIVE, HARD_POSITIVE, KIND_NAMES
from balancedet.engine.callbacks import Callback, TrainState

__all__ = ["ImbalanceDiagnostics", "epoch_columns"]


class ImbalanceDiagnostics(Callback):
    """Records the four kinds' counts and loss parts of every recording criterion (module docstring)."""

    def __init__(self) -> None:
        self.criteria: list[nn.Module] = []
        self.warned: set[str] = set()

    def on_train_start(self, state: TrainState) -> None:
        self.criteria = [m for m in state.model.modules() if hasattr(m, "record_stats")]
        for criterion in self.criteria:
            criterion.record_stats = True

    def on_step_end(self, state: TrainState) -> None:
        for criterion in self.criteria:
            stats, criterion.stats = criterion.stats, None
            # not called in this step, or the step was skipped for a non-finite loss: a row averages the
            # steps that trained (``state.sum_steps``), and a row of skipped steps only would divide by 0
            if stats is None or state.bad_streak:
                continue
            name = criterion.stats_name
            keys, values = [f"{name}_{kind}_count" for kind in KIND_NAMES], [stats.count]
            if stats.loss is not None:
                keys += [f"{name}_{kind}_loss" for kind in KIND_NAMES]
                values.append(stats.loss)
            elif name not in self.warned:
                self.warned.add(name)
                warnings.warn(
                    f"train.diagnostics: {type(criterion.cls_loss).__name__} has no element-wise form "
                    f"(reduction='none' or element_losses): results.csv gets the {name} kinds' counts and "
                    "foreground fraction, not their loss shares",
                    RuntimeWarning,
                    stacklevel=2,
                )
            for key, value in zip(keys, torch.cat(values).tolist(), strict=True):
                state.sums[key] = state.sums.get(key, 0.0) + value

    def on_epoch_end(self, state: TrainState) -> None:
        row = state.rows[-1]
        for criterion in self.criteria:
            row.update(epoch_columns(row, criterion.stats_name))

    def teardown(self, state: TrainState) -> None:
        # the model may outlive the run (``train`` returns, a library user keeps it): it pays nothing then
        for criterion in self.criteria:
            criterion.record_stats, criterion.stats = False, None


def epoch_columns(row: dict[str, float], name: str) -> dict[str, float]:
    """Criterion ``name``'s ``{kind}_share`` and ``fg_fraction`` columns from the row's per-step means of
    its ``{kind}_count`` and ``{kind}_loss`` (ratios of means are ratios of sums); ``{}`` without counts.

    The shares are 0 when the loss parts add up to 0; the fraction is NaN without examples.
    """
    counts = [row.get(f"{name}_{kind}_count") for kind in KIND_NAMES]
    if None in counts:
        return {}
    columns = {}
    parts = [row.get(f"{name}_{kind}_loss") for kind in KIND_NAMES]
    if None not in parts:
        loss = sum(parts)
        for kind, part in zip(KIND_NAMES, parts, strict=True):
            columns[f"{name}_{kind}_share"] = part / loss if loss > 0 else 0.0
    total = sum(counts)
    positives = counts[EASY_POSITIVE] + counts[HARD_POSITIVE]
    columns[f"{name}_fg_fraction"] = positives / total if total > 0 else math.nan
    return columns
