"""Hypothesis strategies for the assigner tests: small integer-coordinate problems with exact ties."""

import torch
from hypothesis import settings
from hypothesis import strategies as st

FAST = settings(max_examples=60, deadline=None)
NUM_CLASSES = 3

anchor_boxes = st.tuples(st.integers(0, 16), st.integers(0, 16), st.integers(1, 10), st.integers(1, 10)).map(
    lambda t: (t[0], t[1], t[0] + t[2], t[1] + t[3])
)
# widths and heights down to -1: zero and negative sizes are degenerate boxes the assigners drop
gt_boxes = st.tuples(st.integers(-2, 16), st.integers(-2, 16), st.integers(-1, 12), st.integers(-1, 12)).map(
    lambda t: (t[0], t[1], t[0] + t[2], t[1] + t[3])
)


@st.composite
def with_duplicates(draw, items: list) -> list:
    """``items`` with a few of its entries copied to the end (exact ties for the assigners)."""
    if not items:
        return items
    copies = draw(st.lists(st.integers(0, len(items) - 1), max_size=3))
    return items + [items[i] for i in copies]


@st.composite
def problems(draw, max_images: int = 3, max_anchors: int = 20, max_boxes: int = 5):
    """``(anchors, boxes, labels)`` as nested lists: ``(A, 4)``, ``(B, G, 4)``, ``(B, G)`` (-1 padding)."""
    anchors = draw(with_duplicates(draw(st.lists(anchor_boxes, min_size=1, max_size=max_anchors))))
    batch = draw(st.integers(1, max_images))
    num_boxes = draw(st.integers(0, max_boxes))
    boxes, labels = [], []
    for _ in range(batch):
        count = draw(st.integers(0, num_boxes))
        image = draw(with_duplicates(draw(st.lists(gt_boxes, min_size=count, max_size=count))))[:num_boxes]
        image_labels = [draw(st.integers(-1, NUM_CLASSES - 1)) for _ in image]
        padding = num_boxes - len(image)
        boxes.append(image + [(0, 0, 0, 0)] * padding)
        labels.append(image_labels + [-1] * padding)
    return anchors, boxes, labels


def as_tensors(anchors, boxes, labels, dtype=torch.float64):
    batch = len(boxes)
    num_boxes = len(boxes[0]) if batch else 0
    return (
        torch.tensor(anchors, dtype=dtype).reshape(-1, 4),
        torch.tensor(boxes, dtype=dtype).reshape(batch, num_boxes, 4),
        torch.tensor(labels, dtype=torch.long).reshape(batch, num_boxes),
    )


def assert_same_result(a, b) -> None:
    assert torch.equal(a.matched, b.matched)
    assert torch.equal(a.labels, b.labels)
    assert torch.equal(a.max_iou, b.max_iou)
    assert a.num_classes == b.num_classes
