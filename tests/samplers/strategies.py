"""Hypothesis strategies and checks shared by the sampler tests."""

import torch
from hypothesis import settings
from hypothesis import strategies as st

from balancedet.samplers import SampleResult

FAST = settings(max_examples=40, deadline=None)

seeds = st.integers(0, 2**31 - 1)


@st.composite
def matched_vectors(draw, max_size: int = 200, max_gt: int = 6) -> torch.Tensor:
    """``(M,)`` int64 in the AssignResult convention: gt index >= 0, -1 background, -2 ignored."""
    values = draw(st.lists(st.integers(-2, max_gt - 1), max_size=max_size))
    return torch.tensor(values, dtype=torch.int64)


def check_result(result: SampleResult, matched: torch.Tensor) -> None:
    """Index sets: int64 on matched's device, unique, disjoint, really positive / negative."""
    for idx in (result.pos_idx, result.neg_idx):
        assert idx.dtype == torch.int64
        assert idx.device == matched.device
        assert idx.dim() == 1
        assert idx.unique().numel() == idx.numel()
    assert (matched[result.pos_idx] >= 0).all()
    assert (matched[result.neg_idx] == -1).all()
