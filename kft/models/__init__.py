"""kft models: compositions of a backbone, optional neck, and heads."""

from kft.models.classifier import ResNetClassifier
from kft.models.weights import load_from

__all__ = ["ResNetClassifier", "load_from"]
