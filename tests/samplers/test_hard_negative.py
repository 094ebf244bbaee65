"""HardNegativeMiner: SSD's neg:pos <= 3:1 per image of a batch, hardest negatives first."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from balancedet.samplers import Candidates, HardNegativeMiner
from tests.samplers.strategies import FAST, check_result, seeds


@FAST
@given(
    batch=st.integers(1, 4),
    anchors=st.integers(0, 120),
    seed=seeds,
    ratio=st.sampled_from([3.0, 1.0, 0.5]),
)
def test_each_image_keeps_its_positives_and_hardest_negatives(batch, anchors, seed, ratio):
    gen = torch.Generator().manual_seed(seed)
    # per image a different positive rate, so the quotas differ inside the batch
    rate = torch.rand(batch, 1, generator=gen) * 0.3
    u = torch.rand(batch, anchors, generator=gen)
    matched = torch.where(u < rate, 0, torch.where(u > 0.95, -2, -1))
    losses = torch.randint(0, 6, (batch, anchors), generator=gen).float()
    sample = HardNegativeMiner(ratio)(Candidates(matched, cls_loss=losses))
    check_result(sample, matched)
    for b in range(batch):
        pos = matched[b] >= 0
        assert torch.equal(sample.pos[b], pos)
        assert not sample.keep[b][matched[b] == -2].any()
        negatives = torch.nonzero(matched[b] == -1).flatten().tolist()
        quota = int(ratio * int(pos.sum()))
        want = sorted(sorted(negatives, key=lambda i: (-losses[b, i].item(), i))[:quota])
        got = torch.nonzero(sample.neg[b]).flatten().tolist()
        assert got == want
        assert len(got) <= ratio * int(pos.sum())


def test_ssd_three_to_one_in_a_batch():
    matched = torch.full((3, 100), -1)
    matched[0, :5] = 0
    matched[1, :40] = 1  # 40 positives, only 60 negatives: all of them
    losses = torch.arange(300.0).view(3, 100)
    sample = HardNegativeMiner()(Candidates(matched, cls_loss=losses))
    assert sample.neg.sum(1).tolist() == [15, 60, 0]
    assert torch.nonzero(sample.keep[0, 5:]).flatten().add(5).tolist() == list(range(85, 100))


def test_one_image_and_min_neg():
    matched = torch.full((10,), -1)
    losses = torch.arange(10.0)
    assert not HardNegativeMiner()(Candidates(matched, cls_loss=losses)).keep.any()
    assert HardNegativeMiner(min_neg=2)(Candidates(matched, cls_loss=losses)).indices.tolist() == [8, 9]


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="neg_pos_ratio"):
        HardNegativeMiner(-1.0)
    with pytest.raises(ValueError, match=r"cls_loss.*\(2, 3\)"):
        Candidates(torch.zeros(2, 3, dtype=torch.int64), cls_loss=torch.zeros(3))
    with pytest.raises(ValueError, match="HardNegativeMiner needs .*cls_loss"):
        HardNegativeMiner()(Candidates(torch.zeros(2, 3, dtype=torch.int64)))
