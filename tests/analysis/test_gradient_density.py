import math

import pytest
import torch

from balancedet.analysis.gradient_density import (
    bin_index,
    density_counts,
    focal_gradient_ratio,
    ghm_weights,
    gradient_norm,
)


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_gradient_norm_is_the_distance_of_p_to_the_target():
    # GHM eq. 4: g = |p - y|; a positive of class 1 (y = 1 there, 0 at class 0) and a negative (y = 0 everywhere)
    logits = torch.tensor([[logit(0.3), logit(0.8)], [logit(0.6), logit(0.1)]], dtype=torch.float64)
    g = gradient_norm(logits, torch.tensor([1, 2]))
    assert g.reshape(-1).tolist() == pytest.approx([0.3, 0.2, 0.6, 0.1])


def test_bins_put_g_equal_one_in_the_last():
    g = torch.tensor([0.0, 0.01, 0.55, 0.99, 1.0], dtype=torch.float64)
    assert bin_index(g, 10).tolist() == [0, 0, 5, 9, 9]
    assert density_counts(g, 10).tolist() == [2, 0, 0, 0, 0, 1, 0, 0, 0, 2]


def test_ghm_weights_are_n_over_count_times_nonempty_bins():
    # N = 4 elements in 2 non-empty bins: beta_j = 4 / (R_j * 2)
    assert ghm_weights(torch.tensor([3, 0, 1])).tolist() == pytest.approx([4 / 6, 0.0, 2.0])
    assert ghm_weights(torch.zeros(3, dtype=torch.long)).tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_focal_ratio_matches_the_derivative_of_eq_5(gamma):
    # FL = -(1 - p_t)^gamma log p_t, dp_t/dx_t = p_t (1 - p_t): |dFL/dx_t| = (1 - p_t)^gamma ((1 - p_t) - gamma p_t
    # log p_t); with g = 1 - p_t and |dCE/dx_t| = g the ratio is g^gamma (g - gamma (1 - g) log(1 - g)) / g
    g = torch.tensor([0.01, 0.1, 0.5, 0.9, 0.99], dtype=torch.float64)
    expected = [gv**gamma * (gv - gamma * (1 - gv) * math.log(1 - gv)) / gv for gv in g.tolist()]
    assert focal_gradient_ratio(g, gamma).tolist() == pytest.approx(expected, rel=1e-9)
