import math

import pytest
import torch

from balancedet.analysis.loss_shares import ShareAccumulator, remedy_shares, summary
from balancedet.losses import ghm_c_loss

KINDS = ("easy_pos", "hard_pos", "easy_neg", "hard_neg")


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def hand_made():
    """One class: 2 easy positives (p 0.91), 1 hard positive (p 0.22), 96 easy negatives (p 0.012), 1 hard
    negative (p 0.71); g = 1 - p_t = 0.09, 0.78, 0.012, 0.71 fall in GHM bins 2, 23, 0 and 21 of 30."""
    groups = [(0.91, 0, 2), (0.22, 0, 1), (0.012, 1, 96), (0.71, 1, 1)]
    logits = torch.tensor([[logit(p)] for p, _, n in groups for _ in range(n)], dtype=torch.float64)
    labels = torch.tensor([y for _, y, n in groups for _ in range(n)])
    return logits, labels, groups


def expected_shares(per_group: list[float]) -> list[float]:
    total = sum(per_group)
    return [v / total for v in per_group]


def test_counts_and_shares_under_ce_focal_and_ghmc_by_hand():
    logits, labels, groups = hand_made()
    out = remedy_shares(logits, labels)
    p_t = [p if y == 0 else 1 - p for p, y, _ in groups]
    counts = [n for *_, n in groups]
    # focal paper eq. 1 and eq. 5 (alpha_t 0.25 for positives, 0.75 for negatives, gamma 2)
    ce = [-n * math.log(pt) for pt, n in zip(p_t, counts, strict=True)]
    alpha = [0.25, 0.25, 0.75, 0.75]
    fl = [-a * n * (1 - pt) ** 2 * math.log(pt) for a, pt, n in zip(alpha, p_t, counts, strict=True)]
    # GHM eq. 7-8: each group alone in its bin, N = 100, 4 non-empty bins: beta = 100 / (n * 4)
    ghm = [c * 100 / (n * 4) / 100 for c, n in zip(ce, counts, strict=True)]
    for name, values in (("ce", ce), ("focal", fl), ("ghmc", ghm)):
        assert [out[name][k]["count"] for k in KINDS] == counts
        assert [out[name][k]["share"] for k in KINDS] == pytest.approx(expected_shares(values), rel=1e-9)
    assert out["ghmc"]["loss"] == pytest.approx(sum(ghm), rel=1e-9)
    assert out["ghmc"]["loss"] == pytest.approx(float(ghm_c_loss(logits, labels)), rel=1e-9)
    # the picture of the focal paper: CE's loss is mostly the negatives', most of it the easy ones'
    # (96 x 0.0121 against 1 x 1.238), and the focal loss gives the hard examples more
    brief = summary(out)
    assert brief["ce"]["negative_share"] == pytest.approx((ce[2] + ce[3]) / sum(ce))
    assert brief["ce"]["easy_share_of_negative_loss"] == pytest.approx(ce[2] / (ce[2] + ce[3]))
    assert brief["focal"]["hard_share"] == pytest.approx((fl[1] + fl[3]) / sum(fl))
    assert brief["focal"]["hard_share"] > brief["ce"]["hard_share"]
    density = out["density"]
    assert density["positive_counts"][2] == 2 and density["positive_counts"][23] == 1
    assert density["negative_counts"][0] == 96 and density["negative_counts"][21] == 1
    assert sum(density["positive_counts"]) + sum(density["negative_counts"]) == 100


def test_batches_add_up_to_the_whole_and_ghmc_matches_the_project_loss():
    torch.manual_seed(1)
    logits = torch.randn(300, 3, dtype=torch.float64) * 3
    labels = torch.randint(0, 4, (300,))
    whole = remedy_shares(logits, labels)
    parts = ShareAccumulator()
    for chunk in range(3):
        parts.add(logits[chunk * 100 : (chunk + 1) * 100], labels[chunk * 100 : (chunk + 1) * 100])
    split = parts.result()
    for name in ("ce", "focal", "ghmc"):
        for k in KINDS:
            assert split[name][k]["count"] == whole[name][k]["count"]
            assert split[name][k]["share"] == pytest.approx(whole[name][k]["share"], rel=1e-12)
    # one histogram over every (anchor, class) element: the project's GHM-C without momentum
    assert whole["ghmc"]["loss"] == pytest.approx(float(ghm_c_loss(logits, labels)), rel=1e-9)
    assert sum(whole["ce"][k]["share"] for k in KINDS) == pytest.approx(1.0)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="ShareAccumulator"):
        ShareAccumulator().add(torch.zeros(3, 2), torch.zeros(4, dtype=torch.long))
