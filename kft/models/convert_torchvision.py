"""torchvision detection checkpoints -> kft models (``kft convert torchvision``).

COCO-pretrained two-stage weights that no Keras library offers: a torchvision
``fasterrcnn_resnet50_fpn`` / ``_v2`` / ``fasterrcnn_mobilenet_v3_large_fpn`` state dict is
mapped part by part onto :class:`kft.models.faster_rcnn.FasterRCNN` built with the same
settings (:meth:`FasterRCNN.from_arch`): backbone body, FPN, RPN head, box head and predictor.
Layouts are converted by the part mappers (conv ``[out, in, kh, kw]`` -> ``[kh, kw, in, out]``,
BatchNorm / FrozenBatchNorm buffers -> moving statistics, the channel-major flatten before
``fc6``); both key spellings torchvision has used are read (e.g. ``rpn.head.conv.weight`` and
``rpn.head.conv.0.0.weight``).

Reading ``.pth`` needs torch (imported only for that); without it, export the state dict to
``.npz`` where torch is installed (:data:`NPZ_EXPORT_HINT`) and pass that.

kft labels are 0-based foreground classes: torchvision label ``k`` (1-based, 0 background) is
kft label ``k - 1``, and the predictor keeps torchvision's layout (logit 0 background), so the
weights load unchanged. With another ``num_classes`` the class-dependent predictor layers
stay newly initialised (reported as shape mismatches) and everything else loads.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

TORCH_INSTALL_HINT = "pip install torch==2.14.1 torchvision==0.29.1"
NPZ_EXPORT_HINT = ("python -c \"import sys, numpy, torch; sd = torch.load(sys.argv[1], "
                   "map_location='cpu', weights_only=True); numpy.savez(sys.argv[2], **{k: "
                   "v.numpy() for k, v in sd.items()})\" model.pth model.npz")
ARCHS = ("fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2",
         "fasterrcnn_mobilenet_v3_large_fpn", "fasterrcnn_resnext101_32x8d_fpn")


class ConvertError(ValueError):
    """A checkpoint that cannot be read or does not fit the architecture (one line)."""


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A state dict as ``{key: float32 / int array}`` from ``.pth`` / ``.pt`` (needs torch) or
    ``.npz``; a checkpoint dict holding it under ``"model"`` or ``"state_dict"`` is opened."""
    path = Path(path)
    if not path.is_file():
        raise ConvertError(f"{path}: no such checkpoint file")
    if path.suffix == ".npz":
        with np.load(path) as data:
            return {k: np.asarray(data[k]) for k in data.files}
    try:
        import torch
    except ModuleNotFoundError:
        raise ConvertError(f"{path}: reading a PyTorch checkpoint needs torch, which is not "
                           f"installed here. Install it ({TORCH_INSTALL_HINT}), or export the "
                           f"state dict to .npz where torch is installed: {NPZ_EXPORT_HINT}"
                           ) from None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a broken or foreign file
        raise ConvertError(f"{path}: not a readable PyTorch checkpoint ({e})") from e
    for key in ("model", "state_dict"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict):
        raise ConvertError(f"{path}: holds a {type(data).__name__}, not a state dict")
    return {k: v.detach().cpu().numpy() for k, v in data.items() if hasattr(v, "detach")}


def detect_arch(state_dict: dict) -> str:
    """The torchvision architecture a Faster R-CNN state dict belongs to."""
    if not any(k.startswith("roi_heads.box_predictor.") for k in state_dict):
        raise ConvertError("the checkpoint has no roi_heads.box_predictor.* weights: not a "
                           "torchvision Faster R-CNN state dict")
    if any(k.startswith("backbone.body.layer1.") for k in state_dict):
        conv2 = state_dict.get("backbone.body.layer1.0.conv2.weight")
        blocks = sum(1 for k in state_dict
                     if k.startswith("backbone.body.layer3.") and k.endswith(".conv1.weight"))
        groups = 1 if conv2 is None else int(conv2.shape[0]) // max(int(conv2.shape[1]), 1)
        if (blocks, groups) == (23, 32) and int(conv2.shape[1]) == 8:
            return "fasterrcnn_resnext101_32x8d_fpn"
        if (blocks, groups) != (6, 1):
            raise ConvertError(f"the checkpoint's ResNet body has {blocks} blocks in layer3 "
                               f"and {groups} groups in its 3x3 convolutions: kft converts "
                               "ResNet-50 (6, 1) and ResNeXt-101 32x8d (23, 32) Faster R-CNNs")
        if any(k.startswith("roi_heads.box_head.0.0.") for k in state_dict):
            return "fasterrcnn_resnet50_fpn_v2"
        return "fasterrcnn_resnet50_fpn"
    if any(k.startswith("backbone.body.0.") for k in state_dict):
        return "fasterrcnn_mobilenet_v3_large_fpn"
    raise ConvertError("cannot tell the backbone of this Faster R-CNN state dict (neither "
                       "backbone.body.layer1.* nor backbone.body.0.*): pass --arch")


def num_classes_of(state_dict: dict) -> int:
    """Foreground classes of a checkpoint (its ``cls_score`` rows minus background)."""
    weight = state_dict.get("roi_heads.box_predictor.cls_score.weight")
    if weight is None:
        raise ConvertError("the checkpoint has no roi_heads.box_predictor.cls_score.weight")
    return int(weight.shape[0]) - 1


def conv_kernel(weight: np.ndarray) -> np.ndarray:
    """torch conv ``[out, in, kh, kw]`` -> Keras ``Conv2D`` ``[kh, kw, in, out]``."""
    return np.transpose(np.asarray(weight, "float32"), (2, 3, 1, 0))


def map_rpn_head(state_dict: dict, head, prefix: str = "rpn.head.") -> tuple[dict, set]:
    """torchvision ``RPNHead`` -> :class:`~kft.models.heads.rpn.RPNHead` variables.

    Shared convs: ``conv.weight`` (torchvision < 0.13, one conv) or ``conv.{i}.0.weight``;
    then ``cls_logits`` and ``bbox_pred``. Anchor channel ``a`` means the same anchor on both
    sides (:func:`kft.ops.anchors.rcnn_anchors` is torchvision's generator).
    Returns ``({variable path: value}, used keys)``.
    """
    mapping, used = {}, set()

    def put(layer, key):
        w, b = state_dict[key + ".weight"], state_dict[key + ".bias"]
        mapping[layer.kernel.path] = conv_kernel(w)
        mapping[layer.bias.path] = np.asarray(b, "float32")
        used.update({key + ".weight", key + ".bias"})

    for i, conv in enumerate(head.convs):
        key = f"{prefix}conv.{i}.0"
        if key + ".weight" not in state_dict and i == 0 and f"{prefix}conv.weight" in \
                state_dict:
            key = f"{prefix}conv"
        _require(state_dict, key + ".weight")
        put(conv, key)
    for name in ("cls_logits", "bbox_pred"):
        _require(state_dict, f"{prefix}{name}.weight")
        put(getattr(head, name), f"{prefix}{name}")
    return mapping, used


def convert_faster_rcnn(state_dict: dict, model) -> dict:
    """Assigns a torchvision Faster R-CNN ``state_dict`` to ``model`` (a kft
    :class:`~kft.models.faster_rcnn.FasterRCNN` of the same architecture).

    Returns :func:`kft.models.weights.transfer`'s report plus ``"unused_keys"`` (checkpoint
    keys no part read, e.g. ``num_batches_tracked``). A kft variable the checkpoint does not
    provide is an error, except the class-dependent predictor layers when the class counts
    differ (shape mismatches in the report).
    """
    from kft.models.heads.box import map_box_head
    from kft.models.torchvision_map import map_fpn
    from kft.models.weights import transfer

    arch = getattr(model, "arch", "custom")
    arch = arch if arch in ARCHS else detect_arch(state_dict)
    mapping, used = {}, set()
    if arch.startswith(("fasterrcnn_resnet50_fpn", "fasterrcnn_resnext")):
        from kft.models.torchvision_map import map_resnet_body

        parts = [map_resnet_body(state_dict, model.backbone, prefix="backbone.body.")]
    else:
        from kft.models.backbones.mobilenet_v3_fpn import map_mobilenet_v3_body

        parts = [map_mobilenet_v3_body(state_dict, model.backbone, prefix="backbone.body.")]
    parts += [map_fpn(state_dict, model.neck, prefix="backbone.fpn."),
              map_rpn_head(state_dict, model.rpn_head),
              map_box_head(state_dict, model.box_head, model.box_predictor,
                           prefix="roi_heads.")]
    for part_mapping, part_used in parts:
        mapping.update(part_mapping)
        used |= set(part_used)
    report = transfer(model, mapping)
    missing = [p for p in report["new"] if "seed" not in p]
    if missing:
        raise ConvertError(f"the checkpoint gives no value for {len(missing)} kft variables, "
                           f"e.g. {missing[:3]}: is it a {arch} checkpoint?")
    report["unused_keys"] = sorted(k for k in set(state_dict) - used
                                   if not k.endswith("num_batches_tracked"))
    return report


def convert_checkpoint(path, *, arch: str | None = None, num_classes: int | None = None,
                       image_size=None, **model_kwargs):
    """Reads a torchvision checkpoint and returns ``(model, report)``.

    ``arch`` defaults to the one the keys show, ``num_classes`` (foreground) to the
    checkpoint's, ``image_size`` (a square side or ``(H, W)``, multiples of 32) to the static
    canvas of torchvision's 800 / 1333 keep-aspect resize (1344 x 1344).
    """
    from kft.models.faster_rcnn import FasterRCNN

    state_dict = read_state_dict(path)
    found = detect_arch(state_dict)
    if arch is not None and arch != found:
        raise ConvertError(f"--arch {arch}: the checkpoint's keys are those of {found}")
    source_classes = num_classes_of(state_dict)
    model = FasterRCNN.from_arch(found, num_classes=num_classes or source_classes,
                                 image_size=image_size or 1344, **model_kwargs)
    report = convert_faster_rcnn(state_dict, model)
    report.update(source=str(path), arch=found, source_num_classes=source_classes)
    return model, report


def _require(state_dict: dict, key: str) -> None:
    if key not in state_dict:
        raise ConvertError(f"the checkpoint has no {key}")
