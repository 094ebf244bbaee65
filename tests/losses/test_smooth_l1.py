import numpy as np
import pytest
import torch

from balancedet.losses.smooth_l1 import L1Loss, SmoothL1Loss, l1_loss, smooth_l1_loss
from tests.losses import references as ref

N = 21
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def huber(x, beta):
    """Fast R-CNN eq. 3 with threshold beta: 0.5 x^2 / beta if |x| < beta else |x| - 0.5 beta."""
    a = np.abs(np.asarray(x, dtype=np.float64))
    if beta == 0:
        return a
    return np.where(a < beta, 0.5 * a * a / beta, a - 0.5 * beta)


def _data(shape=(N, 4), beta=1.0):
    """Differences on both sides of beta, away from the kinks at 0 and at |x| = beta."""
    scale = beta if beta > 0 else 1.0
    target = torch.randn(shape, dtype=torch.float64)
    magnitude = torch.rand(shape, dtype=torch.float64) * 2.8 * scale + 0.05 * scale
    magnitude = torch.where((magnitude - scale).abs() < 0.02 * scale, magnitude + 0.05 * scale, magnitude)
    sign = torch.where(torch.rand(shape) < 0.5, -1.0, 1.0).to(torch.float64)
    return target + sign * magnitude, target


@pytest.mark.parametrize("beta", [1.0, 1.0 / 9.0, 0.0])
@pytest.mark.parametrize("weight_kind", [None, "row", "full"])
def test_smooth_l1_matches_reference(beta, weight_kind):
    pred, target = _data(beta=beta)
    w = None if weight_kind is None else torch.rand((N,) if weight_kind == "row" else (N, 4), dtype=torch.float64)
    elementwise = huber((pred - target).numpy(), beta)
    wn = None if w is None else w.numpy()
    for reduction, avg in [("none", None), ("sum", None), ("mean", None), ("mean", 3.0)]:
        got = smooth_l1_loss(pred, target, beta=beta, weight=w, reduction=reduction, avg_factor=avg)
        np.testing.assert_allclose(got.numpy(), ref.reduce(elementwise, wn, reduction, avg), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("weight_kind", [None, "row", "full"])
def test_l1_matches_reference(weight_kind):
    pred, target = _data()
    w = None if weight_kind is None else torch.rand((N,) if weight_kind == "row" else (N, 4), dtype=torch.float64)
    elementwise = np.abs((pred - target).numpy())
    wn = None if w is None else w.numpy()
    for reduction, avg in [("none", None), ("sum", None), ("mean", None), ("mean", torch.tensor(3.0))]:
        got = l1_loss(pred, target, weight=w, reduction=reduction, avg_factor=avg)
        expected = ref.reduce(elementwise, wn, reduction, None if avg is None else 3.0)
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-14)


def test_hand_worked_values():
    # beta = 1:   x = 0.5 -> 0.5 * 0.25 / 1 = 0.125;  x = -2 -> 2 - 0.5 = 1.5
    # beta = 1/9: x = 0.05 -> 0.5 * 0.0025 * 9 = 0.01125;  x = 1 -> 1 - 1/18 = 0.944444
    x = torch.tensor([0.5, -2.0])
    np.testing.assert_allclose(smooth_l1_loss(x, torch.zeros(2), reduction="none").numpy(), [0.125, 1.5], rtol=1e-6)
    y = torch.tensor([0.05, 1.0])
    got = smooth_l1_loss(y, torch.zeros(2), beta=1 / 9, reduction="none")
    np.testing.assert_allclose(got.numpy(), [0.01125, 17 / 18], rtol=1e-6)
    assert l1_loss(x, torch.zeros(2), reduction="sum").item() == pytest.approx(2.5)


@pytest.mark.parametrize("beta", [1.0, 1.0 / 9.0, 0.0])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_gradcheck(beta, reduction):
    pred, target = _data(shape=(6, 4), beta=beta)
    pred.requires_grad_()
    target.requires_grad_()
    w = torch.rand(6, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda p, t, w: smooth_l1_loss(p, t, beta=beta, weight=w, reduction=reduction), (pred, target, w)
    )
    assert torch.autograd.gradcheck(lambda p, t, w: l1_loss(p, t, weight=w, reduction=reduction), (pred, target, w))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_under_autocast_compute_in_float32(dtype):
    pred, target = _data(shape=(64, 4), beta=1 / 9)
    p, t = pred.to(dtype), target.to(dtype)
    p.requires_grad_()
    with torch.autocast("cpu", dtype=dtype):
        loss = smooth_l1_loss(p, t, beta=1 / 9, reduction="none")
        plain = l1_loss(p, t, reduction="none")
    assert loss.dtype == torch.float32 and plain.dtype == torch.float32
    (loss.sum() + plain.sum()).backward()
    assert p.grad.dtype == dtype and torch.isfinite(p.grad.float()).all()
    diff = (p.detach().double() - t.double()).numpy()
    np.testing.assert_allclose(loss.detach().double().numpy(), huber(diff, 1 / 9), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(plain.detach().double().numpy(), np.abs(diff), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
def test_float32_on_device_matches_float64_without_host_sync(device):
    pred, target = _data(shape=(300, 4), beta=1 / 9)
    w = torch.rand(300, 4, dtype=torch.float64)
    diff = (pred - target).numpy()
    expected = ref.reduce(huber(diff, 1 / 9) + np.abs(diff), w.numpy(), "mean", 9.0)
    p = pred.float().to(device).requires_grad_()
    t = target.float().to(device)
    kwargs = dict(weight=w.float().to(device), avg_factor=torch.tensor(9.0, device=device))
    smooth_l1_loss(p, t, beta=1 / 9, **kwargs)
    if device == "cuda":
        torch.cuda.set_sync_debug_mode("error")
    try:
        loss = smooth_l1_loss(p, t, beta=1 / 9, **kwargs) + l1_loss(p, t, **kwargs)
        loss.backward()
    finally:
        if device == "cuda":
            torch.cuda.set_sync_debug_mode("default")
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_empty_gives_zero():
    pred = torch.zeros(0, 4, requires_grad=True)
    for fn in (smooth_l1_loss, l1_loss):
        for reduction in ["mean", "sum"]:
            loss = fn(pred, torch.zeros(0, 4), reduction=reduction)
            assert loss.shape == () and loss.item() == 0.0
            loss.backward()


def test_bad_input():
    pred = torch.randn(3, 4)
    for fn in (smooth_l1_loss, l1_loss):
        with pytest.raises(ValueError, match=r"pred and target.*\(3, 4\).*\(4, 3\)"):
            fn(pred, torch.randn(4, 3))
        with pytest.raises(ValueError, match=r"target \(shape \(3, 4\)\).*NaN"):
            fn(pred, torch.tensor([[0.0, 1.0, float("nan"), 0.0]] * 3))
        with pytest.raises(ValueError, match=r"weight.*\(3, 4\).*\(3, 2\)"):
            fn(pred, torch.randn(3, 4), weight=torch.rand(3, 2))
        with pytest.raises(ValueError, match="avg_factor"):
            fn(pred, torch.randn(3, 4), reduction="sum", avg_factor=2.0)
        with pytest.raises(TypeError, match=r"pred.*int64"):
            fn(pred.long(), torch.randn(3, 4))
    with pytest.raises(ValueError, match=r"beta.*-0\.1"):
        smooth_l1_loss(pred, torch.randn(3, 4), beta=-0.1)
    with pytest.raises(ValueError, match="beta"):
        SmoothL1Loss(beta=-1.0)
    with pytest.raises(ValueError, match="reduction"):
        L1Loss(reduction="avg")


def test_modules():
    pred, target = _data()
    w = torch.rand(N, dtype=torch.float64)
    smooth = SmoothL1Loss(beta=1 / 9, loss_weight=2.0)
    torch.testing.assert_close(
        smooth(pred, target, weight=w, avg_factor=4.0),
        2.0 * smooth_l1_loss(pred, target, beta=1 / 9, weight=w, avg_factor=4.0),
    )
    plain = L1Loss(reduction="sum", loss_weight=0.5)
    torch.testing.assert_close(plain(pred, target), 0.5 * (pred - target).abs().sum())
