import math

import numpy as np
import pytest
import torch

from balancedet.losses.balanced_l1 import BalancedL1Loss, balanced_l1_loss
from tests.losses import references as ref

N = 23
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
B_DEFAULT = math.e**3 - 1  # e^(gamma / alpha) - 1 for alpha = 0.5, gamma = 1.5


def paper_balanced_l1(x, alpha=0.5, gamma=1.5, beta=1.0):
    """Eq. 8 of arXiv 1904.02701 in float64, evaluated at |x| / beta and scaled by beta."""
    b = np.exp(gamma / alpha) - 1
    t = np.abs(np.asarray(x, dtype=np.float64)) / beta
    inside = alpha / b * (b * t + 1) * np.log(b * t + 1) - alpha * t
    outside = gamma * t + gamma / b - alpha
    return beta * np.where(t < 1, inside, outside)


def _data(shape=(N, 4), beta=1.0, dtype=torch.float64):
    """Differences spread over both branches, away from the kinks at 0 and at |x| = beta."""
    target = torch.randn(shape, dtype=dtype)
    magnitude = torch.rand(shape, dtype=dtype) * 2.8 * beta + 0.05 * beta
    magnitude = torch.where((magnitude - beta).abs() < 0.02 * beta, magnitude + 0.05 * beta, magnitude)
    sign = torch.where(torch.rand(shape) < 0.5, -1.0, 1.0).to(dtype)
    return target + sign * magnitude, target


def _value_and_grad(x, **kwargs):
    x = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    loss = balanced_l1_loss(x, torch.zeros_like(x), reduction="none", **kwargs)
    (g,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach().numpy(), g.numpy()


@pytest.mark.parametrize("beta", [1.0, 0.11, 0.5])
@pytest.mark.parametrize(("alpha", "gamma"), [(0.5, 1.5), (0.3, 1.0)])
@pytest.mark.parametrize("weight_kind", [None, "row", "full"])
def test_matches_paper_reference(beta, alpha, gamma, weight_kind):
    pred, target = _data(beta=beta)
    w = None if weight_kind is None else torch.rand((N,) if weight_kind == "row" else (N, 4), dtype=torch.float64)
    elementwise = paper_balanced_l1((pred - target).numpy(), alpha, gamma, beta)
    wn = None if w is None else w.numpy()
    for reduction, avg in [("none", None), ("sum", None), ("mean", None), ("mean", 3.0)]:
        got = balanced_l1_loss(
            pred, target, alpha=alpha, gamma=gamma, beta=beta, weight=w, reduction=reduction, avg_factor=avg
        )
        np.testing.assert_allclose(got.numpy(), ref.reduce(elementwise, wn, reduction, avg), rtol=1e-12, atol=1e-14)


def test_avg_factor_as_tensor():
    pred, target = _data()
    expected = paper_balanced_l1((pred - target).numpy()).sum() / 7.0
    got = balanced_l1_loss(pred, target, avg_factor=torch.tensor(7.0, dtype=torch.float64))
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_beta_one_is_the_papers_closed_form():
    # eq. 8 as printed: alpha / b (b|x| + 1) ln(b|x| + 1) - alpha |x| for |x| < 1, else gamma |x| + C
    a = np.abs(np.linspace(-3.0, 3.0, 601))
    b = B_DEFAULT
    expected = np.where(a < 1, 0.5 / b * (b * a + 1) * np.log(b * a + 1) - 0.5 * a, 1.5 * a + 1.5 / b - 0.5)
    x = torch.tensor(np.linspace(-3.0, 3.0, 601))
    got = balanced_l1_loss(x, torch.zeros_like(x), reduction="none")
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-15)


def test_hand_worked_values():
    # b = e^3 - 1 = 19.085537, alpha / b = 0.0261978.
    # x = 0.5: b x + 1 = 10.542768, ln(10.542768) = 2.355440,
    #          0.0261978 * 10.542768 * 2.355440 - 0.5 * 0.5 = 0.650568 - 0.25 = 0.400568;
    #          gradient alpha ln(b x + 1) = 0.5 * 2.355440 = 1.177720.
    # x = 2:   gamma x + gamma / b - alpha = 3 + 0.078594 - 0.5 = 2.578594; gradient gamma = 1.5.
    # x = 0:   0, gradient 0.
    loss, grad = _value_and_grad([0.5, 2.0, -2.0, 0.0])
    np.testing.assert_allclose(loss, [0.400568, 2.578594, 2.578594, 0.0], atol=1e-6)
    np.testing.assert_allclose(grad, [1.177720, 1.5, -1.5, 0.0], atol=1e-6)


@pytest.mark.parametrize("beta", [1.0, 0.11])
def test_value_and_gradient_continuous_at_beta(beta):
    h = 1e-7 * beta
    values, grads = _value_and_grad([beta - h, beta + h, -beta + h, -beta - h, beta], beta=beta)
    np.testing.assert_allclose(values[0], values[1], atol=1e-6 * beta)
    np.testing.assert_allclose(grads[0], grads[1], atol=1e-4)
    np.testing.assert_allclose(grads[2], grads[3], atol=1e-4)
    np.testing.assert_allclose(grads[[0, 1, 4]], 1.5, atol=1e-4)  # alpha ln(b + 1) = gamma
    np.testing.assert_allclose(grads[[2, 3]], -1.5, atol=1e-4)


def test_mmdetection_form_has_the_gradient_jump_we_avoid():
    # mmdetection: alpha / b (b d + 1) ln(b d / beta + 1) - alpha d inside, gamma d + gamma / b - alpha outside
    beta, b = 0.11, B_DEFAULT

    def mmdet_inside(d):
        return 0.5 / b * (b * d + 1) * math.log(b * d / beta + 1) - 0.5 * d

    h = 1e-8
    assert (mmdet_inside(beta) - mmdet_inside(beta - h)) / h == pytest.approx(1.70, abs=0.01)
    _, grads = _value_and_grad([beta - 1e-9, beta + 1e-9], beta=beta)
    np.testing.assert_allclose(grads, [1.5, 1.5], atol=1e-6)


@pytest.mark.parametrize("beta", [1.0, 0.11, 3.0])
@pytest.mark.parametrize(("alpha", "gamma"), [(0.5, 1.5), (0.2, 2.0)])
def test_gradient_magnitude_alpha_log_inside_gamma_outside(beta, alpha, gamma):
    b = math.expm1(gamma / alpha)
    t = np.array([0.1, 0.5, 0.9, 1.5, 4.0, 1e6])
    _, grads = _value_and_grad(list(-t * beta), alpha=alpha, gamma=gamma, beta=beta)
    expected = np.where(t < 1, alpha * np.log(b * t + 1), gamma)
    np.testing.assert_allclose(grads, -expected, rtol=1e-10)


@pytest.mark.parametrize("beta", [1.0, 0.11])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_gradcheck(beta, reduction):
    pred, target = _data(shape=(6, 4), beta=beta)
    pred.requires_grad_()
    w = torch.rand(6, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda p: balanced_l1_loss(p, target, beta=beta, weight=w, reduction=reduction), (pred,)
    )


def test_gradcheck_weight_and_target():
    pred, target = _data(shape=(5, 4))
    pred.requires_grad_()
    target.requires_grad_()
    w = torch.rand(5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p, t, w: balanced_l1_loss(p, t, weight=w, avg_factor=2.0), (pred, target, w))


def test_beta_zero_is_gamma_times_l1():
    pred, target = _data()
    got = balanced_l1_loss(pred, target, beta=0.0, reduction="none")
    torch.testing.assert_close(got, 1.5 * (pred - target).abs(), rtol=0, atol=0)
    # and the limit of small beta
    small = balanced_l1_loss(pred, target, beta=1e-9, reduction="none")
    torch.testing.assert_close(small, got, rtol=1e-8, atol=1e-8)


def test_huge_residuals_stay_finite_in_float32():
    x = torch.tensor([1e30, -1e30, 3e38], requires_grad=True)
    loss = balanced_l1_loss(x, torch.zeros(3), reduction="none")
    loss.sum().backward()
    assert torch.isfinite(loss[:2]).all()
    torch.testing.assert_close(x.grad, torch.tensor([1.5, -1.5, 1.5]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_under_autocast_compute_in_float32(dtype):
    pred, target = _data(shape=(64, 4))
    p, t = pred.to(dtype), target.to(dtype)
    p.requires_grad_()
    with torch.autocast("cpu", dtype=dtype):
        loss = balanced_l1_loss(p, t, reduction="none")
    assert loss.dtype == torch.float32
    loss.sum().backward()
    assert p.grad.dtype == dtype and torch.isfinite(p.grad.float()).all()
    # exact to float32 on the half-rounded inputs
    expected = paper_balanced_l1((p.detach().double() - t.double()).numpy())
    np.testing.assert_allclose(loss.detach().double().numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_float32_on_device_matches_float64_without_host_sync(device):
    pred, target = _data(shape=(300, 4), beta=0.11)
    w = torch.rand(300, dtype=torch.float64)
    expected = ref.reduce(paper_balanced_l1((pred - target).numpy(), beta=0.11), w.numpy(), "mean", 9.0)
    p = pred.float().to(device).requires_grad_()
    args = (target.float().to(device),)
    kwargs = dict(beta=0.11, weight=w.float().to(device), avg_factor=torch.tensor(9.0, device=device))
    balanced_l1_loss(p, *args, **kwargs)
    if device == "cuda":
        torch.cuda.set_sync_debug_mode("error")
    try:
        loss = balanced_l1_loss(p, *args, **kwargs)
        loss.backward()
    finally:
        if device == "cuda":
            torch.cuda.set_sync_debug_mode("default")
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_empty_gives_zero():
    pred = torch.zeros(0, 4, requires_grad=True)
    for reduction in ["mean", "sum"]:
        loss = balanced_l1_loss(pred, torch.zeros(0, 4), reduction=reduction)
        assert loss.shape == () and loss.item() == 0.0
        loss.backward()
    assert balanced_l1_loss(pred, torch.zeros(0, 4), reduction="none").shape == (0, 4)


def test_bad_input():
    pred = torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"pred and target.*\(3, 4\).*\(3, 5\)"):
        balanced_l1_loss(pred, torch.randn(3, 5))
    with pytest.raises(ValueError, match=r"target \(shape \(3, 4\)\).*NaN"):
        balanced_l1_loss(pred, torch.tensor([[0.0, 1.0, float("nan"), 0.0]] * 3))
    with pytest.raises(ValueError, match=r"weight.*\(3, 4\).*\(2,\)"):
        balanced_l1_loss(pred, torch.randn(3, 4), weight=torch.rand(2))
    with pytest.raises(ValueError, match=r"alpha.*-0\.5"):
        balanced_l1_loss(pred, torch.randn(3, 4), alpha=-0.5)
    with pytest.raises(ValueError, match=r"gamma.*0"):
        balanced_l1_loss(pred, torch.randn(3, 4), gamma=0.0)
    with pytest.raises(ValueError, match=r"beta.*-1"):
        balanced_l1_loss(pred, torch.randn(3, 4), beta=-1.0)
    with pytest.raises(ValueError, match="reduction"):
        balanced_l1_loss(pred, torch.randn(3, 4), reduction="avg")
    with pytest.raises(TypeError, match=r"target.*int64"):
        balanced_l1_loss(pred, torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="beta"):
        BalancedL1Loss(beta=-0.1)


def test_module():
    pred, target = _data()
    w = torch.rand(N, dtype=torch.float64)
    module = BalancedL1Loss(alpha=0.3, gamma=1.0, beta=0.5, loss_weight=2.0)
    expected = 2.0 * balanced_l1_loss(pred, target, alpha=0.3, gamma=1.0, beta=0.5, weight=w, avg_factor=4.0)
    torch.testing.assert_close(module(pred, target, weight=w, avg_factor=4.0), expected)
    assert BalancedL1Loss(reduction="none")(pred, target).shape == (N, 4)
