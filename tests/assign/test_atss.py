"""ATSSAssigner against an independent float64 reference of ATSS (arXiv 1912.02424, Alg. 1)."""

import warnings

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from balancedet.assign import BACKGROUND, ATSSAssigner
from balancedet.boxes import AnchorPoints, points_to_anchors
from tests.assign.references import atss_assign
from tests.assign.strategies import FAST, NUM_CLASSES, as_tensors, assert_same_result, problems


def assign(anchors, counts, boxes, labels, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ATSSAssigner(**kwargs)(anchors, counts, boxes, labels, NUM_CLASSES)


@st.composite
def level_counts(draw, total: int) -> list[int]:
    """Split ``total`` anchors into 1-3 consecutive levels (a level may be empty)."""
    cuts = sorted(draw(st.lists(st.integers(0, total), max_size=2)))
    bounds = [0, *cuts, total]
    return [b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def check_against_reference(problem, counts, topk):
    anchors, boxes, labels = as_tensors(*problem)
    result = assign(anchors, counts, boxes, labels, topk=topk)
    for b in range(boxes.shape[0]):
        matched, cls, ambiguous = atss_assign(problem[0], counts, problem[1][b], problem[2][b], NUM_CLASSES, topk)
        assume(not ambiguous)
        assert result.matched[b].tolist() == matched
        assert result.labels[b].tolist() == cls
    return anchors, boxes, labels, result


@FAST
@given(data=st.data(), problem=problems(max_anchors=24), topk=st.integers(1, 5))
def test_matches_the_reference_on_random_anchors_with_ties(data, problem, topk):
    counts = data.draw(level_counts(len(problem[0])))
    anchors, boxes, labels, result = check_against_reference(problem, counts, topk)
    # batched == per image == in groups of one image
    grouped = assign(anchors, counts, boxes, labels, topk=topk, max_elements=1)
    assert_same_result(grouped, result)
    for b in range(boxes.shape[0]):
        one = assign(anchors, counts, boxes[b : b + 1], labels[b : b + 1], topk=topk)
        assert torch.equal(one.matched[0], result.matched[b])


def gfl_anchors(side: int, strides=(4, 8, 16), scale: float = 2.0):
    points = AnchorPoints(strides)
    sizes = [(-(-side // s), -(-side // s)) for s in strides]
    xy, level_strides = points(sizes, dtype=torch.float64)
    return points_to_anchors(xy, level_strides, scale), points.num_points_per_level(sizes)


@FAST
@given(
    boxes=st.lists(
        st.tuples(st.integers(0, 40), st.integers(0, 40), st.integers(1, 24), st.integers(1, 24)),
        min_size=1,
        max_size=4,
    ),
    topk=st.integers(1, 9),
)
def test_matches_the_reference_on_gfl_grids(boxes, topk):
    # one square anchor per location on three levels: the box centres fall on and between grid
    # points, so distances tie at the k-th place and IoUs tie between symmetric anchors
    anchors, counts = gfl_anchors(48)
    boxes = [(x, y, x + w, y + h) for x, y, w, h in boxes]
    check_against_reference((anchors.tolist(), [boxes], [[i % NUM_CLASSES for i in range(len(boxes))]]), counts, topk)


def test_distance_ties_go_to_the_lowest_anchor_index_and_iou_ties_to_the_lowest_box():
    # anchors 0 and 1 are duplicates: topk=1 must pick anchor 0; boxes 0 and 1 are duplicates
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [30.0, 30.0, 40.0, 40.0]])
    boxes = torch.tensor([[[1.0, 1.0, 9.0, 9.0], [1.0, 1.0, 9.0, 9.0]]])
    result = ATSSAssigner(topk=1)(anchors, [3], boxes, torch.tensor([[2, 1]]), NUM_CLASSES)
    assert result.matched.tolist() == [[0, BACKGROUND, BACKGROUND]]
    assert result.labels.tolist() == [[2, NUM_CLASSES, NUM_CLASSES]]


def test_anchor_claimed_by_two_boxes_takes_the_higher_iou():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [40.0, 40.0, 50.0, 50.0]])
    # both boxes contain anchor 0's centre; IoU 0.64 for box 0, 0.81 for box 1
    boxes = torch.tensor([[[1.0, 1.0, 9.0, 9.0], [0.5, 0.5, 9.5, 9.5]]])
    result = ATSSAssigner(topk=1)(anchors, [2], boxes, torch.tensor([[0, 1]]), NUM_CLASSES)
    assert result.matched.tolist() == [[1, BACKGROUND]]


def test_centre_must_be_strictly_inside_by_center_eps():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0]])  # centre (5, 5)
    for x1, positive in [(4.74, True), (4.75, False), (5.0, False)]:  # 5 - 4.75 = 0.25 exactly
        boxes = torch.tensor([[[x1, 0.0, 20.0, 10.0]]], dtype=torch.float64)
        result = ATSSAssigner(topk=1, center_eps=0.25)(anchors.double(), [1], boxes, torch.tensor([[0]]), NUM_CLASSES)
        assert result.positive.item() is positive, x1
    # the default 0.01 pixel of the authors' code
    boxes = torch.tensor([[[4.98, 0.0, 20.0, 10.0]], [[5.0, 0.0, 20.0, 10.0]]])
    result = ATSSAssigner(topk=1)(anchors, [1], boxes, torch.tensor([[0], [0]]), NUM_CLASSES)
    assert result.positive.tolist() == [[True], [False]]


def test_threshold_is_mean_plus_unbiased_std_of_the_candidates():
    # one level, topk = 3: candidates' IoUs 1, 0.5 and 0.25 -> threshold 0.5833 + 0.3819 = 0.965
    anchors = torch.tensor([[0.0, 0.0, 8.0, 8.0], [0.0, 0.0, 8.0, 4.0], [0.0, 0.0, 4.0, 4.0], [90.0, 90, 99, 99]])
    boxes = torch.tensor([[[0.0, 0.0, 8.0, 8.0]]])
    result = ATSSAssigner(topk=3)(anchors, [4], boxes, torch.tensor([[0]]), NUM_CLASSES)
    assert result.matched.tolist() == [[0, BACKGROUND, BACKGROUND, BACKGROUND]]
    ious = torch.tensor([1.0, 0.5, 0.25])
    assert ious.mean() + ious.std() == pytest.approx(0.9652, abs=1e-4)


def test_no_boxes_degenerate_boxes_and_shapes():
    anchors, counts = gfl_anchors(32)
    none = ATSSAssigner()(anchors, counts, torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.long), NUM_CLASSES)
    assert (none.matched == BACKGROUND).all() and none.labels.shape == (2, anchors.shape[0])
    boxes = torch.tensor(
        [[[4.0, 4.0, 20.0, 20.0], [3.0, 3.0, 3.0, 9.0]], [[0.0, 0.0, 0.0, 0.0], [9.0, 9.0, 2.0, 30.0]]]
    )
    labels = torch.tensor([[0, 1], [-1, 2]])
    with pytest.warns(UserWarning, match=r"image 'p': 1 box; image 'q': 1 box"):
        result = ATSSAssigner()(anchors, counts, boxes, labels, NUM_CLASSES, image_ids=["p", "q"])
    assert (result.matched[0] <= 0).all() and (result.matched[0] == 0).any()
    assert (result.matched[1] == BACKGROUND).all()
    with pytest.raises(ValueError, match="num_anchors_per_level"):
        ATSSAssigner()(anchors, [1, 2], boxes[:1, :1], labels[:1, :1], NUM_CLASSES)
    with pytest.raises(ValueError, match="topk"):
        ATSSAssigner(topk=0)
