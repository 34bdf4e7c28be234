"""Training callbacks: atomic resumable checkpoints, NaN stop, learning-rate logging,
early stopping that survives a resume, the 1-based history CSV, the stalled-metric hint.

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


class HistoryCSV(keras.callbacks.CSVLogger):
    """``keras.callbacks.CSVLogger`` numbering epochs from 1, as the progress bar and the
    checkpoints do (row ``epoch=3`` is the third epoch)."""

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch + 1, logs)


# E7: what to check when the model learns (loss falls) but its evaluation stays near zero.
STALLED_CHECKS = (
    "BatchNorm statistics: a short run with momentum 0.999 evaluates with the initial moving "
    "averages (model.bn_momentum=0 chooses it from the run length)",
    "labels and class names: data_report.json lists skipped objects and the class names read",
    "box format: boxes must be xyxy pixels of the image (VOC 1-based, COCO xywh are converted "
    "by the readers)",
    "that the weights really loaded: load_report.json says what model.load_from reused",
)


class StalledMetricHint(keras.callbacks.Callback):
    """Prints what to check (:data:`STALLED_CHECKS`) once, when the training loss has fallen
    by a third or more since the first epoch while ``metric`` stayed at or below ``floor``
    for two evaluations in a row. ``every``: the metric is computed every N epochs (and after
    the last one), as :class:`kft.eval.detection.COCOEvalCallback` does; the epochs in between
    carry the last value (0 before the first evaluation) and are not counted."""

    def __init__(self, metric: str, floor: float, what: str = "", every: int = 1):
        super().__init__()
        self.metric, self.floor, self.what = metric, float(floor), what or metric
        self.every = max(int(every), 1)
        self.first_loss = None
        self.low = 0
        self.printed = False

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        loss = logs.get("loss")
        if loss is not None and math.isfinite(float(loss)) and self.first_loss is None:
            self.first_loss = float(loss)
        value = logs.get(self.metric)
        last = (self.params or {}).get("epochs")
        evaluated = (epoch + 1) % self.every == 0 or (last is not None and epoch + 1 >= last)
        if value is None or not math.isfinite(float(value)) or not evaluated:
            return
        self.low = self.low + 1 if float(value) <= self.floor else 0
        falling = (self.first_loss is not None and loss is not None
                   and float(loss) <= self.first_loss * 2 / 3)
        if self.low >= 2 and falling and not self.printed:
            self.printed = True
            print(f"\n[kft] the training loss fell from {self.first_loss:.4g} to "
                  f"{float(loss):.4g} but {self.what} is still {float(value):.4f}: check\n"
                  + "\n".join(f"  - {line}" for line in STALLED_CHECKS))
