import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from balancedet.losses import backend
from balancedet.losses.cross_entropy import binary_cross_entropy, cross_entropy
from balancedet.losses.focal import (
    FocalLoss,
    focal_loss_star,
    prior_bias,
    sigmoid_focal_loss,
    softmax_focal_loss,
)
from tests.losses import references as ref

N, C = 23, 5


def _data(n=N, c=C, scale=3.0):
    x = torch.randn(n, c, dtype=torch.float64) * scale
    labels = torch.randint(0, c + 1, (n,))
    labels[0], labels[1] = c, 0  # at least one background and one positive row
    return x, labels


def _targets(kind, labels, c=C):
    if kind == "int":
        return labels, ref.one_hot(labels.numpy(), c)
    onehot = torch.tensor(ref.one_hot(labels.numpy(), c))
    if kind == "onehot":
        return onehot, onehot.numpy()
    soft = onehot * torch.rand(onehot.shape, dtype=torch.float64)
    return soft, soft.numpy()


def _weight(kind, n=N, c=C):
    if kind is None:
        return None
    shape = (n,) if kind == "row" else (n, c)
    return torch.rand(shape, dtype=torch.float64)


# ---- worked values: CE = -log(p_t) and FL = (1 - p_t)^2 CE (arXiv 1708.02002, eqs. 2 and 4), by hand ----


@pytest.mark.parametrize("p, ce, fl", [(0.1, 2.3026, 1.8651), (0.9, 0.1054, 0.001054)])
def test_worked_values_from_seed_003(p, ce, fl):
    x = torch.tensor([[math.log(p / (1 - p))]], dtype=torch.float64)
    label = torch.tensor([0])
    got_ce = sigmoid_focal_loss(x, label, alpha=None, gamma=0.0, reduction="sum")
    got_fl = sigmoid_focal_loss(x, label, alpha=None, gamma=2.0, reduction="sum")
    assert got_ce.item() == pytest.approx(ce, rel=5e-4)
    assert got_fl.item() == pytest.approx(fl, rel=5e-4)


def test_prior_bias():
    assert prior_bias(0.01) == pytest.approx(-math.log(99.0))
    assert torch.sigmoid(torch.tensor(prior_bias(0.01), dtype=torch.float64)).item() == pytest.approx(0.01)
    with pytest.raises(ValueError, match="pi"):
        prior_bias(0.0)


# ---- against the float64 reference ----------------------------------------------------------


@pytest.mark.parametrize("kind", ["int", "onehot", "soft"])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0, 3.5])
@pytest.mark.parametrize("alpha", [0.25, None])
@pytest.mark.parametrize("weight_kind", [None, "row", "full"])
def test_sigmoid_focal_matches_reference(kind, gamma, alpha, weight_kind):
    x, labels = _data()
    targets, y = _targets(kind, labels)
    w = _weight(weight_kind)
    elementwise = ref.focal(x.numpy(), y, alpha, gamma)
    wn = None if w is None else w.numpy()
    for reduction, avg in [("none", None), ("sum", None), ("mean", None), ("mean", 7.5)]:
        got = sigmoid_focal_loss(x, targets, alpha=alpha, gamma=gamma, weight=w, reduction=reduction, avg_factor=avg)
        expected = ref.reduce(elementwise, wn, reduction, avg)
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("kind", ["int", "soft"])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 3.5])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_sigmoid_focal_gradcheck(kind, gamma, reduction):
    x, labels = _data(n=9, c=4)
    targets, _ = _targets(kind, labels, c=4)
    w = torch.rand(9, dtype=torch.float64)
    x.requires_grad_()
    avg = 3.0 if reduction == "mean" else None
    fn = lambda x: sigmoid_focal_loss(x, targets, gamma=gamma, weight=w, reduction=reduction, avg_factor=avg)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))


def test_gradient_flows_to_a_weight_that_requires_grad():
    x, labels = _data()
    w = torch.rand(N, dtype=torch.float64, requires_grad=True)
    loss = sigmoid_focal_loss(x, labels, weight=w, reduction="sum")
    (g,) = torch.autograd.grad(loss, w)
    per_row = ref.focal(x.numpy(), ref.one_hot(labels.numpy(), C), 0.25, 2.0).sum(axis=1)
    np.testing.assert_allclose(g.numpy(), per_row, rtol=1e-10)


def test_fused_path_keeps_one_tensor_for_backward():
    x = torch.randn(200, 80, requires_grad=True)
    labels = torch.randint(0, 81, (200,))
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        sigmoid_focal_loss(x, labels, reduction="sum")
    assert len(saved) == 1 and saved[0].shape == (200, 80)


def test_compiled_fast_path_equals_eager(compile_mode):
    x = torch.randn(300, 11) * 3
    labels = torch.randint(0, 12, (300,))
    soft = torch.rand(300, 11)
    for targets, reduction in [(labels, "sum"), (soft, "none")]:
        backend.set_compile("always")
        xa = x.clone().requires_grad_()
        la = sigmoid_focal_loss(xa, targets, reduction=reduction, avg_factor=None)
        la.sum().backward()
        backend.set_compile("never")
        xb = x.clone().requires_grad_()
        lb = sigmoid_focal_loss(xb, targets, reduction=reduction)
        lb.sum().backward()
        torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-5, atol=1e-7)


def test_matches_torchvision_in_float32():
    from torchvision.ops import sigmoid_focal_loss as tv_focal

    x = (torch.randn(500, 20) * 2).requires_grad_()
    labels = torch.randint(0, 21, (500,))
    onehot = torch.tensor(ref.one_hot(labels.numpy(), 20), dtype=torch.float32)
    ours = sigmoid_focal_loss(x, labels, reduction="sum")
    (g_ours,) = torch.autograd.grad(ours, x)
    theirs = tv_focal(x, onehot, reduction="sum")
    (g_theirs,) = torch.autograd.grad(theirs, x)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=0)
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-5, atol=1e-7)


# ---- numerical safety -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["int", "soft"])
def test_extreme_logits_are_finite_and_the_loss_does_not_saturate(kind):
    x = torch.tensor([[100.0, -100.0, 50.0, -50.0]], requires_grad=True)
    label = torch.tensor([1])  # column 1 positive (logit -100: confidently wrong); the rest negative
    targets = label if kind == "int" else torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    loss = sigmoid_focal_loss(x, targets, alpha=0.25, gamma=2.0, reduction="none")
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(x.grad).all()
    # confidently wrong elements grow linearly with the logit: no log(FLT_MIN) clamp at ~87
    assert loss[0, 0].item() == pytest.approx(0.75 * 100.0, rel=1e-6)
    assert loss[0, 1].item() == pytest.approx(0.25 * 100.0, rel=1e-6)
    assert loss[0, 0].item() - loss[0, 2].item() == pytest.approx(0.75 * 50.0, rel=1e-6)
    assert x.grad[0, 0].item() == pytest.approx(0.75, rel=1e-6)
    assert x.grad[0, 1].item() == pytest.approx(-0.25, rel=1e-6)
    # confidently right elements have (almost) zero loss
    assert loss[0, 3].item() < 1e-20


def test_bf16_autocast_gives_finite_float32_loss_and_gradient():
    layer = torch.nn.Linear(8, 6)
    with torch.no_grad():
        layer.weight.mul_(40.0)  # logits of order +-100
    feats = torch.randn(64, 8)
    labels = torch.randint(0, 7, (64,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = layer(feats)
        assert logits.dtype == torch.bfloat16
        loss = sigmoid_focal_loss(logits, labels, avg_factor=4.0)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(layer.weight.grad).all()
    expected = sigmoid_focal_loss(logits.detach().float(), labels, avg_factor=4.0)
    torch.testing.assert_close(loss.detach(), expected)


# ---- edge cases -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["int", "soft"])
def test_empty_input(kind):
    x = torch.zeros(0, C, requires_grad=True)
    targets = torch.zeros(0, dtype=torch.long) if kind == "int" else torch.zeros(0, C)
    for reduction in ["mean", "sum"]:
        loss = sigmoid_focal_loss(x, targets, reduction=reduction)
        assert loss.item() == 0.0
        loss.backward()
    assert sigmoid_focal_loss(x, targets, reduction="none").shape == (0, C)


def test_no_positives_is_all_negative_loss():
    x, _ = _data()
    labels = torch.full((N,), C)
    got = sigmoid_focal_loss(x, labels, reduction="sum")
    expected = ref.focal(x.numpy(), np.zeros((N, C)), 0.25, 2.0).sum()
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_no_grad_forward_equals_grad_forward():
    x, labels = _data()
    with torch.no_grad():
        a = sigmoid_focal_loss(x, labels, reduction="none")
    b = sigmoid_focal_loss(x.requires_grad_(), labels, reduction="none")
    torch.testing.assert_close(a, b.detach())


def test_tensor_avg_factor():
    x, labels = _data()
    a = sigmoid_focal_loss(x, labels, avg_factor=torch.tensor(4.0, dtype=torch.float64))
    b = sigmoid_focal_loss(x, labels, reduction="sum") / 4.0
    torch.testing.assert_close(a, b)


# ---- bad input --------------------------------------------------------------------------------


def test_bad_input_names_argument_and_shape():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"targets.*\(4,\)"):
        sigmoid_focal_loss(x, torch.tensor([0, 1, 2, 4]))
    with pytest.raises(ValueError, match=r"targets.*\(4,\)"):
        sigmoid_focal_loss(x, torch.tensor([0, -1, 2, 3]))
    with pytest.raises(ValueError, match=r"targets.*\(4,\)"):
        sigmoid_focal_loss(x, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(4, 2\)"):
        sigmoid_focal_loss(x, torch.zeros(4, 2))
    nan_targets = torch.zeros(4, 3)
    nan_targets[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"targets.*\(4, 3\)"):
        sigmoid_focal_loss(x, nan_targets)
    with pytest.raises(ValueError, match=r"weight.*\(5,\)"):
        sigmoid_focal_loss(x, torch.tensor([0, 1, 2, 3]), weight=torch.ones(5))
    with pytest.raises(ValueError, match="logits"):
        sigmoid_focal_loss(torch.randn(4), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(TypeError, match="targets"):
        sigmoid_focal_loss(x, torch.tensor([True, False, True, True]))
    with pytest.raises(ValueError, match="avg_factor"):
        sigmoid_focal_loss(x, torch.tensor([0, 1, 2, 3]), reduction="sum", avg_factor=2.0)
    with pytest.raises(ValueError, match="reduction"):
        sigmoid_focal_loss(x, torch.tensor([0, 1, 2, 3]), reduction="avg")


# ---- FL*, softmax focal, CE baselines, modules ------------------------------------------------


@pytest.mark.parametrize("gamma, beta", [(2.0, 1.0), (4.0, 0.0), (1.0, -1.0)])
def test_focal_loss_star_matches_reference_and_gradcheck(gamma, beta):
    x, labels = _data()
    y = ref.one_hot(labels.numpy(), C)
    got = focal_loss_star(x, labels, gamma=gamma, beta=beta, reduction="none")
    np.testing.assert_allclose(got.numpy(), ref.focal_star(x.numpy(), y, gamma, beta), rtol=1e-8)
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: focal_loss_star(x, labels, gamma=gamma, beta=beta), (x,))


@pytest.mark.parametrize("gamma", [0.0, 2.0, 0.5])
@pytest.mark.parametrize("alpha", [None, 0.25])
def test_softmax_focal_matches_reference(gamma, alpha):
    x = torch.randn(N, C + 1, dtype=torch.float64) * 2
    labels = torch.randint(0, C + 1, (N,))
    got = softmax_focal_loss(x, labels, gamma=gamma, alpha=alpha, reduction="none")
    np.testing.assert_allclose(got.numpy(), ref.softmax_focal(x.numpy(), labels.numpy(), gamma, alpha), rtol=1e-10)
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: softmax_focal_loss(x, labels, gamma=gamma, alpha=alpha), (x,))


def test_softmax_focal_per_class_alpha_and_bad_labels():
    x = torch.randn(6, 4, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    alpha = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    got = softmax_focal_loss(x, labels, gamma=0.0, alpha=alpha, reduction="none")
    expected = F.cross_entropy(x, labels, reduction="none") * alpha[labels]
    torch.testing.assert_close(got, expected)
    with pytest.raises(ValueError, match=r"labels.*\(6,\)"):
        softmax_focal_loss(x, torch.tensor([0, 1, 2, 4, 0, 1]))


def test_cross_entropy_baselines():
    x, labels = _data()
    y = torch.tensor(ref.one_hot(labels.numpy(), C))
    torch.testing.assert_close(binary_cross_entropy(x, labels), F.binary_cross_entropy_with_logits(x, y))
    alpha_t = 0.75 * y + 0.25 * (1 - y)
    torch.testing.assert_close(
        binary_cross_entropy(x, labels, alpha=0.75, reduction="sum"),
        (F.binary_cross_entropy_with_logits(x, y, reduction="none") * alpha_t).sum(),
    )
    xs = torch.randn(N, C + 1, dtype=torch.float64)
    torch.testing.assert_close(cross_entropy(xs, labels), F.cross_entropy(xs, labels))


def test_focal_module_scales_by_loss_weight():
    x, labels = _data()
    module = FocalLoss(alpha=0.5, gamma=1.0, loss_weight=2.0)
    expected = 2.0 * sigmoid_focal_loss(x, labels, alpha=0.5, gamma=1.0, avg_factor=3.0)
    torch.testing.assert_close(module(x, labels, avg_factor=3.0), expected)
