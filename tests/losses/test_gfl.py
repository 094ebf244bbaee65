import numpy as np
import pytest
import torch
import torch.nn.functional as F

from balancedet.losses import backend
from balancedet.losses.gfl import (
    DistributionFocalLoss,
    QualityFocalLoss,
    distribution_focal_loss,
    generalized_focal_loss,
    quality_focal_loss,
)
from tests.losses import references as ref

N, C = 19, 6


def _qfl_data(n=N, c=C):
    x = torch.randn(n, c, dtype=torch.float64) * 3
    labels = torch.randint(0, c + 1, (n,))
    labels[0], labels[1] = c, 2
    scores = torch.rand(n, dtype=torch.float64)
    scores[2], scores[3] = 0.0, 1.0
    return x, labels, scores


# ---- QFL ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0, 2.0, 3.0])
@pytest.mark.parametrize("weight_kind", [None, "row", "full"])
def test_qfl_matches_reference(beta, weight_kind):
    x, labels, scores = _qfl_data()
    w = None if weight_kind is None else torch.rand((N,) if weight_kind == "row" else (N, C), dtype=torch.float64)
    elementwise = ref.quality_focal(x.numpy(), labels.numpy(), scores.numpy(), beta)
    wn = None if w is None else w.numpy()
    for reduction, avg in [("none", None), ("sum", None), ("mean", None), ("mean", 3.0)]:
        got = quality_focal_loss(x, labels, scores, beta=beta, weight=w, reduction=reduction, avg_factor=avg)
        np.testing.assert_allclose(got.numpy(), ref.reduce(elementwise, wn, reduction, avg), rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("beta", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("reduction", ["none", "sum"])
def test_qfl_gradcheck(beta, reduction):
    x, labels, scores = _qfl_data(n=8, c=3)
    scores = scores.clamp(0.05, 0.95)  # |y - s| = 0 is a kink for beta <= 1
    x.requires_grad_()
    w = torch.rand(8, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda x: quality_focal_loss(x, labels, scores, beta=beta, weight=w, reduction=reduction), (x,)
    )


def test_qfl_weight_with_grad_uses_the_plain_path():
    x, labels, scores = _qfl_data()
    w = torch.rand(N, dtype=torch.float64, requires_grad=True)
    loss = quality_focal_loss(x, labels, scores, weight=w, reduction="sum")
    (g,) = torch.autograd.grad(loss, w)
    expected = ref.quality_focal(x.numpy(), labels.numpy(), scores.numpy(), 2.0).sum(axis=1)
    np.testing.assert_allclose(g.numpy(), expected, rtol=1e-9)


def test_qfl_compiled_equals_eager(compile_mode):
    x = torch.randn(257, 9) * 3
    labels = torch.randint(0, 10, (257,))
    scores = torch.rand(257)
    results = []
    for mode in ["always", "never"]:
        backend.set_compile(mode)
        xx = x.clone().requires_grad_()
        loss = quality_focal_loss(xx, labels, scores, avg_factor=5.0)
        loss.backward()
        results.append((loss.detach(), xx.grad))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-5, atol=1e-8)


def test_qfl_extreme_logits_finite_under_bf16_autocast():
    x = torch.tensor([[100.0, -100.0], [-100.0, 100.0]]).requires_grad_()
    labels = torch.tensor([1, 2])
    scores = torch.tensor([0.7, 0.0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = quality_focal_loss(x.to(torch.bfloat16), labels, scores, reduction="sum")
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    # row 0: a negative at logit 100 costs 1 * 100, the positive at -100 costs |0.7|^2 * (0.7 * 100) = 34.3;
    # row 1 (background): the negative at 100 costs 100, the one at -100 nothing
    assert loss.item() == pytest.approx(100.0 + 0.49 * 70.0 + 100.0, rel=1e-2)


def test_qfl_bad_input():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"labels.*\(4,\)"):
        quality_focal_loss(x, torch.tensor([0, 1, 4, 3]), torch.rand(4))
    with pytest.raises(ValueError, match=r"scores.*\(3,\)"):
        quality_focal_loss(x, torch.tensor([0, 1, 2, 3]), torch.rand(3))
    with pytest.raises(ValueError, match=r"scores.*\(4,\)"):
        quality_focal_loss(x, torch.tensor([0, 1, 2, 3]), torch.tensor([0.1, float("nan"), 0.2, 0.3]))
    with pytest.raises(ValueError, match=r"scores.*\(4,\)"):
        quality_focal_loss(x, torch.tensor([0, 1, 2, 3]), torch.tensor([0.1, 1.5, 0.2, 0.3]))


def test_qfl_empty():
    x = torch.zeros(0, C, requires_grad=True)
    loss = quality_focal_loss(x, torch.zeros(0, dtype=torch.long), torch.zeros(0))
    assert loss.item() == 0.0
    loss.backward()


# ---- DFL ---------------------------------------------------------------------------------------


def test_dfl_matches_reference_including_clamp_and_integer_targets():
    x = torch.randn(12, 17, dtype=torch.float64) * 2
    target = torch.rand(12, dtype=torch.float64) * 16
    target[0], target[1], target[2], target[3] = 0.0, 3.0, 16.0, 20.0  # 16 and 20 clamp to 15.99
    w = torch.rand(12, dtype=torch.float64)
    elementwise = ref.distribution_focal(x.numpy(), target.numpy())
    for reduction, avg in [("none", None), ("sum", None), ("mean", None), ("mean", 4.0)]:
        got = distribution_focal_loss(x, target, weight=w, reduction=reduction, avg_factor=avg)
        np.testing.assert_allclose(got.numpy(), ref.reduce(elementwise, w.numpy(), reduction, avg), rtol=1e-10)
    # an integer target is a one-hot cross entropy on its own bin
    torch.testing.assert_close(
        distribution_focal_loss(x[1:2], target[1:2], reduction="sum"), F.cross_entropy(x[1:2], torch.tensor([3]))
    )


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_dfl_gradcheck(reduction):
    x = torch.randn(7, 17, dtype=torch.float64, requires_grad=True)
    target = torch.rand(7, dtype=torch.float64) * 15.5
    w = torch.rand(7, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: distribution_focal_loss(x, target, weight=w, reduction=reduction), (x,))


def test_dfl_weight_requiring_grad_and_module():
    x = torch.randn(5, 17, dtype=torch.float64)
    target = torch.rand(5, dtype=torch.float64) * 15
    w = torch.rand(5, dtype=torch.float64, requires_grad=True)
    loss = distribution_focal_loss(x, target, weight=w, reduction="sum")
    (g,) = torch.autograd.grad(loss, w)
    np.testing.assert_allclose(g.numpy(), ref.distribution_focal(x.numpy(), target.numpy()), rtol=1e-10)
    module = DistributionFocalLoss(loss_weight=0.25)
    torch.testing.assert_close(
        module(x, target, avg_factor=2.0), 0.25 * distribution_focal_loss(x, target, avg_factor=2.0)
    )


def test_dfl_bad_input():
    with pytest.raises(ValueError, match=r"target.*\(4,\)"):
        distribution_focal_loss(torch.randn(3, 17), torch.rand(4))
    with pytest.raises(ValueError, match="target"):
        distribution_focal_loss(torch.randn(2, 17), torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="bins"):
        distribution_focal_loss(torch.randn(2, 1), torch.rand(2))


# ---- the general form --------------------------------------------------------------------------


def test_gfl_general_form_specialises_to_qfl_and_dfl():
    # QFL: y_l = 0, y_r = 1, p_r = sigmoid(x), p_l = 1 - sigmoid(x), at every element
    x, labels, scores = _qfl_data()
    y = torch.zeros(N, C, dtype=torch.float64)
    fg = labels < C
    y[fg, labels[fg]] = scores[fg]
    general = generalized_focal_loss(
        F.logsigmoid(-x), F.logsigmoid(x), y, torch.zeros_like(y), torch.ones_like(y), beta=2.0, reduction="none"
    )
    torch.testing.assert_close(general, quality_focal_loss(x, labels, scores, reduction="none"))
    # DFL: beta = 0, the two neighbouring bins of the softmax
    xd = torch.randn(9, 17, dtype=torch.float64)
    t = torch.rand(9, dtype=torch.float64) * 15
    left = t.floor().long()
    log_s = F.log_softmax(xd, dim=1)
    general = generalized_focal_loss(
        log_s.gather(1, left[:, None]).squeeze(1),
        log_s.gather(1, left[:, None] + 1).squeeze(1),
        t,
        left.double(),
        left.double() + 1,
        beta=0.0,
        reduction="none",
    )
    torch.testing.assert_close(general, distribution_focal_loss(xd, t, reduction="none"))


def test_gfl_general_form_gradcheck_and_shapes():
    lp = torch.randn(6, dtype=torch.float64).sigmoid().log().requires_grad_()
    lq = torch.log1p(-lp.detach().exp()).requires_grad_()
    t = torch.rand(6, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda a, b: generalized_focal_loss(a, b, t, torch.zeros_like(t), torch.ones_like(t)), (lp, lq)
    )
    with pytest.raises(ValueError, match=r"target.*\(5,\)"):
        generalized_focal_loss(lp, lq, torch.rand(5, dtype=torch.float64), t, t)


def test_qfl_module_takes_a_labels_scores_target():
    x, labels, scores = _qfl_data()
    w = torch.rand(N, dtype=torch.float64)
    module = QualityFocalLoss(beta=2.0, loss_weight=1.5)
    torch.testing.assert_close(
        module(x, (labels, scores), weight=w, avg_factor=3.0),
        1.5 * quality_focal_loss(x, labels, scores, weight=w, avg_factor=3.0),
    )
    with pytest.raises(TypeError, match=r"target.*\(labels, scores\).*tensor of shape \(19,\)"):
        module(x, labels, scores)
    with pytest.raises(TypeError, match=r"target.*tuple of length 3"):
        module(x, (labels, scores, scores))


def test_dfl_compiled_equals_eager(compile_mode):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(301, 17, generator=gen) * 3
    target = torch.rand(301, generator=gen) * 16
    weight = torch.rand(301, generator=gen)
    for reduction in ("sum", "none"):
        results = []
        for mode in ["always", "never"]:
            backend.set_compile(mode)
            xx = x.clone().requires_grad_()
            loss = distribution_focal_loss(xx, target, weight=weight, reduction=reduction)
            loss.sum().backward()
            results.append((loss.detach(), xx.grad))
        torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-5, atol=1e-7)
