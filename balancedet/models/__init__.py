"""Detectors and their parts (shared/SPEC.md section 4): backbones, FPN, BFP, RetinaNet, GFL."""

from balancedet.models.backbones import ResNetBackbone
from balancedet.models.batching import batch_images, pad_targets
from balancedet.models.bfp import BalancedFeaturePyramid, NonLocal2d
from balancedet.models.fpn import FPN
from balancedet.models.gfl import GFL, GFLHead
from balancedet.models.normalizer import PositiveNormalizer
from balancedet.models.postprocess import detections_from_levels
from balancedet.models.retinanet import RetinaNet, RetinaNetHead

__all__ = [
    "FPN",
    "GFL",
    "GFLHead",
    "BalancedFeaturePyramid",
    "NonLocal2d",
    "PositiveNormalizer",
    "ResNetBackbone",
    "RetinaNet",
    "RetinaNetHead",
    "batch_images",
    "detections_from_levels",
    "pad_targets",
]
