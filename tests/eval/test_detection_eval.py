"""evaluate_detector / COCOEvalCallback: coordinate round trip, failures, and a fit."""

import csv
import warnings

import keras
import numpy as np
import pytest
from PIL import Image

from kft.data import detection_batches, make_shapes_detection, read_coco
from kft.data.readers.detection import DetectionRecord, DetectionSplit
from kft.data.report import DataReport
from kft.eval.detection import COCOEvalCallback, evaluate_detector

MAX_DETS = 6
# (height, width, boxes xyxy, labels): landscape, portrait, square and a background image.
_IMAGES = [
    (70, 140, [[10, 5, 60, 40], [80, 20, 130, 66]], [0, 1]),
    (120, 60, [[4, 10, 50, 70], [20, 80, 58, 118]], [1, 0]),
    (90, 90, [[30, 30, 80, 85]], [0]),
    (50, 80, [], []),
]
RESIZES = [dict(image_size=(64, 96), resize="fixed"),
           dict(image_size=(48, 100), resize="keep_aspect")]


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    root = tmp_path_factory.mktemp("deteval")
    records = []
    for k, (h, w, boxes, labels) in enumerate(_IMAGES):
        path = root / f"{k}.png"
        Image.fromarray(np.full((h, w, 3), 40 * k, np.uint8)).save(path)
        n = len(labels)
        records.append(DetectionRecord(str(path), k + 1, h, w, np.asarray(boxes, np.float32),
                                       labels, np.zeros(n, bool), np.zeros(n, bool)))
    return DetectionSplit(records, ["a", "b"], None, DataReport())


def _tap(batches, state):
    """Yields the batches and remembers the current ground truth (network pixels)."""
    for images, y, meta in batches.dataset:
        state["y"] = y
        yield images, y, meta


def _from_ground_truth(state, shift=0.0, empty=False):
    """A predict_fn returning the batch's ground truth (boxes shifted right by ``shift`` of
    their width), padded to MAX_DETS with confident junk rows after num_detections."""
    def predict(images):
        boxes = keras.ops.convert_to_numpy(state["y"]["boxes"]).copy()
        labels = keras.ops.convert_to_numpy(state["y"]["labels"])
        b, m = labels.shape
        boxes[..., [0, 2]] += shift * (boxes[..., 2:3] - boxes[..., 0:1])
        out_boxes = np.tile(np.float32([0, 0, 20, 20]), (b, MAX_DETS, 1))
        out_labels = np.zeros((b, MAX_DETS), np.int32)
        out_boxes[:, :m], out_labels[:, :m] = boxes, labels
        num = np.zeros(b, np.int32) if empty else (labels >= 0).sum(1).astype(np.int32)
        return {"boxes": out_boxes, "scores": np.full((b, MAX_DETS), 0.9, np.float32),
                "labels": out_labels, "num_detections": num}
    return predict


def _batches(split, **resize):
    return detection_batches(split, batch_size=3, max_instances=4, training=False, seed=0,
                             with_meta=True, **resize)


@pytest.mark.parametrize("resize", RESIZES, ids=["fixed", "keep_aspect"])
def test_ground_truth_round_trip_scores_one(split, resize):
    batches = _batches(split, **resize)
    _, _, meta = next(iter(batches.dataset))
    sy, sx = keras.ops.convert_to_numpy(meta["scale"][0])
    assert abs(sy - sx) > 0.05 or resize["resize"] == "keep_aspect"
    state = {}
    metrics = evaluate_detector(_from_ground_truth(state), split, _tap(batches, state),
                                voc=True)
    assert metrics["num_images"] == len(_IMAGES)
    assert metrics["bbox_AP50"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["bbox_AP"] > 0.99
    assert metrics["voc07_mAP"] == pytest.approx(1.0) and metrics["voc_area_mAP"] == 1.0
    assert set(metrics["bbox_per_class_AP"]) == {"a", "b"}


def test_boxes_shifted_by_half_their_width_score_zero(split):
    batches = _batches(split, **RESIZES[0])
    state = {}
    metrics = evaluate_detector(_from_ground_truth(state, shift=0.5), split,
                                _tap(batches, state), voc=True)
    assert metrics["bbox_AP50"] == 0.0 and metrics["voc07_mAP"] == 0.0


def test_no_detections_score_zero_and_max_images(split):
    batches = _batches(split, **RESIZES[1])
    state = {}
    metrics = evaluate_detector(_from_ground_truth(state, empty=True), split,
                                _tap(batches, state), voc=True)
    assert metrics["bbox_AP"] == 0.0 and metrics["bbox_AP50"] == 0.0
    assert metrics["voc07_mAP"] == 0.0
    state = {}
    metrics = evaluate_detector(_from_ground_truth(state), split, _tap(batches, state),
                                max_images=2)
    assert metrics["num_images"] == 2 and metrics["bbox_AP50"] == pytest.approx(1.0)


def test_callback_logs_for_early_stopping(tmp_path):
    root = make_shapes_detection(tmp_path / "shapes", num_train=4, num_val=1,
                                 image_size=(64, 64), max_objects=2, seed=1)
    split = read_coco(root / "COCO", "train")
    from kft.models.backbones.mobilenet import ssdlite_mobilenet_v2
    from kft.models.ssd import SSD

    keras.utils.set_random_seed(0)
    model = SSD(ssdlite_mobilenet_v2(image_size=64, alpha=0.35), len(split.class_names),
                head="depthwise")
    # Eager: three steps and two predict passes run faster than tracing the graphs (~6 s vs 28 s).
    model.compile(keras.optimizers.Adam(1e-3), jit_compile=False, run_eagerly=True)
    train = detection_batches(split, image_size=64, batch_size=4, max_instances=4,
                              training=True, seed=0, epochs=3)
    evaluation = detection_batches(split, image_size=64, batch_size=4, max_instances=4,
                                   training=False, seed=0, with_meta=True)
    cb = COCOEvalCallback(split, evaluation, every=2)
    stop = keras.callbacks.EarlyStopping(monitor="val_bbox_AP50", mode="max", patience=5)
    log = tmp_path / "log.csv"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(train.dataset, steps_per_epoch=1, epochs=3, verbose=0,
                            callbacks=[cb, stop, keras.callbacks.CSVLogger(str(log))])
    assert not [w for w in caught if "not available" in str(w.message)]
    assert [epoch for epoch, _ in cb.history] == [1, 2]
    values = history.history["val_bbox_AP50"]
    assert len(values) == 3 and values[0] == 0.0
    assert values[1:] == [cb.history[0][1]["bbox_AP50"] or 0.0,
                          cb.history[1][1]["bbox_AP50"] or 0.0]
    assert all(0.0 <= v <= 1.0 for v in values)
    with open(log) as f:
        assert "val_bbox_AP75" in next(csv.reader(f))
    # the last epoch was scored: its metrics are the final ones until any weight changes
    assert cb.current_metrics() == cb.history[-1][1]
    for variable in (model.trainable_weights[0], model.non_trainable_weights[0]):
        before = np.asarray(variable).copy()
        variable.assign(before + 1e-3)  # a moving statistic counts as much as a kernel
        assert cb.current_metrics() is None
        variable.assign(before)
        assert cb.current_metrics() == cb.history[-1][1]
