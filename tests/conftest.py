"""Shared fixtures: tiny models and data made by the tests themselves."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _float32_policy():
    keras.config.set_dtype_policy("float32")
    yield
    keras.config.set_dtype_policy("float32")


@pytest.fixture
def tiny_classifier():
    from kft.models.classifier import ResNetClassifier

    keras.utils.set_random_seed(0)
    return ResNetClassifier.from_arch("resnet_tiny", num_classes=3, image_size=64)


@pytest.fixture
def colour_batch():
    """64x64 images whose class is the dominant colour channel (learnable in a few steps)."""
    rng = np.random.default_rng(0)
    labels = np.arange(12) % 3
    images = rng.uniform(0, 60, size=(12, 64, 64, 3)).astype("float32")
    for i, c in enumerate(labels):
        images[i, :, :, c] += 180
    return images, keras.utils.to_categorical(labels, 3).astype("float32")
