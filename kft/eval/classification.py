"""Classification metrics in pure numpy: accuracy, top-k, macro F1, per-class scores, confusion.

Conventions:

* ``y_true`` is ``int[N]`` class indices ``0..C-1`` (a one-hot / probability ``[N, C]`` array is
  also accepted and reduced with ``argmax``).
* ``logits`` is ``float[N, C]`` (logits or probabilities: only the order within a row matters).
* The prediction is ``argmax`` over classes (lowest index wins a tie).
* ``top5_accuracy`` (with ``top_k`` = 5) is reported only for more than 5 classes: with 5 or
  fewer, every prediction is in the top 5 and the number says nothing. The true class counts as
  inside the top 5 when fewer than 5 classes have a strictly larger score, so ties at the
  boundary count as hits (as ``tf.math.in_top_k`` does).
* Per-class precision / recall / F1 use ``0.0`` where the ratio is undefined (``0 / 0``), like
  scikit-learn's ``zero_division=0``.
* ``macro_f1`` is the unweighted mean of per-class F1 over the classes that occur in the ground
  truth OR in the predictions; a class absent from both has no defined F1 and is left out. This
  equals ``sklearn.metrics.f1_score(y_true, y_pred, average="macro")``, whose default label set
  is the union of the labels present in ``y_true`` and ``y_pred``.
* ``confusion_matrix[i][j]`` counts examples of true class ``i`` predicted as class ``j``.

Every value in the returned dict is a plain Python number, list or dict (JSON-serialisable).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

TOP_K = 5


def classification_metrics(y_true, logits, class_names: Sequence[str]) -> dict:
    """Scores predictions against labels.

    Args:
        y_true: ``int[N]`` true class indices in ``0..C-1`` (or one-hot ``float[N, C]``).
        logits: ``float[N, C]`` scores, ``C == len(class_names)``.
        class_names: the ``C`` class names, in index order.

    Returns:
        ``{"num_examples": N, "accuracy", "top5_accuracy" and "top_k" (C > 5), "macro_f1",
        "per_class": {name: {"precision", "recall", "f1", "support"}},
        "confusion_matrix": int[C][C] (rows = true class, columns = predicted)}``.

    Raises:
        ValueError: on empty input, mismatched shapes, labels outside ``0..C-1`` or non-finite
            scores.
    """
    names = [str(n) for n in class_names]
    if len(set(names)) != len(names):
        raise ValueError(f"class_names must be unique, got {names}")
    scores = _check_logits(logits, len(names))
    labels = _check_labels(y_true, scores.shape)
    predicted = np.argmax(scores, axis=1)
    cm = confusion_matrix(labels, predicted, len(names))
    per_class, f1 = _per_class_scores(cm, names)
    present = (cm.sum(axis=0) + cm.sum(axis=1)) > 0
    out = {"num_examples": int(labels.size),
           "accuracy": float(np.mean(predicted == labels))}
    if len(names) > TOP_K:
        out.update(top5_accuracy=top_k_accuracy(labels, scores, TOP_K), top_k=TOP_K)
    out.update(macro_f1=float(np.mean(f1[present])), per_class=per_class,
               confusion_matrix=cm.tolist())
    return out


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``int64[C, C]`` counts; row = true class, column = predicted class (both ``int[N]``)."""
    flat = np.asarray(y_true, np.int64) * num_classes + np.asarray(y_pred, np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def top_k_accuracy(y_true: np.ndarray, scores: np.ndarray, k: int) -> float:
    """Fraction of rows whose true class is among the ``k`` best scores (ties count as hits).

    Args:
        y_true: ``int[N]`` class indices.
        scores: ``float[N, C]``.
        k: ``1 <= k <= C``.
    """
    true_scores = scores[np.arange(len(y_true)), y_true]
    num_better = np.sum(scores > true_scores[:, None], axis=1)
    return float(np.mean(num_better < k))


def evaluate_classifier(
    predict_fn: Callable[[object], object],
    dataset: Iterable,
    class_names: Sequence[str],
) -> dict:
    """Runs ``predict_fn`` over a dataset and scores it with :func:`classification_metrics`.

    Args:
        predict_fn: maps a float32 image batch ``[B, H, W, 3]`` (a tensor as yielded by the
            dataset) to logits ``[B, C]`` (numpy or tensor).
        dataset: iterable of ``(x, y)`` batches, e.g. a ``tf.data.Dataset``; ``y`` is one-hot
            ``[B, C]`` or ``int[B]``.
        class_names: the ``C`` class names.

    Returns:
        The :func:`classification_metrics` dict (it includes ``num_examples``).
    """
    all_labels, all_logits = [], []
    for batch in dataset:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ValueError("evaluate_classifier expects a dataset of (images, labels) batches")
        x, y = batch[0], batch[1]
        logits = np.asarray(predict_fn(x), dtype=np.float32)
        all_logits.append(logits.reshape(len(logits), -1))
        all_labels.append(_labels_to_indices(np.asarray(y)))
    if not all_logits:
        raise ValueError("evaluate_classifier got an empty dataset")
    return classification_metrics(
        np.concatenate(all_labels), np.concatenate(all_logits), class_names)


def _labels_to_indices(y: np.ndarray) -> np.ndarray:
    """``int64[N]`` from ``int[N]`` indices or one-hot ``[N, C]``."""
    if y.ndim == 2:
        return np.argmax(y, axis=1).astype(np.int64)
    if y.ndim != 1:
        raise ValueError(f"labels must be int[N] or one-hot [N, C], got shape {y.shape}")
    if not np.all(np.equal(np.mod(y, 1), 0)):
        raise ValueError("integer class labels expected, got non-integer values")
    return y.astype(np.int64)


def _check_logits(logits, num_classes: int) -> np.ndarray:
    """Validates ``float[N, C]`` scores and returns them as float64."""
    scores = np.asarray(logits, dtype=np.float64)
    if num_classes < 1:
        raise ValueError("class_names is empty")
    if scores.ndim != 2 or scores.shape[1] != num_classes:
        raise ValueError(f"logits must have shape [N, {num_classes}] "
                         f"(len(class_names)), got {scores.shape}")
    if scores.shape[0] == 0:
        raise ValueError("no examples to evaluate")
    if not np.all(np.isfinite(scores)):
        raise ValueError("logits contain NaN or infinite values")
    return scores


def _check_labels(y_true, logits_shape: tuple[int, int]) -> np.ndarray:
    """Validates labels against ``[N, C]`` logits; returns ``int64[N]``."""
    y = np.asarray(y_true)
    if y.ndim == 2 and y.shape != logits_shape:
        raise ValueError(f"one-hot labels have shape {y.shape}, logits {logits_shape}")
    labels = _labels_to_indices(y)
    num_examples, num_classes = logits_shape
    if labels.size != num_examples:
        raise ValueError(f"{labels.size} labels for {num_examples} rows of logits")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must be in 0..{num_classes - 1}, "
                         f"got range {labels.min()}..{labels.max()}")
    return labels


def _per_class_scores(cm: np.ndarray, names: list[str]) -> tuple[dict, np.ndarray]:
    """Per-class precision/recall/F1/support from a ``[C, C]`` confusion matrix.

    Returns the ``{name: {...}}`` dict and ``float64[C]`` F1 scores (0 where undefined).
    """
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    support = cm.sum(axis=1)
    precision = _safe_divide(tp, predicted)
    recall = _safe_divide(tp, support.astype(np.float64))
    f1 = _safe_divide(2.0 * tp, predicted + support)
    per_class = {
        name: {"precision": float(precision[i]), "recall": float(recall[i]),
               "f1": float(f1[i]), "support": int(support[i])}
        for i, name in enumerate(names)
    }
    return per_class, f1


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Elementwise ``num / den`` with 0 where ``den == 0``."""
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)
