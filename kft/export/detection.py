"""TFLite export of detectors (SSD, Faster R-CNN; float32 / float16 / int8) with the
post-processing in the graph, and their COCO evaluation against the Keras model (C1).

Route (the export core, :mod:`kft.export.core`): ``keras.export.ExportArchive`` tracks
the model and gets one ``serve`` endpoint ``images float32 [1, H, W, 3] (0..255) -> {"boxes"
[1, D, 4], "scores" [1, D], "labels" [1, D] int32, "num_detections" [1] int32}`` that calls
``model.detect`` (SSD: network + :class:`~kft.models.ssd.SSDDecoder`: softmax, box decoding,
clipping and per-class NMS; Faster R-CNN: network, proposals, RoIAlign, box head and
:class:`~kft.models.heads.box.BoxDecoder`); ``tf.lite.TFLiteConverter.from_saved_model``
converts it. Every shape is static (batch 1, ``D = max_detections`` rows padded with label -1),
and the NMS is the TFLite builtin ``NON_MAX_SUPPRESSION_V5`` (no Flex delegate, no custom op),
so the file runs on any TFLite / LiteRT runtime. Faster R-CNN is traced with its
TFLite-builtin RoIAlign (``"gather"``: GATHER + BATCH_MATMUL, :func:`builtin_roi_align`).

Formats (``model_<format>.tflite``):

* ``float32``: plain conversion.
* ``float16``: float16 weights, float32 compute.
* ``int8``: full-integer post-training quantisation of the network: every convolution,
  depthwise convolution, add and the head run on int8 tensors with int8 weights, calibrated on
  ``num_calibration`` images of ``representative`` (the training pipeline without
  augmentation). The post-processing stays float32 by selective quantisation
  (:func:`kft.export.core.convert`'s ``keep_float``, chosen by :func:`float_part`): SSD keeps
  its ``decoder`` (softmax, box decoding, NMS) float: TFLite's NMS has no integer kernel, and
  8-bit box decoding cost 0.2 AP (AP75 0.52 -> 0.11) on the quick start's model. Faster
  R-CNN keeps everything but its network layers float (proposals, RoIAlign, decoder; the
  RPN's 1x1 output convolutions too). The file takes ``uint8`` pixels ``[1, H, W, 3]``
  (camera bytes, resized): its ``serve`` function casts them to float32 and the first op
  quantises them to int8. :func:`tflite_op_summary` lists which ops run on which types; the
  tests check that no convolution stays float (SSD) / which ones do (Faster R-CNN).
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
from collections.abc import Iterable, Sequence

import numpy as np
import tensorflow as tf

from kft.eval.detection import evaluate_detector
from kft.export import core

DETECTION_KEYS = ("boxes", "scores", "labels", "num_detections")


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
    formats = core.check_formats(formats)
    image_shape = tuple(int(d) for d in model.input_shape[1:])
    if len(image_shape) != 3 or image_shape[-1] != 3:
        raise ValueError(f"expected a model with image input [B, H, W, 3], got {image_shape}")
    calibration = (core.calibration_images(representative, num_calibration, image_shape,
                                           warn=False) if "int8" in formats else ())

    def serve(images):
        det = model.detect(tf.cast(images, tf.float32))
        return {"boxes": tf.cast(det["boxes"], tf.float32),
                "scores": tf.cast(det["scores"], tf.float32),
                "labels": tf.cast(det["labels"], tf.int32),
                "num_detections": tf.cast(det["num_detections"], tf.int32)}

    # int8: the file takes uint8 camera bytes (serve casts them); the post-processing stays
    # float32
    with builtin_roi_align(model):
        return core.export_formats(model, out_dir, image_shape, formats, serve, calibration,
                                   int8_input=tf.uint8, keep_float=float_part(model))


@contextlib.contextmanager
def builtin_roi_align(model):
    """Traces a two-stage detector with the TFLite-builtin RoIAlign (``"gather"``: GATHER +
    BATCH_MATMUL) instead of its training choice (``crop_and_resize`` needs Flex), restoring
    ``model.roi_align_implementation`` on exit; nothing for models without that setting."""
    if not hasattr(model, "roi_align_implementation"):
        yield
        return
    previous = model.roi_align_implementation
    model.roi_align_implementation = "gather"
    try:
        yield
    finally:
        model.roi_align_implementation = previous


def network_layers(model) -> tuple[str, ...] | None:
    """Names of a two-stage detector's network layers, the ones whose ops an int8 export
    quantises (backbone, neck, RPN head, box head, box predictor); ``None`` for a one-stage
    detector (SSD: only its ``decoder`` stays float)."""
    parts = ("backbone", "neck", "rpn_head", "box_head", "box_predictor")
    if getattr(model, "rpn_head", None) is None:
        return None
    return tuple(getattr(model, part).name for part in parts)


def float_part(model):
    """What an int8 export of ``model`` keeps in float32 (:func:`kft.export.core.convert`'s
    ``keep_float``).

    * SSD: the ``"decoder"`` scope (softmax, box decoding, NMS).
    * Faster R-CNN: every tensor outside the scopes of :func:`network_layers`, and the RPN
      head's two 1x1 output convolutions (``cls_logits``, ``bbox_pred``). So the proposal
      generation (top-k, RPN box decoding, clipping, NMS), RoIAlign (level mapping, sample
      coordinates, bilinear weights, the gather and weighted sum of the dequantised
      features) and the :class:`~kft.models.heads.box.BoxDecoder` run float32: pixel boxes and
      sample positions cannot take 8 bits (an int8 proposal has a 0.4 px step at best and
      RoIAlign's fractional positions vanish). The RPN's outputs are float because
      ``generate_proposals`` ranks the objectness logits (``TOPK_V2``, float by
      :data:`kft.export.core.FLOAT_OPS`) right away: int8 logits would rank with ties and
      change the proposals. Every other convolution and fully connected layer runs int8.
    """
    layers = network_layers(model)
    if layers is None:
        return "decoder"
    network = _scopes(layers)
    head = model.rpn_head
    rpn_outputs = re.compile(_scope(head.name) + r"(?:" + "|".join(
        _scope(layer.name) for layer in (head.cls_logits, head.bbox_pred)) + ")")
    return lambda name: network.search(name) is None or rpn_outputs.search(name) is not None


def _scope(name: str) -> str:
    """Regex of one name scope in a TFLite tensor name: ``name`` or ``name_<n>`` then ``/``,
    at the start of a name or of one of its ``;``-joined parts or after a ``/``."""
    return re.escape(name) + r"(?:_\d+)?/"


def _scopes(names) -> re.Pattern:
    return re.compile(r"(?:^|[/;])(?:" + "|".join(_scope(n) for n in names) + ")")


class TFLiteDetector:
    """Runs a detector ``.tflite`` (from :func:`export_detector`) one image at a time.

    ``detect(images float32 [B, H, W, 3])`` returns the dict of ``SSD.detect`` as numpy arrays
    (batch rows stacked); every invocation is timed (``mean_latency_ms``) after
    ``WARMUP_RUNS`` untimed ones.
    """

    def __init__(self, path: str | os.PathLike, num_threads: int | None = None):
        self.timed = core.TimedInterpreter(path, num_threads)
        self.path = self.timed.path
        if self.timed.runner is None:
            raise ValueError(f"{self.path}: expected one signature (a kft detector export)")
        outputs = set(self.timed.outputs)
        if not set(DETECTION_KEYS) <= outputs:
            raise ValueError(f"{self.path}: outputs {sorted(outputs)} lack "
                             f"{sorted(set(DETECTION_KEYS) - outputs)}")
        self.input = self.timed.input
        self.image_shape = self.timed.image_shape

    def detect(self, images) -> dict:
        rows = self.timed.run_batch(images)
        shapes = {"boxes": (1, -1, 4), "scores": (1, -1), "labels": (1, -1),
                  "num_detections": (1,)}
        dtypes = {"labels": np.int32, "num_detections": np.int32}
        return {k: np.concatenate([np.asarray(r[k]).astype(dtypes.get(k, np.float32))
                                   .reshape(shapes[k]) for r in rows], axis=0)
                for k in DETECTION_KEYS}

    def mean_latency_ms(self) -> float:
        return self.timed.mean_latency_ms()

    def predict_image(self, pixels, class_names=None, score_threshold: float = 0.3,
                      resize: str | dict = "fixed") -> dict:
        """The detections of one image, as ``kft predict`` prints them.

        Args:
            pixels: ``uint8 [H, W, 3]`` RGB at the image's own size; resized to the file's
                input as the detection pipeline resizes for the model
                (:func:`kft.data.detection_pipeline.resize_image` with ``resize``, "fixed" for
                SSD / SSDLite; a dict ``{"image_size": (short, long), "resize":
                "keep_aspect"}`` for Faster R-CNN, padded to the file's input).
            class_names: names by label (``None``: labels are printed as numbers).
            score_threshold: the lowest score kept.

        Returns:
            :func:`detection_list` with boxes ``xyxy`` in the image's own pixels (untimed:
            one invocation, no warm-up).
        """
        from kft.data.detection_pipeline import resize_image, to_original

        if isinstance(resize, dict):      # keep-aspect targets: (short, long) on the canvas
            args = {**resize, "pad_size": tuple(self.image_shape[:2])}
        else:
            args = {"image_size": tuple(self.image_shape[:2]), "resize": resize}
        image, scale, _ = resize_image(pixels, **args)
        det = self.timed.run(np.asarray(image, dtype=np.float32)[None])
        boxes = np.asarray(to_original(np.asarray(det["boxes"], np.float32).reshape(-1, 4),
                                       scale, pixels.shape[:2]))
        return detection_list(boxes, np.asarray(det["scores"]).reshape(-1),
                              np.asarray(det["labels"]).reshape(-1),
                              int(np.asarray(det["num_detections"]).reshape(-1)[0]),
                              class_names, score_threshold)


def detection_list(boxes, scores, labels, num_detections: int, class_names=None,
                   score_threshold: float = 0.3) -> dict:
    """``{"detections": [{"label", "class", "score", "box"}]}`` of one image's padded
    detections (``boxes [D, 4]`` xyxy pixels, ``scores [D]``, ``labels [D]``, the first
    ``num_detections`` rows valid), keeping scores ``>= score_threshold``; ``class`` is
    ``class_names[label]`` (the label as a string when there are no names or too few), scores
    rounded to 4 and box coordinates to 1 decimal."""
    names = list(class_names or ())
    out = []
    for i in range(int(num_detections)):
        score = float(scores[i])
        label = int(labels[i])
        if score < score_threshold or label < 0:
            continue
        out.append({"label": label, "class": names[label] if label < len(names) else str(label),
                    "score": round(score, 4), "box": [round(float(v), 1) for v in boxes[i]]})
    return {"detections": out}


def tflite_op_summary(path: str | os.PathLike) -> dict[str, dict[str, int]]:
    """``{op name: {input dtype of its first input: count}}`` of a ``.tflite`` file, e.g.
    ``{"CONV_2D": {"int8": 52}, "NON_MAX_SUPPRESSION_V5": {"float32": 1}}``, read with the
    builtin kernels and no delegate (:func:`kft.export.core.plain_interpreter`), so a file
    needing Flex (Select TF ops) or custom ops fails here with the interpreter's error."""
    interpreter = core.plain_interpreter(path)
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
    metrics["size_mb"] = core.file_mb(path)
    return metrics


def keras_detector_latency_ms(model, batches, max_images: int = core.MAX_KERAS_LATENCY_IMAGES):
    """Mean ms of one traced batch-1 ``model.detect`` call (after warm-up)."""
    return core.keras_latency_ms(model.detect, batches, max_images)


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
    keras_metrics["size_mb"] = core.keras_weights_mb(model)
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
    return core.write_report(out_dir, report)


def _pick(metrics: dict) -> dict:
    return {k: metrics[k] for k in _REPORT_KEYS if k in metrics}
