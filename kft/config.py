"""Typed recipe configuration: nested dataclasses and type-checked ``--set`` overrides.

A recipe is a plain Python module that builds a :class:`Recipe` and binds it to the module-level
name ``RECIPE``. Variants import a base recipe and use :func:`dataclasses.replace`.

Overrides use dotted keys (``train.epochs=3``). Every key is checked against the dataclass
fields: an unknown key fails with the closest valid keys ("did you mean") and its section's
keys, a value that does not parse fails naming the key and the expected type. Values themselves
(choices, ranges, keys a task does not read) are checked by :mod:`kft.validate`.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A recipe or override that cannot be applied; the message names the key."""


@dataclass
class Data:
    """Where the data comes from and how it is decoded.

    ``root`` is an image-folder root (``root/{train,val}/<class>/*``) or ``tfds:<name>`` for a
    TensorFlow Datasets dataset prepared in ``tfds_data_dir``.
    """

    root: str = ""
    image_size: int = 224  # classification: 0 = the model.load_from run's (else 224)
    val_fraction: float = 0.1  # D9: share of the target data kept for validation
    tfds_data_dir: str = ""
    tfds_download: bool = False
    train_split: str = "train"
    # detection: "holdout" = a seeded data.val_fraction of train_split (an export with one
    # split, e.g. CVAT's "default"), never trained on
    val_split: str = "test"
    splits: str = ""  # "train,val": sets train_split and val_split with one key
    cache: bool = False
    # classification augmentation preset: natural (photos: flip, crop, colour) | orientation
    # (digits, documents, medical: no flips/rot90/transpose) | guide (the guide's full D4 set)
    # | none; true = guide, false = none (older recipes)
    augment: str = "natural"
    min_side: int = 8  # images smaller than this (either side) are skipped and reported
    shuffle_buffer: int = 10000
    generate: str = ""  # "shapes": write kft's generated dataset to `root` when it is missing
    generate_num_train: int = 300  # detection shapes: images per split when generating
    generate_num_val: int = 100
    # Detection (task="detection"):
    format: str = ""  # voc | coco | yolo | cityscapes; "" or auto: detected from data.root
    image_dir: str = ""  # COCO: the image folder when it is not found next to the annotations
    val_root: str = ""  # validation data root when it differs (VOC07 test after 07+12 training)
    # VOC / YOLO: the classes to read; () = inferred (the 20 VOC ones when every name is one)
    class_names: tuple[str, ...] = ()
    resize: str = "fixed"  # fixed (SSD 300/512) | keep_aspect (R-CNN)
    # Faster R-CNN (keep_aspect): the image is scaled so that its short side is image_size but
    # its long side at most max_size, and padded to a square canvas of max_size rounded up to
    # 32 (torchvision: 800 / 1333 -> 1344); 0 = image_size (the long side fits image_size)
    max_size: int = 0
    max_instances: int = 100  # ground-truth boxes per image after padding
    # none | ssd (photometric + expand + IoU crop + flip) | default (D3: flip, rotate, colour,
    # blur) | orientation (D3 without the flip: traffic signs, text)
    detection_augment: str = "ssd"
    # per training batch, after detection_augment and resizing: none | cutmix (R4: a rectangle
    # pasted from another image of the batch with its boxes, p 0.5) | mosaic (four images)
    batch_augment: str = "none"


@dataclass
class SSDSettings:
    """``model.ssd.*``: what only SSD / SSDLite read (default boxes, matching, mining)."""

    sizes: tuple[float, ...] = ()  # L + 1 default-box sizes (fractions); () = arch default
    # per level, the extra aspect ratios, e.g. ((2,), (2, 3), ...); () = arch default
    aspect_ratios: tuple[tuple[float, ...], ...] = ()
    # per-level strides in pixels for the default-box centres (the paper's Caffe
    # (8, 16, 32, 64, 100, 300) for SSD300); () = image size / feature-map size
    steps: tuple[int, ...] = ()
    iou_threshold: float = 0.5  # matching: a default box on an object from this IoU
    neg_pos_ratio: float = 3.0  # hard negative mining: negatives per positive


@dataclass
class FasterRCNNSettings:
    """``model.frcnn.*``: what only Faster R-CNN reads (torchvision's defaults; () / 0 = the
    architecture's own)."""

    # anchor sizes in pixels per pyramid level (P2..P6), each a tuple; the guide's M7 small-
    # object setting starts at 8 px: ((8,), (16,), (32,), (64,), (128,))
    anchor_sizes: tuple[tuple[float, ...], ...] = ()
    aspect_ratios: tuple[float, ...] = ()  # width / height; () = (2.0, 1.0, 0.5)
    rpn_nms_threshold: float = 0.7  # M7: 0.5-0.6 for small, crowded objects
    rpn_pre_nms_top_n: tuple[int, int] = (2000, 1000)  # per level before NMS: train, test
    rpn_post_nms_top_n: tuple[int, int] = (2000, 1000)  # per image after NMS: train, test
    rpn_batch_size_per_image: int = 256  # anchors sampled per image for the RPN loss
    box_batch_size_per_image: int = 512  # RoIs sampled per image for the box head
    box_positive_fraction: float = 0.25
    representation_size: int = 0  # box head FC width (M4/M7: 512 for small objects); 0 = 1024
    ohem_fraction: float = 0.0  # T10: train the box head on the hardest share of RoIs (0.3)
    # M7: fit one anchor size per level to the training boxes (kft.ops.anchors.
    # fit_rcnn_anchor_sizes) before building the model; the sizes go to config.json
    fit_anchors: bool = False


@dataclass
class Model:
    """Which network, which weights, which head; a detector family's own keys are in its
    section (``model.ssd.*``)."""

    # resnet18/34/50/101/152, or resnet_tiny (tests, quick starts); "": the architecture of
    # the kft run model.load_from names (else resnet50)
    arch: str = "resnet50"
    preset: str = ""  # keras-hub preset name or local preset folder for the backbone
    load_from: str = ""  # .keras model, kft run dir/checkpoint, preset dir, or keras.applications .h5
    load_from_hash: str = ""  # "sha256:<hex>" or "md5:<hex>" checked before loading (M8)
    num_classes: int = 0  # 0: from the data
    head: str = "linear"  # "linear" or "mlp" (Dense(512)-BN-ReLU-Dropout-Dense, M2)
    head_units: int = 512
    dropout: float = 0.5
    # M6 surgery (classifiers and the ResNet / ResNeXt Faster R-CNNs): squeeze-excitation after
    # these stages, e.g. ("layer3",) (after conv4_x)
    se_stages: tuple[str, ...] = ()
    se_reduction: int = 16
    # M6, Faster R-CNN ResNet / ResNeXt: 3x3 convolutions of these stages depthwise-separable
    separable_stages: tuple[str, ...] = ()
    # Detection: ImageNet weights for the detector backbone: a keras.applications-style .h5
    # (SSD VGG16 / MobileNet), a torchvision state dict .npz / .pth (Faster R-CNN backbones:
    # mobilenet_v3_large, resnet50, resnext101_32x8d)
    backbone_weights: str = ""
    width_multiplier: float = 1.0  # SSDLite: MobileNet alpha (0.35, 0.5, 0.75, 1.0, ...)
    # BatchNormalization moving-average momentum: 0 = chosen from the run length (short runs
    # get statistics that follow the weights), -1 = keep the network's own, else set it
    bn_momentum: float = 0.0
    ssd: SSDSettings = field(default_factory=SSDSettings)
    frcnn: FasterRCNNSettings = field(default_factory=FasterRCNNSettings)

    @property
    def pretrained(self) -> bool:
        """Whether the run starts from weights (a kft model, a preset or backbone weights)."""
        return bool(self.load_from or self.preset or self.backbone_weights)


@dataclass
class Train:
    """Optimisation and fine-tuning controls (T1-T9, T12)."""

    epochs: int = 10  # 0: chosen from the number of images (kft.train.plan)
    batch_size: int = 32  # 0: chosen from the number of images; adapted to the split's size
    seed: int = 0
    optimizer: str = "sgd"  # sgd | adamw | adam
    learning_rate: float = 0.01  # 0: chosen from the optimiser and fine-tuning policy
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    # decoupled: Keras' (AdamW-style, lr * wd * w subtracted apart from the gradient step);
    # coupled: Caffe / torch.optim.SGD's weight_decay (wd * w added to the gradient, so it
    # goes through momentum), the setting the SSD and Faster R-CNN papers trained with.
    weight_decay_mode: str = "decoupled"
    # T3 schedules: constant | cosine_restarts | warmup_multistep | step
    schedule: str = "constant"
    restart_epochs: float = 5.0  # T_0 in epochs; 0: the whole run (one cosine decay)
    restart_mult: float = 2.0  # T_mult
    min_lr: float = 1e-6  # eta_min
    warmup_epochs: float = 0.0  # linear warm-up length in epochs (may be a fraction)
    warmup_steps: int = 0  # the same in optimiser steps (use one of the two)
    warmup_factor: float = 0.001
    milestones: tuple[int, ...] = ()  # epochs at which lr *= gamma (warmup_multistep)
    gamma: float = 0.1
    step_epochs: int = 0  # step decay period in epochs (schedule="step")
    clipnorm: float = 0.0  # T4: global gradient-norm clip; 0 disables
    mixed_precision: str = ""  # T5: "", "float16" or "bfloat16"
    grad_accum_steps: int = 1  # T6
    label_smoothing: float = 0.0  # T8
    # T1: which backbone stages train. "all", "none" or stage names ("layer3", "layer4").
    trainable_stages: tuple[str, ...] = ("all",)
    unfreeze_every: int = 0  # progressive unfreezing: every N epochs ...
    unfreeze_per_round: int = 1  # ... unfreeze this many more stages, top down
    # fine-tuning policy (fastai's fine_tune, the guide's T1/T2): the first head_epochs train
    # only the new head (backbone frozen), then trainable_stages train, the backbone at
    # learning_rate * backbone_lr_scale
    head_epochs: int = 0
    backbone_lr_scale: float = 1.0
    layer_lrs: dict[str, float] = field(default_factory=dict)  # T2: {"layer4": 1e-4}
    early_stopping_patience: int = 0  # T7: 0 disables
    monitor: str = ""  # "": val_macro_f1 (classification) / val_bbox_AP50 (detection)
    # Detection losses (T8, T10):
    cls_loss: str = "ce"  # ce (with hard negative mining) | focal
    box_loss: str = "smooth_l1"  # smooth_l1 | giou
    cls_weight: float = 1.0
    loc_weight: float = 1.0
    jit_compile: bool = False


@dataclass
class Eval:
    batch_size: int = 64
    plots: bool = True
    every: int = 1  # detection: COCO evaluation every N epochs (and after the last)
    score_threshold: float = 0.01
    nms_iou_threshold: float = 0.45
    max_detections: int = 100


@dataclass
class Export:
    enabled: bool = True
    quantize: tuple[str, ...] = ("float32", "float16", "int8")  # C1
    representative_samples: int = 100


@dataclass
class Recipe:
    name: str = "recipe"
    task: str = "classification"
    description: str = ""
    data: Data = field(default_factory=Data)
    model: Model = field(default_factory=Model)
    train: Train = field(default_factory=Train)
    eval: Eval = field(default_factory=Eval)
    export: Export = field(default_factory=Export)


# ---------------------------------------------------------------------------------------------
# Loading recipes and applying overrides


def load_recipe(path: str | Path) -> Recipe:
    """Imports the recipe module at ``path`` and returns its ``RECIPE``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe file not found: {path}")
    spec = importlib.util.spec_from_file_location(f"kft_recipe_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:  # also IndentationError; may be in a module the recipe imports
        file = e.filename or str(path)
        if Path(file).resolve() == path.resolve():
            file = str(path)  # as the user wrote it
        where = f"{file}:{e.lineno}" if e.lineno else file
        raise ConfigError(f"{where}: syntax error: {e.msg}") from e
    except Exception as e:  # noqa: BLE001 - whatever the recipe's own code raised
        raise ConfigError(f"{_raising_line(path, e)}: the recipe raised {type(e).__name__}: "
                          + " ".join(str(e).split())) from e
    recipe = getattr(module, "RECIPE", None)
    if not isinstance(recipe, Recipe):
        raise ConfigError(f"{path}: the module must define RECIPE = kft.config.Recipe(...)")
    return normalized(recipe)


def _raising_line(path: Path, error: BaseException) -> str:
    """``file:line`` of the deepest traceback frame in the recipe file (else just the file)."""
    import traceback

    target = path.resolve()
    where = str(path)
    for frame in traceback.extract_tb(error.__traceback__):
        try:
            same = Path(frame.filename).resolve() == target
        except OSError:
            same = False
        if same:
            where = f"{path}:{frame.lineno}"
    return where


# Keys that moved into a model family's section: still accepted (--set, config.json of older
# runs) with a note naming the new key.
RENAMED_KEYS = {
    "model.default_box_sizes": "model.ssd.sizes",
    "model.default_box_aspect_ratios": "model.ssd.aspect_ratios",
    "model.default_box_steps": "model.ssd.steps",
    "train.iou_threshold": "model.ssd.iou_threshold",
    "train.neg_pos_ratio": "model.ssd.neg_pos_ratio",
}


def renamed(key: str) -> str:
    """``key``, or the key it was renamed to (printing a note once per call)."""
    new = RENAMED_KEYS.get(key)
    if new is None:
        return key
    print(f"[kft] note: {key} is now {new}; the old name still works")
    return new


# Values older recipes wrote that now have a name (``data.augment`` was a bool).
LEGACY_VALUES = {"data.augment": {True: "guide", False: "none", "true": "guide",
                                  "false": "none", "1": "guide", "0": "none", "yes": "guide",
                                  "no": "none", "on": "guide", "off": "none"}}


def normalized(recipe: Recipe) -> Recipe:
    """``recipe`` with :data:`LEGACY_VALUES` replaced by their names, and ``data.splits``
    ("train,val") written into ``data.train_split`` / ``data.val_split``."""
    splits = [p.strip() for p in recipe.data.splits.split(",")] if recipe.data.splits else []
    if len(splits) == 2 and all(splits):
        recipe = replace_value(recipe, "data.train_split", splits[0])
        recipe = replace_value(recipe, "data.val_split", splits[1])
    for key, names in LEGACY_VALUES.items():
        section, name = key.split(".")
        value = getattr(getattr(recipe, section), name)
        key_value = value.lower() if isinstance(value, str) else value
        if isinstance(key_value, (bool, str)) and key_value in names:
            recipe = replace_value(recipe, key, names[key_value])
    return recipe


def unknown_key_message(full_key: str) -> str:
    """One line: the unknown key, the closest valid keys (did you mean) and its section's keys."""
    keys = valid_keys()
    section, _, last = full_key.rpartition(".")
    fields = [k.split(".", 1)[1] for k in keys if section and k.startswith(section + ".")]
    close = [k for k in keys if k.rsplit(".", 1)[-1] == last]  # right field, wrong section
    if fields:  # a known section: a field name near the one typed
        close += [f"{section}.{f}" for f in difflib.get_close_matches(last, fields, n=2,
                                                                       cutoff=0.7)]
    else:  # a mistyped section, or a field without its section
        close += difflib.get_close_matches(full_key, keys, n=2, cutoff=0.7)
        lasts = [k.rsplit(".", 1)[-1] for k in keys]
        close += [k for name in difflib.get_close_matches(last, lasts, n=1, cutoff=0.8)
                  for k in keys if k.rsplit(".", 1)[-1] == name]
    close = list(dict.fromkeys(close))[:3]
    message = f"unknown key {full_key!r}" + (
        f"; did you mean {' or '.join(repr(k) for k in close)}?" if close else ".")
    if fields:
        return message + f" Keys of {section}: {', '.join(fields)}"
    sections = sorted({k.split(".", 1)[0] for k in keys if "." in k})
    top = [k for k in keys if "." not in k]
    return message + (f" Sections: {', '.join(sections)} (keys such as data.root, "
                      f"train.epochs); top-level keys: {', '.join(top)}")


def flat_items(obj: Any, prefix: str = ""):
    """``(dotted key, value)`` of every field of a recipe (or section), sections opened."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from flat_items(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", value


def valid_keys(obj: Any = None, prefix: str = "") -> list[str]:
    """Every dotted key of a recipe, e.g. ``train.epochs``."""
    obj = Recipe() if obj is None else obj
    keys = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            keys.extend(valid_keys(value, f"{prefix}{f.name}."))
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def apply_overrides(recipe: Recipe, overrides: list[str] | tuple[str, ...]) -> Recipe:
    """Returns a copy of ``recipe`` with ``key=value`` overrides applied, type-checked."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value, e.g. train.epochs=3")
        key, raw = item.split("=", 1)
        recipe = set_value(recipe, key.strip(), raw)
    return normalized(recipe)


def set_value(recipe: Recipe, key: str, raw: str) -> Recipe:
    key = renamed(key)
    parts = key.split(".")
    return _set(recipe, parts, raw, key)


def _set(obj: Any, parts: list[str], raw: str, full_key: str) -> Any:
    names = {f.name: f for f in dataclasses.fields(obj)}
    head = parts[0]
    if head not in names:
        raise ConfigError(unknown_key_message(full_key))
    current = getattr(obj, head)
    if dataclasses.is_dataclass(current):
        if len(parts) == 1:
            raise ConfigError(f"{full_key!r} is a section; set one of its fields, e.g. {full_key}.<field>")
        return dataclasses.replace(obj, **{head: _set(current, parts[1:], raw, full_key)})
    if len(parts) > 1:
        raise ConfigError(f"unknown key {full_key!r}: {'.'.join(parts[:1])} is not a section")
    hint = typing.get_type_hints(type(obj))[head]
    return dataclasses.replace(obj, **{head: parse_value(raw, hint, full_key)})


def parse_value(raw: str, hint: Any, key: str) -> Any:
    """Parses the command-line string ``raw`` as type ``hint``; errors name ``key``."""
    origin = typing.get_origin(hint)
    try:
        if hint is bool:
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if hint is int:
            return int(raw)
        if hint is float:
            return float(raw)
        if hint is str:
            return raw
        if origin is tuple:
            (item_type, *_rest) = typing.get_args(hint)
            text = raw.strip()
            if text.startswith("["):
                items = json.loads(text)
            else:
                items = [s.strip() for s in text.split(",") if s.strip()]
            if typing.get_origin(item_type) is tuple:  # nested, e.g. [[2], [2, 3]] (JSON only)
                if not text.startswith("["):
                    raise ValueError
                inner = typing.get_args(item_type)[0]
                return tuple(tuple(inner(v) for v in item) for item in items)
            return tuple(item_type(i) for i in items)
        if origin is dict:
            value = json.loads(raw)
            if not isinstance(value, dict):
                raise ValueError
            _, value_type = typing.get_args(hint)
            return {str(k): value_type(v) for k, v in value.items()}
        if origin in (typing.Union, types.UnionType):
            return raw
    except (ValueError, TypeError, json.JSONDecodeError):
        pass
    else:
        raise ConfigError(f"{key}: unsupported field type {hint}")
    raise ConfigError(f"{key} expects {_type_name(hint)}, got {raw!r}")


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is tuple:
        item_type = typing.get_args(hint)[0]
        if typing.get_origin(item_type) is tuple:
            return "a JSON list of lists such as [[2], [2, 3]]"
        return f"a comma-separated list of {item_type.__name__}"
    if origin is dict:
        return 'a JSON object such as {"layer4": 0.0001}'
    return getattr(hint, "__name__", str(hint))


def to_dict(recipe: Recipe) -> dict:
    return dataclasses.asdict(recipe)


def from_dict(data: dict) -> Recipe:
    """Rebuilds a recipe from ``config.json`` (lists become tuples where fields are tuples)."""

    def build(cls, values):
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name not in values:
                continue
            v, hint = values[f.name], hints[f.name]
            if dataclasses.is_dataclass(hint):
                v = build(hint, v)
            elif typing.get_origin(hint) is tuple:
                v = tuple(tuple(i) if isinstance(i, list) else i for i in v)
            kwargs[f.name] = v
        return cls(**kwargs)

    return normalized(build(Recipe, _moved_to_sections(data)))


def _moved_to_sections(data: dict) -> dict:
    """A config.json written before a key moved (:data:`RENAMED_KEYS`), with it moved."""
    data = json.loads(json.dumps(data))  # a deep copy
    for old, new in RENAMED_KEYS.items():
        section, name = old.split(".")
        if name not in data.get(section, {}):
            continue
        value = data[section].pop(name)
        node = data
        *path, last = new.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node.setdefault(last, value)
    return data


def save_json(recipe: Recipe, path: str | Path, resolved: dict | None = None) -> None:
    """Writes ``config.json``: the recipe, and under ``"resolved"`` what the run set from its
    data (``{key: {"from", "to", "why"}}``, :mod:`kft.train.plan`)."""
    data = to_dict(recipe)
    if resolved:
        data["resolved"] = resolved
    Path(path).write_text(json.dumps(data, indent=2))


def resolved_record(path: str | Path) -> dict:
    """The ``"resolved"`` record of a ``config.json`` (``{}`` when absent or unreadable)."""
    try:
        record = json.loads(Path(path).read_text()).get("resolved", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return record if isinstance(record, dict) else {}


def replace_value(recipe: Recipe, key: str, value: Any) -> Recipe:
    """A copy of ``recipe`` with the dotted ``key`` set to ``value`` (already typed)."""
    head, _, rest = key.partition(".")
    current = getattr(recipe, head)
    if rest:
        return dataclasses.replace(recipe, **{head: replace_value(current, rest, value)})
    if isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    return dataclasses.replace(recipe, **{head: value})
