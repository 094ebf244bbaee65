"""Stratified online hard example mining (Li, Zhang, Yu, Chen, Li, "S-OHEM", arXiv 1705.02233).

OHEM ranks RoIs by the multitask loss with equal weights for classification and localisation for
the whole of training. S-OHEM argues that the loss types matter differently as training goes on
(localisation later) and mines with stratified sampling: the RoIs are grouped into strata, each
with its own combination of the classification and localisation losses and its own share of the
``B`` RoIs kept; both change with the training stage. Inside a stratum the hardest RoIs (by that
stratum's loss) are taken; the strata together give exactly ``B``.

Here a schedule is a tuple of ``Stage``s, each covering training progress up to ``until`` (in
[0, 1]) and listing ``Stratum(cls_weight, loc_weight, fraction)``. At progress ``p`` the stage with
the smallest ``until > p`` (the last one for ``p = 1``) is active; its strata are filled in order,
stratum ``s`` taking the ``round(B * F_s) - round(B * F_{s-1})`` (``F`` the running sum of the
fractions) highest ``cls_weight * L_cls + loc_weight * L_loc`` among the candidates not taken yet
(ties: higher ``L_cls + L_loc``, then lower index). The selection is deterministic.

The schedule is a required argument. The paper's own table (stage boundaries, stratum
definitions and proportions) could not be retrieved for this project (only the abstract and
secondary summaries were available), so there is no default pretending to be it; making the
paper's schedule the default stays open until its table is at hand. ``LINEAR_SHIFT_SCHEDULE`` is an
illustrative schedule of ours with the paper's structure and stated intent (half the budget always
mined by OHEM's equal-weight loss, the other half moving from classification-hard to
localisation-hard RoIs over four equal stages); ``OHEM_SCHEDULE`` reproduces plain OHEM.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from balancedet.samplers.base import Candidates, Sample, check_needs, select_first, split, valid

__all__ = ["Stratum", "Stage", "LINEAR_SHIFT_SCHEDULE", "OHEM_SCHEDULE", "SOHEMSampler"]


@dataclass(frozen=True)
class Stratum:
    """One stratum: ranks candidates by ``cls_weight * L_cls + loc_weight * L_loc`` and takes
    ``fraction`` of the budget."""

    cls_weight: float
    loc_weight: float
    fraction: float


@dataclass(frozen=True)
class Stage:
    """The strata used while training progress is below ``until`` (in (0, 1])."""

    until: float
    strata: tuple[Stratum, ...]


def _stage(until: float, cls_share: float, loc_share: float) -> Stage:
    return Stage(until, (Stratum(1.0, 0.0, cls_share), Stratum(1.0, 1.0, 0.5), Stratum(0.0, 1.0, loc_share)))


#: Illustrative, ours (see the module docstring): NOT the paper's numbers.
LINEAR_SHIFT_SCHEDULE: tuple[Stage, ...] = (
    _stage(0.25, 0.5, 0.0),
    _stage(0.5, 0.375, 0.125),
    _stage(0.75, 0.25, 0.25),
    _stage(1.0, 0.125, 0.375),
)

#: Plain OHEM (Shrivastava et al.): one stratum, the equal-weight multitask loss, the whole budget.
OHEM_SCHEDULE: tuple[Stage, ...] = (Stage(1.0, (Stratum(1.0, 1.0, 1.0),)),)


def _check_schedule(schedule: tuple[Stage, ...]) -> None:
    if not schedule:
        raise ValueError("schedule must have at least one stage")
    previous = 0.0
    for i, stage in enumerate(schedule):
        if not previous < stage.until <= 1.0:
            raise ValueError(f"stage {i}: until must increase within (0, 1], got {stage.until!r} after {previous!r}")
        previous = stage.until
        if not stage.strata:
            raise ValueError(f"stage {i} has no stratum")
        for s in stage.strata:
            if s.cls_weight < 0 or s.loc_weight < 0 or s.cls_weight + s.loc_weight == 0 or s.fraction < 0:
                raise ValueError(f"stage {i}: weights must be >= 0, not both 0, fraction >= 0; got {s!r}")
        total = sum(s.fraction for s in stage.strata)
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(f"stage {i}: stratum fractions must sum to 1, got {total!r}")
    if previous != 1.0:
        raise ValueError(f"the last stage must end at 1.0, got {previous!r}")


class SOHEMSampler:
    """S-OHEM: per-stage strata of hard examples by mixed classification/localisation losses.

    Args:
        num: ``B``, candidates kept per image (512 RoIs for Fast R-CNN's head).
        schedule: the stages (see the module docstring), required: e.g. ``OHEM_SCHEDULE`` or
            ``LINEAR_SHIFT_SCHEDULE``, or the paper's table written as ``Stage``s.

    ``sampler(candidates) -> Sample`` reads ``cls_loss`` and ``box_loss`` (``needs``), the
    per-candidate losses computed by the caller without gradient, and ``progress``; the kept
    candidates are ``strata(candidates) >= 0``, split into positives and negatives. ``box_loss`` of
    non-positives is treated as 0 (they have no regression target). Ignored candidates are never
    kept. No host sync.
    """

    needs: frozenset[str] = frozenset({"cls_loss", "box_loss"})

    def __init__(self, num: int = 512, *, schedule: tuple[Stage, ...]) -> None:
        if not isinstance(num, int) or num < 0:
            raise ValueError(f"num must be a non-negative int, got {num!r}")
        schedule = tuple(schedule)
        _check_schedule(schedule)
        self.num = num
        self.schedule = schedule

    def stage(self, progress: float) -> Stage:
        """The stage active at ``progress`` in [0, 1]."""
        if not 0.0 <= progress <= 1.0:
            raise ValueError(f"progress must lie in [0, 1], got {progress!r}")
        return next((s for s in self.schedule if progress < s.until), self.schedule[-1])

    def quotas(self, progress: float) -> list[int]:
        """Candidates each stratum of the active stage takes; they sum to ``num``."""
        bounds, running = [0], 0.0
        for stratum in self.stage(progress).strata:
            running += stratum.fraction
            bounds.append(round(self.num * running))
        bounds[-1] = self.num
        return [b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def strata(self, candidates: Candidates) -> Tensor:
        """``(..., M)`` int64: index of the stratum that took each candidate, ``-1`` for the others."""
        check_needs(self, candidates)
        matched, progress = candidates.matched, candidates.progress
        cls = candidates.cls_loss.detach().float()
        loc = torch.where(matched >= 0, candidates.box_loss.detach().float(), 0.0)
        total = cls + loc
        taken = torch.zeros_like(matched, dtype=torch.bool)
        which = torch.full_like(matched, -1, dtype=torch.int64)
        free = valid(matched)
        for s, (stratum, quota) in enumerate(zip(self.stage(progress).strata, self.quotas(progress), strict=True)):
            score = stratum.cls_weight * cls + stratum.loc_weight * loc
            picked = select_first(free & ~taken, (score, total), quota, descending=True)
            which = torch.where(picked, s, which)
            taken |= picked
        return which

    def __call__(self, candidates: Candidates) -> Sample:
        """The candidates the active stage's strata took, as positives and negatives."""
        kept = self.strata(candidates) >= 0
        pos, neg = split(candidates.matched)
        return Sample(kept & pos, kept & neg)
