"""One way to build any detector from a configuration's ``model`` section.

Each model type declares its keys and their defaults (``MODEL_KEYS``); a key the chosen type does not
use is an error naming it, so ``--config gfl_digits --set model.sampler=ohem`` fails instead of
training without a sampler. The remedies are names mapped to a constructor and the settings its paper
(or the authors' released configuration) uses *in that place*; ``<part>_args`` overrides any of them,
e.g. ``--set model.box_loss_args.beta=0.11``. The table of settings and their sources:

================  ==============================================================  =============================
name              setting                                                         source
================  ==============================================================  =============================
focal             alpha 0.25, gamma 2                                             focal paper, sec. 4.1, Table 1b
ce                plain sigmoid CE                                                focal paper, eq. 1
alpha_ce          alpha 0.75                                                      focal paper, Table 1a (best CE)
focal_star        gamma 2, beta 1                                                 focal paper, appendix A
ghmc              30 bins, momentum 0.75                                          GHM authors' RetinaNet config
qfl               beta 2                                                          GFL paper, eq. 5 and sec. 4
smooth_l1         beta 0.11                                                       Detectron RETINANET.BBOX_REG_BETA
balanced_l1       alpha 0.5, gamma 1.5, beta 0.11                                 Libra RetinaNet config
ghmr              mu 0.02, 10 bins, momentum 0.7, loss weight 10                  GHM authors' RetinaNet config
giou (GFL)        loss weight 2.0                                                 GFL paper, sec. 4
dfl_weight (GFL)  0.25                                                            GFL paper, sec. 4
random            256 anchors, 0.5 positive                                       Faster R-CNN sec. 3.1.3 (RPN)
ohem              all positives, hardest negatives at 3:1                         OHEM as in dense-detector use
ssd               hardest negatives at neg:pos <= 3:1                             SSD paper, sec. 2.2
iou_balanced      256, 0.5 positive, 3 IoU bins                                   Libra R-CNN, eq. 2 (K = 3)
libra             IoU-balanced negatives + instance-balanced positives            Libra R-CNN, sec. 3.1
================  ==============================================================  =============================

In the two-stage box head (``faster_rcnn``; FPN, arXiv 1612.03144, sec. 4, with Detectron's settings):

================  ==============================================================  =============================
name              setting                                                         source
================  ==============================================================  =============================
ce                softmax CE, background at column 0                              Fast R-CNN, sec. 2.3
smooth_l1         beta 1.0 on targets scaled by stds (0.1, 0.1, 0.2, 0.2)         Fast R-CNN eq. 3; Detectron
l1                plain L1                                                        detectron2 (``SMOOTH_L1_BETA: 0``)
balanced_l1       alpha 0.5, gamma 1.5, beta 1.0                                  Libra R-CNN, eq. 8 and config
giou              loss weight 10 on decoded boxes                                 mmdetection faster-rcnn giou
random            512 RoIs, 0.25 positive                                         Faster R-CNN sec. 3.1.3
ohem              64 RoIs per image by loss (CE + smooth L1) after NMS 0.7        OHEM paper, sec. 4 (B/N=128/2)
sohem             64 RoIs per image, stage schedule required                      ours (OHEM's budget)
libra             512 RoIs, 0.25 positive, 3 IoU bins, instance-balanced          Libra R-CNN, sec. 3.1
asdn (adversary)  4 convs of 256, 15 of the top 20 cells, stages at 10/75, 35/75  A-Fast-RCNN sec. 3.1, code
================  ==============================================================  =============================

The RPN keeps Faster R-CNN's own parts (256 anchors at 0.5, IoU 0.7 / 0.3, BCE, smooth L1 beta 1/9), and the
RoI assigner Detectron's IoU 0.5 foreground / [0, 0.5) background without low-quality matches.
``rpn_sampler_args`` updates the RPN's ``RandomSampler(256, 0.5)``: Libra R-CNN's released config
(mmdetection ``configs/libra_rcnn/libra-faster-rcnn_r50-fpn_1x_coco.py``) sets ``neg_pos_ub: 5`` there.
``bfp: true`` puts Libra's Balanced Feature Pyramid (non-local refine) after the FPN; for the P2-P6 of the
two-stage type it gathers and refines at P4, stride 16 (Libra sec. 3.2; that config's ``refine_level=2``),
where the dense types (P3-P7) refine too (``balancedet.models.pyramid.BFP_REFINE_STRIDE``).

``adversary: asdn`` builds A-Fast-RCNN (Wang et al., CVPR 2017, arXiv 1704.03414, sec. 3.1;
``balancedet.models.a_fast_rcnn``): the same detector trained against an Adversarial Spatial Dropout Network
on the positive RoIs' pooled features. ``adversary_args`` updates ``ASDN``'s own defaults (the authors'
released settings, github.com/xiaolonw/adversarial-frcnn) except ``in_channels`` and ``pool_size``, which
are the model's (``fpn_channels``, the box head's 7). ``adversary_pretrain_start`` and
``adversary_joint_start`` are the training fractions at which ASDN pre-training (detector fixed) and joint
training begin: 10/75 and 35/75, the authors' 10K, 25K and 40K iterations (``fast_rcnn_std.sh``,
``fast_rcnn_adv_pretrain.sh``, ``fast_rcnn_adv.sh``).

``giou`` in RetinaNet and ``sohem`` have no published setting for this place: GIoU gets weight 1, and
S-OHEM's stage schedule must be given (``sampler_args.schedule: linear_shift | ohem``), since the
S-OHEM paper's table could not be obtained (see ``balancedet.samplers.sohem``).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from typing import Any

import torch.distributed as dist
from torch import nn

from balancedet import losses
from balancedet.assign import ATSSAssigner, MaxIoUAssigner
from balancedet.boxes.anchors import FPN_STRIDES
from balancedet.models.a_fast_rcnn import JOINT_START, PRETRAIN_START, AFastRCNN
from balancedet.models.asdn import ASDN
from balancedet.models.faster_rcnn import ROI_POOL_SIZE, FasterRCNN
from balancedet.models.gfl import GFL
from balancedet.models.heads import DenseHead
from balancedet.models.normalizer import PositiveNormalizer
from balancedet.models.postprocess import DensePostProcess
from balancedet.models.pyramid import build_pyramid
from balancedet.models.retinanet import RetinaNet
from balancedet.models.rpn import RPN_STRIDES
from balancedet.samplers import (
    LINEAR_SHIFT_SCHEDULE,
    OHEM_SCHEDULE,
    HardNegativeMiner,
    InstanceBalancedPosSampler,
    IoUBalancedNegSampler,
    OHEMSampler,
    RandomSampler,
    SOHEMSampler,
    libra_sampler,
)

__all__ = [
    "ADVERSARIES",
    "MODEL_KEYS",
    "MODEL_TYPES",
    "REMEDIES",
    "build_model",
    "build_remedies",
    "resolve_model_config",
]

#: A remedy: its constructor and the keyword arguments of its paper's setting in this place.
Remedy = tuple[Callable[..., Any], dict[str, Any]]

_DENSE_CLS: dict[str, Remedy] = {
    "focal": (losses.FocalLoss, {"alpha": 0.25, "gamma": 2.0}),
    "ce": (losses.BinaryCrossEntropyLoss, {"alpha": None}),
    "alpha_ce": (losses.BinaryCrossEntropyLoss, {"alpha": 0.75}),
    "focal_star": (losses.FocalLossStar, {"gamma": 2.0, "beta": 1.0}),
    "ghmc": (losses.GHMC, {"bins": 30, "momentum": 0.75}),
}
_DENSE_BOX: dict[str, Remedy] = {
    "smooth_l1": (losses.SmoothL1Loss, {"beta": 0.11}),
    "l1": (losses.L1Loss, {}),
    "balanced_l1": (losses.BalancedL1Loss, {"alpha": 0.5, "gamma": 1.5, "beta": 0.11}),
    "ghmr": (losses.GHMR, {"mu": 0.02, "bins": 10, "momentum": 0.7, "loss_weight": 10.0}),
    "giou": (losses.GIoULoss, {"loss_weight": 1.0}),
    "iou": (losses.IoULoss, {"loss_weight": 1.0}),
}
_DENSE_SAMPLERS: dict[str | None, Remedy | None] = {
    None: None,
    "random": (RandomSampler, {"num": 256, "pos_fraction": 0.5}),
    "ohem": (OHEMSampler, {"num": None, "neg_pos_ratio": 3.0}),
    "ssd": (HardNegativeMiner, {"neg_pos_ratio": 3.0}),
    "sohem": (SOHEMSampler, {"num": 256}),
    "iou_balanced": (IoUBalancedNegSampler, {"num": 256, "pos_fraction": 0.5, "num_bins": 3}),
    "instance_balanced": (InstanceBalancedPosSampler, {"num": 256, "pos_fraction": 0.5}),
    "libra": (libra_sampler, {"num": 256, "pos_fraction": 0.5, "num_bins": 3}),
}
_SOHEM_SCHEDULES = {"linear_shift": LINEAR_SHIFT_SCHEDULE, "ohem": OHEM_SCHEDULE}
_ROI_BOX: dict[str, Remedy] = {
    "smooth_l1": (losses.SmoothL1Loss, {"beta": 1.0}),
    "l1": (losses.L1Loss, {}),
    "balanced_l1": (losses.BalancedL1Loss, {"alpha": 0.5, "gamma": 1.5, "beta": 1.0}),
    # mmdetection's configs/faster_rcnn/faster-rcnn_r50_fpn_giou_1x_coco.py: GIoULoss(loss_weight=10.0)
    "giou": (losses.GIoULoss, {"loss_weight": 10.0}),
}
#: The RPN's sampler (Faster R-CNN sec. 3.1.3: 256 anchors per image, at most half positive).
_RPN_SAMPLER: Remedy = (RandomSampler, {"num": 256, "pos_fraction": 0.5})
_ROI_SAMPLERS: dict[str, Remedy] = {
    "random": (RandomSampler, {"num": 512, "pos_fraction": 0.25}),
    "ohem": (OHEMSampler, {"num": 64, "mode": "budget", "nms_iou": 0.7}),
    "sohem": (SOHEMSampler, {"num": 64}),
    "libra": (libra_sampler, {"num": 512, "pos_fraction": 0.25, "num_bins": 3}),
}

#: The two-stage type's adversaries (A-Fast-RCNN): not a criterion part (``REMEDIES``) but a module of the
#: detector, built in ``build_model`` on the model's channels and pool size; its defaults are ``ASDN``'s own.
ADVERSARIES: dict[str | None, Remedy | None] = {None: None, "asdn": (ASDN, {})}
#: ``ASDN``'s arguments that the model decides: the pyramid's channels and the box head's pool size.
_ADVERSARY_FROM_MODEL = ("in_channels", "pool_size")

#: Per model type: the remedies it accepts for each part.
REMEDIES: dict[str, dict[str, dict]] = {
    "retinanet": {"cls_loss": _DENSE_CLS, "box_loss": _DENSE_BOX, "sampler": _DENSE_SAMPLERS},
    "gfl": {
        "cls_loss": {"qfl": (losses.QualityFocalLoss, {"beta": 2.0}), "focal": _DENSE_CLS["focal"]},
        "box_loss": {"giou": (losses.GIoULoss, {"loss_weight": 2.0}), "iou": (losses.IoULoss, {"loss_weight": 2.0})},
    },
    "faster_rcnn": {
        "cls_loss": {"ce": (losses.CrossEntropyLoss, {})},
        "box_loss": _ROI_BOX,
        "sampler": _ROI_SAMPLERS,
    },
}

_COMMON: dict[str, Any] = {
    "type": None,
    "backbone": 50,
    "backbone_weights": None,
    "norm": "frozen_bn",
    "frozen_stages": 1,
    "fpn_channels": 256,
    "bfp": False,
    "head_channels": 256,
    "num_convs": 4,
    "prior_prob": 0.01,
    "cls_loss_args": {},
    "box_loss_args": {},
    "assigner_args": {},
    "normalizer_momentum": None,
    "score_thresh": 0.05,
    "topk": 1000,
    "max_dets": 100,
}

#: Every key of each model type with its default (the paper's).
MODEL_KEYS: dict[str, dict[str, Any]] = {
    "retinanet": {
        **_COMMON,
        "type": "retinanet",
        "head_norm": None,
        "anchor_sizes": [32, 64, 128, 256, 512],
        "anchor_ratios": [0.5, 1.0, 2.0],
        "anchor_scales": [1.0, 2 ** (1 / 3), 2 ** (2 / 3)],
        "cls_loss": "focal",
        "box_loss": "smooth_l1",
        "sampler": None,
        "sampler_args": {},
        "nms_iou": 0.5,
    },
    "gfl": {
        **_COMMON,
        "type": "gfl",
        "head_norm": "gn",
        "octave_base_scale": 8.0,
        "reg_max": 16,
        "cls_loss": "qfl",
        "box_loss": "giou",
        "dfl_weight": 0.25,
        "nms_iou": 0.6,
    },
    "faster_rcnn": {
        "type": "faster_rcnn",
        **{k: _COMMON[k] for k in ("backbone", "backbone_weights", "norm", "frozen_stages", "fpn_channels", "bfp")},
        "anchor_sizes": [32, 64, 128, 256, 512],
        "anchor_ratios": [0.5, 1.0, 2.0],
        "rpn_pre_nms_top_n_train": 2000,
        "rpn_pre_nms_top_n_test": 1000,
        "rpn_post_nms_top_n_train": 1000,
        "rpn_post_nms_top_n_test": 1000,
        "rpn_nms_iou": 0.7,
        "rpn_sampler_args": {},
        "representation_size": 1024,
        "cls_loss": "ce",
        "cls_loss_args": {},
        "box_loss": "smooth_l1",
        "box_loss_args": {},
        "sampler": "random",
        "sampler_args": {},
        "assigner_args": {},
        "score_thresh": 0.05,
        "nms_iou": 0.5,
        "max_dets": 100,
        "adversary": None,
        "adversary_args": {},
        "adversary_pretrain_start": PRETRAIN_START,
        "adversary_joint_start": JOINT_START,
    },
}
MODEL_TYPES = tuple(MODEL_KEYS)

_ASSIGNERS = {"retinanet": MaxIoUAssigner, "gfl": ATSSAssigner, "faster_rcnn": MaxIoUAssigner}
#: The RoI head's assignment (Detectron: foreground IoU >= 0.5, background [0, 0.5), no low-quality matches).
_ASSIGNER_DEFAULTS: dict[str, dict[str, Any]] = {"faster_rcnn": {"pos_iou": 0.5, "neg_iou": 0.5, "low_quality": False}}


def resolve_model_config(cfg: dict[str, Any], where: str = "model") -> dict[str, Any]:
    """``cfg`` completed with its type's defaults; unknown keys, choices or arguments raise naming them."""
    kind = cfg.get("type", "retinanet")
    if kind not in MODEL_KEYS:
        raise ValueError(f"{where}.type={kind!r}: expected one of {', '.join(MODEL_TYPES)}")
    known = MODEL_KEYS[kind]
    unknown = sorted(set(cfg) - set(known))
    if unknown:
        raise ValueError(
            f"{where}: {', '.join(f'model.{k}' for k in unknown)} not used by model type {kind!r} "
            f"(its keys: {', '.join(sorted(known))})"
        )
    resolved = copy.deepcopy(known)
    for key, value in cfg.items():
        if key.endswith("_args"):
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise ValueError(f"{where}: model.{key} must be a mapping of argument names, got {value!r}")
            value = {name: _number(v) for name, v in value.items()}
        elif isinstance(known[key], (int, float)) and not isinstance(known[key], bool):
            value = _number(value)
        resolved[key] = copy.deepcopy(value)
    for part, options in REMEDIES[kind].items():
        name = resolved[part]
        if name not in options:
            choices = ", ".join("null" if o is None else o for o in options)
            raise ValueError(f"{where}: model.{part}={name!r} is not available for {kind!r} (choices: {choices})")
        if options[name] is None and resolved.get(f"{part}_args"):
            raise ValueError(f"{where}: model.{part}_args given without a model.{part}")
        if options[name] is not None:
            _check_args(options[name][0], resolved[f"{part}_args"], f"{where}: model.{part}_args ({part}={name})")
    _check_args(_ASSIGNERS[kind], resolved["assigner_args"], f"{where}: model.assigner_args")
    if "rpn_sampler_args" in resolved:
        _check_args(_RPN_SAMPLER[0], resolved["rpn_sampler_args"], f"{where}: model.rpn_sampler_args")
    if "adversary" in resolved:
        _check_adversary(resolved, known, where)
    sohem = resolved.get("sampler") == "sohem"
    if sohem and "schedule" not in resolved["sampler_args"]:
        raise ValueError(
            f"{where}: model.sampler=sohem needs model.sampler_args.schedule ({' | '.join(_SOHEM_SCHEDULES)}): the "
            "S-OHEM paper's stage schedule is not available to this project, so there is no default"
        )
    return resolved


def _check_adversary(resolved: dict[str, Any], defaults: dict[str, Any], where: str) -> None:
    """The A-Fast-RCNN keys of a resolved two-stage ``cfg``; an error names the key."""
    name = resolved["adversary"]
    if name not in ADVERSARIES:
        choices = ", ".join("null" if o is None else o for o in ADVERSARIES)
        raise ValueError(f"{where}: model.adversary={name!r} is not available (choices: {choices})")
    stages = ("adversary_pretrain_start", "adversary_joint_start")
    if name is None:
        if resolved["adversary_args"]:
            raise ValueError(f"{where}: model.adversary_args given without a model.adversary")
        # a stage fraction other than the default means a run that expected an adversary
        changed = [k for k in stages if resolved[k] != defaults[k]]
        if changed:
            raise ValueError(f"{where}: {', '.join(f'model.{k}' for k in changed)} given without a model.adversary")
        return
    args = resolved["adversary_args"]
    fixed = [k for k in _ADVERSARY_FROM_MODEL if k in args]
    if fixed:
        raise ValueError(
            f"{where}: model.adversary_args.{fixed[0]} is the model's (in_channels: model.fpn_channels, "
            f"pool_size: the box head's {ROI_POOL_SIZE}), not an argument"
        )
    _check_args(ADVERSARIES[name][0], args, f"{where}: model.adversary_args (adversary={name})")
    pretrain, joint = (resolved[k] for k in stages)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (pretrain, joint)) or not (
        0 <= pretrain <= joint <= 1
    ):
        raise ValueError(
            f"{where}: need 0 <= model.adversary_pretrain_start <= model.adversary_joint_start <= 1, got "
            f"{pretrain!r}, {joint!r}"
        )


def _number(value: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` as a string: such a string becomes the number it spells."""
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return int(number) if number.is_integer() and "." not in value and "e" not in value.lower() else number
    return value


def _check_args(constructor: Callable[..., Any], args: dict[str, Any], where: str) -> None:
    parameters = inspect.signature(constructor).parameters
    unknown = sorted(set(args) - set(parameters))
    if unknown:
        accepted = ", ".join(p for p in parameters if p not in ("self", "process_group"))
        raise ValueError(f"{where}: unknown argument(s) {', '.join(unknown)} (accepted: {accepted})")


def _make(remedy: Remedy | None, args: dict[str, Any]) -> Any:
    if remedy is None:
        return None
    constructor, defaults = remedy
    return constructor(**_distributed(constructor, {**defaults, **args}))


def _distributed(constructor: Callable[..., Any], args: dict[str, Any]) -> dict[str, Any]:
    """Under data-parallel training (``W > 1`` processes), a loss that takes a ``process_group`` (GHM-C/R)
    gets the whole world, so its gradient density is that of the global batch, and ``W`` times its loss
    weight: the loss then divides each process's sum by the global count, and DDP averages the processes'
    gradients, so ``W`` restores the batch's gradient, the normalisation ``PositiveNormalizer`` gives the
    other losses (see docs/distributed.md)."""
    parameters = inspect.signature(constructor).parameters
    if "process_group" not in parameters or not dist.is_available() or not dist.is_initialized():
        return args
    world = dist.get_world_size()
    if world == 1:
        return args
    loss_weight = args.get("loss_weight", parameters["loss_weight"].default)
    return {**args, "process_group": dist.group.WORLD, "loss_weight": loss_weight * world}


def _sampler_args(args: dict[str, Any]) -> dict[str, Any]:
    schedule = args.get("schedule")
    if isinstance(schedule, str):
        if schedule not in _SOHEM_SCHEDULES:
            raise ValueError(f"model.sampler_args.schedule={schedule!r}: expected one of {', '.join(_SOHEM_SCHEDULES)}")
        return {**args, "schedule": _SOHEM_SCHEDULES[schedule]}
    return args


def build_remedies(cfg: dict[str, Any]) -> dict[str, Any]:
    """The criterion's parts of a resolved ``cfg``: ``cls_loss``, ``box_loss``, ``assigner``, ``normalizer``
    (dense types), ``sampler`` (RetinaNet, and the RoI head's for Faster R-CNN), each with its paper's
    setting updated by ``<part>_args``."""
    kind = cfg["type"]
    remedies = REMEDIES[kind]
    parts = {
        "cls_loss": _make(remedies["cls_loss"][cfg["cls_loss"]], cfg["cls_loss_args"]),
        "box_loss": _make(remedies["box_loss"][cfg["box_loss"]], cfg["box_loss_args"]),
        "assigner": _ASSIGNERS[kind](**{**_ASSIGNER_DEFAULTS.get(kind, {}), **cfg["assigner_args"]}),
    }
    if "normalizer_momentum" in cfg:
        parts["normalizer"] = PositiveNormalizer(momentum=cfg["normalizer_momentum"])
    if "sampler" in remedies:
        parts["sampler"] = _make(remedies["sampler"][cfg["sampler"]], _sampler_args(cfg["sampler_args"]))
    return parts


def build_model(cfg: dict[str, Any], num_classes: int) -> nn.Module:
    """The detector of ``cfg`` (a config's ``model`` section) for ``num_classes`` object classes."""
    cfg = resolve_model_config(cfg)
    retinanet = cfg["type"] == "retinanet"
    two_stage = cfg["type"] == "faster_rcnn"
    strides = RPN_STRIDES if two_stage else FPN_STRIDES
    backbone, neck = build_pyramid(
        cfg["backbone"],
        strides,
        extra_from="maxpool" if two_stage else ("c5" if retinanet else "p5"),
        weights=cfg["backbone_weights"],
        norm=cfg["norm"],
        frozen_stages=cfg["frozen_stages"],
        channels=cfg["fpn_channels"],
        bfp="non_local" if cfg["bfp"] is True else (cfg["bfp"] or None),
    )
    if two_stage:
        return _faster_rcnn(cfg, num_classes, backbone, neck)
    anchors = len(cfg["anchor_ratios"]) * len(cfg["anchor_scales"]) if retinanet else 1
    head = DenseHead(
        neck.out_channels,
        num_classes,
        anchors,
        4 if retinanet else 4 * (cfg["reg_max"] + 1),
        channels=cfg["head_channels"],
        num_convs=cfg["num_convs"],
        norm=cfg["head_norm"],
        prior_prob=cfg["prior_prob"],
        num_scales=0 if retinanet else len(strides),
    )
    parts = {
        "postprocess": DensePostProcess(cfg["score_thresh"], cfg["topk"], cfg["nms_iou"], cfg["max_dets"]),
        **build_remedies(cfg),
    }
    if retinanet:
        anchors = {"anchor_sizes": cfg["anchor_sizes"], "anchor_ratios": cfg["anchor_ratios"]}
        return RetinaNet(
            num_classes, backbone, neck=neck, head=head, anchor_scales=cfg["anchor_scales"], **anchors, **parts
        )
    return GFL(
        num_classes,
        backbone,
        neck=neck,
        head=head,
        octave_base_scale=cfg["octave_base_scale"],
        reg_max=cfg["reg_max"],
        dfl_weight=cfg["dfl_weight"],
        **parts,
    )


def _faster_rcnn(cfg: dict[str, Any], num_classes: int, backbone: nn.Module, neck: nn.Module) -> FasterRCNN:
    parts = build_remedies(cfg)
    rpn = {k: cfg[k] for k in cfg if k.startswith("rpn_") and k != "rpn_sampler_args"}
    adversary = ADVERSARIES[cfg["adversary"]]
    detector: type[FasterRCNN] = FasterRCNN
    extra: dict[str, Any] = {}
    if adversary is not None:
        constructor, defaults = adversary
        detector = AFastRCNN
        extra = {
            "adversary": constructor(neck.out_channels, ROI_POOL_SIZE, **{**defaults, **cfg["adversary_args"]}),
            "pretrain_start": cfg["adversary_pretrain_start"],
            "joint_start": cfg["adversary_joint_start"],
        }
    return detector(
        num_classes,
        backbone,
        neck,
        anchor_sizes=cfg["anchor_sizes"],
        anchor_ratios=cfg["anchor_ratios"],
        representation_size=cfg["representation_size"],
        rpn_sampler=_make(_RPN_SAMPLER, cfg["rpn_sampler_args"]),
        roi_sampler=parts["sampler"],
        roi_assigner=parts["assigner"],
        cls_loss=parts["cls_loss"],
        box_loss=parts["box_loss"],
        score_thresh=cfg["score_thresh"],
        nms_iou=cfg["nms_iou"],
        max_detections=cfg["max_dets"],
        **rpn,
        **extra,
    )
