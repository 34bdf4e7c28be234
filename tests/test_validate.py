"""kft.validate: every recipe value is checked before any work starts (issue 8, B7 and B12)."""

import dataclasses
from pathlib import Path

import pytest

from kft import config as cfg
from kft import validate as v
from kft.validate import validate_recipe

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "recipes").glob("*.py"))


def _classify(*overrides):
    return cfg.apply_overrides(cfg.Recipe(data=cfg.Data(root="/data")), list(overrides))


def _detect(*overrides):
    base = cfg.Recipe(task="detection", data=cfg.Data(root="/voc", format="voc"),
                      model=cfg.Model(arch="ssd300_vgg16"))
    return cfg.apply_overrides(base, list(overrides))


def _error(recipe, set_keys=()) -> str:
    with pytest.raises(cfg.ConfigError) as e:
        validate_recipe(recipe, set_keys=set_keys)
    message = str(e.value)
    assert "\n" not in message, message  # one line
    return message


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path):
    recipe = cfg.load_recipe(path)
    if not recipe.data.root:  # the VOC recipes take it on the command line
        recipe = cfg.apply_overrides(recipe, ["data.root=/data/VOCdevkit/VOC2007"])
    validate_recipe(recipe)


def test_defaults_validate():
    validate_recipe(_classify())
    validate_recipe(_detect())


# key=value, task, words the message must hold (key, value, valid choices or range)
BAD = [
    ("export.quantize=none", "classification", ["export.quantize=none", "float32, float16, int8"]),
    ("export.quantize=int4", "detection", ["export.quantize=int4", "float32, float16, int8"]),
    ("export.quantize=int8,int8", "classification", ["export.quantize", "repeated"]),
    ("export.quantize=", "classification", ["export.quantize=()", "export.enabled=false"]),
    ("train.optimizer=adamx", "classification", ["train.optimizer='adamx'", "sgd, adamw, adam"]),
    ("model.arch=resnet19", "classification", ["model.arch='resnet19'", "resnet18", "resnet_tiny"]),
    ("model.arch=resnet50", "detection", ["model.arch='resnet50'", "ssd300_vgg16",
                                          "ssdlite_mobilenet_v3"]),
    ("train.schedule=cosine", "classification", ["train.schedule='cosine'", "cosine_restarts",
                                                 "warmup_multistep"]),
    ("eval.every=-1", "detection", ["eval.every=-1", ">= 0"]),
    ("train.learning_rate=-1", "classification", ["train.learning_rate=-1.0", "> 0"]),
    ("train.learning_rate=-0.1", "detection", ["train.learning_rate=-0.1", "> 0", "0 (auto"]),
    ("train.learning_rate=nan", "classification", ["train.learning_rate=nan", "> 0"]),
    ("train.epochs=-1", "classification", ["train.epochs=-1", ">= 1", "0 (auto"]),
    ("train.batch_size=-2", "detection", ["train.batch_size=-2", ">= 1"]),
    ("model.bn_momentum=1.5", "detection", ["model.bn_momentum=1.5", "-1 (keep"]),
    ("data.augment=d4", "classification", ["data.augment='d4'", "natural, orientation"]),
    ("data.splits=train", "detection", ["data.splits='train'", "TRAIN,VAL"]),
    ("train.warmup_epochs=12", "classification", ["train.warmup_epochs=12", "as long as",
                                                  "set train.warmup_epochs below 10"]),
    ("train.head_epochs=10;model.load_from=/runs/source/model.keras", "classification",
     ["train.head_epochs=10", "no epoch", "train.head_epochs below 10"]),
    ("data.val_fraction=1", "classification", ["data.val_fraction=1.0", "[0, 1)"]),
    ("data.val_split=holdout", "classification", ["data.val_split='holdout'", "detection"]),
    ("data.val_split=holdout;data.val_root=/voc07", "detection",
     ["data.val_split='holdout'", "data.val_root='/voc07'"]),
    ("data.val_split=holdout;data.val_fraction=0", "detection",
     ["data.val_fraction=0", "(0, 1)"]),
    ("train.grad_accum_steps=0", "classification", ["train.grad_accum_steps=0", ">= 1"]),
    ("train.weight_decay=-0.1", "classification", ["train.weight_decay=-0.1", ">= 0"]),
    ("train.clipnorm=-1", "detection", ["train.clipnorm=-1.0", ">= 0"]),
    ("train.momentum=1", "classification", ["train.momentum=1.0", "[0, 1)"]),
    ("eval.score_threshold=1.5", "detection", ["eval.score_threshold=1.5", "[0, 1]"]),
    ("eval.nms_iou_threshold=-0.1", "detection", ["eval.nms_iou_threshold", "[0, 1]"]),
    ("eval.max_detections=0", "detection", ["eval.max_detections=0", ">= 1"]),
    ("train.mixed_precision=fp16", "classification", ["train.mixed_precision='fp16'",
                                                      "float16, bfloat16"]),
    ("task=segmentation", "classification", ["task='segmentation'", "classification, detection"]),
    ("train.weight_decay_mode=l2", "detection", ["train.weight_decay_mode='l2'",
                                                 "decoupled, coupled"]),
    ("data.format=darknet", "detection", ["data.format='darknet'", "voc, coco, yolo"]),
    ("data.resize=stretch", "detection", ["data.resize='stretch'", "fixed, keep_aspect"]),
    ("data.detection_augment=ssd_lite", "detection", ["data.detection_augment='ssd_lite'",
                                                      "none, ssd, default"]),
    ("train.cls_loss=bce", "detection", ["train.cls_loss='bce'", "ce, focal"]),
    ("train.box_loss=l1", "detection", ["train.box_loss='l1'", "smooth_l1, giou"]),
    ("model.head=conv", "classification", ["model.head='conv'", "linear, mlp"]),
    ("train.monitor=val_acc", "classification", ["train.monitor='val_acc'", "val_accuracy",
                                                 "val_macro_f1"]),
    ("train.monitor=val_macro_f1", "detection", ["train.monitor='val_macro_f1'",
                                                 "val_bbox_AP50"]),
    ("data.generate=cifar", "classification", ["data.generate='cifar'", "shapes"]),
    ("model.load_from_hash=sha256:abc", "classification", ["model.load_from_hash='sha256:abc'",
                                                           "sha256:<64 hex digits>"]),
    ("train.schedule=step", "classification", ["train.step_epochs=0", ">= 1"]),
    ("train.trainable_stages=layer5", "classification", ["train.trainable_stages=layer5",
                                                         "layer4"]),
    ('train.layer_lrs={"layer9": 0.1}', "classification", ["train.layer_lrs", "layer9", "head"]),
    ("data.root=", "classification", ["data.root is empty"]),
    ("model.se_stages=layer3", "detection", ["model.se_stages", "M6", "not model.arch=ssd"]),
    ("model.arch=fasterrcnn_resnet50_fpn;model.separable_stages=layer5", "detection",
     ["model.separable_stages", "layer5", "layer1, layer2, layer3, layer4"]),
    ("model.arch=fasterrcnn_mobilenet_v3_large_fpn;model.se_stages=layer3", "detection",
     ["model.se_stages", "not model.arch=fasterrcnn_mobilenet_v3_large_fpn"]),
    ("model.arch=fasterrcnn_resnext101_32x8d_fpn;model.preset=resnet_50_imagenet", "detection",
     ["model.preset", "no ResNeXt", "model.backbone_weights"]),
    ("name=", "classification", ["name=''", "non-empty"]),
]


@pytest.mark.parametrize("override,task,words", BAD, ids=[b[0] for b in BAD])
def test_bad_value_is_one_line_naming_key_value_and_choices(override, task, words):
    overrides = override.split(";")
    recipe = (_classify if task == "classification" else _detect)(*overrides)
    message = _error(recipe)
    for word in words:
        assert word in message, (word, message)


@pytest.mark.parametrize("good", ["eval.every=0", "eval.every=5", "export.quantize=int8",
                                  "train.schedule=step,train.step_epochs=2",
                                  "train.mixed_precision=bfloat16", "data.detection_augment=none",
                                  "train.monitor=val_voc07_mAP", "train.weight_decay_mode=coupled",
                                  "train.label_smoothing=0.1", "train.layer_lrs={\"x\": 0.1}"])
def test_valid_detection_values_pass(good):
    # eval.every=0 is valid: no in-training evaluation
    overrides = good.split(",") if not good.startswith("train.layer_lrs") else [good]
    validate_recipe(_detect(*overrides))


def test_head_epochs_as_long_as_the_run_is_fine_without_pretrained_weights():
    # finetune_classify.py from scratch: the run plan drops the head-only phase, so a short
    # run (train.epochs <= head_epochs) is not refused for it
    recipe = _classify("model.arch=resnet_tiny", "train.head_epochs=2", "train.epochs=2")
    validate_recipe(recipe)
    assert "train.head_epochs=2" in _error(
        cfg.apply_overrides(recipe, ["model.load_from=/runs/source/model.keras"]))


def test_empty_quantize_is_fine_when_export_is_disabled():
    validate_recipe(_classify("export.enabled=false", "export.quantize="))


def test_classification_stage_names_follow_the_arch():
    validate_recipe(_classify("model.arch=resnet_tiny", "train.trainable_stages=layer3"))
    message = _error(_classify("model.arch=resnet_tiny", "train.trainable_stages=layer4"))
    assert "layer4" in message and "layer3" in message
    # a keras-hub preset's stages are only known when it is loaded: not checked here
    validate_recipe(_classify("model.preset=resnet_50_imagenet", "train.trainable_stages=layer9"))


def test_voc_monitor_needs_voc_data():
    message = _error(_detect("data.format=coco", "train.monitor=val_voc07_mAP"))
    assert "data.format=voc" in message


def test_early_stopping_needs_in_training_evaluation():
    validate_recipe(_detect("eval.every=0"))
    message = _error(_detect("eval.every=0", "train.early_stopping_patience=3"))
    assert "eval.every=0" in message and "early_stopping_patience=3" in message


def test_hash_without_load_from():
    message = _error(_classify("model.load_from_hash=md5:" + "0" * 32))
    assert "model.load_from is empty" in message


# --- keys a task does not read (B7) -------------------------------------------------------


@pytest.mark.parametrize("override,task", [
    ("data.detection_augment=none", "classification"),
    ("data.format=voc", "classification"),
    ("eval.every=5", "classification"),
    ("train.cls_loss=focal", "classification"),
    ("model.width_multiplier=0.5", "classification"),
    ("model.head=mlp", "detection"),
    ("data.augment=false", "detection"),
    ("model.separable_stages=layer3", "classification"),
])
def test_key_the_task_does_not_read_is_an_error_naming_key_and_task(override, task):
    recipe = (_classify if task == "classification" else _detect)(override)
    key = override.split("=")[0]
    message = _error(recipe)
    assert key in message and f"task {task!r}" in message and "not used" in message


def test_a_key_named_on_the_command_line_counts_even_at_its_default():
    recipe = _classify("data.detection_augment=ssd")  # "ssd" is the default
    validate_recipe(recipe)  # a recipe file cannot be told apart from the default ...
    message = _error(recipe, set_keys=["data.detection_augment"])  # ... --set can
    assert "data.detection_augment='ssd'" in message and "'classification'" in message


def test_shared_keys_are_accepted_by_both_tasks():
    shared = ["train.trainable_stages=none", "train.unfreeze_every=2", "data.val_fraction=0.2",
              "train.unfreeze_per_round=2", "train.label_smoothing=0.1",
              "train.weight_decay_mode=coupled"]
    validate_recipe(_classify(*shared), set_keys=[s.split("=")[0] for s in shared])
    validate_recipe(_detect(*shared, 'train.layer_lrs={"block5": 0.001}'),
                    set_keys=[s.split("=")[0] for s in shared])


def test_every_key_is_placed_once():
    """A new kft.config field must be put in validate.TASK_ONLY or validate.SHARED_KEYS."""
    keys = set(cfg.valid_keys())
    groups = [v.SHARED_KEYS, *v.TASK_ONLY.values()]
    placed = [k for g in groups for k in g]
    assert sorted(set(placed)) == sorted(placed), "a key is in two groups"
    assert keys - set(placed) == set(), "keys placed nowhere"
    assert set(placed) - keys == set(), "placed keys that kft.config does not have"
    assert set(v.RULES) <= keys


def test_wrong_python_type_in_a_recipe_file():
    recipe = dataclasses.replace(_classify(), train=cfg.Train(epochs="3"))
    message = _error(recipe)
    assert "train.epochs='3'" in message and "int" in message
    recipe = dataclasses.replace(_classify(), data=cfg.Data(root="/d", augment=1))
    assert "data.augment" in _error(recipe)


def test_bare_model_file_skips_model_keys():
    recipe = _detect("model.arch=resnet50")  # from a .keras file: the arch is not the recipe's
    with pytest.raises(cfg.ConfigError):
        validate_recipe(recipe)
    validate_recipe(recipe, check_model=False)


def test_resume_differences_name_model_and_data_keys():
    saved = _classify("model.arch=resnet_tiny")
    now = cfg.apply_overrides(saved, ["data.root=/other", "train.epochs=20", "model.head=mlp"])
    diff = v.resume_differences(now, saved)
    assert any(d.startswith("data.root") for d in diff)
    assert any(d.startswith("model.head") for d in diff)
    assert not any(d.startswith("train.epochs") for d in diff)
    assert v.resume_differences(saved, saved) == []
    # what draws the held-out images (data.val_split=holdout, D9 selection) stays fixed too
    held = _detect("data.val_split=holdout")
    for change in ("train.seed=3", "data.val_fraction=0.3", "data.train_split=default"):
        diff = v.resume_differences(cfg.apply_overrides(held, [change]), held)
        assert [d.split(" ")[0] for d in diff] == [change.split("=")[0]], (change, diff)


def test_check_formats():
    v.check_formats("--formats", ("float32", "int8"))
    with pytest.raises(cfg.ConfigError, match="--formats=int4.*float32, float16, int8"):
        v.check_formats("--formats", ("int4",))
    with pytest.raises(cfg.ConfigError, match="empty"):
        v.check_formats("--formats", ())


# --- the choice lists agree with the code that consumes the values ------------------------


def test_choice_lists_match_the_code_constants():
    from kft.data.detection_pipeline import RESIZE_MODES
    from kft.eval.detection import LOG_KEYS, VOC_LOG_KEYS
    from kft.export.tflite import FORMATS
    from kft.models.backbones.resnet import RESNET_ARCHS
    from kft.models.ssd import SSD_ARCHS
    from kft.train.optimizers import _OPTIMIZERS

    assert {a: len(blocks) for a, (_, blocks) in RESNET_ARCHS.items()} == v.RESNET_STAGES
    assert tuple(SSD_ARCHS) == v.SSD_ARCHS
    assert tuple(_OPTIMIZERS) == v.OPTIMIZERS
    assert tuple(FORMATS) == v.EXPORT_FORMATS
    assert tuple(RESIZE_MODES) == v.RESIZE_MODES
    assert tuple(LOG_KEYS) == v.DETECTION_LOG_KEYS
    assert tuple(VOC_LOG_KEYS) == v.VOC_LOG_KEYS
    from kft.data.detection_augment import BATCH_AUGMENTS

    assert tuple(BATCH_AUGMENTS) == v.BATCH_AUGMENTS
    assert cfg.Train().weight_decay_mode in v.WEIGHT_DECAY_MODES


def test_every_choice_is_accepted_by_its_consumer_and_others_are_not():
    import keras

    from kft.models.heads.classification import classification_head
    from kft.tasks.detection import _augment
    from kft.train.runs import set_precision
    from kft.train.schedules import build_schedule

    for schedule in v.SCHEDULES:
        build_schedule(cfg.Train(schedule=schedule, step_epochs=1, milestones=(1,)), 10)
    with pytest.raises(ValueError):
        build_schedule(cfg.Train(schedule="cosine"), 10)
    try:
        for policy in v.PRECISIONS:
            set_precision(policy)
        with pytest.raises(cfg.ConfigError):
            set_precision("fp16")
    finally:
        keras.config.set_dtype_policy("float32")
    for name in v.DETECTION_AUGMENTS:
        _augment(name, seed=0)
    with pytest.raises(cfg.ConfigError):
        _augment("ssd_lite", seed=0)
    from kft.tasks.detection import _batch_augment

    assert _batch_augment("none", 0) is None
    assert [type(_batch_augment(n, 0)).__name__ for n in v.BATCH_AUGMENTS[1:]] == [
        "DetectionCutMix", "DetectionMosaic"]
    with pytest.raises(cfg.ConfigError, match="data.batch_augment='mixup'"):
        _batch_augment("mixup", seed=0)
    features = keras.Input((2, 2, 4))
    for head in v.HEADS:
        classification_head(features, 3, head)
    with pytest.raises(ValueError):
        classification_head(features, 3, "conv")


def test_every_loss_choice_is_accepted_by_the_loss():
    import numpy as np

    from kft.losses import ssd_multibox_loss

    logits = np.zeros((1, 4, 3), "float32")
    deltas = np.zeros((1, 4, 4), "float32")
    cls_t = np.array([[1, 0, 0, 0]], "int32")
    box_t = np.zeros((1, 4, 4), "float32")
    for cls_loss in v.CLS_LOSSES:
        for box_loss in v.BOX_LOSSES:
            ssd_multibox_loss(logits, deltas, cls_t, box_t, cls_loss=cls_loss, box_loss=box_loss)
    with pytest.raises(ValueError):
        ssd_multibox_loss(logits, deltas, cls_t, box_t, cls_loss="bce")
    with pytest.raises(ValueError):
        ssd_multibox_loss(logits, deltas, cls_t, box_t, box_loss="l1")


def test_validation_does_not_load_tensorflow():
    """Checking a recipe takes a fraction of a second: kft.validate imports no TF/Keras."""
    import subprocess
    import sys

    code = ("import sys, kft.validate; "
            "print(any(m in sys.modules for m in ('tensorflow', 'keras')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, check=True).stdout.strip()
    assert out == "False"
