"""Datasets: COCO json, Pascal VOC xml, YOLO txt and the built-in digits scenes, as one record type.

Every loader returns a ``RecordSet`` (``ImageRecord`` per image: xyxy pixel boxes, contiguous labels,
crowd/difficult flags, plus the class names and the source category ids). A dataset is named by a
small YAML file (``load_data_spec``); ``build_dataset`` turns a split into a ``DetectionDataset``
with its transforms, ``collate_detection`` pads batches, and ``coco_ground_truth`` gives the COCO
evaluator the ground truth in the source's ids, whatever the format. ``read_image`` is the one image
decoder (strict, EXIF orientation applied, 16-bit scaled; ``BadImageError`` names the file), and
``check_images`` decodes a split with it before training.
"""

from balancedet.data.coco import load_coco
from balancedet.data.dataset import DetectionDataset, build_dataset, coco_ground_truth, instance_counts
from balancedet.data.digits import DIGITS_CLASSES, DigitsOptions, class_probabilities, prepare_digits, render_scene
from balancedet.data.images import BadImageError, image_size, read_image
from balancedet.data.records import BOX_TOLERANCE, BadRecordWarning, ImageRecord, PackedRecords, RecordSet
from balancedet.data.spec import DataSpec, SplitSpec, load_data_spec
from balancedet.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DetectionCollate,
    DetectionTransform,
    boxes_to_original,
    collate_detection,
)
from balancedet.data.verify import check_images
from balancedet.data.voc import load_voc
from balancedet.data.yolo import load_yolo

__all__ = [
    "BOX_TOLERANCE",
    "DIGITS_CLASSES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BadImageError",
    "BadRecordWarning",
    "DataSpec",
    "DetectionCollate",
    "DetectionDataset",
    "DetectionTransform",
    "DigitsOptions",
    "ImageRecord",
    "PackedRecords",
    "RecordSet",
    "SplitSpec",
    "boxes_to_original",
    "build_dataset",
    "check_images",
    "class_probabilities",
    "coco_ground_truth",
    "collate_detection",
    "image_size",
    "instance_counts",
    "load_coco",
    "load_data_spec",
    "load_voc",
    "load_yolo",
    "prepare_digits",
    "read_image",
    "render_scene",
]
