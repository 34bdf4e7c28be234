"""The run skeleton every task shares (:func:`run_task`) and its plumbing: precision policy,
callbacks, resume, fit, history.

Run directory (shared/DESIGN.md)::

    config.json        the resolved recipe          history.csv     one row per epoch
    data_report.json   what the readers skipped     load_report.json  what load_from reused
    class_names.json   the model's classes          checkpoints/    resumable, atomic
    model.keras        the final model              metrics.json    final evaluation
    plots/             curves, confusion / per-class AP, predictions
    logs/              TensorBoard                  export/         TFLite models + report.json

The task (:mod:`kft.tasks`) reads the data and builds the model, its batches, evaluation and
export; :func:`run_task` does the rest the same way for every task::

    extra = compile_for_training(model, t, steps_per_epoch, loss=..., metrics=...)
    callbacks, es, nan_stop = training_callbacks(t, ckpt_dir, monitor, run_dir,
                                                 metric_callbacks=[...], extra=extra)
    initial_epoch = resume_state(model, ckpt_dir, es, resume, t.epochs, metric_callbacks)
    fit(model, train, val, t, callbacks, initial_epoch, ckpt_dir, nan_stop, es, verbose)

Callback order: learning rate, the task's metric callbacks (they write ``val_*`` logs),
freezing schedule, early stopping, NaN stop, the CSV history row, then the checkpoint commit
(``state.json``), so a row in history.csv exists exactly for the committed epochs once a
resumed run has truncated the rows of an epoch that was killed before its commit.
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path

import keras

from kft import config as cfg
from kft.models.weights import load_from, summarize
from kft.train.callbacks import (
    EpochCheckpoint,
    HistoryCSV,
    LearningRateLogger,
    ResumableEarlyStopping,
    StopOnNaN,
    read_state,
    restore_checkpoint,
)
from kft.train.finetune import (
    HeadFirst,
    ProgressiveUnfreeze,
    candidate_trainable_variables,
    scaled_backbone_lrs,
    set_trainable_stages,
    stage_lr_multipliers,
)
from kft.train.fused_bn import fused_batch_norms
from kft.train.optimizers import build_optimizer
from kft.train.plan import plan_bn_momentum, plan_training
from kft.train.schedules import build_schedule


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the last good checkpoint is kept."""


def prepare_run_dir(run_dir: Path, resume: bool) -> Path:
    """Creates the run directory's folders; refuses to overwrite a run without ``--resume``.
    Returns the checkpoint folder."""
    ckpt_dir = run_dir / "checkpoints"
    if not resume and (ckpt_dir / "state.json").is_file():
        raise cfg.ConfigError(f"{run_dir} already holds a run: pass --resume to continue it or "
                              "--output to start a new one")
    for sub in ("checkpoints", "plots", "logs", "export"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    return ckpt_dir


def prepare_model(model, m: cfg.Model, run_dir: Path, ckpt_dir: Path,
                  class_names=None) -> None:
    """Writes the model's config beside the checkpoints (so a checkpoint alone can serve as
    ``load_from``) and applies ``model.load_from`` with its report (load_report.json)."""
    (ckpt_dir / "model_config.json").write_text(
        json.dumps(keras.saving.serialize_keras_object(model)))
    if m.load_from:
        report = load_from(model, m.load_from, m.load_from_hash, class_names)
        (run_dir / "load_report.json").write_text(json.dumps(report, indent=2))
        print("[kft] " + summarize(report))


def set_precision(policy: str):
    """``train.mixed_precision``: "" (float32), "float16" (loss-scaled) or "bfloat16"."""
    names = {"": "float32", "float32": "float32", "float16": "mixed_float16",
             "bfloat16": "mixed_bfloat16"}
    if policy not in names:
        raise cfg.ConfigError(f"train.mixed_precision={policy!r} must be '', float16 or bfloat16")
    keras.config.set_dtype_policy(names[policy])


def compile_for_training(model, t: cfg.Train, steps_per_epoch: int, **compile_kwargs) -> list:
    """Freezes backbone stages (T1; the first ``train.head_epochs`` train only the head),
    builds the schedule (T3) and the optimiser with layer-wise
    learning rates (T2), weight decay, clipping (T4) and accumulation (T6), compiles, and builds
    the optimiser on every variable that may ever train. Returns the callbacks the freezing
    schedule needs (progressive unfreezing, ``train.unfreeze_every``)."""
    extra = []
    if t.head_epochs > 0:
        print(f"[kft] epochs 1-{t.head_epochs} train only the new head, the backbone frozen "
              f"(train.head_epochs); then stages {','.join(t.trainable_stages)} at "
              f"{t.backbone_lr_scale:g} x the learning rate (train.backbone_lr_scale)")
        set_trainable_stages(model, ("none",))
        extra.append(HeadFirst(t.head_epochs, t.trainable_stages))
    elif t.unfreeze_every > 0:
        initial = 0 if tuple(t.trainable_stages) in (("none",), ()) else len(
            set_trainable_stages(model, t.trainable_stages))
        extra.append(ProgressiveUnfreeze(initial, t.unfreeze_every, t.unfreeze_per_round))
    else:
        set_trainable_stages(model, t.trainable_stages)
    layer_lrs = scaled_backbone_lrs(model, t.backbone_lr_scale, t.learning_rate, t.layer_lrs)
    multipliers = stage_lr_multipliers(model, layer_lrs, t.learning_rate)
    optimizer = build_optimizer(
        t.optimizer, build_schedule(t, steps_per_epoch), momentum=t.momentum,
        nesterov=t.nesterov, weight_decay=t.weight_decay, clipnorm=t.clipnorm,
        grad_accum_steps=t.grad_accum_steps, lr_multipliers=multipliers,
        weight_decay_mode=t.weight_decay_mode)
    model.compile(optimizer=optimizer, jit_compile=t.jit_compile, **compile_kwargs)
    model.optimizer.build(candidate_trainable_variables(model))
    return extra


def training_callbacks(t: cfg.Train, ckpt_dir: Path, monitor: str, run_dir: Path,
                       resume: bool = False, metric_callbacks=(), extra=()):
    """``(callbacks, early_stopping | None, nan_stop)`` in the order of the module docstring.

    On ``resume``, history rows of epochs after the last commit (run, then killed before
    their checkpoint) are dropped."""
    initial_epoch = int((read_state(ckpt_dir) or {}).get("epoch", 0)) if resume else 0
    es = None
    callbacks = [LearningRateLogger(), *metric_callbacks, *extra]
    if t.early_stopping_patience > 0:
        es = ResumableEarlyStopping(monitor=monitor, mode="min" if "loss" in monitor
                                    else "max", patience=t.early_stopping_patience,
                                    restore_best_weights=True, verbose=1)
        callbacks.append(es)
    nan_stop = StopOnNaN()
    truncate_history(run_dir / "history.csv", initial_epoch)
    callbacks += [nan_stop,
                  HistoryCSV(str(run_dir / "history.csv"), append=initial_epoch > 0),
                  EpochCheckpoint(ckpt_dir, early_stopping=es),
                  keras.callbacks.TensorBoard(log_dir=str(run_dir / "logs"))]
    return callbacks, es, nan_stop


def resume_state(model, ckpt_dir: Path, es, resume: bool, epochs: int,
                 metric_callbacks=()) -> int:
    """Loads the last checkpoint when resuming; returns the epoch to start from.

    A run that early stopping ended is not trained further (returns ``epochs``). Metric
    callbacks with ``restore_logs(logs)`` get the committed epoch's logs back (the COCO
    evaluation's last values, carried between evaluations)."""
    if not resume:
        return 0
    state = restore_checkpoint(model, ckpt_dir, es)
    if state is None:
        print(f"[kft] --resume: no checkpoint in {ckpt_dir}, starting from epoch 1")
        return 0
    for callback in metric_callbacks:
        if callable(getattr(callback, "restore_logs", None)):
            callback.restore_logs(state.get("logs", {}))
    if state.get("stopped_early"):
        print(f"[kft] --resume: early stopping ended this run after epoch {state['epoch']}; "
              "nothing left to train")
        return max(int(epochs), int(state["epoch"]))
    print(f"[kft] resuming after epoch {state['epoch']} (last learning rate "
          f"{state['learning_rate']:.3g}, optimizer step {state['iterations']})")
    return int(state["epoch"])


def fit(model, train_batches, validation_data, t: cfg.Train, callbacks, initial_epoch: int,
        ckpt_dir: Path, nan_stop: StopOnNaN, es, verbose: int, monitor: str = ""):
    """``model.fit`` from ``initial_epoch``; raises :class:`TrainingDiverged` on a NaN loss and
    restores early stopping's best weights."""
    if initial_epoch < t.epochs:
        with fused_batch_norms(model):  # same training, a third faster (kft.train.fused_bn)
            model.fit(train_batches.dataset, steps_per_epoch=train_batches.steps,
                      epochs=t.epochs, initial_epoch=initial_epoch,
                      validation_data=validation_data, callbacks=callbacks, verbose=verbose,
                      shuffle=False)  # the pipeline shuffles, seeded per epoch
    if nan_stop.bad is not None:
        epoch, batch, loss = nan_stop.bad
        raise TrainingDiverged(
            f"loss became {loss} at epoch {epoch + 1}, batch {batch + 1}: training stopped. "
            f"The last good checkpoint is kept in {ckpt_dir}. Try a lower train.learning_rate, "
            "train.clipnorm=5.0, or check the data (data_report.json).")
    if es is not None and es.best_weights is None and es._restored:
        es.on_train_begin()  # no epoch left to run: take the restored state as it is
    if es is not None and es.best_weights is not None:
        model.set_weights(es.best_weights)
        print(f"[kft] early stopping: restored the best weights (epoch {es.best_epoch + 1}, "
              f"{monitor or es.monitor}={es.best:.4f})")


def truncate_history(path: Path, epochs: int):
    """Drops rows of epochs that were run after the last checkpoint (a killed run): rows are
    numbered from 1, so the first ``epochs`` rows stay."""
    if not path.is_file():
        return
    with open(path) as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    keep = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= epochs]
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(keep)


def read_history(path: Path) -> dict:
    """``history.csv`` as ``{column: [float per epoch]}`` (non-numbers become NaN)."""
    if not path.is_file():
        return {}
    with open(path) as f:
        rows = list(csv.DictReader(f))
    keys = [k for k in (rows[0].keys() if rows else []) if k != "epoch"]
    out = {}
    for k in keys:
        values = []
        for r in rows:
            try:
                values.append(float(r[k]))
            except (TypeError, ValueError):
                values.append(math.nan)
        out[k] = values
    return out


def run_task(task, recipe: cfg.Recipe, run_dir: str | Path, resume: bool = False,
             verbose: int = 1) -> dict:
    """Runs ``recipe`` with ``task`` (:class:`kft.tasks.Task`) end to end into ``run_dir``:
    data, model, fine-tuning, final evaluation on the untouched val split, plots, export.
    Returns the summary dict (also printed)."""
    t0 = time.time()
    run_dir = Path(run_dir)
    ckpt_dir = prepare_run_dir(run_dir, resume)
    previous = cfg.resolved_record(run_dir / "config.json") if resume else {}
    cfg.save_json(recipe, run_dir / "config.json", resolved=previous)
    keras.utils.set_random_seed(recipe.train.seed)
    set_precision(recipe.train.mixed_precision)
    try:
        return _run_task(task, recipe, run_dir, ckpt_dir, resume, verbose, t0, previous)
    finally:
        keras.config.set_dtype_policy("float32")


class PhaseClock:
    """Seconds spent in each phase of a run (``summary["phases"]``), in the order they ran:
    ``lap(name)`` closes the phase that began at the previous lap (or at the start)."""

    def __init__(self, start: float):
        self.last, self.phases = start, {}

    def lap(self, name: str) -> None:
        now = time.time()
        self.phases[name] = round(now - self.last, 1)
        self.last = now


def _run_task(task, recipe, run_dir, ckpt_dir, resume, verbose, t0, previous):
    clock = PhaseClock(t0)
    data = task.read(recipe, run_dir, "train")
    (run_dir / "data_report.json").write_text(json.dumps(data.report, indent=2))
    (run_dir / "class_names.json").write_text(json.dumps(data.class_names))

    recipe, changes, steps = plan_training(apply_changes(recipe, data.resolved),
                                           data.num_train)
    changes = list(data.resolved) + changes
    t, e = recipe.train, recipe.eval
    model = task.build_model(recipe, data)
    prepare_model(model, recipe.model, run_dir, ckpt_dir, data.class_names)
    # the momentum is recorded, not written into model.bn_momentum: a resumed run derives
    # the same value from the same run length
    bn = plan_bn_momentum(model, recipe.model.bn_momentum, t.epochs * steps)
    changes += [bn] if bn is not None else []
    for change in changes:
        print(change.line())
    cfg.save_json(recipe, run_dir / "config.json", resolved={**previous, **record(changes)})
    # compiled before the dry run: compile() drops the model's traced predict function, which
    # the dry run traces for any batch size and the evaluations reuse
    extra = compile_for_training(model, t, steps, **task.compile_arguments(recipe, data))
    task.before_training(model, data, recipe)
    clock.lap("data and model")

    validation_data, metric_callbacks = task.monitoring(model, data, recipe)
    monitor = t.monitor or task.default_monitor
    hint = task.stalled_hint(data, recipe)
    callbacks, es, nan_stop = training_callbacks(
        t, ckpt_dir, monitor, run_dir, resume, metric_callbacks=metric_callbacks,
        extra=[*extra, *([hint] if hint is not None else [])])
    initial_epoch = resume_state(model, ckpt_dir, es, resume, t.epochs, metric_callbacks)
    train_batches = task.train_batches(data, recipe, initial_epoch)
    fit(model, train_batches, validation_data, t, callbacks, initial_epoch, ckpt_dir, nan_stop,
        es, verbose, monitor)
    clock.lap("training")

    model.save(run_dir / "model.keras")
    metrics = task.evaluate(model, data, recipe)
    metrics["split"] = data.val_description
    metrics["selection_split"] = data.selection_description
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    clock.lap("evaluation")
    plots = task.plots(model, data, metrics, run_dir, recipe) if e.plots else {}
    if e.plots:
        clock.lap("plots")
    export_report = None
    if recipe.export.enabled and recipe.export.quantize:
        export_report = task.export(model, data, recipe, run_dir / "export",
                                    recipe.export.quantize,
                                    recipe.export.representative_samples, keras_metrics=metrics)
        clock.lap("export")
    summary = {
        "run_dir": str(run_dir), "epochs_run": t.epochs - initial_epoch,
        "metrics": task.headline_metrics(metrics), "model": str(run_dir / "model.keras"),
        "plots": {k: str(v) for k, v in plots.items()},
        "export": {k: str(run_dir / "export" / v["path"]) for k, v in
                   (export_report or {}).items() if isinstance(v, dict) and v.get("path")},
        "seconds": round(time.time() - t0, 1), "phases": clock.phases,
        "generated_data": data.generated,
        "split": metrics["split"], "selection_split": metrics["selection_split"]}
    print_summary(task, summary, metrics, export_report)
    return summary


def record(changes) -> dict:
    """``config.json``'s ``"resolved"``: per key, the first ``from``, the last ``to`` and every
    reason (a key may change twice: auto batch size, then fitted to the split)."""
    out: dict = {}
    for change in changes:
        entry = change.to_dict()
        if change.key in out:
            entry = {"from": out[change.key]["from"], "to": entry["to"],
                     "why": f"{out[change.key]['why']}; then {entry['why']}"}
        out[change.key] = entry
    return out


def apply_changes(recipe: cfg.Recipe, changes) -> cfg.Recipe:
    """``recipe`` with each :class:`kft.train.plan.Change`'s key set to its new value."""
    for change in changes:
        recipe = cfg.replace_value(recipe, change.key, change.new)
    return recipe


def print_summary(task, summary: dict, metrics: dict, export_report: dict | None) -> None:
    print("\n==== kft run summary ====")
    if summary["generated_data"]:
        print("data:      GENERATED by kft (synthetic shapes), not real images")
    print(f"evaluated: {summary['split']}" + (
        f"; model selected on {summary['selection_split']}" if summary["selection_split"]
        else ""))
    print(f"metrics:   {task.metrics_line(metrics)}")
    for line in task.export_lines(export_report):
        print(line)
    phases = ", ".join(f"{k} {v:g}" for k, v in summary.get("phases", {}).items())
    print(f"run dir:   {summary['run_dir']}  ({summary['seconds']} s"
          + (f": {phases})" if phases else ")"))
    print(f"model:     {summary['model']}")
    for path in summary["plots"].values():
        print(f"plot:      {path}")
    for path in summary["export"].values():
        print(f"export:    {path}")
