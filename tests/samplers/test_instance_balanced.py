"""InstanceBalancedPosSampler: exact per-box quotas, exact totals, no duplicates."""

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from balancedet.samplers import Candidates, InstanceBalancedPosSampler
from tests.samplers.strategies import FAST, check_result, count, matched_vectors, seeded, seeds


def boxes_of(counts: list[int], negatives: int = 0) -> torch.Tensor:
    """``matched`` with ``counts[j]`` positives of box ``j`` (shuffled) and some negatives."""
    parts = [torch.full((c,), j, dtype=torch.int64) for j, c in enumerate(counts)] + [torch.full((negatives,), -1)]
    matched = torch.cat(parts)
    return matched[torch.randperm(matched.numel(), generator=torch.Generator().manual_seed(1))]


def per_box(matched: torch.Tensor, pos_idx: torch.Tensor, num_boxes: int) -> list[int]:
    return torch.bincount(matched[pos_idx], minlength=num_boxes).tolist()


def quotas(wanted: int, present: list[int]) -> dict[int, int]:
    base, rem = divmod(wanted, len(present))
    return {box: base + (j < rem) for j, box in enumerate(sorted(present))}


@FAST
@given(matched=matched_vectors(max_size=300, max_gt=8), num=st.integers(0, 128), seed=seeds)
def test_quota_per_box_and_exact_total(matched, num, seed):
    sampler = InstanceBalancedPosSampler(num, 0.5)
    result = sampler(Candidates(matched, generator=seeded(seed)))
    check_result(result, matched)
    wanted = int(num * 0.5)
    available = torch.bincount(matched[matched >= 0], minlength=8).tolist()
    assert count(result.pos) == min(wanted, sum(available))
    got = per_box(matched, result.pos_idx, 8)
    present = [b for b in range(8) if available[b] > 0]
    if present and sum(available) > wanted:
        for box, quota in quotas(wanted, present).items():
            assert got[box] >= min(quota, available[box])
    assert count(result.neg) == min(num - count(result.pos), int((matched == -1).sum()))


def test_every_box_gets_exactly_its_quota_when_it_has_enough():
    matched = boxes_of([11, 50, 100], negatives=600)
    sampler = InstanceBalancedPosSampler(60, 0.5)  # 30 positives: 10 per box
    assert per_box(matched, sampler(Candidates(matched, generator=seeded(0))).pos_idx, 3) == [10, 10, 10]
    sampler = InstanceBalancedPosSampler(62, 0.5)  # 31: the remainder goes to the lowest box index
    assert per_box(matched, sampler(Candidates(matched, generator=seeded(0))).pos_idx, 3) == [11, 10, 10]


def test_short_box_gives_all_and_the_others_top_up():
    matched = boxes_of([2, 50, 50], negatives=100)
    result = InstanceBalancedPosSampler(60, 0.5)(Candidates(matched, generator=seeded(0)))
    counts = per_box(matched, result.pos_idx, 3)
    assert counts[0] == 2 and counts[1] >= 10 and counts[2] >= 10 and sum(counts) == 30
    assert result.pos_idx.unique().numel() == 30


def test_boxes_without_positives_do_not_take_a_quota():
    matched = boxes_of([0, 40, 0, 40])
    result = InstanceBalancedPosSampler(40, 0.5)(Candidates(matched, generator=seeded(0)))
    assert per_box(matched, result.pos_idx, 4) == [0, 10, 0, 10]


def mmdet_top_up(pos_inds: torch.Tensor, sampled: torch.Tensor, num_expected: int) -> torch.Tensor:
    """mmdetection 3.3's top-up: a set difference of Python sets of 0-d tensors (hashed by identity)."""
    num_extra = num_expected - len(sampled)
    extra = np.array(list(set(pos_inds.cpu()) - set(sampled.cpu())))
    extra = np.random.default_rng(0).choice(extra, size=num_extra, replace=False)
    return torch.cat([sampled, torch.from_numpy(extra.astype(np.int64))])


def test_no_duplicates_where_mmdetection_top_up_has_them():
    matched = boxes_of([3, 30])
    pos_inds = torch.nonzero(matched >= 0).flatten()
    wanted = 20
    # mmdetection: num_per_gt = round(20 / 2) + 1 = 11; box 0 gives its 3, box 1 gives 11, top-up 6.
    first = torch.cat([pos_inds[matched[pos_inds] == 0], pos_inds[matched[pos_inds] == 1][:11]])
    theirs = mmdet_top_up(pos_inds, first, wanted)
    # the set difference removed nothing, so the 6 extra come from all 33 positives: with this
    # seed some are already in `first`, and the result has fewer than 20 distinct positives.
    assert theirs.numel() == wanted and theirs.unique().numel() < wanted
    ours = InstanceBalancedPosSampler(2 * wanted, 0.5)(Candidates(matched, generator=seeded(0)))
    assert count(ours.pos) == wanted and ours.pos_idx.unique().numel() == wanted
    assert per_box(matched, ours.pos_idx, 2) == [3, 17]


def test_same_seed_same_result_different_seed_different():
    matched = boxes_of([40, 80, 120], negatives=500)
    sampler = InstanceBalancedPosSampler()
    a = sampler(Candidates(matched, generator=seeded(5)))
    b = sampler(Candidates(matched, generator=seeded(5)))
    c = sampler(Candidates(matched, generator=seeded(6)))
    assert torch.equal(a.pos, b.pos) and torch.equal(a.neg, b.neg)
    assert not torch.equal(a.pos, c.pos)


def test_batched_masks_balance_each_image():
    matched = torch.stack([boxes_of([10, 50, 100], negatives=40), boxes_of([150, 5, 5], negatives=40)])
    sampler = InstanceBalancedPosSampler(60, 0.5)
    pos = sampler.pos_mask(matched, seeded(0))
    assert per_box(matched[0], torch.nonzero(pos[0]).flatten(), 3) == [10, 10, 10]
    counts = per_box(matched[1], torch.nonzero(pos[1]).flatten(), 3)
    assert counts[1:] == [5, 5] and counts[0] == 20
    # the sampler's call draws the positives' keys first: the same positives, then 30 negatives
    sample = sampler(Candidates(matched, generator=seeded(0)))
    assert torch.equal(sample.pos, pos) and sample.neg.sum(1).tolist() == [30, 30]
