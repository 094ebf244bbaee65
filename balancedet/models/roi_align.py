"""Multi-scale RoIAlign over an FPN, as sparse matrix products on the CPU.

RoIAlign (He et al., "Mask R-CNN", ICCV 2017, arXiv 1703.06870, sec. 3): a RoI's ``S x S`` bins each average
``g x g`` regularly spaced samples, each sample a bilinear interpolation of the four feature cells around
it. The RoI is pooled from the pyramid level of eq. 1 of the FPN paper (Lin et al., CVPR 2017,
arXiv 1612.03144), ``k = floor(k0 + log2(sqrt(wh) / 224))``, ``k0 = 4``, clamped to the levels present.

Every output value is therefore a fixed linear combination of at most ``4 g^2`` feature cells, with weights
that depend on the RoI only. The RoIs that pool from one image's map on one level are one sparse matrix
``A`` (a row per RoI and bin, ``4 g^2`` entries per row) times that map laid out as a matrix ``F`` (a row per
cell, a column per channel): ``pooled = A F``, and the gradient reaching the map is ``A^T dpooled``.
``torchvision.ops.roi_align``'s CPU kernels walk RoIs, channels and samples in one thread, and its backward
scatters into the NCHW gradient one value at a time: in a Faster R-CNN training step (4 images of
256 x 256, 2048 RoIs of 256 channels) they took about 2.1 s of a 5 s step on two cores. The two sparse
products run on every core with contiguous channel rows; ``balancedet bench detector --stages pool``
measures both on that problem.

The weights follow torchvision's kernel rule for rule (``aligned=False``, the Detectron convention the FPN
configs use): a RoI's box is scaled by the level's ``1 / stride`` and is at least 1 x 1 cell; the sample
``(iy, ix)`` of bin ``(ph, pw)`` is at ``y = y1 + ph * bin_h + (iy + 0.5) * bin_h / g``; a sample more than
one cell outside the map contributes 0; one inside is clamped to ``[0, H - 1]``, and the bin averages its
``g^2`` samples. ``tests/models/test_roi_align.py`` checks values and gradients against torchvision's kernel
and against a float64 brute-force reference of the paper's definition.

Nothing of size ``A`` is kept for the backward: it is rebuilt there from the RoIs (as torchvision's kernel
recomputes its weights), so the step's peak memory does not grow with it. RoIs are processed in chunks, so
the transient layouts (``A``'s entries, the ``(RoI, bin, channel)`` products) stay small, and one map at a
time: ``F`` is a view of an NHWC map (the trainer's ``train.channels_last``), a copy of that one map of an
NCHW one, never of the whole pyramid. In the backward the groups run level by level, finest first, and a
level's gradient is allocated when its first group comes: an NHWC one is written in place, an NCHW one
through one map's ``(H * W, C)`` block. A first version laid the whole pyramid out as one ``F`` and kept the
step's peak below torchvision's at 4 images of 256 px but 11 MB above it at 2 of 512 px (NCHW); this one is
below at both (``peak_in_subprocess`` of ``balancedet bench detector``, figures in the README).

Off the CPU, for a ``sampling_ratio <= 0`` (torchvision's adaptive grid) or a dtype other than float32 and
float64, ``MultiLevelRoIAlign`` falls back to ``torchvision.ops.MultiScaleRoIAlign``, whose result it
equals.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import MultiScaleRoIAlign

#: FPN eq. 1's canonical RoI side and level, and torchvision's ``LevelMapper`` eps (a 224-px RoI stays on P4)
CANONICAL_SIZE = 224.0
CANONICAL_LEVEL = 4
LEVEL_EPS = 1e-6
#: RoIs a chunk of the sparse products holds: 256 RoIs x 49 bins x 16 entries is 200k entries
CHUNK_ROIS = 256
KERNELS = ("auto", "sparse", "torchvision")


def level_scale(feature_size: int, input_size: int) -> float:
    """A level's ``1 / stride``: the ratio of its size to the input's, rounded to a power of 2 (as
    torchvision's ``MultiScaleRoIAlign`` infers it from the padded batch)."""
    return 2.0 ** round(math.log2(feature_size / input_size))


def fpn_levels(boxes: Tensor, k_min: int, k_max: int) -> Tensor:
    """Eq. 1 of the FPN paper: each box's level index ``k - k_min``, ``k = floor(4 + log2(sqrt(wh) / 224))``
    clamped to ``[k_min, k_max]``."""
    side = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sqrt()
    k = torch.floor(CANONICAL_LEVEL + torch.log2(side / CANONICAL_SIZE) + LEVEL_EPS)
    return (k.clamp(k_min, k_max) - k_min).to(torch.int64)


def _axis_weights(start: Tensor, length: Tensor, size: int, bins: int, grid: int) -> tuple[Tensor, Tensor, Tensor]:
    """Along one axis of a map ``size`` cells long, for ``R`` RoIs: the low and high cell of every sample
    ``(R, bins, grid)`` and their weights ``(R, bins, grid, 2)`` (0 for a sample more than a cell outside),
    torchvision's rule."""
    dtype = start.dtype
    bin_len = length / bins
    offsets = torch.arange(bins, dtype=dtype, device=start.device)
    samples = torch.arange(grid, dtype=dtype, device=start.device) + 0.5
    # torchvision's order of operations: y1 + ph * bin + ((iy + .5) * bin) / g
    pos = (
        start[:, None, None]
        + offsets[None, :, None] * bin_len[:, None, None]
        + samples[None, None, :] * bin_len[:, None, None] / grid
    )
    inside = (pos >= -1.0) & (pos <= size)
    pos = pos.clamp(min=0)
    low = pos.to(torch.int64)  # pos >= 0: truncation is the floor
    at_edge = low >= size - 1
    low = low.clamp(max=size - 1)
    high = torch.where(at_edge, low, low + 1)
    pos = torch.where(at_edge, low.to(dtype), pos)
    frac = pos - low.to(dtype)
    weights = torch.stack((1 - frac, frac), dim=-1) * inside[..., None].to(dtype)
    return low, high, weights


def sparse_weights(rois: Tensor, height: int, width: int, scale: float, size: int, grid: int) -> tuple[Tensor, Tensor]:
    """The rows of ``A`` for ``R`` RoIs pooled from one ``height x width`` map of ``1 / stride = scale``:
    ``(columns, values)``, each ``(R * size * size, 4 * grid^2)``, a column ``y * width + x``.

    ``rois (R, 4)`` in input pixels. A row's entries are its bin's samples and their four corners, each
    weighted by the bilinear weight over ``grid^2``; entries may share a column (a sample clamped to the
    map's edge), and the product sums them.
    """
    boxes = rois * scale
    x1, y1 = boxes[:, 0], boxes[:, 1]
    roi_w = (boxes[:, 2] - x1).clamp(min=1.0)
    roi_h = (boxes[:, 3] - y1).clamp(min=1.0)
    y_low, y_high, wy = _axis_weights(y1, roi_h, height, size, grid)
    x_low, x_high, wx = _axis_weights(x1, roi_w, width, size, grid)
    r = rois.shape[0]
    # (R, ph, iy, corner_y) x (R, pw, ix, corner_x) -> (R, ph, pw, iy, ix, corner_y, corner_x)
    ys = torch.stack((y_low, y_high), dim=-1)[:, :, None, :, None, :, None]
    xs = torch.stack((x_low, x_high), dim=-1)[:, None, :, None, :, None, :]
    cols = ys * width + xs
    values = wy[:, :, None, :, None, :, None] * wx[:, None, :, None, :, None, :] / (grid * grid)
    entries = 4 * grid * grid
    return cols.reshape(r * size * size, entries), values.reshape(r * size * size, entries)


class _SparseRoIAlign(torch.autograd.Function):
    """``pooled = A F`` and ``dF = A^T dpooled``, one block of ``F`` (one image on one level) at a time,
    ``A`` built from the RoIs in both passes.

    ``groups`` lists ``(level, image, first, count)``: the RoIs ``order[first:first + count]`` pool from that
    image's map on that level. Saved for the backward: the RoIs and ``order`` (int32); a block's layout
    ``(H * W, C)`` is a view of an NHWC map, one copy of that one map otherwise, and lives while its RoIs
    are pooled."""

    @staticmethod
    def forward(ctx, rois: Tensor, order: Tensor, groups: list, scales: list, size: int, grid: int, *levels: Tensor):
        ctx.save_for_backward(rois, order)
        ctx.groups, ctx.scales, ctx.size, ctx.grid = groups, scales, size, grid
        ctx.layouts = [(lv.shape, lv.stride(), lv.dtype, lv.device) for lv in levels]
        channels = levels[0].shape[1]
        out = levels[0].new_empty((rois.shape[0], channels, size, size))
        for level, image, first, count in groups:
            feature = levels[level][image]
            _, height, width = feature.shape
            block = feature.permute(1, 2, 0).reshape(height * width, channels)
            for idx, (cols, values) in _chunks(rois, order, first, count, height, width, scales[level], size, grid):
                pooled = _csr(cols, values, height * width) @ block
                out.index_copy_(0, idx, pooled.view(-1, size, size, channels).permute(0, 3, 1, 2))
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        rois, order = ctx.saved_tensors
        size, grid, channels = ctx.size, ctx.grid, grad.shape[1]
        # each level's gradient in its input's layout (NCHW or NHWC), zero where no RoI pooled, allocated
        # when its first group comes (the groups run level by level, so the transients of the finest level's
        # groups do not meet the coarser levels' gradients); None for a level that needs none
        needs = ctx.needs_input_grad[6:]
        grads: list[Tensor | None] = [None] * len(ctx.layouts)

        def zeros(level: int) -> Tensor:
            shape, stride, dtype, device = ctx.layouts[level]
            return torch.empty_strided(shape, stride, dtype=dtype, device=device).zero_()

        for level, image, first, count in ctx.groups:
            if not needs[level]:
                continue
            if grads[level] is None:
                grads[level] = zeros(level)
            height, width = ctx.layouts[level][0][-2:]
            # an NHWC map's gradient is written in place; an NCHW one through one map's (H * W, C) block
            cells = grads[level][image].permute(1, 2, 0)
            in_place = cells.is_contiguous()
            block = cells.view(height * width, channels) if in_place else grad.new_zeros((height * width, channels))
            _accumulate(block, grad, rois, order, first, count, height, width, ctx.scales[level], size, grid)
            if not in_place:
                cells.copy_(block.view(height, width, channels))
            del block, cells  # freed before the next group's block is allocated
        # a level that needs a gradient but had no RoI gets zeros
        grads = [zeros(k) if g is None and need else g for k, (g, need) in enumerate(zip(grads, needs, strict=True))]
        return (None, None, None, None, None, None, *grads)


def _accumulate(
    block: Tensor,
    grad: Tensor,
    rois: Tensor,
    order: Tensor,
    first: int,
    count: int,
    height: int,
    width: int,
    scale: float,
    size: int,
    grid: int,
) -> None:
    """``block (H * W, C) += A^T dpooled`` for one group's RoIs, a chunk at a time (a function of its own so
    that the last chunk's buffers are freed before the next group's block is allocated)."""
    channels = grad.shape[1]
    for idx, (cols, values) in _chunks(rois, order, first, count, height, width, scale, size, grid):
        # gathered straight into the (RoI, bin, channel) layout: one copy of the chunk
        g = grad.new_empty((idx.shape[0], size, size, channels))
        torch.index_select(grad.permute(0, 2, 3, 1), 0, idx, out=g)
        block.addmm_(_csr_transposed(cols, values, height * width), g.view(-1, channels))


def _chunks(
    rois: Tensor, order: Tensor, first: int, count: int, height: int, width: int, scale: float, size: int, grid: int
):
    """``(indices, (columns, values))`` of ``A``'s rows for the RoIs ``order[first:first + count]``, which
    pool from one ``height x width`` map, ``CHUNK_ROIS`` RoIs at a time."""
    for start in range(first, first + count, CHUNK_ROIS):
        idx = order[start : min(start + CHUNK_ROIS, first + count)].long()
        yield idx, sparse_weights(rois[idx], height, width, scale, size, grid)


def _csr(cols: Tensor, values: Tensor, num_columns: int) -> Tensor:
    """``A``'s rows as a CSR matrix, ``cols.shape[1]`` entries a row."""
    rows, per_row = cols.shape
    crow = torch.arange(0, rows * per_row + 1, per_row, device=cols.device)
    return _sparse_csr(crow, cols.reshape(-1), values.reshape(-1), (rows, num_columns))


def _csr_transposed(cols: Tensor, values: Tensor, num_columns: int) -> Tensor:
    """``A^T`` of those rows as a CSR matrix: its entries sorted by column (stably, so the sums run in one
    order every time and the gradient is deterministic)."""
    rows, per_row = cols.shape
    flat_cols = cols.reshape(-1)
    order = torch.sort(flat_cols, stable=True).indices
    counts = torch.bincount(flat_cols, minlength=num_columns)
    crow = torch.zeros(num_columns + 1, dtype=torch.int64, device=cols.device)
    torch.cumsum(counts, 0, out=crow[1:])
    row_of = torch.div(order, per_row, rounding_mode="floor")
    return _sparse_csr(crow, row_of, values.reshape(-1)[order], (num_columns, rows))


def _sparse_csr(crow: Tensor, cols: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    # PyTorch warns on a process's first CSR tensor that CSR support is "beta"; the two products used here
    # are tested against torchvision's kernel (tests/models/test_roi_align.py), so a user need not see it
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
        return torch.sparse_csr_tensor(crow, cols, values, shape, check_invariants=False)


class MultiLevelRoIAlign(nn.Module):
    """RoIAlign of each image's boxes from its FPN level (eq. 1), ``(sum_i N_i, C, size, size)``.

    Args:
        num_levels: pyramid levels pooled from, the finest first (4: P2-P5).
        output_size: ``S``, the bins per side (7).
        sampling_ratio: samples per bin side (2, Detectron's FPN setting); ``<= 0`` is torchvision's
            adaptive grid, served by torchvision's kernel.
        kernel: ``"auto"`` (the sparse products on the CPU for float32 and float64, torchvision's kernel
            otherwise), ``"sparse"`` or ``"torchvision"``.

    ``forward(levels, boxes, input_size)``: ``levels`` the pyramid's first ``num_levels`` maps of the
    padded ``(B, 3, H, W)`` batch, ``boxes`` one ``(N_i, 4)`` tensor of ``(x1, y1, x2, y2)`` per image in
    input pixels, ``input_size = (H, W)``. Gradients reach the levels, not the boxes (as torchvision's).
    """

    def __init__(self, num_levels: int = 4, output_size: int = 7, sampling_ratio: int = 2, kernel: str = "auto"):
        super().__init__()
        if kernel not in KERNELS:
            raise ValueError(f"MultiLevelRoIAlign: kernel must be one of {KERNELS}, got {kernel!r}")
        if kernel == "sparse" and sampling_ratio <= 0:
            raise ValueError("MultiLevelRoIAlign: the sparse kernel needs sampling_ratio >= 1 (a fixed grid)")
        if num_levels < 1 or output_size < 1:
            raise ValueError(f"MultiLevelRoIAlign: need num_levels, output_size >= 1; got {num_levels}, {output_size}")
        self.num_levels, self.output_size, self.sampling_ratio, self.kernel = (
            num_levels,
            output_size,
            sampling_ratio,
            kernel,
        )
        self.names = [f"p{k}" for k in range(num_levels)]
        self.torchvision = MultiScaleRoIAlign(self.names, output_size, sampling_ratio)

    def uses_sparse(self, feature: Tensor) -> bool:
        if self.kernel != "auto":
            return self.kernel == "sparse"
        return (
            feature.device.type == "cpu" and self.sampling_ratio > 0 and feature.dtype in (torch.float32, torch.float64)
        )

    def forward(self, levels: Sequence[Tensor], boxes: Sequence[Tensor], input_size: tuple[int, int]) -> Tensor:
        if len(levels) != self.num_levels:
            raise ValueError(f"MultiLevelRoIAlign: {len(levels)} pyramid levels for {self.num_levels}")
        shape = (int(input_size[0]), int(input_size[1]))
        if not self.uses_sparse(levels[0]):
            return self.torchvision(dict(zip(self.names, levels, strict=True)), list(boxes), [shape] * len(boxes))
        return self.sparse(levels, boxes, shape)

    def sparse(self, levels: Sequence[Tensor], boxes: Sequence[Tensor], input_size: tuple[int, int]) -> Tensor:
        first = levels[0]
        batch = first.shape[0]
        if len(boxes) != batch:
            raise ValueError(f"MultiLevelRoIAlign: {len(boxes)} box sets for a batch of {batch}")
        scales = [level_scale(level.shape[-2], input_size[0]) for level in levels]
        k_min, k_max = round(-math.log2(scales[0])), round(-math.log2(scales[-1]))
        device, dtype = first.device, first.dtype
        counts = torch.tensor([b.shape[0] for b in boxes], device=device)
        rois = torch.cat([b.to(dtype) for b in boxes]) if boxes else first.new_zeros((0, 4))
        image = torch.arange(batch, device=device).repeat_interleave(counts)
        # the RoIs grouped by (level, image), in their order within a group
        key = fpn_levels(rois, k_min, k_max) * batch + image
        order = torch.sort(key, stable=True).indices
        keys, sizes = torch.unique_consecutive(key[order], return_counts=True)
        groups, start = [], 0
        for k, n in zip(keys.tolist(), sizes.tolist(), strict=True):
            groups.append((k // batch, k % batch, start, n))
            start += n
        return _SparseRoIAlign.apply(
            rois, order.to(torch.int32), groups, scales, self.output_size, self.sampling_ratio, *levels
        )
