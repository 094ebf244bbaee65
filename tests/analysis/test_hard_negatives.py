import pytest
import torch

from balancedet.analysis.hard_negatives import HardNegativeSpread, hard_and_random, iou_spread


def test_the_hardest_are_the_largest_losses_and_random_ones_are_distinct_negatives():
    loss = torch.tensor([9.0, 0.1, 5.0, 7.0, 0.2, 8.0, 0.3, 0.0])
    max_iou = torch.tensor([0.9, 0.0, 0.3, 0.2, 0.01, 0.6, 0.02, 0.03])
    negative = torch.tensor([False, True, True, True, True, False, True, True])
    hard, drawn = hard_and_random(loss, max_iou, negative, 2, torch.Generator().manual_seed(0))
    # negatives' losses: 0.1, 5, 7, 0.2, 0.3, 0.0: the two largest are anchors 3 and 2
    assert hard.tolist() == pytest.approx([0.2, 0.3])
    negative_ious = {round(v, 6) for v in max_iou[negative].tolist()}
    assert len(drawn) == 2 and len(set(drawn.tolist())) == 2
    assert {round(v, 6) for v in drawn.tolist()} <= negative_ious
    hard, drawn = hard_and_random(loss, max_iou, negative, 50, torch.Generator().manual_seed(0))
    assert len(hard) == len(drawn) == 6


def test_random_draws_are_uniform_over_the_negatives():
    negative = torch.ones(4, dtype=torch.bool)
    max_iou = torch.arange(4, dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    picks = torch.cat([hard_and_random(torch.zeros(4), max_iou, negative, 1, generator)[1] for _ in range(4000)])
    counts = torch.bincount(picks.long(), minlength=4).double() / 4000
    assert counts.tolist() == pytest.approx([0.25] * 4, abs=0.03)


def test_spread_histogram_mean_and_overlap_share():
    # 0.05-wide bins: 0.0 and 0.01 in bin 0, 0.06 in bin 1, 0.32 in bin 6, 0.47 in bin 9
    out = iou_spread(torch.tensor([0.0, 0.01, 0.06, 0.32, 0.47], dtype=torch.float64).numpy())
    expected = [0] * 20
    expected[0], expected[1], expected[6], expected[9] = 2, 1, 1, 1
    assert out["histogram"] == expected and out["count"] == 5
    assert out["above_overlap"] == pytest.approx(0.6)
    assert out["mean_iou"] == pytest.approx(0.172)
    assert iou_spread(torch.zeros(0).numpy())["above_overlap"] is None


def test_three_negatives_per_positive_at_least_one_positive():
    spread = HardNegativeSpread()
    loss = torch.arange(20, dtype=torch.float32)
    max_iou = torch.linspace(0, 0.38, 20)
    negative = torch.ones(20, dtype=torch.bool)
    spread.add(loss, max_iou, negative, 0)  # 3 x max(0, 1)
    spread.add(loss, max_iou, negative, 2)  # 6
    out = spread.result()
    assert out["hard"]["count"] == out["random"]["count"] == 9
    # the largest losses sit at the largest IoUs here: all 9 hardest lie above 0.05
    assert out["hard"]["above_overlap"] == 1.0
