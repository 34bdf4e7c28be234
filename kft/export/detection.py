"""TFLite export of SSD detectors (float32 / float16 / int8) with the post-processing in the
graph, and their COCO evaluation against the Keras model (C1).

Route (as for classifiers, see :mod:`kft.export.tflite`): ``keras.export.ExportArchive`` tracks
the model and gets one ``serve`` endpoint ``images float32 [1, H, W, 3] (0..255) -> {"boxes"
[1, D, 4], "scores" [1, D], "labels" [1, D] int32, "num_detections" [1] int32}`` that calls
``model.detect`` (network + :class:`~kft.models.ssd.SSDDecoder`: softmax, box decoding,
clipping and per-class NMS); ``tf.lite.TFLiteConverter.from_saved_model`` converts it. Every
shape is static (batch 1, ``D = max_detections`` rows padded with label -1), and the NMS is the
TFLite builtin ``NON_MAX_SUPPRESSION_V5`` (no Flex delegate, no custom op), so the file runs
on any TFLite / LiteRT runtime.

Formats (``model_<format>.tflite``):

* ``float32``: plain conversion.
* ``float16``: float16 weights, float32 compute.
* ``int8``: full-integer post-training quantisation of the network: every convolution,
  depthwise convolution, add and the head run on int8 tensors with int8 weights, calibrated on
  ``num_calibration`` images of ``representative`` (the training pipeline without
  augmentation). The post-processing (softmax, box decoding, NMS) stays float32 by selective
  quantisation (see :func:`_int8_with_float_decoder`): TFLite's NMS has no integer kernel, and
  8-bit box decoding cost 0.2 AP (AP75 0.52 -> 0.11) on the quick start's model. The file
  takes ``uint8`` pixels ``[1, H, W, 3]`` (camera bytes, resized): its ``serve`` function casts
  them to float32 and the first op quantises them to int8. :func:`tflite_op_summary` lists which
  ops run on which types; the tests check that no convolution stays float.
"""

from __future__ import annotations

import collections
import json
import os
import tempfile
import time
from collections.abc import Iterable, Sequence

import keras
import numpy as np
import tensorflow as tf

from kft.eval.detection import evaluate_detector
from kft.export.tflite import (
    WARMUP_RUNS,
    _check_formats,
    _float32_compute,
    _interpreter_class,
    _single_images,
    keras_weights_mb,
    quantize_input,
)

DETECTION_KEYS = ("boxes", "scores", "labels", "num_detections")
MAX_KERAS_LATENCY_IMAGES = 50


def export_detector(model, out_dir: str | os.PathLike, representative: Iterable,
                    formats: Sequence[str] = ("float32", "int8"),
                    num_calibration: int = 100) -> dict[str, str]:
    """Converts an SSD (anything with ``detect(images)`` and a static image input) to TFLite.

    Args:
        model: :class:`~kft.models.ssd.SSD`.
        out_dir: output folder (created).
        representative: iterable of image batches ``float32 [B, H, W, 3]`` or of tuples whose
            first item is one (``detection_batches(..., training=False)``); calibrates int8.
        formats: subset of ``("float32", "float16", "int8")``.
        num_calibration: how many single images calibrate int8.

    Returns:
        ``{format: path}``.
    """
    formats = _check_formats(formats)
    image_shape = tuple(int(d) for d in model.input_shape[1:])
    if len(image_shape) != 3 or image_shape[-1] != 3:
        raise ValueError(f"expected a model with image input [B, H, W, 3], got {image_shape}")
    calibration = None
    if "int8" in formats:
        calibration = [image.numpy() for image in _single_images(representative,
                                                                   num_calibration)]
        if not calibration:
            raise ValueError("int8 export needs a non-empty representative dataset")
        if calibration[0].shape[1:] != image_shape:
            raise ValueError(f"representative images {calibration[0].shape[1:]} do not match "
                             f"the model input {image_shape}")
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    with tempfile.TemporaryDirectory(prefix="kft_detector_") as tmp:
        saved_model_dir = os.path.join(tmp, "float_input")
        if set(formats) - {"int8"}:  # float files take float32 pixels
            _write_detector_saved_model(model, saved_model_dir, image_shape)
        for fmt in formats:
            if fmt == "int8":
                uint8_dir = os.path.join(tmp, "uint8_input")
                _write_detector_saved_model(model, uint8_dir, image_shape, tf.uint8)
                content = _int8_with_float_decoder(
                    uint8_dir, [np.clip(np.round(c), 0, 255).astype(np.uint8)
                                for c in calibration])
            else:
                converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
                if fmt == "float16":
                    converter.optimizations = [tf.lite.Optimize.DEFAULT]
                    converter.target_spec.supported_types = [tf.float16]
                content = converter.convert()
            path = os.path.join(os.fspath(out_dir), f"model_{fmt}.tflite")
            with open(path, "wb") as f:
                f.write(content)
            paths[fmt] = path
    return paths


def _int8_with_float_decoder(saved_model_dir: str, calibration: list) -> bytes:
    """Full-integer network, float32 post-processing (selective quantisation).

    Every tensor of the decoder (names under its ``decoder`` scope, read from a float
    conversion of the same graph) is denylisted in ``tf.lite.experimental.
    QuantizationDebugger``; everything else is quantised to int8 with ranges calibrated on
    ``calibration``. Quantising the decoder too would give box coordinates 8-bit steps of
    several pixels (its ranges are set by the widest decoded background boxes).
    """
    float_model = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir).convert()
    interpreter = _interpreter_class()(model_content=float_model)
    decoder = sorted({t["name"] for t in interpreter.get_tensor_details()
                      if "decoder" in t["name"]})
    if not decoder:
        raise ValueError("int8 export: no decoder tensors found to keep in float32")
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([c] for c in calibration)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                           tf.lite.OpsSet.TFLITE_BUILTINS]
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=lambda: ([c] for c in calibration[:1]),
        debug_options=tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=decoder))
    return debugger.get_nondebug_quantized_model()


def _write_detector_saved_model(model, directory: str, image_shape: tuple,
                                input_dtype=tf.float32) -> None:
    """A SavedModel with one ``serve`` endpoint ``images [1, H, W, 3] input_dtype -> dict``."""
    archive = keras.export.ExportArchive()
    archive.track(model)

    def serve(images):
        det = model.detect(tf.cast(images, tf.float32))
        return {"boxes": tf.cast(det["boxes"], tf.float32),
                "scores": tf.cast(det["scores"], tf.float32),
                "labels": tf.cast(det["labels"], tf.int32),
                "num_detections": tf.cast(det["num_detections"], tf.int32)}

    spec = tf.TensorSpec((1, *image_shape), input_dtype, name="images")
    with _float32_compute(model):
        archive.add_endpoint("serve", serve, input_signature=[spec])
        archive.write_out(directory, verbose=False)


class TFLiteDetector:
    """Runs a detector ``.tflite`` (from :func:`export_detector`) one image at a time.

    ``detect(images float32 [B, H, W, 3])`` returns the dict of ``SSD.detect`` as numpy arrays
    (batch rows stacked); every invocation is timed (``mean_latency_ms``) after
    ``WARMUP_RUNS`` untimed ones.
    """

    def __init__(self, path: str | os.PathLike, num_threads: int | None = None):
        self.path = os.fspath(path)
        self.interpreter = _interpreter_class()(model_path=self.path, num_threads=num_threads)
        signatures = self.interpreter.get_signature_list()
        if len(signatures) != 1:
            raise ValueError(f"{self.path}: expected one signature, got {list(signatures)}")
        self.runner = self.interpreter.get_signature_runner(next(iter(signatures)))
        inputs = self.runner.get_input_details()
        if len(inputs) != 1:
            raise ValueError(f"{self.path}: expected one image input, got {list(inputs)}")
        self.input_name, self.input = next(iter(inputs.items()))
        outputs = set(self.runner.get_output_details())
        if not set(DETECTION_KEYS) <= outputs:
            raise ValueError(f"{self.path}: outputs {sorted(outputs)} lack "
                             f"{sorted(set(DETECTION_KEYS) - outputs)}")
        self.image_shape = tuple(int(d) for d in self.input["shape"][1:])
        self.timings: list[float] = []
        self.warmed_up = False

    def detect(self, images) -> dict:
        images = np.asarray(images, np.float32)
        if images.ndim != 4 or images.shape[1:] != self.image_shape:
            raise ValueError(f"images of shape {images.shape} do not fit the TFLite input "
                             f"[B, {', '.join(map(str, self.image_shape))}] of {self.path}")
        if not self.warmed_up:
            for _ in range(WARMUP_RUNS):
                self._invoke(images[:1])
            self.warmed_up = True
        rows = []
        for i in range(len(images)):
            start = time.perf_counter()
            rows.append(self._invoke(images[i:i + 1]))
            self.timings.append(time.perf_counter() - start)
        return {k: np.concatenate([r[k] for r in rows], axis=0) for k in DETECTION_KEYS}

    def _invoke(self, image: np.ndarray) -> dict:
        out = self.runner(**{self.input_name: quantize_input(image, self.input)})
        return {"boxes": out["boxes"].astype(np.float32).reshape(1, -1, 4),
                "scores": out["scores"].astype(np.float32).reshape(1, -1),
                "labels": out["labels"].astype(np.int32).reshape(1, -1),
                "num_detections": out["num_detections"].astype(np.int32).reshape(1)}

    def mean_latency_ms(self) -> float:
        return float(np.mean(self.timings) * 1000.0) if self.timings else float("nan")


def tflite_op_summary(path: str | os.PathLike) -> dict[str, dict[str, int]]:
    """``{op name: {input dtype of its first input: count}}`` of a ``.tflite`` file, e.g.
    ``{"CONV_2D": {"int8": 52}, "NON_MAX_SUPPRESSION_V5": {"float32": 1}}``."""
    interpreter = _interpreter_class()(model_path=os.fspath(path))
    interpreter.allocate_tensors()
    dtypes = {t["index"]: np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details()}
    summary: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for op in interpreter._get_ops_details():
        inputs = [i for i in op["inputs"] if i >= 0]
        summary[op["op_name"]][dtypes.get(inputs[0], "none") if inputs else "none"] += 1
    return {name: dict(counts) for name, counts in sorted(summary.items())}


def evaluate_tflite_detector(path: str | os.PathLike, split, batches, voc: bool = False,
                             num_threads: int | None = None) -> dict:
    """COCO (+ VOC) metrics of a detector ``.tflite`` on ``batches`` (``detection_batches(...,
    with_meta=True)``), in original image pixels, plus ``latency_ms`` and ``size_mb``."""
    runner = TFLiteDetector(path, num_threads)
    metrics = evaluate_detector(runner.detect, split, batches, voc=voc)
    metrics["latency_ms"] = runner.mean_latency_ms()
    metrics["size_mb"] = os.path.getsize(path) / 2**20
    return metrics


def keras_detector_latency_ms(model, batches, max_images: int = MAX_KERAS_LATENCY_IMAGES):
    """Mean ms of one traced batch-1 ``model.detect`` call (after warm-up)."""
    images = list(_single_images(batches, max_images))
    if not images:
        raise ValueError("keras_detector_latency_ms got an empty dataset")
    forward = tf.function(model.detect)
    for _ in range(WARMUP_RUNS):
        forward(images[0])["boxes"].numpy()
    start = time.perf_counter()
    for image in images:
        forward(image)["boxes"].numpy()
    return (time.perf_counter() - start) * 1000.0 / len(images)


_REPORT_KEYS = ("bbox_AP", "bbox_AP50", "bbox_AP75", "voc07_mAP", "num_images", "latency_ms",
                "size_mb")


def export_detector_and_report(model, out_dir: str | os.PathLike, representative, val_split,
                               val_batches, formats: Sequence[str] = ("float32", "int8"),
                               voc: bool = False, num_calibration: int = 100,
                               keras_metrics: dict | None = None) -> dict:
    """Exports ``formats`` and writes ``out_dir/report.json`` comparing them with Keras.

    Keras and every TFLite file are scored by the same :func:`evaluate_detector` on the same
    ``val_batches``. Returns (and writes) ``{"keras": {bbox_AP, bbox_AP50, bbox_AP75,
    [voc07_mAP], num_images, latency_ms, size_mb}, <format>: {same, "path",
    "bbox_AP_drop_vs_keras", "bbox_AP50_drop_vs_keras"}, "int8_ops": op summary}``.
    ``keras_metrics``: the model's :func:`evaluate_detector` metrics on these batches when the
    caller has them already (a run's final evaluation), so they are not computed twice.
    """
    paths = export_detector(model, out_dir, representative, formats, num_calibration)
    keras_metrics = dict(keras_metrics) if keras_metrics is not None else evaluate_detector(
        model.predict_on_batch, val_split, val_batches, voc=voc)
    keras_metrics["latency_ms"] = keras_detector_latency_ms(model, val_batches)
    keras_metrics["size_mb"] = keras_weights_mb(model)
    report = {"keras": _pick(keras_metrics)}
    for fmt, path in paths.items():
        entry = _pick(evaluate_tflite_detector(path, val_split, val_batches, voc=voc))
        entry["path"] = os.path.basename(path)
        for key in ("bbox_AP", "bbox_AP50"):
            if report["keras"].get(key) is not None and entry.get(key) is not None:
                entry[f"{key}_drop_vs_keras"] = report["keras"][key] - entry[key]
        report[fmt] = entry
    if "int8" in paths:
        report["int8_ops"] = tflite_op_summary(paths["int8"])
    with open(os.path.join(os.fspath(out_dir), "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report


def _pick(metrics: dict) -> dict:
    return {k: metrics[k] for k in _REPORT_KEYS if k in metrics}
