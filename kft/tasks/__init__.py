"""Tasks: what differs between classification and detection, behind one interface.

A :class:`Task` owns reading a recipe's data, building its model, the batches it trains and
evaluates on, the evaluation, the export and its lines of the run summary. The run skeleton
(:func:`kft.train.runs.run_task`) and the ``kft eval / export / predict`` commands call a task
and never rebuild pipelines or pre/post-processing themselves::

    task = task_named(recipe.task)           # or task_for_model(model)
    data = task.read(recipe, run_dir)        # TaskData: splits, class names, data report
    model = task.build_model(recipe, data)
    metrics = task.evaluate(model, data, recipe)
    report = task.export(model, data, recipe, out_dir, formats, samples)
    result = task.predict(model, pixels, class_names, options)
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path

from kft import config as cfg

# Why a split is read: "train" (a run: train + val, and a model-selection slice held out of
# train when early stopping), "eval" (the val split only), "export" (train for calibration +
# val for the comparison with Keras).
PURPOSES = ("train", "eval", "export")


@dataclass
class TaskData:
    """The splits of a recipe as its task reads them.

    ``train`` / ``val`` / ``selection`` are the task's own split objects (``None`` when not
    read); ``selection`` is the slice of train held out for model selection (D9). ``report``
    is what ``data_report.json`` holds; ``val_description`` / ``selection_description`` name the
    split each figure is on (metrics.json ``split`` / ``selection_split``).
    """

    train: object
    val: object
    class_names: list
    report: dict = field(default_factory=dict)
    generated: bool = False
    num_train: int = 0
    num_val: int = 0
    selection: object = None
    num_selection: int = 0
    val_description: str = ""
    selection_description: str | None = None
    batches: dict = field(default_factory=dict)  # the task's batches, built once per split
    # the callback that scores the val split during training, when it has current_metrics()
    # (the final evaluation reuses them when the weights did not change since)
    val_monitor: object = None
    # recipe values the reading settled (format detected, class names inferred, ...): a list
    # of kft.train.plan.Change, applied to the recipe and recorded in config.json
    resolved: list = field(default_factory=list)


class Task(abc.ABC):
    """Base of the tasks; see the module docstring for how they are used."""

    name = ""
    default_monitor = ""  # the history.csv column early stopping / best weights watch

    @abc.abstractmethod
    def read(self, recipe: cfg.Recipe, run_dir: Path, purpose: str = "train") -> TaskData:
        ...

    @abc.abstractmethod
    def build_model(self, recipe: cfg.Recipe, data: TaskData):
        ...

    def before_training(self, model, data: TaskData, recipe: cfg.Recipe) -> None:
        """Cheap checks on the freshly built model before the first epoch (default none)."""
        return None

    def stalled_hint(self, data: TaskData, recipe: cfg.Recipe):
        """A callback printing what to check when the loss falls but the monitored metric
        stays near zero (:class:`kft.train.callbacks.StalledMetricHint`), or None."""
        return None

    def compile_arguments(self, recipe: cfg.Recipe, data: TaskData) -> dict:
        """Extra ``model.compile`` arguments (loss, metrics); default none."""
        return {}

    @abc.abstractmethod
    def monitoring(self, model, data: TaskData, recipe: cfg.Recipe):
        """``(validation_data for model.fit or None, metric callbacks)``."""
        ...

    @abc.abstractmethod
    def train_batches(self, data: TaskData, recipe: cfg.Recipe, initial_epoch: int):
        ...

    def check_model(self, model, data: TaskData, recipe: cfg.Recipe) -> None:
        """A user error when ``model`` cannot be scored on ``data`` (e.g. class counts)."""
        return None

    @abc.abstractmethod
    def evaluate(self, model, data: TaskData, recipe: cfg.Recipe) -> dict:
        ...

    def plots(self, model, data: TaskData, metrics: dict, run_dir: Path,
              recipe: cfg.Recipe) -> dict:
        return {}

    @abc.abstractmethod
    def export(self, model, data: TaskData, recipe: cfg.Recipe, out_dir: Path, formats,
               samples: int, keras_metrics: dict | None = None) -> dict:
        ...

    @abc.abstractmethod
    def headline_metrics(self, metrics: dict) -> dict:
        """The metrics of the run summary."""
        ...

    @abc.abstractmethod
    def metrics_line(self, metrics: dict) -> str:
        """One line of the headline metrics (``kft eval`` and the summary)."""
        ...

    def export_lines(self, export_report: dict | None) -> list[str]:
        return []

    @abc.abstractmethod
    def predict(self, model, pixels, class_names, top_k: int = 3,
                score_threshold: float = 0.3) -> dict:
        """The result of one image (``uint8 [H, W, 3]`` at its own size) as a JSON-able dict."""
        ...


def task_named(name: str) -> Task:
    """The task of ``recipe.task``."""
    if name == "classification":
        from kft.tasks.classification import ClassificationTask

        return ClassificationTask()
    if name == "detection":
        from kft.tasks.detection import DetectionTask

        return DetectionTask()
    raise cfg.ConfigError(f"task={name!r} must be one of ['classification', 'detection']")


def task_for_model(model) -> Task:
    """The task a loaded model does (a detector has ``detect``)."""
    return task_named("detection" if callable(getattr(model, "detect", None))
                      else "classification")
