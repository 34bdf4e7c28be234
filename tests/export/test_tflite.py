"""TFLite export (float32 / float16 / int8), interpreter evaluation and report.json."""

import json
import os

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

from kft.export.core import float32_compute, interpreter_class
from kft.export.tflite import (
    TFLiteClassifier,
    dequantize_output,
    evaluate_tflite_classifier,
    export_and_report,
    export_tflite,
    quantize_input,
)

CLASSES = ["red", "green", "blue"]


def _colour_images(n, size, seed):
    """float32 [n, size, size, 3] in 0..255 whose class is the dominant channel."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    images = rng.uniform(0, 80, (n, size, size, 3)).astype(np.float32)
    images[np.arange(n), :, :, labels] += 175.0
    return images, np.eye(3, dtype=np.float32)[labels]


def _tiny_model():
    inputs = keras.Input((32, 32, 3))
    x = layers.Rescaling(1 / 255.0)(inputs)
    x = layers.Conv2D(8, 3, padding="same")(x)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(3)(x))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A trained tiny colour classifier exported in all formats with its report."""
    keras.config.set_dtype_policy("float32")
    keras.utils.set_random_seed(0)
    model = _tiny_model()
    model.compile(optimizer=keras.optimizers.Adam(0.03),
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    x_train, y_train = _colour_images(48, 32, seed=1)
    model.fit(x_train, y_train, batch_size=16, epochs=15, verbose=0)
    x_val, y_val = _colour_images(24, 32, seed=2)
    val = tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(8)
    representative = tf.data.Dataset.from_tensor_slices(x_train).batch(8)
    out_dir = tmp_path_factory.mktemp("tflite")
    report = export_and_report(model, out_dir, representative, val, CLASSES,
                               formats=("float32", "float16", "int8"))
    return {"model": model, "out_dir": out_dir, "report": report, "x_val": x_val, "val": val}


def test_files_and_report_json(exported):
    out_dir = exported["out_dir"]
    for fmt in ("float32", "float16", "int8"):
        assert os.path.getsize(out_dir / f"model_{fmt}.tflite") > 1_000
    report = json.loads((out_dir / "report.json").read_text())
    assert report == exported["report"]
    assert set(report) == {"keras", "float32", "float16", "int8"}
    for entry in report.values():
        assert {"accuracy", "macro_f1", "latency_ms", "size_mb"} <= set(entry)
        assert entry["num_examples"] == 24
        assert entry["latency_ms"] > 0 and entry["size_mb"] > 0
    assert report["int8"]["accuracy_drop_vs_keras"] == pytest.approx(
        report["keras"]["accuracy"] - report["int8"]["accuracy"])
    assert report["keras"]["accuracy"] >= 0.9  # the toy problem was learned
    assert report["float32"]["accuracy"] == report["keras"]["accuracy"]


def test_float32_matches_keras(exported):
    x = exported["x_val"][:6]
    expected = exported["model"].predict(x, verbose=0)
    runner = TFLiteClassifier(str(exported["out_dir"] / "model_float32.tflite"), num_threads=1)
    np.testing.assert_allclose(runner.predict(x), expected, atol=1e-4)
    assert list(runner.input["shape"]) == [1, 32, 32, 3]


def test_float16_stores_float16_weights(exported):
    interpreter = interpreter_class()(
        model_path=str(exported["out_dir"] / "model_float16.tflite"))
    dtypes = {np.dtype(t["dtype"]) for t in interpreter.get_tensor_details()}
    assert np.dtype(np.float16) in dtypes
    assert np.dtype(interpreter.get_input_details()[0]["dtype"]) == np.float32
    assert exported["report"]["float16"]["accuracy"] >= exported["report"]["keras"]["accuracy"] - 0.05


def test_int8_is_uint8_in_float_out_and_keeps_accuracy(exported):
    runner = TFLiteClassifier(str(exported["out_dir"] / "model_int8.tflite"), num_threads=1)
    assert np.dtype(runner.input["dtype"]) == np.uint8
    scale, zero_point = runner.input["quantization"]
    assert scale == pytest.approx(1.0, abs=0.05) and zero_point == 0  # calibrated on 0..255
    assert np.dtype(runner.output["dtype"]) == np.float32
    conv_dtypes = {np.dtype(t["dtype"]) for t in runner.interpreter.get_tensor_details()
                   if "conv" in t["name"].lower()}
    assert np.dtype(np.int8) in conv_dtypes
    assert exported["report"]["int8"]["accuracy_drop_vs_keras"] <= 0.1
    logits = runner.predict(exported["x_val"][:6])
    expected = exported["model"].predict(exported["x_val"][:6], verbose=0)
    np.testing.assert_allclose(logits, expected, atol=0.1 * np.abs(expected).max())


def test_evaluate_tflite_classifier_returns_metrics(exported):
    path = exported["out_dir"] / "model_float32.tflite"
    metrics = evaluate_tflite_classifier(path, exported["val"], CLASSES, num_threads=1)
    assert metrics["num_examples"] == 24
    assert metrics["confusion_matrix"] and set(metrics["per_class"]) == set(CLASSES)
    assert metrics["size_mb"] == pytest.approx(os.path.getsize(path) / 2**20)
    wrong_size = tf.data.Dataset.from_tensor_slices(
        (np.zeros((2, 16, 16, 3), np.float32), np.eye(3, dtype=np.float32)[:2])).batch(2)
    with pytest.raises(ValueError, match="do not fit the TFLite input"):
        evaluate_tflite_classifier(path, wrong_size, CLASSES)


def test_narrow_calibration_range_warns_and_bad_formats_raise(exported, tmp_path):
    # (images, labels) batches are accepted as representative data too.
    labels = np.eye(3, dtype=np.float32)[np.arange(24) % 3]
    dim = tf.data.Dataset.from_tensor_slices((exported["x_val"] * 0.5, labels)).batch(8)
    with pytest.warns(UserWarning, match="not 0..255"):
        export_tflite(exported["model"], tmp_path, dim, formats=("int8",))
    with pytest.raises(ValueError, match="formats must be"):
        export_tflite(exported["model"], tmp_path, dim, formats=("int4",))
    wrong = tf.data.Dataset.from_tensor_slices(np.zeros((2, 16, 16, 3), np.float32)).batch(2)
    with pytest.raises(ValueError, match="does not match"):
        export_tflite(exported["model"], tmp_path, wrong, formats=("float32",))


def test_int8_export_prints_no_converter_or_runtime_noise(tmp_path, capfd):
    """The int8 quantiser's "fully_quantize: ..." line and the runtime's "INFO: Created
    TensorFlow Lite XNNPACK delegate" line stay out of a run's output (TF_CPP_MIN_LOG_LEVEL
    >= 2, kft's default); the report is still written."""
    keras.utils.set_random_seed(0)
    model = _tiny_model()
    x, y = _colour_images(8, 32, seed=3)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    capfd.readouterr()
    report = export_and_report(model, tmp_path, tf.data.Dataset.from_tensor_slices(x).batch(4),
                               data, CLASSES, formats=("int8",))
    err = capfd.readouterr().err
    assert report["int8"]["num_examples"] == 8
    assert "fully_quantize" not in err and "XNNPACK" not in err, err


def test_quantisation_helpers():
    int8 = {"dtype": np.int8, "quantization": (0.5, -10)}
    q = quantize_input(np.array([0.0, 1.2, 200.0, -100.0], np.float32), int8)
    np.testing.assert_array_equal(q, np.array([-10, -8, 127, -128], np.int8))
    np.testing.assert_allclose(dequantize_output(np.array([-10, 0, 127], np.int8), int8),
                               [0.0, 5.0, 68.5])
    uint8 = {"dtype": np.uint8, "quantization": (1.0, 0)}
    np.testing.assert_array_equal(quantize_input(np.array([-3.0, 12.6, 300.0]), uint8),
                                  [0, 13, 255])
    floats = {"dtype": np.float32, "quantization": (0.0, 0)}
    np.testing.assert_array_equal(dequantize_output(np.array([1.5, -2.0]), floats), [1.5, -2.0])


class BackboneClassifier(keras.Model):
    """Subclassed model: keras-hub ResNetBackbone -> global average pooling -> Dense."""

    def __init__(self, num_classes, **kwargs):
        super().__init__(**kwargs)
        self.backbone = keras_hub.models.ResNetBackbone(
            input_conv_filters=[64], input_conv_kernel_sizes=[7],
            stackwise_num_filters=[64, 64, 64], stackwise_num_blocks=[1, 1, 1],
            stackwise_num_strides=[1, 2, 2], block_type="basic_block",
            use_pre_activation=False, image_shape=(64, 64, 3))
        self.pool = layers.GlobalAveragePooling2D()
        self.head = layers.Dense(num_classes)

    def call(self, images, training=False):
        features = self.backbone((images - 127.5) / 64.0, training=training)
        return self.head(self.pool(features))


def test_subclassed_keras_hub_resnet_converts_to_float32(tmp_path):
    keras.utils.set_random_seed(0)
    model = BackboneClassifier(3)
    images, _ = _colour_images(4, 64, seed=3)
    expected = model.predict(images, verbose=0)
    representative = tf.data.Dataset.from_tensor_slices(images).batch(2)
    paths = export_tflite(model, tmp_path, representative, formats=("float32",))
    assert paths == {"float32": str(tmp_path / "model_float32.tflite")}
    runner = TFLiteClassifier(paths["float32"], num_threads=1)
    logits = runner.predict(images)
    assert np.all(np.isfinite(logits))
    np.testing.assert_allclose(logits, expected, atol=1e-4 * max(1.0, np.abs(expected).max()))


def test_mixed_precision_resnet_classifier_exports_withfloat32_compute(tmp_path):
    from kft.models.classifier import ResNetClassifier

    keras.config.set_dtype_policy("mixed_float16")  # the autouse fixture restores float32
    keras.utils.set_random_seed(0)
    model = ResNetClassifier.from_arch("resnet_tiny", num_classes=3, image_size=64)
    policies = [layer.dtype_policy.name for layer in model._flatten_layers()]
    assert "mixed_float16" in policies
    images = np.random.default_rng(4).uniform(0, 255, (4, 64, 64, 3)).astype(np.float32)
    representative = tf.data.Dataset.from_tensor_slices(images).batch(2)
    paths = export_tflite(model, tmp_path, representative, formats=("float32", "int8"))
    assert [layer.dtype_policy.name for layer in model._flatten_layers()] == policies
    with float32_compute(model):
        expected = model(images, training=False).numpy()
    assert [layer.dtype_policy.name for layer in model._flatten_layers()] == policies
    float32 = TFLiteClassifier(paths["float32"], num_threads=1).predict(images)
    np.testing.assert_allclose(float32, expected, atol=1e-4 * max(1.0, np.abs(expected).max()))
    int8 = TFLiteClassifier(paths["int8"], num_threads=1).predict(images)
    np.testing.assert_allclose(int8, expected, atol=0.1 * np.abs(expected).max())
