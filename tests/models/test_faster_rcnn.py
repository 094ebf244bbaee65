"""Faster R-CNN + FPN end to end: the loss dict is finite and trains every part, eval returns detections,
each RoI sampler and box loss of the protocol plugs in, and the default parts are the papers'."""

import copy

import pytest
import torch

from balancedet.engine.build import MODEL_KEYS, REMEDIES, build_model, resolve_model_config
from balancedet.engine.config import load_config
from balancedet.losses.balanced_l1 import BalancedL1Loss
from balancedet.losses.iou import GIoULoss
from balancedet.losses.smooth_l1 import L1Loss, SmoothL1Loss
from balancedet.models import ResNetBackbone, build_pyramid
from balancedet.models.faster_rcnn import ROI_LEVELS, FasterRCNN
from balancedet.models.rpn import RPN_STRIDES
from balancedet.samplers import (
    LINEAR_SHIFT_SCHEDULE,
    InstanceBalancedPosSampler,
    OHEMSampler,
    RandomSampler,
    SOHEMSampler,
    libra_sampler,
)
from tests.models.test_retinanet import batch

NUM_CLASSES = 3
LOSS_KEYS = {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box"}


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return ResNetBackbone(18, norm="bn", frozen_stages=-1, levels=(2, 3, 4, 5))


def tiny(backbone, bfp=None, **kwargs):
    """ResNet-18, a 16-channel FPN (P2-P6), a 64-wide 2-fc head and a few hundred proposals."""
    trunk, neck = build_pyramid(copy.deepcopy(backbone), RPN_STRIDES, extra_from="maxpool", channels=16, bfp=bfp)
    small = {
        "representation_size": 64,
        "rpn_pre_nms_top_n_train": 300,
        "rpn_post_nms_top_n_train": 200,
        "rpn_pre_nms_top_n_test": 200,
        "rpn_post_nms_top_n_test": 100,
        "roi_sampler": RandomSampler(128, 0.25),
    }
    return FasterRCNN(NUM_CLASSES, trunk, neck, **{**small, **kwargs})


def train_step(model):
    images, targets = batch()
    model.train()
    model.set_progress(0.3)
    losses = model(images, targets)
    assert set(losses) == LOSS_KEYS
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    return losses


def test_one_training_step_reaches_every_part(backbone):
    model = tiny(backbone)
    train_step(model)
    for name, part in (
        ("rpn head", model.rpn.head.objectness.weight),
        ("rpn deltas", model.rpn.head.deltas.weight),
        ("box head", model.roi_head.box_head.fc1.weight),
        ("classifier", model.roi_head.box_head.cls_score.weight),
        ("regressor", model.roi_head.box_head.bbox_pred.weight),
        ("fpn", model.neck.fpn.output[0].weight),
        ("backbone", model.backbone.layer1[0].conv1.weight),
    ):
        assert part.grad is not None and torch.isfinite(part.grad).all() and part.grad.abs().sum() > 0, name
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_eval_returns_detections_in_the_torchvision_format(backbone):
    model = tiny(backbone, max_detections=20).eval()
    images, _ = batch()
    with torch.no_grad():
        out = model([images[0], images[1, :, :50, :40]])
    assert len(out) == 2
    for det, (height, width) in zip(out, [(64, 64), (50, 40)], strict=True):
        assert set(det) == {"boxes", "scores", "labels"}
        n = det["boxes"].shape[0]
        assert det["boxes"].shape == (n, 4) and det["scores"].shape == (n,) and det["labels"].shape == (n,)
        assert 0 < n <= 20 and det["labels"].dtype == torch.int64
        assert ((det["labels"] >= 0) & (det["labels"] < NUM_CLASSES)).all() and (det["scores"] > 0.05).all()
        assert (det["boxes"][:, 2] <= width).all() and (det["boxes"][:, 3] <= height).all()


@pytest.mark.parametrize(
    "name, sampler",
    [
        ("ohem", OHEMSampler(64, mode="budget", nms_iou=0.7)),
        ("sohem", SOHEMSampler(64, schedule=LINEAR_SHIFT_SCHEDULE)),
        ("libra", libra_sampler(num=128, pos_fraction=0.25)),
    ],
)
def test_each_roi_sampler_trains(backbone, name, sampler):
    model = tiny(backbone, roi_sampler=sampler)
    train_step(model)
    assert model.roi_head.box_head.cls_score.weight.grad.abs().sum() > 0
    assert model.roi_head.criterion.needs_head_outputs == (name != "libra")
    assert model.roi_head.criterion.progress == 0.3


@pytest.mark.parametrize("box_loss", [L1Loss(), BalancedL1Loss(beta=1.0), GIoULoss()])
def test_each_box_loss_trains(backbone, box_loss):
    model = tiny(backbone, box_loss=box_loss, rpn_box_loss=L1Loss())
    train_step(model)
    assert model.roi_head.box_head.bbox_pred.weight.grad.abs().sum() > 0


def test_balanced_feature_pyramid_and_images_without_boxes(backbone):
    model = tiny(backbone, bfp="conv")
    images, targets = batch()
    targets[1] = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)}
    losses = model.train()(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())


def test_default_parts_and_levels():
    # FPN paper sec. 4: P2-P6 for the RPN (P6 a max-pool of P5), P2-P5 for the RoI head; 256 channels.
    model = FasterRCNN(80, 18)
    assert model.neck.strides == RPN_STRIDES and model.neck.out_channels == 256 and ROI_LEVELS == 4
    assert model.neck.fpn.extra_from == "maxpool" and model.backbone.levels == (2, 3, 4, 5)
    assert model.roi_head.num_levels == 4 and model.roi_head.box_head.fc1.out_features == 1024
    assert (
        model.roi_head.box_head.cls_score.out_features == 81 and model.roi_head.box_head.bbox_pred.out_features == 320
    )
    assert model.rpn.prior_generator.num_anchors_per_location == 3


def test_bad_arguments(backbone):
    with pytest.raises(ValueError, match="num_classes"):
        FasterRCNN(0, 18)
    trunk, neck = build_pyramid(18, (8, 16, 32, 64, 128), extra_from="c5", channels=16)
    with pytest.raises(ValueError, match="the neck's strides"):
        FasterRCNN(3, trunk, neck)
    model = tiny(backbone).train()
    images, targets = batch()
    with pytest.raises(ValueError, match="one target per image"):
        model(images, targets[:1])


# ---- the builder and the digits preset ---------------------------------------------------------------------


def test_the_builder_uses_the_papers_two_stage_settings():
    def build(**keys):
        cfg = {"type": "faster_rcnn", "backbone": 18, "norm": "bn", "frozen_stages": 0, "fpn_channels": 16, **keys}
        return build_model(cfg, NUM_CLASSES)

    assert set(REMEDIES["faster_rcnn"]["sampler"]) == {"random", "ohem", "sohem", "libra"}
    criterion = build().roi_head.criterion
    # Faster R-CNN sec. 3.1.3: 512 RoIs at a quarter foreground; Detectron: IoU 0.5 / [0, 0.5), smooth L1 beta 1
    assert (criterion.sampler.num, criterion.sampler.pos_fraction) == (512, 0.25)
    assert (criterion.assigner.pos_iou, criterion.assigner.neg_iou, criterion.assigner.low_quality) == (0.5, 0.5, False)
    assert isinstance(criterion.box_loss, SmoothL1Loss) and criterion.box_loss.beta == 1.0
    # OHEM sec. 4: B = 128 RoIs for N = 2 images, NMS 0.7, no foreground fraction
    ohem = build(sampler="ohem").roi_head.criterion.sampler
    assert (ohem.num, ohem.mode, ohem.nms_iou) == (64, "budget", 0.7)
    # Libra R-CNN: Balanced L1 with beta 1.0 in the box head, IoU-balanced + instance-balanced sampling
    libra = build(sampler="libra", box_loss="balanced_l1", bfp=True).roi_head.criterion
    assert libra.box_loss.beta == 1.0 and libra.sampler.num_bins == 3
    assert isinstance(libra.sampler.pos_sampler, InstanceBalancedPosSampler)
    assert build(box_loss="giou").roi_head.criterion.box_loss.loss_weight == 10.0
    with pytest.raises(ValueError, match="sampler=sohem needs model.sampler_args.schedule"):
        resolve_model_config({"type": "faster_rcnn", "sampler": "sohem"})
    with pytest.raises(ValueError, match="model.head_channels not used by model type 'faster_rcnn'"):
        resolve_model_config({"type": "faster_rcnn", "head_channels": 64})
    assert resolve_model_config({"type": "faster_rcnn"}) == MODEL_KEYS["faster_rcnn"]


def test_the_digits_preset_trains_one_step_and_evaluates():
    config = load_config("faster_rcnn_digits")
    model = build_model(config["model"], 10)
    assert isinstance(model, FasterRCNN) and model.roi_head.criterion.sampler.num == 128
    torch.manual_seed(0)
    images = torch.randn(2, 3, 128, 128)
    targets = [
        {"boxes": torch.tensor([[10.0, 12.0, 30.0, 50.0], [60.0, 70.0, 100.0, 120.0]]), "labels": torch.tensor([3, 7])},
        {"boxes": torch.tensor([[40.0, 40.0, 60.0, 70.0]]), "labels": torch.tensor([0])},
    ]
    model.train()
    losses = model(images, targets)
    assert set(losses) == LOSS_KEYS and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2 and all(d["boxes"].shape[1] == 4 and d["boxes"].shape[0] <= 100 for d in out)


def test_a_batch_without_proposals_or_boxes(backbone):
    model = tiny(backbone, roi_sampler=OHEMSampler(64, mode="budget", nms_iou=0.7))
    model.rpn.min_size = 1e9  # every proposal is "too small": the RoI head sees no RoI at all
    empty = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)}
    images, _ = batch()
    losses = model.train()(images, [empty, empty])
    assert losses["loss_cls"].item() == 0 and losses["loss_box"].item() == 0
    sum(losses.values()).backward()
    out = model.eval()(images)
    assert [d["boxes"].shape for d in out] == [(0, 4), (0, 4)]
