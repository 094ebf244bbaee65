"""Detectors and their parts: one skeleton (``DenseDetector``) that RetinaNet and GFL assemble from a
backbone, a neck (FPN, optionally the Balanced Feature Pyramid), a dense head, priors, a criterion
and the post-processing; the two-stage Faster R-CNN + FPN (RPN, RoI head) on the same backbones and
necks, and A-Fast-RCNN, that detector trained against an ASDN adversary. See docs/conventions.md for
the protocols the parts follow."""

from balancedet.models.a_fast_rcnn import JOINT_START, PRETRAIN_START, STAGE_ITERATIONS, AFastRCNN
from balancedet.models.asdn import ASDN
from balancedet.models.backbones import ResNetBackbone
from balancedet.models.batching import batch_images, pad_targets
from balancedet.models.bfp import BalancedFeaturePyramid, NonLocal2d
from balancedet.models.detector import DenseDetector, DensePostProcess, call_loss
from balancedet.models.faster_rcnn import ROI_LEVELS, ROI_POOL_SIZE, FasterRCNN
from balancedet.models.fpn import FPN
from balancedet.models.gfl import GFL, GFLCriterion
from balancedet.models.heads import DenseHead, Scale
from balancedet.models.normalizer import PositiveNormalizer
from balancedet.models.norms import NORMS, norm_layer
from balancedet.models.postprocess import detections_from_levels
from balancedet.models.priors import DeltaCoding, DistributionCoding, PriorGenerator, Priors, distribution_expectation
from balancedet.models.pyramid import FeaturePyramid, build_pyramid
from balancedet.models.retinanet import RetinaNet, RetinaNetCriterion
from balancedet.models.roi_align import MultiLevelRoIAlign
from balancedet.models.roi_head import ROI_SMOOTH_L1_BETA, ROI_STDS, BoxHead, FastRCNNCriterion, RoIHead, RoITargets
from balancedet.models.rpn import RPN, RPN_RATIOS, RPN_SIZES, RPN_SMOOTH_L1_BETA, RPN_STRIDES, RPNCriterion, RPNHead

__all__ = [
    "ASDN",
    "FPN",
    "GFL",
    "JOINT_START",
    "NORMS",
    "PRETRAIN_START",
    "ROI_LEVELS",
    "ROI_POOL_SIZE",
    "ROI_SMOOTH_L1_BETA",
    "ROI_STDS",
    "RPN",
    "RPN_RATIOS",
    "RPN_SIZES",
    "RPN_SMOOTH_L1_BETA",
    "RPN_STRIDES",
    "STAGE_ITERATIONS",
    "AFastRCNN",
    "BalancedFeaturePyramid",
    "BoxHead",
    "DeltaCoding",
    "DenseDetector",
    "DenseHead",
    "DensePostProcess",
    "DistributionCoding",
    "FastRCNNCriterion",
    "FasterRCNN",
    "FeaturePyramid",
    "GFLCriterion",
    "MultiLevelRoIAlign",
    "NonLocal2d",
    "PositiveNormalizer",
    "PriorGenerator",
    "Priors",
    "RPNCriterion",
    "RPNHead",
    "ResNetBackbone",
    "RetinaNet",
    "RetinaNetCriterion",
    "RoIHead",
    "RoITargets",
    "Scale",
    "batch_images",
    "build_pyramid",
    "call_loss",
    "detections_from_levels",
    "distribution_expectation",
    "norm_layer",
    "pad_targets",
]
