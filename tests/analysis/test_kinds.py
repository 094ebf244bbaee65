import pytest
import torch

from balancedet.analysis.kinds import (
    EASY_NEGATIVE,
    EASY_POSITIVE,
    HARD_NEGATIVE,
    HARD_POSITIVE,
    example_kinds,
    kind_shares,
)


def logit(p: float) -> float:
    return float(torch.logit(torch.tensor(p, dtype=torch.float64)))


def test_kinds_by_the_probability_of_the_right_answer():
    # 2 classes; rows: positive of class 0 at p=0.9, positive of class 1 at p=0.2 (class 0 at 0.9 does not
    # make it easy), negative with max p 0.3, negative with one class at 0.6
    logits = torch.tensor(
        [[logit(0.9), logit(0.1)], [logit(0.9), logit(0.2)], [logit(0.3), logit(0.1)], [logit(0.1), logit(0.6)]]
    )
    labels = torch.tensor([0, 1, 2, 2])
    assert example_kinds(logits, labels).tolist() == [EASY_POSITIVE, HARD_POSITIVE, EASY_NEGATIVE, HARD_NEGATIVE]


def test_shares_count_only_weighted_examples_and_sum_to_one():
    kinds = torch.tensor([0, 1, 2, 2, 3, 3])
    losses = torch.tensor([1.0, 2.0, 0.5, 0.5, 3.0, 100.0])
    weight = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    out = kind_shares(kinds, losses, weight)
    assert [out[k]["count"] for k in ("easy_pos", "hard_pos", "easy_neg", "hard_neg")] == [1, 1, 2, 1]
    assert out["hard_neg"]["share"] == pytest.approx(3.0 / 7.0)
    assert sum(v["share"] for v in out.values()) == pytest.approx(1.0)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="example_kinds"):
        example_kinds(torch.zeros(3, 2), torch.zeros(4, dtype=torch.long))
