"""fp16 gradients of the fused sigmoid losses under a GradScaler-size loss scale.

A dense head near the prior bias (logit -4.6, focal paper sec. 3.3) has negative gradients of
order 1e-7 once divided by the number of positives, far below fp16's smallest normal (6e-5),
while the scaled gradient (x 65536) is representable, and 65536 itself is not (fp16 max 65504).
The reference is eq. 5 of each paper written with probabilities in float64 and differentiated by
autograd on the same fp16-rounded logits.
"""

import pytest
import torch

from balancedet.losses import QualityFocalLoss, quality_focal_loss, sigmoid_focal_loss

N, C, NUM_POS, SCALE = 20000, 8, 12, 65536.0


def _problem():
    gen = torch.Generator().manual_seed(5)
    x = (torch.randn(N, C, generator=gen) * 0.5 - 4.6).half()
    labels = torch.full((N,), C)
    rows = torch.randperm(N, generator=gen)[:NUM_POS]
    labels[rows] = torch.randint(0, C, (NUM_POS,), generator=gen)
    scores = torch.rand(N, generator=gen)
    y = torch.zeros(N, C, dtype=torch.float64)
    y[rows, labels[rows]] = 1.0
    return x, labels, scores, y


def _focal_reference(x, y, alpha=0.25, gamma=2.0):
    """Eq. 5 of arXiv 1708.02002: ``-alpha_t (1 - p_t)^gamma log(p_t)``."""
    p = torch.sigmoid(x)
    p_t = y * p + (1 - y) * (1 - p)
    alpha_t = y * alpha + (1 - y) * (1 - alpha)
    return -(alpha_t * (1 - p_t) ** gamma * torch.log(p_t)).sum() / NUM_POS


def _quality_reference(x, y, beta=2.0):
    """Eq. 5 of arXiv 2006.04388: ``-|y - s|^beta ((1 - y) log(1 - s) + y log(s))``, ``y`` the soft target."""
    s = torch.sigmoid(x)
    return -((y - s).abs() ** beta * ((1 - y) * torch.log(1 - s) + y * torch.log(s))).sum() / NUM_POS


def _cases(labels, scores, y):
    soft = y * scores.double()[:, None]
    return {
        "focal": (lambda x: sigmoid_focal_loss(x, labels, avg_factor=NUM_POS), lambda x: _focal_reference(x, y)),
        "qfl": (
            lambda x: quality_focal_loss(x, labels, scores, avg_factor=NUM_POS),
            lambda x: _quality_reference(x, soft),
        ),
        # The form a GFL head calls: the module with a (labels, scores) target.
        "qfl-module": (
            lambda x: QualityFocalLoss()(x, (labels, scores), avg_factor=NUM_POS),
            lambda x: _quality_reference(x, soft),
        ),
    }


@pytest.mark.parametrize("case", ["focal", "qfl", "qfl-module"])
def test_scaled_fp16_gradient_is_finite_and_keeps_the_small_negatives(case):
    x16, labels, scores, y = _problem()
    ours, reference = _cases(labels, scores, y)[case]
    x = x16.clone().requires_grad_()
    (ours(x) * SCALE).backward()
    got = x.grad
    x64 = x16.double().requires_grad_()
    (reference(x64) * SCALE).backward()
    expected = x64.grad
    assert got.dtype == torch.float16
    assert torch.isfinite(got).all()
    # Every element whose exact scaled gradient is representable in fp16 is non-zero here too.
    extra_zeros = (got == 0) & (expected.half() != 0)
    assert int(extra_zeros.sum()) == 0
    negatives = y == 0
    for mask in (torch.ones_like(negatives), negatives):
        total = got.double()[mask].sum() / SCALE
        assert total.item() == pytest.approx((expected[mask].sum() / SCALE).item(), rel=1e-3)
