"""Dataset statistics and annotation checks for detection splits (D5, D6).

Pure functions on :class:`~kft.data.readers.detection.DetectionSplit` or its records
(``boxes`` float32 ``[N, 4]`` half-open ``xyxy`` pixels, ``labels`` int32 ``[N]`` 0-based):

* :func:`class_counts`, :func:`class_distribution`: objects per class.
* :func:`kl_divergence`: D6, ``KL(train || val)`` of the class distributions with additive
  smoothing; the guide's target is ``< 0.2`` (:data:`KL_WARNING`).
* :func:`duplicate_pairs`, :func:`consistency`: D5 without a reference: same-class boxes of one
  image overlapping at IoU > 0.75 are likely duplicates; the share of boxes in no such pair is
  compared with the guide's 95% target.
* :func:`agreement_with_reference`: D5 proper: the share of boxes whose best IoU with the
  reference's same-class boxes in the same image exceeds 0.75 (target > 95%).
* :func:`box_size_stats`: sqrt-area and aspect-ratio histograms, COCO small/medium/large.
* :func:`check_split`: all of the above for one split as a JSON-ready dict.

IoU here is :func:`iou_matrix`, a NumPy twin of :func:`kft.ops.boxes.pairwise_iou` (same
half-open convention, empty union -> 0): one eager ``keras.ops`` call per image costs ~1 ms,
minutes on COCO, where NumPy takes microseconds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kft.data.readers.detection import DetectionRecord, DetectionSplit

IOU_THRESHOLD = 0.75  # D5: boxes agree (or duplicate each other) above this IoU
CONSISTENCY_TARGET = 0.95  # D5: share of boxes that must agree
KL_WARNING = 0.2  # D6: warn when KL(train || val) exceeds this
KL_SMOOTHING = 1.0  # pseudo-count added to every class before normalising
COCO_SMALL, COCO_LARGE = 32.0**2, 96.0**2  # COCO area ranges (pixels^2)
SQRT_AREA_EDGES = (0, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
ASPECT_EDGES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def _records(data) -> list[DetectionRecord]:
    """The records of a split, or the sequence of records itself."""
    return list(data.records if isinstance(data, DetectionSplit) else data)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of ``xyxy`` boxes ``a`` ``[N, 4]`` with ``b`` ``[M, 4]`` -> float64 ``[N, M]``.

    Same convention as :func:`kft.ops.boxes.pairwise_iou`; a pair with an empty union gets 0.
    """
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0.0, None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0.0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0.0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def class_counts(data, num_classes: int) -> np.ndarray:
    """Objects per class, int64 ``[num_classes]`` (difficult and crowd objects included).

    ``data``: a :class:`DetectionSplit` or a sequence of records. A label outside
    ``0..num_classes-1`` raises ``ValueError`` naming the image.
    """
    counts = np.zeros(num_classes, np.int64)
    for record in _records(data):
        labels = np.asarray(record.labels, np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"image {record.image_id!r} ({record.image_path}): labels "
                             f"{sorted(set(labels.tolist()))} outside 0..{num_classes - 1}")
        counts += np.bincount(labels, minlength=num_classes)
    return counts


def class_distribution(counts, smoothing: float = KL_SMOOTHING) -> np.ndarray:
    """``(counts + smoothing) / sum(counts + smoothing)``, float64 ``[C]``.

    ``smoothing`` is an additive (Laplace) pseudo-count per class, so a class absent from one
    split gets a small probability instead of 0 (which would make KL infinite). Raises
    ``ValueError`` when the result is undefined (no classes, negative counts, all zero with
    ``smoothing == 0``).
    """
    counts = np.asarray(counts, np.float64)
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError(f"counts must be a non-empty 1-D array, got shape {counts.shape}")
    if smoothing < 0 or np.any(counts < 0):
        raise ValueError("counts and smoothing must be non-negative")
    smoothed = counts + smoothing
    total = smoothed.sum()
    if total <= 0:
        raise ValueError("no objects and smoothing=0: the class distribution is undefined")
    return smoothed / total


def kl_divergence(p_counts, q_counts, smoothing: float = KL_SMOOTHING) -> float:
    """D6: ``KL(P || Q) = sum_i p_i * ln(p_i / q_i)`` in nats, P and Q the smoothed class
    distributions (:func:`class_distribution`) of two splits.

    kft checks ``KL(train || val)``: how badly the validation labels cover what training
    sees. With ``smoothing=1`` (default), train counts ``[3, 1]`` and val counts ``[1, 3]`` give
    ``p = [2/3, 1/3]``, ``q = [1/3, 2/3]`` and ``KL = ln(2) / 3 = 0.231``. Returns ``inf``
    when ``smoothing=0`` and Q lacks a class that P has.
    """
    p = class_distribution(p_counts, smoothing)
    q = class_distribution(q_counts, smoothing)
    if p.shape != q.shape:
        raise ValueError(f"class counts differ in length: {p.size} vs {q.size}")
    nonzero = p > 0
    if np.any(q[nonzero] == 0):
        return math.inf
    return float(np.sum(p[nonzero] * np.log(p[nonzero] / q[nonzero])))


def duplicate_pairs(data, iou_threshold: float = IOU_THRESHOLD,
                    class_names: Sequence[str] | None = None) -> list[dict]:
    """D5 without a reference: pairs of same-class boxes in one image with IoU above
    ``iou_threshold`` (strictly), likely annotated twice.

    Returns ``[{"image_id", "image_path", "label", "class", "boxes": [i, j], "iou"}]`` with
    ``i < j`` indexing the record's boxes, in record order; ``"class"`` is the name when
    ``class_names`` is given, else the label. Crowd and difficult boxes take part like the
    others.
    """
    pairs = []
    for record in _records(data):
        for label in np.unique(record.labels):
            index = np.flatnonzero(record.labels == label)
            if index.size < 2:
                continue
            iou = iou_matrix(record.boxes[index], record.boxes[index])
            for a, b in zip(*np.nonzero(np.triu(iou, k=1) > iou_threshold), strict=True):
                pairs.append({
                    "image_id": record.image_id, "image_path": record.image_path,
                    "label": int(label),
                    "class": class_names[label] if class_names is not None else int(label),
                    "boxes": [int(index[a]), int(index[b])], "iou": round(float(iou[a, b]), 4)})
    return pairs


def consistency(data, iou_threshold: float = IOU_THRESHOLD,
                target: float = CONSISTENCY_TARGET,
                class_names: Sequence[str] | None = None) -> dict:
    """The share of boxes not involved in any :func:`duplicate_pairs` pair.

    Returns ``{"iou_threshold", "boxes", "boxes_in_duplicate_pairs", "share_consistent",
    "target", "ok", "duplicate_pairs": [...]}``; ``share_consistent`` is 1.0 for a split
    without boxes, ``ok`` is ``share_consistent >= target``.
    """
    records = _records(data)
    pairs = duplicate_pairs(records, iou_threshold, class_names)
    involved = {(p["image_id"], i) for p in pairs for i in p["boxes"]}
    total = sum(r.num_objects for r in records)
    share = 1.0 - len(involved) / total if total else 1.0
    return {"iou_threshold": iou_threshold, "boxes": total,
            "boxes_in_duplicate_pairs": len(involved), "share_consistent": share,
            "target": target, "ok": bool(share >= target), "duplicate_pairs": pairs}


def image_key(record: DetectionRecord) -> str:
    """The key that pairs a record with its reference: the user's image file name."""
    return Path(record.source_path or record.image_path).name


def _index_by_key(records: list[DetectionRecord], what: str) -> dict[str, DetectionRecord]:
    """``{image_key: record}``; ``ValueError`` when two images share a file name."""
    index: dict[str, DetectionRecord] = {}
    for record in records:
        key = image_key(record)
        if key in index:
            raise ValueError(f"{what}: images {index[key].image_path} and {record.image_path} "
                             f"share the file name {key!r}, so records cannot be paired with "
                             "the reference by file name")
        index[key] = record
    return index


def best_reference_iou(record: DetectionRecord, reference: DetectionRecord) -> np.ndarray:
    """For every box of ``record``, its best IoU with ``reference``'s boxes of the same class
    (0 when the reference has none), float64 ``[N]``."""
    best = np.zeros(record.num_objects)
    for label in np.unique(record.labels):
        mine = np.flatnonzero(record.labels == label)
        theirs = np.flatnonzero(reference.labels == label)
        if theirs.size:
            best[mine] = iou_matrix(record.boxes[mine], reference.boxes[theirs]).max(axis=1)
    return best


def agreement_with_reference(data, reference, iou_threshold: float = IOU_THRESHOLD,
                             target: float = CONSISTENCY_TARGET,
                             class_names: Sequence[str] | None = None,
                             max_listed: int = 100) -> dict:
    """D5: the share of boxes whose best IoU with the reference's same-class boxes in the same
    image exceeds ``iou_threshold`` (the guide: > 0.75 for more than 95% of boxes).

    Images are paired by file name (:func:`image_key`), so a reference written to another
    folder, or with other image ids, still pairs. Only images present in both are compared (a
    reference usually re-annotates a sample); the others are counted. Returns ``{"iou_threshold",
    "images_compared", "images_not_in_reference", "boxes", "boxes_agreeing", "share", "target",
    "ok", "per_class": {class: {"boxes", "agreeing"}}, "disagreeing": [{"image_id", "box",
    "class", "best_iou"}] (at most max_listed)}``; ``share`` is ``None`` with no box compared,
    and ``ok`` is then False.
    """
    records = _records(data)
    ref_index = _index_by_key(_records(reference), "reference")
    _index_by_key(records, "checked split")
    names = class_names
    per_class: dict = {}
    disagreeing, compared, missing, total, agreeing = [], 0, 0, 0, 0
    for record in records:
        ref = ref_index.get(image_key(record))
        if ref is None:
            missing += 1
            continue
        compared += 1
        best = best_reference_iou(record, ref)
        for i, (label, iou) in enumerate(zip(record.labels, best, strict=True)):
            name = names[label] if names is not None else int(label)
            entry = per_class.setdefault(str(name), {"boxes": 0, "agreeing": 0})
            ok = bool(iou > iou_threshold)
            entry["boxes"] += 1
            entry["agreeing"] += int(ok)
            total, agreeing = total + 1, agreeing + int(ok)
            if not ok and len(disagreeing) < max_listed:
                disagreeing.append({"image_id": record.image_id, "box": i, "class": name,
                                    "best_iou": round(float(iou), 4)})
    share = agreeing / total if total else None
    return {"iou_threshold": iou_threshold, "images_compared": compared,
            "images_not_in_reference": missing, "boxes": total, "boxes_agreeing": agreeing,
            "share": share, "target": target, "ok": bool(share is not None and share > target),
            "per_class": per_class, "disagreeing": disagreeing}


def _histogram(values: np.ndarray, edges: Sequence[float]) -> list[int]:
    """Counts per bin: ``[< edges[0]]`` (only when ``edges[0] > 0``), ``[edges[k],
    edges[k+1])``, ``[>= edges[-1]]``."""
    index = np.searchsorted(np.asarray(edges, np.float64), values, side="right")
    counts = np.bincount(index, minlength=len(edges) + 1).tolist()
    return counts if edges[0] > 0 else counts[1:]


def _summary(values: np.ndarray) -> dict:
    """min / p10 / median / p90 / max / mean of a 1-D array (all None when empty)."""
    keys = ("min", "p10", "median", "p90", "max", "mean")
    if values.size == 0:
        return dict.fromkeys(keys)
    stats = np.percentile(values, [0, 10, 50, 90, 100]).tolist() + [float(values.mean())]
    return {k: round(float(v), 4) for k, v in zip(keys, stats, strict=True)}


def box_geometry(data) -> dict[str, np.ndarray]:
    """Per-box ``{"sqrt_area", "aspect" (width / height), "relative_size" (sqrt of box area
    over image area), "labels"}``, float64 ``[num boxes]`` each (labels int64)."""
    records = _records(data)
    if not records or not any(r.num_objects for r in records):
        empty = np.zeros(0)
        return {"sqrt_area": empty, "aspect": empty, "relative_size": empty,
                "labels": np.zeros(0, np.int64)}
    boxes = np.concatenate([r.boxes for r in records]).astype(np.float64)
    image_area = np.concatenate([np.full(r.num_objects, r.height * r.width, np.float64)
                                 for r in records])
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    area = w * h
    return {"sqrt_area": np.sqrt(area), "aspect": w / np.maximum(h, 1e-9),
            "relative_size": np.sqrt(area / image_area),
            "labels": np.concatenate([r.labels for r in records]).astype(np.int64)}


def box_size_stats(data) -> dict:
    """Box sizes of a split.

    Returns ``{"boxes", "coco_sizes": {"small", "medium", "large"}`` (box area < 32^2, < 96^2,
    >= 96^2 pixels; COCO measures mask area, kft the box), ``"sqrt_area": summary,
    "sqrt_area_hist": {"edges", "counts"}``, ``"aspect_ratio": summary`` (width / height),
    ``"aspect_ratio_hist": {"edges", "counts"}``, ``"relative_size": summary}``. A summary is
    ``{"min", "p10", "median", "p90", "max", "mean"}``. Histogram counts have one bin per
    ``[edges[k], edges[k+1])`` plus an open last bin ``>= edges[-1]``; the aspect histogram
    also has a first bin ``< edges[0]``.
    """
    geometry = box_geometry(data)
    sqrt_area, aspect = geometry["sqrt_area"], geometry["aspect"]
    area = sqrt_area**2
    return {
        "boxes": int(sqrt_area.size),
        "coco_sizes": {"small": int(np.sum(area < COCO_SMALL)),
                       "medium": int(np.sum((area >= COCO_SMALL) & (area < COCO_LARGE))),
                       "large": int(np.sum(area >= COCO_LARGE))},
        "sqrt_area": _summary(sqrt_area),
        "sqrt_area_hist": {"edges": list(SQRT_AREA_EDGES),
                           "counts": _histogram(sqrt_area, SQRT_AREA_EDGES)},
        "aspect_ratio": _summary(aspect),
        "aspect_ratio_hist": {"edges": list(ASPECT_EDGES),
                              "counts": _histogram(aspect, ASPECT_EDGES)},
        "relative_size": _summary(geometry["relative_size"]),
    }


def check_split(split: DetectionSplit, name: str = "train",
                iou_threshold: float = IOU_THRESHOLD,
                target: float = CONSISTENCY_TARGET, max_listed: int = 100) -> dict:
    """Everything kft checks on one split, JSON-ready.

    Returns ``{"name", "images", "objects", "background_images", "crowd_objects",
    "difficult_objects", "per_class": {class: count}, "box_sizes": box_size_stats,
    "consistency": consistency (pairs listed up to max_listed), "bad_files": {"skipped",
    "converted", "counts", "num_skipped", "num_converted"}}`` (``bad_files`` is the reader's
    :class:`~kft.data.report.DataReport`, its lists cut to ``max_listed``).
    """
    names = list(split.class_names)
    counts = class_counts(split, len(names))
    check = consistency(split, iou_threshold, target, names)
    check["num_duplicate_pairs"] = len(check["duplicate_pairs"])
    check["duplicate_pairs"] = check["duplicate_pairs"][:max_listed]
    report = split.report.to_dict()
    report["skipped"] = report["skipped"][:max_listed]
    report["converted"] = report["converted"][:max_listed]
    return {
        "name": name,
        "images": len(split.records),
        "objects": int(counts.sum()),
        "background_images": sum(r.num_objects == 0 for r in split.records),
        "crowd_objects": int(sum(r.iscrowd.sum() for r in split.records)),
        "difficult_objects": int(sum(r.difficult.sum() for r in split.records)),
        "per_class": {n: int(c) for n, c in zip(names, counts, strict=True)},
        "box_sizes": box_size_stats(split),
        "consistency": check,
        "bad_files": report,
    }


def compare_splits(train: DetectionSplit, val: DetectionSplit,
                   smoothing: float = KL_SMOOTHING, threshold: float = KL_WARNING) -> dict:
    """D6 for two splits: ``{"kl_train_val": KL(train || val), "kl_smoothing",
    "kl_threshold", "kl_warning": KL > threshold, "train_distribution", "val_distribution"}``
    (distributions smoothed, by class name). Both splits must have the same class names."""
    if list(train.class_names) != list(val.class_names):
        raise ValueError(f"train and val have different classes: {train.class_names} vs "
                         f"{val.class_names}")
    names = list(train.class_names)
    p_counts = class_counts(train, len(names))
    q_counts = class_counts(val, len(names))
    kl = kl_divergence(p_counts, q_counts, smoothing)
    dist = {key: {n: round(float(v), 6) for n, v in
                  zip(names, class_distribution(c, smoothing), strict=True)}
            for key, c in (("train_distribution", p_counts), ("val_distribution", q_counts))}
    return {"kl_train_val": kl if math.isfinite(kl) else None, "kl_smoothing": smoothing,
            "kl_threshold": threshold, "kl_warning": bool(kl > threshold), **dist}


def check_dataset(splits: dict[str, DetectionSplit], references: dict | None = None, *,
                  iou_threshold: float = IOU_THRESHOLD, target: float = CONSISTENCY_TARGET,
                  kl_smoothing: float = KL_SMOOTHING, kl_threshold: float = KL_WARNING,
                  max_listed: int = 100) -> dict:
    """The full check of ``{"train": split, "val": split}`` (``val`` optional), JSON-ready.

    ``references``: ``{split name: reference DetectionSplit}`` for D5 proper (splits without
    one are not compared). Returns ``{"class_names", "splits": {name: check_split},
    "distribution": compare_splits or None, "kl_train_val", "kl_warning",
    "consistency_ok" (every split's duplicate check meets the target), "reference": {name:
    agreement_with_reference} or None, "reference_ok" (None without references)}``.
    """
    if "train" not in splits:
        raise ValueError(f"check_dataset needs a 'train' split, got {sorted(splits)}")
    train = splits["train"]
    names = list(train.class_names)
    result = {"class_names": names,
              "splits": {k: check_split(s, k, iou_threshold, target, max_listed)
                         for k, s in splits.items()}}
    dist = compare_splits(train, splits["val"], kl_smoothing, kl_threshold) \
        if "val" in splits else None
    result["distribution"] = dist
    result["kl_train_val"] = dist["kl_train_val"] if dist else None
    result["kl_warning"] = bool(dist and dist["kl_warning"])
    result["consistency_ok"] = all(s["consistency"]["ok"] for s in result["splits"].values())
    agreement = {k: agreement_with_reference(splits[k], ref, iou_threshold, target, names,
                                             max_listed)
                 for k, ref in (references or {}).items()}
    result["reference"] = agreement or None
    result["reference_ok"] = all(a["ok"] for a in agreement.values()) if agreement else None
    return result
