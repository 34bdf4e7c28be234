"""PNG plots of a confusion matrix and of a training history.

Figures are drawn on matplotlib's non-interactive Agg canvas (``matplotlib.figure.Figure`` +
``FigureCanvasAgg``), never through ``pyplot``, so no display and no global figure state are
involved and the process-wide backend is left alone.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from kft.plotting import save_figure

MAX_ANNOTATED_CLASSES = 30
LEARNING_RATE_KEYS = ("learning_rate", "lr")


def plot_confusion_matrix(cm, class_names: Sequence[str], path: str | os.PathLike) -> str:
    """Writes a confusion-matrix heat map to ``path`` (PNG) and returns the path.

    Colours show each row normalised by its total (the fraction of true class ``i`` predicted
    as ``j``; an empty row stays 0). Raw counts are written in the cells when there are at most
    30 classes.

    Args:
        cm: ``int[C][C]`` counts, rows = true class, columns = predicted class.
        class_names: the ``C`` class names.
        path: output ``.png`` file; parent folders are created.

    Raises:
        ValueError: if ``cm`` is not square ``[C, C]`` with ``C == len(class_names)``, or has
            negative / non-finite entries.
    """
    counts = _check_confusion_matrix(cm, len(class_names))
    rows = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    num_classes = len(class_names)
    side = min(4.0 + 0.45 * num_classes, 40.0)
    fig = Figure(figsize=(side + 1.5, side))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    ticks = np.arange(num_classes)
    ax.set_xticks(ticks, labels=[str(n) for n in class_names], rotation=90)
    ax.set_yticks(ticks, labels=[str(n) for n in class_names])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (colour: row-normalised, text: counts)")
    if num_classes <= MAX_ANNOTATED_CLASSES:
        _annotate_counts(ax, counts, normalised)
    return save_figure(fig, path)


def plot_history(history: Mapping[str, Sequence[float]], path: str | os.PathLike) -> str:
    """Writes training curves (one value per epoch) to ``path`` (PNG) and returns the path.

    One subplot per quantity: ``loss`` first with ``val_loss``, then every other metric
    ``m`` with its ``val_m`` counterpart, and the learning rate (``learning_rate`` or ``lr``)
    on its own subplot (log scale when all values are positive). A ``val_m`` without ``m``
    gets its own subplot.

    Args:
        history: ``{name: [float per epoch]}``, e.g. ``keras.callbacks.History.history``.
        path: output ``.png`` file; parent folders are created.

    Raises:
        ValueError: if the history is empty, a series is empty or non-numeric, or the series
            do not all have the same length.
    """
    series = _check_history(history)
    panels = history_panels(series)
    cols = min(len(panels), 3)
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(5.0 * cols, 3.6 * rows))
    FigureCanvasAgg(fig)
    for i, (title, keys) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        _draw_panel(ax, title, {key: series[key] for key in keys})
    fig.tight_layout()
    return save_figure(fig, path)


def history_panels(history: Mapping[str, Sequence[float]]) -> list[tuple[str, list[str]]]:
    """The subplot layout of :func:`plot_history`: ``[(title, [history keys drawn])]``."""
    panels = []
    learning_rate = [key for key in history if key in LEARNING_RATE_KEYS]
    base = [key for key in history
            if not key.startswith("val_") and key not in LEARNING_RATE_KEYS]
    base.sort(key=lambda key: key != "loss")  # stable: "loss" first, others keep their order
    for key in base:
        panels.append((key, [key] + ([f"val_{key}"] if f"val_{key}" in history else [])))
    for key in history:
        if key.startswith("val_") and key[4:] not in history:
            panels.append((key, [key]))
    if learning_rate:
        panels.append(("learning rate", learning_rate[:1]))
    return panels


def _check_history(history: Mapping[str, Sequence[float]]) -> dict[str, np.ndarray]:
    """Validates the history and returns ``{name: float64[epochs]}``."""
    if not isinstance(history, Mapping) or not history:
        raise ValueError("history must be a non-empty dict {name: [value per epoch]}")
    series = {}
    for key, values in history.items():
        try:
            array = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise ValueError(f"history[{key!r}] is not a list of numbers") from error
        if array.ndim != 1 or array.size == 0:
            raise ValueError(f"history[{key!r}] must be a non-empty 1-D list, "
                             f"got shape {array.shape}")
        series[str(key)] = array
    lengths = {key: len(values) for key, values in series.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"history series have different lengths (epochs): {lengths}")
    return series


def _draw_panel(ax, title: str, curves: Mapping[str, np.ndarray]) -> None:
    """Draws the curves of one subplot against epochs 1..E."""
    for key, values in curves.items():
        epochs = np.arange(1, len(values) + 1)
        ax.plot(epochs, values, marker="o" if len(values) <= 30 else None, markersize=3,
                label=key)
    if title == "learning rate" and all(np.all(v > 0) for v in curves.values()):
        ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    ax.legend()


def _check_confusion_matrix(cm, num_classes: int) -> np.ndarray:
    """Validates a ``[C, C]`` count matrix; returns it as float64."""
    try:
        counts = np.asarray(cm, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError("confusion matrix must be a square list of lists of counts") from error
    if num_classes < 1:
        raise ValueError("class_names is empty")
    if counts.shape != (num_classes, num_classes):
        raise ValueError(f"confusion matrix must be [{num_classes}, {num_classes}] "
                         f"(len(class_names)), got shape {counts.shape}")
    if not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise ValueError("confusion matrix entries must be finite non-negative counts")
    return counts


def _annotate_counts(ax, counts: np.ndarray, normalised: np.ndarray) -> None:
    """Writes each cell's count, white on dark cells."""
    for (i, j), count in np.ndenumerate(counts):
        colour = "white" if normalised[i, j] > 0.5 else "black"
        ax.text(j, i, f"{count:g}", ha="center", va="center", color=colour, fontsize=8)


