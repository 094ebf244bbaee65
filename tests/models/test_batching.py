import pytest
import torch

from balancedet.models.batching import batch_images, pad_targets


def test_list_of_images_is_zero_padded_bottom_right():
    a, b = torch.randn(3, 50, 70), torch.randn(3, 64, 30)
    batch, sizes = batch_images([a, b], size_divisible=32)
    assert batch.shape == (2, 3, 64, 96)
    assert sizes == [(50, 70), (64, 30)]
    assert torch.equal(batch[0, :, :50, :70], a) and batch[0, :, 50:].abs().sum() == 0
    assert torch.equal(batch[1, :, :, :30], b) and batch[1, :, :, 30:].abs().sum() == 0
    assert batch_images([a])[0].shape == (1, 3, 128, 128)


def test_a_batch_tensor_passes_through():
    images = torch.randn(2, 3, 40, 50)
    batch, sizes = batch_images(images)
    assert batch is images and sizes == [(40, 50), (40, 50)]


def test_pad_targets_with_an_empty_image():
    targets = [
        {"boxes": torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]), "labels": torch.tensor([3, 0])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    boxes, labels = pad_targets(targets, "cpu")
    assert boxes.shape == (2, 2, 4) and boxes.dtype == torch.float32
    assert labels.tolist() == [[3, 0], [-1, -1]]
    assert torch.equal(boxes[0], targets[0]["boxes"]) and boxes[1].abs().sum() == 0
    boxes, labels = pad_targets(targets[1:], "cpu")
    assert boxes.shape == (1, 0, 4) and labels.shape == (1, 0)


def test_bad_inputs_name_the_offender():
    with pytest.raises(ValueError, match="image 1"):
        batch_images([torch.randn(3, 8, 8), torch.randn(8, 8)])
    with pytest.raises(ValueError, match="target 0"):
        pad_targets([{"boxes": torch.zeros(2, 4), "labels": torch.zeros(3)}], "cpu")
