import math

import numpy as np
import pytest
import torch
import torchvision.ops

from balancedet.losses.iou import GIoULoss, IoULoss, giou_loss, iou_loss
from tests.losses import references as ref

N = 25
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
MODES = ["log", "linear", "square"]


def pair_iou_giou(a, b):
    """IoU and GIoU of two xyxy boxes, Algorithm 1 of arXiv 1902.09630, in Python floats."""
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = area_a + area_b - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    iou = inter / union
    return iou, iou - (hull - union) / hull


def reference_iou_loss(pred, target, mode):
    """UnitBox's -ln(IoU) and the linear / square variants, pair by pair."""
    out = []
    for a, b in zip(pred.tolist(), target.tolist(), strict=True):
        iou, _ = pair_iou_giou(a, b)
        out.append({"log": -math.log(iou), "linear": 1 - iou, "square": 1 - iou**2}[mode])
    return np.array(out)


def reference_giou_loss(pred, target):
    return np.array([1 - pair_iou_giou(a, b)[1] for a, b in zip(pred.tolist(), target.tolist(), strict=True)])


def _boxes(n=N, overlapping=True, dtype=torch.float64):
    """Boxes of side 1..5 with distinct coordinates; targets jittered so every pair overlaps (or not)."""
    xy = torch.rand(n, 2, dtype=dtype) * 10
    wh = torch.rand(n, 2, dtype=dtype) * 4 + 1
    target = torch.cat([xy, xy + wh], dim=1)
    shift = (torch.rand(n, 2, dtype=dtype) - 0.5) * wh * (0.8 if overlapping else 0.0)
    if not overlapping:
        shift = shift + wh * 1.5
    scale = torch.rand(n, 2, dtype=dtype) * 0.6 + 0.7
    centre = xy + wh / 2 + shift
    half = wh * scale / 2
    return torch.cat([centre - half, centre + half], dim=1), target


def _reductions():
    return [("none", None), ("sum", None), ("mean", None), ("mean", 3.0)]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("weight_kind", [None, "row", "full"])
def test_iou_loss_matches_reference(mode, weight_kind):
    pred, target = _boxes()
    w = None if weight_kind is None else torch.rand((N,) if weight_kind == "row" else (N, 4), dtype=torch.float64)
    elementwise = reference_iou_loss(pred, target, mode)
    wn = None if w is None else (w.numpy() if w.dim() == 1 else w.numpy().mean(axis=1))
    for reduction, avg in _reductions():
        got = iou_loss(pred, target, mode=mode, weight=w, reduction=reduction, avg_factor=avg)
        np.testing.assert_allclose(got.numpy(), ref.reduce(elementwise, wn, reduction, avg), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("overlapping", [True, False])
@pytest.mark.parametrize("weight_kind", [None, "row", "full"])
def test_giou_loss_matches_reference(overlapping, weight_kind):
    pred, target = _boxes(overlapping=overlapping)
    w = None if weight_kind is None else torch.rand((N,) if weight_kind == "row" else (N, 4), dtype=torch.float64)
    elementwise = reference_giou_loss(pred, target)
    wn = None if w is None else (w.numpy() if w.dim() == 1 else w.numpy().mean(axis=1))
    for reduction, avg in _reductions():
        got = giou_loss(pred, target, weight=w, reduction=reduction, avg_factor=avg)
        np.testing.assert_allclose(got.numpy(), ref.reduce(elementwise, wn, reduction, avg), rtol=1e-7, atol=1e-7)


def test_giou_loss_equals_torchvision_values_and_gradients():
    pred, target = _boxes(n=40)
    pred[20:], target[20:] = _boxes(n=20, overlapping=False)
    ours_p = pred.clone().requires_grad_()
    ours = giou_loss(ours_p, target, reduction="none")
    ours.sum().backward()
    tv_p = pred.clone().requires_grad_()
    tv = torchvision.ops.generalized_box_iou_loss(tv_p, target, reduction="none")
    tv.sum().backward()
    torch.testing.assert_close(ours, tv, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(ours_p.grad, tv_p.grad, rtol=1e-10, atol=1e-12)


def test_full_weight_is_the_mean_over_coordinates():
    pred, target = _boxes()
    w = torch.rand(N, 4, dtype=torch.float64)
    for fn in (iou_loss, giou_loss):
        torch.testing.assert_close(
            fn(pred, target, weight=w, reduction="none"), fn(pred, target, weight=w.mean(1), reduction="none")
        )


def test_identical_boxes_give_zero():
    _, target = _boxes()
    for mode in MODES:
        np.testing.assert_allclose(iou_loss(target, target, mode=mode, reduction="none").numpy(), 0.0, atol=1e-6)
    np.testing.assert_allclose(giou_loss(target, target, reduction="none").numpy(), 0.0, atol=1e-6)


def test_hand_worked_pairs():
    # [0,0,2,2] vs [1,1,3,3]: intersection 1, union 4 + 4 - 1 = 7, IoU 1/7, enclosing box 3 x 3 = 9,
    #   GIoU = 1/7 - (9 - 7)/9 = -5/63, loss 68/63 = 1.079365; -ln(1/7) = ln 7 = 1.945910;
    #   linear 6/7; square 1 - 1/49 = 48/49.
    # [0,0,2,2] vs [0,0,2,1]: intersection 2, union 4, IoU 1/2, enclosing box = the first, GIoU 1/2:
    #   loss 0.5; -ln(1/2) = 0.693147; linear 0.5; square 0.75.
    # [0,0,1,1] vs [2,0,3,1] (disjoint): IoU 0, union 2, enclosing 3 x 1 = 3, GIoU = -1/3, loss 4/3.
    pred = torch.tensor([[0.0, 0, 2, 2], [0, 0, 2, 2], [0, 0, 1, 1]], dtype=torch.float64)
    target = torch.tensor([[1.0, 1, 3, 3], [0, 0, 2, 1], [2, 0, 3, 1]], dtype=torch.float64)
    np.testing.assert_allclose(giou_loss(pred, target, reduction="none").numpy(), [68 / 63, 0.5, 4 / 3], rtol=1e-6)
    two = (pred[:2], target[:2])
    np.testing.assert_allclose(iou_loss(*two, reduction="none").numpy(), [1.945910, 0.693147], rtol=1e-6)
    np.testing.assert_allclose(iou_loss(*two, mode="linear", reduction="none").numpy(), [6 / 7, 0.5], rtol=1e-6)
    np.testing.assert_allclose(iou_loss(*two, mode="square", reduction="none").numpy(), [48 / 49, 0.75], rtol=1e-6)


def test_disjoint_boxes_give_giou_loss_between_one_and_two():
    pred, target = _boxes(n=50, overlapping=False)
    loss = giou_loss(pred, target, reduction="none")
    assert ((loss > 1) & (loss < 2)).all(), loss
    # the IoU loss of a disjoint pair is -ln(eps), finite
    np.testing.assert_allclose(iou_loss(pred, target, eps=1e-6, reduction="none").numpy(), -math.log(1e-6))
    np.testing.assert_allclose(iou_loss(pred, target, mode="linear", reduction="none").numpy(), 1.0)


def test_degenerate_boxes_give_finite_loss_and_gradient():
    pred = torch.tensor(
        [[1.0, 1, 1, 1], [1, 0, 1, 2], [1, 1, 1, 1], [5, 5, 5, 5], [0, 0, 2, 2]], dtype=torch.float64
    ).requires_grad_()
    target = torch.tensor([[0.0, 0, 2, 2], [0, 0, 2, 2], [1, 1, 1, 1], [0, 0, 1, 1], [3, 3, 3, 3]], dtype=torch.float64)
    for loss_fn in [lambda p: giou_loss(p, target, reduction="none")] + [
        lambda p, m=m: iou_loss(p, target, mode=m, reduction="none") for m in MODES
    ]:
        for dtype in (torch.float64, torch.float32):
            p = pred.detach().to(dtype).requires_grad_()
            loss = loss_fn(p)
            (g,) = torch.autograd.grad(loss.sum(), p)
            assert torch.isfinite(loss).all() and torch.isfinite(g).all(), (loss, g)
    # a point inside a box: IoU 0, enclosing box = the box, GIoU 0, loss 1
    assert giou_loss(pred[:1], target[:1]).item() == pytest.approx(1.0)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_gradcheck(reduction):
    pred, target = _boxes(n=6)
    pred[3:], target[3:] = _boxes(n=3, overlapping=False)  # GIoU's enclosing-box term alone
    pred.requires_grad_()
    w = torch.rand(6, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda p: giou_loss(p, target, weight=w, reduction=reduction), (pred,))
    overlapping = pred[:3].detach().requires_grad_()
    for mode in MODES:
        assert torch.autograd.gradcheck(
            lambda p, m=mode: iou_loss(p, target[:3], mode=m, weight=w[:3, 0], reduction=reduction), (overlapping,)
        )


def test_gradcheck_target_and_weight():
    pred, target = _boxes(n=4)
    pred.requires_grad_()
    target.requires_grad_()
    w = torch.rand(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p, t, w: giou_loss(p, t, weight=w, avg_factor=2.0), (pred, target, w))
    assert torch.autograd.gradcheck(lambda p, t, w: iou_loss(p, t, weight=w, avg_factor=2.0), (pred, target, w))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_under_autocast_compute_in_float32(dtype):
    pred, target = _boxes(n=64)
    p, t = pred.to(dtype), target.to(dtype)
    p.requires_grad_()
    with torch.autocast("cpu", dtype=dtype):
        giou = giou_loss(p, t, reduction="none")
        iou = iou_loss(p, t, reduction="none")
    assert giou.dtype == torch.float32 and iou.dtype == torch.float32
    (giou.sum() + iou.sum()).backward()
    assert p.grad.dtype == dtype and torch.isfinite(p.grad.float()).all()
    pd, td = p.detach().double(), t.double()
    np.testing.assert_allclose(giou.detach().double().numpy(), reference_giou_loss(pd, td), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(iou.detach().double().numpy(), reference_iou_loss(pd, td, "log"), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_float32_on_device_matches_float64_without_host_sync(device):
    pred, target = _boxes(n=300)
    w = torch.rand(300, 4, dtype=torch.float64)
    wn = w.numpy().mean(axis=1)
    elementwise = reference_giou_loss(pred, target) + reference_iou_loss(pred, target, "log")
    expected = ref.reduce(elementwise, wn, "mean", 9.0)
    p = pred.float().to(device).requires_grad_()
    t = target.float().to(device)
    kwargs = dict(weight=w.float().to(device), avg_factor=torch.tensor(9.0, device=device))
    giou_loss(p, t, **kwargs)
    if device == "cuda":
        torch.cuda.set_sync_debug_mode("error")
    try:
        loss = giou_loss(p, t, **kwargs) + iou_loss(p, t, **kwargs)
        loss.backward()
    finally:
        if device == "cuda":
            torch.cuda.set_sync_debug_mode("default")
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_empty_gives_zero():
    pred = torch.zeros(0, 4, requires_grad=True)
    for fn in (iou_loss, giou_loss):
        for reduction in ["mean", "sum"]:
            loss = fn(pred, torch.zeros(0, 4), weight=torch.zeros(0, 4), reduction=reduction)
            assert loss.shape == () and loss.item() == 0.0
            loss.backward()
        assert fn(pred, torch.zeros(0, 4), reduction="none").shape == (0,)


def test_bad_input():
    boxes = torch.tensor([[0.0, 0, 1, 1]] * 3)
    for fn in (iou_loss, giou_loss):
        with pytest.raises(ValueError, match=r"pred must have shape \(N, 4\), got \(3, 5\)"):
            fn(torch.rand(3, 5), torch.rand(3, 5))
        with pytest.raises(ValueError, match=r"target must have shape \(N, 4\), got \(4,\)"):
            fn(boxes, torch.rand(4))
        with pytest.raises(ValueError, match=r"pred and target.*\(3, 4\).*\(2, 4\)"):
            fn(boxes, boxes[:2])
        with pytest.raises(ValueError, match=r"target \(shape \(3, 4\)\).*NaN"):
            fn(boxes, torch.tensor([[0.0, 0, float("nan"), 1]] * 3))
        with pytest.raises(ValueError, match=r"weight must have shape \(3,\) or \(3, 4\), got \(3, 2\)"):
            fn(boxes, boxes, weight=torch.rand(3, 2))
        with pytest.raises(ValueError, match=r"eps.*0"):
            fn(boxes, boxes, eps=0.0)
        with pytest.raises(TypeError, match=r"pred.*int64"):
            fn(boxes.long(), boxes)
    with pytest.raises(ValueError, match=r"mode.*'exp'"):
        iou_loss(boxes, boxes, mode="exp")
    with pytest.raises(ValueError, match="mode"):
        IoULoss(mode="exp")
    with pytest.raises(ValueError, match="eps"):
        GIoULoss(eps=-1.0)


def test_modules():
    pred, target = _boxes()
    w = torch.rand(N, 4, dtype=torch.float64)
    giou = GIoULoss(loss_weight=2.0)
    torch.testing.assert_close(
        giou(pred, target, weight=w, avg_factor=5.0), 2.0 * giou_loss(pred, target, weight=w, avg_factor=5.0)
    )
    iou = IoULoss(mode="linear", reduction="none", loss_weight=0.5)
    torch.testing.assert_close(iou(pred, target), 0.5 * iou_loss(pred, target, mode="linear", reduction="none"))
