"""Fused training-mode BatchNormalization while a model trains (:func:`fused_batch_norms`).

Inside ``with fused_batch_norms(model):`` every plain ``keras.layers.BatchNormalization`` of
``model`` computes its training-mode output and statistics with
:func:`kft.ops.batch_norm.batch_norm_training` (one fused kernel on TensorFlow) instead of
Keras' generic ops; everything else about the layer is Keras' own: inference mode, the moving
averages (``moving = moving * momentum + batch * (1 - momentum)``), frozen layers
(``trainable=False`` runs in inference mode), mixed-precision casts. A layer whose options the
fused path does not cover (``renorm``, ``synchronized`` cross-replica statistics, a mask,
channels not last) keeps Keras' path.

Only the running process changes: the layers keep their class and config, so a model saved
meanwhile is a plain Keras model. kft's runner (:func:`kft.train.runs.fit`) and
:meth:`kft.models.detector.Detector.fit` train inside it; Keras traces the train step while it
is open, and the traced step keeps the fused kernel after it closes.
"""

from __future__ import annotations

import contextlib
import types

import keras
from keras import ops

from kft.ops.batch_norm import batch_norm_training


def _fusable(layer) -> bool:
    return (type(layer) is keras.layers.BatchNormalization and not layer.renorm
            and not layer.synchronized and isinstance(layer.axis, int))


def _fused_call(self, inputs, training=None, mask=None):
    if (not (training and self.trainable) or mask is not None
            or self.axis not in (-1, len(inputs.shape) - 1)):
        return keras.layers.BatchNormalization.call(self, inputs, training, mask)
    x = ops.cast(inputs, "float32")
    gamma = ops.cast(self.gamma, "float32") if self.scale else None
    beta = ops.cast(self.beta, "float32") if self.center else None
    y, mean, variance = batch_norm_training(x, gamma, beta, self.epsilon)
    self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
    self.moving_variance.assign(
        self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
    return ops.cast(y, self.compute_dtype)


@contextlib.contextmanager
def fused_batch_norms(model):
    """Gives ``model``'s plain BatchNormalization layers the fused training path while open
    (see the module docstring); yields how many layers it covers. Nesting is allowed: a
    layer an outer block covers is left to it."""
    layers = [layer for layer in model._flatten_layers(include_self=False, recursive=True)
              if _fusable(layer) and "call" not in vars(layer)]
    for layer in layers:  # an instance attribute, past Keras' and TF's attribute tracking
        object.__setattr__(layer, "call", types.MethodType(_fused_call, layer))
    try:
        yield len(layers)
    finally:
        for layer in layers:
            object.__delattr__(layer, "call")
