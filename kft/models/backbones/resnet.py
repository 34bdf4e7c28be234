"""ResNet backbones on keras-hub's ``ResNetBackbone``, with torchvision-style stage names.

kft names the parts of a ResNet the way the fine-tuning guides do: ``stem`` (conv1 + pool),
``layer1`` ... ``layer4`` (keras-hub's ``stack0`` ... ``stack3``). Freezing, layer-wise learning
rates and SE insertion all speak in these names.
"""

from __future__ import annotations

import re

import keras_hub

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

