"""kft.data.stats on hand-built records: KL (D6), duplicates and reference agreement (D5)."""

import math

import numpy as np
import pytest

from kft.data import stats
from kft.data.readers.detection import DetectionRecord, DetectionSplit
from kft.data.report import DataReport

NAMES = ["cat", "dog"]


def record(name, boxes, labels, size=(100, 100)):
    """A record of image ``name`` with the given xyxy boxes and labels."""
    n = len(labels)
    return DetectionRecord(image_path=f"/data/{name}", image_id=name, height=size[0],
                           width=size[1], boxes=np.array(boxes, np.float32).reshape(-1, 4),
                           labels=labels, difficult=[False] * n, iscrowd=[False] * n)


def split(records, names=NAMES):
    return DetectionSplit(records, list(names), None, DataReport())


def test_iou_matrix_matches_ops_pairwise_iou():
    from kft.ops.boxes import pairwise_iou

    a = np.array([[0, 0, 10, 10], [5, 5, 15, 15], [3, 3, 3, 3]], np.float32)
    b = np.array([[0, 0, 10, 8], [20, 20, 30, 30], [3, 3, 3, 3]], np.float32)
    ours = stats.iou_matrix(a, b)
    np.testing.assert_allclose(ours, np.asarray(pairwise_iou(a, b)), atol=1e-6)
    assert ours[0, 0] == pytest.approx(0.8)
    assert ours[2, 2] == 0.0  # empty union
    assert stats.iou_matrix(np.zeros((0, 4)), b).shape == (0, 3)


def test_kl_divergence_hand_computed():
    # smoothing 1: p = (3+1, 1+1)/6 = (2/3, 1/3), q = (1/3, 2/3):
    # KL = 2/3 ln 2 + 1/3 ln(1/2) = ln(2) / 3
    assert stats.kl_divergence([3, 1], [1, 3]) == pytest.approx(math.log(2) / 3)
    # no smoothing: p = (.5, .5), q = (.25, .75)
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert stats.kl_divergence([2, 2], [1, 3], smoothing=0) == pytest.approx(expected)
    assert stats.kl_divergence([5, 7], [10, 14], smoothing=0) == pytest.approx(0.0)
    assert stats.kl_divergence([5, 7], [5, 7]) == 0.0
    assert stats.kl_divergence([1, 1], [2, 0], smoothing=0) == math.inf
    with pytest.raises(ValueError, match="differ in length"):
        stats.kl_divergence([1, 2], [1, 2, 3])


def test_class_counts_and_bad_label():
    records = [record("a.jpg", [[0, 0, 5, 5]] * 3, [0, 1, 1]), record("b.jpg", [], [])]
    np.testing.assert_array_equal(stats.class_counts(records, 2), [1, 2])
    with pytest.raises(ValueError, match="c.jpg"):
        stats.class_counts([record("c.jpg", [[0, 0, 5, 5]], [2])], 2)


def test_check_dataset_kl_warning():
    train = split([record("a.jpg", [[0, 0, 5, 5]] * 8, [0, 0, 0, 0, 1, 1, 1, 1])])
    skewed = split([record("b.jpg", [[0, 0, 5, 5]] * 8, [0] * 8)])
    result = stats.check_dataset({"train": train, "val": skewed})
    # p = (5/10, 5/10), q = (9/10, 1/10)
    expected = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert result["kl_train_val"] == pytest.approx(expected)
    assert result["kl_warning"] is True
    assert stats.check_dataset({"train": train, "val": train})["kl_warning"] is False
    assert stats.check_dataset({"train": train})["kl_train_val"] is None


def test_duplicate_pairs_above_threshold_only():
    boxes = [[0, 0, 10, 10], [0, 0, 10, 8],      # same class, IoU 0.8 -> duplicate
             [50, 50, 60, 60], [50, 50, 60, 57],  # same class, IoU 0.7 -> not at 0.75
             [0, 0, 10, 10]]                      # other class, IoU 1 with box 0 -> not
    records = [record("a.jpg", boxes, [0, 0, 1, 1, 1])]
    pairs = stats.duplicate_pairs(records, 0.75, NAMES)
    assert [(p["image_id"], p["boxes"], p["class"]) for p in pairs] == [("a.jpg", [0, 1], "cat")]
    assert pairs[0]["iou"] == pytest.approx(0.8)
    at_07 = stats.duplicate_pairs(records, 0.65)
    assert sorted(p["boxes"] for p in at_07) == [[0, 1], [2, 3]]
    result = stats.consistency(records, 0.75)
    assert result["boxes_in_duplicate_pairs"] == 2
    assert result["share_consistent"] == pytest.approx(3 / 5)
    assert result["ok"] is False
    assert stats.consistency([record("b.jpg", boxes[:1], [0])])["ok"] is True


def test_agreement_with_reference_one_box_shifted():
    mine = [record("a.jpg", [[0, 0, 10, 10], [20, 20, 40, 40]], [0, 1]),
            record("b.jpg", [[0, 0, 10, 10], [50, 50, 60, 60]], [0, 0]),
            record("c.jpg", [[0, 0, 10, 10]], [0])]
    reference = [record("a.jpg", [[1, 0, 11, 10], [20, 20, 40, 40]], [0, 1]),  # IoU .818
                 record("b.jpg", [[2, 0, 12, 10], [50, 50, 60, 60]], [0, 0])]  # IoU .667
    result = stats.agreement_with_reference(mine, reference, 0.75, class_names=NAMES)
    assert result["images_compared"] == 2 and result["images_not_in_reference"] == 1
    assert result["boxes"] == 4 and result["boxes_agreeing"] == 3
    assert result["share"] == pytest.approx(0.75) and result["ok"] is False
    assert result["disagreeing"] == [{"image_id": "b.jpg", "box": 0, "class": "cat",
                                      "best_iou": pytest.approx(0.6667, abs=1e-4)}]
    assert result["per_class"] == {"cat": {"boxes": 3, "agreeing": 2},
                                   "dog": {"boxes": 1, "agreeing": 1}}
    # a box matches only same-class reference boxes
    other_class = [record("a.jpg", [[0, 0, 10, 10]], [1])]
    assert stats.agreement_with_reference(other_class, reference)["boxes_agreeing"] == 0
    assert stats.agreement_with_reference(mine, mine)["ok"] is True


def test_agreement_rejects_repeated_file_names():
    twice = [record("a.jpg", [], []), record("a.jpg", [], [])]
    with pytest.raises(ValueError, match="a.jpg"):
        stats.agreement_with_reference(twice, twice)


def test_box_size_stats():
    boxes = [[0, 0, 10, 10], [0, 0, 50, 50], [0, 0, 100, 100], [0, 0, 40, 10]]
    result = stats.box_size_stats([record("a.jpg", boxes, [0, 0, 1, 1], size=(200, 200))])
    assert result["boxes"] == 4
    assert result["coco_sizes"] == {"small": 2, "medium": 1, "large": 1}
    assert result["sqrt_area"]["max"] == pytest.approx(100.0)
    hist = result["sqrt_area_hist"]
    assert len(hist["counts"]) == len(hist["edges"]) and sum(hist["counts"]) == 4
    aspect = result["aspect_ratio_hist"]
    assert sum(aspect["counts"]) == 4
    assert aspect["counts"][aspect["edges"].index(4.0) + 1] == 1  # w/h = 4 in [4, 8)
    assert result["relative_size"]["max"] == pytest.approx(0.5)
    assert stats.box_size_stats([])["sqrt_area"]["median"] is None


def test_check_split_counts_and_report():
    report = DataReport()
    report.skip("/data/x.xml", "malformed XML", field="xml")
    data = DetectionSplit([record("a.jpg", [[0, 0, 5, 5]], [1]), record("b.jpg", [], [])],
                          NAMES, None, report)
    result = stats.check_split(data)
    assert (result["images"], result["objects"], result["background_images"]) == (2, 1, 1)
    assert result["per_class"] == {"cat": 0, "dog": 1}
    assert result["bad_files"]["skipped"][0]["path"] == "/data/x.xml"
