"""RandomSampler: exact counts, uniform subsets, determinism, batched masks."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from balancedet.samplers import Candidates, RandomSampler
from tests.samplers.strategies import FAST, check_result, count, matched_vectors, seeded, seeds


@FAST
@given(
    matched=matched_vectors(),
    num=st.integers(0, 64),
    pos_fraction=st.sampled_from([0.0, 0.25, 0.5, 1.0]),
    neg_pos_ub=st.sampled_from([-1.0, 0.0, 1.0, 3.0]),
    seed=seeds,
)
def test_counts_are_exact(matched, num, pos_fraction, neg_pos_ub, seed):
    sampler = RandomSampler(num, pos_fraction, neg_pos_ub)
    sample = sampler(Candidates(matched, generator=seeded(seed)))
    check_result(sample, matched)
    n_pos_avail, n_neg_avail = int((matched >= 0).sum()), int((matched == -1).sum())
    n_pos = min(int(num * pos_fraction), n_pos_avail)
    n_neg = num - n_pos
    if neg_pos_ub >= 0:
        n_neg = min(n_neg, int(neg_pos_ub * max(n_pos, 1)))
    assert count(sample.pos) == n_pos
    assert count(sample.neg) == min(n_neg, n_neg_avail)


def test_faster_rcnn_defaults():
    matched = torch.cat([torch.zeros(300, dtype=torch.int64), torch.full((3000,), -1), torch.full((50,), -2)])
    sample = RandomSampler()(Candidates(matched, generator=seeded(0)))
    assert (count(sample.pos), count(sample.neg)) == (128, 384)
    rpn = RandomSampler(256, 0.5)(Candidates(matched, generator=seeded(0)))
    assert (count(rpn.pos), count(rpn.neg)) == (128, 128)
    few = RandomSampler()(Candidates(matched[290:], generator=seeded(0)))  # 10 positives
    assert (count(few.pos), count(few.neg)) == (10, 502)


def test_same_seed_same_result_different_seed_different():
    matched = torch.cat([torch.randint(0, 4, (300,)), torch.full((1500,), -1), torch.full((200,), -2)])
    sampler = RandomSampler()
    a = sampler(Candidates(matched, generator=seeded(7)))
    b = sampler(Candidates(matched, generator=seeded(7)))
    c = sampler(Candidates(matched, generator=seeded(8)))
    assert torch.equal(a.pos, b.pos) and torch.equal(a.neg, b.neg)
    assert not torch.equal(a.pos, c.pos)
    assert not torch.equal(a.neg, c.neg)


def test_subsets_are_uniform():
    # 4000 images of 20 positives and 20 negatives in one batched call: each candidate is kept
    # with probability 5/20 (positives) and 15/20 (negatives).
    row = torch.cat([torch.zeros(20, dtype=torch.int64), torch.full((20,), -1)])
    matched = row.expand(4000, -1)
    sample = RandomSampler(20, 0.25)(Candidates(matched, generator=seeded(0)))
    pos, neg = sample.pos, sample.neg
    assert (pos.sum(1) == 5).all() and (neg.sum(1) == 15).all()
    freq_pos, freq_neg = pos[:, :20].float().mean(0), neg[:, 20:].float().mean(0)
    assert (freq_pos - 0.25).abs().max() < 0.03
    assert (freq_neg - 0.75).abs().max() < 0.03


def test_batched_masks_count_per_image():
    matched = torch.stack(
        [torch.cat([torch.zeros(k, dtype=torch.int64), torch.full((40 - k,), -1)]) for k in (0, 3, 30)]
    )
    sample = RandomSampler(16, 0.5)(Candidates(matched, generator=seeded(0)))
    check_result(sample, matched)
    assert sample.pos.sum(1).tolist() == [0, 3, 8]
    assert sample.neg.sum(1).tolist() == [16, 13, 8]
    assert not (sample.pos & sample.neg).any()


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="pos_fraction"):
        RandomSampler(512, 1.5)
    with pytest.raises(ValueError, match="num"):
        RandomSampler(-1)
    with pytest.raises(TypeError, match="integer"):
        RandomSampler()(Candidates(torch.zeros(4)))
    with pytest.raises(TypeError, match="RandomSampler takes a Candidates"):
        RandomSampler()(torch.zeros(4, dtype=torch.int64))
