"""Detector TFLite export: float32 equals Keras, INT8 runs an int8 network with float
post-processing, and report.json holds real AP numbers from the same evaluation."""

import json
from pathlib import Path

import keras
import numpy as np
import pytest

import kft.models  # noqa: F401  (registers the classes of the shipped checkpoint)
from kft.data import detection_batches, make_shapes_detection, read_voc
from kft.eval.detection import evaluate_detector
from kft.export.detection import (
    TFLiteDetector,
    export_detector,
    export_detector_and_report,
    tflite_op_summary,
)

CHECKPOINT = Path(__file__).resolve().parents[2] / "pretrained" / "ssdlite_shapes3.keras"
CLASSES = ("cross", "hexagon", "diamond")  # what the shipped checkpoint detects


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = make_shapes_detection(tmp_path_factory.mktemp("exp") / "shapes", classes=CLASSES,
                                 num_train=24, num_val=12, image_size=128, seed=21)
    train = read_voc(root / "VOC", "train", class_names=list(CLASSES))
    val = read_voc(root / "VOC", "val", class_names=list(CLASSES))
    model = keras.saving.load_model(CHECKPOINT, compile=False)
    val_batches = detection_batches(val, image_size=128, batch_size=6, max_instances=8,
                                    training=False, with_meta=True, seed=0)
    rep = detection_batches(train, image_size=128, batch_size=8, max_instances=8,
                            training=False, seed=0)
    out = tmp_path_factory.mktemp("export")
    report = export_detector_and_report(model, out, rep.dataset, val, val_batches.dataset,
                                        formats=("float32", "int8"), num_calibration=24)
    return model, val, val_batches, out, report


def test_float32_detections_equal_keras(setup):
    model, _, val_batches, out, _ = setup
    images = next(iter(val_batches.dataset))[0].numpy()
    keras_det = {k: np.asarray(v) for k, v in model.predict_on_batch(images).items()}
    tfl = TFLiteDetector(out / "model_float32.tflite").detect(images)
    np.testing.assert_array_equal(tfl["num_detections"], keras_det["num_detections"])
    for i in range(len(images)):
        n = int(keras_det["num_detections"][i])
        confident = keras_det["scores"][i, :n] > 0.2  # away from score ties at the tail
        np.testing.assert_allclose(tfl["scores"][i, :n][confident],
                                   keras_det["scores"][i, :n][confident], atol=1e-4)
        np.testing.assert_allclose(tfl["boxes"][i, :n][confident],
                                   keras_det["boxes"][i, :n][confident], atol=1e-2)
        np.testing.assert_array_equal(tfl["labels"][i, :n][confident],
                                      keras_det["labels"][i, :n][confident])


def test_int8_network_is_integer_and_post_processing_float(setup):
    ops = tflite_op_summary(setup[3] / "model_int8.tflite")
    assert set(ops["CONV_2D"]) == {"int8"} and set(ops["DEPTHWISE_CONV_2D"]) == {"int8"}
    assert ops["NON_MAX_SUPPRESSION_V5"] == {"float32": 1}
    assert set(ops["EXP"]) == {"float32"}  # box decoding kept in float
    runner = TFLiteDetector(setup[3] / "model_int8.tflite")
    assert runner.input["dtype"] == np.uint8  # camera bytes in; float files take float32
    assert TFLiteDetector(setup[3] / "model_float32.tflite").input["dtype"] == np.float32


def test_report_holds_the_same_evaluation_for_keras_and_tflite(setup):
    model, val, val_batches, out, report = setup
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["keras"]["bbox_AP50"] == report["keras"]["bbox_AP50"]
    direct = evaluate_detector(model.predict_on_batch, val, val_batches.dataset)
    assert report["keras"]["bbox_AP50"] == pytest.approx(direct["bbox_AP50"])
    assert report["keras"]["bbox_AP50"] > 0.3  # a trained model, so the comparison means something
    assert abs(report["float32"]["bbox_AP50_drop_vs_keras"]) < 1e-3
    assert abs(report["int8"]["bbox_AP50_drop_vs_keras"]) < 0.05
    assert report["int8"]["size_mb"] < 0.5 * report["float32"]["size_mb"]
    assert report["int8"]["path"] == "model_int8.tflite" and report["int8"]["num_images"] == 12


def test_wrong_representative_size_is_a_clear_error(setup, tmp_path):
    model = setup[0]
    bad = [np.zeros((1, 96, 96, 3), np.float32)]
    with pytest.raises(ValueError, match="do not match the model input"):
        export_detector(model, tmp_path, bad, formats=("int8",))
