"""Shared primitives: exact ranks under ties, weight masks, validation, and the losses' weight plug."""

import contextlib

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from balancedet.losses import sigmoid_focal_loss
from balancedet.samplers import (
    LINEAR_SHIFT_SCHEDULE,
    Candidates,
    HardNegativeMiner,
    InstanceBalancedPosSampler,
    IoUBalancedNegSampler,
    OHEMSampler,
    RandomSampler,
    Sample,
    SOHEMSampler,
    libra_sampler,
)
from balancedet.samplers.base import (
    check_like,
    check_matched,
    negative_quota,
    random_keys,
    rank_in_group,
    select_first,
)
from tests.samplers.strategies import FAST, matched_vectors, seeded, seeds


def brute_select(eligible: list[bool], key: list[int], k: int, descending: bool) -> set[int]:
    idx = [i for i in range(len(key)) if eligible[i]]
    idx.sort(key=lambda i: (-key[i] if descending else key[i], i))
    return set(idx[: max(k, 0)])


@FAST
@given(
    rows=st.lists(
        st.lists(st.tuples(st.booleans(), st.integers(0, 4)), min_size=7, max_size=7), min_size=1, max_size=4
    ),
    ks=st.lists(st.integers(-1, 8), min_size=4, max_size=4),
    descending=st.booleans(),
)
def test_select_first_matches_brute_force_with_ties(rows, ks, descending):
    eligible = torch.tensor([[e for e, _ in row] for row in rows])
    key = torch.tensor([[v for _, v in row] for row in rows])
    k = torch.tensor(ks[: len(rows)]).unsqueeze(1)
    got = select_first(eligible, key, k, descending=descending)
    for r in range(len(rows)):
        want = brute_select(eligible[r].tolist(), key[r].tolist(), ks[r], descending)
        assert set(torch.nonzero(got[r]).flatten().tolist()) == want


def test_select_first_tuple_key_breaks_ties_by_second_key():
    primary = torch.tensor([1.0, 2.0, 2.0, 2.0])
    secondary = torch.tensor([9.0, 1.0, 5.0, 3.0])
    got = select_first(torch.ones(4, dtype=torch.bool), (primary, secondary), 2, descending=True)
    assert got.tolist() == [False, False, True, True]


@FAST
@given(values=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), max_size=30))
def test_rank_in_group_matches_brute_force(values):
    group = torch.tensor([g for g, _ in values], dtype=torch.int64)
    key = torch.tensor([k for _, k in values], dtype=torch.int64)
    got = rank_in_group(group, key).tolist()
    for i, (g, k) in enumerate(values):
        want = sum(1 for j, (g2, k2) in enumerate(values) if g2 == g and (k2, j) < (k, i))
        assert got[i] == want


def test_sample_keep_weight_and_indices():
    pos = torch.tensor([False, True, False, True, False])
    neg = torch.tensor([True, False, False, False, False])
    sample = Sample(pos, neg)
    assert sample.pos_idx.tolist() == [1, 3] and sample.neg_idx.tolist() == [0]
    assert sample.pos_idx.dtype == torch.int64 and sample.neg_idx.dtype == torch.int64
    assert sample.indices.tolist() == [1, 3, 0]
    assert sample.keep.tolist() == [True, True, False, True, False]
    assert sample.weight().tolist() == [1, 1, 0, 1, 0]
    assert sample.weight(part="pos").tolist() == [0, 1, 0, 1, 0]
    assert sample.weight(part="neg", dtype=torch.float64).tolist() == [1, 0, 0, 0, 0]
    assert sample.weight().dtype == torch.float32
    assert sample.weight(part="neg", dtype=torch.float64).dtype == torch.float64
    with pytest.raises(ValueError, match="part"):
        sample.weight(part="both")
    batched = Sample(torch.zeros(2, 3, dtype=torch.bool), torch.ones(2, 3, dtype=torch.bool))
    assert batched.weight().shape == (2, 3) and batched.weight().sum() == 6
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        _ = batched.pos_idx
    with pytest.raises(ValueError, match=r"Sample.pos \(3,\).*Sample.neg \(4,\)"):
        Sample(torch.zeros(3, dtype=torch.bool), torch.zeros(4, dtype=torch.bool))
    with pytest.raises(TypeError, match="Sample.neg.*float32"):
        Sample(torch.zeros(3, dtype=torch.bool), torch.zeros(3))


def test_negative_quota_upper_bound():
    num_pos = torch.tensor([[0], [2], [10]])
    assert negative_quota(16, num_pos).flatten().tolist() == [16, 14, 6]
    assert negative_quota(16, num_pos, neg_pos_ub=1.5).flatten().tolist() == [1, 3, 6]


def test_validation_names_the_problem():
    with pytest.raises(TypeError, match="integer"):
        check_matched(torch.zeros(3))
    with pytest.raises(ValueError, match=r"\(1, 2, 3\)"):
        check_matched(torch.zeros(1, 2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"max_iou.*\(3,\).*\(4,\)"):
        check_like("max_iou", torch.zeros(4), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(TypeError, match="losses"):
        check_like("losses", torch.zeros(3, dtype=torch.int64), torch.zeros(3, dtype=torch.int64))


def test_random_keys_follow_the_generator():
    like = torch.zeros(2, 5)
    a = random_keys(like, torch.Generator().manual_seed(3), 2)
    b = random_keys(like, torch.Generator().manual_seed(3), 2)
    assert a.shape == (2, 2, 5) and torch.equal(a, b)
    assert not torch.equal(a, random_keys(like, torch.Generator().manual_seed(4), 2))


@FAST
@given(matched=matched_vectors(max_size=120, max_gt=4), seed=seeds)
def test_sampled_weight_mask_equals_focal_loss_on_gathered_subset(matched, seed):
    num_classes = 4
    labels = torch.where(matched >= 0, matched, num_classes)
    logits = torch.randn(matched.numel(), num_classes, generator=torch.Generator().manual_seed(seed))
    result = RandomSampler(num=32, pos_fraction=0.25)(Candidates(matched, generator=seeded(seed)))
    weighted = sigmoid_focal_loss(logits, labels, weight=result.weight(), reduction="sum")
    idx = result.indices
    gathered = sigmoid_focal_loss(logits[idx], labels[idx], reduction="sum")
    torch.testing.assert_close(weighted, gathered)
    per_element = sigmoid_focal_loss(logits, labels, reduction="none")
    torch.testing.assert_close(weighted, per_element[idx].sum())


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@contextlib.contextmanager
def no_host_sync(device: str):
    """On CUDA, any host synchronisation inside the block raises."""
    if device == "cuda":
        torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        if device == "cuda":
            torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("device", DEVICES)
def test_every_sampler_on_device_without_host_sync(device):
    gen = torch.Generator().manual_seed(0)
    matched = torch.randint(-2, 6, (2, 3000), generator=gen)
    losses, loc, iou = (torch.rand(2, 3000, generator=gen) for _ in range(3))
    dev = [t.to(device) for t in (matched, losses, loc, iou)]
    g = torch.Generator(device=device).manual_seed(0)
    with no_host_sync(device):
        candidates = Candidates(dev[0], max_iou=dev[3], cls_loss=dev[1], box_loss=dev[2], progress=0.6, generator=g)
        samples = {
            "random": RandomSampler()(candidates),
            "instance": InstanceBalancedPosSampler()(candidates),
            "iou": IoUBalancedNegSampler()(candidates),
            "libra": libra_sampler()(candidates),
            "ohem": OHEMSampler(num=None)(candidates),
            "budget": OHEMSampler(mode="budget")(candidates),
            "ssd": HardNegativeMiner()(candidates),
            "sohem": SOHEMSampler(schedule=LINEAR_SHIFT_SCHEDULE)(candidates),
        }
        strata = SOHEMSampler(schedule=LINEAR_SHIFT_SCHEDULE).strata(candidates)
        weights = [s.weight() for s in samples.values()]
    for name, out in samples.items():
        assert out.pos.device.type == device and out.neg.device.type == device, name
    assert strata.device.type == device and all(w.device.type == device for w in weights)
    # the deterministic ones agree with the CPU exactly; the random ones in their counts
    cpu = Candidates(matched, max_iou=iou, cls_loss=losses, box_loss=loc, progress=0.6)
    ohem = OHEMSampler(num=None)(cpu)
    assert torch.equal(samples["ohem"].neg.cpu(), ohem.neg) and torch.equal(samples["ohem"].pos.cpu(), ohem.pos)
    assert torch.equal(samples["ssd"].keep.cpu(), HardNegativeMiner()(cpu).keep)
    assert torch.equal(strata.cpu(), SOHEMSampler(schedule=LINEAR_SHIFT_SCHEDULE).strata(cpu))
    cpu_random = RandomSampler()(cpu)
    for a, b in ((samples["random"].pos, cpu_random.pos), (samples["random"].neg, cpu_random.neg)):
        assert torch.equal(a.sum(-1).cpu(), b.sum(-1))
    one = IoUBalancedNegSampler()(Candidates(dev[0][0], max_iou=dev[3][0], generator=g))
    assert one.pos_idx.device.type == device and one.neg_idx.dtype == torch.int64
    assert (one.pos_idx.numel(), one.neg_idx.numel()) == (128, min(384, int((matched[0] == -1).sum())))
