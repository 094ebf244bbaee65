"""The one sampler protocol: every sampler is ``sampler(Candidates) -> Sample`` over a batch."""

import dataclasses

import pytest
import torch

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
from tests.samplers.strategies import check_result, seeded

OPTIONAL = {"max_iou", "cls_loss", "box_loss", "boxes"}

#: Every sampler, with a budget that leaves some candidates out (M = 500 per image).
SAMPLERS = {
    "random": RandomSampler(64, 0.25),
    "instance_balanced": InstanceBalancedPosSampler(64, 0.5),
    "iou_balanced": IoUBalancedNegSampler(64, 0.25, floor_thr=0.05, floor_fraction=0.25),
    "libra": libra_sampler(64),
    "ohem_ratio": OHEMSampler(num=None),
    "ohem_num": OHEMSampler(64),
    "ohem_budget_nms": OHEMSampler(64, mode="budget", nms_iou=0.7),
    "ssd": HardNegativeMiner(),
    "sohem": SOHEMSampler(64, schedule=LINEAR_SHIFT_SCHEDULE),
}
#: Those whose selection is a function of the losses alone (ties by index), not of random keys.
LOSS_RANKED = ("ohem_ratio", "ohem_num", "ohem_budget_nms", "ssd", "sohem")
RANDOM = ("random", "instance_balanced", "iou_balanced", "libra")


def full_batch(seed: int = 0, batch: int = 2, num: int = 500, generator: torch.Generator | None = None) -> Candidates:
    """``(2, 500)`` candidates with every field: 6 boxes' positives, background, an ignore band."""
    gen = seeded(seed)
    u = torch.rand(batch, num, generator=gen)
    matched = torch.where(u < 0.15, torch.randint(0, 6, (batch, num), generator=gen), -1)
    matched = torch.where(u > 0.92, -2, matched)
    max_iou = torch.where(matched >= 0, 0.5 + 0.5 * u, 0.5 * torch.rand(batch, num, generator=gen))
    max_iou = torch.where(torch.rand(batch, num, generator=gen) < 0.2, 0.0, max_iou)
    cls_loss = torch.randint(0, 10, (batch, num), generator=gen).float() / 4  # ties are common
    box_loss = torch.where(matched >= 0, torch.rand(batch, num, generator=gen), 0.0)
    xy = torch.rand(batch, num, 2, generator=gen) * 200
    boxes = torch.cat([xy, xy + 10 + torch.rand(batch, num, 2, generator=gen) * 40], dim=-1)
    return Candidates(matched, max_iou, cls_loss, box_loss, boxes, progress=0.4, generator=generator)


def image(candidates: Candidates, b: int, generator: torch.Generator | None = None) -> Candidates:
    """Image ``b`` of a batch, as an ``(M,)`` ``Candidates``."""
    fields = {f: getattr(candidates, f)[b] for f in OPTIONAL}
    return Candidates(candidates.matched[b], progress=candidates.progress, generator=generator, **fields)


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_takes_candidates_and_returns_a_sample(name):
    sampler = SAMPLERS[name]
    candidates = full_batch(generator=seeded(0))
    matched = candidates.matched
    assert isinstance(sampler.needs, frozenset) and sampler.needs <= OPTIONAL
    sample = sampler(candidates)
    assert isinstance(sample, Sample)
    assert sample.pos.shape == sample.neg.shape == (2, 500)
    check_result(sample, matched)  # bool, pos only where matched >= 0, neg only where matched == -1
    assert not (sample.pos & sample.neg).any()
    assert not sample.keep[matched == -2].any()
    assert sample.keep.any(-1).all()  # each image keeps something
    assert sample.weight().shape == (2, 500)
    # a detector computes only what ``needs`` lists: that is enough
    minimal = Candidates(
        matched, progress=0.4, generator=seeded(0), **{f: getattr(candidates, f) for f in sampler.needs}
    )
    check_result(sampler(minimal), matched)
    # and each needed field, left out, is named in the error together with the sampler
    for field in sampler.needs:
        with pytest.raises(ValueError, match=f"{type(sampler).__name__} needs .*{field}"):
            sampler(dataclasses.replace(candidates, **{field: None}))


def test_needs_of_each_sampler():
    needs = {name: set(s.needs) for name, s in SAMPLERS.items()}
    assert needs == {
        "random": set(),
        "instance_balanced": set(),
        "iou_balanced": {"max_iou"},
        "libra": {"max_iou"},
        "ohem_ratio": {"cls_loss"},
        "ohem_num": {"cls_loss"},
        "ohem_budget_nms": {"cls_loss", "boxes"},
        "ssd": {"cls_loss"},
        "sohem": {"cls_loss", "box_loss"},
    }


@pytest.mark.parametrize("name", LOSS_RANKED)
def test_batched_call_equals_per_image_calls(name):
    sampler = SAMPLERS[name]
    candidates = full_batch(1)
    batched = sampler(candidates)
    for b in range(2):
        one = sampler(image(candidates, b))
        assert one.pos.shape == (500,)
        assert torch.equal(batched.pos[b], one.pos) and torch.equal(batched.neg[b], one.neg)


@pytest.mark.parametrize("name", RANDOM)
def test_random_samplers_are_deterministic_given_a_seed_and_count_per_image(name):
    sampler = SAMPLERS[name]
    a = sampler(full_batch(1, generator=seeded(3)))
    b = sampler(full_batch(1, generator=seeded(3)))
    c = sampler(full_batch(1, generator=seeded(4)))
    assert torch.equal(a.pos, b.pos) and torch.equal(a.neg, b.neg)
    assert not (torch.equal(a.pos, c.pos) and torch.equal(a.neg, c.neg))
    # the quotas are exact, so each image of the batch keeps as many as it would alone
    candidates = full_batch(1)
    for i in range(2):
        one = sampler(image(candidates, i, generator=seeded(5)))
        assert int(a.pos[i].sum()) == int(one.pos.sum()) and int(a.neg[i].sum()) == int(one.neg.sum())


def test_candidates_validate_their_fields():
    matched = torch.zeros(2, 3, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"max_iou.*\(2, 3\).*\(3,\)"):
        Candidates(matched, max_iou=torch.zeros(3))
    with pytest.raises(TypeError, match="box_loss.*floating"):
        Candidates(matched, box_loss=torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"boxes must have shape \(2, 3, 4\)"):
        Candidates(matched, boxes=torch.zeros(3, 4))
    with pytest.raises(TypeError, match="generator"):
        Candidates(matched, generator=0)
    with pytest.raises(ValueError, match=r"matched.*\(1, 2, 3\)"):
        Candidates(torch.zeros(1, 2, 3, dtype=torch.int64))
    with pytest.raises(dataclasses.FrozenInstanceError):
        Candidates(matched).progress = 0.5
