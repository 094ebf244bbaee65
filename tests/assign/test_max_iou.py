"""MaxIoUAssigner against a brute-force float64 reference, chunking, batching, edge cases, torchvision."""

import math
import warnings

import pytest
import torch
import torchvision
from hypothesis import given
from hypothesis import strategies as st
from torchvision.models.detection._utils import Matcher

from balancedet.assign import BACKGROUND, IGNORE, MaxIoUAssigner
from balancedet.assign.max_iou import MIN_CHUNK_ANCHORS
from balancedet.bench.assign import peak_bytes
from balancedet.boxes import AnchorGenerator, feature_map_sizes
from tests.assign.references import max_iou_assign
from tests.assign.strategies import FAST, NUM_CLASSES, as_tensors, assert_same_result, problems

THRESHOLDS = st.sampled_from([(0.5, 0.4, 0.0), (0.5, 0.5, 0.0), (0.7, 0.3, 0.0), (0.5, 0.4, 0.3), (0.3, 0.1, 0.05)])


def assign(anchors, boxes, labels, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return MaxIoUAssigner(**kwargs)(anchors, boxes, labels, NUM_CLASSES)


@FAST
@given(
    problem=problems(),
    thresholds=THRESHOLDS,
    low_quality=st.booleans(),
    max_elements=st.sampled_from([None, 1, 3, 16, 64]),
)
def test_matches_the_reference_with_ties_and_degenerate_boxes(problem, thresholds, low_quality, max_elements):
    pos, neg, min_pos = thresholds
    anchors, boxes, labels = as_tensors(*problem)
    kwargs = dict(pos_iou=pos, neg_iou=neg, min_pos_iou=min_pos, low_quality=low_quality, max_elements=max_elements)
    result = assign(anchors, boxes, labels, **kwargs)
    for b in range(boxes.shape[0]):
        matched, cls, best = max_iou_assign(
            problem[0], problem[1][b], problem[2][b], NUM_CLASSES, pos, neg, min_pos, low_quality
        )
        assert result.matched[b].tolist() == matched
        assert result.labels[b].tolist() == cls
        assert result.max_iou[b].tolist() == best


@FAST
@given(problem=problems(max_anchors=40), low_quality=st.booleans(), max_elements=st.integers(1, 200))
def test_chunked_batched_and_per_image_results_are_identical(problem, low_quality, max_elements):
    for dtype in (torch.float64, torch.float32):
        anchors, boxes, labels = as_tensors(*problem, dtype=dtype)
        whole = assign(anchors, boxes, labels, low_quality=low_quality, max_elements=1 << 30)
        chunked = assign(anchors, boxes, labels, low_quality=low_quality, max_elements=max_elements)
        assert_same_result(chunked, whole)
        for b in range(boxes.shape[0]):
            one = assign(anchors, boxes[b : b + 1], labels[b : b + 1], low_quality=low_quality)
            assert torch.equal(one.matched[0], whole.matched[b])
            assert torch.equal(one.labels[0], whole.labels[b])
            assert torch.equal(one.max_iou[0], whole.max_iou[b])


def test_low_quality_ties_and_shared_claims_within_and_across_chunks():
    # box 0 (IoU 0.16 with each copy of anchor a) claims all five copies; its duplicate box 1 claims
    # the same five at the same IoU and loses them (higher index); box 2 claims anchor B, which box 3
    # also claims at a lower IoU. Chunks of 1 to 12 anchors split the copies every possible way.
    a = [0.0, 0.0, 10.0, 10.0]
    b = [40.0, 40.0, 50.0, 50.0]
    other = [[20.0 + i, 0.0, 30.0 + i, 10.0] for i in range(6)]
    anchors = [a, a, *other[:3], a, b, *other[3:], a, a]
    boxes = [[0.0, 0.0, 4.0, 4.0], [0.0, 0.0, 4.0, 4.0], [40.0, 40.0, 46.0, 46.0], [44.0, 44.0, 48.0, 48.0]]
    labels = [[0, 1, 2, 1]]
    expected, expected_labels, _ = max_iou_assign(anchors, boxes, labels[0], NUM_CLASSES, 0.5, 0.4, 0.0, True)
    assert expected.count(0) == 5 and 1 not in expected and expected[6] == 2
    tensors = as_tensors(anchors, [boxes], labels)
    for max_elements in [None, *range(1, 50)]:
        result = MaxIoUAssigner(max_elements=max_elements)(*tensors, NUM_CLASSES)
        assert result.matched[0].tolist() == expected, max_elements
        assert result.labels[0].tolist() == expected_labels, max_elements


def test_chunks_group_images_when_boxes_are_many():
    # 4 images x 600 boxes with max_elements below 4 * 600 * MIN_CHUNK_ANCHORS: groups of images
    gen = torch.Generator().manual_seed(0)
    anchors = AnchorGenerator()(feature_map_sizes((128, 128)))
    xy = torch.rand(4, 600, 2, generator=gen) * 100
    boxes = torch.cat((xy, xy + 4 + torch.rand(4, 600, 2, generator=gen) * 60), dim=-1)
    labels = torch.randint(0, NUM_CLASSES, (4, 600), generator=gen)
    max_elements = 2 * 600 * MIN_CHUNK_ANCHORS
    assert_same_result(
        assign(anchors, boxes, labels, max_elements=max_elements), assign(anchors, boxes, labels, max_elements=1 << 30)
    )


def one_anchor_problem(box, anchor=(0.0, 0.0, 10.0, 10.0), **kwargs):
    result = MaxIoUAssigner(**kwargs)(torch.tensor([anchor]), torch.tensor([[box]]), torch.tensor([[1]]), NUM_CLASSES)
    return result.matched.item(), result.labels.item(), result.max_iou.item()


def test_thresholds_are_inclusive_below_pos_and_exclusive_below_neg():
    assert one_anchor_problem((0.0, 0.0, 10.0, 5.0), low_quality=False) == (0, 1, 0.5)  # IoU 0.5: positive
    assert one_anchor_problem((0.0, 0.0, 10.0, 4.0), low_quality=False)[:2] == (IGNORE, -1)  # IoU 0.4: ignored
    assert one_anchor_problem((0.0, 0.0, 10.0, 3.0), low_quality=False)[:2] == (BACKGROUND, NUM_CLASSES)
    # with low-quality matches the single anchor is the box's best: positive whatever its IoU
    assert one_anchor_problem((0.0, 0.0, 10.0, 3.0))[:2] == (0, 1)
    # unless that IoU is not above min_pos_iou
    assert one_anchor_problem((0.0, 0.0, 10.0, 3.0), min_pos_iou=0.3)[:2] == (BACKGROUND, NUM_CLASSES)


def test_equal_boxes_go_to_the_lowest_index_and_every_tied_anchor_is_claimed():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 0.0, 30.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [20.0, 0.0, 24.0, 4.0]]])
    result = MaxIoUAssigner()(anchors, boxes, torch.tensor([[0, 1, 2]]), NUM_CLASSES)
    # anchors 0 and 2 (duplicates) tie for boxes 0 and 1 (duplicates): both anchors, box 0
    assert result.matched.tolist() == [[0, 2, 0]]
    assert result.labels.tolist() == [[0, 2, 0]]


def test_claimed_anchor_goes_to_its_claimant_unlike_torchvision():
    # anchor 0's best box is box 1 (IoU 0.45, ignored band); box 1's best anchor is anchor 1 (IoU 1).
    # Box 0's best anchor is anchor 0 (IoU 0.25): box 0 claims it. torchvision gives it to box 1.
    anchors = torch.tensor([[0.0, 0.0, 20.0, 20.0], [0.0, 0.0, 20.0, 9.0]])
    boxes = torch.tensor([[[0.0, 10.0, 10.0, 20.0], [0.0, 0.0, 20.0, 9.0]]])
    result = MaxIoUAssigner()(anchors, boxes, torch.tensor([[0, 1]]), NUM_CLASSES)
    assert result.max_iou.tolist() == [[pytest.approx(0.45), 1.0]]
    assert result.matched.tolist() == [[0, 1]]
    theirs = Matcher(0.5, 0.4, allow_low_quality_matches=True)(torchvision.ops.box_iou(boxes[0], anchors))
    assert theirs.tolist() == [1, 1]


def test_boxes_that_overlap_nothing_or_are_degenerate_claim_nothing():
    # mmdetection's loop lets such a box (best IoU 0) claim every anchor it does not touch
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [10.0, 0.0, 20.0, 10.0]])
    boxes = torch.tensor([[[100.0, 100.0, 110.0, 110.0], [0.0, 0.0, 0.0, 10.0]]])
    with pytest.warns(UserWarning, match="image 0: 1 box"):
        result = MaxIoUAssigner()(anchors, boxes, torch.tensor([[0, 1]]), NUM_CLASSES)
    assert result.matched.tolist() == [[BACKGROUND, BACKGROUND]]
    assert result.max_iou.tolist() == [[0.0, 0.0]]


def test_degenerate_boxes_are_dropped_with_a_warning_naming_the_image():
    anchors = AnchorGenerator()(feature_map_sizes((64, 64)))
    good = [10.0, 10.0, 40.0, 30.0]
    boxes = torch.tensor([[good, [5.0, 5.0, 5.0, 20.0]], [good, [0.0, 0.0, 0.0, 0.0]], [good, [8.0, 9.0, 3.0, 12.0]]])
    labels = torch.tensor([[0, 1], [0, -1], [0, 2]])
    with pytest.warns(UserWarning, match=r"dropped .*image 'a\.jpg': 1 box; image 'c\.jpg': 1 box\)") as record:
        result = MaxIoUAssigner()(anchors, boxes, labels, NUM_CLASSES, image_ids=["a.jpg", "b.jpg", "c.jpg"])
    assert len(record) == 1 and "b.jpg" not in str(record[0].message)  # padding is not degenerate
    expected = MaxIoUAssigner()(anchors, boxes[:, :1], labels[:, :1], NUM_CLASSES)
    assert torch.equal(result.matched, expected.matched)
    assert torch.equal(result.max_iou, expected.max_iou)
    assert (result.positive.sum(1) > 0).all()


def test_images_without_boxes_are_all_background():
    anchors = AnchorGenerator()(feature_map_sizes((64, 64)))
    for boxes, labels in [
        (torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.long)),
        (torch.tensor([[[0.0, 0, 0, 0]], [[10.0, 10, 40, 40]]]), torch.tensor([[-1], [1]])),
    ]:
        for max_elements in (None, 7):
            result = MaxIoUAssigner(max_elements=max_elements)(anchors, boxes, labels, NUM_CLASSES)
            assert result.matched.shape == result.labels.shape == result.max_iou.shape == (2, anchors.shape[0])
            assert (result.matched[0] == BACKGROUND).all() and (result.labels[0] == NUM_CLASSES).all()
            assert (result.max_iou[0] == 0).all()
    boxes = torch.tensor([[[0.0, 0.0, 4.0, 4.0]]]).repeat(2, 1, 1)
    empty = MaxIoUAssigner()(torch.zeros(0, 4), boxes, torch.ones(2, 1, dtype=torch.long), NUM_CLASSES)
    assert empty.matched.shape == (2, 0)


def random_scene(side: int, images: int, boxes: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    anchors = AnchorGenerator()(feature_map_sizes((side, side)))
    wh = torch.exp(torch.empty(images, boxes, 2).uniform_(2.0, math.log(side / 2), generator=gen))
    xy = torch.rand(images, boxes, 2, generator=gen) * (side - wh)
    return anchors, torch.cat((xy, xy + wh), dim=-1), torch.randint(0, NUM_CLASSES, (images, boxes), generator=gen)


def test_agrees_with_torchvision_matcher_where_the_conventions_agree():
    anchors, boxes, labels = random_scene(256, 3, 20)
    plain = MaxIoUAssigner(low_quality=False)(anchors, boxes, labels, NUM_CLASSES)
    ours = MaxIoUAssigner()(anchors, boxes, labels, NUM_CLASSES)
    for b in range(boxes.shape[0]):
        iou = torchvision.ops.box_iou(boxes[b], anchors)  # (G, A), as torchvision's RetinaNet
        assert torch.equal(plain.matched[b], Matcher(0.5, 0.4, allow_low_quality_matches=False)(iou))
        assert torch.equal(plain.max_iou[b], iou.max(dim=0).values)
        theirs = Matcher(0.5, 0.4, allow_low_quality_matches=True)(iou)
        differ = ours.matched[b] != theirs
        # the anchors both call low-quality matches agree, except for who gets a claimed anchor
        claimed = (iou == iou.max(dim=1, keepdim=True).values).any(dim=0)
        assert not (differ & ~claimed).any()
        claimant = ours.matched[b][differ]
        assert torch.equal(iou[claimant, differ.nonzero()[:, 0]], iou.max(dim=1).values[claimant])


def test_float16_inputs_are_assigned_in_float32_and_float64_stays_float64():
    anchors, boxes, labels = random_scene(128, 2, 6)
    half = MaxIoUAssigner()(anchors.half(), boxes.half(), labels, NUM_CLASSES)
    assert half.max_iou.dtype == torch.float32
    assert torch.equal(half.matched, MaxIoUAssigner()(anchors.half().float(), boxes.half().float(), labels, 3).matched)
    assert MaxIoUAssigner()(anchors.double(), boxes, labels, NUM_CLASSES).max_iou.dtype == torch.float64


def test_memory_stays_under_the_cap_at_200k_anchors_by_500_boxes():
    anchors = AnchorGenerator()(feature_map_sizes((1056, 1056)))[:200_000]
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(1, 500, 2, generator=gen) * 900
    boxes = torch.cat((xy, xy + 8 + torch.rand(1, 500, 2, generator=gen) * 140), dim=-1)
    labels = torch.randint(0, NUM_CLASSES, (1, 500), generator=gen)
    result = None

    def run():
        nonlocal result
        result = MaxIoUAssigner()(anchors, boxes, labels, NUM_CLASSES)

    peak = peak_bytes(run, torch.device("cpu"))
    # the dense (A, G) float32 IoU matrix alone would be 400 MB; outputs are 200k x 20 bytes = 4 MB
    assert peak < 32 * 2**20, peak
    # low-quality matches give almost every box an anchor (two boxes can share their best one)
    assert result.matched[result.positive].unique().numel() > 450


def test_invalid_inputs_raise_with_the_offending_value():
    anchors, boxes, labels = torch.rand(5, 4), torch.rand(2, 3, 4), torch.zeros(2, 3, dtype=torch.long)
    assigner = MaxIoUAssigner()
    with pytest.raises(ValueError, match=r"anchors must be a floating \(A, 4\)"):
        assigner(anchors[:, :3], boxes, labels, NUM_CLASSES)
    with pytest.raises(ValueError, match=r"gt_boxes must be a floating \(B, G, 4\)"):
        assigner(anchors, boxes[0], labels, NUM_CLASSES)
    with pytest.raises(ValueError, match="gt_labels must be an integer"):
        assigner(anchors, boxes, labels.float(), NUM_CLASSES)
    bad = labels.clone()
    bad[1, 2] = NUM_CLASSES
    with pytest.raises(ValueError, match=r"labels >= num_classes=3 \(image 'y': 1 boxes\)"):
        assigner(anchors, boxes, bad, NUM_CLASSES, image_ids=["x", "y"])
    with pytest.raises(ValueError, match="1 image_ids for a batch of 2 images"):
        assigner(anchors, boxes, labels, NUM_CLASSES, image_ids=["x"])
    with pytest.raises(ValueError, match="num_classes"):
        assigner(anchors, boxes, labels, 0)
    with pytest.raises(ValueError, match="neg_iou"):
        MaxIoUAssigner(pos_iou=0.4, neg_iou=0.5)
    with pytest.raises(ValueError, match="max_elements"):
        MaxIoUAssigner(max_elements=0)


def test_result_helpers():
    anchors, boxes, labels = random_scene(128, 2, 5)
    result = MaxIoUAssigner()(anchors, boxes, labels, NUM_CLASSES)
    assert torch.equal(result.positive | result.negative | ~result.valid, torch.ones_like(result.positive))
    assert result.num_positives() == result.positive.sum()
    targets = result.matched_values(boxes)
    pos = result.positive
    assert torch.equal(targets[pos], boxes[pos.nonzero()[:, 0], result.matched[pos]])
    assert torch.equal(result.matched_values(labels)[pos], result.labels[pos])
