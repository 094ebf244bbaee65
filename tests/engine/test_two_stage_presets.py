"""The two-stage presets: OHEM, Libra R-CNN and A-Fast-RCNN on the digits scenes, Faster R-CNN and Libra
R-CNN with the papers' 1x COCO settings. Every setting a preset takes from a paper or the authors' configuration is
checked here against its source (cited in each test), every preset builds, and the digits ones train a
step and evaluate on a tiny 64-px split."""

import pytest
import torch
from torchvision.ops import FrozenBatchNorm2d

from balancedet.engine.build import build_model
from balancedet.engine.config import load_config
from balancedet.engine.train import train
from balancedet.losses import BalancedL1Loss, CrossEntropyLoss, SmoothL1Loss
from balancedet.models.a_fast_rcnn import AFastRCNN
from balancedet.models.asdn import ASDN
from balancedet.models.bfp import NonLocal2d
from balancedet.models.faster_rcnn import FasterRCNN
from balancedet.samplers import InstanceBalancedPosSampler, IoUBalancedNegSampler, OHEMSampler, RandomSampler

DIGITS = ("faster_rcnn_ohem_digits", "libra_rcnn_digits", "a_fast_rcnn_digits")
COCO = ("faster_rcnn_r50_fpn", "libra_rcnn_r50_fpn")
#: The tiny run of tests/engine/conftest.py for the two-stage type (no head_channels / num_convs there):
#: 16-channel FPN, a 32-wide 2-fc head, 64-px images, one step of all 24 training images.
TINY_TWO_STAGE = [
    "model.fpn_channels=16",
    "model.representation_size=32",
    "model.anchor_sizes=[8, 16, 32, 64, 128]",
    "data.min_size=64",
    "data.max_size=null",
    "train.workers=0",
    "train.warmup_iters=1",
    "train.batch_size=24",
    "train.epochs=1",
    "train.eval_interval=1",
    # a digits preset may fit its schedule to a wall-time budget; the tiny run counts epochs
    "train.schedule=epochs",
    "train.max_time=null",
]


def _model(name, num_classes=10):
    return build_model(load_config(name)["model"], num_classes)


def _differences(a, b):
    """``{(section, key)}`` where the two configurations differ."""
    return {(s, k) for s in a for k in set(a[s]) | set(b[s]) if a[s].get(k) != b[s].get(k)}


# ---- every preset builds -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DIGITS + COCO)
def test_every_two_stage_preset_loads_and_builds(name):
    config = load_config(name)
    assert config["model"]["type"] == "faster_rcnn"
    model = build_model(config["model"], 80)
    assert isinstance(model, FasterRCNN) and model.num_classes == 80


@pytest.mark.parametrize("name", DIGITS)
def test_the_digits_presets_train_a_step_and_evaluate(name, tiny_data, tmp_path):
    config = load_config(name, [f"data.dataset={tiny_data}", *TINY_TWO_STAGE])
    result = train(config, output=tmp_path / name, verbose=False)
    assert result["stopped"] is None
    assert {"AP", "AP50"} <= set(result["metrics"])
    rows = (result["output"] / "results.csv").read_text().splitlines()
    assert len(rows) == 2 and "loss_cls" in rows[0] and "loss_rpn_cls" in rows[0]


# ---- OHEM on the digits ----------------------------------------------------------------------------------


def test_the_ohem_preset_is_faster_rcnn_digits_with_ohem_sampling():
    ohem, base = load_config("faster_rcnn_ohem_digits"), load_config("faster_rcnn_digits")
    assert _differences(ohem, base) == {("model", "sampler"), ("model", "sampler_args")}


def test_ohem_takes_64_rois_per_image_after_nms_07_without_a_foreground_fraction():
    # Shrivastava et al., CVPR 2016 (arXiv 1604.03540), sec. 4.1: B = 128 RoIs for N = 2 images, NMS at
    # IoU 0.7 among the RoIs by loss, "fg_fraction" off (the hardest RoIs, whatever their class).
    criterion = _model("faster_rcnn_ohem_digits").roi_head.criterion
    sampler = criterion.sampler
    assert isinstance(sampler, OHEMSampler)
    assert (sampler.num, sampler.mode, sampler.nms_iou) == (128 // 2, "budget", 0.7)
    # sec. 4.1: the loss of every RoI ranks them, so every RoI goes through the head
    assert criterion.needs_head_outputs and {"cls_loss", "boxes"} <= sampler.needs


# ---- A-Fast-RCNN on the digits -----------------------------------------------------------------------------


def test_the_a_fast_rcnn_preset_is_faster_rcnn_digits_with_an_asdn():
    adversarial, base = load_config("a_fast_rcnn_digits"), load_config("faster_rcnn_digits")
    assert _differences(adversarial, base) == {("model", "adversary"), ("model", "adversary_args")}
    assert adversarial["model"]["adversary_args"] == {"hidden_channels": 64}


def test_the_a_fast_rcnn_preset_builds_an_asdn_with_the_authors_rules_on_the_fpn():
    # Wang et al., CVPR 2017 (arXiv 1704.03414), sec. 3.1, and the authors' code (github.com/xiaolonw/
    # adversarial-frcnn): ASDN on the d x d = 7 x 7 pooled features, four 3x3 convolutions and a 1-channel
    # one (train.prototxt conv6_mask-conv10_mask), 15 of the 20 most likely cells dropped (count_drop,
    # permute_count), score_thres 0.1, one image in two clean (iter_size 2, maintain_before 1), joint
    # loss_weight 0.0025. Hidden width 64 instead of 256: the preset's FPN has 64 channels.
    model = _model("a_fast_rcnn_digits")
    assert isinstance(model, AFastRCNN) and isinstance(model.adversary, ASDN)
    asdn = model.adversary
    convs = [m for m in asdn.layers if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(64, 64, (3, 3))] * 4 + [(64, 1, (3, 3))]
    assert asdn.pool_size == model.roi_head.box_head.pool_size == 7
    assert (asdn.window_size, asdn.window_stride, asdn.keep_negative) == (2, 2, 0.4)
    assert (asdn.num_drop, asdn.num_candidates, asdn.score_thresh, asdn.unmasked_every) == (15, 20, 0.1, 2)
    assert (asdn.pretrain_loss_weight, asdn.joint_loss_weight) == (1.0, 0.0025)
    # the stages: the authors' fast_rcnn_std.sh (10K iterations), fast_rcnn_adv_pretrain.sh (25K) and
    # fast_rcnn_adv.sh (40K), as fractions of their 75K
    assert model.pretrain_start == pytest.approx(10 / 75) and model.joint_start == pytest.approx(35 / 75)


@pytest.mark.parametrize(
    "stages, stage",
    [
        (["model.adversary_pretrain_start=0", "model.adversary_joint_start=1"], 2),
        (["model.adversary_pretrain_start=0", "model.adversary_joint_start=0"], 3),
    ],
    ids=["asdn-pretraining", "joint"],
)
def test_the_a_fast_rcnn_preset_trains_a_step_in_its_later_stages(stages, stage, tiny_data, tmp_path):
    # the one tiny step starts at progress 0, i.e. in stage 1 with the preset's stages (the test above);
    # moving the stages' starts to 0 trains that step in stage 2 or 3
    config = load_config("a_fast_rcnn_digits", [f"data.dataset={tiny_data}", *TINY_TWO_STAGE, *stages])
    assert build_model(config["model"], 10).stage == stage
    result = train(config, output=tmp_path / str(stage), verbose=False)
    assert result["stopped"] is None and {"AP", "AP50"} <= set(result["metrics"])
    header = (result["output"] / "results.csv").read_text().splitlines()[0]
    assert "loss_asdn" in header and "loss_cls" in header


# ---- Libra R-CNN --------------------------------------------------------------------------------------------


def test_the_libra_presets_are_their_faster_rcnn_with_the_libra_parts():
    libra_parts = {
        ("model", "bfp"),
        ("model", "rpn_sampler_args"),
        ("model", "sampler"),
        ("model", "sampler_args"),
        ("model", "box_loss"),
        ("model", "box_loss_args"),
    }
    assert _differences(load_config("libra_rcnn_digits"), load_config("faster_rcnn_digits")) == libra_parts
    assert _differences(load_config("libra_rcnn_r50_fpn"), load_config("faster_rcnn_r50_fpn")) == libra_parts


@pytest.mark.parametrize("name", ("libra_rcnn_digits", "libra_rcnn_r50_fpn"))
def test_libra_bfp_refines_with_a_non_local_block_at_p4(name):
    # Libra R-CNN (arXiv 1904.02701), sec. 3.2: the levels are gathered at "the intermediate size" and
    # refined by an embedded-Gaussian non-local block; the authors' config (mmdetection
    # configs/libra_rcnn/libra-faster-rcnn_r50-fpn_1x_coco.py): BFP(num_levels=5, refine_level=2,
    # refine_type="non_local") on P2-P6, i.e. P4 at stride 16.
    neck = _model(name).neck
    assert neck.strides == (4, 8, 16, 32, 64)
    assert (neck.bfp.num_levels, neck.bfp.refine_level, neck.bfp.refine_type) == (5, 2, "non_local")
    assert neck.strides[neck.bfp.refine_level] == 16 and isinstance(neck.bfp.refine, NonLocal2d)


def test_the_dense_detectors_refine_at_stride_16_too():
    # the same level as the two-stage BFP: P4 (index 1 of P3-P7, mmdetection's Libra RetinaNet refine_level=1)
    dense = build_model({"type": "retinanet", "backbone": 18, "fpn_channels": 16, "head_channels": 16, "bfp": True}, 3)
    assert dense.neck.bfp.refine_level == 1 and dense.neck.strides[dense.neck.bfp.refine_level] == 16


@pytest.mark.parametrize(("name", "num"), (("libra_rcnn_digits", 128), ("libra_rcnn_r50_fpn", 512)))
def test_libra_sampling_is_iou_balanced_negatives_and_instance_balanced_positives(name, num):
    # Libra R-CNN sec. 3.1, eq. 2, K = 3; the authors' config: CombinedSampler(num=512, pos_fraction=0.25,
    # pos_sampler=InstanceBalancedPosSampler, neg_sampler=IoUBalancedNegSampler(floor_thr=-1,
    # floor_fraction=0, num_bins=3)); the digits preset keeps faster_rcnn_digits' 128 RoIs per image.
    sampler = _model(name).roi_head.criterion.sampler
    assert isinstance(sampler, IoUBalancedNegSampler) and isinstance(sampler.pos_sampler, InstanceBalancedPosSampler)
    assert (sampler.num, sampler.num_bins, sampler.floor_thr, sampler.floor_fraction) == (num, 3, -1, 0.0)
    assert (sampler.pos_sampler.num, sampler.pos_sampler.pos_fraction) == (num, 0.25)


@pytest.mark.parametrize("name", ("libra_rcnn_digits", "libra_rcnn_r50_fpn"))
def test_libra_box_loss_is_balanced_l1_alpha_05_gamma_15_beta_1(name):
    # Libra R-CNN sec. 3.3, eq. 8 and sec. 4.1 (alpha = 0.5, gamma = 1.5); the authors' config:
    # BalancedL1Loss(alpha=0.5, gamma=1.5, beta=1.0, loss_weight=1.0) in the box head.
    loss = _model(name).roi_head.criterion.box_loss
    assert isinstance(loss, BalancedL1Loss)
    assert (loss.alpha, loss.gamma, loss.beta, loss.loss_weight) == (0.5, 1.5, 1.0, 1.0)


@pytest.mark.parametrize("name", ("libra_rcnn_digits", "libra_rcnn_r50_fpn"))
def test_libra_rpn_keeps_at_most_5_negatives_per_positive(name):
    # the authors' config: train_cfg.rpn.sampler = RandomSampler(256, 0.5, neg_pos_ub=5)
    sampler = _model(name).rpn.criterion.sampler
    assert isinstance(sampler, RandomSampler)
    assert (sampler.num, sampler.pos_fraction, sampler.neg_pos_ub) == (256, 0.5, 5)


def test_plain_faster_rcnn_keeps_the_rpn_unbounded():
    # Faster R-CNN sec. 3.1.3 and mmdetection's faster-rcnn_r50_fpn: 256 anchors at 0.5, neg_pos_ub=-1
    for name in ("faster_rcnn_digits", "faster_rcnn_ohem_digits", "faster_rcnn_r50_fpn"):
        sampler = _model(name).rpn.criterion.sampler
        assert (sampler.num, sampler.pos_fraction, sampler.neg_pos_ub) == (256, 0.5, -1)


def test_rpn_sampler_args_are_checked_against_the_sampler():
    with pytest.raises(ValueError, match="model.rpn_sampler_args: unknown argument"):
        load_config("faster_rcnn_digits", ["model.rpn_sampler_args.bins=3"])
    config = load_config("faster_rcnn_digits", ["model.rpn_sampler_args.num=128"])
    assert build_model(config["model"], 10).rpn.criterion.sampler.num == 128


# ---- the 1x COCO settings --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", COCO)
def test_coco_backbone_is_resnet50_frozen_bn_stem_and_stage_1_frozen(name):
    # Detectron's e2e_faster_rcnn_R-50-FPN_1x (frozen BN as AffineChannel, FREEZE_AT: 2) and mmdetection's
    # faster-rcnn_r50_fpn (frozen_stages=1): the stem and the first stage do not train.
    config = load_config(name)["model"]
    assert (config["backbone"], config["norm"], config["frozen_stages"]) == (50, "frozen_bn", 1)
    backbone = build_model(config, 80).backbone
    assert backbone.depth == 50 and backbone.strides == [4, 8, 16, 32]
    assert not any(p.requires_grad for m in (backbone.conv1, backbone.layer1) for p in m.parameters())
    assert all(p.requires_grad for p in backbone.layer2.parameters() if p.ndim > 1)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.modules())
    assert isinstance(backbone.bn1, FrozenBatchNorm2d) and isinstance(backbone.layer4[0].bn1, FrozenBatchNorm2d)


@pytest.mark.parametrize("name", COCO)
def test_coco_schedule_is_the_1x_schedule(name):
    # mmdetection configs/_base_/schedules/schedule_1x.py (= Detectron's 90k iterations at 16 images; Libra
    # R-CNN sec. 4.1): SGD lr 0.02 for 16 images, momentum 0.9, weight decay 1e-4, linear warm-up over 500
    # iterations from 0.001 x lr, 12 epochs, x0.1 at epochs 8 and 11, no gradient clipping.
    t = load_config(name)["train"]
    assert (t["optimizer"], t["lr"], t["batch_size"], t["momentum"], t["weight_decay"]) == ("sgd", 0.02, 16, 0.9, 1e-4)
    assert (t["warmup_iters"], t["warmup_factor"]) == (500, 0.001)
    assert (t["epochs"], t["milestones"], t["lr_decay"], t["grad_clip"]) == (12, [8, 11], 0.1, None)


@pytest.mark.parametrize("name", COCO)
def test_coco_input_is_800_by_1333_padded_to_32(name):
    # Detectron (TRAIN.SCALES (800,), MAX_SIZE 1333, FPN.COARSEST_STRIDE 32) and mmdetection
    # (Resize(1333, 800), RandomFlip 0.5, pad_size_divisor=32)
    d = load_config(name)["data"]
    assert (d["min_size"], d["max_size"], d["size_divisible"], d["flip"]) == (800, 1333, 32, 0.5)


@pytest.mark.parametrize("name", COCO)
def test_coco_rpn_is_fpn_sec_41_with_2000_then_1000_proposals(name):
    # FPN (arXiv 1612.03144) sec. 4.1: 256 channels, anchors 32^2-512^2 on P2-P6 at 1:2, 1:1, 2:1; RPN
    # IoU 0.7 / 0.3 (Faster R-CNN sec. 3.1.2); mmdetection's rpn_proposal (nms_pre=2000, max_per_img=1000,
    # NMS 0.7; test 1000 / 1000) = detectron2's Base-RCNN-FPN (POST_NMS_TOPK_TRAIN: 1000 per image).
    model = _model(name, 80)
    assert model.neck.out_channels == 256
    assert [float(s) for s in load_config(name)["model"]["anchor_sizes"]] == [32, 64, 128, 256, 512]
    assert load_config(name)["model"]["anchor_ratios"] == [0.5, 1.0, 2.0]
    rpn = model.rpn
    assert (rpn.pre_nms_top_n_train, rpn.post_nms_top_n_train) == (2000, 1000)
    assert (rpn.pre_nms_top_n_test, rpn.post_nms_top_n_test, rpn.nms_iou) == (1000, 1000, 0.7)
    assigner = rpn.criterion.assigner
    assert (assigner.pos_iou, assigner.neg_iou, assigner.low_quality) == (0.7, 0.3, True)


@pytest.mark.parametrize("name", COCO)
def test_coco_box_head_is_2fc_1024_with_512_rois_at_a_quarter(name):
    # FPN sec. 4.2 (2-fc head of 1024, RoIAlign 7x7); Faster R-CNN sec. 3.1.3 / Detectron
    # (BATCH_SIZE_PER_IM 512, FG_FRACTION 0.25, FG_THRESH 0.5, BG_THRESH_HI 0.5, BG_THRESH_LO 0);
    # inference: score 0.05, NMS 0.5, 100 detections (Detectron TEST.SCORE_THRESH / NMS / DETECTIONS_PER_IM).
    model = _model(name, 80)
    head = model.roi_head
    assert head.box_head.fc1.out_features == head.box_head.fc2.out_features == 1024 and head.box_head.pool_size == 7
    criterion = head.criterion
    positives = getattr(criterion.sampler, "pos_sampler", criterion.sampler)  # Libra's: its positive sampler's
    assert (criterion.sampler.num, positives.num_pos_expected) == (512, 128)
    assert (criterion.assigner.pos_iou, criterion.assigner.neg_iou, criterion.assigner.low_quality) == (0.5, 0.5, False)
    assert isinstance(criterion.cls_loss, CrossEntropyLoss) and criterion.add_gt_as_proposals
    assert (head.score_thresh, head.nms_iou, head.max_detections) == (0.05, 0.5, 100)


def test_faster_rcnn_coco_box_loss_is_smooth_l1_beta_1():
    # Fast R-CNN eq. 3 and Detectron's box head (SmoothL1Loss beta 1 on targets scaled by 10, 10, 5, 5)
    loss = _model("faster_rcnn_r50_fpn").roi_head.criterion.box_loss
    assert isinstance(loss, SmoothL1Loss) and loss.beta == 1.0
    assert isinstance(_model("faster_rcnn_r50_fpn").roi_head.criterion.sampler, RandomSampler)
