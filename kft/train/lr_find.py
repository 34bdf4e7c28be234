"""The learning-rate range test (Smith 2017, "Cyclical learning rates for training neural
networks", section 3.3), run the way fastai's ``lr_find`` runs it: train the recipe's model for
a few hundred steps while the learning rate grows exponentially from ``min_lr`` to ``max_lr``,
record the training loss of every step, and stop once the loss has clearly diverged.

Everything but the learning-rate schedule is the recipe's own, set up as a run sets it up
(:func:`kft.train.runs.run_task`): its data and training batches (augmentation included), its
model with ``model.load_from`` applied, its frozen stages (``train.trainable_stages``; the
first epoch's stages under progressive unfreezing), its optimiser with momentum, weight decay,
clipping, accumulation and layer-wise rate multipliers (each stage keeps its ratio to the base
rate), its precision policy and its loss (label smoothing included). ``train.schedule``,
``train.warmup_steps`` and ``train.epochs`` are not used: the range test sets the rate.

Per step ``i`` the loss ``l_i`` is smoothed as fastai does, with bias correction::

    avg_i = beta * avg_{i-1} + (1 - beta) * l_i        smoothed_i = avg_i / (1 - beta ** (i+1))

and the test stops after the first step whose smoothed loss is NaN / inf or exceeds
``diverge_factor`` times the lowest smoothed loss so far.

The suggested rate is the one where the smoothed loss falls fastest per unit of log-lr
(steepest negative slope, searched from 10 % of the recorded steps up to the smoothed
minimum, so it always lies below the rate of the lowest loss); a tenth of the rate at the
smoothed minimum is reported beside it, the other common rule.

Nothing of a run directory is written: ``out_dir`` receives ``lr_find.png`` and
``lr_find.json`` only (files the readers convert are cached in a temporary folder that is
removed afterwards), and the trained weights are discarded.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
from keras import ops

from kft import config as cfg
from kft.models.weights import load_from, summarize
from kft.train.finetune import (
    candidate_trainable_variables,
    resolve_stages,
    scaled_backbone_lrs,
    set_trainable_stages,
    stage_lr_multipliers,
    top_down_stages,
    trainable_stages,
)
from kft.train.optimizers import build_optimizer

RULE = "steepest descent of the smoothed loss"
MIN_LOSS_RULE = "a tenth of the rate at the smoothed loss's minimum"
SKIP_START = 0.1  # share of the recorded steps left out of the steepest-slope search (fastai)


@keras.saving.register_keras_serializable(package="kft")
class ExponentialRange(keras.optimizers.schedules.LearningRateSchedule):
    """``min_lr * (max_lr / min_lr) ** (step / (num_steps - 1))``: ``min_lr`` at step 0,
    ``max_lr`` at step ``num_steps - 1`` and after; each step multiplies the rate by the same
    factor ``(max_lr / min_lr) ** (1 / (num_steps - 1))``."""

    def __init__(self, min_lr, max_lr, num_steps):
        self.min_lr = float(min_lr)
        self.max_lr = float(max_lr)
        self.num_steps = int(num_steps)

    def __call__(self, step):
        span = max(self.num_steps - 1, 1)
        progress = ops.minimum(ops.cast(step, "float32") / span, 1.0)
        log_ratio = math.log(self.max_lr / self.min_lr)
        return self.min_lr * ops.exp(progress * log_ratio)

    def get_config(self):
        return {"min_lr": self.min_lr, "max_lr": self.max_lr, "num_steps": self.num_steps}


def smooth_losses(losses, beta: float) -> list[float]:
    """The bias-corrected exponential moving average of ``losses`` (module docstring); a NaN
    or inf loss makes every later value NaN / inf."""
    out, avg = [], 0.0
    for i, loss in enumerate(losses):
        avg = beta * avg + (1.0 - beta) * float(loss)
        out.append(avg / (1.0 - beta ** (i + 1)))
    return out


def suggest(lrs, smoothed) -> dict:
    """The suggested rates of a recorded range test.

    Args:
        lrs: ``float[N]`` learning rate of each step (non-decreasing).
        smoothed: ``float[N]`` smoothed loss of each step; only the finite prefix is used.

    Returns:
        ``{"suggested_lr", "suggested_index", "min_loss_lr", "min_loss_index",
        "min_loss_lr_div10", "note"}``; ``suggested_lr`` is ``None`` (and ``note`` says why)
        when the smoothed loss never fell.
    """
    finite = 0
    while finite < len(smoothed) and math.isfinite(smoothed[finite]):
        finite += 1
    out = {"suggested_lr": None, "suggested_index": None, "min_loss_lr": None,
           "min_loss_index": None, "min_loss_lr_div10": None, "note": ""}
    # one point per rate: a step the optimiser skipped (float16 loss scaling on an overflow)
    # repeats the rate; the last step at each rate is kept
    keep = [j for j in range(finite) if j + 1 == finite or lrs[j + 1] > lrs[j]]
    if len(keep) < 3:
        out["note"] = (f"only {finite} steps before the loss diverged: lower min_lr "
                       "(--min-lr)")
        return out
    s = np.asarray([smoothed[j] for j in keep], dtype="float64")
    log_lr = np.log(np.asarray([lrs[j] for j in keep], dtype="float64"))
    m = int(np.argmin(s))
    out.update(min_loss_lr=float(lrs[keep[m]]), min_loss_index=keep[m],
               min_loss_lr_div10=float(lrs[keep[m]]) / 10)
    slopes = np.gradient(s, log_lr)
    start = min(int(len(keep) * SKIP_START), m)
    i = start + int(np.argmin(slopes[start:m + 1]))
    if m == 0 or slopes[i] >= 0:
        out["note"] = ("the smoothed loss never fell: lower min_lr (--min-lr), or check the "
                       "data and the frozen stages")
        return out
    i = keep[i]
    out.update(suggested_lr=float(lrs[i]), suggested_index=i)
    if keep[m] == len(smoothed) - 1:
        out["note"] = "the loss was still falling at the last step: raise max_lr (--max-lr)"
    return out


class _RangeRecorder(keras.callbacks.Callback):
    """Records the rate and loss of every step of a fit of one step per epoch (so the logged
    ``loss`` is that step's, not a running mean) and stops it once the smoothed loss
    diverges."""

    def __init__(self, smooth: float, diverge_factor: float, num_steps: int, verbose: int):
        super().__init__()
        self.smooth, self.diverge_factor = smooth, diverge_factor
        self.num_steps, self.verbose = num_steps, verbose
        self.lrs, self.losses, self.smoothed = [], [], []
        self.stop_reason = ""
        self._avg, self._best = 0.0, math.inf

    def on_epoch_begin(self, epoch, logs=None):
        lr = self.model.optimizer.learning_rate  # the schedule at the optimiser's step
        self.lrs.append(float(ops.convert_to_numpy(lr)))

    def on_epoch_end(self, epoch, logs=None):
        loss = float((logs or {}).get("loss", math.nan))
        i = len(self.losses)
        self.losses.append(loss)
        self._avg = self.smooth * self._avg + (1.0 - self.smooth) * loss
        smoothed = self._avg / (1.0 - self.smooth ** (i + 1))
        self.smoothed.append(smoothed)
        if math.isfinite(smoothed):
            self._best = min(self._best, smoothed)
        if not math.isfinite(smoothed):
            self.stop_reason = f"the loss became {loss} at step {i + 1}"
        elif smoothed > self.diverge_factor * self._best:
            self.stop_reason = (f"the smoothed loss {smoothed:.4g} exceeded {self.diverge_factor}"
                                f" x its minimum {self._best:.4g} at step {i + 1}")
        if self.verbose and (self.stop_reason or (i + 1) % max(self.num_steps // 10, 1) == 0):
            print(f"[kft] lr-find step {i + 1}/{self.num_steps}: lr {self.lrs[-1]:.3g} "
                  f"loss {loss:.4f} (smoothed {smoothed:.4f})")
        if self.stop_reason:
            self.model.stop_training = True


def _check_arguments(min_lr, max_lr, num_steps, smooth, diverge_factor):
    if not (math.isfinite(min_lr) and min_lr > 0):
        raise cfg.ConfigError(f"lr-find: min_lr={min_lr} must be a positive number (--min-lr)")
    if not (math.isfinite(max_lr) and max_lr > min_lr):
        raise cfg.ConfigError(f"lr-find: max_lr={max_lr} must be larger than min_lr={min_lr} "
                              "(--max-lr)")
    if int(num_steps) != num_steps or num_steps < 5:
        raise cfg.ConfigError(f"lr-find: num_steps={num_steps} must be an integer >= 5 "
                              "(--steps)")
    if not 0.0 <= smooth < 1.0:
        raise cfg.ConfigError(f"lr-find: smooth={smooth} must be in [0, 1)")
    if not diverge_factor > 1.0:
        raise cfg.ConfigError(f"lr-find: diverge_factor={diverge_factor} must be > 1")


def _initial_stages(model, t: cfg.Train) -> list[str]:
    """The backbone stages that train in a run's first epoch (T1; under progressive
    unfreezing the top ``len(trainable_stages)`` stages, as ProgressiveUnfreeze sets them)."""
    if t.head_epochs > 0:  # the fine-tuning policy starts with the head alone
        return []
    if t.unfreeze_every > 0:
        stages = tuple(t.trainable_stages)
        count = 0 if stages in (("none",), ()) else len(resolve_stages(model, stages))
        return top_down_stages(model, count)
    return resolve_stages(model, t.trainable_stages)


def compile_for_range_test(model, t: cfg.Train, schedule, **compile_kwargs) -> list[str]:
    """Freezes the first epoch's stages and compiles ``model`` with the recipe's optimiser
    (:func:`kft.train.runs.compile_for_training`) but ``schedule`` as its learning rate.
    Returns the backbone stages that train, as the model now has them."""
    stages = _initial_stages(model, t)
    set_trainable_stages(model, stages or ("none",))
    multipliers = stage_lr_multipliers(
        model, scaled_backbone_lrs(model, t.backbone_lr_scale, t.learning_rate, t.layer_lrs),
        t.learning_rate)
    optimizer = build_optimizer(
        t.optimizer, schedule, momentum=t.momentum, nesterov=t.nesterov,
        weight_decay=t.weight_decay, clipnorm=t.clipnorm, grad_accum_steps=t.grad_accum_steps,
        lr_multipliers=multipliers, weight_decay_mode=t.weight_decay_mode)
    model.compile(optimizer=optimizer, jit_compile=t.jit_compile, **compile_kwargs)
    model.optimizer.build(candidate_trainable_variables(model))
    return trainable_stages(model)


def lr_range_test(recipe: cfg.Recipe, out_dir, *, min_lr: float = 1e-7, max_lr: float = 10.0,
                  num_steps: int = 200, smooth: float = 0.98, diverge_factor: float = 4.0,
                  verbose: int = 0, task=None) -> dict:
    """Runs the learning-rate range test of ``recipe`` (module docstring) and writes
    ``out_dir/lr_find.png`` and ``out_dir/lr_find.json``.

    Args:
        recipe: a validated recipe (:func:`kft.validate.validate_recipe`).
        out_dir: folder for the two output files (created).
        min_lr, max_lr: the rates of the first and the last step (``0 < min_lr < max_lr``).
        num_steps: training steps at most (>= 5); the split's batches are repeated as often
            as needed.
        smooth: ``beta`` of the loss's moving average, in ``[0, 1)``.
        diverge_factor: stop once the smoothed loss exceeds this times its minimum (> 1).
        verbose: 1 prints progress every tenth of the steps.
        task: the recipe's :class:`kft.tasks.Task` (default ``task_named(recipe.task)``).

    Returns:
        What ``lr_find.json`` holds: ``suggested_lr`` (``None`` when the loss never fell;
        ``note`` says why) with its ``rule``, ``min_loss_lr`` (rate of the lowest smoothed
        loss), ``min_loss_lr_div10`` with its ``min_loss_rule``, per step ``lrs``, ``losses``
        and ``smoothed`` (``float[steps]``; in the JSON a NaN / inf is ``null``),
        ``stopped_early`` with ``stop_reason`` and ``diverged_lr`` (the rate of the step that
        stopped the test, else ``None``), ``steps`` (steps run), the arguments, the data
        counts, the ``load_from`` summary, ``plot`` and ``json`` (the paths) and ``seconds``.

    Raises:
        kft.config.ConfigError: a bad argument, or a batch size larger than the split.
    """
    _check_arguments(min_lr, max_lr, num_steps, smooth, diverge_factor)
    if task is None:
        from kft.tasks import task_named  # the caller may pass it: train/ sits below tasks/

        task = task_named(recipe.task)
    t0 = time.time()
    out_dir = Path(out_dir)
    keras.utils.set_random_seed(recipe.train.seed)
    from kft.train.runs import set_precision

    set_precision(recipe.train.mixed_precision)
    try:
        # converted files are cached for the readers in a folder removed at the end
        with tempfile.TemporaryDirectory(prefix="kft_lr_find_") as scratch:
            result = _range_test(task, recipe, Path(scratch), min_lr, max_lr, int(num_steps),
                                 smooth, diverge_factor, verbose)
    finally:
        keras.config.set_dtype_policy("float32")
    result["seconds"] = round(time.time() - t0, 1)
    out_dir.mkdir(parents=True, exist_ok=True)
    result["plot"] = plot_lr_find(result, out_dir / "lr_find.png")
    result["json"] = str(out_dir / "lr_find.json")
    (out_dir / "lr_find.json").write_text(json.dumps(_json_safe(result), indent=2,
                                                     allow_nan=False))
    return result


def _range_test(task, recipe, scratch, min_lr, max_lr, num_steps, smooth, diverge_factor,
                verbose) -> dict:
    from kft.train.plan import plan_training
    from kft.train.runs import apply_changes

    if recipe.train.layer_lrs and recipe.train.learning_rate <= 0:
        raise cfg.ConfigError(f"train.layer_lrs={recipe.train.layer_lrs} needs "
                              "train.learning_rate > 0 for lr-find (each stage keeps its "
                              "ratio to it)")
    data = task.read(recipe, scratch, "train")
    # the batch size (and what else the data settles) exactly as the run will use them
    recipe, changes, steps_per_epoch = plan_training(apply_changes(recipe, data.resolved),
                                                     data.num_train)
    for change in [*data.resolved, *changes]:
        print(change.line())
    t = recipe.train
    model = task.build_model(recipe, data)
    load_summary = ""
    if recipe.model.load_from:
        load_summary = summarize(load_from(model, recipe.model.load_from,
                                           recipe.model.load_from_hash, data.class_names))
        print("[kft] " + load_summary)
    schedule = ExponentialRange(min_lr, max_lr, num_steps)
    stages = compile_for_range_test(model, t, schedule, **task.compile_arguments(recipe, data))
    # enough epochs of the training batches for num_steps steps (the split repeated)
    epochs = -(-num_steps // steps_per_epoch)
    repeated = dataclasses.replace(recipe, train=dataclasses.replace(t, epochs=epochs))
    batches = task.train_batches(data, repeated, 0)
    recorder = _RangeRecorder(smooth, diverge_factor, num_steps, verbose)
    # one step per "epoch": Keras logs each epoch's own mean loss, i.e. this step's loss
    model.fit(batches.dataset, steps_per_epoch=1, epochs=num_steps, callbacks=[recorder],
              verbose=0, shuffle=False)
    steps = len(recorder.losses)
    lrs = recorder.lrs[:steps]
    picked = suggest(lrs, recorder.smoothed)
    report = data.report
    return {
        "recipe": recipe.name, "task": task.name,
        "suggested_lr": picked["suggested_lr"], "rule": RULE,
        "min_loss_lr": picked["min_loss_lr"], "min_loss_lr_div10": picked["min_loss_lr_div10"],
        "min_loss_rule": MIN_LOSS_RULE, "note": picked["note"],
        "suggested_index": picked["suggested_index"],
        "min_loss_index": picked["min_loss_index"],
        "lrs": lrs, "losses": recorder.losses, "smoothed": recorder.smoothed,
        "stopped_early": bool(recorder.stop_reason), "stop_reason": recorder.stop_reason,
        "diverged_lr": lrs[-1] if recorder.stop_reason else None, "steps": steps,
        "min_lr": min_lr, "max_lr": max_lr, "num_steps": num_steps, "smooth": smooth,
        "diverge_factor": diverge_factor, "batch_size": t.batch_size,
        "optimizer": t.optimizer, "trainable_stages": stages,
        "data": {"num_train": data.num_train, "steps_per_epoch": steps_per_epoch,
                 "num_skipped": int(report.get("num_skipped", 0) or 0),
                 "num_converted": int(report.get("num_converted", 0) or 0),
                 "generated": bool(data.generated)},
        "load_from": load_summary,
    }


def _json_safe(value):
    """``value`` with NaN / inf floats as ``None`` (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def plot_lr_find(result: dict, path) -> str:
    """Draws the recorded loss and smoothed loss against the rate (log x axis), the suggested
    rate, a tenth of the minimum's rate and the point where the test stopped; writes a PNG to
    ``path`` and returns it as a string."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from kft.plotting import save_figure

    lrs = np.asarray(result["lrs"], dtype="float64")
    losses = np.asarray(result["losses"], dtype="float64")
    smoothed = np.asarray(result["smoothed"], dtype="float64")
    losses[~np.isfinite(losses)] = np.nan
    smoothed[~np.isfinite(smoothed)] = np.nan
    fig = Figure(figsize=(7.5, 4.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(lrs, losses, color="0.72", lw=1, label="loss of each step")
    ax.plot(lrs, smoothed, color="C0", lw=2, label=f"smoothed (beta {result['smooth']})")
    ax.set_xscale("log")
    if result["suggested_lr"] is not None:
        i = result["suggested_index"]
        ax.axvline(result["suggested_lr"], color="C3", ls="--",
                   label=f"suggested {result['suggested_lr']:.2g} ({result['rule']})")
        ax.plot([lrs[i]], [smoothed[i]], "o", color="C3")
    if result["min_loss_lr_div10"] is not None:
        ax.axvline(result["min_loss_lr_div10"], color="C2", ls=":",
                   label=f"minimum / 10: {result['min_loss_lr_div10']:.2g}")
    if result["diverged_lr"] is not None:
        ax.axvline(result["diverged_lr"], color="k", alpha=0.35,
                   label=f"stopped (diverged) at {result['diverged_lr']:.2g}")
    # y range: the curve up to the step that stopped the test (its spike would flatten it)
    body = smoothed[:-1] if result["stopped_early"] and len(smoothed) > 1 else smoothed
    shown = np.concatenate([body[np.isfinite(body)], losses[:1][np.isfinite(losses[:1])]])
    if shown.size:
        low = min(shown.min(), np.nanmin(losses) if np.isfinite(losses).any() else shown.min())
        top = shown.max()
        margin = 0.08 * max(top - low, 1e-6)
        ax.set_ylim(low - margin, top + margin)
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss")
    ax.set_title(f"Learning-rate range test: {result['recipe']} ({result['steps']} steps)")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="best")
    return save_figure(fig, path)
