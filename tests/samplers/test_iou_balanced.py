"""IoUBalancedNegSampler: exact per-bin quotas over the negatives' own IoU range, exact totals."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from balancedet.samplers import Candidates, InstanceBalancedPosSampler, IoUBalancedNegSampler, libra_sampler
from tests.samplers.strategies import FAST, check_result, count, matched_vectors, seeded, seeds


def negatives_in_bins(counts: list[int], lo: float = 0.0, hi: float = 0.3, positives: int = 0):
    """Negatives spread inside ``len(counts)`` equal bins of ``[lo, hi]`` (values away from the inner
    edges; ``lo`` and ``hi`` themselves present), then ``positives`` positives at IoU 1.0."""
    k = len(counts)
    width = (hi - lo) / k
    ious, gen = [], torch.Generator().manual_seed(2)
    for b, c in enumerate(counts):
        ious.append(lo + width * (b + 0.1 + 0.8 * torch.rand(c, generator=gen, dtype=torch.float64)))
    ious = torch.cat(ious + [torch.tensor([lo, hi], dtype=torch.float64)])
    n_neg = ious.numel()
    matched = torch.cat([torch.full((n_neg,), -1), torch.zeros(positives, dtype=torch.int64)])
    max_iou = torch.cat([ious, torch.ones(positives, dtype=torch.float64)]).float()
    return matched, max_iou


def bin_counts(max_iou: torch.Tensor, idx: torch.Tensor, lo: float, hi: float, k: int) -> list[int]:
    b = ((max_iou[idx].double() - lo) / ((hi - lo) / k)).floor().clamp(0, k - 1).long()
    return torch.bincount(b, minlength=k).tolist()


def test_full_bins_get_exactly_n_over_k():
    matched, max_iou = negatives_in_bins([300, 200, 100])
    sampler = IoUBalancedNegSampler(num=150, pos_fraction=0.25)  # no positives: 150 negatives, 50 per bin
    result = sampler(Candidates(matched, max_iou=max_iou, generator=seeded(0)))
    assert count(result.neg) == 150
    assert bin_counts(max_iou, result.neg_idx, 0.0, 0.3, 3) == [50, 50, 50]
    # 152 = 3 * 50 + 2: the remainder goes to the two highest (hardest) bins
    result = IoUBalancedNegSampler(num=152)(Candidates(matched, max_iou=max_iou, generator=seeded(0)))
    assert bin_counts(max_iou, result.neg_idx, 0.0, 0.3, 3) == [50, 51, 51]


def test_short_bin_is_topped_up_from_the_others():
    matched, max_iou = negatives_in_bins([300, 200, 10])
    result = IoUBalancedNegSampler(num=150)(Candidates(matched, max_iou=max_iou, generator=seeded(0)))
    counts = bin_counts(max_iou, result.neg_idx, 0.0, 0.3, 3)
    assert count(result.neg) == 150 and result.neg_idx.unique().numel() == 150
    assert counts[2] == 10 + 1  # all of the short bin (the 0.3 endpoint included), the rest from bins 0 and 1
    assert counts[0] >= 50 and counts[1] >= 50


def test_bins_span_the_negatives_own_range_not_the_proposals():
    # ground truth added as proposals: positives at IoU 1.0; negatives in [0.1, 0.4]. A [0, 1.0]
    # range would leave 0.67-1.0 empty and bin 0.1-0.33 together; here the top bin 0.3-0.4 is sampled.
    matched, max_iou = negatives_in_bins([400, 100, 30], lo=0.1, hi=0.4, positives=20)
    sampler = IoUBalancedNegSampler(num=100, pos_fraction=0.25)  # 25 positives wanted, 20 exist
    result = sampler(Candidates(matched, max_iou=max_iou, generator=seeded(0)))
    assert count(result.pos) == 20 and count(result.neg) == 80
    assert bin_counts(max_iou, result.neg_idx, 0.1, 0.4, 3) == [26, 27, 27]
    assert sampler.bin_index(max_iou, matched == -1)[-20:].eq(3).all()  # positives are not binned


def test_floor_set_gets_its_fraction():
    matched, max_iou = negatives_in_bins([300, 200, 100], lo=0.0, hi=0.3)
    sampler = IoUBalancedNegSampler(num=120, floor_thr=0.1, floor_fraction=0.5)
    result = sampler(Candidates(matched, max_iou=max_iou, generator=seeded(0)))
    below = (max_iou[result.neg_idx] < 0.1).sum().item()
    assert count(result.neg) == 120 and below == 60
    # the binned negatives' own range is [their lowest IoU (about 0.11), 0.3]
    lo = max_iou[max_iou >= 0.1].min().item()
    binned = result.neg_idx[max_iou[result.neg_idx] >= 0.1]
    assert bin_counts(max_iou, binned, lo, 0.3, 3) == [20, 20, 20]


def test_floor_thr_zero_draws_zero_iou_negatives_at_random():
    matched = torch.full((400,), -1)
    max_iou = torch.cat([torch.zeros(200), torch.linspace(0.01, 0.5, 200)])
    sampler = IoUBalancedNegSampler(num=100, floor_thr=0.0, floor_fraction=0.25)
    result = sampler(Candidates(matched, max_iou=max_iou, generator=seeded(0)))
    assert count(result.neg) == 100 and (max_iou[result.neg_idx] == 0).sum().item() == 25


def test_one_bin_and_degenerate_range():
    matched = torch.full((50,), -1)
    same = torch.full((50,), 0.2)
    result = IoUBalancedNegSampler(num=10, num_bins=3)(Candidates(matched, max_iou=same, generator=seeded(0)))
    assert count(result.neg) == 10 and result.neg_idx.unique().numel() == 10
    result = IoUBalancedNegSampler(num=10, num_bins=1)(Candidates(matched, max_iou=torch.rand(50), generator=seeded(0)))
    assert count(result.neg) == 10


@FAST
@given(
    matched=matched_vectors(max_size=300),
    num=st.integers(0, 100),
    floor_thr=st.sampled_from([-1.0, 0.0, 0.1]),
    floor_fraction=st.sampled_from([0.0, 0.5, 1.0]),
    seed=seeds,
)
def test_counts_are_exact(matched, num, floor_thr, floor_fraction, seed):
    gen = torch.Generator().manual_seed(seed)
    max_iou = torch.where(torch.rand(matched.shape, generator=gen) < 0.2, 0.0, torch.rand(matched.shape, generator=gen))
    sampler = IoUBalancedNegSampler(num, 0.25, floor_thr=floor_thr, floor_fraction=floor_fraction)
    result = sampler(Candidates(matched, max_iou=max_iou, generator=gen))
    check_result(result, matched)
    n_pos = min(int(num * 0.25), int((matched >= 0).sum()))
    assert count(result.pos) == n_pos
    assert count(result.neg) == min(num - n_pos, int((matched == -1).sum()))


def test_instance_balanced_positives_plug_in():
    matched = torch.cat(
        [torch.zeros(100, dtype=torch.int64), torch.ones(20, dtype=torch.int64), torch.full((300,), -1)]
    )
    max_iou = torch.cat([torch.ones(120), torch.rand(300) * 0.5])
    sampler = IoUBalancedNegSampler(64, 0.5, pos_sampler=InstanceBalancedPosSampler(64, 0.5))
    result = sampler(Candidates(matched, max_iou=max_iou, generator=seeded(0)))
    assert torch.bincount(matched[result.pos_idx]).tolist() == [16, 16] and count(result.neg) == 32
    # libra_sampler is that combination: the same draws give the same sample
    libra = libra_sampler(64, 0.5)(Candidates(matched, max_iou=max_iou, generator=seeded(0)))
    assert torch.equal(libra.pos, result.pos) and torch.equal(libra.neg, result.neg)


def test_libra_sampler_is_the_papers_configuration():
    sampler = libra_sampler()
    assert isinstance(sampler, IoUBalancedNegSampler) and sampler.needs == {"max_iou"}
    assert (sampler.num, sampler.num_bins, sampler.floor_thr, sampler.floor_fraction) == (512, 3, -1.0, 0.0)
    pos_sampler = sampler.pos_sampler
    assert isinstance(pos_sampler, InstanceBalancedPosSampler)
    assert (pos_sampler.num, pos_sampler.pos_fraction) == (512, 0.25)


def test_same_seed_same_result_different_seed_different():
    matched, max_iou = negatives_in_bins([300, 200, 100])
    sampler = IoUBalancedNegSampler(num=150)
    a = sampler(Candidates(matched, max_iou=max_iou, generator=seeded(3)))
    b = sampler(Candidates(matched, max_iou=max_iou, generator=seeded(3)))
    c = sampler(Candidates(matched, max_iou=max_iou, generator=seeded(4)))
    assert torch.equal(a.neg_idx, b.neg_idx) and not torch.equal(a.neg_idx, c.neg_idx)


def test_batched_masks_bin_each_image_on_its_own_range():
    m1, iou1 = negatives_in_bins([100, 100, 100], lo=0.0, hi=0.3)
    m2, iou2 = negatives_in_bins([100, 100, 100], lo=0.2, hi=0.5)
    sample = IoUBalancedNegSampler(num=30)(Candidates(torch.stack([m1, m2]), max_iou=torch.stack([iou1, iou2])))
    assert not sample.pos.any()
    assert bin_counts(iou1, torch.nonzero(sample.neg[0]).flatten(), 0.0, 0.3, 3) == [10, 10, 10]
    assert bin_counts(iou2, torch.nonzero(sample.neg[1]).flatten(), 0.2, 0.5, 3) == [10, 10, 10]


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_bins"):
        IoUBalancedNegSampler(num_bins=0)
    with pytest.raises(TypeError, match="pos_sampler"):
        IoUBalancedNegSampler(pos_sampler=object())
    with pytest.raises(ValueError, match=r"max_iou.*\(3,\)"):
        Candidates(torch.full((3,), -1), max_iou=torch.zeros(4))
    with pytest.raises(ValueError, match="IoUBalancedNegSampler needs .*max_iou"):
        IoUBalancedNegSampler()(Candidates(torch.full((3,), -1)))
