"""kft.data: reading, checking, augmenting and batching images.

* :func:`read_image_folder`, :func:`load_tfds`: datasets from folders or TFDS (classification).
* :func:`scan_images`, :class:`DataReport`: bad files are converted or skipped, and reported.
* :class:`ClassificationAugment` and its parts: D4 augmentation as seedable Keras layers.
* :func:`classification_batches`: reproducible, resumable tf.data pipelines.
* :func:`make_shapes_classification`: kft's generated shapes dataset.
"""

from kft.data.augment import (
    ClassificationAugment,
    RandomBlur,
    RandomFlip,
    RandomGaussianNoise,
    RandomRotate90,
    RandomTranspose,
)
from kft.data.images import IMAGE_EXTENSIONS, inspect_image, scan_images
from kft.data.pipeline import Batches, classification_batches, load_image
from kft.data.readers.folder import ClassificationSplit, read_image_folder, stratified_split
from kft.data.readers.tfds import TFDSNotPreparedError, load_tfds
from kft.data.report import DataReport
from kft.data.synthetic import SHAPES, make_shapes_classification

__all__ = [
    "IMAGE_EXTENSIONS",
    "SHAPES",
    "Batches",
    "ClassificationAugment",
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
    "scan_images",
    "stratified_split",
]
