"""Gradient Harmonizing Mechanism: GHM-C and GHM-R (Li, Liu, Wang, AAAI 2019, arXiv 1811.05181).

The gradient norm of an element is ``g = |p - y|`` for the sigmoid cross entropy (eq. 4) and
``g = |d| / sqrt(d^2 + mu^2)`` for the authentic smooth L1 ``ASL1(d) = sqrt(d^2 + mu^2) - mu``
(eqs. 12-14). ``[0, 1]`` is cut into ``M`` equal bins (the top edge nudged so that ``g = 1`` falls
in the last) and the gradient density of an element in bin ``j`` is ``GD = R_j * M`` (eq. 6 with the
unit-region approximation of sec. 3.3), ``R_j`` being the number of valid elements in the bin. Each
element's loss is weighted by ``beta = N / GD`` (eq. 7); as in the authors' code ``M`` is replaced by
the number of non-empty bins, so the weight is ``N_valid / (R_j * n_nonempty)`` and the weighted sum
is divided by ``N_valid`` (eqs. 8 and 15):

    ``L = loss_weight * sum_i w_i * BCE_i * N_valid / (R_{b(i)} * n_nonempty) / N_valid``.

``w_i`` is the caller's ``weight``: the elements with ``w_i > 0`` are the valid ones (counted in
``R`` and ``N_valid``), and each term is also multiplied by ``w_i``, which changes nothing for a
0/1 mask (for fractional weights the authors' code differs: it uses the weights only as a mask,
and its GHM-R divides by their sum instead of the valid count). GHM normalises itself
(``self_normalizing = True``): a detector passes no ``avg_factor``. When one is given it replaces
the final divisor ``N_valid`` (``beta`` keeps its own ``N_valid``), for a caller that divides every
loss by the same count.

With momentum ``m > 0`` (sec. 3.3, "EMA") ``R_j`` is replaced by a running ``S_j``, a buffer
updated once per training step. The default, ``ema="authors"``, is the rule of the authors'
released code (github.com/libuyu/GHM_Detection, ``mmdet/models/losses/ghm_loss.py`` of its
mmdetection submodule; mmdetection's ``GHMC``/``GHMR`` are the same): only the non-empty bins
move, ``S_j = m S_j + (1 - m) R_j``, ``S`` starts at 0 and is used without bias correction. It is
the default because the published results were trained with it. Its first steps weigh up to
``1 / (1 - m)`` times more than ``R_j`` would (exactly that on the first step, where
``S = (1 - m) R``; 4x for the paper's ``m = 0.75``), and a bin that refills after being empty is
weighted up likewise: that is the published behaviour. ``ema="bias_corrected"`` updates every bin each step and
divides by ``1 - m^t`` after ``t`` updates, like Adam's moments, so the estimate has the scale of
``R`` from the first step.

How it is computed (for 0/1 weights, the values of the authors' per-bin loop):

- one vectorised pass: a bin index per element in a small integer dtype, one ``bincount``
  (``index_add_`` on accelerators, where ``bincount`` synchronises), a ``(M + 1,)`` weight table,
  then one fused pass computing the weighted loss and its gradient; no Python loop over bins and
  no host synchronisation. Integer labels never become a one-hot tensor: the ``N x C`` passes treat
  every element as a negative and the ``N`` positive entries are patched with gathers/scatters;
- the caller passes all FPN levels at once, so there is one histogram per step, and with a
  ``process_group`` the per-bin counts are summed across processes before the running average is
  updated and the weights are made.

Ignored elements (``weight <= 0``) get the extra bin index ``M``, whose weight is 0.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from balancedet.losses.backend import fused_kernel
from balancedet.losses.checks import check_finite, check_float, shape_str, split_targets
from balancedet.losses.reduce import check_reduction
from balancedet.losses.sigmoid_terms import upcast

__all__ = ["GHMC", "GHMR", "ghm_c_loss", "ghm_r_loss"]

EMA_RULES = ("authors", "bias_corrected")


# ---- binning ------------------------------------------------------------------------------------


def _index_dtype(bins: int) -> torch.dtype:
    """Bin indices 0..bins (``bins`` = ignored) fit a byte for up to 254 bins."""
    return torch.uint8 if bins < 255 else torch.int32


def _bin_index(g: Tensor, w: Tensor | None, bins: int, dtype: torch.dtype) -> Tensor:
    """``min(floor(g * M), M - 1)`` for ``g`` in [0, 1] (so ``g = 1`` lands in the last bin), ``M`` where ``w <= 0``.

    The clamp comes after the integer conversion so that a NaN gradient norm (NaN logits) still
    yields an index inside the table.
    """
    idx = (g * bins).to(dtype).clamp(max=bins - 1)
    if w is not None:
        idx = torch.where(w > 0, idx, bins)
    return idx


def _bin_counts(idx: Tensor, bins: int) -> Tensor:
    """``(M + 1,)`` int64 histogram of the bin indices (the last entry counts ignored elements)."""
    flat = idx.reshape(-1)
    if flat.device.type == "cpu":
        return torch.bincount(flat, minlength=bins + 1)
    # bincount synchronises on accelerators (it reads the maximum to size its output).
    counts = torch.zeros(bins + 1, dtype=torch.int64, device=flat.device)
    return counts.index_add_(0, flat.int(), torch.ones((), dtype=torch.int64, device=flat.device).expand(flat.numel()))


def _gather_table(table: Tensor, idx: Tensor) -> Tensor:
    """``table[idx]`` for a small-integer ``idx`` (index_select takes int32, cheaper than an int64 copy)."""
    return table.index_select(0, idx.reshape(-1).int()).view(idx.shape)


def _coef(table: Tensor, idx: Tensor, w: Tensor | None, dtype: torch.dtype) -> Tensor:
    """Each element's factor ``table[idx] * w`` (``w`` broadcasts from ``(N, 1)``)."""
    coef = _gather_table(table, idx)
    return coef if w is None else coef * w.to(dtype)


def _weight_table(
    counts: Tensor,
    loss_weight: float,
    avg_factor: float | Tensor | None,
    process_group: dist.ProcessGroup | None,
    running: _RunningHistogram | None,
    dtype: torch.dtype,
) -> Tensor:
    """The per-bin factor ``loss_weight * beta_j / N`` with ``beta_j = N_valid / (D_j * n_nonempty)`` (eqs. 7-8).

    ``N`` is ``N_valid``, which then cancels (a non-empty bin's entry is ``loss_weight / (D_j *
    n_nonempty)``), or ``avg_factor`` when given. ``D_j`` is ``R_j`` or the running estimate of
    ``running``; empty bins and the extra "ignored" bin get 0. Everything here is a handful of
    ``(M,)`` device tensors: no host synchronisation.
    """
    bins = counts.numel() - 1
    counts = counts[:bins]
    if process_group is not None and dist.is_available() and dist.is_initialized():
        dist.all_reduce(counts, op=dist.ReduceOp.SUM, group=process_group)
    r = counts.to(torch.float64)
    density = r if running is None else running.density(r)
    filled = r > 0
    numerator = loss_weight
    if avg_factor is not None:
        if isinstance(avg_factor, Tensor):
            avg_factor = avg_factor.to(device=r.device, dtype=torch.float64).reshape(())
        numerator = loss_weight * r.sum() / avg_factor
    denom = torch.where(filled, density * filled.sum(), 1.0)
    table = torch.where(filled, numerator / denom, 0.0)
    return torch.cat([table, table.new_zeros(1)]).to(dtype)


def _check_weight(weight: Tensor | None, shape: torch.Size) -> Tensor | None:
    """``weight`` as ``(N, 1)`` or ``(N, K)``, or None."""
    if weight is None:
        return None
    if not isinstance(weight, Tensor):
        raise TypeError(f"weight must be a torch.Tensor or None, got {type(weight).__name__}")
    if weight.dtype.is_complex:
        raise TypeError(f"weight must be a bool, integer or float tensor, got dtype {weight.dtype}")
    if weight.requires_grad:
        # The weight also decides which elements enter the histogram, a choice with no gradient.
        raise ValueError(f"weight (shape {shape_str(weight)}) must not require grad: GHM weights are constants")
    n = shape[0]
    if weight.shape == shape:
        return weight
    if weight.shape == (n,):
        return weight.view(n, 1)
    raise ValueError(f"weight must have shape {tuple(shape)} or ({n},), got {shape_str(weight)}")


def _at_label(t: Tensor, col: Tensor) -> Tensor:
    """``t[n, col[n]]`` of an ``(N, C)`` tensor, or ``t[n, 0]`` of an ``(N, 1)`` one."""
    return t.gather(1, col).squeeze(1) if t.shape[1] > 1 else t.squeeze(1)


def _check_bins(bins: int) -> None:
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be an integer >= 1, got {bins!r}")


# ---- GHM-C --------------------------------------------------------------------------------------


@fused_kernel
def _ghmc_bin_kernel(x: Tensor, y: Tensor | None, w: Tensor | None, bins: int, dtype: torch.dtype) -> Tensor:
    """Bin index of ``g = |sigmoid(x) - y|`` (``y = 0`` everywhere when ``y`` is None)."""
    xc = upcast(x)
    p = torch.sigmoid(xc)
    g = p if y is None else (p - y.to(xc.dtype)).abs()
    return _bin_index(g, w, bins, dtype)


def _bce(xc: Tensor, y: Tensor | None) -> Tensor:
    """``BCE = max(x, 0) - x y + log1p(exp(-|x|))`` of upcast logits; ``softplus(x)`` if ``y`` is None (``y = 0``)."""
    if y is None:
        return -F.logsigmoid(-xc)
    return xc.clamp_min(0) - xc * y.to(xc.dtype) - F.logsigmoid(xc.abs())


@fused_kernel
def _ghmc_loss_kernel(x: Tensor, y: Tensor | None, w: Tensor | None, idx: Tensor, table: Tensor) -> Tensor:
    """``sum(table[idx] * w * BCE(x, y))``."""
    xc = upcast(x)
    return (_coef(table, idx, w, xc.dtype) * _bce(xc, y)).sum()


@fused_kernel
def _ghmc_terms_kernel(x: Tensor, y: Tensor | None, w: Tensor | None, idx: Tensor, table: Tensor) -> Tensor:
    """``table[idx] * w * BCE(x, y)`` per element, in the upcast dtype of ``x``."""
    xc = upcast(x)
    return _coef(table, idx, w, xc.dtype) * _bce(xc, y)


@fused_kernel
def _ghmc_grad_kernel(x: Tensor, y: Tensor | None, w: Tensor | None, idx: Tensor, table: Tensor) -> Tensor:
    """``table[idx] * w * (sigmoid(x) - y)`` in the dtype of ``x``."""
    xc = upcast(x)
    diff = torch.sigmoid(xc) if y is None else torch.sigmoid(xc) - y.to(xc.dtype)
    return (_coef(table, idx, w, xc.dtype) * diff).to(x.dtype)


def _positive_columns(x: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Rows with a foreground label, their label column ``(N, 1)`` and the logit there ``(N,)`` upcast."""
    fg = labels < x.shape[1]
    col = labels.clamp(max=x.shape[1] - 1).unsqueeze(1)
    return fg, col, upcast(x.gather(1, col).squeeze(1))


def _positive_coef(table: Tensor, idx: Tensor, w: Tensor | None, col: Tensor, dtype: torch.dtype) -> Tensor:
    return _coef(table, _at_label(idx, col), None if w is None else _at_label(w, col), dtype)


def _ghmc_bins(x: Tensor, labels: Tensor | None, soft: Tensor | None, w: Tensor | None, bins: int) -> Tensor:
    idx = _ghmc_bin_kernel(x, soft, w, bins, _index_dtype(bins))
    if labels is None or x.numel() == 0:
        return idx
    fg, col, xp = _positive_columns(x, labels)
    wp = None if w is None else _at_label(w, col)
    pos = _bin_index((torch.sigmoid(xp) - 1.0).abs(), wp, bins, idx.dtype)
    idx.scatter_(1, col, torch.where(fg, pos, _at_label(idx, col)).unsqueeze(1))
    return idx


def _ghmc_loss(
    x: Tensor, labels: Tensor | None, soft: Tensor | None, w: Tensor | None, idx: Tensor, table: Tensor
) -> Tensor:
    loss = _ghmc_loss_kernel(x, soft, w, idx, table)
    if labels is None or x.numel() == 0:
        return loss
    # Positives: BCE(x, 1) - BCE(x, 0) = softplus(-x) - softplus(x) = -x at the label column.
    fg, col, xp = _positive_columns(x, labels)
    wp = _positive_coef(table, idx, w, col, xp.dtype)
    return loss + torch.where(fg, wp * -xp, 0.0).sum()


def _ghmc_terms(
    x: Tensor, labels: Tensor | None, soft: Tensor | None, w: Tensor | None, idx: Tensor, table: Tensor
) -> Tensor:
    terms = _ghmc_terms_kernel(x, soft, w, idx, table)
    if labels is None or x.numel() == 0:
        return terms
    # Positives: BCE(x, 1) = softplus(-x) at the label column, taken directly rather than as the loss's
    # softplus(x) - x, which cancels to 0 for a confident positive.
    fg, col, xp = _positive_columns(x, labels)
    wp = _positive_coef(table, idx, w, col, xp.dtype)
    pos = wp * -F.logsigmoid(xp)
    return terms.scatter_(1, col, torch.where(fg, pos, _at_label(terms, col)).unsqueeze(1))


def _ghmc_grad(
    x: Tensor, labels: Tensor | None, soft: Tensor | None, w: Tensor | None, idx: Tensor, table: Tensor
) -> Tensor:
    grad = _ghmc_grad_kernel(x, soft, w, idx, table)
    if labels is None or x.numel() == 0:
        return grad
    # Positives: sigmoid(x) - 1 at the label column.
    fg, col, xp = _positive_columns(x, labels)
    wp = _positive_coef(table, idx, w, col, xp.dtype)
    gp = (wp * (torch.sigmoid(xp) - 1.0)).to(grad.dtype)
    return grad.scatter_(1, col, torch.where(fg, gp, _at_label(grad, col)).unsqueeze(1))


class _GHMCFunction(torch.autograd.Function):
    """The forward pass only reduces; backward recomputes ``table[idx] * w * (p - y)`` in one fused pass.

    Saved for backward: the ``N x C`` byte-sized bin indices and the ``(M + 1,)`` table (plus the
    inputs themselves), not an ``N x C`` float gradient.
    """

    @staticmethod
    def forward(ctx, x, labels, soft, w, idx, table):  # noqa: D102
        ctx.save_for_backward(x, labels, soft, w, idx, table)
        return _ghmc_loss(x, labels, soft, w, idx, table)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):  # noqa: D102
        x, labels, soft, w, idx, table = ctx.saved_tensors
        grad = _ghmc_grad(x, labels, soft, w, idx, table * grad_output.to(table.dtype))
        return grad, None, None, None, None, None


def _ghmc(
    logits: Tensor,
    targets: Tensor,
    weight: Tensor | None,
    avg_factor: float | Tensor | None,
    bins: int,
    loss_weight: float,
    process_group: dist.ProcessGroup | None,
    running: _RunningHistogram | None,
) -> tuple[Tensor, Tensor]:
    """The loss and the ``(M + 1,)`` weight table it was made with."""
    check_float("logits", logits, dim=2)
    check_reduction("mean", avg_factor)
    labels, soft, w = _ghmc_inputs(logits, targets, weight)
    with torch.no_grad():
        x = logits.detach()
        idx = _ghmc_bins(x, labels, soft, w, bins)
        counts = _bin_counts(idx, bins)
        table = _weight_table(counts, loss_weight, avg_factor, process_group, running, upcast(x).dtype)
    if torch.is_grad_enabled() and logits.requires_grad:
        return _GHMCFunction.apply(logits, labels, soft, w, idx, table), table
    return _ghmc_loss(logits, labels, soft, w, idx, table), table


def _ghmc_inputs(
    logits: Tensor, targets: Tensor, weight: Tensor | None
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """``(labels int64 or None, float targets or None, weight)`` checked against ``logits (N, C)``."""
    labels, soft = split_targets(logits, targets)
    labels = labels.long() if labels is not None else None
    return labels, soft, _check_weight(weight, logits.shape)


def _ghmc_element_terms(logits: Tensor, targets: Tensor, weight: Tensor | None, bins: int, table: Tensor) -> Tensor:
    """``(N, C)`` terms ``table[b] * w * BCE`` of a call whose weight table was ``table``; the bins are
    recomputed from the inputs by the training call's own code, so they are that call's bins."""
    check_float("logits", logits, dim=2)
    labels, soft, w = _ghmc_inputs(logits, targets, weight)
    with torch.no_grad():
        x = logits.detach()
        idx = _ghmc_bins(x, labels, soft, w, bins)
        return _ghmc_terms(x, labels, soft, w, idx, table)


def ghm_c_loss(
    logits: Tensor,
    targets: Tensor,
    *,
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
    bins: int = 30,
    loss_weight: float = 1.0,
    process_group: dist.ProcessGroup | None = None,
) -> Tensor:
    """GHM-C of one batch without a running histogram (``GHMC`` with ``momentum=0``), eq. 8 of arXiv 1811.05181.

    Args:
        logits: ``(N, C)`` sigmoid logits (all FPN levels concatenated: one histogram per step).
        targets: ``(N,)`` integer labels with ``C`` = background, or ``(N, C)`` float 0/1 targets.
        weight: ``None``, or a ``(N,)`` / ``(N, C)`` bool, integer or float tensor (no gradient):
            elements with ``weight > 0`` are valid (counted in the histogram and in ``N_valid``),
            the others ignored, and each element's loss is multiplied by its weight (a no-op for a
            0/1 mask).
        avg_factor: ``None`` (the paper's normalisation: the weighted sum is divided by
            ``N_valid``) or a positive number / 0-dim tensor that divides the weighted sum instead;
            the density weights ``beta = N_valid / GD`` are unchanged.
        bins: ``M``, the number of equal bins over the gradient norm range [0, 1].
        loss_weight: multiplies the result.
        process_group: when given (``torch.distributed.group.WORLD`` for the default group) and
            ``torch.distributed`` is initialised, the per-bin counts are summed over the group before
            the weights are made; each process then divides its own weighted sum by the global
            ``N_valid``, so the processes' losses add up to the loss of the whole batch (under DDP,
            which averages gradients, multiply by the world size to get that batch's gradient).
            Every process of the group must call the loss.

    Returns a 0-dim loss (float32 for half/bf16 logits, float64 for float64); the gradient
    ``loss_weight * w_i * beta_i * (p_i - y_i) / N_valid`` treats ``beta`` as a constant.
    """
    _check_bins(bins)
    return _ghmc(logits, targets, weight, avg_factor, bins, loss_weight, process_group, None)[0]


# ---- GHM-R --------------------------------------------------------------------------------------


@fused_kernel
def _ghmr_bin_kernel(pred: Tensor, target: Tensor, w: Tensor | None, mu: float, bins: int, dtype: torch.dtype):
    """Bin index of ``g = |d| / sqrt(d^2 + mu^2)``, ``d = pred - target``."""
    d = upcast(pred) - upcast(target)
    g = d.abs() / torch.sqrt(d * d + mu * mu)
    return _bin_index(g, w, bins, dtype)


@fused_kernel
def _ghmr_loss_kernel(pred: Tensor, target: Tensor, w: Tensor | None, idx: Tensor, table: Tensor, mu: float):
    """``sum(table[idx] * w * ASL1(d))`` with ``d = pred - target``.

    ``ASL1(d) = sqrt(d^2 + mu^2) - mu`` is evaluated as ``d^2 / (sqrt(d^2 + mu^2) + mu)``, which does
    not cancel for ``|d| << mu``.
    """
    d = upcast(pred) - upcast(target)
    return (_coef(table, idx, w, d.dtype) * (d * d / (torch.sqrt(d * d + mu * mu) + mu))).sum()


@fused_kernel
def _ghmr_terms_kernel(pred: Tensor, target: Tensor, w: Tensor | None, idx: Tensor, table: Tensor, mu: float):
    """``table[idx] * w * ASL1(d)`` per element, evaluated as in ``_ghmr_loss_kernel``."""
    d = upcast(pred) - upcast(target)
    return _coef(table, idx, w, d.dtype) * (d * d / (torch.sqrt(d * d + mu * mu) + mu))


@fused_kernel
def _ghmr_grad_kernel(pred: Tensor, target: Tensor, w: Tensor | None, idx: Tensor, table: Tensor, mu: float):
    """``table[idx] * w * d / sqrt(d^2 + mu^2)``, the gradient with respect to ``pred``."""
    d = upcast(pred) - upcast(target)
    return _coef(table, idx, w, d.dtype) * (d / torch.sqrt(d * d + mu * mu))


class _GHMRFunction(torch.autograd.Function):
    """As ``_GHMCFunction``: the forward pass reduces, backward recomputes the weighted gradient."""

    @staticmethod
    def forward(ctx, pred, target, w, idx, table, mu):  # noqa: D102
        ctx.save_for_backward(pred, target, w, idx, table)
        ctx.mu = mu
        return _ghmr_loss_kernel(pred, target, w, idx, table, mu)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):  # noqa: D102
        pred, target, w, idx, table = ctx.saved_tensors
        grad = _ghmr_grad_kernel(pred, target, w, idx, table * grad_output.to(table.dtype), ctx.mu)
        grad_pred = grad.to(pred.dtype) if ctx.needs_input_grad[0] else None
        grad_target = (-grad).to(target.dtype) if ctx.needs_input_grad[1] else None
        return grad_pred, grad_target, None, None, None, None


def _ghmr(
    pred: Tensor,
    target: Tensor,
    weight: Tensor | None,
    avg_factor: float | Tensor | None,
    mu: float,
    bins: int,
    loss_weight: float,
    process_group: dist.ProcessGroup | None,
    running: _RunningHistogram | None,
) -> tuple[Tensor, Tensor]:
    """The loss and the ``(M + 1,)`` weight table it was made with."""
    _check_regression(pred, target)
    check_reduction("mean", avg_factor)
    w = _check_weight(weight, pred.shape)
    mu = float(mu)
    with torch.no_grad():
        idx = _ghmr_bin_kernel(pred.detach(), target.detach(), w, mu, bins, _index_dtype(bins))
        dtype = torch.promote_types(upcast(pred).dtype, upcast(target).dtype)
        table = _weight_table(_bin_counts(idx, bins), loss_weight, avg_factor, process_group, running, dtype)
    if torch.is_grad_enabled() and (pred.requires_grad or target.requires_grad):
        return _GHMRFunction.apply(pred, target, w, idx, table, mu), table
    return _ghmr_loss_kernel(pred, target, w, idx, table, mu), table


def _check_regression(pred: Tensor, target: Tensor) -> None:
    check_float("pred", pred, dim=2)
    check_float("target", target)
    if target.shape != pred.shape:
        raise ValueError(f"target must have the shape of pred {shape_str(pred)}, got {shape_str(target)}")
    check_finite("target", target)


def _ghmr_element_terms(
    pred: Tensor, target: Tensor, weight: Tensor | None, mu: float, bins: int, table: Tensor
) -> Tensor:
    """``(N, K)`` terms ``table[b] * w * ASL1(d)`` of a call whose weight table was ``table`` (bins as in ``_ghmr``)."""
    _check_regression(pred, target)
    w = _check_weight(weight, pred.shape)
    with torch.no_grad():
        pred, target = pred.detach(), target.detach()
        idx = _ghmr_bin_kernel(pred, target, w, mu, bins, _index_dtype(bins))
        return _ghmr_terms_kernel(pred, target, w, idx, table, mu)


def _check_mu(mu: float) -> None:
    if not mu > 0:
        raise ValueError(f"mu must be > 0, got {mu!r}")


def ghm_r_loss(
    pred: Tensor,
    target: Tensor,
    *,
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
    mu: float = 0.02,
    bins: int = 10,
    loss_weight: float = 1.0,
    process_group: dist.ProcessGroup | None = None,
) -> Tensor:
    """GHM-R of one batch without a running histogram (``GHMR`` with ``momentum=0``), eq. 15 of arXiv 1811.05181.

    ``ASL1(d) = sqrt(d^2 + mu^2) - mu`` (eq. 12) on ``d = pred - target`` of shape ``(N, K)``
    (box deltas: ``K = 4``), weighted by the gradient density of ``g = |d| / sqrt(d^2 + mu^2)``
    (eq. 14) over ``bins`` bins. ``weight`` (``(N,)`` or ``(N, K)``), ``avg_factor``,
    ``loss_weight`` and ``process_group`` as in ``ghm_c_loss``. Gradients flow to ``pred`` and, if
    it requires one, to ``target``.
    """
    _check_mu(mu)
    _check_bins(bins)
    return _ghmr(pred, target, weight, avg_factor, mu, bins, loss_weight, process_group, None)[0]


# ---- modules with a running histogram -----------------------------------------------------------


class _RunningHistogram(nn.Module):
    """The running gradient density ``S`` and the number of updates ``t`` as buffers (checkpointed), and
    ``last_table``, the ``(M + 1,)`` weight table of the last call (a plain attribute: not checkpointed)."""

    def __init__(
        self, bins: int, momentum: float, loss_weight: float, process_group: dist.ProcessGroup | None, ema: str
    ):
        super().__init__()
        _check_bins(bins)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum!r}")
        if ema not in EMA_RULES:
            raise ValueError(f"ema must be one of {EMA_RULES}, got {ema!r}")
        self.bins, self.momentum, self.loss_weight, self.ema = bins, float(momentum), float(loss_weight), ema
        self.process_group = process_group
        self.register_buffer("running_count", torch.zeros(bins, dtype=torch.float64))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.int64))
        # A plain attribute, not a buffer: it describes one call, and a checkpoint resumes from S and t.
        self.last_table: Tensor | None = None

    def _table_of_last_call(self) -> Tensor:
        if self.last_table is None:
            raise RuntimeError(
                f"{type(self).__name__}.element_losses reuses the weight table of the last forward call, "
                "and there has been none: call the loss first"
            )
        return self.last_table

    def density(self, counts: Tensor) -> Tensor:
        """The density estimate ``D`` for this step's (already summed across processes) float64 counts ``R``.

        ``"authors"``: ``S_j = m S_j + (1 - m) R_j`` for the non-empty bins only, ``D = S``.
        ``"bias_corrected"``: every bin, ``D = S / (1 - m^t)``. The buffers are written in
        training mode only; in eval mode the estimate is computed and discarded.
        """
        m = self.momentum
        blended = m * self.running_count + (1.0 - m) * counts
        if self.ema == "authors":
            blended = torch.where(counts > 0, blended, self.running_count)
            estimate = blended
        else:
            estimate = blended / (1.0 - m ** (self.num_updates + 1).to(torch.float64))
        if self.training:
            self.running_count.copy_(blended)
            self.num_updates.add_(1)
        return estimate

    def extra_repr(self) -> str:
        return f"bins={self.bins}, momentum={self.momentum}, ema={self.ema!r}, loss_weight={self.loss_weight}"


class GHMC(_RunningHistogram):
    """GHM-C loss (arXiv 1811.05181, eq. 8) with the EMA gradient density of sec. 3.3.

    ``GHMC(bins=30, momentum=0.75, loss_weight=1.0, process_group=None, *, ema="authors")``, called as
    ``loss(logits, targets, weight=None, avg_factor=None)``: ``logits (N, C)``, ``targets`` ``(N,)``
    int labels (``C`` = background) or ``(N, C)`` float 0/1, ``weight`` ``None`` or ``(N,)`` /
    ``(N, C)`` (``> 0`` = valid, also multiplies). Returns a 0-dim tensor. ``self_normalizing``:
    the loss divides by its own ``N_valid``, so a detector passes ``avg_factor=None``. Call it once
    per step with all FPN levels concatenated. In training mode each call updates the buffers
    ``running_count`` (``S``) and ``num_updates`` (``t``); in eval mode the blended estimate is used
    without being stored. ``ema`` picks the running-average rule (module docstring); with
    ``momentum=0`` both give the authors' GHMC without momentum. See ``ghm_c_loss`` for the
    arguments and the distributed semantics.

    ``element_losses(logits, targets, weight=None)`` gives the ``(N, C)`` terms of eq. 8 whose sum is
    the last call's loss, for the training diagnostics (``balancedet.engine.diagnostics``), which split
    the loss between kinds of examples: calling the loss again would update the running histogram, so
    it reuses the last call's weight table (``last_table``) and recomputes only the bins.
    """

    self_normalizing = True
    needs_quality_targets = False

    def __init__(
        self,
        bins: int = 30,
        momentum: float = 0.75,
        loss_weight: float = 1.0,
        process_group: dist.ProcessGroup | None = None,
        *,
        ema: str = "authors",
    ):
        super().__init__(bins, momentum, loss_weight, process_group, ema)

    def forward(
        self, logits: Tensor, targets: Tensor, weight: Tensor | None = None, avg_factor: float | Tensor | None = None
    ) -> Tensor:
        loss, self.last_table = _ghmc(
            logits, targets, weight, avg_factor, self.bins, self.loss_weight, self.process_group, self
        )
        return loss

    def element_losses(self, logits: Tensor, targets: Tensor, weight: Tensor | None = None) -> Tensor:
        """``(N, C)`` per-element terms ``table[b(i, c)] * w_ic * BCE(x_ic, y_ic)`` (eq. 8, with the last
        call's ``avg_factor`` and ``loss_weight``) of the last call, which must have had these inputs.

        Without gradient, in the loss's upcast dtype; they sum to that call's loss; the running
        histogram is left alone. ``RuntimeError`` before any call.
        """
        table = self._table_of_last_call()
        return _ghmc_element_terms(logits, targets, weight, self.bins, table)


class GHMR(_RunningHistogram):
    """GHM-R loss (arXiv 1811.05181, eqs. 12-15): authentic smooth L1 weighted by gradient density.

    ``GHMR(mu=0.02, bins=10, momentum=0.7, loss_weight=1.0, process_group=None, *, ema="authors")``,
    called as ``loss(pred, target, weight=None, avg_factor=None)`` with ``pred, target (N, K)``
    (``K = 4`` box deltas, so ``needs_decoded_boxes`` is False) and ``weight`` ``None`` or ``(N,)`` /
    ``(N, K)``. Normalisation, state, modes, distributed semantics and ``element_losses(pred, target,
    weight=None)`` (the ``(N, K)`` terms of eq. 15 of the last call) as in ``GHMC``.
    """

    self_normalizing = True
    needs_decoded_boxes = False

    def __init__(
        self,
        mu: float = 0.02,
        bins: int = 10,
        momentum: float = 0.7,
        loss_weight: float = 1.0,
        process_group: dist.ProcessGroup | None = None,
        *,
        ema: str = "authors",
    ):
        _check_mu(mu)
        super().__init__(bins, momentum, loss_weight, process_group, ema)
        self.mu = float(mu)

    def forward(
        self, pred: Tensor, target: Tensor, weight: Tensor | None = None, avg_factor: float | Tensor | None = None
    ) -> Tensor:
        loss, self.last_table = _ghmr(
            pred, target, weight, avg_factor, self.mu, self.bins, self.loss_weight, self.process_group, self
        )
        return loss

    def element_losses(self, pred: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        """``(N, K)`` terms ``table[b] * w * ASL1(d)`` of the last call (eq. 15), which must have had these
        inputs: as ``GHMC.element_losses``."""
        table = self._table_of_last_call()
        return _ghmr_element_terms(pred, target, weight, self.mu, self.bins, table)

    def extra_repr(self) -> str:
        return f"mu={self.mu}, {super().extra_repr()}"
