"""Pascal VOC AP on tiny cases computed by hand."""

import json

import numpy as np
import pytest

from kft.eval.voc import ap_area, ap_voc07, voc_ap, voc_metrics


def _gt(image_id, boxes, labels, difficult=None):
    example = {
        "image_id": image_id,
        "boxes": np.array(boxes, np.float32).reshape(-1, 4),
        "labels": np.array(labels, np.int32),
    }
    if difficult is not None:
        example["difficult"] = np.array(difficult, bool)
    return example


def _pred(image_id, boxes, scores, labels):
    return {
        "image_id": image_id,
        "boxes": np.array(boxes, np.float32).reshape(-1, 4),
        "scores": np.array(scores, np.float32),
        "labels": np.array(labels, np.int32),
    }


# Class "cat" (label 0): 3 GT boxes on two images; 4 detections, by descending score:
#   0.9 TP   (image a, IoU 0.81 with A1)
#   0.8 FP   (duplicate of A1, which is already matched)
#   0.7 TP   (image b, exact B1)
#   0.6 FP   (image b, IoU 16/184 ~ 0.09 with B2: too low)
# cumulative TP 1,1,2,2  FP 0,1,1,2  -> recall 1/3,1/3,2/3,2/3  precision 1,1/2,2/3,1/2
# VOC07 11-point: thresholds 0,.1,.2,.3 -> best precision at recall >= t is 1 (4 points);
#   .4,.5,.6 -> max(2/3, 1/2) = 2/3 (3 points); .7,.8,.9,1 -> no point -> 0.
#   AP07 = (4 * 1 + 3 * 2/3) / 11 = 6/11.
# Area: envelope precision 1 on (0, 1/3], 2/3 on (1/3, 2/3], 0 on (2/3, 1]
#   AP = 1/3 * 1 + 1/3 * 2/3 + 1/3 * 0 = 5/9.
GT = [
    _gt("a", [[0, 0, 10, 10]], [0]),
    _gt("b", [[20, 20, 40, 40], [50, 50, 60, 60]], [0, 0]),
]
PREDS = [
    _pred("a", [[1, 1, 10, 10], [0, 0, 10, 10]], [0.9, 0.8], [0, 0]),
    _pred("b", [[20, 20, 40, 40], [56, 56, 66, 66]], [0.7, 0.6], [0, 0]),
]


def test_hand_computed_ap():
    result = voc_metrics(GT, PREDS, ["cat"])
    assert result["voc07_mAP"] == pytest.approx(6 / 11, abs=1e-12)
    assert result["area_mAP"] == pytest.approx(5 / 9, abs=1e-12)
    assert result["per_class"]["cat"]["num_gt"] == 3
    assert result["per_class"]["cat"]["num_dets"] == 4
    np.testing.assert_allclose(result["pr"]["cat"]["recall"], [1 / 3, 1 / 3, 2 / 3, 2 / 3])
    np.testing.assert_allclose(result["pr"]["cat"]["precision"], [1, 1 / 2, 2 / 3, 1 / 2])
    assert voc_ap(GT, PREDS, ["cat"])["mAP"] == pytest.approx(6 / 11, abs=1e-12)
    assert voc_ap(GT, PREDS, ["cat"], use_07_metric=False)["mAP"] == pytest.approx(5 / 9)
    json.dumps(result, allow_nan=False)


def test_ap_functions_directly():
    recall, precision = [1 / 3, 1 / 3, 2 / 3, 2 / 3], [1, 1 / 2, 2 / 3, 1 / 2]
    assert ap_voc07(recall, precision) == pytest.approx(6 / 11)
    assert ap_area(recall, precision) == pytest.approx(5 / 9)
    assert ap_voc07([], []) == 0.0 and ap_area([], []) == 0.0
    # FP, TP, TP with 2 positives: precision 0, 1/2, 2/3 at recall 0, 1/2, 1. The envelope
    # lifts the first half to 2/3 -> area 1/2 * 2/3 + 1/2 * 2/3 = 2/3 (not 1/4 + 1/3).
    assert ap_area([0, 0.5, 1], [0, 0.5, 2 / 3]) == pytest.approx(2 / 3, abs=1e-12)
    assert ap_voc07([0, 0.5, 1], [0, 0.5, 2 / 3]) == pytest.approx(2 / 3, abs=1e-12)


def test_difficult_boxes_are_ignored():
    # Add a difficult box on image c and a top-scoring detection on it: neither TP nor FP,
    # and the difficult box does not count as a positive -> APs unchanged.
    gt = GT + [_gt("c", [[0, 0, 30, 30]], [0], difficult=[True])]
    preds = PREDS + [_pred("c", [[0, 0, 30, 30]], [0.95], [0])]
    result = voc_metrics(gt, preds, ["cat"])
    assert result["voc07_mAP"] == pytest.approx(6 / 11, abs=1e-12)
    assert result["area_mAP"] == pytest.approx(5 / 9, abs=1e-12)
    assert result["per_class"]["cat"]["num_gt"] == 3
    assert result["per_class"]["cat"]["num_dets"] == 5
    assert len(result["pr"]["cat"]["recall"]) == 4
    # The same box not difficult: a 4th positive matched first -> TP, TP, FP, TP, FP.
    # recall 1/4, 2/4, 2/4, 3/4, 3/4; precision 1, 1, 2/3, 3/4, 3/5
    # area = 1/4 * 1 + 1/4 * 1 + 1/4 * 3/4 = 11/16.
    gt[-1]["difficult"] = np.array([False])
    assert voc_metrics(gt, preds, ["cat"])["area_mAP"] == pytest.approx(11 / 16, abs=1e-12)


def test_iou_must_exceed_threshold_strictly():
    gt = [_gt("a", [[0, 0, 10, 10]], [0])]
    half = [_pred("a", [[0, 0, 10, 5]], [0.9], [0])]  # IoU exactly 0.5
    assert voc_metrics(gt, half, ["cat"])["area_mAP"] == 0.0
    assert voc_metrics(gt, half, ["cat"], iou_threshold=0.49)["area_mAP"] == 1.0


def test_perfect_and_missing_classes():
    gt = [
        _gt(1, [[0, 0, 10, 10], [5, 5, 30, 40]], [0, 1]),
        _gt(2, [[10, 10, 50, 50]], [0]),
        _gt(3, [], []),  # background image
    ]
    preds = [_pred(g["image_id"], g["boxes"], np.ones(len(g["labels"])), g["labels"]) for g in gt]
    result = voc_metrics(gt, preds, ["a", "b", "never"])
    assert result["voc07_mAP"] == pytest.approx(1.0, abs=1e-12)
    assert result["area_mAP"] == pytest.approx(1.0, abs=1e-12)
    assert result["per_class"]["never"] == {
        "voc07_ap": None,
        "area_ap": None,
        "num_gt": 0,
        "num_dets": 0,
    }
    # A false positive of the class without ground truth changes nothing else.
    preds[2] = _pred(3, [[0, 0, 5, 5]], [0.99], [2])
    result = voc_metrics(gt, preds, ["a", "b", "never"])
    assert result["area_mAP"] == pytest.approx(1.0, abs=1e-12)
    assert result["per_class"]["never"]["num_dets"] == 1
    json.dumps(result, allow_nan=False)


def test_no_predictions_and_errors():
    result = voc_metrics(GT, [], ["cat"])
    assert result["voc07_mAP"] == 0.0 and result["area_mAP"] == 0.0
    with pytest.raises(ValueError, match="'zzz'"):
        voc_metrics(GT, [_pred("zzz", [], [], [])], ["cat"])
    with pytest.raises(ValueError, match="outside"):
        voc_metrics(GT, [_pred("a", [[0, 0, 1, 1]], [0.5], [3])], ["cat"])
    with pytest.raises(ValueError, match="twice"):
        voc_metrics(GT + GT[:1], [], ["cat"])
