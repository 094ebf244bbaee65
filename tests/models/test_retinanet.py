import copy
import math

import pytest
import torch
from torch import nn

from balancedet.assign import MaxIoUAssigner
from balancedet.boxes.anchors import FPN_STRIDES
from balancedet.losses.balanced_l1 import BalancedL1Loss
from balancedet.losses.focal import FocalLoss, sigmoid_focal_loss
from balancedet.losses.ghm import GHMC, GHMR
from balancedet.losses.iou import GIoULoss
from balancedet.losses.smooth_l1 import L1Loss, smooth_l1_loss
from balancedet.models import DenseHead, DensePostProcess, PositiveNormalizer, ResNetBackbone, RetinaNet, build_pyramid
from balancedet.models.heads import flatten_level
from balancedet.samplers import HardNegativeMiner, OHEMSampler

NUM_CLASSES = 3
SIZES = (16, 32, 64, 128, 256)


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return ResNetBackbone(18, norm="bn", frozen_stages=-1)


def tiny(backbone, fpn_channels=16, head_channels=16, num_convs=1, bfp=None, head_norm=None, **kwargs):
    """ResNet-18 + a 16-channel FPN and one-conv heads: a RetinaNet small enough for unit tests."""
    trunk, neck = build_pyramid(copy.deepcopy(backbone), FPN_STRIDES, extra_from="c5", channels=fpn_channels, bfp=bfp)
    head = DenseHead(fpn_channels, NUM_CLASSES, 9, 4, head_channels, num_convs, head_norm, norm_groups=4)
    post = {k: kwargs.pop(k) for k in ("score_thresh", "max_detections") if k in kwargs}
    return RetinaNet(
        NUM_CLASSES, trunk, neck=neck, head=head, anchor_sizes=SIZES, postprocess=DensePostProcess(**post), **kwargs
    )


def batch():
    torch.manual_seed(1)
    images = torch.randn(2, 3, 64, 64)
    targets = [
        {"boxes": torch.tensor([[8.0, 10.0, 40.0, 44.0], [30.0, 4.0, 60.0, 20.0]]), "labels": torch.tensor([2, 0])},
        {"boxes": torch.tensor([[20.0, 20.0, 52.0, 60.0]]), "labels": torch.tensor([1])},
    ]
    return images, targets


def test_head_initialisation_follows_the_paper():
    torch.manual_seed(0)
    head = DenseHead(256, 80, 9, 4)
    assert torch.allclose(head.cls_logits.bias, torch.full((720,), -math.log(99.0)))
    assert (head.reg_output.bias == 0).all()
    for conv in [*head.cls_tower, *head.reg_tower, head.cls_logits, head.reg_output]:
        if isinstance(conv, nn.Conv2d):
            assert conv.weight.std().item() == pytest.approx(0.01, rel=0.05)
            assert conv.kernel_size == (3, 3)
    assert sum(isinstance(m, nn.Conv2d) for m in head.cls_tower) == 4
    assert sum(isinstance(m, nn.ReLU) for m in head.reg_tower) == 4
    assert not head.scales and all(c.bias is not None for c in head.cls_tower if isinstance(c, nn.Conv2d))


def test_head_outputs_follow_the_anchor_order():
    # AnchorGenerator: index (i * W + j) * A + a; the conv channel of (anchor a, class c) is a * C + c.
    a, c, h, w = 3, 4, 2, 5
    x = torch.zeros(1, a * c, h, w)
    for ai in range(a):
        for ci in range(c):
            for i in range(h):
                for j in range(w):
                    x[0, ai * c + ci, i, j] = 1000 * i + 100 * j + 10 * ai + ci
    flat = flatten_level(x, c)
    for i in range(h):
        for j in range(w):
            for ai in range(a):
                assert flat[0, (i * w + j) * a + ai].tolist() == [1000 * i + 100 * j + 10 * ai + ci for ci in range(c)]


def test_default_components():
    model = RetinaNet(80, 18)
    criterion = model.criterion
    assert isinstance(criterion.cls_loss, FocalLoss) and criterion.cls_loss.alpha == 0.25
    assert criterion.cls_loss.gamma == 2.0
    assert criterion.box_loss.beta == 0.11
    assert isinstance(criterion.assigner, MaxIoUAssigner) and criterion.sampler is None
    assert model.prior_generator.num_anchors_per_location == 9
    assert model.neck.strides == (8, 16, 32, 64, 128) and model.neck.bfp is None
    assert criterion.normalizer.momentum is None
    assert model.postprocess.nms_iou == 0.5 and model.postprocess.score_thresh == 0.05


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"cls_loss": GHMC()},
        {"box_loss": GHMR()},
        {"box_loss": BalancedL1Loss()},
        {"box_loss": GIoULoss(loss_weight=2.0)},
        {"box_loss": L1Loss()},
        {"sampler": OHEMSampler(num=None)},
        {"sampler": OHEMSampler(num=64, nms_iou=0.7)},
        {"sampler": HardNegativeMiner()},
        {"normalizer": PositiveNormalizer(momentum=0.9)},
        {"bfp": "non_local", "head_norm": "gn"},
        {"head_norm": "bn"},
    ],
    ids=lambda kw: "-".join(f"{k}={v if isinstance(v, str) else type(v).__name__}" for k, v in kw.items()) or "default",
)
def test_training_step_gives_finite_losses_and_gradients(backbone, kwargs):
    model = tiny(backbone, **kwargs)
    images, targets = batch()
    losses = model(images, targets)
    assert set(losses) == {"loss_cls", "loss_box"}
    assert all(v.ndim == 0 and torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.head.cls_logits.weight.grad.abs().sum() > 0


def test_bf16_autocast_step(backbone):
    model = tiny(backbone, box_loss=GIoULoss())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(*batch())
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


def test_batched_losses_equal_a_loop_over_images(backbone):
    model = tiny(backbone)
    images, targets = batch()
    model.train()
    cls_levels, box_levels = model.head(model.features(images))
    cls, deltas = torch.cat(cls_levels, 1), torch.cat(box_levels, 1)
    priors = model.prior_generator([(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)], images.device)
    anchors = priors.anchors
    losses = model.criterion(cls, deltas, priors, targets)

    total_cls, total_box, total_pos = 0.0, 0.0, 0
    for i, target in enumerate(targets):
        result = MaxIoUAssigner()(anchors, target["boxes"][None], target["labels"][None], NUM_CLASSES)
        valid = result.labels[0] >= 0
        total_cls = total_cls + sigmoid_focal_loss(cls[i][valid], result.labels[0][valid], reduction="sum")
        pos = result.matched[0] >= 0
        goal = model.criterion.coding.coder.encode(anchors[pos], target["boxes"][result.matched[0][pos]])
        total_box = total_box + smooth_l1_loss(deltas[i][pos], goal, beta=0.11, reduction="sum")
        total_pos += int(pos.sum())
    torch.testing.assert_close(losses["loss_cls"], total_cls / total_pos)
    torch.testing.assert_close(losses["loss_box"], total_box / total_pos)


def test_ghmc_sees_one_histogram_per_step(backbone):
    ghmc = GHMC()
    model = tiny(backbone, cls_loss=ghmc)
    model(*batch())
    assert ghmc.num_updates.item() == 1


class CapturingFocal(FocalLoss):
    def forward(self, logits, targets, weight=None, avg_factor=None):
        self.weight, self.avg_factor = weight, avg_factor
        return super().forward(logits, targets, weight=weight, avg_factor=avg_factor)


def test_hard_negative_mining_keeps_three_negatives_per_positive(backbone):
    loss = CapturingFocal()
    model = tiny(backbone, cls_loss=loss, sampler=HardNegativeMiner())
    images, targets = batch()
    model(images, targets)
    num_pos = int(loss.avg_factor)
    assert num_pos > 0
    assert int(loss.weight.sum()) == 4 * num_pos


def test_images_without_boxes(backbone):
    model = tiny(backbone)
    images, targets = batch()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    losses = model(images, [targets[0], empty])
    assert torch.isfinite(losses["loss_cls"]) and losses["loss_box"] > 0
    losses = model(images, [empty, empty])
    assert torch.isfinite(losses["loss_cls"]) and losses["loss_cls"] > 0
    assert losses["loss_box"] == 0
    sum(losses.values()).backward()


def test_eval_returns_detections_in_each_image_coordinates(backbone):
    model = tiny(backbone, score_thresh=0.0, max_detections=20).eval()
    images = [torch.randn(3, 64, 48), torch.randn(3, 40, 70)]
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2
    for det, image in zip(out, images, strict=True):
        assert set(det) == {"boxes", "scores", "labels"}
        k = det["scores"].shape[0]
        assert 0 < k <= 20 and det["boxes"].shape == (k, 4) and det["labels"].dtype == torch.int64
        assert det["labels"].min() >= 0 and det["labels"].max() < NUM_CLASSES
        h, w = image.shape[-2:]
        assert det["boxes"][:, 0::2].max() <= w and det["boxes"][:, 1::2].max() <= h
        assert det["boxes"].min() >= 0


def test_training_needs_targets(backbone):
    model = tiny(backbone)
    with pytest.raises(ValueError, match="one target per image"):
        model(torch.randn(2, 3, 64, 64))


def test_tiny_overfit(backbone):
    torch.manual_seed(0)
    model = tiny(backbone, fpn_channels=32, head_channels=32, num_convs=2)
    images, targets = batch()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    history = []
    for _ in range(20):
        losses = model(images, targets)
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append(total.item())
    assert history[-1] < 0.3 * history[0], history
