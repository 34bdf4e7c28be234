"""Faster R-CNN TFLite export: float32 equals Keras, INT8 runs an int8 network with float32
proposals / RoIAlign / decoding and stays close, only builtin ops, and report.json holds AP
from one evaluation of Keras and both files (a tiny model trained on a toy scene)."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorflow.lite.python import schema_py_generated as tflite_schema
from tensorflow.python.framework import config as tf_config

from kft.data import detection_batches
from kft.data.readers.detection import DetectionRecord, DetectionSplit
from kft.data.report import DataReport
from kft.eval.detection import evaluate_detector
from kft.export.detection import TFLiteDetector, export_detector_and_report, tflite_op_summary
from kft.models.faster_rcnn import FasterRCNN
from kft.ops.boxes import pairwise_iou

SIZE = (64, 96)                      # multiples of 32, not square
CLASSES = ["red", "green", "blue"]   # class = colour of a bright box
LAYOUT = [[(4, 6, 40, 34, 0), (50, 20, 90, 60, 2)], [(10, 30, 46, 62, 1)]]
BUILTIN_OPS = {name for name in vars(tflite_schema.BuiltinOperator) if name.isupper()} - {
    "CUSTOM", "DELEGATE"}
CONFIDENT = 0.5
TRAINED = 0.8      # the fixture trains until every object scores this
MAX_EPOCHS = 300


def scene():
    """The two toy images (uint8 values as float32, noise background) and their targets."""
    rng = np.random.default_rng(0)
    images = np.round(rng.uniform(0, 60, (len(LAYOUT), *SIZE, 3))).astype("float32")
    boxes = np.zeros((len(LAYOUT), 4, 4), "float32")
    labels = np.full((len(LAYOUT), 4), -1, "int32")
    for i, objects in enumerate(LAYOUT):
        for j, (x1, y1, x2, y2, c) in enumerate(objects):
            images[i, y1:y2, x1:x2] = 0.0
            images[i, y1:y2, x1:x2, c] = 250.0
            boxes[i, j] = (x1, y1, x2, y2)
            labels[i, j] = c
    return images, {"boxes": boxes, "labels": labels}


@pytest.fixture(scope="module")
def trained():
    """A tiny Faster R-CNN fitted (batch 1) on the scene in chunks of 20 epochs until each
    object's best detection scores >= TRAINED (at most 300 epochs). A fixed epoch count was
    not enough: this chaotic little run depends on the CPU's kernels, and on one machine 60
    epochs gave 0.997 / 0.905 / 0.866 while on another the same seed missed object (0, 0)
    (0.076 or no detection), which int8 then lost (AP50 -0.17). Seeds 1-6 on one CPU reached
    all >= 0.7 at 60 epochs in 5 of 6 runs; the INT8 checks need a trained model."""
    keras.utils.set_random_seed(1)
    model = FasterRCNN.from_arch(
        "fasterrcnn_resnet_tiny_fpn", len(CLASSES), image_size=SIZE, seed=1,
        rpn_pre_nms_top_n=(300, 150), rpn_post_nms_top_n=(120, 60),
        rpn_batch_size_per_image=64, box_batch_size_per_image=48, representation_size=64)
    images, targets = scene()
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    # deterministic kernels: without them each run trained another model (scores of 0.44 to
    # 0.97 for one object); grappler off: 4x faster steps of this small graph (test time); batch 1:
    # the train step traces faster (images are unrolled)
    tf.config.experimental.enable_op_determinism()
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    # Keras' own fit, not Detector.fit: its fused BatchNormalization rounds differently, and
    # this chaotic little run then trains another model (one whose int8 box of object (1, 0)
    # is 3 px off); the export, not the training path, is under test here
    model.optimizer.build(model.trainable_variables)
    try:
        for _ in range(MAX_EPOCHS // 20):
            keras.Model.fit(model, images, targets, epochs=20, batch_size=1, verbose=0)
            det = _numpy(model.detect(images))
            scores = [0.0 if ref is None else float(ref[1])
                      for i in range(len(images)) for ref in _best_per_object(det, i)]
            if min(scores) >= TRAINED:
                break
    finally:
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": False})
        tf_config.disable_op_determinism()
    assert min(scores) >= TRAINED, f"not trained after {MAX_EPOCHS} epochs: {scores}"
    return model, images


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    model, images = trained
    root = tmp_path_factory.mktemp("frcnn_data")
    records = []
    for k, objects in enumerate(LAYOUT):
        path = root / f"{k}.png"
        Image.fromarray(images[k].astype(np.uint8)).save(path)
        records.append(DetectionRecord(
            str(path), k + 1, *SIZE, np.float32([o[:4] for o in objects]),
            [o[4] for o in objects], np.zeros(len(objects), bool), np.zeros(len(objects), bool)))
    split = DetectionSplit(records, CLASSES, None, DataReport())
    # the images have the input size, so the model's keep-aspect resize is the identity
    batches = detection_batches(split, image_size=SIZE, resize="keep_aspect", pad_size=SIZE,
                                batch_size=2, max_instances=4, training=False, seed=0,
                                with_meta=True)
    out = tmp_path_factory.mktemp("frcnn_export")
    report = export_detector_and_report(model, out, batches.dataset, split, batches.dataset,
                                        formats=("float32", "int8"), num_calibration=8)
    return model, images, split, batches, out, report


def _numpy(det):
    return {k: np.asarray(v) for k, v in det.items()}


def test_files_hold_builtin_ops_only_and_int8_quantises_the_network(exported):
    out = exported[4]
    for fmt in ("float32", "int8"):
        ops = tflite_op_summary(out / f"model_{fmt}.tflite")
        assert set(ops) <= BUILTIN_OPS, sorted(set(ops) - BUILTIN_OPS)   # no Flex / custom
        assert ops["NON_MAX_SUPPRESSION_V5"] == {"float32": 2}   # proposals + detections
        assert "BATCH_MATMUL" in ops and "GATHER" in ops           # RoIAlign "gather"
    ops = tflite_op_summary(out / "model_int8.tflite")
    # every convolution but the RPN's two 1x1 outputs per level (4 levels) is int8
    assert ops["CONV_2D"]["int8"] >= 19 and ops["CONV_2D"].get("float32", 0) == 8
    assert ops["FULLY_CONNECTED"] == {"int8": 4}               # box head + predictor
    for name in ("TOPK_V2", "EXP", "SOFTMAX", "FLOOR", "BATCH_MATMUL"):
        assert set(ops[name]) == {"float32"}, (name, ops[name])  # ranking / boxes / RoIAlign
    assert TFLiteDetector(out / "model_int8.tflite").input["dtype"] == np.uint8
    assert TFLiteDetector(out / "model_float32.tflite").input["dtype"] == np.float32


def test_float32_detections_equal_keras(exported):
    model, images = exported[:2]
    keras_det = _numpy(model.detect(images))
    tfl = TFLiteDetector(exported[4] / "model_float32.tflite").detect(images)
    np.testing.assert_array_equal(tfl["num_detections"], keras_det["num_detections"])
    assert keras_det["num_detections"].min() > 0
    for i in range(len(images)):
        n = int(keras_det["num_detections"][i])
        np.testing.assert_array_equal(tfl["labels"][i, :n], keras_det["labels"][i, :n])
        np.testing.assert_allclose(tfl["scores"][i, :n], keras_det["scores"][i, :n], atol=1e-3)
        np.testing.assert_allclose(tfl["boxes"][i, :n], keras_det["boxes"][i, :n], atol=0.5)
        assert (tfl["labels"][i, n:] == -1).all()


def _best_per_object(det, i):
    """Per ground-truth object of image ``i``: ``(box, score)`` of the highest-scoring
    detection of its class overlapping it with IoU >= 0.5 (``None`` when there is none)."""
    n = int(det["num_detections"][i])
    out = []
    for *gt, label in LAYOUT[i]:
        iou = np.asarray(pairwise_iou(np.float32([gt]), det["boxes"][i, :n]))[0]
        hits = np.flatnonzero((iou >= 0.5) & (det["labels"][i, :n] == label))
        best = hits[np.argmax(det["scores"][i, hits])] if len(hits) else None
        out.append(None if best is None else (det["boxes"][i, best], det["scores"][i, best]))
    return out


def test_int8_detections_match_keras(exported):
    model, images = exported[:2]
    keras_det = _numpy(model.detect(images))
    int8 = TFLiteDetector(exported[4] / "model_int8.tflite").detect(images)
    for i in range(len(images)):
        # each object's best detection: confident in Keras, and int8 finds the object too
        # (IoU >= 0.5 with it, its class) with a score within 0.15 (up to 0.106 measured) and
        # a box at IoU > 0.6 with Keras' one. The trained model depends on the CPU's kernels (see `trained`): on one
        # machine the boxes agreed at IoU 0.971 - 0.998, on another object (0, 0)'s int8 box
        # came out at IoU 0.73 with Keras' (x1 4.8 -> 0 px), both detections of the object
        for k, (ref, got) in enumerate(zip(_best_per_object(keras_det, i),
                                           _best_per_object(int8, i), strict=True)):
            assert ref is not None and ref[1] >= CONFIDENT, (i, k, ref)
            assert got is not None, (i, k)
            iou = float(np.asarray(pairwise_iou(ref[0][None], got[0][None]))[0, 0])
            assert iou > 0.6, (i, k, ref, got)
            assert abs(float(got[1]) - float(ref[1])) < 0.15, (i, k, ref, got)


def test_report_holds_one_evaluation_of_keras_and_both_files(exported):
    model, _, split, batches, out, report = exported
    assert json.loads((out / "report.json").read_text()) == report
    direct = evaluate_detector(model.predict_on_batch, split, batches.dataset)
    assert report["keras"]["bbox_AP50"] == pytest.approx(direct["bbox_AP50"])
    assert report["keras"]["bbox_AP50"] > 0.9        # trained, so the comparison means something
    assert abs(report["float32"]["bbox_AP_drop_vs_keras"]) < 1e-3
    assert abs(report["int8"]["bbox_AP50_drop_vs_keras"]) < 0.01     # within 1 AP50 point
    assert report["int8"]["size_mb"] < 0.5 * report["float32"]["size_mb"]
    for entry in (report["keras"], report["float32"], report["int8"]):
        assert entry["num_images"] == 2 and entry["latency_ms"] > 0
    assert report["int8"]["path"] == "model_int8.tflite"
    assert report["int8_ops"] == tflite_op_summary(out / "model_int8.tflite")
