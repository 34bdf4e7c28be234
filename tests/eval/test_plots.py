"""PNG confusion matrix and training-history plots."""

import numpy as np
import pytest

from kft.eval.plots import history_panels, plot_confusion_matrix, plot_history

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _assert_png(path, min_bytes=5_000):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > min_bytes


def test_confusion_matrix_png(tmp_path):
    cm = [[5, 1, 0], [2, 7, 1], [0, 0, 0]]  # last row empty: must not divide by zero
    out = plot_confusion_matrix(cm, ["cat", "dog", "bird"], tmp_path / "sub" / "cm.png")
    assert out == str(tmp_path / "sub" / "cm.png")
    _assert_png(tmp_path / "sub" / "cm.png")


def test_confusion_matrix_many_classes_png(tmp_path):
    rng = np.random.default_rng(0)
    cm = rng.integers(0, 20, (40, 40))
    plot_confusion_matrix(cm, [f"class_{i}" for i in range(40)], tmp_path / "cm40.png")
    _assert_png(tmp_path / "cm40.png", min_bytes=20_000)


@pytest.mark.parametrize("cm,names,message", [
    ([[1, 2], [3, 4]], ["a", "b", "c"], r"\[3, 3\]"),
    ([[1, 2, 3], [4, 5, 6]], ["a", "b"], r"\[2, 2\]"),
    ([[1, -2], [3, 4]], ["a", "b"], "non-negative"),
])
def test_confusion_matrix_bad_inputs(tmp_path, cm, names, message):
    with pytest.raises(ValueError, match=message):
        plot_confusion_matrix(cm, names, tmp_path / "cm.png")
    assert not (tmp_path / "cm.png").exists()


def test_history_png(tmp_path):
    history = {
        "accuracy": [0.5, 0.7, 0.8], "loss": [1.0, 0.6, 0.4], "val_loss": [1.1, 0.8, 0.7],
        "val_accuracy": [0.4, 0.6, 0.7], "learning_rate": [1e-3, 5e-4, 1e-4],
    }
    plot_history(history, tmp_path / "history.png")
    _assert_png(tmp_path / "history.png", min_bytes=20_000)


def test_history_panels_pair_metrics_and_isolate_learning_rate():
    history = {"accuracy": [1], "val_top5": [1], "loss": [1], "val_accuracy": [1],
               "learning_rate": [1], "val_loss": [1]}
    assert history_panels(history) == [
        ("loss", ["loss", "val_loss"]),
        ("accuracy", ["accuracy", "val_accuracy"]),
        ("val_top5", ["val_top5"]),
        ("learning rate", ["learning_rate"]),
    ]
    assert history_panels({"loss": [1]}) == [("loss", ["loss"])]


@pytest.mark.parametrize("history,message", [
    ({"loss": [1.0, 0.5], "val_loss": [1.0]}, "different lengths"),
    ({"loss": [1.0, 0.5], "learning_rate": [0.1, 0.1, 0.1]}, "different lengths"),
    ({}, "non-empty"),
    ({"loss": []}, "non-empty 1-D"),
    ({"loss": ["a", "b"]}, "not a list of numbers"),
])
def test_history_bad_inputs(tmp_path, history, message):
    with pytest.raises(ValueError, match=message):
        plot_history(history, tmp_path / "history.png")
    assert not (tmp_path / "history.png").exists()
