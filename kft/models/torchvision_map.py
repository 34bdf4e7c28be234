"""torchvision state-dict keys -> kft variable paths, for the parts torchvision's detectors share.

Each ``map_*`` function reads the keys under its ``prefix`` of a state dict (``{key: array}``,
NumPy arrays or CPU torch tensors), converts the layouts and returns ``(mapping, used_keys)``:

* ``mapping``: ``{variable path: float32 array}`` of the target part, ready for
  :func:`kft.models.weights.transfer` (``transfer(model, mapping)``);
* ``used_keys``: the set of state-dict keys it consumed (``num_batches_tracked`` included).

Keys outside ``prefix`` (``rpn.``, ``roi_heads.``, the other backbone part) are not read and
not reported: a caller mapping a whole detector collects ``used_keys`` of every part and checks
``set(state_dict) - used`` for leftovers itself. Inside its prefix a part is strict: a target
variable without a key, a key that maps to no variable, or a shape that does not fit raises
:class:`~kft.models.weights.WeightsError` listing them.

Layouts: conv ``[out, in, kh, kw]`` -> ``[kh, kw, in, out]``; BatchNorm / FrozenBatchNorm2d
``weight``, ``bias``, ``running_mean``, ``running_var`` -> ``gamma``, ``beta``,
``moving_mean``, ``moving_variance``.
"""

from __future__ import annotations

import re

import numpy as np

from kft.models.weights import WeightsError

BN_VARIABLES = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
                "running_var": "moving_variance"}
"""torch BatchNorm2d / FrozenBatchNorm2d entry -> Keras BatchNormalization variable name."""

# torchvision ResNet keys (IntermediateLayerGetter keeps the module names):
# conv1 / bn1, layer{s}.{b}.conv{k} / bn{k}, layer{s}.{b}.downsample.0 (conv) / .1 (bn)
_RESNET_KEY = re.compile(
    r"(?:(?P<stem>conv1|bn1)"
    r"|layer(?P<stage>\d+)\.(?P<block>\d+)\.(?:(?P<kind>conv|bn)(?P<index>\d)"
    r"|downsample\.(?P<down>[01])))"
    r"\.(?P<entry>weight|bias|running_mean|running_var|num_batches_tracked)")

# torchvision FeaturePyramidNetwork keys: inner_blocks.{i}.weight (torchvision < 0.13) or
# inner_blocks.{i}.0.weight (+ .1. BatchNorm with norm_layer); layer_blocks alike
_FPN_KEY = re.compile(
    r"(?P<part>inner_blocks|layer_blocks)\.(?P<index>\d+)\.(?:(?P<sub>[01])\.)?"
    r"(?P<entry>weight|bias|running_mean|running_var|num_batches_tracked)")


def conv_kernel(weight) -> np.ndarray:
    """torch conv weight ``[out, in, kh, kw]`` -> Keras ``Conv2D`` kernel ``[kh, kw, in, out]``."""
    return np.transpose(np.asarray(weight, "float32"), (2, 3, 1, 0))


def resnet_target(key: str) -> tuple[str, str] | None:
    """``(keras-hub layer name, variable name)`` of a torchvision ResNet key without prefix;
    ``("", "")`` for ``num_batches_tracked`` (consumed, no variable); None for a key that is
    not a ResNet conv / BatchNorm entry.

    ``layer3.0.conv2.weight`` -> ``("stack2_block0_2_conv", "kernel")``;
    ``layer1.0.downsample.1.running_var`` -> ``("stack0_block0_0_bn", "moving_variance")``.
    """
    m = _RESNET_KEY.fullmatch(key)
    if m is None:
        return None
    entry = m["entry"]
    if entry == "num_batches_tracked":
        return "", ""
    if m["stem"]:
        is_conv = m["stem"] == "conv1"
        layer = "conv1_conv" if is_conv else "conv1_bn"
    else:
        if m["kind"]:                    # conv{k} / bn{k} -> _{k}_conv / _{k}_bn
            index, is_conv = m["index"], m["kind"] == "conv"
        else:                            # the shortcut: downsample.0 / .1 -> _0_conv / _0_bn
            index, is_conv = "0", m["down"] == "0"
        block = f"stack{int(m['stage']) - 1}_block{m['block']}_{index}"
        layer = f"{block}_{'conv' if is_conv else 'bn'}"
    if is_conv:
        return (layer, "kernel") if entry == "weight" else None   # convs are bias-free
    return layer, BN_VARIABLES[entry]


def _variables_by_name(model) -> dict:
    """``{"layer/variable": variable}`` from the last two components of each variable path."""
    index = {}
    for v in model.weights:
        name = "/".join(v.path.split("/")[-2:])
        if name in index and index[name] is not v:
            raise WeightsError(f"{name}: two variables of {model.name} end in this path")
        index[name] = v
    return index


def _value(path, variable, value, convert, mismatched):
    value = convert(value)
    if tuple(value.shape) != tuple(variable.shape):
        mismatched.append(f"{path} {tuple(value.shape)} -> {variable.path} "
                          f"{tuple(variable.shape)}")
    return value


def _check(part, prefix, missing, unexpected, mismatched):
    problems = []
    if missing:
        problems.append(f"missing keys for {len(missing)} variables: {sorted(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {sorted(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches: {mismatched}")
    if problems:
        raise WeightsError(f"torchvision {part} under {prefix!r}: " + "; ".join(problems))


def map_resnet_body(state_dict, backbone, prefix: str = "backbone.body."):
    """torchvision ResNet body keys -> the variables of a keras-hub-named ResNet ``backbone``
    (:class:`kft.models.backbones.resnet.ResNetFPNBody`, or a keras-hub ``ResNetBackbone``).

    Every key under ``prefix`` must map to a variable (``fc.*``, a classification ResNet's
    classifier, is the one exception: not consumed), and every variable must get a key; both
    BatchNorm2d and FrozenBatchNorm2d checkpoints load into either kind of kft BatchNorm.
    Returns ``(mapping, used_keys)`` (module docstring).
    """
    variables = _variables_by_name(backbone)
    mapping, used, unexpected, mismatched = {}, set(), [], []
    for key, value in state_dict.items():
        if not key.startswith(prefix) or key[len(prefix):].startswith("fc."):
            continue
        target = resnet_target(key[len(prefix):])
        if target == ("", ""):
            used.add(key)
            continue
        variable = None if target is None else variables.get("/".join(target))
        if variable is None:
            unexpected.append(key)
            continue
        convert = conv_kernel if target[1] == "kernel" else \
            (lambda v: np.asarray(v, "float32"))
        mapping[variable.path] = _value(key, variable, value, convert, mismatched)
        used.add(key)
    missing = [v.path for v in variables.values() if v.path not in mapping]
    _check("ResNet body", prefix, missing, unexpected, mismatched)
    return mapping, used


def map_fpn(state_dict, fpn_layer, prefix: str = "backbone.fpn."):
    """torchvision ``FeaturePyramidNetwork`` keys -> a built :class:`kft.models.necks.FPN`.

    Block ``i`` of ``inner_blocks`` / ``layer_blocks`` is ``fpn_layer.laterals[i]`` /
    ``outputs[i]`` (levels finest first, as torchvision's ``in_channels_list``). Both key
    spellings: ``inner_blocks.{i}.weight`` / ``.bias`` (torchvision < 0.13) and
    ``inner_blocks.{i}.0.weight``; with ``norm="batch"`` (v2) ``inner_blocks.{i}.1.*`` is the
    BatchNorm (``lateral_norms[i]``). ``LastLevelMaxPool`` has no weights; any other
    ``extra_blocks.*`` key is unexpected. Returns ``(mapping, used_keys)``.
    """
    if not fpn_layer.built:
        raise ValueError(f"{fpn_layer.name}: build the FPN (call it once) before mapping")
    blocks = {"inner_blocks": (fpn_layer.laterals, fpn_layer.lateral_norms),
              "layer_blocks": (fpn_layer.outputs, fpn_layer.output_norms)}
    mapping, used, unexpected, mismatched = {}, set(), [], []
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            continue
        m = _FPN_KEY.fullmatch(key[len(prefix):])
        if m is not None and m["entry"] == "num_batches_tracked":
            used.add(key)
            continue
        variable = None
        if m is not None:
            convs, norms = blocks[m["part"]]
            i, entry = int(m["index"]), m["entry"]
            if m["sub"] == "1":
                if i < len(norms) and entry in BN_VARIABLES:
                    variable = getattr(norms[i], BN_VARIABLES[entry])
            elif i < len(convs) and entry in ("weight", "bias"):
                variable = convs[i].kernel if entry == "weight" else convs[i].bias
        if variable is None:
            unexpected.append(key)
            continue
        convert = conv_kernel if len(variable.shape) == 4 else \
            (lambda v: np.asarray(v, "float32"))
        mapping[variable.path] = _value(key, variable, value, convert, mismatched)
        used.add(key)
    missing = [v.path for v in fpn_layer.weights if v.path not in mapping]
    _check("FeaturePyramidNetwork", prefix, missing, unexpected, mismatched)
    return mapping, used
