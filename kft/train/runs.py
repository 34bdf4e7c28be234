"""Run plumbing shared by every task: precision policy, callbacks, resume, fit, history.

A task runner (``kft.train.classify``, ``kft.train.detect``) builds its data and model, then::

    callbacks, es, nan_stop = training_callbacks(t, ckpt_dir, metric_callbacks=[...])
    initial_epoch = resume_state(model, ckpt_dir, es, resume)
    callbacks += logging_callbacks(run_dir, initial_epoch)
    fit(model, train, val, t, callbacks, initial_epoch, ckpt_dir, nan_stop, es, verbose)
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import keras

from kft import config as cfg
from kft.models.weights import load_from, summarize
from kft.train.callbacks import (
    EpochCheckpoint,
    LearningRateLogger,
    ResumableEarlyStopping,
    StopOnNaN,
    restore_checkpoint,
)


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


def prepare_model(model, m: cfg.Model, run_dir: Path, ckpt_dir: Path) -> None:
    """Writes the model's config beside the checkpoints (so a checkpoint alone can serve as
    ``load_from``) and applies ``model.load_from`` with its report (load_report.json)."""
    (ckpt_dir / "model_config.json").write_text(
        json.dumps(keras.saving.serialize_keras_object(model)))
    if m.load_from:
        report = load_from(model, m.load_from, m.load_from_hash)
        (run_dir / "load_report.json").write_text(json.dumps(report, indent=2))
        print("[kft] " + summarize(report))


def set_precision(policy: str):
    """``train.mixed_precision``: "" (float32), "float16" (loss-scaled) or "bfloat16"."""
    names = {"": "float32", "float32": "float32", "float16": "mixed_float16",
             "bfloat16": "mixed_bfloat16"}
    if policy not in names:
        raise cfg.ConfigError(f"train.mixed_precision={policy!r} must be '', float16 or bfloat16")
    keras.config.set_dtype_policy(names[policy])


def training_callbacks(t: cfg.Train, ckpt_dir: Path, monitor: str, metric_callbacks=()):
    """``(callbacks, early_stopping | None, nan_stop)``: learning-rate logging, the task's metric
    callbacks (which must write their logs before early stopping reads them), early stopping on
    ``monitor``, the NaN stop and the atomic checkpoint."""
    es = None
    callbacks = [LearningRateLogger(), *metric_callbacks]
    if t.early_stopping_patience > 0:
        es = ResumableEarlyStopping(monitor=monitor, mode="min" if "loss" in monitor
                                    else "max", patience=t.early_stopping_patience,
                                    restore_best_weights=True, verbose=1)
        callbacks.append(es)
    nan_stop = StopOnNaN()
    callbacks += [nan_stop, EpochCheckpoint(ckpt_dir, early_stopping=es)]
    return callbacks, es, nan_stop


def resume_state(model, ckpt_dir: Path, es, resume: bool) -> int:
    """Loads the last checkpoint when resuming; returns the epoch to start from."""
    if not resume:
        return 0
    state = restore_checkpoint(model, ckpt_dir, es)
    if state is None:
        print(f"[kft] --resume: no checkpoint in {ckpt_dir}, starting from epoch 1")
        return 0
    print(f"[kft] resuming after epoch {state['epoch']} (learning rate "
          f"{state['learning_rate']:.3g}, optimizer step {state['iterations']})")
    return int(state["epoch"])


def logging_callbacks(run_dir: Path, initial_epoch: int) -> list:
    """CSV history (appending on resume, without rows of epochs lost to a kill) + TensorBoard."""
    truncate_history(run_dir / "history.csv", initial_epoch)
    return [keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=initial_epoch > 0),
            keras.callbacks.TensorBoard(log_dir=str(run_dir / "logs"))]


def fit(model, train_batches, validation_data, t: cfg.Train, callbacks, initial_epoch: int,
        ckpt_dir: Path, nan_stop: StopOnNaN, es, verbose: int, monitor: str = ""):
    """``model.fit`` from ``initial_epoch``; raises :class:`TrainingDiverged` on a NaN loss and
    restores early stopping's best weights."""
    if initial_epoch < t.epochs:
        model.fit(train_batches.dataset, steps_per_epoch=train_batches.steps, epochs=t.epochs,
                  initial_epoch=initial_epoch, validation_data=validation_data,
                  callbacks=callbacks, verbose=verbose,
                  shuffle=False)  # the pipeline shuffles, seeded per epoch
    if nan_stop.bad is not None:
        epoch, batch, loss = nan_stop.bad
        raise TrainingDiverged(
            f"loss became {loss} at epoch {epoch + 1}, batch {batch + 1}: training stopped. "
            f"The last good checkpoint is kept in {ckpt_dir}. Try a lower train.learning_rate, "
            "train.clipnorm=5.0, or check the data (data_report.json).")
    if es is not None and es.best_weights is not None:
        model.set_weights(es.best_weights)
        print(f"[kft] early stopping: restored the best weights (epoch {es.best_epoch + 1}, "
              f"{monitor or es.monitor}={es.best:.4f})")


def truncate_history(path: Path, epochs: int):
    """Drops rows of epochs that were run after the last checkpoint (a killed run)."""
    if not path.is_file():
        return
    with open(path) as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    keep = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) < epochs]
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
