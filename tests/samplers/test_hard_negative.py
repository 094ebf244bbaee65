"""HardNegativeMiner: SSD's neg:pos <= 3:1 per image of a batch, hardest negatives first."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from balancedet.samplers import HardNegativeMiner
from tests.samplers.strategies import FAST, seeds


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
    kept = HardNegativeMiner(ratio)(matched, losses)
    assert kept.shape == matched.shape and kept.dtype == torch.bool
    for b in range(batch):
        pos = matched[b] >= 0
        assert torch.equal(kept[b] & pos, pos)
        assert not kept[b][matched[b] == -2].any()
        negatives = torch.nonzero(matched[b] == -1).flatten().tolist()
        quota = int(ratio * int(pos.sum()))
        want = sorted(sorted(negatives, key=lambda i: (-losses[b, i].item(), i))[:quota])
        got = torch.nonzero(kept[b] & (matched[b] == -1)).flatten().tolist()
        assert got == want
        assert len(got) <= ratio * int(pos.sum())


def test_ssd_three_to_one_in_a_batch():
    matched = torch.full((3, 100), -1)
    matched[0, :5] = 0
    matched[1, :40] = 1  # 40 positives, only 60 negatives: all of them
    losses = torch.arange(300.0).view(3, 100)
    kept = HardNegativeMiner()(matched, losses)
    assert (kept & (matched == -1)).sum(1).tolist() == [15, 60, 0]
    assert torch.nonzero(kept[0, 5:]).flatten().add(5).tolist() == list(range(85, 100))


def test_one_image_and_min_neg():
    matched = torch.full((10,), -1)
    losses = torch.arange(10.0)
    assert not HardNegativeMiner()(matched, losses).any()
    assert torch.nonzero(HardNegativeMiner(min_neg=2)(matched, losses)).flatten().tolist() == [8, 9]


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="neg_pos_ratio"):
        HardNegativeMiner(-1.0)
    with pytest.raises(ValueError, match=r"losses.*\(2, 3\)"):
        HardNegativeMiner()(torch.zeros(2, 3, dtype=torch.int64), torch.zeros(3))
