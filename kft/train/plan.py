"""The training plan of a run, fitted to its data: batch size, steps, epochs, learning rate,
warm-up, BatchNorm momentum.

A recipe is written before its data is seen; :func:`plan_training` adapts what depends on the
data once the splits are read, and returns every change with its reason (the runner prints them
and records them in ``config.json`` under ``"resolved"``):

* ``train.batch_size``: ``0`` picks one from the number of training images
  (:func:`auto_batch_size`); then it is fitted to the split (:func:`kft.data.sampling.
  fitted_batch_size`: the same steps per epoch, the fewest images repeated to fill the last
  batch; a split smaller than a batch becomes one batch). No image is left out of an epoch.
* ``train.epochs``: ``0`` picks enough epochs for about :data:`TARGET_STEPS` optimiser steps,
  between :data:`MIN_EPOCHS` and :data:`MAX_EPOCHS`.
* ``train.learning_rate``: ``0`` picks the optimiser's usual fine-tuning rate
  (:data:`AUTO_LEARNING_RATES`).
* ``train.warmup_epochs`` becomes ``train.warmup_steps`` (and is set to 0: the resolved recipe
  gives the warm-up once); a warm-up as long as the run is an error naming both numbers.
* ``train.head_epochs`` / ``train.backbone_lr_scale`` (the fine-tuning policy) become 0 / 1
  when the model has no pretrained weights to keep.

The rules (README "Small data"):

========================  ===========================================================
batch size (auto)         largest power of two <= n / 5, within [4, 32] (n < 4: n)
epochs (auto)             ceil(TARGET_STEPS / steps per epoch) within [10, 60]
learning rate (auto)      adamw / adam 1e-3, sgd 1e-2
BatchNorm momentum (0)    1 - 20 / total steps within [0.9, 0.999], never raised
========================  ===========================================================
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import keras

from kft import config as cfg
from kft.data.sampling import fitted_batch_size, repeated_per_epoch, steps_per_epoch

TARGET_STEPS = 300
MIN_EPOCHS, MAX_EPOCHS = 10, 60
AUTO_LEARNING_RATES = {"adamw": 1e-3, "adam": 1e-3, "sgd": 1e-2}
MIN_AUTO_BATCH, MAX_AUTO_BATCH = 4, 32
BN_WINDOW_FRACTION = 20  # the moving averages' window (1 / (1 - momentum)) <= steps / 20
BN_MOMENTUM_RANGE = (0.9, 0.999)


@dataclass(frozen=True)
class Change:
    """One value the plan set: ``key`` from ``old`` to ``new``, and why."""

    key: str
    old: object
    new: object
    reason: str

    def line(self) -> str:
        return f"[kft] {self.key}: {self.old!r} -> {self.new!r} ({self.reason})"

    def to_dict(self) -> dict:
        return {"from": _jsonable(self.old), "to": _jsonable(self.new), "why": self.reason}


def _jsonable(value):
    return list(value) if isinstance(value, tuple) else value


def auto_batch_size(n: int) -> int:
    """Largest power of two <= ``n / 5`` within [4, 32]; ``n`` itself below 4 images."""
    if n < MIN_AUTO_BATCH:
        return max(int(n), 1)
    power = 2 ** int(math.floor(math.log2(max(n / 5, 1))))
    return int(min(max(power, MIN_AUTO_BATCH), MAX_AUTO_BATCH))


def auto_epochs(steps: int) -> int:
    """Enough epochs for about :data:`TARGET_STEPS` steps, within [10, 60]."""
    return int(min(max(math.ceil(TARGET_STEPS / max(steps, 1)), MIN_EPOCHS), MAX_EPOCHS))


def plan_training(recipe: cfg.Recipe, num_train: int) -> tuple[cfg.Recipe, list[Change], int]:
    """``(recipe with the plan applied, changes, steps per epoch)`` for a training split of
    ``num_train`` examples (see the module docstring)."""
    t = recipe.train
    if num_train < 1:
        raise cfg.ConfigError("the training split is empty: nothing to train on")
    changes: list[Change] = []
    updates: dict = {}

    batch = t.batch_size
    if batch == 0:
        batch = auto_batch_size(num_train)
        changes.append(Change("train.batch_size", 0, batch,
                              f"auto: {num_train} training images"))
    fitted = fitted_batch_size(num_train, batch)
    if fitted != batch:
        steps = steps_per_epoch(num_train, batch)
        repeated = repeated_per_epoch(num_train, batch)
        why = (f"{num_train} training images: one batch of all of them" if steps == 1 else
               f"{num_train} training images: {steps} batches of {fitted} instead of "
               f"{steps} of {batch}, which would repeat {repeated} images per epoch")
        changes.append(Change("train.batch_size", batch, fitted, why))
        batch = fitted
    updates["batch_size"] = batch
    steps = steps_per_epoch(num_train, batch)
    repeated = repeated_per_epoch(num_train, batch)
    if repeated:
        print(f"[kft] {num_train} training images, batch {batch}: {steps} steps per epoch; "
              f"the last batch is filled with {repeated} images drawn again (none left out)")

    epochs = t.epochs
    if epochs == 0:
        epochs = auto_epochs(steps)
        changes.append(Change("train.epochs", 0, epochs,
                              f"auto: about {TARGET_STEPS} steps of {steps} per epoch"))
        updates["epochs"] = epochs
    if t.learning_rate == 0:
        lr = AUTO_LEARNING_RATES[t.optimizer]
        changes.append(Change("train.learning_rate", 0.0, lr, f"auto for {t.optimizer}"))
        updates["learning_rate"] = lr

    if t.schedule == "cosine_restarts" and t.restart_epochs == 0:
        changes.append(Change("train.restart_epochs", 0.0, float(epochs),
                              "0: one cosine decay over the whole run"))
        updates["restart_epochs"] = float(epochs)
    m = recipe.model
    if not m.pretrained and (t.head_epochs or t.backbone_lr_scale != 1.0):
        why = "no pretrained weights (model.load_from / preset / backbone_weights): nothing to "
        if t.head_epochs:
            changes.append(Change("train.head_epochs", t.head_epochs, 0, why + "keep frozen"))
            updates["head_epochs"] = 0
        if t.backbone_lr_scale != 1.0:
            changes.append(Change("train.backbone_lr_scale", t.backbone_lr_scale, 1.0,
                                  why + "train more gently"))
            updates["backbone_lr_scale"] = 1.0
    total = epochs * steps
    warmup = t.warmup_steps
    if t.warmup_epochs > 0:
        warmup = max(1, int(round(t.warmup_epochs * steps)))
        changes.append(Change("train.warmup_steps", t.warmup_steps, warmup,
                              f"train.warmup_epochs={t.warmup_epochs:g} of {steps} steps"))
        # config.json records the steps alone (a recipe with both is refused): kft eval,
        # export, predict and --resume read it back as it was run
        changes.append(Change("train.warmup_epochs", t.warmup_epochs, 0.0,
                              f"given as train.warmup_steps={warmup}"))
        updates["warmup_steps"], updates["warmup_epochs"] = warmup, 0.0
    if warmup >= total:
        fix = (f"a smaller train.warmup_epochs (below {epochs}) or more train.epochs"
               if t.warmup_epochs > 0 else
               "train.warmup_epochs (e.g. 1) in place of train.warmup_steps, or more train.epochs")
        raise cfg.ConfigError(
            f"the warm-up ({warmup} steps) is as long as the whole run ({epochs} epochs of "
            f"{steps} steps = {total}): the learning rate would never reach "
            f"train.learning_rate; use {fix}")
    if warmup > total // 2:
        print(f"[kft] warning: the warm-up ({warmup} steps) is over half of the run ({total} "
              "steps)")
    recipe = dataclasses.replace(recipe, train=dataclasses.replace(t, **updates))
    warning = schedule_outlasts_run(recipe.train, steps)
    if warning:
        print(f"[kft] warning: {warning}")
    return recipe, changes, steps


# A schedule that still gives more than this fraction of train.learning_rate at the last step
# has not decayed (schedule_outlasts_run).
UNDECAYED_FRACTION = 0.5


def schedule_outlasts_run(t: cfg.Train, steps: int) -> str:
    """A warning when the learning-rate schedule is built for a longer run than ``t.epochs``
    (e.g. ``--set train.epochs=30`` on a recipe whose cosine spans 200 epochs, or whose
    milestones lie beyond the run): the last step's rate is still over
    :data:`UNDECAYED_FRACTION` of the peak, so the run ends without annealing. ``""`` when the
    schedule decays within the run (or is meant to be constant)."""
    from kft.train.schedules import build_schedule, learning_rate_at

    if t.schedule == "constant" or t.learning_rate <= 0 or (
            t.schedule == "warmup_multistep" and not t.milestones):  # warm-up, then constant
        return ""
    if t.schedule == "cosine_restarts" and t.restart_epochs == 0:  # 0: the whole run
        t = dataclasses.replace(t, restart_epochs=float(t.epochs))
    total = t.epochs * steps
    try:
        last = learning_rate_at(build_schedule(t, steps), max(total - 1, 0))
    except ValueError:  # a schedule validation refuses (its own message comes from there)
        return ""
    if last <= UNDECAYED_FRACTION * t.learning_rate:
        return ""
    fix = {"cosine_restarts": _restart_fix(t),
           "warmup_multistep": f"no train.milestones {tuple(t.milestones)} falls well inside "
                               f"train.epochs={t.epochs}; set milestones within the run",
           "step": f"train.step_epochs={t.step_epochs} against train.epochs={t.epochs}; a "
                   "smaller train.step_epochs decays within the run"}.get(t.schedule, "")
    return (f"the learning rate is still {last:.3g} ({last / t.learning_rate:.0%} of "
            f"train.learning_rate={t.learning_rate:g}) at the last step: the run ends before "
            f"its schedule decays ({fix})")


def _restart_fix(t: cfg.Train) -> str:
    """What to change when a cosine-restarts schedule has not decayed at the run's end."""
    if t.restart_epochs > t.epochs:
        return (f"train.restart_epochs={t.restart_epochs:g} is longer than train.epochs="
                f"{t.epochs}; train.restart_epochs=0 gives one cosine decay over the whole run")
    ends, length, end = [], float(t.restart_epochs), 0.0
    while end <= t.epochs and len(ends) < 4:  # the cycle ends up to the first past the run
        end += length
        ends.append(f"{end:g}")
        length *= t.restart_mult
    return (f"train.epochs={t.epochs} stops early in a warm-restart cycle; cycles end at "
            f"epochs {', '.join(ends)}: end the run at one of them, or set "
            "train.restart_epochs=0 for one cosine decay over the whole run")


def bn_momentum_for(total_steps: int) -> float:
    """``1 - 20 / total_steps`` within [0.9, 0.999]: the moving averages then average over at
    most a twentieth of the run, so they describe the final weights, not the initial ones."""
    lo, hi = BN_MOMENTUM_RANGE
    return float(min(max(1.0 - BN_WINDOW_FRACTION / max(total_steps, 1), lo), hi))


def batch_norm_layers(model) -> list:
    return [layer for layer in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, keras.layers.BatchNormalization)]


def plan_bn_momentum(model, setting: float, total_steps: int) -> Change | None:
    """Applies ``model.bn_momentum``: ``0`` lowers every BatchNormalization momentum above
    :func:`bn_momentum_for` to it (keras.applications' 0.999 lags ~1000 steps behind the
    weights, so a run of a few hundred steps evaluates with statistics of the initial
    weights: AP near 0 while the loss falls); ``-1`` keeps them; a value in (0, 1) sets them.
    Returns the change, or None when nothing changed."""
    layers = batch_norm_layers(model)
    if not layers or setting == -1:
        return None
    before = sorted({round(float(layer.momentum), 6) for layer in layers})
    if setting == 0:
        target = bn_momentum_for(total_steps)
        changed = [layer for layer in layers if layer.momentum > target]
        reason = (f"auto: a run of {total_steps} steps; {len(changed)} of {len(layers)} "
                  "BatchNormalization layers")
    else:
        target = float(setting)
        changed = layers
        reason = f"model.bn_momentum; {len(layers)} BatchNormalization layers"
    for layer in changed:
        layer.momentum = target
    if not changed:
        return None
    was = before[0] if len(before) == 1 else f"{before[0]}..{before[-1]}"
    return Change("model.bn_momentum", setting, round(target, 6), f"{reason}, was {was}")
