"""kft.train.plan: batch size / epochs / lr / warm-up fitted to the data, BN momentum."""

import dataclasses

import keras
import pytest

from kft import config as cfg
from kft.train.plan import (
    auto_batch_size,
    auto_epochs,
    bn_momentum_for,
    plan_bn_momentum,
    plan_training,
)
from kft.validate import validate_recipe


def _recipe(**train):
    return cfg.Recipe(data=cfg.Data(root="/d"), train=cfg.Train(**train))


def test_the_issue_few_shot_case_loses_no_image():
    """40 images, batch 32 used to run 1 step per epoch and drop 8 images every epoch."""
    recipe, changes, steps = plan_training(_recipe(batch_size=32, epochs=28), 40)
    assert recipe.train.batch_size == 20 and steps == 2
    (change,) = changes
    assert change.key == "train.batch_size" and change.old == 32 and change.new == 20
    assert "40 training images" in change.reason


def test_auto_values_follow_the_documented_rules():
    recipe, changes, steps = plan_training(
        _recipe(batch_size=0, epochs=0, learning_rate=0.0, optimizer="adamw"), 40)
    assert recipe.train.batch_size == auto_batch_size(40) == 8
    assert steps == 5 and recipe.train.epochs == auto_epochs(5) == 60
    assert recipe.train.learning_rate == 1e-3
    assert {c.key for c in changes} == {"train.batch_size", "train.epochs",
                                        "train.learning_rate"}
    assert auto_batch_size(3) == 3 and auto_batch_size(10_000) == 32 and auto_batch_size(100) == 16
    assert auto_epochs(1000) == 10 and auto_epochs(1) == 60


def test_warmup_in_epochs_becomes_steps():
    recipe, changes, steps = plan_training(_recipe(batch_size=10, epochs=5,
                                                   warmup_epochs=1.5), 100)
    assert steps == 10 and recipe.train.warmup_steps == 15
    assert recipe.train.warmup_epochs == 0  # given once: the resolved recipe validates
    validate_recipe(recipe)
    assert any(c.key == "train.warmup_steps" and c.new == 15 for c in changes)


def test_a_warmup_as_long_as_the_run_is_an_error():
    """ssdlite_mobilenet_voc.py used to spend all 555 steps of a 15-epoch run warming up."""
    with pytest.raises(cfg.ConfigError, match="as long as the whole run.*555"):
        plan_training(_recipe(batch_size=32, epochs=15, warmup_steps=1000), 37 * 32)
    # given in epochs, the advice is a shorter warm-up in epochs (1 would be refused here)
    with pytest.raises(cfg.ConfigError, match=r"smaller train.warmup_epochs \(below 1\)"):
        plan_training(_recipe(batch_size=10, epochs=1, warmup_epochs=0.99), 100)


def test_bn_momentum_follows_the_run_length():
    assert bn_momentum_for(555) == pytest.approx(1 - 20 / 555)
    assert bn_momentum_for(10) == 0.9 and bn_momentum_for(10**6) == 0.999
    inputs = keras.Input((4,))
    x = keras.layers.BatchNormalization(momentum=0.999)(inputs)
    x = keras.layers.BatchNormalization(momentum=0.9)(x)
    model = keras.Model(inputs, x)
    change = plan_bn_momentum(model, 0.0, 555)
    slow, fast = [layer for layer in model.layers if "batch" in layer.name]
    assert slow.momentum == pytest.approx(1 - 20 / 555) and fast.momentum == 0.9  # not raised
    assert change.key == "model.bn_momentum" and "1 of 2" in change.reason
    assert plan_bn_momentum(model, -1.0, 555) is None  # keep
    plan_bn_momentum(model, 0.5, 555)
    assert slow.momentum == fast.momentum == 0.5


def test_config_json_records_what_was_resolved(tmp_path):
    recipe, changes, _ = plan_training(_recipe(batch_size=32), 40)
    path = tmp_path / "config.json"
    cfg.save_json(recipe, path, resolved={c.key: c.to_dict() for c in changes})
    assert cfg.resolved_record(path)["train.batch_size"]["to"] == 20
    assert cfg.from_dict(__import__("json").loads(path.read_text())).train.batch_size == 20


def test_legacy_augment_bool_still_works():
    recipe = cfg.normalized(dataclasses.replace(cfg.Recipe(), data=cfg.Data(augment=True)))
    assert recipe.data.augment == "guide"
    assert cfg.apply_overrides(cfg.Recipe(), ["data.augment=false"]).data.augment == "none"
    split = cfg.apply_overrides(cfg.Recipe(), ["data.splits=train, val"])
    assert (split.data.train_split, split.data.val_split) == ("train", "val")


def test_the_fine_tuning_policy_is_off_without_pretrained_weights():
    recipe, changes, _ = plan_training(_recipe(batch_size=4, head_epochs=2,
                                               backbone_lr_scale=0.1), 40)
    assert recipe.train.head_epochs == 0 and recipe.train.backbone_lr_scale == 1.0
    assert {c.key for c in changes} >= {"train.head_epochs", "train.backbone_lr_scale"}
    tuned = dataclasses.replace(_recipe(batch_size=4, head_epochs=2, backbone_lr_scale=0.1),
                                model=cfg.Model(load_from="runs/source"))
    kept, _, _ = plan_training(tuned, 40)
    assert kept.train.head_epochs == 2 and kept.train.backbone_lr_scale == 0.1


def test_a_schedule_longer_than_the_run_is_a_printed_warning(capsys):
    """`--set train.epochs=30` on a recipe whose schedule spans 200 epochs used to end the run
    at 95% of the peak learning rate without a word (the few-shot detection runs did)."""
    from kft.train.plan import schedule_outlasts_run
    from kft.train.schedules import build_schedule, learning_rate_at

    ssdlite = cfg.load_recipe("recipes/ssdlite_mobilenet_voc.py")
    short = cfg.apply_overrides(ssdlite, ["train.epochs=30"])
    planned, _, steps = plan_training(short, 40)
    assert "warning" not in capsys.readouterr().out
    last = learning_rate_at(build_schedule(planned.train, steps), 30 * steps - 1)
    assert last < 0.01 * planned.train.learning_rate  # one cosine decay over the 30 epochs
    old = cfg.apply_overrides(short, ["train.restart_epochs=200"])  # the recipe as it was
    plan_training(old, 40)
    out = capsys.readouterr().out
    assert "[kft] warning:" in out and "95% of train.learning_rate=0.025" in out
    assert "train.restart_epochs=200 is longer than train.epochs=30" in out
    assert "train.restart_epochs=0" in out
    # the paper's SSD milestones beyond a short run; warm restarts stopped early in a cycle
    ssd = cfg.apply_overrides(cfg.load_recipe("recipes/ssd_voc.py"), ["train.epochs=30"])
    assert "train.milestones (155, 193)" in schedule_outlasts_run(ssd.train, 10)
    classify = cfg.load_recipe("recipes/quickstart_classify.py")  # cycles 4 + 8 + 16 epochs
    assert schedule_outlasts_run(classify.train, 10) == ""
    thirty = cfg.apply_overrides(classify, ["train.epochs=30"]).train
    assert "cycles end at epochs 4, 12, 28, 60" in schedule_outlasts_run(thirty, 10)
    assert schedule_outlasts_run(_recipe(schedule="constant", epochs=3).train, 10) == ""
    for path in ("recipes/ssd_voc.py", "recipes/ssdlite_mobilenet_voc.py",
                 "recipes/fasterrcnn_r50fpn_voc.py", "recipes/finetune_classify.py"):
        recipe = cfg.load_recipe(path)
        if recipe.train.epochs:  # at the recipe's own length every schedule decays
            assert schedule_outlasts_run(recipe.train, 10) == "", path
