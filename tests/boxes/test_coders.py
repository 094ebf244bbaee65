"""Box coders: round trips, the dw/dh clamp, torchvision's BoxCoder, distance-to-sides coding."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.models.detection._utils import BoxCoder

from balancedet.boxes import DeltaXYWHCoder, DistancePointCoder
from balancedet.boxes.coders import DEFAULT_SCALE_CLAMP

FAST = settings(max_examples=40, deadline=None)


def random_boxes(n: int, gen: torch.Generator, dtype=torch.float64, shape=()) -> torch.Tensor:
    xy = torch.rand(*shape, n, 2, generator=gen, dtype=dtype) * 500
    wh = torch.rand(*shape, n, 2, generator=gen, dtype=dtype) * 190 + 10  # ratios < 62.5: under the clamp
    return torch.cat((xy, xy + wh), dim=-1)


affine = st.tuples(
    st.lists(st.floats(-0.5, 0.5), min_size=4, max_size=4), st.lists(st.floats(0.05, 2.0), min_size=4, max_size=4)
)


@FAST
@given(seed=st.integers(0, 2**31 - 1), means_stds=affine)
def test_delta_coder_round_trips(seed, means_stds):
    gen = torch.Generator().manual_seed(seed)
    coder = DeltaXYWHCoder(*means_stds)
    anchors, boxes = random_boxes(64, gen), random_boxes(64, gen)
    deltas = coder.encode(anchors, boxes)
    torch.testing.assert_close(coder.decode(anchors, deltas), boxes, rtol=1e-12, atol=1e-9)
    # encode(decode(d)) == d while the de-normalised dw, dh stay under the clamp
    raw = torch.rand(64, 4, generator=gen, dtype=torch.float64) * 8 - 4  # |dw|, |dh| < log(1000 / 16)
    d = (raw - torch.tensor(means_stds[0], dtype=torch.float64)) / torch.tensor(means_stds[1], dtype=torch.float64)
    torch.testing.assert_close(coder.encode(anchors, coder.decode(anchors, d)), d, rtol=1e-9, atol=1e-9)


def test_decode_clamps_dw_dh_from_above_at_log_1000_over_16():
    assert DEFAULT_SCALE_CLAMP == math.log(1000.0 / 16)
    coder = DeltaXYWHCoder()
    anchor = torch.tensor([[0.0, 0.0, 16.0, 8.0]], dtype=torch.float64)
    box = coder.decode(anchor, torch.tensor([[0.0, 0.0, 20.0, -20.0]], dtype=torch.float64))[0]
    assert (box[2] - box[0]).item() == pytest.approx(1000.0)  # 16 * 1000 / 16
    assert (box[3] - box[1]).item() == pytest.approx(8 * math.exp(-20))  # shrinking is not clamped
    again = coder.encode(anchor, box[None])[0]
    assert again[2].item() == pytest.approx(DEFAULT_SCALE_CLAMP) and again[3].item() == pytest.approx(-20.0)
    # the clamp applies after de-normalising: with std 0.2, a raw 20 * 0.2 = 4 is under it
    scaled = DeltaXYWHCoder(stds=(0.1, 0.1, 0.2, 0.2)).decode(anchor, torch.tensor([[0.0, 0.0, 20.0, 0.0]]))[0]
    assert (scaled[2] - scaled[0]).item() == pytest.approx(16 * math.exp(4.0), rel=1e-5)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_agrees_with_torchvision_box_coder(weights):
    gen = torch.Generator().manual_seed(0)
    anchors, boxes = random_boxes(500, gen, torch.float32), random_boxes(500, gen, torch.float32)
    theirs = BoxCoder(weights)
    ours = DeltaXYWHCoder(stds=[1.0 / w for w in weights])
    torch.testing.assert_close(ours.encode(anchors, boxes), theirs.encode_single(boxes, anchors), rtol=1e-5, atol=1e-5)
    deltas = torch.randn(500, 4, generator=gen) * 3 * torch.tensor(weights)  # some above the clamp
    assert (deltas[:, 2:] / torch.tensor(weights[2:]) > DEFAULT_SCALE_CLAMP).any()
    torch.testing.assert_close(
        ours.decode(anchors, deltas), theirs.decode_single(deltas, anchors), rtol=1e-5, atol=1e-3
    )


def test_delta_coder_broadcasts_and_computes_in_at_least_float32():
    gen = torch.Generator().manual_seed(1)
    coder = DeltaXYWHCoder()
    anchors = random_boxes(10, gen, torch.float32)
    deltas = torch.randn(3, 10, 4, generator=gen).bfloat16()
    boxes = coder.decode(anchors, deltas)
    assert boxes.shape == (3, 10, 4) and boxes.dtype == torch.float32
    torch.testing.assert_close(boxes[1], coder.decode(anchors, deltas[1].float()))
    assert coder.encode(anchors.double(), boxes).dtype == torch.float64
    with pytest.raises(ValueError, match=r"deltas must have shape \(\.\.\., 4\), got \(3, 10, 3\)"):
        coder.decode(anchors, deltas[..., :3])
    with pytest.raises(ValueError, match="stds > 0"):
        DeltaXYWHCoder(stds=(1.0, 1.0, 0.0, 1.0))


def test_distance_coder_round_trips_in_stride_units():
    gen = torch.Generator().manual_seed(2)
    boxes = random_boxes(100, gen)
    t = torch.rand(100, 2, generator=gen, dtype=torch.float64)
    points = boxes[:, :2] + t * (boxes[:, 2:] - boxes[:, :2])  # inside the boxes
    strides = torch.tensor([8.0, 16.0, 32.0, 64.0], dtype=torch.float64).repeat(25)
    coder = DistancePointCoder()
    distances = coder.encode(points, boxes, strides)
    assert (distances >= 0).all()
    torch.testing.assert_close(distances[:, 0] * strides, points[:, 0] - boxes[:, 0])
    torch.testing.assert_close(distances[:, 3] * strides, boxes[:, 3] - points[:, 1])
    torch.testing.assert_close(coder.decode(points, distances, strides), boxes, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(coder.decode(points, coder.encode(points, boxes, 8.0), 8.0), boxes)
    torch.testing.assert_close(coder.decode(points, coder.encode(points, boxes)), boxes)


def test_distance_coder_clamps_to_reg_max_minus_eps():
    coder = DistancePointCoder(max_distance=16, eps=0.01)
    points = torch.tensor([[50.0, 50.0]])
    boxes = torch.tensor([[60.0, 0.0, 500.0, 60.0]])  # the point lies left of the box: l < 0
    assert coder.encode(points, boxes, 4.0).tolist() == [[0.0, 12.5, pytest.approx(15.99), 2.5]]
    assert DistancePointCoder().encode(points, boxes, 4.0).tolist() == [[-2.5, 12.5, 112.5, 2.5]]
    with pytest.raises(ValueError, match="max_distance > eps"):
        DistancePointCoder(max_distance=0.01)
    with pytest.raises(ValueError, match=r"points must have shape \(\.\.\., 2\)"):
        coder.encode(boxes, boxes)
