"""Training callbacks: atomic resumable checkpoints, NaN stop, learning-rate logging,
early stopping that survives a resume.

Checkpoint layout (``run/checkpoints``)::

    epoch-0003.weights.h5   model + optimiser variables after epoch 3 (Keras save_weights)
    best-0002.npz           best weights so far for early stopping (when enabled)
    state.json              {"epoch": 3, "weights": "epoch-0003.weights.h5",
                             "best_weights": "best-0002.npz", "early_stopping": {...},
                             "stopped_early": false, "logs": {...}, ...}

``state.json`` is the commit point: it is replaced atomically (``os.replace``) only after every
file it names is completely written, and files are named per epoch, so a run killed at any
instant resumes from one consistent epoch: weights, optimiser, best weights, early-stopping
counters and the epoch's logs (history.csv is written before the commit and truncated to the
committed epochs on resume). Files of older epochs are deleted after the commit.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import keras
import numpy as np

from kft.train.schedules import learning_rate_at


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_state(directory: str | Path) -> dict | None:
    """The last committed checkpoint state in ``directory``, or None."""
    path = Path(directory) / "state.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def last_step_learning_rate(optimizer) -> float:
    """The base learning rate of the optimiser's last weight update.

    Keras evaluates a schedule at its raw batch counter (``_iterations``), also under gradient
    accumulation, where only every N-th batch updates the weights (at counter values
    ``N - 1, 2N - 1, ...``); ``iterations`` there counts updates. Before any update, the
    rate the first update will use.
    """
    inner = getattr(optimizer, "inner_optimizer", optimizer)  # LossScaleOptimizer
    raw = int(keras.ops.convert_to_numpy(inner._iterations))
    n = int(inner.gradient_accumulation_steps or 1)
    last_update = (raw // n) * n - 1
    return learning_rate_at(inner._learning_rate, last_update if last_update >= 0 else n - 1)


class LearningRateLogger(keras.callbacks.Callback):
    """Adds ``learning_rate`` (the base rate of the epoch's last update) to the epoch logs."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = last_step_learning_rate(self.model.optimizer)


class StopOnNaN(keras.callbacks.Callback):
    """Stops training at the first batch whose loss is NaN or infinite and remembers where."""

    def __init__(self):
        super().__init__()
        self.bad = None  # (epoch, batch, loss)
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.bad = (self._epoch, batch, float(loss))
            self.model.stop_training = True


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """``keras.callbacks.EarlyStopping`` whose counters and best weights can be restored."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._restored = None

    def state(self) -> dict:
        best = self.best
        return {"best": None if best is None or not np.isfinite(best) else float(best),
                "wait": int(self.wait), "best_epoch": int(self.best_epoch)}

    def restore(self, state: dict, best_weights: list | None):
        self._restored = (state, best_weights)

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self._restored:
            state, weights = self._restored
            if state.get("best") is not None:
                self.best = state["best"]
            self.wait = state.get("wait", 0)
            self.best_epoch = state.get("best_epoch", 0)
            self.best_weights = weights


class EpochCheckpoint(keras.callbacks.Callback):
    """Writes a resumable checkpoint at the end of every epoch whose loss is finite."""

    def __init__(self, directory, early_stopping: ResumableEarlyStopping | None = None,
                 keep: int = 1):
        super().__init__()
        self.directory = Path(directory)
        self.early_stopping = early_stopping
        self.keep = keep

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        loss = logs.get("loss")
        if loss is None or not math.isfinite(float(loss)):
            return  # never overwrite the last good checkpoint with a diverged model
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"epoch-{epoch + 1:04d}.weights.h5"
        tmp = self.directory / f"partial-{epoch + 1:04d}.weights.h5"
        self.model.save_weights(tmp)
        os.replace(tmp, self.directory / name)
        state = {
            "epoch": epoch + 1,
            "weights": name,
            "learning_rate": last_step_learning_rate(self.model.optimizer),
            "iterations": int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)),
            "logs": {k: float(v) for k, v in logs.items() if np.isscalar(v)},
        }
        es = self.early_stopping
        best_name = None
        if es is not None:
            state["early_stopping"] = es.state()
            best_name = (read_state(self.directory) or {}).get("best_weights")
            if es.best_epoch == epoch and es.best_weights is not None:
                best_name = f"best-{epoch + 1:04d}.npz"
                best_tmp = self.directory / f"partial-best-{epoch + 1:04d}.npz"
                np.savez(best_tmp, *es.best_weights)
                os.replace(best_tmp, self.directory / best_name)
            state["best_weights"] = best_name
            state["stopped_early"] = bool(self.model.stop_training and
                                          es.stopped_epoch == epoch)
        atomic_write_text(self.directory / "state.json", json.dumps(state, indent=2))
        self._prune(keep_name=name, best_name=best_name)

    def _prune(self, keep_name: str, best_name: str | None):
        files = sorted(self.directory.glob("epoch-*.weights.h5"))
        for f in files[: max(0, len(files) - self.keep)]:
            if f.name != keep_name:
                f.unlink(missing_ok=True)
        for f in self.directory.glob("best*.npz"):
            if f.name != best_name:
                f.unlink(missing_ok=True)


def restore_checkpoint(model, directory, early_stopping: ResumableEarlyStopping | None = None):
    """Loads the last committed checkpoint into ``model`` (weights and optimiser state).

    The model must be compiled and its optimiser built on the same variable list as when the
    checkpoint was written. Returns the state dict (``epoch`` is the next epoch to run), or None
    when there is no checkpoint.
    """
    state = read_state(directory)
    if state is None:
        return None
    path = Path(directory) / state["weights"]
    if not path.is_file():
        raise FileNotFoundError(f"{directory}/state.json names {state['weights']}, which is missing")
    model.load_weights(path)
    if early_stopping is not None and "early_stopping" in state:
        best = Path(directory) / (state.get("best_weights") or "best.npz")
        weights = None
        if best.is_file():
            with np.load(best) as data:
                weights = [data[f"arr_{i}"] for i in range(len(data.files))]
        early_stopping.restore(state["early_stopping"], weights)
    return state
