"""The builder: every valid combination of remedies builds, every invalid one is an error naming the key,
and every setting a preset takes from a paper is the paper's (each test cites its source)."""

import itertools

import pytest
import torch

from balancedet import losses
from balancedet.assign import ATSSAssigner, MaxIoUAssigner
from balancedet.engine.build import MODEL_KEYS, REMEDIES, build_model, build_remedies, resolve_model_config
from balancedet.engine.config import load_config
from balancedet.models.a_fast_rcnn import AFastRCNN
from balancedet.models.faster_rcnn import FasterRCNN
from balancedet.samplers import (
    HardNegativeMiner,
    InstanceBalancedPosSampler,
    IoUBalancedNegSampler,
    OHEMSampler,
    RandomSampler,
    SOHEMSampler,
)

TINY = {"backbone": 18, "norm": "bn", "frozen_stages": 0, "fpn_channels": 16, "head_channels": 16, "num_convs": 1}
SOHEM = {"schedule": "linear_shift"}
SAMPLER_TYPES = {
    "random": RandomSampler,
    "ohem": OHEMSampler,
    "ssd": HardNegativeMiner,
    "sohem": SOHEMSampler,
    "iou_balanced": IoUBalancedNegSampler,
    "instance_balanced": InstanceBalancedPosSampler,
    "libra": IoUBalancedNegSampler,
}


def retinanet(**keys):
    cfg = {"type": "retinanet", **TINY, "anchor_sizes": [16, 32, 64, 128, 256], **keys}
    if cfg.get("sampler") == "sohem":
        cfg.setdefault("sampler_args", SOHEM)
    return cfg


def gfl(**keys):
    return {"type": "gfl", **TINY, "octave_base_scale": 4, **keys}


def faster_rcnn(**keys):
    return {
        "type": "faster_rcnn",
        **{k: TINY[k] for k in ("backbone", "norm", "frozen_stages", "fpn_channels")},
        **keys,
    }


def combinations():
    for kind, parts in REMEDIES.items():
        names = list(parts)
        for values in itertools.product(*(parts[n] for n in names)):
            yield kind, dict(zip(names, values, strict=True))


def test_every_valid_combination_builds_its_parts():
    count = 0
    for kind, choice in combinations():
        for bfp in (False, True):
            cfg = resolve_model_config(
                {
                    "type": kind,
                    **choice,
                    "bfp": bfp,
                    **({"sampler_args": SOHEM} if choice.get("sampler") == "sohem" else {}),
                }
            )
            parts = build_remedies(cfg)
            for part, name in choice.items():
                constructor, _ = REMEDIES[kind][part][name] or (type(None), None)
                if part == "sampler":
                    expected = SAMPLER_TYPES.get(name, type(None))
                    assert isinstance(parts["sampler"], expected), (kind, choice)
                else:
                    assert isinstance(parts[part], constructor), (kind, choice)
            assert isinstance(parts["assigner"], ATSSAssigner if kind == "gfl" else MaxIoUAssigner)
            count += 1
    retinanet_parts = REMEDIES["retinanet"]
    expected = len(retinanet_parts["cls_loss"]) * len(retinanet_parts["box_loss"]) * len(retinanet_parts["sampler"])
    expected += len(REMEDIES["gfl"]["cls_loss"]) * len(REMEDIES["gfl"]["box_loss"])
    two_stage = REMEDIES["faster_rcnn"]
    expected += len(two_stage["cls_loss"]) * len(two_stage["box_loss"]) * len(two_stage["sampler"])
    assert count == 2 * expected


def _train_step(cfg):
    torch.manual_seed(0)
    model = build_model(cfg, 3).train()
    images = torch.randn(2, 3, 64, 64)
    targets = [
        {"boxes": torch.tensor([[8.0, 10.0, 40.0, 44.0], [30.0, 4.0, 60.0, 20.0]]), "labels": torch.tensor([2, 0])},
        {"boxes": torch.tensor([[20.0, 20.0, 52.0, 60.0]]), "labels": torch.tensor([1])},
    ]
    model.set_progress(0.6)
    out = model(images, targets)
    assert out and all(v.ndim == 0 and torch.isfinite(v) for v in out.values()), out
    sum(out.values()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.head.cls_logits.weight.grad.abs().sum() > 0
    return model, out


def _axis_values():
    for kind, make in (("retinanet", retinanet), ("gfl", gfl)):
        for part, options in REMEDIES[kind].items():
            for name in options:
                yield f"{kind}-{part}={name}", make(**{part: name})
        yield f"{kind}-bfp", make(bfp=True)
        yield f"{kind}-bfp-conv", make(bfp="conv")
        yield f"{kind}-ema-normalizer", make(normalizer_momentum=0.9)
        yield f"{kind}-gn-backbone-gn-head", make(norm="gn", head_norm="gn", fpn_channels=32, head_channels=32)
        yield f"{kind}-sync-bn", make(norm="sync_bn", head_norm="sync_bn")
        yield f"{kind}-frozen-bn-no-head-norm", make(norm="frozen_bn", frozen_stages=1, head_norm=None)


@pytest.mark.parametrize("cfg", [c for _, c in _axis_values()], ids=[i for i, _ in _axis_values()])
def test_each_choice_trains_one_step(cfg):
    model, out = _train_step(cfg)
    assert set(out) == (
        {"loss_cls", "loss_box"} if cfg["type"] == "retinanet" else {"loss_cls", "loss_box", "loss_dfl"}
    )


def test_a_sampler_changes_what_the_losses_see():
    class Capture(losses.FocalLoss):
        def forward(self, logits, targets, weight=None, avg_factor=None):
            self.weight, self.avg_factor = weight, avg_factor
            return super().forward(logits, targets, weight=weight, avg_factor=avg_factor)

    counts = {}
    for sampler in (None, "ssd", "random"):
        model = build_model(retinanet(sampler=sampler), 3)
        capture = Capture(alpha=0.25, gamma=2.0)
        model.criterion.cls_loss = capture
        torch.manual_seed(0)
        _ = model(
            torch.randn(2, 3, 64, 64),
            [
                {"boxes": torch.tensor([[8.0, 10.0, 40.0, 44.0]]), "labels": torch.tensor([2])},
                {"boxes": torch.tensor([[20.0, 20.0, 52.0, 60.0]]), "labels": torch.tensor([1])},
            ],
        )
        counts[sampler] = (int(capture.weight.sum()), int(capture.avg_factor))
    kept_all, num_pos = counts[None]
    assert kept_all > 1000
    assert counts["ssd"] == (4 * num_pos, num_pos)  # SSD: every positive and 3 negatives each
    assert counts["random"][0] == 2 * 256  # two images of 256 anchors (RPN sampling)


@pytest.mark.parametrize(
    "cfg, message",
    [
        (gfl(sampler="ohem"), r"model.sampler not used by model type 'gfl'"),
        (gfl(anchor_sizes=[8, 16, 32, 64, 128]), r"model.anchor_sizes not used by model type 'gfl'"),
        (retinanet(reg_max=8), r"model.reg_max not used by model type 'retinanet'"),
        (gfl(cls_loss="ghmc"), r"model.cls_loss='ghmc' is not available for 'gfl' \(choices: qfl, focal\)"),
        (retinanet(cls_loss="qfl"), r"model.cls_loss='qfl' is not available for 'retinanet'"),
        (retinanet(box_loss="dfl"), r"model.box_loss='dfl' is not available"),
        (retinanet(sampler="hard"), r"model.sampler='hard' is not available"),
        (
            retinanet(box_loss_args={"betta": 0.1}),
            r"model.box_loss_args \(box_loss=smooth_l1\): unknown argument\(s\) betta",
        ),
        (retinanet(sampler_args={"num": 64}), r"model.sampler_args given without a model.sampler"),
        (retinanet(sampler="sohem", sampler_args={}), r"sampler=sohem needs model.sampler_args.schedule"),
        (retinanet(assigner_args={"topk": 9}), r"model.assigner_args: unknown argument\(s\) topk"),
        (gfl(assigner_args={"pos_iou": 0.5}), r"model.assigner_args: unknown argument\(s\) pos_iou"),
        (retinanet(cls_loss_args=[0.5]), r"model.cls_loss_args must be a mapping"),
        ({"type": "fcos"}, r"model.type='fcos': expected one of retinanet, gfl"),
        (faster_rcnn(adversary="astn"), r"model.adversary='astn' is not available \(choices: null, asdn\)"),
        (faster_rcnn(adversary_args={"hidden_channels": 8}), r"model.adversary_args given without a model.adversary"),
        (faster_rcnn(adversary_joint_start=0.5), r"model.adversary_joint_start given without a model.adversary"),
        (
            faster_rcnn(adversary="asdn", adversary_args={"hidden": 8}),
            r"model.adversary_args \(adversary=asdn\): unknown argument\(s\) hidden",
        ),
        (faster_rcnn(adversary="asdn", adversary_args={"in_channels": 16}), r"model.adversary_args.in_channels is the"),
        (faster_rcnn(adversary="asdn", adversary_args={"pool_size": 14}), r"model.adversary_args.pool_size is the"),
        (
            faster_rcnn(adversary="asdn", adversary_pretrain_start=0.5, adversary_joint_start=0.2),
            r"need 0 <= model.adversary_pretrain_start <= model.adversary_joint_start <= 1",
        ),
        (retinanet(adversary="asdn"), r"model.adversary not used by model type 'retinanet'"),
    ],
)
def test_invalid_configurations_raise_naming_the_key(cfg, message):
    with pytest.raises(ValueError, match=message):
        resolve_model_config(cfg)


def test_a_dropped_key_on_the_command_line_is_an_error():
    with pytest.raises(ValueError, match=r"model.cls_loss='ghmc' is not available for 'gfl'"):
        load_config("gfl_digits", ["model.cls_loss=ghmc"])
    with pytest.raises(ValueError, match=r"model.sampler not used by model type 'gfl'"):
        load_config("gfl_digits", ["model.sampler=ohem"])


def test_arguments_reach_the_parts_from_the_command_line():
    config = load_config(
        "retinanet_digits",
        ["model.box_loss=balanced_l1", "model.box_loss_args.beta=0.2", "model.box_loss_args.alpha=0.4"],
    )
    assert config["model"]["box_loss_args"] == {"beta": 0.2, "alpha": 0.4}
    box = build_remedies(config["model"])["box_loss"]
    assert (box.alpha, box.gamma, box.beta) == (0.4, 1.5, 0.2)
    config = load_config("retinanet_digits", ["model.sampler=ohem", "model.sampler_args.nms_iou=0.7"])
    sampler = build_remedies(config["model"])["sampler"]
    assert sampler.nms_iou == 0.7 and sampler.neg_pos_ratio == 3.0
    config = load_config("gfl_digits", ["model.assigner_args.topk=5", "model.cls_loss_args.beta=1e-0"])
    parts = build_remedies(config["model"])
    assert parts["assigner"].topk == 5 and parts["cls_loss"].beta == 1.0


def test_an_adversary_builds_a_fast_rcnn_on_the_models_channels():
    plain = build_model(faster_rcnn(), 3)
    assert type(plain) is FasterRCNN and not hasattr(plain, "adversary")
    cfg = faster_rcnn(
        adversary="asdn",
        adversary_args={"hidden_channels": 8, "num_convs": 2, "unmasked_every": 0},
        adversary_pretrain_start=0.2,
        adversary_joint_start=0.6,
    )
    model = build_model(cfg, 3)
    assert isinstance(model, AFastRCNN) and (model.pretrain_start, model.joint_start) == (0.2, 0.6)
    convs = [m for m in model.adversary.layers if isinstance(m, torch.nn.Conv2d)]
    # in_channels from the FPN (16 here), pool_size from the box head (7)
    assert [(c.in_channels, c.out_channels) for c in convs] == [(16, 8), (8, 8), (8, 1)]
    assert model.adversary.pool_size == model.roi_head.box_head.pool_size == 7
    assert model.adversary.unmasked_every == 0 and model.adversary.num_drop == 15
    # every stage trains (the adversary adds loss_asdn, 0 in stage 1)
    images = torch.randn(2, 3, 64, 64)
    targets = [
        {"boxes": torch.tensor([[8.0, 10.0, 40.0, 44.0]]), "labels": torch.tensor([2])},
        {"boxes": torch.tensor([[20.0, 20.0, 52.0, 60.0]]), "labels": torch.tensor([1])},
    ]
    for fraction, stage in ((0.1, 1), (0.4, 2), (0.8, 3)):
        model.set_progress(fraction)
        assert model.stage == stage
        losses = model.train()(images, targets)
        assert "loss_asdn" in losses and all(torch.isfinite(v) for v in losses.values())


def test_a_fast_rcnn_stages_default_to_the_authors_iterations():
    # Wang et al. (arXiv 1704.03414), sec. 3.1, and the authors' scripts (github.com/xiaolonw/adversarial-frcnn,
    # experiments/scripts/): fast_rcnn_std.sh 10K iterations, fast_rcnn_adv_pretrain.sh 25K, fast_rcnn_adv.sh
    # 40K: ASDN pre-training from 10/75 of the run, joint training from 35/75.
    keys = MODEL_KEYS["faster_rcnn"]
    assert keys["adversary"] is None and keys["adversary_args"] == {}
    assert keys["adversary_pretrain_start"] == pytest.approx(10 / 75)
    assert keys["adversary_joint_start"] == pytest.approx(35 / 75)
    model = build_model(faster_rcnn(adversary="asdn"), 3)
    assert (model.pretrain_start, model.joint_start) == pytest.approx((10 / 75, 35 / 75))
    # ASDN's own defaults are the authors' (hidden 256 on VGG16's conv5_3)
    assert model.adversary.layers[0].out_channels == 256


def test_every_model_key_is_documented_by_a_default():
    for kind, keys in MODEL_KEYS.items():
        assert keys["type"] == kind
        assert resolve_model_config({"type": kind}) == keys


# ---- the papers' settings, each from its source -----------------------------------------------------


def _part(kind, part, name):
    return build_remedies(
        resolve_model_config({"type": kind, part: name, **({"sampler_args": SOHEM} if name == "sohem" else {})})
    )[part]


def test_focal_loss_alpha_025_gamma_2():
    # Lin et al., arXiv 1708.02002, sec. 4.1 and Table 1b: gamma = 2, alpha = 0.25 work best.
    loss = _part("retinanet", "cls_loss", "focal")
    assert (loss.alpha, loss.gamma) == (0.25, 2.0)
    assert MODEL_KEYS["retinanet"]["cls_loss"] == "focal"


def test_alpha_balanced_ce_uses_alpha_075():
    # Focal paper, Table 1a: the best alpha-balanced CE has alpha = 0.75 (31.1 AP), not the focal loss's 0.25.
    assert _part("retinanet", "cls_loss", "alpha_ce").alpha == 0.75
    assert _part("retinanet", "cls_loss", "ce").alpha is None


def test_focal_star_gamma_2_beta_1():
    # Focal paper, appendix A: FL* with gamma = 2, beta = 1.
    loss = _part("retinanet", "cls_loss", "focal_star")
    assert (loss.gamma, loss.beta) == (2.0, 1.0)


def test_ghmc_30_bins_momentum_075():
    # GHM authors' RetinaNet (mmdetection configs/ghm/retinanet_ghm_r50_fpn_1x_coco.py): bins=30, momentum=0.75.
    loss = _part("retinanet", "cls_loss", "ghmc")
    assert (loss.bins, loss.momentum, loss.loss_weight) == (30, 0.75, 1.0)


def test_ghmr_weight_10_in_a_dense_head():
    # Same config: GHMR(mu=0.02, bins=10, momentum=0.7, loss_weight=10.0). GHM-R averages over 4 x num_pos
    # elements where smooth L1 divides by num_pos, so weight 1 would give localisation a tenth of its signal.
    loss = _part("retinanet", "box_loss", "ghmr")
    assert (loss.mu, loss.bins, loss.momentum, loss.loss_weight) == (0.02, 10, 0.7, 10.0)
    assert loss.self_normalizing


def test_smooth_l1_beta_011_in_a_dense_head():
    # Detectron's RETINANET.BBOX_REG_BETA = 0.11 ("standard smooth L1", focal paper sec. 4); one value for
    # every dense head: the builder and RetinaNet's own default agree.
    from balancedet.models.retinanet import SMOOTH_L1_BETA, RetinaNet

    assert _part("retinanet", "box_loss", "smooth_l1").beta == 0.11 == SMOOTH_L1_BETA
    assert RetinaNet(3, 18).criterion.box_loss.beta == 0.11


def test_balanced_l1_beta_011_in_a_dense_head():
    # Libra RetinaNet (mmdetection configs/libra_rcnn/libra-retinanet_r50_fpn_1x_coco.py):
    # BalancedL1Loss(alpha=0.5, gamma=1.5, beta=0.11); beta = 1.0 is the two-stage box head's setting.
    loss = _part("retinanet", "box_loss", "balanced_l1")
    assert (loss.alpha, loss.gamma, loss.beta) == (0.5, 1.5, 0.11)


def test_gfl_losses_qfl_beta_2_giou_2_dfl_025():
    # GFL, arXiv 2006.04388, sec. 4 (and its released gfl_r50_fpn_1x_coco config): QFL beta = 2,
    # loss_bbox GIoU weight 2.0, loss_dfl weight 0.25.
    assert _part("gfl", "cls_loss", "qfl").beta == 2.0
    assert _part("gfl", "box_loss", "giou").loss_weight == 2.0
    assert MODEL_KEYS["gfl"]["dfl_weight"] == 0.25 and MODEL_KEYS["gfl"]["reg_max"] == 16
    model = build_model(gfl(), 3)
    assert model.criterion.dfl_loss.loss_weight == 0.25 and model.postprocess.nms_iou == 0.6


def test_dense_samplers_use_their_papers_ratios():
    # SSD (arXiv 1512.02325, sec. 2.2): negatives at most 3:1 to positives.
    assert _part("retinanet", "sampler", "ssd").neg_pos_ratio == 3.0
    # OHEM "1:3" (focal paper, Table 1d; OHEM paper, sec. 4.1 ranks by loss): every positive and the hardest
    # negatives at 3:1. The focal paper's batch size and NMS are sampler_args (num, nms_iou).
    ohem = _part("retinanet", "sampler", "ohem")
    assert ohem.num is None and ohem.neg_pos_ratio == 3.0
    # Faster R-CNN (arXiv 1506.01497, sec. 3.1.3): 256 anchors per image, up to half positive.
    random = _part("retinanet", "sampler", "random")
    assert (random.num, random.pos_fraction) == (256, 0.5)
    # Libra R-CNN (arXiv 1904.02701, eq. 2): K = 3 IoU bins; instance-balanced positives in the combination.
    libra = _part("retinanet", "sampler", "libra")
    assert libra.num_bins == 3 and isinstance(libra.pos_sampler, InstanceBalancedPosSampler)
    assert _part("retinanet", "sampler", "iou_balanced").num_bins == 3
