"""IoU geometry: torchvision's pairwise ops, the element-wise and batched broadcasting variants."""

import torch
import torchvision

from balancedet.boxes import (
    aligned_box_iou,
    aligned_generalized_box_iou,
    box_area,
    box_centres,
    box_iou,
    broadcast_box_iou,
    generalized_box_iou,
    valid_boxes,
)


def random_boxes(*shape: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(*shape, 2, generator=gen) * 100
    return torch.cat((xy, xy + 1 + torch.rand(*shape, 2, generator=gen) * 60), dim=-1)


def test_pairwise_ops_are_torchvisions():
    a, b = random_boxes(30), random_boxes(20, seed=1)
    assert torch.equal(box_iou(a, b), torchvision.ops.box_iou(a, b))
    assert torch.equal(generalized_box_iou(a, b), torchvision.ops.generalized_box_iou(a, b))


def test_aligned_ious_are_the_diagonal_of_the_pairwise_ones():
    a, b = random_boxes(40), random_boxes(40, seed=1)
    torch.testing.assert_close(aligned_box_iou(a, b), torchvision.ops.box_iou(a, b).diagonal())
    torch.testing.assert_close(aligned_generalized_box_iou(a, b), torchvision.ops.generalized_box_iou(a, b).diagonal())
    # broadcasting leading dimensions
    assert aligned_box_iou(a[None, :], b[:5, None]).shape == (5, 40)
    assert aligned_box_iou(a[:1], a[:1]).item() == 1.0
    disjoint = torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([[2.0, 0.0, 3.0, 1.0]])
    assert aligned_box_iou(*disjoint).item() == 0.0
    assert aligned_generalized_box_iou(*disjoint).item() == torch.tensor(-1.0 / 3).item()


def test_broadcast_iou_is_torchvisions_bit_for_bit_per_image_and_per_chunk():
    anchors, boxes = random_boxes(300), random_boxes(3, 7, seed=1)
    iou = broadcast_box_iou(anchors, boxes)
    assert iou.shape == (3, 300, 7)
    for b in range(3):
        assert torch.equal(iou[b], torchvision.ops.box_iou(anchors, boxes[b]))
    assert torch.equal(broadcast_box_iou(anchors[100:137], boxes), iou[:, 100:137])
    assert torch.equal(broadcast_box_iou(anchors, boxes[1:2, 2:5]), iou[1:2, :, 2:5])
    # an infinite area makes a box's IoU exactly 0 (how the assigners neutralise padding)
    area = box_area(boxes)
    area[1, 3] = float("inf")
    masked = broadcast_box_iou(anchors, boxes, area)
    assert (masked[1, :, 3] == 0).all()
    masked[1, :, 3] = iou[1, :, 3]
    assert torch.equal(masked, iou)


def test_area_validity_and_centres():
    boxes = torch.tensor([[0.0, 0.0, 4.0, 2.0], [0.0, 0.0, 0.0, 2.0], [3.0, 0.0, 1.0, 2.0], [0.0, float("nan"), 1, 1]])
    assert box_area(boxes)[:3].tolist() == [8.0, 0.0, -4.0]
    assert valid_boxes(boxes).tolist() == [True, False, False, False]
    assert box_centres(boxes[:1]).tolist() == [[2.0, 1.0]]
