"""kft models: compositions of a backbone, optional neck, and heads.

Importing this package registers every kft layer and model class with Keras; use
:func:`kft.saving.load_model` to read a kft ``.keras`` file (it also registers the optimisers
and schedules a compiled model was saved with).
"""

from kft.models.backbones import mobilenet as _mobilenet  # noqa: F401  (registration)
from kft.models.backbones import mobilenet_v3_fpn as _mobilenet_v3_fpn  # noqa: F401
from kft.models.backbones import vgg as _vgg  # noqa: F401  (registration)
from kft.models.classifier import ResNetClassifier
from kft.models.faster_rcnn import FasterRCNN
from kft.models.ssd import SSD, SSDDecoder
from kft.models.weights import load_from

__all__ = ["SSD", "FasterRCNN", "ResNetClassifier", "SSDDecoder", "load_from"]
