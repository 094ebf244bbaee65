"""GHM-C / GHM-R against independent float64 references written from arXiv 1811.05181 and the
authors' released code (github.com/libuyu/GHM_Detection, ``mmdet/models/losses/ghm_loss.py`` of
its mmdetection submodule).

The references bin with explicit edges (``i / M``, the top one nudged up, as in the authors' code)
in a Python loop over bins; the library computes ``min(floor(g * M), M - 1)`` in one vectorised
pass. The random data below keeps every gradient norm far from a bin edge relative to float64
rounding, and the gradcheck data sits at bin centres.
"""

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from balancedet.bench.common import saved_bytes
from balancedet.losses import backend, ghm
from balancedet.losses.ghm import GHMC, GHMR, ghm_c_loss, ghm_r_loss

N, C = 37, 6

# ---- reference (numpy, float64, loop over bins) --------------------------------------------------


def _sigmoid(x):
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


def _one_hot(labels, c):
    y = np.zeros((len(labels), c))
    for n, k in enumerate(labels):
        if k < c:
            y[n, k] = 1.0
    return y


class RefDensity:
    """The density ``D_j`` of eq. 6 with the unit-region approximation: ``R_j``, or a running ``S_j`` (sec. 3.3).

    ``"authors"``: the authors' code, ``acc_sum[i] = mmt * acc_sum[i] + (1 - mmt) * num_in_bin`` for
    each bin with ``num_in_bin > 0``, from 0, no correction. ``"bias_corrected"``: every bin moves and
    is divided by ``1 - m^t`` after ``t`` updates.
    """

    def __init__(self, bins, momentum=0.0, ema="authors"):
        self.bins, self.m, self.ema = bins, momentum, ema
        self.s = np.zeros(bins)
        self.t = 0

    def __call__(self, counts, update=True):
        t = self.t + 1
        s = self.s.copy()
        if self.ema == "authors":
            for j in range(self.bins):
                if counts[j] > 0:
                    s[j] = self.m * s[j] + (1 - self.m) * counts[j]
            d = s
        else:
            s = self.m * s + (1 - self.m) * counts
            d = s / (1 - self.m**t)
        if update:
            self.s, self.t = s, t
        return d


def _weights(g, valid, bins, density):
    """Per-element ``N_valid / (D_j * n_nonempty)`` (eq. 7 as in the authors' code), counts ``R``, ``N_valid``."""
    edges = np.arange(bins + 1) / bins
    edges[-1] += 1e-6
    n_valid = max(valid.sum(), 1)
    masks = [valid & (g >= edges[j]) & (g < edges[j + 1]) for j in range(bins)]
    counts = np.array([m.sum() for m in masks], dtype=np.float64)
    d = density(counts)
    nonempty = (counts > 0).sum()
    w = np.zeros_like(g)
    for j, m in enumerate(masks):
        if counts[j] > 0:
            w[m] = n_valid / (d[j] * nonempty)
    return w, counts, n_valid


def _element_weight(valid, weight):
    """``weight > 0`` selects (eq. 8's valid elements), ``weight`` multiplies; a bool mask is 0/1."""
    weight = valid.astype(np.float64) if weight is None else np.broadcast_to(weight, valid.shape)
    return valid & (weight > 0), weight


def ref_ghmc(x, y, valid, bins=30, density=None, weight=None, avg_factor=None):
    """Returns the per-element loss terms (they sum to the loss), the gradient and the counts."""
    density = density or RefDensity(bins)
    valid, weight = _element_weight(valid, weight)
    p = _sigmoid(x)
    w, counts, n_valid = _weights(np.abs(p - y), valid, bins, density)
    w = w * weight / (n_valid if avg_factor is None else avg_factor)
    bce = np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))
    return w * bce, w * (p - y), counts


def ref_ghmr(pred, target, valid, mu=0.02, bins=10, density=None, weight=None, avg_factor=None):
    density = density or RefDensity(bins)
    valid, weight = _element_weight(valid, weight)
    d = pred - target
    r = np.sqrt(d * d + mu * mu)
    w, counts, n_valid = _weights(np.abs(d) / r, valid, bins, density)
    w = w * weight / (n_valid if avg_factor is None else avg_factor)
    return w * (r - mu), w * d / r, counts


# ---- data ----------------------------------------------------------------------------------------


def _cls_data(n=N, c=C, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=gen, dtype=torch.float64) * 3
    labels = torch.randint(0, c + 1, (n,), generator=gen)
    labels[0], labels[1] = c, 0
    return x, labels


def _targets(kind, labels, c=C):
    onehot = _one_hot(labels.numpy(), c)
    return (labels if kind == "int" else torch.tensor(onehot)), onehot


def _valid(kind, shape, seed=1, dtype=torch.bool):
    if kind is None:
        return None, np.ones(shape, dtype=bool)
    gen = torch.Generator().manual_seed(seed)
    v = torch.rand(shape if kind == "elem" else shape[:1], generator=gen) < 0.75
    v_np = np.broadcast_to(v.numpy()[:, None] if kind == "row" else v.numpy(), shape)
    return v.to(dtype), v_np


def _run(module_or_fn, x, *args):
    x = x.clone().requires_grad_()
    loss = module_or_fn(x, *args)
    loss.backward()
    return loss.detach(), x.grad


def _close(actual, expected, rtol=1e-10, atol=1e-13):
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected, rtol=rtol, atol=atol)


# ---- GHM-C against the reference -----------------------------------------------------------------


@pytest.mark.parametrize("target_kind", ["int", "onehot"])
@pytest.mark.parametrize("valid_kind", [None, "row", "elem"])
def test_ghmc_matches_reference(target_kind, valid_kind):
    x, labels = _cls_data()
    targets, y = _targets(target_kind, labels)
    valid, valid_np = _valid(valid_kind, (N, C))
    terms, grad, _ = ref_ghmc(x.numpy(), y, valid_np)
    loss, got_grad = _run(GHMC(momentum=0.0), x, targets, valid)
    _close(loss, terms.sum())
    _close(got_grad, grad)
    functional, _ = _run(lambda t: ghm_c_loss(t, targets, weight=valid), x)
    _close(functional, terms.sum())


def test_ghmc_many_bins_use_wide_indices_and_loss_weight_scales():
    x, labels = _cls_data(n=200)
    terms, grad, _ = ref_ghmc(x.numpy(), _one_hot(labels.numpy(), C), np.ones((200, C), bool), bins=300)
    loss, got_grad = _run(GHMC(bins=300, momentum=0.0, loss_weight=2.5), x, labels)
    _close(loss, 2.5 * terms.sum())
    _close(got_grad, 2.5 * grad)


@pytest.mark.parametrize("shape", ["row", "elem"])
def test_ghmc_float_weight_selects_where_positive_and_multiplies(shape):
    x, labels = _cls_data()
    gen = torch.Generator().manual_seed(5)
    w = torch.rand((N, C) if shape == "elem" else (N,), generator=gen, dtype=torch.float64) * 3 - 0.75
    w_np = w.numpy()[:, None] if shape == "row" else w.numpy()
    terms, grad, counts = ref_ghmc(x.numpy(), _one_hot(labels.numpy(), C), np.ones((N, C), bool), weight=w_np)
    assert counts.sum() < N * C  # some weights are <= 0: those elements are ignored
    loss, got_grad = _run(GHMC(momentum=0.0), x, labels, w)
    _close(loss, terms.sum())
    _close(got_grad, grad)


@pytest.mark.parametrize("avg_factor", [7.5, torch.tensor(7.5, dtype=torch.float64)])
def test_avg_factor_replaces_the_valid_count_as_divisor(avg_factor):
    x, labels = _cls_data()
    valid, valid_np = _valid("elem", (N, C))
    terms, grad, _ = ref_ghmc(x.numpy(), _one_hot(labels.numpy(), C), valid_np, avg_factor=7.5)
    loss, got_grad = _run(GHMC(momentum=0.0, loss_weight=2.0), x, labels, valid, avg_factor)
    _close(loss, 2.0 * terms.sum())
    _close(got_grad, 2.0 * grad)
    pred, target = _reg_data()
    terms, _, _ = ref_ghmr(pred.numpy(), target.numpy(), valid_np[:, :4], avg_factor=7.5)
    _close(ghm_r_loss(pred, target, weight=valid[:, :4], avg_factor=avg_factor), terms.sum())


def test_ghmc_all_ignored_gives_zero_loss_and_gradient():
    x, labels = _cls_data()
    loss, grad = _run(GHMC(momentum=0.75), x, labels, torch.zeros(N, dtype=torch.bool))
    assert torch.isfinite(loss) and loss.item() == 0.0
    assert torch.equal(grad, torch.zeros_like(grad))


def test_ghmc_empty_batch():
    for targets in (torch.zeros(0, dtype=torch.long), torch.zeros(0, C, dtype=torch.float64)):
        loss, grad = _run(GHMC(), torch.zeros(0, C, dtype=torch.float64), targets)
        assert loss.item() == 0.0 and grad.shape == (0, C)


def test_ghmc_single_bin_is_plain_mean_bce():
    # Every element has g = 0.5 exactly (logit 0): one bin, weight 1, the loss is the mean BCE over valid elements.
    x = torch.zeros(N, C, dtype=torch.float64)
    labels = torch.randint(0, C + 1, (N,))
    valid, valid_np = _valid("elem", (N, C))
    loss, grad = _run(GHMC(momentum=0.0), x, labels, valid)
    onehot = torch.tensor(_one_hot(labels.numpy(), C))
    bce = F.binary_cross_entropy_with_logits(x, onehot, reduction="none")
    _close(loss, bce[valid].mean().item())
    _close(grad, np.where(valid_np, (0.5 - onehot.numpy()) / valid_np.sum(), 0.0))


@pytest.mark.parametrize("target_kind", ["int", "onehot"])
def test_ghmc_gradient_norms_of_exactly_zero_and_one_fall_in_the_first_and_last_bins(target_kind):
    # float64: sigmoid(800) == 1 and sigmoid(-800) == 0 exactly.
    x = torch.tensor([[800.0, -800.0], [-800.0, 800.0], [800.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([0, 2, 1])  # g: [0, 0], [0, 1], [1, 0.5]
    targets, y = _targets(target_kind, labels, c=2)
    g = np.abs(_sigmoid(x.numpy()) - y)
    assert set(g.ravel().tolist()) == {0.0, 0.5, 1.0}
    module = GHMC(bins=4, momentum=0.0)
    loss, grad = _run(module, x, targets)
    assert module.running_count.tolist() == [3.0, 0.0, 1.0, 2.0]  # with momentum 0 the state is R
    terms, ref_grad, counts = ref_ghmc(x.numpy(), y, np.ones((3, 2), bool), bins=4)
    assert counts.tolist() == [3.0, 0.0, 1.0, 2.0]
    _close(loss, terms.sum())
    _close(grad, ref_grad)


def test_ghmc_no_grad_path_and_integer_label_dtypes():
    x, labels = _cls_data()
    expected, _ = _run(GHMC(momentum=0.0), x, labels)
    with torch.no_grad():
        assert torch.equal(GHMC(momentum=0.0)(x, labels.int()), expected)
    assert torch.equal(GHMC(momentum=0.0)(x, labels.to(torch.int16)), expected)


def test_ghmc_keeps_bytes_not_floats_for_backward():
    # Saved for backward beyond the inputs: the byte-sized bin indices and the (M + 1,) table, no N x C float tensor.
    n, c = 512, 20
    x = torch.randn(n, c, requires_grad=True)
    labels = torch.randint(0, c + 1, (n,))
    saved = saved_bytes(lambda: GHMC()(x, labels), [x, labels])
    assert saved <= n * c + 1024


# ---- GHM-R against the reference -----------------------------------------------------------------


def _reg_data(n=N, k=4, seed=2):
    gen = torch.Generator().manual_seed(seed)
    pred = torch.randn(n, k, generator=gen, dtype=torch.float64) * 0.05
    target = torch.randn(n, k, generator=gen, dtype=torch.float64) * 0.05
    return pred, target


@pytest.mark.parametrize("valid_kind", [None, "row", "elem"])
@pytest.mark.parametrize("mu", [0.02, 0.1])
def test_ghmr_matches_reference(valid_kind, mu):
    pred, target = _reg_data()
    valid, valid_np = _valid(valid_kind, pred.shape, dtype=torch.float32)
    terms, grad, _ = ref_ghmr(pred.numpy(), target.numpy(), valid_np, mu=mu)
    p, t = pred.clone().requires_grad_(), target.clone().requires_grad_()
    loss = GHMR(mu=mu, momentum=0.0)(p, t, valid)
    loss.backward()
    _close(loss.detach(), terms.sum())
    _close(p.grad, grad)
    _close(t.grad, -grad)
    _close(ghm_r_loss(pred, target, weight=valid, mu=mu), terms.sum())


def test_ghmr_extreme_residuals_fall_in_the_first_and_last_bins_and_all_ignored_is_zero():
    pred = torch.tensor([[0.0, 1e6, -1e6, 0.02]], dtype=torch.float64)
    target = torch.zeros_like(pred)
    module = GHMR(bins=10, momentum=0.0)
    loss, grad = _run(module, pred, target)
    assert module.running_count.tolist() == [1.0, 0, 0, 0, 0, 0, 0, 1.0, 0, 2.0]  # g = 0, 1/sqrt(2), 1, 1
    terms, ref_grad, _ = ref_ghmr(pred.numpy(), target.numpy(), np.ones((1, 4), bool))
    _close(loss, terms.sum())
    _close(grad, ref_grad)
    loss, grad = _run(GHMR(), pred, target, torch.zeros(1))
    assert loss.item() == 0.0 and torch.equal(grad, torch.zeros_like(grad))


# ---- momentum, state, modes ----------------------------------------------------------------------


class AuthorsGHM:
    """The authors' ``GHMC`` / ``GHMR`` forward with momentum, transcribed into float64 NumPy.

    From GHM_Detection's mmdetection submodule, ``mmdet/models/losses/ghm_loss.py``: for each bin,
    ``inds = (g >= edges[i]) & (g < edges[i+1]) & valid``; if ``num_in_bin > 0``:
    ``acc_sum[i] = mmt * acc_sum[i] + (1 - mmt) * num_in_bin``, ``weights[inds] = tot / acc_sum[i]``,
    ``n += 1``; then ``weights /= n`` and ``loss = sum(loss * weights) / tot``. ``acc_sum`` starts
    at 0. ``empty`` records the bins that were empty in the last call.
    """

    def __init__(self, bins, momentum, top_edge):
        self.bins, self.mmt = bins, momentum
        self.edges = np.arange(bins + 1) / bins
        self.edges[-1] = top_edge
        self.acc_sum = np.zeros(bins)
        self.empty = np.ones(bins, bool)

    def weights(self, g, label_weight, tot):
        valid = label_weight > 0
        weights = np.zeros_like(g)
        n = 0
        for i in range(self.bins):
            inds = (g >= self.edges[i]) & (g < self.edges[i + 1]) & valid
            num_in_bin = inds.sum()
            self.empty[i] = num_in_bin == 0
            if num_in_bin > 0:
                self.acc_sum[i] = self.mmt * self.acc_sum[i] + (1 - self.mmt) * num_in_bin
                weights[inds] = tot / self.acc_sum[i]
                n += 1
        if n > 0:
            weights = weights / n
        return weights


def authors_ghmc(state, pred, target, label_weight):
    g = np.abs(_sigmoid(pred) - target)
    tot = max((label_weight > 0).sum(), 1.0)
    weights = state.weights(g, label_weight, tot)
    bce = np.maximum(pred, 0) - pred * target + np.log1p(np.exp(-np.abs(pred)))
    return (bce * weights).sum() / tot


def authors_ghmr(state, pred, target, label_weight, mu=0.02):
    diff = pred - target
    loss = np.sqrt(diff * diff + mu * mu) - mu
    g = np.abs(diff / np.sqrt(mu * mu + diff * diff))
    tot = max(label_weight.sum(), 1.0)
    weights = state.weights(g, label_weight, tot)
    return (loss * weights).sum() / tot


@pytest.mark.parametrize("kind", ["ghmc", "ghmr"])
def test_default_running_histogram_is_the_authors_code_over_ten_steps(kind):
    m = 0.75
    if kind == "ghmc":
        module, ref = GHMC(bins=30, momentum=m), AuthorsGHM(30, m, 1.0 + 1e-6)
    else:
        module, ref = GHMR(mu=0.02, bins=10, momentum=m), AuthorsGHM(10, m, 1e3)
    gen = torch.Generator().manual_seed(42)
    kept = 0  # (step, bin) pairs where a bin holding a value was empty: the authors' rule leaves it alone
    for _ in range(10):
        n = int(torch.randint(20, 60, (), generator=gen))
        spread = float(torch.rand((), generator=gen))
        keep = (torch.rand(n, generator=gen) < 0.8).double()
        held = ref.acc_sum > 0
        if kind == "ghmc":
            x = torch.randn(n, C, generator=gen, dtype=torch.float64) * (0.3 + 4 * spread)
            labels = torch.randint(0, C + 1, (n,), generator=gen)
            mask = np.broadcast_to(keep.numpy()[:, None], (n, C))
            expected = authors_ghmc(ref, x.numpy(), _one_hot(labels.numpy(), C), mask)
            got = module(x, labels, keep)
        else:
            pred = torch.randn(n, 4, generator=gen, dtype=torch.float64) * (0.005 + 0.1 * spread)
            target = torch.zeros(n, 4, dtype=torch.float64)
            mask = np.broadcast_to(keep.numpy()[:, None], (n, 4))
            expected = authors_ghmr(ref, pred.numpy(), target.numpy(), mask)
            got = module(pred, target, keep)
        kept += int((held & ref.empty).sum())
        _close(got, expected, rtol=1e-6)
    assert kept > 0
    _close(module.running_count, ref.acc_sum, rtol=1e-12)
    assert module.num_updates.item() == 10


def test_bias_corrected_running_density_over_several_steps():
    m, bins = 0.75, 30
    module = GHMC(bins=bins, momentum=m, ema="bias_corrected")
    ref = RefDensity(bins, m, ema="bias_corrected")
    for step in range(4):
        x, labels = _cls_data(n=40 + 10 * step, seed=10 + step)
        x = x * (1 + step)  # the histogram changes from step to step
        valid, valid_np = _valid("row", x.shape, seed=20 + step)
        terms, grad, _ = ref_ghmc(x.numpy(), _one_hot(labels.numpy(), C), valid_np, bins, ref)
        loss, got_grad = _run(module, x, labels, valid)
        _close(loss, terms.sum())
        _close(got_grad, grad)
        _close(module.running_count, ref.s)
        assert module.num_updates.item() == step + 1


@pytest.mark.parametrize("ema", ["authors", "bias_corrected"])
def test_ghmr_running_density_over_several_steps(ema):
    m, bins = 0.7, 10
    module, ref = GHMR(momentum=m, ema=ema), RefDensity(bins, m, ema=ema)
    for step in range(3):
        pred, target = _reg_data(n=30 + step, seed=step)
        terms, grad, _ = ref_ghmr(pred.numpy(), target.numpy(), np.ones(pred.shape, bool), density=ref)
        loss, got_grad = _run(module, pred, target)
        _close(loss, terms.sum())
        _close(got_grad, grad)
    _close(module.running_count, ref.s)


def test_state_dict_round_trip_restores_the_running_histogram():
    module = GHMC(momentum=0.75)
    for step in range(3):
        x, labels = _cls_data(seed=step)
        module(x * (step + 1), labels)
    state = module.state_dict()
    assert set(state) == {"running_count", "num_updates"}
    restored = GHMC(momentum=0.75)
    restored.load_state_dict(state)
    assert torch.equal(restored.running_count, module.running_count) and restored.num_updates.item() == 3
    x, labels = _cls_data(seed=99)
    assert torch.equal(restored(x, labels), module(x, labels))
    assert torch.equal(restored.running_count, module.running_count)


@pytest.mark.parametrize("ema", ["authors", "bias_corrected"])
def test_eval_mode_uses_the_blended_estimate_without_storing_it(ema):
    m = 0.75
    module, ref = GHMC(momentum=m, ema=ema), RefDensity(30, m, ema=ema)
    for step in range(2):
        x, labels = _cls_data(seed=step)
        y = _one_hot(labels.numpy(), C)
        module(x * (step + 1), labels)
        ref_ghmc((x * (step + 1)).numpy(), y, np.ones(x.shape, bool), 30, ref)
    before = (module.running_count.clone(), module.num_updates.clone())
    module.eval()
    x, labels = _cls_data(seed=7)
    y = _one_hot(labels.numpy(), C)
    for _ in range(2):
        terms, _, _ = ref_ghmc(x.numpy(), y, np.ones(x.shape, bool), 30, lambda r: ref(r, update=False))
        _close(module(x, labels), terms.sum())
    assert torch.equal(module.running_count, before[0]) and torch.equal(module.num_updates, before[1])
    module.train()
    terms, _, _ = ref_ghmc(x.numpy(), y, np.ones(x.shape, bool), 30, ref)
    _close(module(x, labels), terms.sum())
    assert module.num_updates.item() == 3


# ---- element_losses: the last call's per-element terms -------------------------------------------


def _weight_for(kind, shape, seed):
    """``(weight for the module, its NumPy form for ref_ghmc)``: a bool row mask, or float weights in
    [-0.75, 2.25) per element (those <= 0 fall in the ignore bin)."""
    if kind is None:
        return None, None
    if kind == "mask":
        w, w_np = _valid("row", shape, seed=seed)
        return w, w_np
    w = torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3 - 0.75
    return w, w.numpy()


@pytest.mark.parametrize("target_kind", ["int", "onehot"])
@pytest.mark.parametrize("weight_kind", [None, "mask", "float"])
def test_ghmc_element_losses_are_the_reference_terms_of_the_last_call(target_kind, weight_kind):
    m, bins = 0.75, 30
    module, ref = GHMC(bins=bins, momentum=m), RefDensity(bins, m)
    for step in range(3):
        x, labels = _cls_data(n=30 + 7 * step, seed=30 + step)
        x = x * (0.5 + step)  # a different histogram each step
        targets, y = _targets(target_kind, labels)
        w, w_np = _weight_for(weight_kind, x.shape, seed=40 + step)
        terms, _, counts = ref_ghmc(x.numpy(), y, np.ones(x.shape, bool), bins, ref, weight=w_np)
        if weight_kind is not None:
            assert counts.sum() < x.numel()  # some elements are ignored
        loss, _ = _run(module, x, targets, w)
        running, updates = module.running_count.clone(), module.num_updates.clone()
        got = module.element_losses(x, targets, weight=w)
        assert got.shape == x.shape and got.dtype == torch.float64 and not got.requires_grad
        _close(got, terms)
        _close(got.sum(), loss.item())
        if weight_kind is not None:  # the ignore bin's weight is 0
            assert (got.numpy()[np.broadcast_to(w_np, x.shape) <= 0] == 0).all()
        assert torch.equal(module.running_count, running) and torch.equal(module.num_updates, updates)
        assert module.num_updates.item() == step + 1
        assert set(module.state_dict()) == {"running_count", "num_updates"}


@pytest.mark.parametrize("target_kind", ["int", "onehot"])
def test_ghmc_element_losses_without_momentum_include_loss_weight_and_avg_factor(target_kind):
    x, labels = _cls_data(seed=50)
    targets, y = _targets(target_kind, labels)
    valid, valid_np = _valid("elem", x.shape, seed=51)
    module = GHMC(momentum=0.0, loss_weight=2.0)
    for avg_factor in (None, 7.5):
        terms, _, _ = ref_ghmc(x.numpy(), y, valid_np, avg_factor=avg_factor)
        with torch.no_grad():  # the path without autograd keeps the table too
            loss = module(x, targets, valid, avg_factor)
        got = module.element_losses(x, targets, valid)
        _close(got, 2.0 * terms)
        _close(got.sum(), loss.item())


def test_ghmc_element_losses_of_half_precision_logits_are_float32_and_sum_to_the_loss():
    x, labels = _cls_data(n=64, seed=52)
    x = x.to(torch.bfloat16)
    module = GHMC()
    loss = module(x, labels)
    got = module.element_losses(x, labels)
    assert got.dtype == torch.float32 == loss.dtype
    terms, _, _ = ref_ghmc(x.double().numpy(), _one_hot(labels.numpy(), C), np.ones(x.shape, bool))
    _close(got, 1 / (1 - 0.75) * terms, rtol=1e-5, atol=1e-8)  # first step of the authors' EMA: S = (1 - m) R
    _close(got.sum(), loss.item(), rtol=1e-5)


def test_ghmc_element_losses_follow_an_eval_mode_call():
    m = 0.75
    module, ref = GHMC(momentum=m), RefDensity(30, m)
    x, labels = _cls_data(seed=53)
    y = _one_hot(labels.numpy(), C)
    module(x, labels)
    ref_ghmc(x.numpy(), y, np.ones(x.shape, bool), 30, ref)
    module.eval()
    x2 = x * 2
    terms, _, _ = ref_ghmc(x2.numpy(), y, np.ones(x.shape, bool), 30, lambda r: ref(r, update=False))
    module(x2, labels)
    _close(module.element_losses(x2, labels), terms)


def test_element_losses_before_any_call_raise():
    x, labels = _cls_data()
    with pytest.raises(RuntimeError, match=r"GHMC\.element_losses.*last forward call"):
        GHMC().element_losses(x, labels)
    pred, target = _reg_data()
    with pytest.raises(RuntimeError, match=r"GHMR\.element_losses.*last forward call"):
        GHMR().element_losses(pred, target)


def test_ghmr_element_losses_are_the_reference_terms_of_the_last_call():
    m, bins = 0.7, 10
    module, ref = GHMR(momentum=m, loss_weight=10.0), RefDensity(bins, m)
    for step in range(3):
        pred, target = _reg_data(n=30 + step, seed=60 + step)
        valid, valid_np = _valid("elem", pred.shape, seed=70 + step, dtype=torch.float32)
        terms, _, _ = ref_ghmr(pred.numpy(), target.numpy(), valid_np, density=ref)
        loss, _ = _run(module, pred, target, valid)
        running = module.running_count.clone()
        got = module.element_losses(pred, target, weight=valid)
        _close(got, 10.0 * terms)
        _close(got.sum(), loss.item())
        assert torch.equal(module.running_count, running) and module.num_updates.item() == step + 1


def test_compiled_element_terms_match_eager(compile_mode):
    labels = torch.randint(0, C + 1, (N,))
    x = _bin_centre_logits(labels, C, 30)
    valid, _ = _valid("row", (N, C))
    module = GHMC(momentum=0.0)
    backend.set_compile("never")  # only the element-wise path is compiled: one compilation fewer
    loss = module(x, labels, valid)
    eager = module.element_losses(x, labels, valid)
    backend.set_compile("always")
    compiled = module.element_losses(x, labels, valid)
    assert ghm._ghmc_terms_kernel._compiled is not None
    _close(compiled, eager.numpy(), rtol=1e-12)
    _close(compiled.sum(), loss.item(), rtol=1e-12)


# ---- gradients -----------------------------------------------------------------------------------


def _bin_centre_logits(labels, c, bins, seed=3):
    """Logits whose g = |p - y| sits at bin centres, so finite differences never cross an edge."""
    gen = torch.Generator().manual_seed(seed)
    centre = (torch.randint(0, bins, (len(labels), c), generator=gen, dtype=torch.float64) + 0.5) / bins
    y = torch.tensor(_one_hot(labels.numpy(), c))
    p = torch.where(y > 0, 1 - centre, centre)
    return torch.log(p / (1 - p))


@pytest.mark.parametrize("target_kind", ["int", "onehot"])
def test_ghmc_gradcheck(target_kind):
    n, c, bins = 12, 4, 10
    labels = torch.randint(0, c + 1, (n,))
    labels[0], labels[1] = c, 1
    x = _bin_centre_logits(labels, c, bins).requires_grad_()
    targets, _ = _targets(target_kind, labels, c)
    valid, _ = _valid("elem", (n, c))
    module = GHMC(bins=bins, momentum=0.0)
    assert torch.autograd.gradcheck(lambda t: module(t, targets, valid), (x,))


def test_ghmr_gradcheck_on_pred_and_target():
    n, k, bins, mu = 8, 4, 10, 0.02
    gen = torch.Generator().manual_seed(4)
    g = (torch.randint(0, bins, (n, k), generator=gen, dtype=torch.float64) + 0.5) / bins
    sign = torch.where(torch.rand(n, k, generator=gen) < 0.5, -1.0, 1.0).double()
    d = sign * mu * g / torch.sqrt(1 - g * g)
    target = torch.randn(n, k, generator=gen, dtype=torch.float64).requires_grad_()
    pred = (target.detach() + d).requires_grad_()
    module = GHMR(mu=mu, bins=bins, momentum=0.0)
    assert torch.autograd.gradcheck(lambda p, t: module(p, t), (pred, target))


# ---- compiled fast path == eager path ------------------------------------------------------------


def test_compiled_kernels_match_eager(compile_mode):
    labels = torch.randint(0, C + 1, (N,))
    x = _bin_centre_logits(labels, C, 30)
    valid, _ = _valid("row", (N, C))
    compiled, compiled_grad = _run(GHMC(momentum=0.0), x, labels, valid)
    backend.set_compile("never")
    eager, eager_grad = _run(GHMC(momentum=0.0), x, labels, valid)
    backend.set_compile("always")
    assert ghm._ghmc_loss_kernel._compiled is not None and ghm._ghmc_grad_kernel._compiled is not None
    _close(compiled, eager.item(), rtol=1e-12)
    _close(compiled_grad, eager_grad.numpy(), rtol=1e-12)


# ---- distributed: counts summed across processes -------------------------------------------------


def _dist_data(step):
    x, labels = _cls_data(n=60, seed=100 + step)
    valid, _ = _valid("elem", (60, C), seed=200 + step)
    return x * (1 + step), labels, valid


def _dist_worker(rank, world, port, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        module = GHMC(momentum=0.75, process_group=dist.group.WORLD)
        results = []
        for step in range(2):
            x, labels, valid = _dist_data(step)
            rows = slice(rank * 30, (rank + 1) * 30)
            loss, grad = _run(module, x[rows], labels[rows], valid[rows])
            results.append((loss, grad))
        torch.save({"results": results, "state": module.state_dict()}, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_distributed_counts_are_summed_before_weighting(tmp_path):
    """Each process divides its own weighted sum by the global N_valid with weights from the global
    histogram, so process r's loss is exactly the sum of the full batch's per-element terms over its
    rows, the two losses add up to the single-process loss, and the gradients are the full batch's rows."""
    mp.spawn(_dist_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    outs = [torch.load(tmp_path / f"{r}.pt") for r in range(2)]
    single, ref = GHMC(momentum=0.75), RefDensity(30, 0.75)
    for step in range(2):
        x, labels, valid = _dist_data(step)
        terms, _, _ = ref_ghmc(x.numpy(), _one_hot(labels.numpy(), C), valid.numpy(), 30, ref)
        full_loss, full_grad = _run(single, x, labels, valid)
        losses = [outs[r]["results"][step][0] for r in range(2)]
        for r in range(2):
            rows = slice(r * 30, (r + 1) * 30)
            _close(losses[r], terms[rows].sum(), rtol=1e-6)
            _close(outs[r]["results"][step][1], full_grad[rows].numpy(), rtol=1e-6)
        _close(losses[0] + losses[1], full_loss.item(), rtol=1e-6)
    for r in range(2):
        _close(outs[r]["state"]["running_count"], single.running_count.numpy(), rtol=1e-12)
        assert outs[r]["state"]["num_updates"].item() == 2


# ---- bad input -----------------------------------------------------------------------------------


def _bad_cls_inputs():
    x = torch.randn(5, 3)
    nan_targets = torch.zeros(5, 3)
    nan_targets[2, 1] = float("nan")
    return [
        ((x, torch.zeros(5, 4)), r"targets.*\(5, 3\).*\(5, 4\)"),
        ((x, torch.zeros(4, dtype=torch.long)), r"targets.*\(5,\).*\(4,\)"),
        ((x, torch.tensor([0, 1, 2, 3, 4])), r"targets \(shape \(5,\)\).*\[0, 3\]"),
        ((x, torch.tensor([0, -1, 2, 3, 0])), r"targets \(shape \(5,\)\).*\[0, 3\]"),
        ((x, nan_targets), r"targets \(shape \(5, 3\)\).*finite"),
        ((x, torch.zeros(5, dtype=torch.long), torch.ones(4, dtype=torch.bool)), r"weight.*\(5, 3\).*\(4,\)"),
        ((x[0], torch.zeros(1, dtype=torch.long)), r"logits.*\(3,\)"),
    ]


@pytest.mark.parametrize("case", range(7))
def test_ghmc_bad_input_names_argument_and_shape(case):
    args, pattern = _bad_cls_inputs()[case]
    with pytest.raises(ValueError, match=pattern):
        GHMC()(*args)


def test_ghmr_bad_input_names_argument_and_shape():
    pred = torch.randn(5, 4)
    with pytest.raises(ValueError, match=r"target.*\(5, 4\).*\(5, 3\)"):
        GHMR()(pred, torch.zeros(5, 3))
    bad = torch.zeros(5, 4)
    bad[1, 1] = float("nan")
    with pytest.raises(ValueError, match=r"target \(shape \(5, 4\)\).*NaN"):
        GHMR()(pred, bad)
    with pytest.raises(ValueError, match=r"weight.*\(5, 4\).*\(5, 1\)"):
        GHMR()(pred, bad.nan_to_num(), torch.ones(5, 1))


def test_bad_weight_and_avg_factor():
    x, labels = torch.randn(5, 3), torch.zeros(5, dtype=torch.long)
    with pytest.raises(ValueError, match=r"weight \(shape \(5,\)\) must not require grad"):
        GHMC()(x, labels, torch.ones(5, requires_grad=True))
    with pytest.raises(TypeError, match="weight.*complex"):
        GHMC()(x, labels, torch.ones(5, dtype=torch.complex64))
    with pytest.raises(TypeError, match="weight.*list"):
        GHMR()(x, x, [1.0] * 5)
    with pytest.raises(ValueError, match="avg_factor.*-1"):
        GHMC()(x, labels, avg_factor=-1.0)
    with pytest.raises(ValueError, match=r"avg_factor.*\(2,\)"):
        ghm_r_loss(x, x, avg_factor=torch.ones(2))


@pytest.mark.parametrize(
    "make, pattern",
    [
        (lambda: GHMC(bins=0), "bins"),
        (lambda: GHMC(bins=2.5), "bins"),
        (lambda: GHMC(momentum=1.0), "momentum"),
        (lambda: GHMC(momentum=-0.1), "momentum"),
        (lambda: GHMR(mu=0.0), "mu"),
        (lambda: GHMR(bins=0), "bins"),
        (lambda: GHMC(ema="adam"), "ema.*'adam'"),
        (lambda: GHMR(ema="mmdet"), "ema.*'mmdet'"),
    ],
)
def test_bad_hyper_parameters(make, pattern):
    with pytest.raises(ValueError, match=pattern):
        make()


# ---- low precision and extreme logits ------------------------------------------------------------


def test_bf16_autocast_and_extreme_logits_stay_finite():
    n, c = 64, 5
    head = torch.nn.Linear(8, c)
    feats = torch.randn(n, 8)
    labels = torch.randint(0, c + 1, (n,))
    big = torch.where(torch.rand(n, c) < 0.5, -100.0, 100.0)
    module = GHMC()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(feats) * 0.01 + big.to(torch.bfloat16)
        logits.retain_grad()
        assert logits.dtype == torch.bfloat16
        loss = module(logits, labels)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert logits.grad.dtype == torch.bfloat16 and torch.isfinite(logits.grad).all()
    assert torch.isfinite(head.weight.grad).all() and head.weight.grad.abs().sum() > 0
    # bf16 -> float32 is exact, so the loss equals the float32 computation on the same values.
    expected, expected_grad = _run(GHMC(momentum=0.0), logits.detach().float(), labels)
    _close(GHMC(momentum=0.0)(logits.detach(), labels), expected.item(), rtol=1e-6)
    _, grad_bf16 = _run(GHMC(momentum=0.0), logits.detach(), labels)
    assert torch.equal(grad_bf16, expected_grad.to(torch.bfloat16))


def test_float32_logits_of_plus_minus_100():
    x = torch.tensor([[100.0, -100.0], [-100.0, 100.0]], requires_grad=True)
    loss = GHMC(bins=30, momentum=0.0)(x, torch.tensor([0, 2]))  # row 1 is background
    loss.backward()
    # g ~ 0 for three elements (bin 0, weight 4 / (3 * 2)) and g = 1 for x[1, 1] (bin 29, weight 4 / (1 * 2)),
    # whose BCE is 100; the others' BCE is ~4e-44. Loss = 2 * 100 / 4, its gradient 2 * (1 - 0) / 4.
    assert loss.item() == pytest.approx(50.0, rel=1e-6)
    assert torch.isfinite(x.grad).all() and x.grad[1, 1].item() == pytest.approx(0.5, rel=1e-6)
    assert x.grad.abs().sum().item() == pytest.approx(0.5, rel=1e-6)
