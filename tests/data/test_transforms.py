"""Transforms keep boxes aligned with the pixels; the collate pads to a multiple of the stride."""

from __future__ import annotations

import pytest
import torch

from balancedet.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DetectionCollate,
    DetectionTransform,
    boxes_to_original,
    collate_detection,
)


def _normalised(image: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (image.float() / 255 - mean) / std


def _sample(height=40, width=60):
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8)
    boxes = torch.tensor([[10.0, 5.0, 20.0, 15.0], [0.0, 0.0, 60.0, 40.0]])
    return image, boxes, torch.tensor([3, 1]), torch.tensor([False, True])


def test_flip_mirrors_boxes_and_pixels():
    image, boxes, labels, ignore = _sample()
    out = DetectionTransform(train=True, min_size=None, flip_prob=1.0)(image, boxes, labels, ignore)
    torch.testing.assert_close(out["boxes"], torch.tensor([[40.0, 5.0, 50.0, 15.0], [0.0, 0.0, 60.0, 40.0]]))
    torch.testing.assert_close(out["image"], _normalised(image.flip(-1)))
    assert out["image"].dtype == torch.float32
    torch.testing.assert_close(out["labels"], labels)
    torch.testing.assert_close(out["ignore"], ignore)


def test_evaluation_never_flips():
    image, boxes, labels, ignore = _sample()
    out = DetectionTransform(train=False, min_size=None)(image, boxes, labels, ignore)
    torch.testing.assert_close(out["boxes"], boxes)
    torch.testing.assert_close(out["image"], _normalised(image))


@pytest.mark.parametrize(
    "min_size, max_size, size",
    [(80, 1000, (80, 120)), (80, 100, (66, 100)), (20, None, (20, 30))],
)
def test_resize_keeps_the_aspect_ratio_and_scales_the_boxes(min_size, max_size, size):
    image, boxes, labels, ignore = _sample()
    out = DetectionTransform(train=False, min_size=min_size, max_size=max_size)(image, boxes, labels, ignore)
    assert tuple(out["image"].shape[-2:]) == size
    scale = torch.tensor([size[1] / 60, size[0] / 40, size[1] / 60, size[0] / 40])
    torch.testing.assert_close(out["boxes"], boxes * scale)


def test_boxes_that_become_degenerate_are_removed_with_their_labels_and_flags():
    image = torch.zeros((3, 400, 400), dtype=torch.uint8)
    boxes = torch.tensor([[10.0, 10.0, 15.0, 200.0], [100.0, 100.0, 300.0, 300.0], [50.0, 50.0, 50.5, 90.0]])
    out = DetectionTransform(train=False, min_size=40, max_size=100)(
        image, boxes, torch.tensor([0, 1, 2]), torch.tensor([True, False, False])
    )
    torch.testing.assert_close(out["boxes"], torch.tensor([[10.0, 10.0, 30.0, 30.0]]))
    torch.testing.assert_close(out["labels"], torch.tensor([1]))
    torch.testing.assert_close(out["ignore"], torch.tensor([False]))


def test_no_boxes_is_fine():
    image = torch.zeros((3, 30, 30), dtype=torch.uint8)
    empty = torch.zeros((0, 4))
    out = DetectionTransform(train=True, min_size=60, max_size=100)(
        image, empty, torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.bool)
    )
    assert out["boxes"].shape == (0, 4) and out["image"].shape == (3, 60, 60)


def test_min_size_must_stay_below_max_size():
    with pytest.raises(ValueError, match="max_size"):
        DetectionTransform(train=True, min_size=800, max_size=600)


def test_boxes_to_original_undoes_the_resize():
    boxes = torch.tensor([[10.0, 20.0, 30.0, 40.0]])
    target = {"scale": (0.5, 2.0)}  # (sy, sx)
    torch.testing.assert_close(boxes_to_original(boxes, target), torch.tensor([[5.0, 40.0, 15.0, 80.0]]))


def test_collate_pads_to_a_multiple_of_size_divisible():
    first, second = torch.rand(3, 50, 70), torch.rand(3, 130, 20)
    targets = [{"image_id": 1}, {"image_id": 2}]
    images, out = collate_detection([(first, targets[0]), (second, targets[1])])
    assert images.shape == (2, 3, 256, 128) and images.dtype == torch.float32
    torch.testing.assert_close(images[0, :, :50, :70], first)
    torch.testing.assert_close(images[1, :, :130, :20], second)
    assert images[0, :, 50:].abs().sum() == 0 and images[0, :, :, 70:].abs().sum() == 0
    assert out == targets
    images, _ = DetectionCollate(32)([(first, {}), (second, {})])
    assert images.shape == (2, 3, 160, 96)
    with pytest.raises(ValueError, match="empty batch"):
        collate_detection([])


def composed_v2_pipeline(train: bool, min_size, max_size, flip_prob: float):
    """The reference: torchvision's composed ``v2`` transforms on ``tv_tensors``, the steps
    ``DetectionTransform`` calls as kernels."""
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    steps = [v2.Resize(min_size, max_size=max_size, antialias=True)] if min_size is not None else []
    if train and flip_prob > 0:
        steps.append(v2.RandomHorizontalFlip(flip_prob))
    steps += [
        v2.ClampBoundingBoxes(),
        v2.SanitizeBoundingBoxes(min_size=1.0, min_area=1.0, labels_getter=lambda s: (s["labels"], s["ignore"])),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ]
    pipeline = v2.Compose(steps)

    def apply(image, boxes, labels, ignore):
        h, w = image.shape[-2:]
        out = pipeline(
            {
                "image": tv_tensors.Image(image),
                "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w)),
                "labels": labels,
                "ignore": ignore,
            }
        )
        return (
            out["image"].as_subclass(torch.Tensor),
            out["boxes"].as_subclass(torch.Tensor),
            out["labels"],
            out["ignore"],
        )

    return apply


@pytest.mark.parametrize(
    ("train", "min_size", "max_size", "shape"),
    [
        (True, 128, None, (128, 128)),
        (True, 96, 160, (120, 300)),
        (False, 200, 333, (90, 70)),
        (True, None, None, (50, 64)),
    ],
)
def test_the_kernels_give_what_the_composed_v2_pipeline_gives(train, min_size, max_size, shape):
    generator = torch.Generator().manual_seed(0)
    ours = DetectionTransform(train=train, min_size=min_size, max_size=max_size, flip_prob=0.5)
    reference = composed_v2_pipeline(train, min_size, max_size, 0.5)
    h, w = shape
    for trial in range(12):
        image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator)
        xy = torch.rand(6, 2, generator=generator) * torch.tensor([w, h]) * 1.1 - 2  # some outside the image
        wh = torch.rand(6, 2, generator=generator) * torch.tensor([w, h]) * 0.5
        boxes = torch.cat([xy, xy + wh], 1)
        boxes[0, 2:] = boxes[0, :2] + 0.4  # degenerate: removed by both
        labels, ignore = torch.arange(6), torch.rand(6, generator=generator) < 0.3
        torch.manual_seed(trial)
        out = ours(image, boxes, labels, ignore)
        torch.manual_seed(trial)  # the same flip draw
        ref_image, ref_boxes, ref_labels, ref_ignore = reference(image, boxes, labels, ignore)
        assert torch.equal(out["image"], ref_image)
        assert torch.equal(out["boxes"], ref_boxes.reshape(-1, 4))
        assert torch.equal(out["labels"], ref_labels) and torch.equal(out["ignore"], ref_ignore)
