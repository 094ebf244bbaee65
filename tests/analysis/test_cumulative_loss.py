import math

import numpy as np
import pytest
import torch

from balancedet.analysis.cumulative_loss import CumulativeLoss, cumulative_curve


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_equal_losses_give_the_diagonal():
    f = np.linspace(0, 1, 11)
    assert cumulative_curve(np.ones(4), f) == pytest.approx(f)


def test_one_hard_example_holds_the_loss_at_the_end():
    # sorted 0, 0, 0, 10: nothing before 3/4 of the examples, then linearly up to all of it
    curve = cumulative_curve(np.array([10.0, 0.0, 0.0, 0.0]), np.array([0.0, 0.5, 0.75, 0.875, 1.0]))
    assert curve.tolist() == pytest.approx([0.0, 0.0, 0.0, 0.5, 1.0])


def test_no_loss_has_no_curve():
    assert cumulative_curve(np.zeros(0), np.array([0.5])) is None
    assert cumulative_curve(np.zeros(3), np.array([0.5])) is None


def test_curves_per_gamma_of_positives_and_negatives():
    # one class; positives at p 0.9 and 0.2, negatives at p 0.1 (x4) and 0.8
    p = [0.9, 0.2, 0.1, 0.1, 0.1, 0.1, 0.8]
    logits = torch.tensor([[logit(v)] for v in p], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 1, 1, 1])
    collector = CumulativeLoss(gammas=(0.0, 2.0))
    collector.add(logits, labels)
    out = collector.result(points=11)
    assert out["positive"]["count"] == 2 and out["negative"]["count"] == 5
    for kind in ("positive", "negative"):
        for curve in out[kind]["curves"].values():
            assert curve[0] == 0.0 and curve[-1] == pytest.approx(1.0)
    # negatives' p_t: 0.9 (x4) and 0.2; FL = -(1 - p_t)^gamma log p_t; the hardest 20% is the one at p_t 0.2
    for gamma in (0.0, 2.0):
        easy, hard = -(0.1**gamma) * math.log(0.9), -(0.8**gamma) * math.log(0.2)
        assert out["negative"]["hardest_20pct"][str(gamma)] == pytest.approx(hard / (4 * easy + hard))
    # a larger gamma concentrates the negatives' loss on the hard one (the focal paper's fig. 4)
    assert out["negative"]["hardest_20pct"]["2.0"] > out["negative"]["hardest_20pct"]["0.0"]


def test_negatives_beyond_the_cap_are_sampled_and_counted():
    logits = torch.zeros(10, 2)
    labels = torch.tensor([0] + [2] * 9)
    collector = CumulativeLoss(max_negatives=4)
    collector.add(logits, labels)
    collector.add(logits, labels)
    out = collector.result()
    assert out["positive"]["count"] == 2
    assert out["negative"]["count"] == 8 and out["negative"]["seen"] == 18
