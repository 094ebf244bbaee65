"""Detectors and their parts: one skeleton (``DenseDetector``) that RetinaNet and GFL assemble from a
backbone, a neck (FPN, optionally the Balanced Feature Pyramid), a dense head, priors, a criterion
and the post-processing. See docs/conventions.md for the protocols the parts follow."""

from balancedet.models.backbones import ResNetBackbone
from balancedet.models.batching import batch_images, pad_targets
from balancedet.models.bfp import BalancedFeaturePyramid, NonLocal2d
from balancedet.models.detector import DenseDetector, DensePostProcess, call_loss
from balancedet.models.fpn import FPN
from balancedet.models.gfl import GFL, GFLCriterion
from balancedet.models.heads import DenseHead, Scale
from balancedet.models.normalizer import PositiveNormalizer
from balancedet.models.norms import NORMS, norm_layer
from balancedet.models.postprocess import detections_from_levels
from balancedet.models.priors import DeltaCoding, DistributionCoding, PriorGenerator, Priors, distribution_expectation
from balancedet.models.pyramid import FeaturePyramid, build_pyramid
from balancedet.models.retinanet import RetinaNet, RetinaNetCriterion

__all__ = [
    "FPN",
    "GFL",
    "NORMS",
    "BalancedFeaturePyramid",
    "DeltaCoding",
    "DenseDetector",
    "DenseHead",
    "DensePostProcess",
    "DistributionCoding",
    "FeaturePyramid",
    "GFLCriterion",
    "NonLocal2d",
    "PositiveNormalizer",
    "PriorGenerator",
    "Priors",
    "ResNetBackbone",
    "RetinaNet",
    "RetinaNetCriterion",
    "Scale",
    "batch_images",
    "build_pyramid",
    "pad_targets",
    "call_loss",
    "detections_from_levels",
    "distribution_expectation",
    "norm_layer",
]
