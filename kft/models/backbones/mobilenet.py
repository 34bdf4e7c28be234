"""SSDLite feature extractors on keras.applications MobileNetV2 / MobileNetV3 (M3, M6).

SSDLite (Sandler et al., "MobileNetV2", 2018, section 6.3; torchvision ``ssdlite320_*``) taps
the base network twice and adds four extra blocks:

* ``C4`` (output stride 16): the expansion output (1x1 conv + BN + activation) of the first
  block of the stride-32 stage, before its strided depthwise convolution. In Keras 3.15 that is
  the input of that block's zero-padding layer (the activation itself is unnamed in
  MobileNetV3):

  - ``mobilenet_v2``: ``block_13_expand_relu`` (the input of ``block_13_pad``), 576 channels;
  - ``mobilenet_v3_large``: the input of ``expanded_conv_12_depthwise_pad`` (hard-swish after
    ``expanded_conv_12_expand_bn``), 672 channels;
  - ``mobilenet_v3_small``: the input of ``expanded_conv_8_depthwise_pad`` (after
    ``expanded_conv_8_expand_bn``), 288 channels

  (channels at ``alpha=1``.)
* ``C5`` (output stride 32): the base network's last 1x1 convolution + BN + activation
  (``out_relu``, 1280 channels, for MobileNetV2; ``conv_1`` / ``conv_1_bn`` + hard-swish, 960
  (large) or 576 (small), for MobileNetV3).
* ``extra1`` ... ``extra4``: 1x1 conv (half width) -> 3x3 depthwise stride 2 -> 1x1 conv, each
  with BN and ReLU6; widths 512, 256, 256, 128.

At 320 px the six levels are 20, 10, 5, 3, 2, 1 cells wide (``model.level_names`` gives the
order; ``model(images)`` returns a dict).

The input is float32 RGB pixels in 0..255, scaled to [-1, 1] by the first layer (``x / 127.5 -
1``, ``keras.applications.mobilenet_v2.preprocess_input`` and MobileNetV3's own
``include_preprocessing``), which is what the keras.applications ImageNet weights expect.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import keras
from keras import layers

# torchvision's SSDLite BatchNorm (eps 0.001, torch momentum 0.03 = Keras momentum 0.97).
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.97
# torchvision initialises SSDLite's extra layers and heads with N(0, 0.03).
EXTRA_INIT = {"class_name": "RandomNormal", "config": {"mean": 0.0, "stddev": 0.03}}
EXTRA_FILTERS = (512, 256, 256, 128)

# arch -> layer whose *input* is the stride-16 expansion output (C4).
C4_TAPS = {
    "mobilenet_v2": "block_13_pad",
    "mobilenet_v3_large": "expanded_conv_12_depthwise_pad",
    "mobilenet_v3_small": "expanded_conv_8_depthwise_pad",
}


# arch -> {first block index of a stage: its output stride}; blocks are keras.applications'
# ``block_<n>_*`` (MobileNetV2) and ``expanded_conv[_<n>]_*`` (MobileNetV3, no number = 0).
STAGE_STARTS = {
    "mobilenet_v2": {1: 4, 3: 8, 6: 16, 13: 32},
    "mobilenet_v3_large": {1: 4, 3: 8, 6: 16, 12: 32},
    "mobilenet_v3_small": {0: 4, 1: 8, 3: 16, 8: 32},
}
STAGE_NAMES = ("stem", "stride4", "stride8", "stride16", "stride32")
_BLOCK = re.compile(r"^(?:block_(\d+)_|expanded_conv(?:_(\d+))?_)")


def mobilenet_stage_of(arch: str, layer_name: str) -> str | None:
    """The stage (``STAGE_NAMES``, by output stride) of a base-network layer; ``None`` for the
    SSDLite extra blocks (new layers that always train) and weightless wrappers."""
    if layer_name.startswith("extra") or layer_name in ("normalize", arch):
        return None
    if layer_name in ("Conv_1", "Conv_1_bn", "conv_1", "conv_1_bn"):
        return "stride32"
    match = _BLOCK.match(layer_name)
    if match is None:
        return "stem"  # Conv1 / bn_Conv1 (V2), conv / conv_bn (V3)
    if match.group(1) is None and layer_name.startswith("expanded_conv") and arch == \
            "mobilenet_v2":
        return "stem"  # V2's first inverted-residual block (no expansion) runs at stride 2
    index = int(match.group(1) or match.group(2) or 0)
    strides = [stride for start, stride in STAGE_STARTS[arch].items() if start <= index]
    return f"stride{strides[-1]}" if strides else "stem"


def depthwise_separable_conv(x, filters: int, *, kernel_size: int = 3, strides: int = 1,
                             activation: str | None = None, pointwise_norm: bool = True,
                             kernel_initializer="glorot_uniform", name: str = "dwsep"):
    """Depthwise-separable convolution: depthwise + BN + ReLU6 -> 1x1 pointwise + BN.

    Args:
        x: ``[B, H, W, C]`` (a symbolic tensor inside a functional model, or eager).
        filters: pointwise output channels.
        kernel_size, strides: of the depthwise convolution. Stride 1 pads "same"; a larger
            stride pads ``kernel_size // 2`` on every side first (torch's symmetric padding, so
            ``H -> ceil(H / 2)`` with cells centred like torchvision's).
        activation: applied after the pointwise BN (``"relu6"`` in SSDLite's extra blocks, None
            for MobileNet's linear bottleneck or a drop-in replacement of a conv before an
            existing activation).
        pointwise_norm: False gives a pointwise conv with bias and no BN -- SSDLite's box and
            class predictors (torchvision ``_prediction_block``).
        kernel_initializer: for both convolutions (a name or a config dict; a fresh instance is
            made per layer).
        name: prefix of the layer names ``{name}_dw``, ``{name}_dw_bn``, ``{name}_dw_relu``,
            ``{name}_pw``, ``{name}_pw_bn``, ``{name}_pw_act``.

    Returns:
        ``[B, ceil(H / strides), ceil(W / strides), filters]``. Replacing a ``k x k`` conv from
        C to F channels cuts its weights from ``k*k*C*F`` to ``k*k*C + C*F`` (M6).
    """
    if strides > 1:
        x = layers.ZeroPadding2D(kernel_size // 2, name=f"{name}_dw_pad")(x)
    x = layers.DepthwiseConv2D(
        kernel_size, strides=strides, padding="valid" if strides > 1 else "same", use_bias=False,
        depthwise_initializer=keras.initializers.get(kernel_initializer), name=f"{name}_dw")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM,
                                  name=f"{name}_dw_bn")(x)
    x = layers.ReLU(6.0, name=f"{name}_dw_relu")(x)
    x = layers.Conv2D(filters, 1, use_bias=not pointwise_norm,
                      kernel_initializer=keras.initializers.get(kernel_initializer),
                      name=f"{name}_pw")(x)
    if pointwise_norm:
        x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM,
                                      name=f"{name}_pw_bn")(x)
    if activation:
        x = layers.Activation(activation, name=f"{name}_pw_act")(x)
    return x


def ssdlite_extra_block(x, filters: int, *, name: str):
    """SSDLite extra layer: 1x1 conv to ``filters // 2`` + BN + ReLU6, then a stride-2
    depthwise-separable conv to ``filters`` with BN + ReLU6. ``[B, H, W, C] -> [B, ceil(H/2),
    ceil(W/2), filters]``."""
    x = layers.Conv2D(filters // 2, 1, use_bias=False,
                      kernel_initializer=keras.initializers.get(EXTRA_INIT),
                      name=f"{name}_reduce")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM,
                                  name=f"{name}_reduce_bn")(x)
    x = layers.ReLU(6.0, name=f"{name}_reduce_relu")(x)
    return depthwise_separable_conv(x, filters, strides=2, activation="relu6",
                                    kernel_initializer=EXTRA_INIT, name=name)


def _base_network(arch: str, height: int, width: int, alpha: float, weights):
    apps = keras.applications
    common = {"input_shape": (height, width, 3), "alpha": alpha, "include_top": False,
              "weights": weights, "name": arch}
    if arch == "mobilenet_v2":
        return apps.MobileNetV2(**common)
    builder = apps.MobileNetV3Large if arch == "mobilenet_v3_large" else apps.MobileNetV3Small
    with warnings.catch_warnings():
        # A Keras 3 file of a MobileNetV3 saved with its default include_preprocessing=True has
        # one more weightless layer, which shifts the numbering of the weightless hard-sigmoid
        # operations and makes Keras warn once per operation; every variable still loads (the
        # tests compare them all).
        warnings.filterwarnings("ignore", message="Skipping nested container")
        return builder(minimalistic=False, include_preprocessing=False, **common)


@keras.saving.register_keras_serializable(package="kft")
class SSDLiteMobileNet(keras.Model):
    """SSDLite backbone: images ``[B, H, W, 3]`` (0..255 RGB) -> dict of six feature levels.

    Args:
        arch: ``"mobilenet_v2"``, ``"mobilenet_v3_large"`` or ``"mobilenet_v3_small"``.
        image_size: input side or ``(height, width)``; at least 32.
        alpha: keras.applications width multiplier.
        weights: None (random), ``"imagenet"`` (keras.applications download; needs network or
            the ``~/.keras`` cache), or the path of a keras.applications-style weights file of
            the base network built with ``include_top=False`` and the same ``alpha`` (legacy
            ``.h5`` or Keras 3 ``.weights.h5``). Only used to initialise: ``get_config`` records
            None, so a saved model reloads from its own weights.
        extra_filters: output widths of the extra blocks.

    The base network is the nested sub-model named ``arch`` (``model.get_layer(arch)``), whose
    layers keep their keras.applications names; freeze it as a whole or by layer name, or by
    stage (``stage_names()``: ``stem``, ``stride4`` ... ``stride32`` by output stride, see
    :func:`mobilenet_stage_of`; the extra blocks are new layers and belong to no stage).
    """

    def __init__(self, arch: str = "mobilenet_v2", image_size=320, alpha: float = 1.0,
                 weights=None, extra_filters=EXTRA_FILTERS, **kwargs):
        from kft.models.weights import WeightsError

        height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
        if arch not in C4_TAPS:
            raise ValueError(f"arch={arch!r} is not one of {sorted(C4_TAPS)}")
        if isinstance(weights, Path):
            weights = str(weights)
        try:
            base = _base_network(arch, height, width, alpha, weights)
        except (ValueError, OSError) as e:
            if weights in (None, "imagenet"):
                raise
            raise WeightsError(f"{weights}: not a keras.applications {arch} weights file "
                               f"(include_top=False, alpha={alpha}): {e}") from e
        c4 = base.get_layer(C4_TAPS[arch]).input
        features = keras.Model(base.inputs, [c4, base.outputs[0]], name=arch)

        images = keras.Input((height, width, 3), name="images")
        x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="normalize")(images)
        c4, c5 = features(x)
        levels = {"C4": c4, "C5": c5}
        x = c5
        for i, filters in enumerate(extra_filters):
            x = ssdlite_extra_block(x, filters, name=f"extra{i + 1}")
            levels[f"extra{i + 1}"] = x
        super().__init__(inputs=images, outputs=levels, **kwargs)
        self.arch = arch
        self.image_size = image_size if isinstance(image_size, int) else (height, width)
        self.alpha = alpha
        self.extra_filters = tuple(extra_filters)
        self.level_names = tuple(levels)

    def stage_names(self) -> list[str]:
        """Backbone stages bottom-up, as ``train.trainable_stages`` / ``layer_lrs`` name them."""
        return list(STAGE_NAMES)

    def stage_of(self, layer_name: str) -> str | None:
        return mobilenet_stage_of(self.arch, layer_name)

    def get_config(self):
        size = self.image_size if isinstance(self.image_size, int) else list(self.image_size)
        return {"arch": self.arch, "image_size": size, "alpha": self.alpha,
                "extra_filters": list(self.extra_filters), "name": self.name,
                "trainable": self.trainable}


def ssdlite_mobilenet_v2(image_size=320, *, alpha: float = 1.0, weights=None,
                         name: str = "ssdlite_mobilenet_v2") -> SSDLiteMobileNet:
    """SSDLite MobileNetV2 backbone; levels ``C4`` (576 ch at alpha 1), ``C5`` (1280),
    ``extra1..4`` (512, 256, 256, 128): 20, 10, 5, 3, 2, 1 cells at 320 px."""
    return SSDLiteMobileNet("mobilenet_v2", image_size, alpha, weights, name=name)


def ssdlite_mobilenet_v3(image_size=320, variant: str = "large", *, alpha: float = 1.0,
                         weights=None, name: str | None = None) -> SSDLiteMobileNet:
    """SSDLite MobileNetV3 backbone (``variant`` ``"large"`` or ``"small"``); levels ``C4``
    (672 / 288 ch), ``C5`` (960 / 576), ``extra1..4``: 20, 10, 5, 3, 2, 1 cells at 320 px."""
    if variant not in ("large", "small"):
        raise ValueError(f"variant={variant!r} must be 'large' or 'small'")
    arch = f"mobilenet_v3_{variant}"
    return SSDLiteMobileNet(arch, image_size, alpha, weights, name=name or f"ssdlite_{arch}")
