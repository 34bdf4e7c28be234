"""Detection report plots: precision-recall curves and per-class AP bars (PNG files).

Uses ``matplotlib.figure.Figure`` with the Agg canvas directly, so it needs no display and
never changes the global pyplot backend.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from kft.plotting import save_figure


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _defined(value) -> bool:
    return value is not None and math.isfinite(float(value))


def plot_pr_curves(
    pr: Mapping[str, Mapping],
    path,
    title: str = "Precision-recall",
    ap: Mapping[str, float | None] | None = None,
) -> str:
    """Plot one precision-recall curve per class into a PNG.

    Args:
        pr: ``{class_name: {"precision": [D], "recall": [D]}}`` (raw curves in score order,
            as returned by :func:`kft.eval.voc.voc_ap`); empty curves are listed as "no data".
        path: output PNG path (parent folders are created).
        title: figure title.
        ap: optional ``{class_name: AP}`` shown in the legend (``None``/NaN as "n/a").

    Returns:
        ``path`` as a string.
    """
    figure = _new_figure(7.0, 5.0)
    axes = figure.add_subplot(1, 1, 1)
    empty = []
    for name, curve in pr.items():
        recall = list(curve.get("recall", []))
        precision = list(curve.get("precision", []))
        if len(recall) != len(precision):
            raise ValueError(
                f"class {name!r}: {len(recall)} recall but {len(precision)} precision values"
            )
        if not recall:
            empty.append(str(name))
            continue
        label = str(name)
        if ap is not None and name in ap:
            label += f" ({ap[name]:.3f})" if _defined(ap[name]) else " (n/a)"
        axes.plot([0.0] + recall, precision[:1] + precision, linewidth=1.2, label=label)
    axes.set_xlim(0.0, 1.0)
    axes.set_ylim(0.0, 1.02)
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    if empty:
        axes.text(0.02, 0.02, "no data: " + ", ".join(empty[:10]), transform=axes.transAxes,
                  fontsize=7, color="gray")  # fmt: skip
    count = len(pr) - len(empty)
    if count:
        axes.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7 if count > 10 else 9,
                    ncol=1 + count // 25)  # fmt: skip
    return save_figure(figure, path)


def plot_per_class_ap(ap: Mapping[str, float | None], path, title: str = "Per-class AP") -> str:
    """Horizontal bar chart of per-class AP, best at the top, into a PNG.

    Args:
        ap: ``{class_name: AP in 0..1}``; ``None``/NaN (no ground truth) classes are listed
            at the bottom with an "n/a" label and no bar.
        path: output PNG path (parent folders are created).
        title: figure title; the mean of the defined values is appended.

    Returns:
        ``path`` as a string.
    """
    defined = sorted(((n, float(v)) for n, v in ap.items() if _defined(v)), key=lambda x: -x[1])
    undefined = [n for n, v in ap.items() if not _defined(v)]
    names = [str(n) for n, _ in defined] + [str(n) for n in undefined]
    values = [v for _, v in defined] + [0.0] * len(undefined)
    figure = _new_figure(7.0, max(2.5, 0.28 * len(names) + 1.2))
    axes = figure.add_subplot(1, 1, 1)
    rows = list(range(len(names)))[::-1]  # first name at the top
    axes.barh(rows, values, color="tab:blue", height=0.7)
    for row, value, index in zip(rows, values, range(len(names)), strict=True):
        text = f"{value:.3f}" if index < len(defined) else "n/a"
        axes.text(min(value, 0.88) + 0.01, row, text, va="center", fontsize=7)
    axes.set_yticks(rows)
    axes.set_yticklabels(names, fontsize=8 if len(names) <= 30 else 6)
    axes.set_xlim(0.0, 1.0)
    axes.set_xlabel("AP")
    mean = sum(v for _, v in defined) / len(defined) if defined else None
    axes.set_title(title + (f" (mean {mean:.3f})" if mean is not None else ""))
    axes.grid(True, axis="x", alpha=0.3)
    return save_figure(figure, path)


def plot_detection_gallery(images, detections, class_names, path, ground_truth=None,
                           score_threshold: float = 0.3, cols: int | None = None) -> str:
    """A PNG gallery of detections: per image, the ground truth tile (when given) and the
    prediction tile (boxes with ``score >= score_threshold`` labelled "class score").

    Args:
        images: ``[H, W, 3]`` images (0..255) in the pixels of the boxes.
        detections: per image ``{"boxes" [D, 4], "scores" [D], "labels" [D]}`` (label -1 =
            padding).
        class_names: names by label.
        path: PNG file written (folders created).
        ground_truth: optional per image ``{"boxes", "labels"}``.
    """
    from pathlib import Path

    import numpy as np

    from kft.data.gallery import draw_example, make_gallery

    if not len(images):
        raise ValueError("plot_detection_gallery needs at least one image")
    tiles = []
    for k, (image, det) in enumerate(zip(images, detections, strict=True)):
        if ground_truth is not None:
            gt = ground_truth[k]
            tiles.append(draw_example(image, gt["boxes"], gt["labels"], class_names,
                                      title=f"#{k} truth"))
        labels = np.asarray(det["labels"]).reshape(-1)
        scores = np.asarray(det["scores"]).reshape(-1)
        keep = (labels >= 0) & (scores >= score_threshold)
        names = [f"{class_names[int(c)] if int(c) < len(class_names) else int(c)} {s:.2f}"
                 for c, s in zip(labels[keep], scores[keep], strict=True)]
        tiles.append(draw_example(image, np.asarray(det["boxes"]).reshape(-1, 4)[keep],
                                  np.arange(len(names)), names,
                                  title=f"#{k} predicted (score >= {score_threshold:g})"))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if cols is None and ground_truth is not None:
        cols = 8  # four truth / prediction pairs per row
    make_gallery(tiles, cols=cols).save(path)
    return str(path)
