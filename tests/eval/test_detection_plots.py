"""Detection plots write real, non-blank PNG images."""

import numpy as np
import pytest
from matplotlib.image import imread

from kft.eval.detection_plots import plot_per_class_ap, plot_pr_curves
from kft.eval.voc import voc_metrics

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _assert_real_png(path, min_bytes=5_000):
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > min_bytes
    pixels = imread(path)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert float(np.std(pixels[..., :3])) > 0.01  # not a blank canvas
    return pixels


def test_pr_curves_from_voc_metrics(tmp_path):
    gt = [{"image_id": 0, "boxes": [[0, 0, 10, 10], [20, 20, 40, 40]], "labels": [0, 1]}]
    preds = [
        {
            "image_id": 0,
            "boxes": [[0, 0, 10, 10], [0, 0, 9, 9], [20, 20, 40, 40]],
            "scores": [0.9, 0.5, 0.7],
            "labels": [0, 0, 1],
        }
    ]
    result = voc_metrics(gt, preds, ["a", "b", "none"])
    ap = {name: v["area_ap"] for name, v in result["per_class"].items()}
    path = plot_pr_curves(result["pr"], tmp_path / "sub" / "pr.png", ap=ap)
    _assert_real_png(path)


def test_per_class_ap_handles_none_nan_and_many_classes(tmp_path):
    ap = {f"class_{i:02d}": (i % 7) / 7 for i in range(40)}
    ap.update(missing=None, not_a_number=float("nan"))
    small = _assert_real_png(plot_per_class_ap({"a": 0.3, "b": None}, tmp_path / "small.png", "t"))
    big = _assert_real_png(plot_per_class_ap(ap, tmp_path / "big.png", "COCO per-class AP"))
    assert big.shape[0] > small.shape[0]  # the chart grows with the number of classes


def test_pr_curves_reject_mismatched_lengths(tmp_path):
    with pytest.raises(ValueError, match="recall"):
        plot_pr_curves({"a": {"precision": [1.0], "recall": []}}, tmp_path / "x.png")
