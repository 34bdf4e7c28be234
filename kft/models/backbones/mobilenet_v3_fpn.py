"""MobileNetV3-Large body of torchvision's ``fasterrcnn_mobilenet_v3_large_fpn``, output-equal.

torchvision's detector runs ``mobilenet_v3_large(...).features`` (17 modules, ``features[0]``
the stem conv, ``features[1..15]`` the inverted-residual blocks, ``features[16]`` the last 1x1
conv) and feeds its FPN two of them (``_mobilenet_extractor(backbone, fpn=True, ...)``):
``stage_indices = [0, 2, 4, 7, 13, 16]`` (0, every stride-2 block, the last module),
``returned_layers = [num_stages - 2, num_stages - 1] = [4, 5]``, i.e. modules 13 and 16:

=======  ==================================================  ========  ======  =========
level    torchvision                                         channels  stride  key
=======  ==================================================  ========  ======  =========
``C5a``  ``features[13]``: the first (strided) block of the    160       32    ``"0"``
         stride-32 stage, *before* blocks 14 and 15
``C5``   ``features[16]``: last 1x1 conv + BN + hardswish      960       32    ``"1"``
=======  ==================================================  ========  ======  =========

(channels at ``width_multiplier=1``). Both are stride 32, ``ceil`` of the size at every
stride-2 step: 96 x 160 -> 3 x 5, 81 x 113 -> 3 x 4. Feed them to
``FPN(levels=("C5a", "C5"), **MOBILENET_V3_FPN)``.

Where it differs from keras.applications' MobileNetV3 (kft's SSDLite):

* every conv pads ``k // 2`` on all sides (torch), so a stride-2 conv is ``ZeroPadding2D`` +
  a ``"valid"`` conv; Keras applications pads stride-2 depthwise convs asymmetrically, which
  shifts every cell;
* SE squeeze width ``_make_divisible(expanded // 4, 8)``, fc layers are 1x1 convs with bias,
  ReLU then hardsigmoid ``relu6(x + 3) / 6`` (Keras 3's ``hard_sigmoid``); hardswish is
  ``x * hard_sigmoid(x)`` (``hard_silu``);
* BatchNorm eps is **1e-5**: the detector passes ``norm_layer=FrozenBatchNorm2d`` (pretrained
  weights) or ``nn.BatchNorm2d`` (none) to ``mobilenet_v3_large``, which replaces MobileNetV3's
  own ``partial(BatchNorm2d, eps=0.001)``; both defaults are 1e-5;
* ``dilated=False`` (``_fasterrcnn_mobilenet_v3_large_fpn`` does not pass it): no dilation.

``frozen_bn=True`` (default) uses :class:`kft.models.backbones.resnet.FrozenBatchNormalization`
(torchvision's ``FrozenBatchNorm2d``: non-trainable statistics and affine parameters, no
training mode), so a stage made trainable trains its convolutions and SE layers only, as in
torchvision.

Layer names: ``stem_conv`` (``features[0]``), ``block{i}_expand``, ``block{i}_dw``,
``block{i}_se_fc1`` / ``_se_fc2``, ``block{i}_project`` (``features[i]``, 1 <= i <= 15),
``last_conv`` (``features[16]``); each conv's norm is ``{conv}_bn``, its activation
``{conv}_act``.

Stages (``stage_names()``, bottom-up) are torchvision's ``stage_indices`` groups, so that
``trainable_backbone_layers=k`` is ``kft.train.finetune.top_down_stages(model, k)`` (torchvision
freezes ``features[:stage_indices[6 - k]]``; its pretrained default k=3 trains ``stride16``,
``stride32`` and ``last_conv``):

============  ================  =====================
stage         torchvision       output stride
============  ================  =====================
``stem``      features[0:2]     2
``stride4``   features[2:4]     4
``stride8``   features[4:7]     8
``stride16``  features[7:13]    16
``stride32``  features[13:16]   32
``last_conv`` features[16]      32
============  ================  =====================

The input is float32 RGB pixels 0..255; the first layer normalises them (``"torch"``: ``(x /
255 - (0.485, 0.456, 0.406)) / (0.229, 0.224, 0.225)``, what ``GeneralizedRCNNTransform``
does; ``"none"``: the caller does).
"""

from __future__ import annotations

import re
from pathlib import Path

import keras
import numpy as np
from keras import layers

from kft.models.backbones.resnet import BN_EPSILON, FrozenBatchNormalization
from kft.models.backbones.vgg import ImageNormalization
from kft.models.weights import WeightsError

BN_MOMENTUM = 0.9
"""Keras momentum of torch's default BatchNorm2d momentum 0.1 (``frozen_bn=False`` only)."""
LEVEL_NAMES = ("C5a", "C5")
LEVEL_STRIDES = (32, 32)

# torchvision's mobilenet_v3_large inverted_residual_setting (width 1): one row per block
# features[1..15]: (kernel, expanded, out, use_se, activation, stride).
LARGE_BLOCKS = (
    (3, 16, 16, False, "relu", 1),
    (3, 64, 24, False, "relu", 2),
    (3, 72, 24, False, "relu", 1),
    (5, 72, 40, True, "relu", 2),
    (5, 120, 40, True, "relu", 1),
    (5, 120, 40, True, "relu", 1),
    (3, 240, 80, False, "hard_silu", 2),
    (3, 200, 80, False, "hard_silu", 1),
    (3, 184, 80, False, "hard_silu", 1),
    (3, 184, 80, False, "hard_silu", 1),
    (3, 480, 112, True, "hard_silu", 1),
    (3, 672, 112, True, "hard_silu", 1),
    (5, 672, 160, True, "hard_silu", 2),
    (5, 960, 160, True, "hard_silu", 1),
    (5, 960, 160, True, "hard_silu", 1),
)
STEM_CHANNELS = 16
STAGE_NAMES = ("stem", "stride4", "stride8", "stride16", "stride32", "last_conv")
LAST_INDEX = len(LARGE_BLOCKS) + 1  # features[16]


def make_divisible(value: float, divisor: int = 8) -> int:
    """torchvision's ``_make_divisible``: nearest multiple of ``divisor`` (at least
    ``divisor``), bumped up once if rounding lost more than 10%."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * value else new


def stage_starts(blocks=LARGE_BLOCKS) -> tuple:
    """torchvision's ``stage_indices``: ``(0, every stride-2 block's features index, last)``."""
    strided = [i + 1 for i, row in enumerate(blocks) if row[5] > 1]
    return (0, *strided, len(blocks) + 1)


def features_index(layer_name: str) -> int | None:
    """torchvision ``features`` index of a body layer name (``None`` for others)."""
    if layer_name.startswith("stem_"):
        return 0
    if layer_name.startswith("last_"):
        return LAST_INDEX
    match = re.match(r"block(\d+)_", layer_name)
    return int(match.group(1)) if match else None


def stage_of_layer(layer_name: str) -> str | None:
    """The stage (``STAGE_NAMES``) of a body layer; ``None`` for ``normalize`` and non-body
    names (layers of no stage always train)."""
    index = features_index(layer_name)
    if index is None:
        return None
    starts = stage_starts()
    return STAGE_NAMES[max(s for s, start in enumerate(starts) if start <= index)]


def _norm(frozen: bool, name: str):
    if frozen:
        return FrozenBatchNormalization(BN_EPSILON, name=name)
    return layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)


def conv_norm_act(x, filters: int | None, kernel: int, stride: int, activation, *,
                  frozen: bool, name: str, depthwise: bool = False):
    """torchvision ``Conv2dNormActivation`` (bias-free conv, padding ``k // 2`` on every side,
    norm, activation or None): ``[B, H, W, C] -> [B, ceil(H / stride), ceil(W / stride), F]``.
    Layers ``{name}`` (``{name}_pad`` before a strided conv), ``{name}_bn``, ``{name}_act``."""
    if stride > 1:
        x = layers.ZeroPadding2D(kernel // 2, name=f"{name}_pad")(x)
    padding = "valid" if stride > 1 else "same"
    if depthwise:
        x = layers.DepthwiseConv2D(kernel, stride, padding, use_bias=False, name=name)(x)
    else:
        x = layers.Conv2D(filters, kernel, stride, padding, use_bias=False, name=name)(x)
    x = _norm(frozen, f"{name}_bn")(x)
    if activation is not None:
        x = layers.Activation(activation, name=f"{name}_act")(x)
    return x


def squeeze_excitation(x, squeeze: int, *, name: str):
    """torchvision ``SqueezeExcitation`` with hardsigmoid: ``x * hard_sigmoid(fc2(relu(fc1(
    mean_hw(x)))))``, fc1 / fc2 1x1 convs with bias; ``[B, H, W, C] -> [B, H, W, C]``."""
    channels = x.shape[-1]
    s = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_pool")(x)
    s = layers.Conv2D(squeeze, 1, name=f"{name}_fc1")(s)
    s = layers.ReLU(name=f"{name}_relu")(s)
    s = layers.Conv2D(channels, 1, name=f"{name}_fc2")(s)
    s = layers.Activation("hard_sigmoid", name=f"{name}_gate")(s)
    return layers.Multiply(name=f"{name}_scale")([x, s])


def inverted_residual(x, row, width: float, *, frozen: bool, name: str):
    """torchvision ``InvertedResidual`` for one ``LARGE_BLOCKS`` row: [1x1 expand] -> k x k
    depthwise -> [SE] -> 1x1 linear project, plus the input when stride 1 and widths agree."""
    kernel, expanded, out, use_se, activation, stride = row
    expanded, out = make_divisible(expanded * width), make_divisible(out * width)
    inputs, channels = x, x.shape[-1]
    if expanded != channels:
        x = conv_norm_act(x, expanded, 1, 1, activation, frozen=frozen, name=f"{name}_expand")
    x = conv_norm_act(x, None, kernel, stride, activation, frozen=frozen, name=f"{name}_dw",
                      depthwise=True)
    if use_se:
        x = squeeze_excitation(x, make_divisible(expanded // 4), name=f"{name}_se")
    x = conv_norm_act(x, out, 1, 1, None, frozen=frozen, name=f"{name}_project")
    if stride == 1 and channels == out:
        x = layers.Add(name=f"{name}_add")([inputs, x])
    return x


@keras.saving.register_keras_serializable(package="kft")
class MobileNetV3FPNBody(keras.Model):
    """images ``[B, H, W, 3]`` float32 0..255 -> ``{"C5a": [B, h, w, 160], "C5": [B, h, w,
    960]}``, ``h = ceil(H / 32)``, ``w = ceil(W / 32)`` (see the module docstring).

    Args:
        image_size: ``(height, width)`` or one side; at least 32.
        weights: None (random, Keras initialisers), or the path of a torchvision
            ``mobilenet_v3_large`` state dict saved as ``.npz`` with torchvision's keys
            (``features.{i}...``; ``classifier.*`` is ignored), e.g.
            ``np.savez(path, **{k: v.numpy() for k, v in mobilenet_v3_large(
            weights="IMAGENET1K_V1").state_dict().items()})``; a ``fasterrcnn_mobilenet_v3_
            large_fpn`` state dict (``backbone.body.{i}...``) works too. Loaded with
            :func:`map_mobilenet_v3_body` and run with BN eps 1e-5 as torchvision's detector
            runs them; only used to initialise (``get_config`` records None).
        frozen_bn: :class:`FrozenBatchNormalization` (torchvision's pretrained detector);
            False uses trainable ``BatchNormalization`` (torchvision's ``weights=None`` case).
        normalization: ``"torch"`` or ``"none"`` (``kft.models.backbones.vgg.NORMALIZATIONS``).
        width_multiplier: torchvision's ``width_mult`` (channels ``_make_divisible(c * w, 8)``).

    Attributes: ``level_names`` ``("C5a", "C5")``, ``strides`` ``(32, 32)``.
    """

    def __init__(self, image_size=(320, 320), weights=None, frozen_bn: bool = True,
                 normalization: str = "torch", width_multiplier: float = 1.0, **kwargs):
        height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
        height, width = int(height), int(width)
        if min(height, width) < 32:
            raise ValueError(f"image_size {(height, width)} must be at least 32 on each side")
        images = keras.Input((height, width, 3), name="images")
        x = ImageNormalization(normalization, name="normalize")(images)
        levels = _body(x, float(width_multiplier), bool(frozen_bn))
        super().__init__(inputs=images, outputs=levels, **kwargs)
        self.image_size = (height, width)
        self.frozen_bn = bool(frozen_bn)
        self.normalization = normalization
        self.width_multiplier = float(width_multiplier)
        self.level_names = LEVEL_NAMES
        self.strides = LEVEL_STRIDES
        if weights is not None:
            load_torchvision_weights(self, weights)

    def stage_names(self) -> list[str]:
        """Backbone stages bottom-up, as ``train.trainable_stages`` / ``layer_lrs`` name them."""
        return list(STAGE_NAMES)

    def stage_of(self, layer_name: str) -> str | None:
        return stage_of_layer(layer_name)

    def get_config(self):
        return {"image_size": list(self.image_size), "frozen_bn": self.frozen_bn,
                "normalization": self.normalization, "width_multiplier": self.width_multiplier,
                "name": self.name, "trainable": self.trainable}


def _body(x, width: float, frozen: bool) -> dict:
    x = conv_norm_act(x, make_divisible(STEM_CHANNELS * width), 3, 2, "hard_silu",
                      frozen=frozen, name="stem_conv")
    levels = {}
    c5a_index = stage_starts()[-2]
    for i, row in enumerate(LARGE_BLOCKS, start=1):
        x = inverted_residual(x, row, width, frozen=frozen, name=f"block{i}")
        if i == c5a_index:
            levels["C5a"] = x
    levels["C5"] = conv_norm_act(x, 6 * x.shape[-1], 1, 1, "hard_silu", frozen=frozen,
                                 name="last_conv")
    return levels


def mobilenet_v3_fpn_body(image_size=(320, 320), *, weights=None, frozen_bn: bool = True,
                          normalization: str = "torch", width_multiplier: float = 1.0,
                          name: str = "backbone") -> MobileNetV3FPNBody:
    """fasterrcnn_mobilenet_v3_large_fpn's backbone body (:class:`MobileNetV3FPNBody`)."""
    return MobileNetV3FPNBody(image_size, weights, frozen_bn, normalization, width_multiplier,
                              name=name)


# --- torchvision state dicts ---------------------------------------------------------------

def _torch_module(layer_name: str, has_expand: bool, has_se: bool) -> str | None:
    """torchvision module path (inside ``features`` / ``backbone.body``) of a weighted layer;
    a block's ``block.{j}`` count up over [expand], depthwise, [SE], project."""
    index = features_index(layer_name)
    if index is None:
        return None
    if index in (0, LAST_INDEX):
        suffix = layer_name.split("_", 1)[1]
        return {"conv": f"{index}.0", "conv_bn": f"{index}.1"}.get(suffix)
    part = layer_name.split("_", 1)[1]
    dw = int(has_expand)
    se, project = dw + 1, dw + 1 + int(has_se)
    table = {"expand": "block.0.0", "expand_bn": "block.0.1", "dw": f"block.{dw}.0",
             "dw_bn": f"block.{dw}.1", "se_fc1": f"block.{se}.fc1", "se_fc2": f"block.{se}.fc2",
             "project": f"block.{project}.0", "project_bn": f"block.{project}.1"}
    return f"{index}.{table[part]}" if part in table else None


BN_KEYS = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
           "moving_variance": "running_var"}


def _torch_entry(layer, var_name: str) -> tuple[str, object]:
    """``(torch entry name, torch value -> Keras layout)`` of one Keras variable of ``layer``."""
    if isinstance(layer, (layers.BatchNormalization, FrozenBatchNormalization)):
        return BN_KEYS[var_name], np.asarray
    if var_name == "bias":
        return "bias", np.asarray
    if isinstance(layer, layers.DepthwiseConv2D):     # [C, 1, kh, kw] -> [kh, kw, C, 1]
        return "weight", lambda w: np.transpose(w, (2, 3, 0, 1))
    return "weight", lambda w: np.transpose(w, (2, 3, 1, 0))   # [O, I, kh, kw] -> [kh, kw, I, O]


def map_mobilenet_v3_body(state_dict, backbone, prefix: str = "backbone.body."):
    """torchvision MobileNetV3-Large ``features`` weights -> kft variable values.

    Args:
        state_dict: mapping ``torch key -> array`` (NumPy or CPU torch tensors), e.g. a
            fasterrcnn_mobilenet_v3_large_fpn state dict (``backbone.body.{i}...``, the default
            ``prefix``) or a mobilenet_v3_large one (``prefix="features."``; ``classifier.*``
            lies outside it and is not read).
        backbone: a :class:`MobileNetV3FPNBody` (or any model with its layer names).

    Returns:
        ``({variable.path: float32 array in the Keras layout}, used keys)`` (a set, BatchNorm's
        ``num_batches_tracked`` included), as ``kft.models.torchvision_map``: conv ``[out, in,
        kh, kw] -> [kh, kw, in, out]``, depthwise ``[C, 1, kh, kw] -> [kh, kw, C, 1]``, BN
        ``weight / bias / running_mean / running_var -> gamma / beta / moving_mean /
        moving_variance``, SE ``fc1`` / ``fc2`` kernels and biases. Apply with
        ``kft.models.weights.transfer`` or :func:`assign_values`.

    Raises:
        WeightsError: a kft variable without its torchvision key, a key under ``prefix`` that
        maps to no variable, or a shape that does not fit (all of them listed).
    """
    names = {layer.name for layer in backbone.layers}
    values, used, missing, mismatched = {}, set(), [], []
    for layer in backbone.layers:
        if not layer.weights:
            continue
        index = features_index(layer.name)
        module = None if index is None else _torch_module(
            layer.name, f"block{index}_expand" in names, f"block{index}_se_fc1" in names)
        for var in layer.weights:
            if module is None:
                missing.append(f"{var.path} (layer of no torchvision module)")
                continue
            entry, convert = _torch_entry(layer, var.name)
            key = f"{prefix}{module}.{entry}"
            if key not in state_dict:
                missing.append(f"{var.path} <- {key}")
                continue
            value = np.asarray(convert(np.asarray(state_dict[key], "float32")), "float32")
            used.add(key)
            if tuple(value.shape) != tuple(var.shape):
                mismatched.append(f"{key} {tuple(value.shape)} (Keras layout) vs {var.path} "
                                  f"{tuple(var.shape)}")
                continue
            values[var.path] = value
    used |= {k for k in state_dict if k.startswith(prefix) and k.endswith("num_batches_tracked")}
    unexpected = sorted(k for k in state_dict if k.startswith(prefix) and k not in used)
    if missing or unexpected or mismatched:
        raise WeightsError(f"MobileNetV3 body ({prefix!r}): missing {missing[:8]}, unexpected "
                           f"{unexpected[:8]}, shape mismatch {mismatched[:8]} (counts "
                           f"{len(missing)}, {len(unexpected)}, {len(mismatched)})")
    return values, used


def assign_values(model, values: dict) -> None:
    """Assigns ``values`` (``{variable.path: array}``) to ``model``'s variables; every variable
    must be covered and every value used."""
    paths = {var.path for var in model.weights}
    missing, unused = sorted(paths - set(values)), sorted(set(values) - paths)
    if missing or unused:
        raise ValueError(f"values do not cover the model: missing {missing[:5]}, unused "
                         f"{unused[:5]}")
    for var in model.weights:
        var.assign(values[var.path].astype(var.dtype))


def load_torchvision_weights(backbone, path) -> set[str]:
    """Loads a torchvision ``.npz`` state dict into ``backbone`` (see ``weights`` of
    :class:`MobileNetV3FPNBody`); the prefix is ``backbone.body.`` if such keys exist, else
    ``features.``. Returns the used keys; raises :class:`WeightsError` as
    :func:`map_mobilenet_v3_body`."""
    with np.load(Path(path)) as data:
        state_dict = {k: data[k] for k in data.files}
    prefix = ("backbone.body." if any(k.startswith("backbone.body.") for k in state_dict)
              else "features.")
    values, used = map_mobilenet_v3_body(state_dict, backbone, prefix)
    assign_values(backbone, values)
    return used
