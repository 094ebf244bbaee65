"""RetinaNet anchors and GFL anchor points: counts, areas, ratios, order, cache, torchvision."""

import math

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TorchvisionAnchorGenerator
from torchvision.models.detection.image_list import ImageList

from balancedet.boxes import AnchorGenerator, AnchorPoints, feature_map_sizes, points_to_anchors
from balancedet.boxes.anchors import FPN_STRIDES, RETINANET_RATIOS, RETINANET_SCALES, RETINANET_SIZES


def torchvision_anchors(generator: TorchvisionAnchorGenerator, image_size: tuple[int, int], strides) -> torch.Tensor:
    height, width = image_size
    maps = [torch.zeros(1, 1, height // s, width // s) for s in strides]
    return generator(ImageList(torch.zeros(1, 3, height, width), [image_size]), maps)[0]


def test_nine_anchors_per_location_with_the_paper_areas_ratios_and_order():
    generator = AnchorGenerator()
    assert generator.num_anchors_per_location == 9
    sizes = feature_map_sizes((200, 296))
    anchors = generator(sizes, dtype=torch.float64)
    counts = generator.num_anchors_per_level(sizes)
    assert counts == [h * w * 9 for h, w in sizes]
    assert anchors.shape == (sum(counts), 4)
    start = 0
    for level, ((height, width), count) in enumerate(zip(sizes, counts, strict=True)):
        grid = anchors[start : start + count].reshape(height, width, 3, 3, 4)  # (i, j, ratio, scale, xyxy)
        start += count
        w = grid[..., 2] - grid[..., 0]
        h = grid[..., 3] - grid[..., 1]
        side = RETINANET_SIZES[level] * torch.tensor(RETINANET_SCALES, dtype=torch.float64)
        torch.testing.assert_close(w * h, (side**2).expand_as(w), rtol=1e-12, atol=0)
        ratio = torch.tensor(RETINANET_RATIOS, dtype=torch.float64)[:, None]
        torch.testing.assert_close(h / w, ratio.expand_as(w), rtol=1e-12, atol=0)
        # location (i, j) is centred on (j * stride, i * stride): row-major, anchors innermost
        stride = FPN_STRIDES[level]
        cx = (grid[..., 0] + grid[..., 2]) / 2
        cy = (grid[..., 1] + grid[..., 3]) / 2
        columns = torch.arange(width, dtype=torch.float64) * stride
        rows = torch.arange(height, dtype=torch.float64) * stride
        torch.testing.assert_close(cx, columns[None, :, None, None].expand_as(cx), rtol=0, atol=1e-12)
        torch.testing.assert_close(cy, rows[:, None, None, None].expand_as(cy), rtol=0, atol=1e-12)
    # sizes 32 to 512 on P3-P7
    areas = (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])
    assert areas.min().item() == pytest.approx(32.0**2) and areas.max().item() == pytest.approx(
        (512 * 2 ** (2 / 3)) ** 2
    )


def test_configurable_and_offset():
    generator = AnchorGenerator(sizes=(16.0, 48.0), strides=(4, 12), ratios=(1.0,), scales=(1.0, 2.0), offset=0.5)
    assert generator.num_anchors_per_location == 2
    anchors = generator([(2, 3), (1, 1)])
    assert anchors.shape == (2 * 3 * 2 + 2, 4)
    assert anchors[0].tolist() == [2.0 - 8, 2.0 - 8, 2.0 + 8, 2.0 + 8]  # centre (0.5 * 4, 0.5 * 4)
    assert anchors[-1].tolist() == [6.0 - 48, 6.0 - 48, 6.0 + 48, 6.0 + 48]  # size 48 * scale 2


def test_results_are_cached_per_size_device_and_dtype():
    generator = AnchorGenerator()
    sizes = feature_map_sizes((128, 160))
    first = generator(sizes)
    assert generator(sizes) is first
    assert generator([torch.zeros(2, 256, h, w).shape for h, w in sizes]) is first  # feature-map shapes work too
    assert generator(sizes, dtype=torch.float64) is not first
    assert torch.equal(generator(sizes, dtype=torch.float64).float(), first)
    other = generator(feature_map_sizes((160, 128)))
    assert other is not first and other.shape == first.shape and not torch.equal(other, first)
    assert generator.level_anchors(0, sizes[0]) is generator.level_anchors(0, sizes[0])
    points = AnchorPoints()
    assert points(sizes) is points(sizes)


def test_equals_torchvision_where_its_rounding_is_exact():
    # torchvision rounds half-sizes to integers and folds scales into per-level sizes; with ratios
    # whose square roots are powers of two and integer sizes nothing is rounded: identical anchors.
    strides = (8, 16, 32)
    ours = AnchorGenerator(sizes=(32, 64, 128), strides=strides, ratios=(0.25, 1.0, 4.0), scales=(1.0, 2.0))
    theirs = TorchvisionAnchorGenerator(((32, 64), (64, 128), (128, 256)), ((0.25, 1.0, 4.0),) * 3)
    image = (256, 384)
    assert torch.equal(
        ours([(h // s, w // s) for s in strides for h, w in [image]]), torchvision_anchors(theirs, image, strides)
    )


def test_close_to_torchvision_retinanet_whose_sizes_are_truncated_and_rounded():
    # torchvision's RetinaNet: sizes (x, int(x * 2^(1/3)), int(x * 2^(2/3))), half-sizes rounded
    sizes = [(x, int(x * 2 ** (1.0 / 3)), int(x * 2 ** (2.0 / 3))) for x in RETINANET_SIZES]
    theirs = TorchvisionAnchorGenerator(tuple(sizes), ((0.5, 1.0, 2.0),) * 5)
    image = (256, 384)  # a multiple of 128, so torchvision's image_size // grid strides are 8..128
    expected = torchvision_anchors(theirs, image, FPN_STRIDES)
    ours = AnchorGenerator()(feature_map_sizes(image))
    assert ours.shape == expected.shape
    torch.testing.assert_close((ours[:, :2] + ours[:, 2:]) / 2, (expected[:, :2] + expected[:, 2:]) / 2)  # centres
    # truncation loses < 1 pixel of size, scaled by 1/sqrt(1/2) at most; rounding adds 0.5
    assert (ours - expected).abs().max().item() <= 0.5 + math.sqrt(2) / 2


def test_anchor_points_and_square_anchors_for_gfl():
    points = AnchorPoints()
    sizes = feature_map_sizes((64, 96))
    xy, strides = points(sizes)
    assert points.num_points_per_level(sizes) == [h * w for h, w in sizes]
    assert xy.shape == (sum(h * w for h, w in sizes), 2) and strides.shape == xy.shape[:1]
    assert xy[:3].tolist() == [[0.0, 0.0], [8.0, 0.0], [16.0, 0.0]]
    assert xy[12].tolist() == [0.0, 8.0]  # the second row of the 8 x 12 P3 grid
    assert strides[: 8 * 12].eq(8).all() and strides[-1].item() == 128
    anchors = points_to_anchors(xy, strides)
    assert anchors[0].tolist() == [-32.0, -32.0, 32.0, 32.0]  # side 8 * stride, ATSS's octave_base_scale
    torch.testing.assert_close(AnchorPoints(offset=0.5)(sizes)[0], xy + strides[:, None] / 2)
    # with one scale and ratio, the anchor generator's anchors are the points' squares
    generator = AnchorGenerator(sizes=[8.0 * s for s in FPN_STRIDES], ratios=(1.0,), scales=(1.0,))
    assert torch.equal(generator(sizes), anchors)


def test_feature_map_sizes_round_up():
    assert feature_map_sizes((800, 1333)) == [(100, 167), (50, 84), (25, 42), (13, 21), (7, 11)]
    assert feature_map_sizes((64, 64), strides=(8,)) == [(8, 8)]


def test_invalid_configurations_raise():
    with pytest.raises(ValueError, match="sizes .* and strides .* must be non-empty, equal length"):
        AnchorGenerator(sizes=(32.0,), strides=(8, 16))
    with pytest.raises(ValueError, match="must be positive"):
        AnchorGenerator(ratios=(0.0, 1.0))
    with pytest.raises(ValueError, match="expected 5 feature-map sizes"):
        AnchorGenerator()([(8, 8)])
    with pytest.raises(ValueError, match="feature-map size of level 1"):
        AnchorGenerator()([(8, 8), (-1, 4), (2, 2), (1, 1), (1, 1)])
    with pytest.raises(ValueError, match="strides must be non-empty and positive"):
        AnchorPoints(strides=())
    with pytest.raises(ValueError, match=r"points must be \(N, 2\) and strides \(N,\)"):
        points_to_anchors(torch.zeros(3, 2), torch.ones(4))
