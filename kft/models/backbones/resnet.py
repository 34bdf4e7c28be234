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

# torchvision's ResNeXt (Xie et al. 2017): arch -> (blocks per stage, groups, width per group).
# keras-hub's ResNet has no grouped convolution, so kft builds these itself
# (:func:`build_resnext`), with keras-hub's layer names: everything that reads a ResNet by
# its names (stage_of, the torchvision key mapping, freezing) works on them unchanged.
RESNEXT_ARCHS = {
    "resnext50_32x4d": ((3, 4, 6, 3), 32, 4),
    "resnext101_32x8d": ((3, 4, 23, 3), 32, 8),
    "resnext101_64x4d": ((3, 4, 23, 3), 64, 4),
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


def pyramid_model(resnet, frozen_bn: bool, name: str = "resnet",
                  separable_stages=()) -> keras.Model:
    """``resnet`` (a keras-hub ``ResNetBackbone`` or :func:`build_resnext`) as a functional
    model from its input to its ``pyramid_outputs`` dict, every BatchNormalization replaced by
    a :func:`frozen_copy` when ``frozen_bn`` and every k x k convolution (k > 1) of the stages
    in ``separable_stages`` by a :func:`separable_copy`. The other layers are shared, not
    copied."""
    pyramid = keras.Model(resnet.input, dict(resnet.pyramid_outputs), name=name)
    separable_stages = tuple(separable_stages)
    if not frozen_bn and not separable_stages:
        return pyramid
    last = f"layer{len(resnet.stackwise_num_filters)}"

    def swap(layer):
        if frozen_bn and isinstance(layer, layers.BatchNormalization):
            return frozen_copy(layer)
        if (isinstance(layer, layers.Conv2D) and max(layer.kernel_size) > 1
                and _STACK.search(layer.name) and stage_of(layer.name, last) in
                separable_stages):
            return separable_copy(layer)
        return layer

    return keras.models.clone_model(pyramid, clone_function=swap)


def build_resnext(arch: str, image_size, name: str = "resnext") -> keras.Model:
    """torchvision's ``resnext50_32x4d`` / ``resnext101_32x8d`` / ``resnext101_64x4d`` as a
    functional model (:data:`RESNEXT_ARCHS`), with the attributes of a keras-hub
    ``ResNetBackbone`` that kft reads (``pyramid_outputs`` P2..P5, ``stackwise_num_filters``,
    ``stackwise_num_strides``, ``use_pre_activation``).

    Bottleneck ``i`` of a stage of ``planes`` (64, 128, 256, 512): 1x1 to ``width = planes *
    width_per_group / 64 * groups``, 3x3 grouped convolution (``groups``, the stride: ResNet
    v1.5), 1x1 to ``4 * planes``, shortcut 1x1 conv + BN on the first block. Layer names are
    keras-hub's (``stack2_block0_2_conv`` is ``layer3.0.conv2``), padding explicit as
    keras-hub's (torch's symmetric padding under a stride of 2), BatchNorm epsilon 1e-5.
    ``[B, H, W, 3]`` (normalised by the caller) -> ``[B, ceil(H / 32), ceil(W / 32), 2048]``.
    """
    if arch not in RESNEXT_ARCHS:
        raise ValueError(f"arch={arch!r} is not one of {sorted(RESNEXT_ARCHS)}")
    blocks, groups, width_per_group = RESNEXT_ARCHS[arch]
    height, width = _hw(image_size)

    def bn(x, layer_name):
        return layers.BatchNormalization(epsilon=BN_EPSILON, momentum=0.9,
                                         name=layer_name)(x)

    images = keras.Input((height, width, 3), name="images")
    x = layers.ZeroPadding2D(3, name="conv1_pad")(images)
    x = layers.Conv2D(64, 7, strides=2, use_bias=False, name="conv1_conv")(x)
    x = layers.Activation("relu", name="conv1_relu")(bn(x, "conv1_bn"))
    x = layers.ZeroPadding2D(1, name="pool1_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    filters, strides, pyramid = [64, 128, 256, 512], [1, 2, 2, 2], {}
    for stage, (count, planes, stage_stride) in enumerate(zip(blocks, filters, strides,
                                                              strict=True)):
        inner = planes * width_per_group // 64 * groups
        for block in range(count):
            prefix = f"stack{stage}_block{block}"
            stride = stage_stride if block == 0 else 1
            shortcut = x
            if block == 0:
                shortcut = layers.Conv2D(4 * planes, 1, strides=stride, use_bias=False,
                                         name=f"{prefix}_0_conv")(x)
                shortcut = bn(shortcut, f"{prefix}_0_bn")
            y = layers.Conv2D(inner, 1, use_bias=False, name=f"{prefix}_1_conv")(x)
            y = layers.Activation("relu", name=f"{prefix}_1_relu")(bn(y, f"{prefix}_1_bn"))
            if stride > 1:
                y = layers.ZeroPadding2D(1, name=f"{prefix}_2_pad")(y)
            y = layers.Conv2D(inner, 3, strides=stride, groups=groups, use_bias=False,
                              padding="valid" if stride > 1 else "same",
                              name=f"{prefix}_2_conv")(y)
            y = layers.Activation("relu", name=f"{prefix}_2_relu")(bn(y, f"{prefix}_2_bn"))
            y = layers.Conv2D(4 * planes, 1, use_bias=False, name=f"{prefix}_3_conv")(y)
            y = layers.Add(name=f"{prefix}_add")([shortcut, bn(y, f"{prefix}_3_bn")])
            x = layers.Activation("relu", name=f"{prefix}_out")(y)
        pyramid[f"P{stage + 2}"] = x
    model = keras.Model(images, x, name=name)
    model.pyramid_outputs = pyramid
    model.stackwise_num_filters = filters
    model.stackwise_num_strides = strides
    model.use_pre_activation = False
    return model


# --- backbone surgery (M6) --------------------------------------------------------------------

SEPARABLE_SUFFIX = "_separable"
"""Name suffix of a 3x3 convolution replaced by a depthwise-separable one."""


def separable_copy(conv) -> layers.SeparableConv2D:
    """A depthwise 3x3 + pointwise 1x1 convolution in place of ``conv`` (a ``Conv2D`` with a
    k x k kernel, k > 1): same filters, kernel size, stride, padding and bias; new weights,
    ``k * k * C_in + C_in * C_out`` of them instead of ``k * k * C_in / groups * C_out``."""
    return layers.SeparableConv2D(conv.filters, conv.kernel_size, strides=conv.strides,
                                  padding=conv.padding, use_bias=conv.use_bias,
                                  dtype=conv.dtype_policy, name=conv.name + SEPARABLE_SUFFIX)


def _with_squeeze_excite(features, se_stages, reduction: int) -> keras.Model:
    """``features`` (images -> ``{"P2": ..., "P5": ...}``, a ResNet's stage outputs) with a
    :class:`~kft.models.heads.classification.SqueezeExcite` after each stage of
    ``se_stages`` (``"layer3"`` is ``P4``, conv4_x): the next stage reads the recalibrated
    map and the pyramid level is the SE's output. The layers are shared with ``features``."""
    from kft.models.heads.classification import SqueezeExcite

    images = keras.Input(features.input.shape[1:], name="images")
    outputs, start, x = {}, features.input, images
    for index, level in enumerate(features.output):
        end = features.output[level]
        x = keras.Model(start, end, name=f"resnet_to_{level}")(x)
        stage = f"layer{index + 1}"
        if stage in se_stages:
            x = SqueezeExcite(reduction, name=f"se_{stage}")(x)
        outputs[level], start = x, end
    return keras.Model(images, outputs, name=features.name)


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
        arch: a key of :data:`RESNET_ARCHS` (``resnet_tiny``: three stages, ``P2`` ... ``P4``)
            or of :data:`RESNEXT_ARCHS` (kft-built, grouped convolutions).
        image_size: ``(H, W)`` or a side.
        preset: keras-hub ResNet preset name or local preset folder (ImageNet weights); only
            used to initialise: ``get_config`` records the architecture (``resnet``), so a
            saved model reloads from its own weights without network. Not for ResNeXt
            (keras-hub has none): use ``weights``.
        frozen_bn: every BatchNorm a :class:`FrozenBatchNormalization` (torchvision's
            ``fasterrcnn_resnet50_fpn``); False: ordinary trainable BatchNormalization
            (``fasterrcnn_resnet50_fpn_v2``).
        normalization: a key of ``kft.models.backbones.vgg.NORMALIZATIONS``; ``"torch"`` is
            GeneralizedRCNNTransform's ImageNet mean / std on 0..1 images.
        resnet: a keras-hub ``ResNetBackbone`` config (what ``get_config`` stores); overrides
            ``arch`` and ``preset``.
        weights: a torchvision ImageNet state dict of the same architecture (``.npz``, or
            ``.pth`` where torch is installed; e.g. ``resnext101_32x8d``'s), or a torchvision
            Faster R-CNN checkpoint (``backbone.body.*`` keys), loaded before any surgery;
            ``fc.*`` is ignored. Only used to initialise.
        se_stages: M6 backbone surgery: a squeeze-excitation block (reduction
            ``se_reduction``, 16) after each of these stages (the guide: ``("layer3",)``,
            after conv4_x); it starts as the identity, so pretrained features are kept.
        separable_stages: M6: every 3x3 convolution of these stages replaced by a
            depthwise-separable one (new weights, trained from scratch).

    Layers keep keras-hub's names (``conv1_conv``, ``stack2_block0_1_bn``) inside the nested
    model ``resnet``; ``stage_names()`` / ``stage_of(layer_name)`` give the stages
    ``stem``, ``layer1`` ... for ``train.trainable_stages`` and layer-wise learning rates. The
    layers surgery adds (SE blocks, separable convolutions) are of no stage: they always
    train, also when their stage is frozen. ``surgery`` reports the parameter counts
    (``{"params_before", "params_after", "change", "se_stages", "separable_stages"}``).
    """

    def __init__(self, arch: str = "resnet50", image_size=(800, 800), preset: str = "",
                 frozen_bn: bool = True, normalization: str = "torch", resnet=None,
                 weights=None, se_stages=(), se_reduction: int = 16, separable_stages=(),
                 **kwargs):
        height, width = _hw(image_size)
        if resnet is not None:
            hub = keras_hub.models.ResNetBackbone.from_config(
                {**resnet, "image_shape": (height, width, 3)})
        elif arch in RESNEXT_ARCHS:
            if preset:
                raise ValueError(f"preset={preset!r}: keras-hub has no ResNeXt; load ImageNet "
                                 "weights from a torchvision state dict (weights=...)")
            hub = build_resnext(arch, (height, width))
        else:
            hub = build_resnet_backbone(arch, (height, width), preset)
        if getattr(hub, "use_pre_activation", True) or not hasattr(hub, "pyramid_outputs"):
            raise ValueError(f"preset={preset!r} is not a ResNet v1 (keras-hub ResNetBackbone "
                             "without pre-activation), which torchvision's detectors use")
        stages = stage_names(hub)
        se_stages, separable_stages = tuple(se_stages), tuple(separable_stages)
        unknown = sorted(set(se_stages + separable_stages) - set(stages[1:]))
        if unknown:
            raise ValueError(f"stages {unknown} are not stages of {arch}: choose from "
                             f"{stages[1:]}")
        if weights is not None:
            _load_resnet_weights(hub, weights)
        resnet_config = None if arch in RESNEXT_ARCHS and resnet is None else hub.get_config()
        params_before = int(hub.count_params())
        features = pyramid_model(hub, bool(frozen_bn), separable_stages=separable_stages)
        if se_stages:
            features = _with_squeeze_excite(features, se_stages, int(se_reduction))
        images = keras.Input((height, width, 3), name="images")
        x = ImageNormalization(normalization, name="normalize")(images)
        levels = features(x)
        super().__init__(inputs=images, outputs=levels, **kwargs)
        self.arch = arch
        self.image_size = (height, width)
        self.frozen_bn = bool(frozen_bn)
        self.normalization = normalization
        self.resnet_config = resnet_config
        self.se_stages = se_stages
        self.se_reduction = int(se_reduction)
        self.separable_stages = separable_stages
        self.level_names = tuple(levels)
        strides, stride = [], 4                      # conv1 (2) x max pool (2)
        for s in hub.stackwise_num_strides:
            stride *= int(s)
            strides.append(stride)
        self.strides = tuple(strides)
        self._stages = stages
        params_after = int(features.count_params())
        self.surgery = {"params_before": params_before, "params_after": params_after,
                        "change": round(params_after / params_before - 1.0, 4),
                        "se_stages": list(se_stages),
                        "separable_stages": list(separable_stages)}

    def stage_names(self) -> list[str]:
        """``["stem", "layer1", ..., "layerN"]`` bottom-up, as ``train.trainable_stages``
        names them."""
        return list(self._stages)

    def stage_of(self, layer_name: str) -> str | None:
        """``stack2_block0_1_conv`` -> ``layer3``; the stem layers (``conv1_*``) -> ``stem``;
        a layer surgery added (``se_layer3`` and its dense layers, ``*_separable``) -> None."""
        if layer_name.endswith(SEPARABLE_SUFFIX) or not re.match(r"(conv1|pool1|stack\d+)_",
                                                                layer_name):
            return None
        return stage_of(layer_name, self._stages[-1])

    def get_config(self):
        resnet = (None if self.resnet_config is None else
                  {k: v for k, v in self.resnet_config.items() if k != "image_shape"})
        return {"arch": self.arch, "image_size": list(self.image_size),
                "frozen_bn": self.frozen_bn, "normalization": self.normalization,
                "resnet": resnet, "se_stages": list(self.se_stages),
                "se_reduction": self.se_reduction,
                "separable_stages": list(self.separable_stages), "name": self.name,
                "trainable": self.trainable}


def _load_resnet_weights(hub, path) -> None:
    """A torchvision ResNet / ResNeXt state dict (ImageNet classifier keys, or a Faster R-CNN
    checkpoint's ``backbone.body.*``) into ``hub`` (keras-hub names)."""
    from kft.models.convert_torchvision import read_state_dict
    from kft.models.torchvision_map import map_resnet_body
    from kft.models.weights import WeightsError, transfer

    state_dict = read_state_dict(path)
    prefix = "backbone.body." if any(k.startswith("backbone.body.") for k in state_dict) else ""
    try:
        values, _ = map_resnet_body(state_dict, hub, prefix=prefix)
    except WeightsError as e:
        raise WeightsError(f"{path}: {e}") from None
    transfer(hub, values)


def resnet_fpn_body(arch: str = "resnet50", image_size=(800, 800), *, preset: str = "",
                    frozen_bn: bool = True, normalization: str = "torch",
                    weights=None, se_stages=(), se_reduction: int = 16, separable_stages=(),
                    name: str = "backbone") -> ResNetFPNBody:
    """The backbone body of torchvision's ``fasterrcnn_resnet50_fpn`` (``frozen_bn=True``) or
    ``fasterrcnn_resnet50_fpn_v2`` (``frozen_bn=False``); see :class:`ResNetFPNBody`.

    ``model(images [B, H, W, 3] in 0..255)`` -> ``{"P2" ... "P5": [B, h_l, w_l, C_l]}`` at
    ``model.strides`` (4, 8, 16, 32), in the order of ``model.level_names``; feed it to
    ``FPN(**RESNET_FPN)`` (v2: ``norm="batch"``). Weights: ``preset`` (keras-hub ImageNet),
    or a torchvision state dict through :func:`kft.models.torchvision_map.map_resnet_body`.
    """
    return ResNetFPNBody(arch, image_size, preset, frozen_bn, normalization, weights=weights,
                         se_stages=se_stages, se_reduction=se_reduction,
                         separable_stages=separable_stages, name=name)
