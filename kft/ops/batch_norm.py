"""Training-mode batch normalisation in one fused kernel where the backend has one.

:func:`batch_norm_training` is the one entry point. Keras 3's ``BatchNormalization`` computes
its training-mode output from generic ops (``moments``, then the normalisation), and their
gradients, in several passes over the activations. TensorFlow has a fused kernel
(``FusedBatchNormV3``, with its own gradient kernel) that does it in one; on 2 CPU cores it
takes a third off an SSDLite-MobileNetV2 (0.35, 128 px, batch 32) training step
(0.47 -> 0.30 s, ``benchmarks/batch_norm.py``). Same mathematics:

* TensorFlow backend, float32 compute, ``[B, H, W, C]`` input (:func:`uses_fused_kernel`):
  the fused kernel with the layer's own epsilon, on a GPU only from ``1.001e-5`` up (cuDNN's
  limit; TensorFlow's own wrapper raises smaller ones to it; keras-hub's ResNets use 1e-5 and
  run the fused kernel on CPUs). Its batch variance is Bessel-corrected (the running-average
  convention of TensorFlow's kernel), so it is scaled back by ``(n - 1) / n`` to the
  population variance Keras' moving average uses.
* Anything else: ``keras.ops.moments`` and ``keras.ops.batch_normalization``, Keras' own path.
"""

from __future__ import annotations

import keras
from keras import ops

GPU_MIN_EPSILON = 1.001e-5
"""The smallest epsilon the fused kernel takes on a GPU (TensorFlow's ``fused_batch_norm``
raises smaller ones to it, for cuDNN)."""


def uses_fused_kernel(rank: int, dtype, epsilon: float) -> bool:
    """Whether :func:`batch_norm_training` runs the fused kernel for an input of this rank and
    dtype and this epsilon (TensorFlow backend, 4-D float32; see the module docstring)."""
    if keras.backend.backend() != "tensorflow" or rank != 4 or str(dtype) != "float32":
        return False
    if epsilon >= GPU_MIN_EPSILON:
        return True
    import tensorflow as tf

    return not tf.config.list_logical_devices("GPU")


def batch_norm_training(x, gamma, beta, epsilon: float):
    """Normalises ``x`` over every axis but the last with its own batch statistics.

    Args:
        x: float32 ``[..., C]`` activations.
        gamma, beta: float32 ``[C]`` scale and offset (``None``: 1 and 0).
        epsilon: added to the variance.

    Returns:
        ``(y, mean, variance)``: ``y = (x - mean) / sqrt(variance + epsilon) * gamma + beta``
        (shape of ``x``), and the batch ``mean`` and population ``variance`` (``[C]``, what a
        moving average of the statistics takes).
    """
    channels = x.shape[-1]
    if gamma is None:
        gamma = ops.ones((channels,), x.dtype)
    if beta is None:
        beta = ops.zeros((channels,), x.dtype)
    if uses_fused_kernel(len(x.shape), keras.backend.standardize_dtype(x.dtype), epsilon):
        import tensorflow as tf

        empty = tf.constant([], tf.float32)  # no running statistics: training mode
        y, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
            x=x, scale=gamma, offset=beta, mean=empty, variance=empty, epsilon=epsilon,
            data_format="NHWC", is_training=True)
        n = ops.cast(ops.prod(ops.shape(x)[:-1]), "float32")
        return y, mean, variance * ops.maximum(n - 1.0, 1.0) / n
    axes = list(range(len(x.shape) - 1))
    mean, variance = ops.moments(x, axes=axes)
    y = ops.batch_normalization(x, mean, variance, axis=-1, offset=beta, scale=gamma,
                                epsilon=epsilon)
    return y, mean, variance
