"""kft models: compositions of a backbone, optional neck, and heads.

Importing this package registers every kft layer and model class with Keras, so
``keras.saving.load_model`` can read any kft ``.keras`` file afterwards.
"""

from kft.models.backbones import mobilenet as _mobilenet  # noqa: F401  (registration)
from kft.models.backbones import vgg as _vgg  # noqa: F401  (registration)
from kft.models.classifier import ResNetClassifier
from kft.models.ssd import SSD, SSDDecoder
from kft.models.weights import load_from
from kft.train import optimizers as _optimizers  # noqa: F401  (a saved model's optimizer)
from kft.train import schedules as _schedules  # noqa: F401

__all__ = ["SSD", "ResNetClassifier", "SSDDecoder", "load_from"]
