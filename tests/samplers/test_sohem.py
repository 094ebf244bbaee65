"""SOHEMSampler: strata sizes follow the schedule's stage at each progress, hardest per stratum."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from balancedet.samplers import (
    LINEAR_SHIFT_SCHEDULE,
    OHEM_SCHEDULE,
    Candidates,
    OHEMSampler,
    SOHEMSampler,
    Stage,
    Stratum,
)
from tests.samplers.strategies import FAST, check_result, seeds


def candidates(n: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    matched = torch.where(torch.rand(n, generator=gen) < 0.3, 0, -1)
    matched[torch.rand(n, generator=gen) < 0.05] = -2
    cls = torch.randint(0, 8, (n,), generator=gen).float() / 8
    loc = torch.randint(0, 8, (n,), generator=gen).float() / 8
    return matched, cls, loc


@pytest.mark.parametrize(
    ("progress", "expected"),
    [
        (0.0, [256, 256, 0]),
        (0.3, [192, 256, 64]),
        (0.5, [128, 256, 128]),
        (0.74, [128, 256, 128]),
        (1.0, [64, 256, 192]),
    ],
)
def test_strata_sizes_follow_the_schedule(progress, expected):
    sampler = SOHEMSampler(512, schedule=LINEAR_SHIFT_SCHEDULE)
    assert sampler.quotas(progress) == expected
    matched, cls, loc = candidates(3000, 0)
    which = sampler.strata(Candidates(matched, cls_loss=cls, box_loss=loc, progress=progress))
    assert torch.bincount(which[which >= 0], minlength=3).tolist() == expected
    stage = sampler.stage(progress)
    assert [round(512 * s.fraction) for s in stage.strata] == expected


@FAST
@given(seed=seeds, n=st.integers(0, 400), progress=st.floats(0.0, 1.0), num=st.integers(0, 200))
def test_each_stratum_takes_its_hardest_remaining_candidates(seed, n, progress, num):
    matched, cls, loc = candidates(n, seed)
    sampler = SOHEMSampler(num, schedule=LINEAR_SHIFT_SCHEDULE)
    inputs = Candidates(matched, cls_loss=cls, box_loss=loc, progress=progress)
    which = sampler.strata(inputs)
    loc_pos = torch.where(matched >= 0, loc, 0.0)
    taken: set[int] = set()
    free = [i for i in range(n) if matched[i] >= -1]
    for s, (stratum, quota) in enumerate(zip(sampler.stage(progress).strata, sampler.quotas(progress), strict=True)):
        score = (stratum.cls_weight * cls + stratum.loc_weight * loc_pos).tolist()
        total = (cls + loc_pos).tolist()
        rest = [i for i in free if i not in taken]
        want = sorted(rest, key=lambda i: (-score[i], -total[i], i))[:quota]
        assert sorted(torch.nonzero(which == s).flatten().tolist()) == sorted(want)
        taken |= set(want)
    assert int((which >= 0).sum()) == min(num, len(free))
    result = sampler(inputs)
    check_result(result, matched)
    assert sorted(result.indices.tolist()) == sorted(taken)
    assert torch.equal(result.pos, (which >= 0) & (matched >= 0))
    assert torch.equal(result.neg, (which >= 0) & (matched == -1))


def test_ohem_schedule_equals_ohem_budget_mode():
    matched, cls, loc = candidates(2000, 1)
    loc = torch.where(matched >= 0, loc, 0.0)
    ours = SOHEMSampler(300, schedule=OHEM_SCHEDULE)(Candidates(matched, cls_loss=cls, box_loss=loc, progress=0.5))
    ohem = OHEMSampler(300, mode="budget")(Candidates(matched, cls_loss=cls + loc))
    assert torch.equal(ours.pos_idx, ohem.pos_idx) and torch.equal(ours.neg_idx, ohem.neg_idx)
    # OHEM ranking by cls_loss + box_loss itself is the same selection
    multitask = OHEMSampler(300, mode="budget")(Candidates(matched, cls_loss=cls, box_loss=loc))
    assert torch.equal(multitask.pos, ohem.pos) and torch.equal(multitask.neg, ohem.neg)


def test_negatives_localisation_loss_is_ignored():
    matched = torch.tensor([0, -1, -1])
    cls = torch.tensor([0.1, 0.2, 0.3])
    loc = torch.tensor([0.5, 9.0, 0.0])  # garbage for a negative: treated as 0
    loc_only = (Stage(1.0, (Stratum(0.0, 1.0, 1.0),)),)
    assert SOHEMSampler(1, schedule=loc_only)(Candidates(matched, cls_loss=cls, box_loss=loc)).pos_idx.tolist() == [0]


def test_linear_shift_schedule_moves_from_classification_to_localisation():
    cls_share = [next(s.fraction for s in stage.strata if s.loc_weight == 0) for stage in LINEAR_SHIFT_SCHEDULE]
    loc_share = [next(s.fraction for s in stage.strata if s.cls_weight == 0) for stage in LINEAR_SHIFT_SCHEDULE]
    assert cls_share == sorted(cls_share, reverse=True) and loc_share == sorted(loc_share)
    # a boundary belongs to the next stage
    assert SOHEMSampler(schedule=LINEAR_SHIFT_SCHEDULE).stage(0.25) is LINEAR_SHIFT_SCHEDULE[1]


def test_schedule_is_required():
    with pytest.raises(TypeError, match="schedule"):
        SOHEMSampler(512)


def test_rejects_bad_schedules_and_progress():
    with pytest.raises(ValueError, match="sum to 1"):
        SOHEMSampler(schedule=(Stage(1.0, (Stratum(1.0, 0.0, 0.5),)),))
    with pytest.raises(ValueError, match="end at 1.0"):
        SOHEMSampler(schedule=(Stage(0.5, (Stratum(1.0, 0.0, 1.0),)),))
    with pytest.raises(ValueError, match="until must increase"):
        SOHEMSampler(schedule=(Stage(0.5, (Stratum(1, 0, 1),)), Stage(0.4, (Stratum(1, 0, 1),))))
    with pytest.raises(ValueError, match="weights"):
        SOHEMSampler(schedule=(Stage(1.0, (Stratum(0.0, 0.0, 1.0),)),))
    with pytest.raises(ValueError, match="progress"):
        SOHEMSampler(schedule=LINEAR_SHIFT_SCHEDULE).stage(1.5)
    with pytest.raises(ValueError, match="progress"):
        Candidates(torch.zeros(3, dtype=torch.int64), progress=1.5)
    with pytest.raises(TypeError, match="progress"):
        Candidates(torch.zeros(3, dtype=torch.int64), progress=torch.tensor(0.5))


def test_needs_both_losses():
    sampler = SOHEMSampler(schedule=LINEAR_SHIFT_SCHEDULE)
    assert sampler.needs == {"cls_loss", "box_loss"}
    matched, cls, loc = candidates(20, 0)
    with pytest.raises(ValueError, match="SOHEMSampler needs .*box_loss"):
        sampler(Candidates(matched, cls_loss=cls))
    with pytest.raises(ValueError, match="SOHEMSampler needs .*box_loss, cls_loss"):
        sampler.strata(Candidates(matched))
