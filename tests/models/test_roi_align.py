"""Multi-scale RoIAlign as sparse products: values against a float64 brute-force reference of RoIAlign
(Mask R-CNN sec. 3, with the sampling and border rules of Detectron's kernel, which torchvision's
``roi_align`` follows), values and gradients against torchvision's ``MultiScaleRoIAlign``, ``gradcheck``,
FPN eq. 1 by hand, determinism, empty inputs, and which kernel ``auto`` picks."""

import math

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign

from balancedet.models.roi_align import MultiLevelRoIAlign, fpn_levels

STRIDES = (4, 8, 16, 32)


def pyramid(batch, channels, height, width, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn((batch, channels, math.ceil(height / s), math.ceil(width / s)), generator=g, dtype=dtype)
        for s in STRIDES
    ]


def random_boxes(n, height, width, seed, max_side=None):
    """Boxes of every FPN level, some partly or wholly outside the image, some under a cell wide."""
    g = torch.Generator().manual_seed(seed)
    side = max_side or max(height, width)
    wh = torch.rand((n, 2), generator=g) ** 2 * side + 0.2
    xy = torch.rand((n, 2), generator=g) * torch.tensor([width + 40.0, height + 40.0]) - 20 - wh / 2
    return torch.cat((xy, xy + wh), dim=1)


def reference_roi_align(feature, box, scale, size, grid):
    """RoIAlign of one box on one ``(C, H, W)`` map, in float64 loops: bin (ph, pw) averages its grid x grid
    samples at ``y1 + (ph + (iy + 0.5) / grid) * bin_h``; a sample is dropped beyond one cell outside the
    map, clamped to it otherwise, and bilinearly interpolated (Detectron's ``RoIAlign``, aligned=False)."""
    feature = feature.double()
    channels, height, width = feature.shape
    x1, y1, x2, y2 = (float(v) * scale for v in box)
    roi_w, roi_h = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
    out = torch.zeros((channels, size, size), dtype=torch.float64)

    def interpolate(y, x):
        if y < -1.0 or y > height or x < -1.0 or x > width:
            return torch.zeros(channels, dtype=torch.float64)
        y, x = max(y, 0.0), max(x, 0.0)
        y0, x0 = int(math.floor(y)), int(math.floor(x))
        if y0 >= height - 1:
            y0 = y1_ = height - 1
            y = float(y0)
        else:
            y1_ = y0 + 1
        if x0 >= width - 1:
            x0 = x1_ = width - 1
            x = float(x0)
        else:
            x1_ = x0 + 1
        ly, lx = y - y0, x - x0
        return (
            (1 - ly) * (1 - lx) * feature[:, y0, x0]
            + (1 - ly) * lx * feature[:, y0, x1_]
            + ly * (1 - lx) * feature[:, y1_, x0]
            + ly * lx * feature[:, y1_, x1_]
        )

    for ph in range(size):
        for pw in range(size):
            acc = torch.zeros(channels, dtype=torch.float64)
            for iy in range(grid):
                for ix in range(grid):
                    y = y1 + ph * roi_h / size + (iy + 0.5) * roi_h / size / grid
                    x = x1 + pw * roi_w / size + (ix + 0.5) * roi_w / size / grid
                    acc += interpolate(y, x)
            out[:, ph, pw] = acc / (grid * grid)
    return out


def torchvision_pool(levels, boxes, input_size, size=7, grid=2):
    names = [f"p{k}" for k in range(len(levels))]
    pooler = MultiScaleRoIAlign(names, size, grid)
    return pooler(dict(zip(names, levels, strict=True)), list(boxes), [input_size] * len(boxes))


@pytest.mark.parametrize(("size", "grid"), [(7, 2), (3, 1), (4, 3)])
def test_values_equal_a_float64_brute_force_roi_align(size, grid):
    levels = pyramid(2, 3, 64, 96, dtype=torch.float64)
    boxes = [random_boxes(5, 64, 96, seed=1), random_boxes(4, 64, 96, seed=2)]
    pooled = MultiLevelRoIAlign(4, size, grid, kernel="sparse")(levels, boxes, (64, 96))
    level = fpn_levels(torch.cat(boxes), 2, 5)
    image = [0] * 5 + [1] * 4
    expected = torch.stack(
        [
            reference_roi_align(levels[k][i], b, 1 / STRIDES[k], size, grid)
            for b, k, i in zip(torch.cat(boxes), level.tolist(), image, strict=True)
        ]
    )
    torch.testing.assert_close(pooled, expected, rtol=1e-12, atol=1e-12)


def test_values_and_gradients_equal_torchvision_multiscale_roialign():
    # every level used (sides up to 600 px on a 512 x 384 batch), ragged images, an image without RoIs
    levels = pyramid(3, 16, 384, 512, seed=3)
    boxes = [random_boxes(300, 384, 512, seed=4, max_side=600), torch.zeros((0, 4)), random_boxes(200, 384, 512, 5)]
    assert set(fpn_levels(torch.cat(boxes), 2, 5).tolist()) == {0, 1, 2, 3}
    grad = torch.randn((500, 16, 7, 7), generator=torch.Generator().manual_seed(6))
    results = []
    for pool in (MultiLevelRoIAlign(4, 7, 2, kernel="sparse"), torchvision_pool):
        inputs = [lv.clone().requires_grad_() for lv in levels]
        pooled = pool(inputs, boxes, (384, 512))
        pooled.backward(grad)
        results.append((pooled.detach(), [lv.grad for lv in inputs]))
    (ours, our_grads), (theirs, their_grads) = results
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    for a, b in zip(our_grads, their_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ["channels_last", "frozen_finest"])
def test_nhwc_maps_and_levels_without_gradient(layout):
    # NHWC maps (the trainer's channels_last) are pooled and get their gradient in place, in their layout;
    # a level that needs no gradient gets none
    levels = pyramid(2, 8, 128, 160, seed=15)
    boxes = [random_boxes(150, 128, 160, seed=16, max_side=300), random_boxes(90, 128, 160, 17, 300)]
    grad = torch.randn((240, 8, 7, 7), generator=torch.Generator().manual_seed(18))
    results = []
    for pool in (MultiLevelRoIAlign(4, 7, 2, kernel="sparse"), torchvision_pool):
        inputs = [lv.clone() for lv in levels]
        if layout == "channels_last":
            inputs = [lv.contiguous(memory_format=torch.channels_last) for lv in inputs]
        for k, lv in enumerate(inputs):
            lv.requires_grad_(layout != "frozen_finest" or k > 0)
        pool(inputs, boxes, (128, 160)).backward(grad)
        results.append([lv.grad for lv in inputs])
    ours, theirs = results
    for k, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        if layout == "frozen_finest" and k == 0:
            assert a is None and b is None
            continue
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        if layout == "channels_last":
            assert a.is_contiguous(memory_format=torch.channels_last)


def test_gradcheck_float64():
    levels = [lv.requires_grad_() for lv in pyramid(2, 2, 32, 40, dtype=torch.float64, seed=7)]
    boxes = [random_boxes(3, 32, 40, seed=8, max_side=60).double(), random_boxes(2, 32, 40, 9, 60).double()]
    pool = MultiLevelRoIAlign(4, 3, 2, kernel="sparse")
    assert torch.autograd.gradcheck(lambda *lv: pool(list(lv), boxes, (32, 40)), tuple(levels))


def test_the_gradient_is_the_same_bits_every_time():
    levels = pyramid(2, 8, 128, 128, seed=10)
    boxes = [random_boxes(400, 128, 128, seed=11), random_boxes(400, 128, 128, seed=12)]
    pool = MultiLevelRoIAlign(4, 7, 2, kernel="sparse")
    grads = []
    for _ in range(2):
        inputs = [lv.clone().requires_grad_() for lv in levels]
        pool(inputs, boxes, (128, 128)).square().sum().backward()
        grads.append(torch.cat([lv.grad.flatten() for lv in inputs]))
    assert torch.equal(grads[0], grads[1])


def test_no_rois_gives_an_empty_result_and_a_zero_gradient():
    levels = [lv.requires_grad_() for lv in pyramid(2, 4, 64, 64)]
    pooled = MultiLevelRoIAlign(4, 7, 2, kernel="sparse")(levels, [torch.zeros((0, 4))] * 2, (64, 64))
    assert pooled.shape == (0, 4, 7, 7)
    pooled.sum().backward()
    assert all(lv.grad is not None and not lv.grad.any() for lv in levels)


@pytest.mark.parametrize(
    ("side", "level"),
    # sqrt(wh) = 224 -> P4 (the eps keeps it there), 223 -> P3, 112 -> P3, 111 -> P2, 448 -> P5, clamps at both ends
    [(224, 4), (223, 3), (112, 3), (111, 2), (448, 5), (447, 4), (56, 2), (4, 2), (2000, 5)],
)
def test_fpn_eq_1_by_hand(side, level):
    assert fpn_levels(torch.tensor([[10.0, 20.0, 10.0 + side, 20.0 + side]]), 2, 5).item() == level - 2


def test_auto_picks_the_sparse_products_on_the_cpu_and_torchvision_otherwise():
    feature = torch.zeros(1, 1, 4, 4)
    assert MultiLevelRoIAlign(4, 7, 2).uses_sparse(feature)
    assert not MultiLevelRoIAlign(4, 7, 0).uses_sparse(feature)  # torchvision's adaptive grid
    assert not MultiLevelRoIAlign(4, 7, 2).uses_sparse(feature.bfloat16())
    assert not MultiLevelRoIAlign(4, 7, 2, kernel="torchvision").uses_sparse(feature)
    # the adaptive grid through auto equals torchvision's pooler
    levels = pyramid(1, 4, 64, 64, seed=13)
    boxes = [random_boxes(20, 64, 64, seed=14)]
    torch.testing.assert_close(
        MultiLevelRoIAlign(4, 7, 0)(levels, boxes, (64, 64)), torchvision_pool(levels, boxes, (64, 64), grid=0)
    )


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="kernel must be one of"):
        MultiLevelRoIAlign(kernel="cuda")
    with pytest.raises(ValueError, match="sampling_ratio >= 1"):
        MultiLevelRoIAlign(sampling_ratio=0, kernel="sparse")
    pool = MultiLevelRoIAlign(4, 7, 2)
    with pytest.raises(ValueError, match="3 pyramid levels for 4"):
        pool(pyramid(1, 2, 32, 32)[:3], [torch.zeros((0, 4))], (32, 32))
    with pytest.raises(ValueError, match="2 box sets for a batch of 1"):
        pool(pyramid(1, 2, 32, 32), [torch.zeros((0, 4))] * 2, (32, 32))
