"""Every recipe value checked before any work starts (issue 8, B7 and B12).

:func:`validate_recipe` runs before a run directory is made or a data folder is read: a value
that cannot work fails at once with one line naming the key, the value and what is valid,
instead of a traceback after the data scan or at export at the end of the run.

Three kinds of checks, all declarative where they can be:

* ``RULES``: per dotted key, the valid choices (the lists below, each checked against the code
  that consumes the value by tests/test_validate.py) or a numeric range.
* ``TASK_ONLY``: keys only one task reads. Such a key set to anything but its dataclass
  default (or named on the command line) in a recipe of the other task is an error naming the
  key and the task, never silently ignored.
* ``_CROSS_CHECKS``: rules between keys (a detection recipe needs ``data.format``, the ``step``
  schedule needs ``train.step_epochs`` ...).

Every field is also type-checked (a Python recipe can write ``epochs="3"``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import Any

from kft import config as cfg
from kft.config import ConfigError

# The valid choices. Where the consuming code has a constant, the tuple here mirrors it (named
# beside it) instead of importing it: those modules load TensorFlow, and checking a recipe must
# not (a bad value fails in a fraction of a second, before TensorFlow's ~5 s import).
# tests/test_validate.py checks every list against the code: the constants compare equal, and
# each choice is accepted (and a wrong one refused) by the function that consumes it.
TASKS = ("classification", "detection")  # kft.run.run_recipe
RESNET_STAGES = {  # kft.models.backbones.resnet.RESNET_ARCHS: arch -> number of stages
    "resnet18": 4, "resnet34": 4, "resnet50": 4, "resnet101": 4, "resnet152": 4,
    "resnet_tiny": 3,
}
SSD_ARCHS = ("ssd300_vgg16", "ssd512_vgg16", "ssdlite_mobilenet_v2",
             "ssdlite_mobilenet_v3")  # kft.models.ssd.SSD_ARCHS
FRCNN_ARCHS = ("fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2",
               "fasterrcnn_mobilenet_v3_large_fpn", "fasterrcnn_resnext101_32x8d_fpn",
               "fasterrcnn_resnet_tiny_fpn")  # kft.models.faster_rcnn.ARCHS
OPTIMIZERS = ("sgd", "adamw", "adam")  # kft.train.optimizers._OPTIMIZERS
SCHEDULES = ("constant", "cosine_restarts", "warmup_multistep", "step")  # build_schedule
PRECISIONS = ("", "float32", "float16", "bfloat16")  # kft.train.runs.set_precision
WEIGHT_DECAY_MODES = ("decoupled", "coupled")  # kft.config.Train.weight_decay_mode
EXPORT_FORMATS = ("float32", "float16", "int8")  # kft.export.tflite.FORMATS
DETECTION_FORMATS = ("voc", "coco", "yolo", "cityscapes")  # kft.data.readers.formats
AUTO_FORMATS = ("", "auto")  # data.format: detected from data.root
AUGMENT_PRESETS = ("natural", "orientation", "guide", "none")  # kft.data.augment
RESIZE_MODES = ("fixed", "keep_aspect")  # kft.data.detection_pipeline.RESIZE_MODES
DETECTION_AUGMENTS = ("none", "ssd", "default", "orientation", "")  # kft.tasks.detection._augment ("" = none)
BATCH_AUGMENTS = ("none", "cutmix", "mosaic")  # kft.data.detection_augment.BATCH_AUGMENTS
CLS_LOSSES = ("ce", "focal")  # kft.losses.ssd_multibox_loss
BOX_LOSSES = ("smooth_l1", "giou")
HEADS = ("linear", "mlp")  # kft.models.heads.classification.classification_head
GENERATORS = ("", "shapes")  # kft.tasks.classification.prepare_data, kft.tasks.detection.generate_shapes
# What train.monitor can watch: the metrics a task logs per epoch (history.csv).
CLASSIFICATION_METRICS = ("loss", "accuracy", "top5_accuracy", "macro_f1")  # compile_model
DETECTION_LOG_KEYS = ("bbox_AP", "bbox_AP50", "bbox_AP75")  # kft.eval.detection.LOG_KEYS
VOC_LOG_KEYS = ("voc07_mAP", "voc_area_mAP")  # kft.eval.detection.VOC_LOG_KEYS
MONITORS = {
    "classification": ("",) + tuple(p + m for p in ("val_", "") for m in CLASSIFICATION_METRICS),
    "detection": ("", "loss", "cls_loss", "box_loss", "rpn_objectness", "rpn_box", "roi_cls",
                  "roi_box") + tuple("val_" + k for k in DETECTION_LOG_KEYS),
}
VOC_MONITORS = tuple("val_" + k for k in VOC_LOG_KEYS)


# ---------------------------------------------------------------------------------------------
# Rule kinds


def _show(value: Any) -> str:
    """A value as a user would write it after ``--set key=``."""
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value) if value else "()"
    return repr(value)


def _choices_text(choices: Iterable) -> str:
    return ", ".join("''" if c == "" else str(c) for c in choices)


@dataclass(frozen=True)
class OneOf:
    """The value is one of ``choices``."""

    choices: tuple

    def check(self, key: str, value: Any, recipe: cfg.Recipe) -> None:
        if value in self.choices:
            return
        close = difflib.get_close_matches(str(value), [str(c) for c in self.choices if c], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{key}={_show(value)} is not valid: choose one of "
                          f"{_choices_text(self.choices)}{hint}")


@dataclass(frozen=True)
class Range:
    """``lo <= value <= hi`` (``<`` where open); NaN never passes."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def ok(self, value) -> bool:
        if isinstance(value, float) and math.isnan(value):
            return False
        if self.lo is not None and not (value > self.lo if self.lo_open else value >= self.lo):
            return False
        return self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)

    def text(self) -> str:
        if self.hi is None:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        if self.lo is None:
            return f"{'<' if self.hi_open else '<='} {self.hi:g}"
        return (f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}"
                f"{')' if self.hi_open else ']'}")

    def check(self, key: str, value: Any, recipe: cfg.Recipe) -> None:
        if not self.ok(value):
            raise ConfigError(f"{key}={_show(value)} is out of range: must be {self.text()}")


@dataclass(frozen=True)
class Each:
    """Every item of a tuple (or every value of a dict) passes ``rule``."""

    rule: Range

    def check(self, key: str, value: Any, recipe: cfg.Recipe) -> None:
        items = value.values() if isinstance(value, dict) else value
        for item in _flatten(items):
            if not self.rule.ok(item):
                raise ConfigError(f"{key}={_show(value)}: item {item!r} is out of range: every "
                                  f"item must be {self.rule.text()}")


@dataclass(frozen=True)
class SubsetOf:
    """A tuple of distinct values of ``choices``; empty only when ``allow_empty``."""

    choices: tuple
    allow_empty: bool = False

    def check(self, key: str, value: Any, recipe: cfg.Recipe) -> None:
        bad = [v for v in value if v not in self.choices]
        if bad or len(set(value)) != len(value) or (not value and not self.allow_empty):
            what = f"unknown {', '.join(map(repr, bad))}" if bad else (
                "repeated values" if value else "empty")
            raise ConfigError(f"{key}={_show(value)} is not valid ({what}): give a "
                              f"{'' if self.allow_empty else 'non-empty '}comma-separated "
                              f"list of distinct values from {_choices_text(self.choices)}")


@dataclass(frozen=True)
class Pattern:
    """The string matches ``regex`` (``""`` always passes when ``allow_empty``)."""

    regex: str
    description: str
    allow_empty: bool = True

    def check(self, key: str, value: Any, recipe: cfg.Recipe) -> None:
        if value == "" and self.allow_empty:
            return
        if not re.fullmatch(self.regex, value):
            raise ConfigError(f"{key}={_show(value)} is not valid: must be {self.description}")


@dataclass(frozen=True)
class ByTask:
    """A rule that depends on ``recipe.task``."""

    rules: dict

    def check(self, key: str, value: Any, recipe: cfg.Recipe) -> None:
        rule = self.rules.get(recipe.task)
        if rule is not None:
            try:
                rule.check(key, value, recipe)
            except ConfigError as e:
                raise ConfigError(f"{e} (task={recipe.task})") from None


@dataclass(frozen=True)
class SpecialOr:
    """One of the ``special`` values (``0`` = auto, ...) or a value within ``rule``."""

    special: dict  # value -> what it means
    rule: Range

    def check(self, key: str, value: Any, recipe: cfg.Recipe) -> None:
        if value in self.special or self.rule.ok(value):
            return
        meanings = ", ".join(f"{v:g} ({m})" for v, m in self.special.items())
        raise ConfigError(f"{key}={_show(value)} is out of range: must be {self.rule.text()} "
                          f"or {meanings}")


def _flatten(items):
    for item in items:
        if isinstance(item, (tuple, list)):
            yield from _flatten(item)
        else:
            yield item


NON_EMPTY = Pattern(r".+", "a non-empty string", allow_empty=False)
POSITIVE = Range(0, lo_open=True)
NON_NEGATIVE = Range(0)
AT_LEAST_1 = Range(1)
FRACTION = Range(0, 1)  # [0, 1]
FRACTION_OPEN = Range(0, 1, hi_open=True)  # [0, 1)

# ---------------------------------------------------------------------------------------------
# The table

RULES: dict[str, Any] = {
    "name": NON_EMPTY,
    "task": OneOf(TASKS),
    # data
    "data.image_size": ByTask({"classification": SpecialOr(
        {0: "from model.load_from's run, else 224"}, AT_LEAST_1), "detection": AT_LEAST_1}),
    "data.val_fraction": FRACTION_OPEN,
    "data.train_split": NON_EMPTY,
    "data.val_split": NON_EMPTY,
    "data.splits": Pattern(r"[^,\s]+\s*,\s*[^,\s]+", "two split names 'TRAIN,VAL', e.g. "
                           "train,val"),
    "data.augment": OneOf(AUGMENT_PRESETS),
    "data.min_side": NON_NEGATIVE,
    "data.shuffle_buffer": AT_LEAST_1,
    "data.generate": OneOf(GENERATORS),
    "data.generate_num_train": AT_LEAST_1,
    "data.generate_num_val": AT_LEAST_1,
    "data.format": ByTask({"detection": OneOf(AUTO_FORMATS + DETECTION_FORMATS)}),
    "data.resize": OneOf(RESIZE_MODES),
    "data.max_instances": AT_LEAST_1,
    "data.detection_augment": OneOf(DETECTION_AUGMENTS),
    "data.batch_augment": OneOf(BATCH_AUGMENTS),
    # model
    "model.arch": ByTask({"classification": OneOf(("",) + tuple(RESNET_STAGES)),
                          "detection": OneOf(SSD_ARCHS + FRCNN_ARCHS)}),
    "model.load_from_hash": Pattern(r"sha256:[0-9a-fA-F]{64}|md5:[0-9a-fA-F]{32}",
                                    "'sha256:<64 hex digits>' or 'md5:<32 hex digits>'"),
    "model.num_classes": NON_NEGATIVE,
    "model.head": OneOf(HEADS),
    "model.head_units": AT_LEAST_1,
    "model.dropout": FRACTION_OPEN,
    "model.se_reduction": AT_LEAST_1,
    "model.ssd.sizes": Each(POSITIVE),
    "model.ssd.aspect_ratios": Each(POSITIVE),
    "model.ssd.steps": Each(POSITIVE),
    "model.width_multiplier": POSITIVE,
    "model.bn_momentum": SpecialOr({0: "auto from the run length", -1: "keep the network's"},
                                   Range(0, 1, lo_open=True, hi_open=True)),
    # train
    "train.epochs": SpecialOr({0: "auto, kft.train.plan"}, AT_LEAST_1),
    "train.batch_size": SpecialOr({0: "auto, kft.train.plan"}, AT_LEAST_1),
    "train.seed": NON_NEGATIVE,
    "train.optimizer": OneOf(OPTIMIZERS),
    "train.learning_rate": SpecialOr({0: "auto, kft.train.plan"}, POSITIVE),
    "train.momentum": FRACTION_OPEN,
    "train.weight_decay": NON_NEGATIVE,
    "train.weight_decay_mode": OneOf(WEIGHT_DECAY_MODES),
    "train.schedule": OneOf(SCHEDULES),
    "train.restart_epochs": SpecialOr({0: "the whole run"}, POSITIVE),
    "train.restart_mult": POSITIVE,
    "train.min_lr": NON_NEGATIVE,
    "train.warmup_steps": NON_NEGATIVE,
    "train.warmup_epochs": NON_NEGATIVE,
    "train.head_epochs": NON_NEGATIVE,
    "train.backbone_lr_scale": NON_NEGATIVE,
    "train.warmup_factor": FRACTION,
    "train.milestones": Each(NON_NEGATIVE),
    "train.gamma": POSITIVE,
    "train.step_epochs": NON_NEGATIVE,
    "train.clipnorm": NON_NEGATIVE,
    "train.mixed_precision": OneOf(PRECISIONS),
    "train.grad_accum_steps": AT_LEAST_1,
    "train.label_smoothing": FRACTION_OPEN,
    "train.unfreeze_every": NON_NEGATIVE,
    "train.unfreeze_per_round": AT_LEAST_1,
    "train.layer_lrs": Each(NON_NEGATIVE),
    "train.early_stopping_patience": NON_NEGATIVE,
    "train.monitor": ByTask({"classification": OneOf(MONITORS["classification"]),
                             "detection": OneOf(MONITORS["detection"] + VOC_MONITORS)}),
    "train.cls_loss": OneOf(CLS_LOSSES),
    "train.box_loss": OneOf(BOX_LOSSES),
    "train.cls_weight": NON_NEGATIVE,
    "train.loc_weight": NON_NEGATIVE,
    "model.ssd.neg_pos_ratio": POSITIVE,
    "model.ssd.iou_threshold": Range(0, 1, lo_open=True),
    "model.frcnn.anchor_sizes": Each(POSITIVE),
    "model.frcnn.aspect_ratios": Each(POSITIVE),
    "model.frcnn.rpn_nms_threshold": Range(0, 1, lo_open=True),
    "model.frcnn.rpn_pre_nms_top_n": Each(AT_LEAST_1),
    "model.frcnn.rpn_post_nms_top_n": Each(AT_LEAST_1),
    "model.frcnn.rpn_batch_size_per_image": AT_LEAST_1,
    "model.frcnn.box_batch_size_per_image": AT_LEAST_1,
    "model.frcnn.box_positive_fraction": Range(0, 1, lo_open=True),
    "model.frcnn.representation_size": NON_NEGATIVE,
    "model.frcnn.ohem_fraction": FRACTION_OPEN,
    "data.max_size": NON_NEGATIVE,
    # eval
    "eval.batch_size": AT_LEAST_1,
    "eval.every": NON_NEGATIVE,  # 0: no evaluation during training
    "eval.score_threshold": FRACTION,
    "eval.nms_iou_threshold": FRACTION,
    "eval.max_detections": AT_LEAST_1,
    # export
    "export.quantize": SubsetOf(EXPORT_FORMATS, allow_empty=True),  # () only when disabled
    "export.representative_samples": AT_LEAST_1,
}

# Keys that only one task reads (kft/tasks/classification.py, kft/tasks/detection.py); every
# other key is read by both. A key added to kft.config belongs in one of these or in SHARED_KEYS
# (tests/test_validate.py checks that every key is placed).
TASK_ONLY: dict[str, frozenset[str]] = {
    "classification": frozenset({
        "data.tfds_data_dir", "data.tfds_download", "data.augment",
        "data.min_side", "data.shuffle_buffer",
        "model.head", "model.head_units", "model.dropout",
    }),
    "detection": frozenset({
        "data.generate_num_train", "data.generate_num_val", "data.format", "data.val_root",
        "data.image_dir",
        "data.class_names", "data.resize", "data.max_instances", "data.detection_augment",
        "data.batch_augment",
        "model.backbone_weights", "model.width_multiplier",
        "model.ssd.sizes", "model.ssd.aspect_ratios", "model.ssd.steps",
        "model.ssd.iou_threshold", "model.ssd.neg_pos_ratio",
        "model.frcnn.anchor_sizes", "model.frcnn.aspect_ratios", "model.frcnn.rpn_nms_threshold",
        "model.frcnn.rpn_pre_nms_top_n", "model.frcnn.rpn_post_nms_top_n",
        "model.frcnn.rpn_batch_size_per_image", "model.frcnn.box_batch_size_per_image",
        "model.frcnn.box_positive_fraction", "model.frcnn.representation_size",
        "model.frcnn.ohem_fraction", "model.frcnn.fit_anchors", "data.max_size",
        "model.separable_stages",
        "train.cls_loss", "train.box_loss", "train.cls_weight", "train.loc_weight",
        "eval.every", "eval.score_threshold", "eval.nms_iou_threshold", "eval.max_detections",
    }),
}
SHARED_KEYS = frozenset({
    "name", "task", "description",
    "data.root", "data.image_size", "data.val_fraction", "data.train_split", "data.val_split",
    "data.splits",
    "data.cache",
    "data.generate",
    "model.arch", "model.preset", "model.load_from", "model.load_from_hash", "model.num_classes",
    "model.bn_momentum", "model.se_stages", "model.se_reduction",
    "train.epochs", "train.batch_size", "train.seed", "train.optimizer", "train.learning_rate",
    "train.momentum", "train.nesterov", "train.weight_decay", "train.weight_decay_mode",
    "train.schedule", "train.restart_epochs", "train.restart_mult", "train.min_lr",
    "train.warmup_steps", "train.warmup_epochs", "train.warmup_factor", "train.milestones",
    "train.gamma", "train.head_epochs", "train.backbone_lr_scale",
    "train.step_epochs", "train.clipnorm", "train.mixed_precision", "train.grad_accum_steps",
    "train.label_smoothing", "train.trainable_stages", "train.unfreeze_every",
    "train.unfreeze_per_round", "train.layer_lrs", "train.early_stopping_patience",
    "train.monitor", "train.jit_compile",
    "eval.batch_size", "eval.plots",
    "export.enabled", "export.quantize", "export.representative_samples",
})

# Keys that decide the model or the data a run trained on: --resume refuses to change them.
# the splits, their held-out shares and train.seed (which draws them) too: a resumed run
# must not train on images its first part validated on
RESUME_FIXED = ("task", "data.root", "data.val_root", "data.format", "data.class_names",
                "data.image_size", "data.train_split", "data.val_split", "data.splits",
                "data.val_fraction", "train.seed", "model.")


# ---------------------------------------------------------------------------------------------
# Entry point


def validate_recipe(recipe: cfg.Recipe, set_keys: Iterable[str] = (),
                    check_model: bool = True) -> None:
    """Raises :class:`ConfigError` (one line: key, value, what is valid) for the first value
    of ``recipe`` that cannot work.

    Args:
        recipe: the resolved recipe (overrides applied).
        set_keys: dotted keys named on the command line (``--set``); these count as used even
            when equal to their default, so ``--set data.detection_augment=ssd`` on a
            classification recipe is refused too.
        check_model: False when the model comes from a file (``kft eval/export`` of a bare
            ``.keras``): ``model.*`` keys are then not checked.
    """
    if not isinstance(recipe, cfg.Recipe):
        raise ConfigError(f"expected a kft.config.Recipe, got {type(recipe).__name__}")
    recipe = cfg.normalized(recipe)
    values = dict(cfg.flat_items(recipe))
    defaults = dict(cfg.flat_items(cfg.Recipe()))
    hints = dict(_hints(cfg.Recipe))
    RULES["task"].check("task", recipe.task, recipe)
    explicit = set(set_keys)
    for key, value in values.items():
        if not check_model and key.startswith("model."):
            continue
        hint = hints.get(key)
        if hint is not None and not _type_ok(value, hint):
            raise ConfigError(f"{key}={value!r} has the wrong type: expected "
                              f"{cfg._type_name(hint)}")
        _check_task_use(recipe.task, key, value, defaults.get(key), key in explicit)
        rule = RULES.get(key)
        if rule is not None:
            rule.check(key, value, recipe)
    for check in _CROSS_CHECKS:
        if check_model or not check.__name__.startswith("_model"):
            check(recipe)


def check_formats(key: str, formats) -> None:
    """A non-empty list of distinct TFLite export formats (``kft export --formats``)."""
    SubsetOf(EXPORT_FORMATS).check(key, tuple(formats), None)


def task_of_key(key: str) -> str | None:
    """The only task that reads ``key``, or None when both do."""
    for task, keys in TASK_ONLY.items():
        if key in keys:
            return task
    return None


# Values that a run settles from its data (kft.train.plan, the task's read): a recipe still
# holding them resumes a run whose config.json holds what they were settled to.
AUTO_VALUES = {"data.format": AUTO_FORMATS, "data.class_names": ((),), "model.bn_momentum": (0,)}


def resume_differences(recipe: cfg.Recipe, saved: cfg.Recipe) -> list[str]:
    """``key (saved -> new)`` for each key of ``RESUME_FIXED`` that differs (a key the new
    recipe leaves to be settled from the data, :data:`AUTO_VALUES`, does not)."""
    new, old = dict(cfg.flat_items(recipe)), dict(cfg.flat_items(saved))
    out = []
    for key in new:
        fixed = any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUME_FIXED)
        if _normal(new[key]) in AUTO_VALUES.get(key, ()):
            continue
        if fixed and _normal(new[key]) != _normal(old.get(key)):
            out.append(f"{key} ({_show(old.get(key))} -> {_show(new[key])})")
    return out


# ---------------------------------------------------------------------------------------------
# Helpers


def _hints(cls, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            yield from _hints(hint, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", hint


def _normal(value):
    if isinstance(value, (list, tuple)):
        return tuple(_normal(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _normal(v)) for k, v in value.items()))
    return value


def _type_ok(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple:
        item = typing.get_args(hint)[0]
        return isinstance(value, (tuple, list)) and all(_type_ok(v, item) for v in value)
    if origin is dict:
        _, item = typing.get_args(hint)
        return isinstance(value, dict) and all(
            isinstance(k, str) and _type_ok(v, item) for k, v in value.items())
    return True


def _check_task_use(task: str, key: str, value: Any, default: Any, explicit: bool) -> None:
    owner = task_of_key(key)
    if owner is None or owner == task:
        return
    if explicit or _normal(value) != _normal(default):
        raise ConfigError(f"{key}={_show(value)} is not used by task {task!r} (only {owner} "
                          f"recipes read it): remove it, or set task={owner}")


# ---------------------------------------------------------------------------------------------
# Rules between keys


def _data_root(r: cfg.Recipe) -> None:
    if not r.data.root:
        raise ConfigError("data.root is empty: set --set data.root=<dataset folder"
                          f"{' or tfds:name' if r.task == 'classification' else ''}>")


def _detection_format(r: cfg.Recipe) -> None:
    if r.task == "detection" and r.data.generate and r.data.format not in ("voc", "coco"):
        raise ConfigError(f"data.generate={r.data.generate!r} writes VOC and COCO layouts: "
                          f"data.format={r.data.format!r} must be voc or coco")


def _export_formats(r: cfg.Recipe) -> None:
    if r.export.enabled and not r.export.quantize:
        raise ConfigError(f"export.quantize=() is empty but export.enabled=true: name the "
                          f"formats ({','.join(EXPORT_FORMATS)}) or set export.enabled=false")


def _step_schedule(r: cfg.Recipe) -> None:
    if r.train.schedule == "step" and r.train.step_epochs < 1:
        raise ConfigError(f"train.step_epochs={r.train.step_epochs}: train.schedule=step needs "
                          "train.step_epochs >= 1 (the decay period in epochs)")


def _model_hash(r: cfg.Recipe) -> None:
    if r.model.load_from_hash and not r.model.load_from:
        raise ConfigError(f"model.load_from_hash={r.model.load_from_hash!r} is set but "
                          "model.load_from is empty: nothing to check it against")


def _model_stages(r: cfg.Recipe) -> None:
    """Classification stage names: ``stem``, ``layer1`` ... ``layerN`` of the ResNet (a
    keras-hub preset may differ: checked when the model is built)."""
    t = r.train
    if r.task != "classification" or r.model.preset or r.model.arch not in RESNET_STAGES:
        return
    stages = ["stem"] + [f"layer{i + 1}" for i in range(RESNET_STAGES[r.model.arch])]
    chosen = tuple(t.trainable_stages)
    if chosen not in ((), ("all",), ("none",)):
        bad = [s for s in chosen if s not in stages]
        if bad:
            raise ConfigError(f"train.trainable_stages={_show(chosen)}: unknown "
                              f"{', '.join(bad)} for model.arch={r.model.arch}: choose from "
                              f"all, none or {', '.join(stages)}")
    bad = [s for s in t.layer_lrs if s not in stages + ["head"]]
    if bad:
        raise ConfigError(f"train.layer_lrs: unknown stage {bad[0]!r} for model.arch="
                          f"{r.model.arch}: choose from {', '.join(stages + ['head'])}")
    bad = [s for s in r.model.se_stages if s not in stages[1:]]
    if bad:
        raise ConfigError(f"model.se_stages={_show(r.model.se_stages)}: unknown {', '.join(bad)}"
                          f" for model.arch={r.model.arch}: choose from {', '.join(stages[1:])}")


def _selection_needs_evaluation(r: cfg.Recipe) -> None:
    if r.task == "detection" and r.train.early_stopping_patience > 0 and r.eval.every == 0:
        raise ConfigError(f"eval.every=0 (no in-training evaluation) but "
                          f"train.early_stopping_patience={r.train.early_stopping_patience} "
                          "selects on it: set eval.every >= 1 or early_stopping_patience=0")


def _holdout_val_split(r: cfg.Recipe) -> None:
    """``data.val_split="holdout"`` (detection): a share of the training split, so no other
    validation root, and a share that holds out something."""
    d = r.data
    if d.val_split != "holdout":
        return
    if r.task != "detection":
        raise ConfigError("data.val_split='holdout' is for detection; an image folder without "
                          "val/ holds out data.val_fraction of train/ by itself")
    if d.val_root:
        raise ConfigError(f"data.val_split='holdout' takes the validation images from "
                          f"data.train_split, not from data.val_root={d.val_root!r}: remove "
                          "one of the two")
    if not d.val_fraction > 0:
        raise ConfigError(f"data.val_fraction={d.val_fraction:g} holds out nothing: "
                          "data.val_split='holdout' needs a value in (0, 1), e.g. 0.1")


def _monitor(r: cfg.Recipe) -> None:
    if (r.task == "detection" and r.train.monitor in VOC_MONITORS
            and r.data.format not in ("voc",) + AUTO_FORMATS):
        raise ConfigError(f"train.monitor={r.train.monitor!r} is logged for data.format=voc "
                          f"only: choose one of {_choices_text(MONITORS['detection'])}")


def _schedule_lengths(r: cfg.Recipe) -> None:
    """Warm-up in one unit, shorter than the run; the head-only phase shorter than the run
    and not combined with progressive unfreezing."""
    t = r.train
    if t.warmup_epochs > 0 and t.warmup_steps > 0:
        raise ConfigError(f"train.warmup_epochs={t.warmup_epochs:g} and train.warmup_steps="
                          f"{t.warmup_steps} are both set: give the warm-up in one of them")
    if t.epochs and t.warmup_epochs >= t.epochs:
        raise ConfigError(f"train.warmup_epochs={t.warmup_epochs:g} is as long as the run "
                          f"(train.epochs={t.epochs}): the learning rate would never reach "
                          f"train.learning_rate; set train.warmup_epochs below {t.epochs} "
                          "(a fraction works) or train.epochs higher")
    if t.head_epochs and t.unfreeze_every:
        raise ConfigError(f"train.head_epochs={t.head_epochs} and train.unfreeze_every="
                          f"{t.unfreeze_every} are two freezing schedules: use one")
    # without pretrained weights the run plan drops the head-only phase (nothing to freeze)
    if t.epochs and t.head_epochs >= t.epochs and r.model.pretrained:
        raise ConfigError(f"train.head_epochs={t.head_epochs} leaves no epoch to fine-tune "
                          f"the backbone (train.epochs={t.epochs}): set train.head_epochs "
                          f"below {t.epochs} or train.epochs above {t.head_epochs}")


def _model_detector_family(r: cfg.Recipe) -> None:
    """``model.ssd.*`` only with an SSD, ``model.frcnn.*`` and ``data.max_size`` only with a
    Faster R-CNN; a Faster R-CNN's image sizes are multiples of 32 (its FPN strides)."""
    if r.task != "detection" or not r.model.arch:
        return
    frcnn = r.model.arch in FRCNN_ARCHS
    default = cfg.Recipe()
    for section, used in (("ssd", not frcnn), ("frcnn", frcnn)):
        ours, base = getattr(r.model, section), getattr(default.model, section)
        for f in fields(ours):
            if not used and _normal(getattr(ours, f.name)) != _normal(getattr(base, f.name)):
                raise ConfigError(f"model.{section}.{f.name}={_show(getattr(ours, f.name))} is "
                                  f"not used by model.arch={r.model.arch}: remove it")
    if r.model.preset and (not frcnn or r.model.arch == "fasterrcnn_mobilenet_v3_large_fpn"):
        raise ConfigError(f"model.preset={r.model.preset!r} is not used by model.arch="
                          f"{r.model.arch} (keras-hub ResNet presets: classifiers and the "
                          "ResNet Faster R-CNNs); use model.backbone_weights")
    resnet_body = frcnn and r.model.arch != "fasterrcnn_mobilenet_v3_large_fpn"
    for key in ("se_stages", "separable_stages"):
        chosen = tuple(getattr(r.model, key))
        if chosen and not resnet_body:
            raise ConfigError(f"model.{key}={_show(chosen)} (M6 backbone surgery) is for the "
                              "ResNet classifiers and the ResNet / ResNeXt Faster R-CNNs, not "
                              f"model.arch={r.model.arch}")
        stages = [f"layer{i + 1}" for i in
                  range(3 if r.model.arch == "fasterrcnn_resnet_tiny_fpn" else 4)]
        bad = [s for s in chosen if s not in stages]
        if bad:
            raise ConfigError(f"model.{key}={_show(chosen)}: unknown {', '.join(bad)} for "
                              f"model.arch={r.model.arch}: choose from {', '.join(stages)}")
    if r.model.preset and r.model.arch == "fasterrcnn_resnext101_32x8d_fpn":
        raise ConfigError(f"model.preset={r.model.preset!r}: keras-hub has no ResNeXt; give "
                          "torchvision's resnext101_32x8d ImageNet state dict as "
                          "model.backbone_weights (.npz, or .pth with torch)")
    if not frcnn:
        if r.data.max_size:
            raise ConfigError(f"data.max_size={r.data.max_size} is only read by Faster R-CNN "
                              f"(model.arch={r.model.arch} stretches to data.image_size)")
        return
    size, longest = r.data.image_size, r.data.max_size or r.data.image_size
    if size % 32 and r.data.resize == "fixed":
        raise ConfigError(f"data.image_size={size}: model.arch={r.model.arch} with "
                          "data.resize=fixed needs a multiple of 32 (the FPN strides)")
    if longest < size:
        raise ConfigError(f"data.max_size={r.data.max_size} is below data.image_size={size}: "
                          "the long side cannot be shorter than the short side")
    if r.data.resize == "fixed" and r.data.max_size:
        raise ConfigError("data.max_size applies to data.resize=keep_aspect only")
    rpn = r.model.frcnn
    if rpn.fit_anchors and (rpn.anchor_sizes or not resnet_body):
        raise ConfigError("model.frcnn.fit_anchors=True fits one size per level of a ResNet / "
                          "ResNeXt FPN: " + ("remove model.frcnn.anchor_sizes (it would be "
                                             "replaced)" if rpn.anchor_sizes else
                                             f"not model.arch={r.model.arch}"))
    if len(rpn.rpn_pre_nms_top_n) != 2 or len(rpn.rpn_post_nms_top_n) != 2:
        raise ConfigError("model.frcnn.rpn_pre_nms_top_n / rpn_post_nms_top_n take two numbers "
                          "(training, testing), e.g. (2000, 1000)")


_CROSS_CHECKS: tuple[Callable[[cfg.Recipe], None], ...] = (
    _data_root, _detection_format, _export_formats, _step_schedule, _model_hash, _model_stages,
    _selection_needs_evaluation, _holdout_val_split, _monitor, _schedule_lengths,
    _model_detector_family)
