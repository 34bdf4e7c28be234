"""kft: fine-tune pretrained vision models in Keras 3 on TensorFlow.

Heavy modules load on first use, so ``kft --help`` stays fast::

    from kft.models import ResNetClassifier
    from kft.config import Recipe
"""

__version__ = "0.1.0"
