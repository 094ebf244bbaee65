"""Hypothesis strategies and checks shared by the sampler tests."""

import torch
from hypothesis import settings
from hypothesis import strategies as st

from balancedet.samplers import Sample

FAST = settings(max_examples=40, deadline=None)

seeds = st.integers(0, 2**31 - 1)


@st.composite
def matched_vectors(draw, max_size: int = 200, max_gt: int = 6) -> torch.Tensor:
    """``(M,)`` int64 in the AssignResult convention: gt index >= 0, -1 background, -2 ignored."""
    values = draw(st.lists(st.integers(-2, max_gt - 1), max_size=max_size))
    return torch.tensor(values, dtype=torch.int64)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def check_result(sample: Sample, matched: torch.Tensor) -> None:
    """A ``Sample`` of ``matched``'s shape and device: kept positives really positive, kept negatives
    really background, ignored never kept; the index sets of one image ascending and int64."""
    assert isinstance(sample, Sample)
    for mask in (sample.pos, sample.neg):
        assert mask.dtype == torch.bool and mask.shape == matched.shape and mask.device == matched.device
    assert (matched[sample.pos] >= 0).all()
    assert (matched[sample.neg] == -1).all()
    if matched.dim() == 1:
        for idx in (sample.pos_idx, sample.neg_idx):
            assert idx.dtype == torch.int64 and idx.device == matched.device
            assert torch.equal(idx, idx.sort().values)


def count(mask: torch.Tensor) -> int:
    return int(mask.sum())
