"""One way to build any detector from a configuration's ``model`` section (the preset names of
``configs/`` and ``--set model.key=value`` map here onto the models' explicit constructor arguments).

``cls_loss``: ``focal`` (FL, alpha/gamma), ``ce`` (plain sigmoid CE), ``alpha_ce`` (alpha-balanced
CE), ``focal_star`` (FL*, gamma/beta 2/1), ``ghmc`` (GHM-C, 30 bins, momentum 0.75).
``box_loss``: ``smooth_l1`` (beta 1/9), ``l1``, ``balanced_l1`` (Libra), ``ghmr`` (GHM-R), ``giou``.
``sampler``: ``null``, ``ohem`` (top-loss negatives at 3:1 over the dense anchors) or ``ssd``
(per-image hard-negative mining at 3:1). ``anchor_sizes`` apply to RetinaNet. GFL uses its own
losses (QFL + DFL + GIoU) and ATSS on square anchors of ``octave_base_scale * stride``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from balancedet import losses
from balancedet.samplers import HardNegativeMiner, OHEMSampler

CLS_LOSSES = ("focal", "ce", "alpha_ce", "focal_star", "ghmc")
BOX_LOSSES = ("smooth_l1", "l1", "balanced_l1", "ghmr", "giou")
SAMPLERS = (None, "ohem", "ssd")
MODEL_TYPES = ("retinanet", "gfl")


def _choice(cfg: dict[str, Any], key: str, options: tuple) -> Any:
    value = cfg[key]
    if value not in options:
        raise ValueError(f"model.{key}={value!r}: expected one of {', '.join(map(str, options))}")
    return value


def build_cls_loss(cfg: dict[str, Any]) -> nn.Module:
    name = _choice(cfg, "cls_loss", CLS_LOSSES)
    if name == "focal":
        return losses.FocalLoss(alpha=cfg["alpha"], gamma=cfg["gamma"])
    if name == "ce":
        return losses.BinaryCrossEntropyLoss(alpha=None)
    if name == "alpha_ce":
        return losses.BinaryCrossEntropyLoss(alpha=cfg["alpha"])
    if name == "focal_star":
        return losses.FocalLossStar(gamma=cfg["gamma"], beta=1.0)
    return losses.GHMC(bins=30, momentum=0.75)


def build_box_loss(cfg: dict[str, Any]) -> nn.Module:
    name = _choice(cfg, "box_loss", BOX_LOSSES)
    if name == "smooth_l1":
        return losses.SmoothL1Loss(beta=1.0 / 9.0)
    if name == "l1":
        return losses.L1Loss()
    if name == "balanced_l1":
        return losses.BalancedL1Loss(alpha=0.5, gamma=1.5, beta=1.0)
    if name == "ghmr":
        return losses.GHMR(mu=0.02, bins=10, momentum=0.7)
    return losses.GIoULoss()


def build_sampler(cfg: dict[str, Any]):
    name = _choice(cfg, "sampler", SAMPLERS)
    if name == "ohem":
        return OHEMSampler(num=None)
    if name == "ssd":
        return HardNegativeMiner()
    return None


def build_model(cfg: dict[str, Any], num_classes: int) -> nn.Module:
    """The detector of ``cfg`` (a config's ``model`` section) for ``num_classes`` object classes."""
    from balancedet.models.normalizer import PositiveNormalizer

    kind = _choice(cfg, "type", MODEL_TYPES)
    common = {
        "backbone": cfg["backbone"],
        "backbone_weights": cfg["backbone_weights"],
        "backbone_norm": cfg["norm"],
        "frozen_stages": cfg["frozen_stages"],
        "fpn_channels": cfg["fpn_channels"],
        "bfp": "non_local" if cfg["bfp"] is True else (cfg["bfp"] or None),
        "head_channels": cfg["head_channels"],
        "num_convs": cfg["num_convs"],
        "score_thresh": cfg["score_thresh"],
        "topk_candidates": cfg["topk"],
        "nms_iou": cfg["nms_iou"],
        "max_detections": cfg["max_dets"],
        "normalizer": PositiveNormalizer(momentum=cfg["normalizer_momentum"]),
    }
    if kind == "retinanet":
        from balancedet.models.retinanet import RetinaNet

        return RetinaNet(
            num_classes,
            anchor_sizes=cfg["anchor_sizes"],
            cls_loss=build_cls_loss(cfg),
            box_loss=build_box_loss(cfg),
            sampler=build_sampler(cfg),
            **common,
        )
    from balancedet.models.gfl import GFL

    return GFL(num_classes, octave_base_scale=cfg["octave_base_scale"], **common)
