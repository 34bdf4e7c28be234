"""kft.data: reading, checking, augmenting and batching images.

* :func:`read_image_folder`, :func:`load_tfds`: datasets from folders or TFDS (classification).
* :func:`scan_images`, :class:`DataReport`: bad files are converted or skipped, and reported.
* :class:`ClassificationAugment` and its parts: D4 augmentation as seedable Keras layers.
* :func:`classification_batches`: reproducible, resumable tf.data pipelines.
* :func:`make_shapes_classification`: kft's generated shapes dataset.

Detection:

* :func:`read_voc`, :func:`read_coco`, :func:`read_cityscapes`, :func:`read_tfds_detection`:
  readers giving a :class:`DetectionSplit` of :class:`DetectionRecord` (boxes xyxy pixels).
* :func:`detection_batches`: padded, static-shape batches for Keras; :func:`to_original` maps
  predictions back to the original image's pixels.
* :func:`make_shapes_detection`: kft's generated detection + instance-segmentation dataset.
* ``kft.data.detection_augment``: box-aware augmentation layers (D3).
"""

from kft.data.augment import (
    AUGMENT_PRESETS,
    ClassificationAugment,
    RandomBlur,
    RandomFlip,
    RandomGaussianNoise,
    RandomRotate90,
    RandomTranspose,
    classification_augment,
)
from kft.data.detection_pipeline import (
    DetectionBatches,
    detection_batches,
    resize_image,
    to_original,
)
from kft.data.images import IMAGE_EXTENSIONS, inspect_image, scan_images
from kft.data.pipeline import Batches, classification_batches, load_image
from kft.data.readers.cityscapes import CITYSCAPES_CLASSES, read_cityscapes
from kft.data.readers.coco import read_coco
from kft.data.readers.detection import AnnotationsLostError, DetectionRecord, DetectionSplit
from kft.data.readers.folder import (
    ClassificationSplit,
    folder_layout,
    read_image_folder,
    stratified_split,
)
from kft.data.readers.layout import available_splits, detect_format
from kft.data.readers.tfds import TFDSNotPreparedError, load_tfds
from kft.data.readers.tfds_detection import read_tfds_detection
from kft.data.readers.voc import VOC_CLASSES, infer_voc_class_names, read_voc
from kft.data.readers.yolo import read_yolo
from kft.data.report import DataReport
from kft.data.shapes import SHAPE_CLASSES, make_shapes_detection
from kft.data.synthetic import SHAPES, make_shapes_classification

__all__ = [
    "CITYSCAPES_CLASSES",
    "SHAPE_CLASSES",
    "VOC_CLASSES",
    "AnnotationsLostError",
    "DetectionBatches",
    "DetectionRecord",
    "DetectionSplit",
    "detection_batches",
    "make_shapes_detection",
    "read_cityscapes",
    "read_coco",
    "read_tfds_detection",
    "read_voc",
    "read_yolo",
    "detect_format",
    "available_splits",
    "infer_voc_class_names",
    "resize_image",
    "to_original",
    "IMAGE_EXTENSIONS",
    "SHAPES",
    "Batches",
    "AUGMENT_PRESETS",
    "ClassificationAugment",
    "classification_augment",
    "ClassificationSplit",
    "DataReport",
    "RandomBlur",
    "RandomFlip",
    "RandomGaussianNoise",
    "RandomRotate90",
    "RandomTranspose",
    "TFDSNotPreparedError",
    "classification_batches",
    "inspect_image",
    "load_image",
    "load_tfds",
    "make_shapes_classification",
    "read_image_folder",
    "folder_layout",
    "scan_images",
    "stratified_split",
]
