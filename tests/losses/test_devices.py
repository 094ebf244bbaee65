"""Every loss on every device this machine has: the same values as on CPU, no host sync on CUDA.

CI has only the CPU, where these tests check the device-agnostic code paths; on a machine with
a GPU the same tests cover CUDA, with ``torch.cuda.set_sync_debug_mode("error")`` turning any
host synchronisation inside a loss (an ``.item()``, a ``nonzero``...) into a failure.
"""

import contextlib

import pytest
import torch

from balancedet.losses import (
    backend,
    balanced_l1_loss,
    distribution_focal_loss,
    ghm_c_loss,
    ghm_r_loss,
    giou_loss,
    quality_focal_loss,
    sigmoid_focal_loss,
    smooth_l1_loss,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@contextlib.contextmanager
def no_host_sync(device):
    if device == "cuda":
        torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        if device == "cuda":
            torch.cuda.set_sync_debug_mode("default")


def _problem(seed=0, n=400, c=9):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=gen, dtype=torch.float64) * 3
    labels = torch.randint(0, c + 1, (n,), generator=gen)
    scores = torch.rand(n, generator=gen, dtype=torch.float64)
    soft = torch.rand(n, c, generator=gen, dtype=torch.float64)
    w = torch.rand(n, generator=gen, dtype=torch.float64)
    dfl_x = torch.randn(n, 17, generator=gen, dtype=torch.float64)
    dfl_t = torch.rand(n, generator=gen, dtype=torch.float64) * 16
    deltas = torch.randn(n, 4, generator=gen, dtype=torch.float64) * 0.5
    xy = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 50
    boxes = torch.cat([xy, xy + 1 + torch.rand(n, 2, generator=gen, dtype=torch.float64) * 30], 1)
    return x, labels, scores, soft, w, dfl_x, dfl_t, deltas, boxes


def _cases(x, labels, scores, soft, w, dfl_x, dfl_t, deltas, boxes, avg):
    valid = w > 0.2
    target = deltas.flip(0)
    shifted = boxes.flip(0) + 3.0
    return {
        "ghmc": (x, lambda x: ghm_c_loss(x, labels, weight=valid)),
        "ghmr": (deltas, lambda d: ghm_r_loss(d, target, weight=valid)),
        "ghmc-weighted": (x, lambda x: ghm_c_loss(x, labels, weight=w, avg_factor=avg)),
        "balanced_l1": (deltas, lambda d: balanced_l1_loss(d, target, beta=0.11, weight=w, avg_factor=avg)),
        "smooth_l1": (deltas, lambda d: smooth_l1_loss(d, target, beta=1 / 9, weight=w, avg_factor=avg)),
        "giou": (boxes, lambda b: giou_loss(b, shifted, weight=w, avg_factor=avg)),
        "focal-int": (x, lambda x: sigmoid_focal_loss(x, labels, weight=w, avg_factor=avg)),
        "focal-soft": (x, lambda x: sigmoid_focal_loss(x, soft, weight=w, avg_factor=avg)),
        "focal-none": (x, lambda x: sigmoid_focal_loss(x, labels, reduction="none")),
        "qfl": (x, lambda x: quality_focal_loss(x, labels, scores, weight=w, avg_factor=avg)),
        "dfl": (dfl_x, lambda x: distribution_focal_loss(x, dfl_t, weight=w, avg_factor=avg)),
    }


def _run(fn, x):
    x = x.clone().requires_grad_()
    loss = fn(x)
    loss.sum().backward()
    return loss.detach(), x.grad


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kernels", ["never", "always"])
def test_float32_on_device_matches_float64_on_cpu_without_host_sync(device, kernels):
    if kernels == "always" and not backend.can_compile(device):
        pytest.fail(f"torch.compile unavailable on {device}")
    cpu = _problem()
    reference = {k: _run(fn, x) for k, (x, fn) in _cases(*cpu, avg=torch.tensor(7.0, dtype=torch.float64)).items()}
    dev = [t.to(device=device, dtype=torch.float32) if t.is_floating_point() else t.to(device) for t in cpu]
    previous = backend.get_compile()
    backend.set_compile(kernels)
    try:
        avg = torch.tensor(7.0, device=device)
        for name, (x, fn) in _cases(*dev, avg=avg).items():
            _run(fn, x)  # first call compiles (compilation may synchronise)
            with no_host_sync(device):
                loss, grad = _run(fn, x)
            ref_loss, ref_grad = reference[name]
            torch.testing.assert_close(loss.cpu().double(), ref_loss, rtol=2e-5, atol=1e-6, msg=name)
            torch.testing.assert_close(grad.cpu().double(), ref_grad, rtol=2e-5, atol=1e-7, msg=name)
    finally:
        backend.set_compile(previous)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_autocast_on_device(device, dtype):
    if device == "cpu" and dtype == torch.float16:
        dtype = torch.bfloat16  # CPU autocast is bf16-first; fp16 matmul on CPU is slow but works too
    x, labels, scores, soft, w, *_ = _problem()
    layer = torch.nn.Linear(9, 9, dtype=torch.float32, device=device)
    feats = x.float().to(device)
    labels, scores = labels.to(device), scores.float().to(device)
    with torch.autocast(device, dtype=dtype):
        logits = layer(feats) * 30  # logits far beyond +-10
        assert logits.dtype == dtype
        losses = [
            sigmoid_focal_loss(logits, labels, avg_factor=5.0),
            quality_focal_loss(logits, labels, scores, avg_factor=5.0),
        ]
    total = sum(losses)
    assert all(loss.dtype == torch.float32 and torch.isfinite(loss) for loss in losses)
    total.backward()
    assert torch.isfinite(layer.weight.grad).all()
