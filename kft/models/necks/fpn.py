"""Feature Pyramid Network neck (Lin et al. 2017), as torchvision's ``FeaturePyramidNetwork``.

Input: a dict of named backbone levels, finest first (e.g. keras-hub ResNet's
``pyramid_outputs`` ``{"P2": C2, ..., "P5": C5}``, strides 4..32), each ``[B, H, W, C_l]``
channels-last. For every level a 1x1 *lateral* convolution maps it to ``channels``; going from
the coarsest level down, the running top-down map is resized to the next finer lateral's size
with nearest-neighbour sampling and added to it; a 3x3 *output* convolution then smooths every
sum. The outputs keep the input names and add an extra level:

* ``extra="max_pool"`` (default, torchvision's ``LastLevelMaxPool``): the last output
  subsampled with a kernel-1, stride-2 max pool (every other row and column, ``ceil(n / 2)``
  cells), e.g. ``P6`` at stride 64 for Faster R-CNN's RPN;
* ``extra=None``: no extra level.

Nearest-neighbour resizing follows PyTorch's ``F.interpolate(size=..., mode="nearest")``:
target cell ``i`` reads source cell ``floor(i * in / out)``. For a lateral of ``2n`` or
``2n - 1`` cells under a top-down map of ``n`` (what ``padding="same"`` stride-2 backbones give
for even and odd sizes) that is the 2x nearest upsampling cropped to the lateral's size; equal
sizes (MobileNetV3's two stride-32 levels) pass through unchanged.

Variants (``levels`` picks and orders the input levels used; the others are ignored):

* ``fasterrcnn_resnet50_fpn``: ``levels=("P2", "P3", "P4", "P5")``, 256 channels,
  ``extra="max_pool"`` -> P2..P6 at strides 4..64.
* ``fasterrcnn_mobilenet_v3_large_fpn``: the last two backbone levels (the 160-channel output
  of the first stride-32 block and the 960-channel last 1x1 convolution, both stride 32),
  256 channels, ``extra="max_pool"`` -> two stride-32 maps and one stride-64 map; e.g.
  ``FPN(levels=("C5a", "C5"), extra_name="pool")``, or :data:`MOBILENET_V3_FPN` with the
  backbone's two names.

Normalisation (``norm``): ``None`` (v1) gives every lateral and output convolution a bias;
``"batch"`` (``fasterrcnn_resnet50_fpn_v2``, torchvision's ``FeaturePyramidNetwork(
norm_layer=nn.BatchNorm2d)``) drops the biases and follows each convolution with a
BatchNormalization named ``<conv>_bn`` (epsilon 1e-5, momentum 0.9 = torch's 0.1), in
training mode when the FPN is called with ``training=True``.

Initialisation as torchvision: kaiming-uniform with ``a=1`` (LeCun uniform) kernels, zero
biases.
"""

from __future__ import annotations

import re

import keras
import numpy as np
from keras import layers, ops

DEFAULT_CHANNELS = 256
"""torchvision's FPN width (``out_channels`` of every Faster / Mask R-CNN FPN)."""

RESNET_FPN = {"levels": ("P2", "P3", "P4", "P5"), "channels": 256, "extra": "max_pool"}
"""``FPN(**RESNET_FPN)``: fasterrcnn_resnet50_fpn's neck on keras-hub ResNet pyramid names."""

MOBILENET_V3_FPN = {"channels": 256, "extra": "max_pool", "extra_name": "pool"}
"""fasterrcnn_mobilenet_v3_large_fpn's neck; add ``levels=(name_160ch, name_960ch)``."""

EXTRA_BLOCKS = ("max_pool", None)
NORMS = (None, "batch")
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9
"""Keras momentum of torch's BatchNorm2d momentum 0.1 (``moving = 0.9 moving + 0.1 batch``)."""


@keras.saving.register_keras_serializable(package="kft")
class FPN(layers.Layer):
    """Top-down feature pyramid over a dict of backbone levels (see the module docstring).

    Args:
        channels: output channels of every level (torchvision 256).
        levels: names of the input levels to use, finest first; ``None`` uses every input
            level in the dict's order.
        extra: ``"max_pool"`` (an extra stride-2 subsampled level) or ``None``.
        extra_name: name of the extra level; ``None`` derives it from the last level's name
            (``"P5"`` -> ``"P6"``, ``"C5"`` -> ``"C6"``), or ``"pool"`` (torchvision's name)
            when that name does not end in a number.
        norm: ``None`` (convolutions with biases) or ``"batch"`` (bias-free convolutions, each
            followed by BatchNormalization; ``lateral_norms`` / ``output_norms`` hold them).

    Call:
        ``features``: dict ``name -> [B, H_l, W_l, C_l]``. Returns a dict ``name ->
        [B, H_l, W_l, channels]`` for the used levels in ``levels`` order, then the extra one.
    """

    def __init__(self, channels: int = DEFAULT_CHANNELS, levels=None, extra: str | None =
                 "max_pool", extra_name: str | None = None, norm: str | None = None, **kwargs):
        super().__init__(**kwargs)
        if extra not in EXTRA_BLOCKS:
            raise ValueError(f"extra={extra!r} must be one of {EXTRA_BLOCKS}")
        if norm not in NORMS:
            raise ValueError(f"norm={norm!r} must be one of {NORMS}")
        if int(channels) < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        self.channels = int(channels)
        self.levels = None if levels is None else tuple(str(n) for n in levels)
        if self.levels is not None and not self.levels:
            raise ValueError("levels must name at least one input level")
        self.extra = extra
        self.extra_name = extra_name
        self.norm = norm
        self.laterals: list = []
        self.outputs: list = []
        self.lateral_norms: list = []
        self.output_norms: list = []

    def _names(self, features) -> tuple:
        names = tuple(features) if self.levels is None else self.levels
        missing = [n for n in names if n not in features]
        if missing:
            raise ValueError(f"FPN levels {missing} are not among the inputs {list(features)}")
        return names

    def output_names(self, input_names) -> tuple:
        """Output level names for inputs with these names (the used levels, then the extra)."""
        names = tuple(input_names) if self.levels is None else self.levels
        if self.extra is None:
            return names
        return (*names, self._extra_name(names[-1]))

    def _extra_name(self, last: str) -> str:
        if self.extra_name is not None:
            return self.extra_name
        found = re.fullmatch(r"(.*?)(\d+)", last)
        return f"{found.group(1)}{int(found.group(2)) + 1}" if found else "pool"

    def build(self, input_shape):
        if not isinstance(input_shape, dict):
            raise ValueError(f"FPN takes a dict of named levels, got {type(input_shape)}")
        names = self._names(input_shape)
        init = keras.initializers.VarianceScaling(1.0, "fan_in", "uniform")
        bias = self.norm is None
        self.laterals, self.outputs, self.lateral_norms, self.output_norms = [], [], [], []
        for name in names:
            shape = tuple(input_shape[name])
            out_shape = shape[:-1] + (self.channels,)
            lateral = layers.Conv2D(self.channels, 1, use_bias=bias, kernel_initializer=init,
                                    bias_initializer="zeros", name=f"lateral_{name}")
            output = layers.Conv2D(self.channels, 3, padding="same", use_bias=bias,
                                   kernel_initializer=init, bias_initializer="zeros",
                                   name=f"output_{name}")
            lateral.build(shape)
            output.build(out_shape)
            self.laterals.append(lateral)
            self.outputs.append(output)
            if self.norm == "batch":
                for conv, norms in ((lateral, self.lateral_norms), (output, self.output_norms)):
                    bn = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM,
                                                   name=f"{conv.name}_bn")
                    bn.build(out_shape)
                    norms.append(bn)
        super().build(input_shape)

    def _lateral(self, i, x, training):
        x = self.laterals[i](x)
        return self.lateral_norms[i](x, training=training) if self.lateral_norms else x

    def _output(self, i, x, training):
        x = self.outputs[i](x)
        return self.output_norms[i](x, training=training) if self.output_norms else x

    def call(self, features, training=None):
        names = self._names(features)
        results = [None] * len(names)
        top = self._lateral(-1, features[names[-1]], training)
        results[-1] = self._output(-1, top, training)
        for i in range(len(names) - 2, -1, -1):
            lateral = self._lateral(i, features[names[i]], training)
            top = lateral + nearest_resize_like(top, lateral)
            results[i] = self._output(i, top, training)
        out = dict(zip(names, results, strict=True))
        if self.extra == "max_pool":
            out[self._extra_name(names[-1])] = results[-1][:, ::2, ::2, :]
        return out

    def compute_output_shape(self, input_shape):
        names = self._names(input_shape)
        out = {n: tuple(input_shape[n][:-1]) + (self.channels,) for n in names}
        if self.extra == "max_pool":
            b, h, w, _ = input_shape[names[-1]]
            half = [None if s is None else (s + 1) // 2 for s in (h, w)]
            out[self._extra_name(names[-1])] = (b, *half, self.channels)
        return out

    def get_config(self):
        config = super().get_config()
        config.update(channels=self.channels, levels=None if self.levels is None
                      else list(self.levels), extra=self.extra, extra_name=self.extra_name,
                      norm=self.norm)
        return config


def nearest_resize_like(x, reference):
    """Resizes ``x [B, h, w, C]`` to the spatial size of ``reference [B, H, W, ...]``.

    PyTorch's legacy nearest rule, source cell ``floor(i * h / H)`` (see the module docstring),
    gathered with static indices when both sizes are static. With a dynamic size it assumes the
    stride-2 relation (``H`` in ``{2h - 1, 2h}``, or equal) and crops a 2x repeat.
    """
    out = []
    for axis in (1, 2):
        n_in, n_out = x.shape[axis], reference.shape[axis]
        if n_in is not None and n_out is not None:
            if n_in == n_out:
                continue
            if n_out == 2 * n_in:
                x = ops.repeat(x, 2, axis=axis)
                continue
            scale = np.float32(n_in) / np.float32(n_out)
            index = np.minimum(np.floor(np.arange(n_out, dtype=np.float32) * scale),
                               n_in - 1).astype("int32")
            x = ops.take(x, index, axis=axis)
        else:
            out.append(axis)
    if out:
        target = ops.shape(reference)
        for axis in out:
            x = ops.repeat(x, 2, axis=axis)
        x = x[:, :target[1], :target[2], :]
    return x
