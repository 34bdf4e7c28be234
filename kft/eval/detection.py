"""Detector evaluation on a :class:`~kft.data.readers.detection.DetectionSplit`.

:func:`evaluate_detector` runs a detector over evaluation batches (``detection_batches(...,
training=False, with_meta=True)``), maps its boxes back to the ORIGINAL image pixels and scores
them with :class:`~kft.eval.coco.COCOEvaluator` (and optionally :func:`~kft.eval.voc.voc_metrics`).
:class:`COCOEvalCallback` does the same from ``model.fit`` and puts the numbers into the epoch
logs.

Coordinate conventions (shared/DESIGN.md): boxes are float32 ``xyxy`` absolute pixels,
half-open. The detector returns them in network-input pixels (the resized, padded batch); they
are divided by ``meta["scale"]`` (``(y, x)``, per axis) and clipped to ``meta["image_shape"]``
with :func:`~kft.data.detection_pipeline.to_original`, so they are compared with the records'
boxes in the original image.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence

import keras
import numpy as np

from kft.data.detection_pipeline import DetectionBatches, to_original
from kft.data.readers.detection import DetectionRecord, DetectionSplit
from kft.eval.coco import COCOEvaluator
from kft.eval.voc import voc_metrics

LOG_KEYS = ("bbox_AP", "bbox_AP50", "bbox_AP75")
VOC_LOG_KEYS = ("voc07_mAP", "voc_area_mAP")
_PREDICTION_KEYS = ("boxes", "scores", "labels", "num_detections")


def _numpy(x) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(x))


def _iterate(batches) -> Iterable:
    """A :class:`DetectionBatches` (its ``dataset``) or any iterable of ``(x, y, meta)``."""
    return batches.dataset if isinstance(batches, DetectionBatches) else batches


def _check_prediction(det) -> dict:
    if not isinstance(det, Mapping) or any(k not in det for k in _PREDICTION_KEYS):
        raise ValueError(f"predict_fn must return a dict with {_PREDICTION_KEYS}, got "
                         f"{sorted(det) if isinstance(det, Mapping) else type(det).__name__}")
    return {k: _numpy(det[k]) for k in _PREDICTION_KEYS}


def _image_predictions(det: dict, i: int, scale, image_shape) -> dict:
    """Row ``i`` of a batched prediction -> ``{"boxes" f32 [K,4] original pixels (clipped),
    "scores" f32 [K], "labels" i32 [K]}``: the first ``num_detections[i]`` rows, without
    rows labelled -1."""
    n = int(det["num_detections"][i])
    labels = det["labels"][i, :n].astype(np.int32)
    keep = labels >= 0
    boxes = det["boxes"][i, :n].astype(np.float32)[keep].reshape(-1, 4)
    boxes = _numpy(to_original(boxes, scale, image_shape)).reshape(-1, 4)
    return {"boxes": boxes, "scores": det["scores"][i, :n].astype(np.float32)[keep],
            "labels": labels[keep]}


def _ground_truth(record: DetectionRecord) -> dict:
    """A record -> the evaluators' ground-truth dict (original pixels)."""
    return {"image_id": record.image_id, "height": record.height, "width": record.width,
            "boxes": record.boxes, "labels": record.labels, "iscrowd": record.iscrowd,
            "difficult": record.difficult}


def collect_predictions(predict_fn: Callable, split: DetectionSplit, batches_with_meta, *,
                        max_images: int | None = None) -> tuple[list[dict], list[dict]]:
    """Runs ``predict_fn`` over the batches -> ``(ground_truth, predictions)``, one dict per
    image, in batch order, boxes in ORIGINAL image pixels.

    Args:
        predict_fn: ``images f32 [B,h,w,3] -> {"boxes" [B,D,4] xyxy network-input pixels,
            "scores" [B,D], "labels" i32 [B,D] (0-based, -1 padding), "num_detections" [B]}``.
        split: the split the batches were built from (``meta["index"]`` indexes its records).
        batches_with_meta: :class:`DetectionBatches` or an iterable of ``(images, y, meta)``
            with ``meta["index"]`` i32 [B], ``meta["scale"]`` f32 [B,2] ``(y, x)`` and
            ``meta["image_shape"]`` i32 [B,2] ``(H, W)``.
        max_images: stop after this many images (``None``: all batches).

    Only the images seen are returned (their ground truth included), so ``max_images`` scores
    a prefix of the split.
    """
    ground_truth, predictions = [], []
    for images, _, meta in _iterate(batches_with_meta):
        det = _check_prediction(predict_fn(images))
        index, scale = _numpy(meta["index"]), _numpy(meta["scale"])
        shape = _numpy(meta["image_shape"])
        for i in range(len(index)):
            if max_images is not None and len(predictions) >= max_images:
                return ground_truth, predictions
            record = split.records[int(index[i])]
            ground_truth.append(_ground_truth(record))
            pred = _image_predictions(det, i, scale[i], shape[i])
            predictions.append({"image_id": record.image_id, **pred})
        if max_images is not None and len(predictions) >= max_images:
            break
    return ground_truth, predictions


def _voc_summary(ground_truth, predictions, class_names) -> dict:
    """``{"voc07_mAP", "voc_area_mAP", "voc07_per_class_AP" {name: ap}}`` at IoU 0.5
    (difficult and crowd boxes ignored)."""
    voc = voc_metrics(ground_truth, predictions, class_names)
    return {"voc07_mAP": voc["voc07_mAP"], "voc_area_mAP": voc["area_mAP"],
            "voc07_per_class_AP": {k: v["voc07_ap"] for k, v in voc["per_class"].items()}}


def _check_iou_types(iou_types: Sequence[str]) -> tuple[str, ...]:
    iou_types = tuple(iou_types)
    if iou_types != ("bbox",):
        raise ValueError(f"evaluate_detector scores boxes only: iou_types must be ('bbox',), "
                         f"got {iou_types!r} (for masks use kft.eval.coco.COCOEvaluator)")
    return iou_types


def evaluate_detector(predict_fn: Callable, split: DetectionSplit, batches_with_meta, *,
                      iou_types: Sequence[str] = ("bbox",), voc: bool = False,
                      max_images: int | None = None) -> dict:
    """COCO (and optionally VOC) box metrics of a detector on a split.

    Args:
        predict_fn, split, batches_with_meta, max_images: see :func:`collect_predictions`
            (e.g. ``model.predict_on_batch`` and ``detection_batches(split, ...,
            training=False, with_meta=True)``).
        iou_types: ``("bbox",)`` (boxes only).
        voc: also compute VOC AP at IoU 0.5, ignoring difficult (and crowd) boxes.

    Returns:
        The :class:`~kft.eval.coco.COCOEvaluator` metrics (``bbox_AP``, ``bbox_AP50``, ...,
        ``bbox_per_class_AP`` / ``bbox_per_class_AP50`` ``{class_name: float | None}``;
        COCO ignores ``difficult``), plus with ``voc=True`` ``voc07_mAP``, ``voc_area_mAP``
        and ``voc07_per_class_AP``; and ``num_images``. Floats, ``None`` where undefined
        (JSON-friendly). Images with no detection and background images (no objects) count
        as in pycocotools / the VOC devkit.
    """
    iou_types = _check_iou_types(iou_types)
    ground_truth, predictions = collect_predictions(predict_fn, split, batches_with_meta,
                                                    max_images=max_images)
    if not ground_truth:
        raise ValueError("evaluate_detector: the batches held no image")
    evaluator = COCOEvaluator(split.class_names, iou_types, split.label_to_category)
    for gt, pred in zip(ground_truth, predictions, strict=True):
        evaluator.add_ground_truth(gt)
        evaluator.add_predictions(pred)
    metrics = evaluator.evaluate()
    if voc:
        metrics.update(_voc_summary(ground_truth, predictions, split.class_names))
    metrics["num_images"] = len(ground_truth)
    return metrics


def weights_fingerprint(model) -> str:
    """SHA-256 of every model variable's bytes, in order: equal fingerprints, equal weights
    (milliseconds for a quick-start model, about 0.1 s for a ResNet-50 detector)."""
    digest = hashlib.sha256()
    for variable in model.weights:
        digest.update(np.ascontiguousarray(np.asarray(variable)).tobytes())
    return digest.hexdigest()


def _log_value(value) -> float:
    """A metric for the Keras logs: undefined (``None``) becomes 0.0."""
    return 0.0 if value is None else float(value)


class COCOEvalCallback(keras.callbacks.Callback):
    """Scores the model with :func:`evaluate_detector` at the end of some epochs.

    Writes ``{prefix}bbox_AP``, ``{prefix}bbox_AP50``, ``{prefix}bbox_AP75`` (and with
    ``voc=True`` ``{prefix}voc07_mAP``, ``{prefix}voc_area_mAP``) into the epoch ``logs``.
    Keras calls callbacks in list order, so put this callback BEFORE the ones that read these
    keys (``EarlyStopping(monitor="val_bbox_AP50", mode="max")``, ``ModelCheckpoint``,
    ``CSVLogger``); ``fit``'s History is appended last and sees them.

    Evaluation runs every ``every`` epochs (after epochs ``every - 1, 2 * every - 1, ...``,
    0-based) and always after the last epoch (``self.params["epochs"]``). On the epochs in
    between, the logs carry the last computed values (0.0 before the first evaluation), so
    the keys exist on every epoch; with ``every > 1`` EarlyStopping's ``patience`` thus counts
    repeated values. Undefined metrics (``None``) are logged as 0.0.

    Args:
        split: the evaluation split.
        batches_with_meta: ``detection_batches(split, ..., training=False,
            with_meta=True)`` (or an iterable of ``(images, y, meta)`` that can be iterated
            again each time).
        every: evaluate every N epochs.
        prefix: prepended to the metric names in the logs.
        voc: also log VOC mAPs.
        max_images: score only the first images (see :func:`evaluate_detector`).

    ``self.history``: list of ``(epoch, metrics dict)`` for the evaluated epochs;
    ``self.last``: the last logged values. :meth:`current_metrics` hands the last evaluation
    on when the model still has the weights it was made with (a run's final evaluation after
    an evaluated last epoch, so the val split is not scored twice).
    """

    def __init__(self, split: DetectionSplit, batches_with_meta, every: int = 1,
                 prefix: str = "val_", voc: bool = False, max_images: int | None = None):
        super().__init__()
        if int(every) < 1:
            raise ValueError(f"every={every} must be >= 1")
        self.split, self.batches = split, batches_with_meta
        self.every, self.prefix, self.voc = int(every), str(prefix), bool(voc)
        self.max_images = max_images
        self.history: list[tuple[int, dict]] = []
        self._scored = None  # weights_fingerprint of the model history[-1] scored
        keys = LOG_KEYS + (VOC_LOG_KEYS if self.voc else ())
        self.last = {self.prefix + k: 0.0 for k in keys}

    def restore_logs(self, logs: Mapping) -> None:
        """Takes back the values a resumed run committed (carried until the next
        evaluation)."""
        self.last = {k: float(logs.get(k, v)) for k, v in self.last.items()}

    def _due(self, epoch: int) -> bool:
        last_epoch = (self.params or {}).get("epochs")
        return (epoch + 1) % self.every == 0 or (last_epoch is not None
                                                 and epoch + 1 >= last_epoch)

    def evaluate(self) -> dict:
        """:func:`evaluate_detector` of the current model (``model.predict_on_batch``)."""
        return evaluate_detector(self.model.predict_on_batch, self.split, self.batches,
                                 voc=self.voc, max_images=self.max_images)

    def current_metrics(self) -> dict | None:
        """The last evaluation's metrics if the model's weights (every variable, moving
        statistics included) are still those it scored, else ``None``."""
        if not self.history or self._scored is None:
            return None
        return dict(self.history[-1][1]) if weights_fingerprint(self.model) == self._scored \
            else None

    def on_epoch_end(self, epoch, logs=None):
        if self._due(epoch):
            metrics = self.evaluate()
            self._scored = weights_fingerprint(self.model)
            self.history.append((epoch, metrics))
            self.last = {self.prefix + k: _log_value(metrics.get(k)) for k in
                         (LOG_KEYS + (VOC_LOG_KEYS if self.voc else ()))}
        if logs is not None:
            logs.update(self.last)
