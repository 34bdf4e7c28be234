"""Dataset readers: image folders and TensorFlow Datasets (classification)."""

from kft.data.readers.folder import ClassificationSplit, read_image_folder, stratified_split
from kft.data.readers.tfds import TFDSNotPreparedError, load_tfds

__all__ = [
    "ClassificationSplit",
    "TFDSNotPreparedError",
    "load_tfds",
    "read_image_folder",
    "stratified_split",
]
