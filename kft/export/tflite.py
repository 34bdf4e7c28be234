"""TFLite export of an image classifier (float32 / float16 / int8) and its evaluation.

A thin layer over :mod:`kft.export.core` (SavedModel, conversion, timed interpreter): the serve
function is ``images float32 [1, H, W, 3] (0..255) -> logits float32 [1, C]`` called with
``training=False``.

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

Any classifier ``.tflite`` with one image input and one logits output can be evaluated
(:class:`TFLiteClassifier`). Sizes are in MiB (``bytes / 2**20``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import keras
import numpy as np
import tensorflow as tf

from kft.eval.classification import evaluate_classifier
from kft.export import core
from kft.export.core import (  # noqa: F401 - part of this module's API
    FORMATS,
    MAX_KERAS_LATENCY_IMAGES,
    dequantize_output,
    keras_weights_mb,
    quantize_input,
)


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
    formats = core.check_formats(formats)
    image_shape = _image_shape(model, representative)
    calibration = (core.calibration_images(representative, num_calibration)
                   if "int8" in formats else ())

    def serve(images):
        return tf.cast(model(images, training=False), tf.float32)

    return core.export_formats(model, out_dir, image_shape, formats, serve, calibration)


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
    runner = TFLiteClassifier(path, num_threads)
    metrics = evaluate_classifier(runner.predict, dataset, class_names)
    metrics["latency_ms"] = runner.mean_latency_ms()
    metrics["size_mb"] = core.file_mb(path)
    return metrics


def export_and_report(
    model: keras.Model,
    out_dir: str | os.PathLike,
    representative: tf.data.Dataset,
    val_dataset: tf.data.Dataset,
    class_names: Sequence[str],
    formats: Sequence[str] = FORMATS,
    num_calibration: int = 100,
    keras_metrics: dict | None = None,
) -> dict:
    """Exports ``formats`` and writes ``out_dir/report.json`` comparing them with Keras.

    Args:
        model, out_dir, representative, formats, num_calibration: as in :func:`export_tflite`.
        val_dataset: ``(images float32 [B, H, W, 3], one-hot [B, C])`` batches to score on.
        class_names: the ``C`` class names.
        keras_metrics: the model's :func:`evaluate_classifier` metrics on ``val_dataset`` when
            the caller has them already (a run's final evaluation), so they are not computed
            twice.

    Returns:
        ``{"keras": {accuracy, top5_accuracy, macro_f1, latency_ms, size_mb, num_examples},
        <format>: {same keys, "path", "accuracy_drop_vs_keras"}}`` (what report.json holds).
        ``keras.size_mb`` is the in-memory size of all model weights (``sum(size * itemsize)``,
        i.e. params * 4 bytes for float32), ``keras.latency_ms`` the mean batch-1 time of a
        traced ``model(x, training=False)`` over up to 50 images after warm-up.
    """
    paths = export_tflite(model, out_dir, representative, formats, num_calibration)
    if keras_metrics is None:
        keras_metrics = evaluate_classifier(_keras_predict_fn(model), val_dataset, class_names)
    report = {"keras": _summary(keras_metrics)}
    report["keras"]["latency_ms"] = keras_latency_ms(model, val_dataset)
    report["keras"]["size_mb"] = keras_weights_mb(model)
    for fmt, path in paths.items():
        entry = _summary(evaluate_tflite_classifier(path, val_dataset, class_names))
        entry["path"] = os.path.basename(path)
        entry["accuracy_drop_vs_keras"] = report["keras"]["accuracy"] - entry["accuracy"]
        report[fmt] = entry
    return core.write_report(out_dir, report)


def keras_latency_ms(model: keras.Model, dataset: Iterable,
                     max_images: int = MAX_KERAS_LATENCY_IMAGES) -> float:
    """Mean ms of one batch-1 ``model(x, training=False)`` call (traced, after warm-up).

    Args:
        model: the Keras model.
        dataset: batches of float32 images ``[B, H, W, 3]`` (or ``(images, labels)``).
        max_images: how many images are timed.
    """
    return core.keras_latency_ms(lambda x: model(x, training=False), dataset, max_images)


class TFLiteClassifier:
    """A classifier ``.tflite`` (one image input, one logits output) run one image at a time:
    ``predict(images float32 [B, H, W, 3]) -> float32 [B, C]`` logits, every invocation timed
    (:class:`kft.export.core.TimedInterpreter`)."""

    def __init__(self, path: str | os.PathLike, num_threads: int | None = None):
        self.timed = core.TimedInterpreter(path, num_threads)
        if len(self.timed.outputs) != 1:
            raise ValueError(f"{self.timed.path}: expected one output, got "
                             f"{len(self.timed.outputs)}")
        self.interpreter = self.timed.interpreter
        self.input = self.timed.input
        self.output_name, self.output = next(iter(self.timed.outputs.items()))

    def predict(self, images) -> np.ndarray:
        rows = self.timed.run_batch(images)
        return np.concatenate([r[self.output_name].reshape(1, -1) for r in rows], axis=0)

    def mean_latency_ms(self) -> float:
        return self.timed.mean_latency_ms()

    @property
    def num_classes(self) -> int:
        """``C`` of the logits output ``[1, C]``."""
        return int(np.prod(self.output["shape"][1:]))

    def predict_image(self, pixels, class_names=None, top_k: int = 3) -> dict:
        """The ``top_k`` classes of one image, as ``kft predict`` prints them.

        Args:
            pixels: ``uint8 [H, W, 3]`` RGB at the image's own size; resized to the file's
                input as the training / evaluation pipeline resizes
                (:func:`kft.data.pipeline.resize_uint8`, like the Keras model's prediction).
            class_names: the ``C`` names (``None``: labels are printed as numbers).
            top_k: how many classes.

        Returns:
            :func:`top_classes` of the logits (untimed: one invocation, no warm-up).
        """
        from kft.data.pipeline import resize_uint8

        h, w = self.timed.image_shape[:2]
        x = np.asarray(resize_uint8(pixels, (h, w)), dtype=np.float32)[None]
        logits = np.asarray(self.timed.run(x)[self.output_name]).reshape(-1)
        return top_classes(logits, class_names, top_k)


def top_classes(logits, class_names=None, top_k: int = 3) -> dict:
    """``{"top": [{"label", "class", "prob"}]}``: the ``top_k`` classes of ``logits [C]`` by
    softmax probability, best first; ``class`` is ``class_names[label]`` (the label as a
    string when there are no names or too few)."""
    logits = np.asarray(logits, dtype=np.float32).reshape(-1)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    names = list(class_names or ())
    return {"top": [{"label": int(i), "class": names[i] if i < len(names) else str(int(i)),
                     "prob": float(probs[i])} for i in np.argsort(-probs)[:top_k]]}


def _image_shape(model: keras.Model, representative: tf.data.Dataset) -> tuple[int, int, int]:
    """``(H, W, 3)`` of the representative images, checked against the model's input."""
    spec = representative.element_spec
    spec = spec[0] if isinstance(spec, (tuple, list)) else spec
    shape = tuple(spec.shape[1:]) if spec.shape.rank == 4 else (None,)
    if None in shape:
        first = next(iter(core.single_images(representative, 1)), None)
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


def _keras_predict_fn(model: keras.Model):
    """Traced ``model(x, training=False)`` returning numpy logits."""
    forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    return lambda x: forward(tf.convert_to_tensor(x, tf.float32)).numpy()


def _summary(metrics: dict) -> dict:
    """The report fields of a metrics dict."""
    keys = ("accuracy", "top5_accuracy", "macro_f1", "num_examples", "latency_ms", "size_mb")
    return {key: metrics[key] for key in keys if key in metrics}
