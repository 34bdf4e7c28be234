"""TFLite export of an image classifier (float32 / float16 / int8) and its evaluation.

Conversion route (works for functional models and for ``keras.Model`` subclasses, including
ones wrapping keras-hub backbones, in TF 2.21 + Keras 3):

1. ``keras.export.ExportArchive`` tracks the model and gets one ``serve`` endpoint
   ``images float32 [1, H, W, 3] (0..255) -> logits float32 [1, C]`` called with
   ``training=False``; the archive is written as a TF SavedModel in a temporary folder.
2. ``tf.lite.TFLiteConverter.from_saved_model`` converts that SavedModel once per format.

(``from_concrete_functions`` on a ``tf.function`` around a Keras 3 model is NOT used: it leaves
the Keras variables as uninitialised resource variables and the model outputs NaN.) The batch
size is fixed to 1, the usual on-device shape, so every tensor shape in the file is static.
A model built under a mixed-precision policy (``mixed_float16`` / ``mixed_bfloat16``) is traced
with float32 compute (its variables are float32 already; TFLite builtins have no float16
kernels) and its policies are restored afterwards.

Formats (files ``model_<format>.tflite`` in ``out_dir``):

* ``float32``: plain conversion.
* ``float16``: weights stored as float16 (about half the size), computation and the input /
  output stay float32.
* ``int8``: full-integer post-training quantisation (``TFLITE_BUILTINS_INT8`` only, so the
  conversion fails instead of silently keeping float ops), calibrated on up to
  ``num_calibration`` single images of ``representative``. The input is ``uint8``: images are
  0..255 pixels, so a camera / decoded frame feeds in directly; its scale / zero point come from
  the calibration range of the input (about ``1.0 / 0`` when the calibration images span the
  whole 0..255 range; a warning is raised when they do not, since brighter / darker pixels are
  then clipped). The output is ``float32`` logits: the last layer still runs in int8 and a
  final DEQUANTIZE maps its int8 values affinely to float, so top-1 / top-k are exactly those
  of the int8 logits while callers need no output scale / zero point.

Evaluation uses the LiteRT interpreter (``ai_edge_litert.interpreter.Interpreter``; falls back
to the deprecated ``tf.lite.Interpreter`` when ``ai-edge-litert`` is not installed). Inputs and
outputs are (de)quantised with each tensor's own scale / zero point, so any of the three files
(or another classifier ``.tflite`` with one image input) can be evaluated. Sizes are in MiB
(``bytes / 2**20``).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence

import keras
import numpy as np
import tensorflow as tf

from kft.eval.classification import evaluate_classifier

FORMATS = ("float32", "float16", "int8")
WARMUP_RUNS = 3
MAX_KERAS_LATENCY_IMAGES = 50


def export_tflite(
    model: keras.Model,
    out_dir: str | os.PathLike,
    representative: tf.data.Dataset,
    formats: Sequence[str] = FORMATS,
    num_calibration: int = 100,
) -> dict[str, str]:
    """Converts ``model`` to TFLite files.

    Args:
        model: Keras model mapping float32 pixels ``[B, H, W, 3]`` in 0..255 to logits
            ``[B, C]``.
        out_dir: output folder (created).
        representative: ``tf.data.Dataset`` of float32 image batches ``[B, H, W, 3]`` (or of
            ``(images, labels)`` batches, labels ignored). Fixes ``H, W`` of the exported
            input and calibrates ``int8``.
        formats: subset of ``("float32", "float16", "int8")``.
        num_calibration: how many single images calibrate ``int8``.

    Returns:
        ``{format: path of model_<format>.tflite}`` in the order of ``formats``.
    """
    formats = _check_formats(formats)
    image_shape = _image_shape(model, representative)
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    with tempfile.TemporaryDirectory(prefix="kft_savedmodel_") as saved_model_dir:
        _write_saved_model(model, saved_model_dir, image_shape)
        for fmt in formats:
            converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
            _configure(converter, fmt, representative, num_calibration)
            path = os.path.join(os.fspath(out_dir), f"model_{fmt}.tflite")
            with open(path, "wb") as f:
                f.write(converter.convert())
            paths[fmt] = path
    return paths


def evaluate_tflite_classifier(
    path: str | os.PathLike,
    dataset: Iterable,
    class_names: Sequence[str],
    num_threads: int | None = None,
) -> dict:
    """Runs a ``.tflite`` classifier one image at a time over ``dataset`` and scores it.

    Args:
        path: ``.tflite`` file with one image input ``[1, H, W, 3]`` (float32 or quantised
            uint8 / int8) and one logits output ``[1, C]`` (float or quantised).
        dataset: iterable of ``(images float32 [B, H, W, 3] 0..255, one-hot [B, C])`` batches.
        class_names: the ``C`` class names.
        num_threads: interpreter CPU threads (``None``: the interpreter's default).

    Returns:
        :func:`kft.eval.classification.classification_metrics` dict plus ``latency_ms`` (mean
        time of one set-input / invoke / get-output at batch 1, after ``WARMUP_RUNS``
        untimed runs) and ``size_mb`` (file size, MiB).
    """
    runner = _TFLiteRunner(os.fspath(path), num_threads)
    metrics = evaluate_classifier(runner.predict, dataset, class_names)
    metrics["latency_ms"] = runner.mean_latency_ms()
    metrics["size_mb"] = os.path.getsize(path) / 2**20
    return metrics


def export_and_report(
    model: keras.Model,
    out_dir: str | os.PathLike,
    representative: tf.data.Dataset,
    val_dataset: tf.data.Dataset,
    class_names: Sequence[str],
    formats: Sequence[str] = FORMATS,
) -> dict:
    """Exports ``formats`` and writes ``out_dir/report.json`` comparing them with Keras.

    Args:
        model, out_dir, representative, formats: as in :func:`export_tflite`.
        val_dataset: ``(images float32 [B, H, W, 3], one-hot [B, C])`` batches to score on.
        class_names: the ``C`` class names.

    Returns:
        ``{"keras": {accuracy, top5_accuracy, macro_f1, latency_ms, size_mb, num_examples},
        <format>: {same keys, "path", "accuracy_drop_vs_keras"}}`` (what report.json holds).
        ``keras.size_mb`` is the in-memory size of all model weights (``sum(size * itemsize)``,
        i.e. params * 4 bytes for float32), ``keras.latency_ms`` the mean batch-1 time of a
        traced ``model(x, training=False)`` over up to 50 images after warm-up.
    """
    paths = export_tflite(model, out_dir, representative, formats)
    keras_metrics = evaluate_classifier(_keras_predict_fn(model), val_dataset, class_names)
    report = {"keras": _summary(keras_metrics)}
    report["keras"]["latency_ms"] = keras_latency_ms(model, val_dataset)
    report["keras"]["size_mb"] = keras_weights_mb(model)
    for fmt, path in paths.items():
        entry = _summary(evaluate_tflite_classifier(path, val_dataset, class_names))
        entry["path"] = os.path.basename(path)
        entry["accuracy_drop_vs_keras"] = report["keras"]["accuracy"] - entry["accuracy"]
        report[fmt] = entry
    with open(os.path.join(os.fspath(out_dir), "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report


def keras_latency_ms(model: keras.Model, dataset: Iterable,
                     max_images: int = MAX_KERAS_LATENCY_IMAGES) -> float:
    """Mean ms of one batch-1 ``model(x, training=False)`` call (traced, after warm-up).

    Args:
        model: the Keras model.
        dataset: batches of float32 images ``[B, H, W, 3]`` (or ``(images, labels)``).
        max_images: how many images are timed.
    """
    images = list(_single_images(dataset, max_images))
    if not images:
        raise ValueError("keras_latency_ms got an empty dataset")
    forward = tf.function(lambda x: model(x, training=False))
    for _ in range(WARMUP_RUNS):
        forward(images[0]).numpy()
    start = time.perf_counter()
    for image in images:
        forward(image).numpy()
    return (time.perf_counter() - start) * 1000.0 / len(images)


def keras_weights_mb(model: keras.Model) -> float:
    """Size of all weights (trainable and not) in MiB, counted in their storage dtype."""
    total = sum(int(np.prod(w.shape)) * np.dtype(w.dtype).itemsize for w in model.weights)
    return total / 2**20


class _TFLiteRunner:
    """Batch-1 interpreter wrapper that (de)quantises and times every invocation."""

    def __init__(self, path: str, num_threads: int | None):
        self.interpreter = _interpreter_class()(model_path=path, num_threads=num_threads)
        inputs = self.interpreter.get_input_details()
        outputs = self.interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(f"{path}: expected one input and one output, got "
                             f"{len(inputs)} / {len(outputs)}")
        shape = [int(d) for d in inputs[0]["shape"]]
        if len(shape) != 4 or shape[-1] != 3:
            raise ValueError(f"{path}: expected an image input [1, H, W, 3], got {shape}")
        if shape[0] != 1:
            self.interpreter.resize_tensor_input(inputs[0]["index"], [1, *shape[1:]])
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.timings: list[float] = []
        self.warmed_up = False

    def predict(self, images) -> np.ndarray:
        """``float32 [B, H, W, 3]`` -> ``float32 [B, C]`` logits, one invocation per image."""
        images = np.asarray(images, dtype=np.float32)
        expected = tuple(int(d) for d in self.input["shape"][1:])
        if images.ndim != 4 or images.shape[1:] != expected:
            raise ValueError(f"images of shape {images.shape} do not fit the TFLite input "
                             f"[B, {', '.join(map(str, expected))}]")
        if not self.warmed_up:
            for _ in range(WARMUP_RUNS):
                self._invoke(images[:1])
            self.warmed_up = True
        logits = []
        for i in range(len(images)):
            start = time.perf_counter()
            logits.append(self._invoke(images[i:i + 1]))
            self.timings.append(time.perf_counter() - start)
        return np.concatenate(logits, axis=0)

    def _invoke(self, image: np.ndarray) -> np.ndarray:
        """One ``[1, H, W, 3]`` image -> ``float32 [1, C]`` logits."""
        self.interpreter.set_tensor(self.input["index"], quantize_input(image, self.input))
        self.interpreter.invoke()
        raw = self.interpreter.get_tensor(self.output["index"])
        return dequantize_output(raw, self.output).reshape(1, -1)

    def mean_latency_ms(self) -> float:
        """Mean timed invocation in milliseconds."""
        return float(np.mean(self.timings) * 1000.0) if self.timings else float("nan")


def quantize_input(x: np.ndarray, detail: dict) -> np.ndarray:
    """Float pixels -> the dtype of an interpreter input (``get_input_details()`` entry).

    Integer inputs with a scale use ``q = round(x / scale) + zero_point`` clipped to the dtype
    range; integer inputs without one get ``round(x)`` clipped; float inputs a plain cast.
    """
    dtype = np.dtype(detail["dtype"])
    if not np.issubdtype(dtype, np.integer):
        return x.astype(dtype)
    scale, zero_point = detail["quantization"]
    q = np.round(x / scale) + zero_point if scale > 0 else np.round(x)
    info = np.iinfo(dtype)
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize_output(q: np.ndarray, detail: dict) -> np.ndarray:
    """Raw interpreter output -> float32, ``(q - zero_point) * scale`` when quantised."""
    scale, zero_point = detail["quantization"]
    if np.issubdtype(np.dtype(detail["dtype"]), np.integer) and scale > 0:
        return ((q.astype(np.float32) - zero_point) * scale).astype(np.float32)
    return q.astype(np.float32)


def _interpreter_class():
    """LiteRT's ``Interpreter``; ``tf.lite.Interpreter`` when ai-edge-litert is missing."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        return tf.lite.Interpreter
    return Interpreter


def _write_saved_model(model: keras.Model, directory: str, image_shape: tuple) -> None:
    """Writes a SavedModel whose ``serve`` maps ``float32 [1, H, W, 3]`` to float32 logits.

    The graph is traced with every mixed-precision layer switched to float32 compute (see
    :func:`_float32_compute`), since TFLite builtins have no float16 kernels.
    """
    archive = keras.export.ExportArchive()
    archive.track(model)

    def serve(images):
        return tf.cast(model(images, training=False), tf.float32)

    spec = tf.TensorSpec((1, *image_shape), tf.float32, name="images")
    with _float32_compute(model):
        archive.add_endpoint("serve", serve, input_signature=[spec])
        archive.write_out(directory, verbose=False)


@contextlib.contextmanager
def _float32_compute(model: keras.Model):
    """Temporarily gives float32 compute to layers with a mixed (float16 / bfloat16) policy.

    Mixed-precision variables are already float32, so only the compute dtype changes; the
    original policies are restored on exit.
    """
    switched = []
    for layer in model._flatten_layers(include_self=True, recursive=True):
        policy = layer.dtype_policy
        if (policy.quantization_mode is None and policy.variable_dtype == "float32"
                and policy.compute_dtype != "float32"):
            switched.append((layer, policy))
            layer.dtype_policy = "float32"
    try:
        yield
    finally:
        for layer, policy in switched:
            layer.dtype_policy = policy


def _configure(converter, fmt: str, representative: tf.data.Dataset, num_calibration: int):
    """Sets the converter options of one format (see the module docstring)."""
    if fmt == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif fmt == "int8":
        calibration = [image.numpy() for image in _single_images(representative, num_calibration)]
        if not calibration:
            raise ValueError("int8 export needs a non-empty representative dataset")
        _warn_if_narrow_range(calibration)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([image] for image in calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.float32


def _warn_if_narrow_range(images: list[np.ndarray]) -> None:
    """Warns when calibration pixels do not span 0..255 (the uint8 input would clip)."""
    low = min(float(image.min()) for image in images)
    high = max(float(image.max()) for image in images)
    if low > 8.0 or high < 247.0:
        warnings.warn(
            f"int8 calibration images span pixel values {low:.0f}..{high:.0f}, not 0..255: the "
            "uint8 input is quantised to that range and pixels outside it are clipped",
            stacklevel=3)


def _single_images(dataset: Iterable, limit: int) -> Iterator[tf.Tensor]:
    """Yields up to ``limit`` float32 ``[1, H, W, 3]`` images from image (or tuple) batches."""
    count = 0
    for batch in dataset:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        images = tf.convert_to_tensor(images, tf.float32)
        for i in range(int(images.shape[0])):
            if count >= limit:
                return
            yield images[i:i + 1]
            count += 1


def _image_shape(model: keras.Model, representative: tf.data.Dataset) -> tuple[int, int, int]:
    """``(H, W, 3)`` of the representative images, checked against the model's input."""
    spec = representative.element_spec
    spec = spec[0] if isinstance(spec, (tuple, list)) else spec
    shape = tuple(spec.shape[1:]) if spec.shape.rank == 4 else (None,)
    if None in shape:
        first = next(iter(_single_images(representative, 1)), None)
        if first is None:
            raise ValueError("cannot infer the input size: empty representative dataset")
        shape = tuple(first.shape[1:])
    shape = tuple(int(d) for d in shape)
    if len(shape) != 3 or shape[-1] != 3:
        raise ValueError(f"expected images [B, H, W, 3], got representative images {shape}")
    for model_dim, dim in zip(_model_image_shape(model), shape, strict=True):
        if model_dim is not None and model_dim != dim:
            raise ValueError(f"model input {_model_image_shape(model)} does not match the "
                             f"representative images {shape}")
    return shape


def _model_image_shape(model: keras.Model) -> tuple:
    """``(H, W, C)`` of a functional model's input (``None`` entries where unknown)."""
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if not inputs or len(inputs[0].shape) != 4:
        return (None, None, None)
    return tuple(inputs[0].shape[1:])


def _check_formats(formats: Sequence[str]) -> tuple[str, ...]:
    """Validates the requested formats (no duplicates, known names)."""
    formats = (formats,) if isinstance(formats, str) else tuple(formats)
    unknown = [fmt for fmt in formats if fmt not in FORMATS]
    if unknown or not formats or len(set(formats)) != len(formats):
        raise ValueError(f"formats must be distinct values of {FORMATS}, got {formats}")
    return formats


def _keras_predict_fn(model: keras.Model):
    """Traced ``model(x, training=False)`` returning numpy logits."""
    forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    return lambda x: forward(tf.convert_to_tensor(x, tf.float32)).numpy()


def _summary(metrics: dict) -> dict:
    """The report fields of a metrics dict."""
    keys = ("accuracy", "top5_accuracy", "macro_f1", "num_examples", "latency_ms", "size_mb")
    return {key: metrics[key] for key in keys if key in metrics}
