"""Pascal VOC detection AP (pure numpy).

Conventions (shared/DESIGN.md): boxes are float32 ``xyxy`` in absolute pixels of the original
image, half-open (``[x1, y1, x2, y2]`` covers ``x1 <= x < x2``), so a box is ``x2 - x1`` wide.
The VOC devkit stores inclusive pixel coordinates and adds ``+1`` to widths and heights; our
boxes are already half-open, so IoUs here use no ``+1`` (a box converted from VOC XML as
``[xmin - 1, ymin - 1, xmax, ymax]`` gives the devkit's IoU exactly).

Inputs:

* ground-truth examples ``{"image_id", "boxes" f32[N,4], "labels" i32[N], optional
  "difficult" bool[N], optional "iscrowd" bool[N]}`` (labels 0-based);
* predictions, one dict per image, ``{"image_id", "boxes" f32[K,4], "scores" f32[K],
  "labels" i32[K]}``.

Matching follows the devkit, per class: detections of all images are sorted by descending
score (stable sort, so ties keep input order); each detection takes the ground-truth box of
its image with the highest IoU. If that IoU is ``> iou_threshold`` (strictly, as the
devkit) then a ``difficult`` (or crowd) box makes the detection ignored (neither TP nor FP),
an unmatched box makes it a TP and marks the box, an already matched box makes it a FP (a
duplicate; it does not fall back to the next best box). Otherwise it is a FP. Difficult
boxes do not count in the number of positives.

Two AP definitions: VOC2007 11-point interpolation (mean over recall thresholds
``0, 0.1, ..., 1`` of the best precision at recall ``>=`` the threshold, 0 if none), and the
VOC2010+ "all points" area under the monotone precision envelope. A class without
(non-difficult) ground truth has AP ``None`` and is left out of the mean.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np


def normalize_image_id(image_id):
    """Hashable Python id: 0-d arrays/tensors -> ``.item()``, bytes -> ``str`` (UTF-8)."""
    if hasattr(image_id, "numpy"):
        image_id = image_id.numpy()
    if isinstance(image_id, (np.ndarray, np.generic)):
        image_id = image_id.item()
    if isinstance(image_id, bytes):
        image_id = image_id.decode("utf-8")
    return image_id


def ap_voc07(recall, precision) -> float:
    """VOC2007 11-point AP of a PR curve ``recall f[D], precision f[D]`` (detection order)."""
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    total = 0.0
    for threshold in np.linspace(0.0, 1.0, 11):
        above = precision[recall >= threshold]
        total += float(above.max()) if above.size else 0.0
    return total / 11.0


def ap_area(recall, precision) -> float:
    """VOC2010+ AP: area under the monotone envelope of ``precision f[D]`` vs ``recall f[D]``.

    The curve is extended with ``(recall 0, precision 0)`` and ``(recall 1, precision 0)``;
    precision is replaced by its maximum at any higher recall; the area is summed where
    recall changes.
    """
    mrec = np.concatenate([[0.0], np.asarray(recall, dtype=np.float64), [1.0]])
    mpre = np.concatenate([[0.0], np.asarray(precision, dtype=np.float64), [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def box_iou_one_to_many(box, boxes) -> np.ndarray:
    """IoU of one half-open ``xyxy`` box ``[4]`` with ``boxes [M,4]`` -> f64 ``[M]`` (no +1)."""
    box = np.asarray(box, dtype=np.float64)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    wh = np.clip(np.minimum(box[2:], boxes[:, 2:]) - np.maximum(box[:2], boxes[:, :2]), 0, None)
    inter = wh[:, 0] * wh[:, 1]
    area = max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(
        boxes[:, 3] - boxes[:, 1], 0, None
    )
    union = area + areas - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def match_class(
    gt: Mapping, detections: Sequence[tuple], iou_threshold: float
) -> tuple[np.ndarray, np.ndarray, int]:
    """Greedy VOC matching for one class.

    Args:
        gt: ``{image_key: (boxes f[M,4], ignore bool[M])}`` (ignore = difficult or crowd).
        detections: ``[(image_key, score, box f[4]), ...]`` in any order.
        iou_threshold: a match needs IoU strictly greater than this.

    Returns:
        ``(tp bool[D'], fp bool[D'], num_positives)`` in descending score order, where
        ``D'`` leaves out detections ignored because they matched an ignored box.
    """
    scores = np.asarray([d[1] for d in detections], dtype=np.float64)
    order = np.argsort(-scores, kind="mergesort")
    taken = {key: np.zeros(len(ignore), bool) for key, (_, ignore) in gt.items()}
    tp, fp = [], []
    for index in order:
        key, _, box = detections[index]
        boxes, ignore = gt.get(key, (np.zeros((0, 4)), np.zeros(0, bool)))
        ious = box_iou_one_to_many(box, boxes)
        best = int(np.argmax(ious)) if ious.size else -1
        if best >= 0 and ious[best] > iou_threshold:
            if ignore[best]:
                continue
            is_tp = not taken[key][best]
            taken[key][best] = True
        else:
            is_tp = False
        tp.append(is_tp)
        fp.append(not is_tp)
    num_positives = int(sum(int(np.sum(~ignore)) for _, ignore in gt.values()))
    return np.asarray(tp, bool), np.asarray(fp, bool), num_positives


def precision_recall(tp, fp, num_positives: int) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative ``(precision f64[D], recall f64[D])`` from TP/FP flags in score order.

    Recall is empty when ``num_positives`` is 0 (undefined).
    """
    tp_sum = np.cumsum(np.asarray(tp, dtype=np.float64))
    fp_sum = np.cumsum(np.asarray(fp, dtype=np.float64))
    precision = tp_sum / np.maximum(tp_sum + fp_sum, np.finfo(np.float64).eps)
    if num_positives == 0:
        return np.zeros(0), np.zeros(0)
    return precision, tp_sum / num_positives


def _as_array(record: Mapping, key: str, kind: str, dtype, default_len: int | None = None):
    if key not in record:
        if default_len is not None:
            return np.zeros(default_len, dtype)
        raise ValueError(f"{kind} for image_id={record.get('image_id')!r} has no {key!r} field")
    return np.asarray(record[key]).astype(dtype)


def _records_by_class(records: Iterable[Mapping], kind: str, num_classes: int):
    """Validate per-image records -> list of ``(image_id, boxes, labels, record)``."""
    out = []
    for record in records:
        if "image_id" not in record:
            raise ValueError(f"a {kind} has no 'image_id'")
        boxes = _as_array(record, "boxes", kind, np.float64).reshape(-1, 4)
        labels = _as_array(record, "labels", kind, np.int64).reshape(-1)
        if boxes.shape[0] != labels.shape[0]:
            raise ValueError(
                f"{kind} for image_id={record['image_id']!r}: {boxes.shape[0]} boxes but "
                f"{labels.shape[0]} labels"
            )
        bad = labels[(labels < 0) | (labels >= num_classes)]
        if bad.size:
            raise ValueError(
                f"{kind} for image_id={record['image_id']!r} has labels "
                f"{sorted(set(bad.tolist()))} outside 0..{num_classes - 1}"
            )
        out.append((normalize_image_id(record["image_id"]), boxes, labels, record))
    return out


def _flags(record: Mapping, key: str, n: int) -> np.ndarray:
    """Optional per-box bool flags ``[n]`` of a GT record (all False when absent)."""
    flags = _as_array(record, key, "ground truth", bool, n).reshape(-1)
    if flags.shape[0] != n:
        raise ValueError(
            f"ground truth for image_id={record['image_id']!r}: {key!r} has {flags.shape[0]} "
            f"entries for {n} boxes"
        )
    return flags


def _group_ground_truth(gt_examples, num_classes: int) -> list[dict]:
    """-> per class ``{image_id: (boxes [M,4], ignore bool[M])}`` (every GT image present)."""
    per_class: list[dict] = [{} for _ in range(num_classes)]
    seen = set()
    for image_id, boxes, labels, record in _records_by_class(
        gt_examples, "ground truth", num_classes
    ):
        if image_id in seen:
            raise ValueError(f"ground truth for image_id={image_id!r} was given twice")
        seen.add(image_id)
        ignore = _flags(record, "difficult", len(labels)) | _flags(record, "iscrowd", len(labels))
        for c in range(num_classes):
            keep = labels == c
            per_class[c][image_id] = (boxes[keep], ignore[keep])
    return per_class


def _group_detections(predictions, num_classes: int, known_images: set) -> list[list[tuple]]:
    """-> per class ``[(image_id, score, box), ...]``; unknown image ids raise."""
    per_class: list[list[tuple]] = [[] for _ in range(num_classes)]
    unknown, seen = [], set()
    for image_id, boxes, labels, record in _records_by_class(
        predictions, "prediction", num_classes
    ):
        if image_id in seen:
            raise ValueError(f"predictions for image_id={image_id!r} were given twice")
        seen.add(image_id)
        if image_id not in known_images:
            unknown.append(image_id)
            continue
        scores = _as_array(record, "scores", "prediction", np.float64).reshape(-1)
        if scores.shape[0] != labels.shape[0] or not np.all(np.isfinite(scores)):
            raise ValueError(
                f"prediction for image_id={image_id!r}: scores must be {len(labels)} finite values"
            )
        for box, score, label in zip(boxes, scores, labels, strict=True):
            per_class[label].append((image_id, float(score), box))
    if unknown:
        raise ValueError(
            f"predictions for image_id(s) {sorted(set(unknown), key=str)[:10]} that are not in "
            "the ground truth"
        )
    return per_class


def _mean_defined(values: Iterable[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def _class_results(gt_examples, predictions, class_names, iou_threshold) -> dict:
    """Per class name: ``{"precision", "recall", "num_gt", "num_dets"}`` (arrays)."""
    gt_examples, predictions = list(gt_examples), list(predictions)
    if not 0.0 <= iou_threshold < 1.0 or math.isnan(iou_threshold):
        raise ValueError(f"iou_threshold must be in [0, 1), got {iou_threshold}")
    num_classes = len(class_names)
    gt = _group_ground_truth(gt_examples, num_classes)
    known = {normalize_image_id(example["image_id"]) for example in gt_examples}
    dets = _group_detections(predictions, num_classes, known)
    out = {}
    for c, name in enumerate(class_names):
        tp, fp, npos = match_class(gt[c], dets[c], iou_threshold)
        precision, recall = precision_recall(tp, fp, npos)
        out[str(name)] = {
            "precision": precision,
            "recall": recall,
            "num_gt": npos,
            "num_dets": len(dets[c]),
        }
    return out


def _pr_lists(result: dict) -> dict:
    return {"precision": result["precision"].tolist(), "recall": result["recall"].tolist()}


def voc_ap(
    gt_examples: Iterable[Mapping],
    predictions: Iterable[Mapping],
    class_names: Sequence[str],
    iou_threshold: float = 0.5,
    use_07_metric: bool = True,
) -> dict:
    """Pascal VOC mAP (see module docstring for inputs and matching).

    Returns:
        ``{"mAP": float | None, "per_class": {name: {"ap": float | None, "num_gt": int,
        "num_dets": int}}, "pr": {name: {"precision": [...], "recall": [...]}}}``; ``num_gt``
        counts non-difficult boxes; ``pr`` holds the raw (not interpolated) curve in
        descending score order, without detections ignored on difficult boxes (empty when
        the class has no ground truth). AP is VOC07 11-point if ``use_07_metric`` else area.
    """
    ap_fn = ap_voc07 if use_07_metric else ap_area
    results = _class_results(gt_examples, predictions, class_names, iou_threshold)
    per_class = {
        name: {
            "ap": ap_fn(r["recall"], r["precision"]) if r["num_gt"] else None,
            "num_gt": r["num_gt"],
            "num_dets": r["num_dets"],
        }
        for name, r in results.items()
    }
    return {
        "mAP": _mean_defined(v["ap"] for v in per_class.values()),
        "per_class": per_class,
        "pr": {name: _pr_lists(r) for name, r in results.items()},
    }


def voc_metrics(
    gt_examples: Iterable[Mapping],
    predictions: Iterable[Mapping],
    class_names: Sequence[str],
    iou_threshold: float = 0.5,
) -> dict:
    """Both VOC APs from one matching pass.

    Returns:
        ``{"voc07_mAP", "area_mAP", "iou_threshold", "per_class": {name: {"voc07_ap",
        "area_ap", "num_gt", "num_dets"}}, "pr": {name: {"precision", "recall"}}}``; APs are
        ``None`` for classes without ground truth (left out of the means).
    """
    results = _class_results(gt_examples, predictions, class_names, iou_threshold)
    per_class = {}
    for name, r in results.items():
        defined = r["num_gt"] > 0
        per_class[name] = {
            "voc07_ap": ap_voc07(r["recall"], r["precision"]) if defined else None,
            "area_ap": ap_area(r["recall"], r["precision"]) if defined else None,
            "num_gt": r["num_gt"],
            "num_dets": r["num_dets"],
        }
    return {
        "voc07_mAP": _mean_defined(v["voc07_ap"] for v in per_class.values()),
        "area_mAP": _mean_defined(v["area_ap"] for v in per_class.values()),
        "iou_threshold": float(iou_threshold),
        "per_class": per_class,
        "pr": {name: _pr_lists(r) for name, r in results.items()},
    }
