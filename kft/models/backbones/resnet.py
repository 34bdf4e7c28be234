"""ResNet backbones on keras-hub's ``ResNetBackbone``, with torchvision-style stage names.

kft names the parts of a ResNet the way the fine-tuning guides do: ``stem`` (conv1 + pool),
``layer1`` ... ``layer4`` (keras-hub's ``stack0`` ... ``stack3``). Freezing, layer-wise learning
rates and SE insertion all speak in these names.

:func:`resnet_fpn_body` is the body of torchvision's ``fasterrcnn_resnet50_fpn`` (v1, frozen
BatchNorm) and ``fasterrcnn_resnet50_fpn_v2`` (trainable BatchNorm): images -> the four stage
outputs ``P2`` ... ``P5`` an FPN reads. keras-hub's ResNet computes what torchvision's does:
it pads explicitly (``ZeroPadding2D`` + ``valid`` convolution, so a stride-2 conv sees torch's
symmetric padding), puts the stride on the bottleneck's 3x3 convolution (ResNet v1.5) and uses
BatchNorm epsilon 1e-5 and bias-free convolutions. The max pool's zero padding equals torch's
``-inf`` padding because it follows a ReLU.
"""

from __future__ import annotations

import re

import keras
import keras_hub
import numpy as np
from keras import layers, ops

from kft.models.backbones.vgg import ImageNormalization

# Depth -> (block type, blocks per stage). Filters are the torchvision widths; keras-hub's
# bottleneck block expands them by 4 internally.
RESNET_ARCHS = {
    "resnet18": ("basic_block", [2, 2, 2, 2]),
    "resnet34": ("basic_block", [3, 4, 6, 3]),
    "resnet50": ("bottleneck_block", [3, 4, 6, 3]),
    "resnet101": ("bottleneck_block", [3, 4, 23, 3]),
    "resnet152": ("bottleneck_block", [3, 8, 36, 3]),
    # Three stages of one basic block each: the tests' and quick starts' CPU-sized ResNet.
    "resnet_tiny": ("basic_block", [1, 1, 1]),
}

# keras-hub preset for each depth (downloaded from Kaggle when online).
IMAGENET_PRESETS = {
    "resnet18": "resnet_18_imagenet",
    "resnet34": "resnet_vd_34_imagenet",
    "resnet50": "resnet_50_imagenet",
    "resnet101": "resnet_101_imagenet",
    "resnet152": "resnet_152_imagenet",
}

_STACK = re.compile(r"(?:^|/)stack(\d+)_")


def build_resnet_backbone(arch: str, image_size: int | tuple[int, int], preset: str = ""):
    """Builds a keras-hub ``ResNetBackbone``.

    Args:
        arch: one of ``RESNET_ARCHS``.
        image_size: input side (square) or ``(height, width)``.
        preset: keras-hub preset name (``"resnet_50_imagenet"``; needs network the first time) or
            a local preset folder written by ``Backbone.save_to_preset``. Empty: random init.

    Returns:
        A ``keras_hub.models.ResNetBackbone`` taking float images ``[B, H, W, 3]`` (normalised by
        the caller) and returning the last stage's feature map.
    """
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    if preset:
        try:
            return keras_hub.models.Backbone.from_preset(preset, image_shape=(h, w, 3))
        except Exception as e:  # noqa: BLE001 - network, missing folder or bad files
            from kft.models.weights import WeightsError

            raise WeightsError(
                f"model.preset={preset!r}: cannot load the keras-hub preset ({e}). A preset name "
                "is downloaded once and needs network; offline, pass a local preset folder "
                "(Backbone.save_to_preset) or set model.preset='' and use model.load_from."
            ) from e
    if arch not in RESNET_ARCHS:
        raise ValueError(f"model.arch={arch!r} is not one of {sorted(RESNET_ARCHS)}")
    block_type, blocks = RESNET_ARCHS[arch]
    if arch == "resnet_tiny":
        filters, strides = [64, 64, 64], [1, 2, 2]
    else:
        filters, strides = [64, 128, 256, 512], [1, 2, 2, 2]
    return keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[7],
        stackwise_num_filters=filters,
        stackwise_num_blocks=blocks,
        stackwise_num_strides=strides,
        block_type=block_type,
        use_pre_activation=False,
        image_shape=(h, w, 3),
        name="backbone",
    )


def num_stages(backbone) -> int:
    return len(backbone.stackwise_num_filters)


def stage_names(backbone) -> list[str]:
    """``["stem", "layer1", ..., "layerN"]`` bottom-up."""
    return ["stem"] + [f"layer{i + 1}" for i in range(num_stages(backbone))]


def stage_of(name: str, last_stage: str = "layer4") -> str:
    """The stage a backbone layer or variable belongs to, from its name or path.

    ``stack2_block0_1_conv/kernel`` -> ``layer3``; ``conv1_bn/gamma`` -> ``stem``; keras-hub's
    pre-activation ``post_bn`` belongs to the last stage.
    """
    match = _STACK.search(name)
    if match:
        return f"layer{int(match.group(1)) + 1}"
    if re.search(r"(?:^|/)post_(bn|relu)", name):
        return last_stage
    return "stem"


def stage_output(backbone, stage: str):
    """The symbolic output tensor of ``stage`` (``layer1`` ... ``layerN``)."""
    index = int(stage.removeprefix("layer")) + 1
    key = f"P{index}"
    if key not in backbone.pyramid_outputs:
        raise ValueError(f"unknown stage {stage!r}; stages are {stage_names(backbone)[1:]}")
    return backbone.pyramid_outputs[key]



# --------------------------------------------------------------------------------------------
# Faster R-CNN body


BN_EPSILON = 1e-5
"""torchvision's ``FrozenBatchNorm2d`` / ``BatchNorm2d`` epsilon (keras-hub's ResNet uses it too)."""


@keras.saving.register_keras_serializable(package="kft")
class FrozenBatchNormalization(layers.Layer):
    """torchvision's ``FrozenBatchNorm2d``: ``x * scale + shift`` over the last axis with
    ``scale = gamma / sqrt(moving_variance + epsilon)``, ``shift = beta - moving_mean * scale``;
    ``[B, ..., C] -> [B, ..., C]``.

    The four ``[C]`` variables carry BatchNormalization's names (checkpoints transfer between
    the two) and are created non-trainable, so they never change: not when ``layer.trainable``
    is set to True (Keras only flips variables created trainable), not when the layer is called
    with ``training=True`` (there is no training mode). ``scale`` and ``shift`` are computed in
    float32 and cast to the input's dtype (mixed precision).
    """

    def __init__(self, epsilon: float = BN_EPSILON, **kwargs):
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        shape = (input_shape[-1],)
        for name, init in (("gamma", "ones"), ("beta", "zeros"), ("moving_mean", "zeros"),
                           ("moving_variance", "ones")):
            setattr(self, name, self.add_weight(name=name, shape=shape, initializer=init,
                                                dtype="float32", trainable=False))

    def call(self, x, training=None, mask=None):  # noqa: ARG002 (no training mode; mask as BN)
        scale = self.gamma * ops.rsqrt(self.moving_variance + self.epsilon)
        shift = self.beta - self.moving_mean * scale
        return x * ops.cast(scale, x.dtype) + ops.cast(shift, x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


def frozen_copy(bn) -> FrozenBatchNormalization:
    """A built :class:`FrozenBatchNormalization` with ``bn``'s name, epsilon and values."""
    if bn.axis not in (-1, len(bn.input.shape) - 1):
        raise ValueError(f"{bn.name}: only channels-last BatchNormalization can be frozen")
    frozen = FrozenBatchNormalization(bn.epsilon, name=bn.name, dtype=bn.dtype_policy)
    frozen.build(tuple(bn.input.shape))
    for name in ("gamma", "beta", "moving_mean", "moving_variance"):
        source = getattr(bn, name, None)
        if source is not None:         # center=False / scale=False keep the defaults
            getattr(frozen, name).assign(ops.cast(source, "float32"))
    return frozen


def pyramid_model(resnet, frozen_bn: bool, name: str = "resnet") -> keras.Model:
    """``resnet`` (a keras-hub ``ResNetBackbone``) as a functional model from its input to its
    ``pyramid_outputs`` dict, every BatchNormalization replaced by a
    :func:`frozen_copy` when ``frozen_bn``. The other layers are shared, not copied."""
    pyramid = keras.Model(resnet.input, dict(resnet.pyramid_outputs), name=name)
    if not frozen_bn:
        return pyramid

    def swap(layer):
        return frozen_copy(layer) if isinstance(layer, layers.BatchNormalization) else layer

    return keras.models.clone_model(pyramid, clone_function=swap)


def _hw(image_size) -> tuple[int, int]:
    if isinstance(image_size, (int, np.integer)):
        return int(image_size), int(image_size)
    h, w = image_size
    return int(h), int(w)


@keras.saving.register_keras_serializable(package="kft")
class ResNetFPNBody(keras.Model):
    """The ResNet body of torchvision's Faster R-CNN: images ``[B, H, W, 3]`` float32 RGB in
    0..255 -> ``{"P2": C2, "P3": C3, "P4": C4, "P5": C5}``, channels-last, strides 4, 8, 16, 32
    (keras-hub's pyramid names; ResNet-50: 256, 512, 1024, 2048 channels, ``ceil``-like
    sizes of torch's conv arithmetic, e.g. 88 x 136 -> 22 x 34, 11 x 17, 6 x 9, 3 x 5).

    Args:
        arch: a key of :data:`RESNET_ARCHS` (``resnet_tiny``: three stages, ``P2`` ... ``P4``).
        image_size: ``(H, W)`` or a side.
        preset: keras-hub ResNet preset name or local preset folder (ImageNet weights); only
            used to initialise: ``get_config`` records the architecture (``resnet``), so a
            saved model reloads from its own weights without network.
        frozen_bn: every BatchNorm a :class:`FrozenBatchNormalization` (torchvision's
            ``fasterrcnn_resnet50_fpn``); False: ordinary trainable BatchNormalization
            (``fasterrcnn_resnet50_fpn_v2``).
        normalization: a key of ``kft.models.backbones.vgg.NORMALIZATIONS``; ``"torch"`` is
            GeneralizedRCNNTransform's ImageNet mean / std on 0..1 images.
        resnet: a keras-hub ``ResNetBackbone`` config (what ``get_config`` stores); overrides
            ``arch`` and ``preset``.

    Layers keep keras-hub's names (``conv1_conv``, ``stack2_block0_1_bn``) inside the nested
    model ``resnet``; ``stage_names()`` / ``stage_of(layer_name)`` give the stages
    ``stem``, ``layer1`` ... for ``train.trainable_stages`` and layer-wise learning rates.
    """

    def __init__(self, arch: str = "resnet50", image_size=(800, 800), preset: str = "",
                 frozen_bn: bool = True, normalization: str = "torch", resnet=None, **kwargs):
        height, width = _hw(image_size)
        if resnet is not None:
            hub = keras_hub.models.ResNetBackbone.from_config(
                {**resnet, "image_shape": (height, width, 3)})
        else:
            hub = build_resnet_backbone(arch, (height, width), preset)
        if not isinstance(hub, keras_hub.models.ResNetBackbone) or hub.use_pre_activation:
            raise ValueError(f"preset={preset!r} is not a ResNet v1 (keras-hub ResNetBackbone "
                             "without pre-activation), which torchvision's detectors use")
        resnet_config = hub.get_config()
        features = pyramid_model(hub, bool(frozen_bn))
        images = keras.Input((height, width, 3), name="images")
        x = ImageNormalization(normalization, name="normalize")(images)
        levels = features(x)
        super().__init__(inputs=images, outputs=levels, **kwargs)
        self.arch = arch
        self.image_size = (height, width)
        self.frozen_bn = bool(frozen_bn)
        self.normalization = normalization
        self.resnet_config = resnet_config
        self.level_names = tuple(levels)
        strides, stride = [], 4                      # conv1 (2) x max pool (2)
        for s in hub.stackwise_num_strides:
            stride *= int(s)
            strides.append(stride)
        self.strides = tuple(strides)
        self._stages = stage_names(hub)

    def stage_names(self) -> list[str]:
        """``["stem", "layer1", ..., "layerN"]`` bottom-up, as ``train.trainable_stages``
        names them."""
        return list(self._stages)

    def stage_of(self, layer_name: str) -> str:
        """``stack2_block0_1_conv`` -> ``layer3``; the stem layers (``conv1_*``) -> ``stem``."""
        return stage_of(layer_name, self._stages[-1])

    def get_config(self):
        resnet = {k: v for k, v in self.resnet_config.items() if k != "image_shape"}
        return {"arch": self.arch, "image_size": list(self.image_size),
                "frozen_bn": self.frozen_bn, "normalization": self.normalization,
                "resnet": resnet, "name": self.name, "trainable": self.trainable}


def resnet_fpn_body(arch: str = "resnet50", image_size=(800, 800), *, preset: str = "",
                    frozen_bn: bool = True, normalization: str = "torch",
                    name: str = "backbone") -> ResNetFPNBody:
    """The backbone body of torchvision's ``fasterrcnn_resnet50_fpn`` (``frozen_bn=True``) or
    ``fasterrcnn_resnet50_fpn_v2`` (``frozen_bn=False``); see :class:`ResNetFPNBody`.

    ``model(images [B, H, W, 3] in 0..255)`` -> ``{"P2" ... "P5": [B, h_l, w_l, C_l]}`` at
    ``model.strides`` (4, 8, 16, 32), in the order of ``model.level_names``; feed it to
    ``FPN(**RESNET_FPN)`` (v2: ``norm="batch"``). Weights: ``preset`` (keras-hub ImageNet),
    or a torchvision state dict through :func:`kft.models.torchvision_map.map_resnet_body`.
    """
    return ResNetFPNBody(arch, image_size, preset, frozen_bn, normalization, name=name)
