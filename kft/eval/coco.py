"""COCO detection and instance-segmentation metrics, computed by pycocotools.

Conventions (shared/DESIGN.md):

* Boxes are float32 ``xyxy`` in absolute pixels of the ORIGINAL image, half-open, so the COCO
  ``xywh`` box is ``[x1, y1, x2 - x1, y2 - y1]`` (no ``+1``).
* Labels are 0-based contiguous ints ``0..C-1``. ``label_to_category`` maps them back to the
  original COCO category ids (any ints, e.g. 1, 3, 90); by default label ``i`` -> id ``i + 1``.
* A ground-truth example is ``{"image_id", "height", "width", "boxes" f32[N,4],
  "labels" i32[N], optional "iscrowd" bool[N], optional "masks" uint8/bool[N,H,W]}``.
  ``"difficult"`` (VOC) is not used here: COCO has no such flag (see :mod:`kft.eval.voc`).
* A prediction (one image) is ``{"image_id", "boxes" f32[K,4], "scores" f32[K],
  "labels" i32[K], optional "masks" [K,H,W]}``; float masks are probabilities, binarised at
  ``>= 0.5``; bool/integer masks are binary (non-zero = foreground).

The ground truth is turned into an in-memory pycocotools ``COCO`` object: one image per
example (with height/width), one annotation per box with ``bbox`` in ``xywh``, ``iscrowd``,
``area`` (mask pixel count when masks are given, as in the official COCO files, else box area)
and, for ``segm``, the mask as compressed RLE. Detections go through ``COCO.loadRes`` and
``COCOeval`` runs once per IoU type, exactly as the reference tools do, so results equal
pycocotools on the same data. Everything pycocotools prints is captured; the text summary is
kept for :meth:`COCOEvaluator.summary_lines`.

Returned metrics (floats in 0..1, JSON-serialisable; ``None`` where pycocotools reports -1,
i.e. undefined, e.g. ``APs`` when there is no small object):
``{t}_AP, {t}_AP50, {t}_AP75, {t}_APs, {t}_APm, {t}_APl, {t}_AR1, {t}_AR10, {t}_AR100,
{t}_ARs, {t}_ARm, {t}_ARl`` for ``t`` in the requested IoU types, plus
``{t}_per_class_AP`` and ``{t}_per_class_AP50`` ``{class_name: float | None}`` (AP@[.5:.95]
and AP@.5 over area "all", maxDets 100; ``None`` for a class without ground truth).
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from kft.eval.voc import normalize_image_id

IOU_TYPES = ("bbox", "segm")
STAT_NAMES = (
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)  # fmt: skip
MASK_THRESHOLD = 0.5


# ----------------------------------------------------------------------------- small helpers


def _finite_or_none(value) -> float | None:
    """Python float, or ``None`` for NaN/inf and for pycocotools' "undefined" value -1."""
    value = float(value)
    if not math.isfinite(value) or value < 0:
        return None
    return value


def _silently(fn, *args, **kwargs):
    """Run ``fn`` with stdout captured -> ``(result, captured_text)``."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        result = fn(*args, **kwargs)
    return result, buffer.getvalue()


def _check_iou_types(iou_types: Sequence[str]) -> tuple[str, ...]:
    iou_types = tuple(iou_types)
    bad = [t for t in iou_types if t not in IOU_TYPES]
    if bad or not iou_types:
        raise ValueError(f"iou_types must be a non-empty subset of {IOU_TYPES}, got {iou_types}")
    return iou_types


def category_ids_for(label_to_category, num_classes: int) -> list[int]:
    """Category id of each label ``0..num_classes-1`` -> ``list[int]`` of length ``num_classes``.

    ``label_to_category`` is ``None`` (label ``i`` -> ``i + 1``), a sequence indexed by label,
    or a mapping ``{label: category_id}`` covering every label. Ids must be distinct.
    """
    if label_to_category is None:
        return list(range(1, num_classes + 1))
    if isinstance(label_to_category, Mapping):
        missing = [i for i in range(num_classes) if i not in label_to_category]
        if missing:
            raise ValueError(f"label_to_category has no category id for labels {missing}")
        ids = [int(label_to_category[i]) for i in range(num_classes)]
    else:
        ids = [int(c) for c in label_to_category]
        if len(ids) != num_classes:
            raise ValueError(
                f"label_to_category has {len(ids)} entries but there are {num_classes} classes"
            )
    if len(set(ids)) != len(ids):
        raise ValueError(f"label_to_category maps two labels to one category id: {ids}")
    return ids


def binarize_masks(masks) -> np.ndarray:
    """Masks ``[N,H,W]`` (bool, integer or float probabilities) -> uint8 ``[N,H,W]`` of 0/1.

    Float masks are thresholded at ``>= 0.5``; bool/integer masks count non-zero as foreground.
    """
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must have shape [N, H, W], got {masks.shape}")
    if np.issubdtype(masks.dtype, np.floating):
        return (masks >= MASK_THRESHOLD).astype(np.uint8)
    return (masks != 0).astype(np.uint8)


def encode_masks(masks) -> list[dict]:
    """Binary masks ``[N,H,W]`` -> N compressed RLEs ``{"size": [H, W], "counts": str}``.

    Uses ``pycocotools.mask.encode`` on a Fortran-ordered uint8 array; ``counts`` is decoded
    to ``str`` so the RLEs are JSON-serialisable (pycocotools accepts both).
    """
    binary = binarize_masks(masks)
    if binary.shape[0] == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def xyxy_to_xywh_list(boxes) -> list[list[float]]:
    """``xyxy`` boxes ``[N,4]`` (half-open) -> COCO ``[[x, y, w, h], ...]`` as Python floats."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    return xywh.tolist()


def _field(record: Mapping, key: str, kind: str):
    if key not in record:
        raise ValueError(f"{kind} for image_id={record.get('image_id')!r} has no {key!r} field")
    return record[key]


def _boxes_and_labels(record: Mapping, kind: str, num_classes: int):
    """Validated ``(boxes f64[N,4], labels i64[N])`` of a ground truth or prediction record."""
    image_id = record.get("image_id")
    boxes = np.asarray(_field(record, "boxes", kind), dtype=np.float64)
    labels = np.asarray(_field(record, "labels", kind)).astype(np.int64).reshape(-1)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or boxes.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{kind} for image_id={image_id!r}: boxes {boxes.shape} and labels {labels.shape} "
            "must be [N, 4] and [N]"
        )
    if not np.all(np.isfinite(boxes)):
        raise ValueError(f"{kind} for image_id={image_id!r} has non-finite box coordinates")
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise ValueError(
            f"{kind} for image_id={image_id!r} has labels {sorted(set(bad.tolist()))} outside "
            f"0..{num_classes - 1}"
        )
    return boxes, labels


def _masks_rles(record: Mapping, kind: str, count: int) -> list[dict]:
    rles = encode_masks(_field(record, "masks", kind))
    if len(rles) != count:
        raise ValueError(
            f"{kind} for image_id={record.get('image_id')!r} has {len(rles)} masks for "
            f"{count} boxes"
        )
    return rles


# ----------------------------------------------------------------------------- conversions


def example_to_annotations(
    example: Mapping, category_ids: Sequence[int], *, with_masks: bool
) -> list[dict]:
    """One ground-truth example -> COCO annotation dicts (``id``/``image_id`` not yet set).

    ``area`` is the mask pixel count when masks are present (as in official COCO files),
    otherwise the box area ``w * h``.
    """
    boxes, labels = _boxes_and_labels(example, "ground truth", len(category_ids))
    n = len(labels)
    iscrowd = np.asarray(example.get("iscrowd", np.zeros(n, bool))).astype(bool).reshape(-1)
    if iscrowd.shape[0] != n:
        raise ValueError(
            f"ground truth for image_id={example.get('image_id')!r}: iscrowd has "
            f"{iscrowd.shape[0]} entries for {n} boxes"
        )
    has_masks = example.get("masks") is not None
    if with_masks and not has_masks and n:
        raise ValueError(
            f"'segm' evaluation needs ground-truth masks; image_id={example.get('image_id')!r} "
            "has none"
        )
    rles = _masks_rles(example, "ground truth", n) if has_masks else None
    annotations = []
    for i, xywh in enumerate(xyxy_to_xywh_list(boxes)):
        area = float(mask_utils.area(rles[i])) if rles else max(xywh[2], 0.0) * max(xywh[3], 0.0)
        ann = {
            "category_id": int(category_ids[labels[i]]),
            "bbox": xywh,
            "area": area,
            "iscrowd": int(iscrowd[i]),
        }
        if rles:
            ann["segmentation"] = rles[i]
        annotations.append(ann)
    return annotations


def prediction_to_results(
    prediction: Mapping, category_ids: Sequence[int], iou_types: Sequence[str]
) -> dict[str, list[dict]]:
    """One image's prediction -> ``{iou_type: [COCO result dict, ...]}``.

    ``bbox`` results carry ``bbox`` (``xywh``); ``segm`` results carry only ``segmentation``
    (RLE) so pycocotools derives their area and box from the mask, as the COCO tools expect.
    ``image_id`` is the prediction's own id.
    """
    boxes, labels = _boxes_and_labels(prediction, "prediction", len(category_ids))
    scores = np.asarray(_field(prediction, "scores", "prediction"), np.float64).reshape(-1)
    if scores.shape[0] != labels.shape[0] or not np.all(np.isfinite(scores)):
        raise ValueError(
            f"prediction for image_id={prediction.get('image_id')!r}: scores must be {len(labels)}"
            " finite values"
        )
    image_id = normalize_image_id(prediction["image_id"])
    common = [
        {"image_id": image_id, "category_id": int(category_ids[c]), "score": float(s)}
        for c, s in zip(labels, scores, strict=True)
    ]
    results = {}
    if "bbox" in iou_types:
        xywh = xyxy_to_xywh_list(boxes)
        results["bbox"] = [dict(r, bbox=b) for r, b in zip(common, xywh, strict=True)]
    if "segm" in iou_types:
        rles = _masks_rles(prediction, "prediction", len(common))
        results["segm"] = [dict(r, segmentation=m) for r, m in zip(common, rles, strict=True)]
    return results


def make_coco(dataset: dict) -> COCO:
    """In-memory pycocotools ``COCO`` from a dataset dict, without printing."""
    coco = COCO()
    coco.dataset = dataset
    _silently(coco.createIndex)
    return coco


def load_results(coco_gt: COCO, results: list[dict]) -> COCO:
    """``coco_gt.loadRes(results)``; an empty list gives an empty result set (no detections)."""
    if results:
        return _silently(coco_gt.loadRes, [dict(r) for r in results])[0]
    dataset = {
        "images": list(coco_gt.dataset["images"]),
        "categories": list(coco_gt.dataset["categories"]),
        "annotations": [],
    }
    return make_coco(dataset)


# ----------------------------------------------------------------------------- evaluation


def per_class_ap(coco_eval: COCOeval) -> tuple[dict[int, float], dict[int, float]]:
    """``({category_id: AP@[.5:.95]}, {category_id: AP@.5})`` from an accumulated COCOeval.

    ``eval["precision"]`` has shape ``[T, R, K, A, M]`` (IoU thresholds, recall thresholds,
    categories in ``params.catIds`` order, area ranges, maxDets), with -1 where a category
    has no ground truth. Uses area "all" and the largest maxDets; the mean ignores -1 entries
    and is NaN when there is none.
    """
    params = coco_eval.params
    precision = coco_eval.eval["precision"]
    area = params.areaRngLbl.index("all")
    iou50 = int(np.argmin(np.abs(np.asarray(params.iouThrs) - 0.5)))
    ap, ap50 = {}, {}
    for k, cat_id in enumerate(params.catIds):
        block = precision[:, :, k, area, -1]
        ap[cat_id] = _mean_valid(block)
        ap50[cat_id] = _mean_valid(block[iou50])
    return ap, ap50


def _mean_valid(values: np.ndarray) -> float:
    valid = values[values > -1]
    return float(np.mean(valid)) if valid.size else float("nan")


def run_cocoeval(
    coco_gt: COCO,
    results: list[dict],
    iou_type: str,
    class_names: Sequence[str],
    category_ids: Sequence[int],
    image_ids: Sequence | None = None,
) -> tuple[dict, str]:
    """Run pycocotools' COCOeval for one IoU type -> ``(metrics, summary_text)``.

    ``results`` are COCO result dicts whose ``image_id`` are ids of ``coco_gt``;
    ``class_names[i]`` names category ``category_ids[i]``. ``image_ids`` restricts the
    evaluated images (default: all images of ``coco_gt``). Metric keys are described in the
    module docstring.
    """
    coco_dt = load_results(coco_gt, results)
    coco_eval = COCOeval(coco_gt, coco_dt, iouType=iou_type)
    if image_ids is not None:
        coco_eval.params.imgIds = sorted(image_ids)
    _, text_eval = _silently(coco_eval.evaluate)
    _, text_acc = _silently(coco_eval.accumulate)
    _, text = _silently(coco_eval.summarize)
    metrics = {
        f"{iou_type}_{name}": _finite_or_none(value)
        for name, value in zip(STAT_NAMES, coco_eval.stats, strict=True)
    }
    ap, ap50 = per_class_ap(coco_eval)
    metrics[f"{iou_type}_per_class_AP"] = {
        name: _finite_or_none(ap[c]) for name, c in zip(class_names, category_ids, strict=True)
    }
    metrics[f"{iou_type}_per_class_AP50"] = {
        name: _finite_or_none(ap50[c]) for name, c in zip(class_names, category_ids, strict=True)
    }
    return metrics, text


def _check_known_images(image_ids: Iterable, known: set, what: str, where: str) -> None:
    """Raise naming (up to 10 of) the ``image_ids`` that are not in ``known``."""
    unknown = set(image_ids) - known
    if unknown:
        shown = sorted(unknown, key=str)[:10]
        raise ValueError(
            f"{what} for image_id(s) {shown} ({len(unknown)} in all) that are not in {where}"
        )


def _format_summary(iou_type: str, text: str, metrics: dict) -> list[str]:
    lines = [f"{iou_type}:"] + [line for line in text.splitlines() if line.strip()]
    per_class = metrics[f"{iou_type}_per_class_AP"]
    per_class50 = metrics[f"{iou_type}_per_class_AP50"]
    width = max([len(n) for n in per_class] + [5])
    lines.append(f"  {'class':<{width}}  AP      AP50")
    for name, value in per_class.items():
        lines.append(f"  {name:<{width}}  {_fmt(value)}  {_fmt(per_class50[name])}")
    return lines


def _fmt(value: float | None) -> str:
    return "  n/a " if value is None else f"{value:0.4f}"


class COCOEvaluator:
    """Accumulates ground truth and predictions image by image, then runs COCOeval.

    Args:
        class_names: names of labels ``0..C-1``.
        iou_types: any of ``("bbox", "segm")``; ``segm`` needs masks in GT and predictions.
        label_to_category: ``None`` (label ``i`` -> category id ``i + 1``), a sequence or a
            mapping label -> original COCO category id.

    Image ids may be ints or strings (0-d arrays/tensors and bytes are converted). Int ids are used as the COCO image ids unchanged (so
    score ties break as in pycocotools on the original file); otherwise images are numbered
    ``1..N`` in sorted order of ``str(image_id)``.
    """

    def __init__(self, class_names, iou_types=("bbox",), label_to_category=None):
        self.class_names = [str(n) for n in class_names]
        self.iou_types = _check_iou_types(iou_types)
        self.category_ids = category_ids_for(label_to_category, len(self.class_names))
        self._images: dict = {}  # original image_id -> (height, width)
        self._annotations: dict = {}  # original image_id -> list of annotation dicts
        self._results: dict[str, list[dict]] = {t: [] for t in self.iou_types}
        self._predicted: set = set()
        self._summary: list[str] = []

    def reset(self) -> None:
        """Forget all ground truth, predictions and the last summary."""
        self.__init__(self.class_names, self.iou_types, self.category_ids)

    def add_ground_truth(self, example: Mapping) -> None:
        """Add one image's ground truth (see module docstring for the dict layout)."""
        image_id = normalize_image_id(_field(example, "image_id", "ground truth"))
        if image_id in self._images:
            raise ValueError(f"ground truth for image_id={image_id!r} was already added")
        height = int(_field(example, "height", "ground truth"))
        width = int(_field(example, "width", "ground truth"))
        anns = example_to_annotations(
            example, self.category_ids, with_masks="segm" in self.iou_types
        )
        for ann in anns:
            size = ann.get("segmentation", {}).get("size", [height, width])
            if list(size) != [height, width]:
                raise ValueError(
                    f"ground truth for image_id={image_id!r}: masks are {size}, image is "
                    f"{[height, width]}"
                )
        self._images[image_id] = (height, width)
        self._annotations[image_id] = anns

    def add_predictions(self, prediction: Mapping) -> None:
        """Add one image's predictions (see module docstring for the dict layout)."""
        image_id = normalize_image_id(_field(prediction, "image_id", "prediction"))
        if image_id in self._predicted:
            raise ValueError(f"predictions for image_id={image_id!r} were already added")
        results = prediction_to_results(prediction, self.category_ids, self.iou_types)
        self._predicted.add(image_id)
        for iou_type, rs in results.items():
            self._results[iou_type].extend(rs)

    def _coco_ids(self) -> dict:
        ids = list(self._images)
        if all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in ids):
            return {i: int(i) for i in ids}
        return {i: n + 1 for n, i in enumerate(sorted(ids, key=str))}

    def gt_dataset(self) -> dict:
        """The ground truth as a COCO dataset dict (JSON-serialisable, RLE counts as str)."""
        coco_ids = self._coco_ids()
        images = [
            {"id": coco_ids[i], "height": h, "width": w, "file_name": str(i)}
            for i, (h, w) in self._images.items()
        ]
        annotations = []
        for image_id, anns in self._annotations.items():
            for ann in anns:
                annotations.append(dict(ann, id=len(annotations) + 1, image_id=coco_ids[image_id]))
        categories = [
            {"id": c, "name": n} for c, n in zip(self.category_ids, self.class_names, strict=True)
        ]
        return {"images": images, "annotations": annotations, "categories": categories}

    def evaluate(self) -> dict:
        """Run COCOeval for every IoU type -> metrics dict (see module docstring)."""
        if not self._images:
            raise ValueError("COCOEvaluator.evaluate(): no ground truth was added")
        _check_known_images(self._predicted, set(self._images), "predictions", "the ground truth")
        coco_ids = self._coco_ids()
        coco_gt = make_coco(self.gt_dataset())
        metrics, self._summary = {}, []
        for iou_type in self.iou_types:
            results = [dict(r, image_id=coco_ids[r["image_id"]]) for r in self._results[iou_type]]
            for r in results:
                size = r.get("segmentation", {}).get("size")
                image = coco_gt.imgs[r["image_id"]]
                if size is not None and list(size) != [image["height"], image["width"]]:
                    raise ValueError(
                        f"prediction masks for image_id={image['file_name']} are {size}, "
                        f"image is {[image['height'], image['width']]}"
                    )
            type_metrics, text = run_cocoeval(
                coco_gt, results, iou_type, self.class_names, self.category_ids
            )
            metrics.update(type_metrics)
            self._summary += _format_summary(iou_type, text, type_metrics)
        return metrics

    def summary_lines(self) -> list[str]:
        """pycocotools' text summary and a per-class AP table of the last :meth:`evaluate`."""
        if not self._summary:
            raise RuntimeError("call COCOEvaluator.evaluate() before summary_lines()")
        return list(self._summary)


def coco_metrics_from_arrays(
    gt_examples: Iterable[Mapping],
    predictions: Iterable[Mapping],
    class_names: Sequence[str],
    iou_types: Sequence[str] = ("bbox",),
    label_to_category=None,
) -> dict:
    """One-shot :class:`COCOEvaluator` over lists of GT examples and per-image predictions."""
    evaluator = COCOEvaluator(class_names, iou_types, label_to_category)
    for example in gt_examples:
        evaluator.add_ground_truth(example)
    for prediction in predictions:
        evaluator.add_predictions(prediction)
    return evaluator.evaluate()


def evaluate_coco_json(
    gt_json_path,
    predictions: Iterable[Mapping],
    label_to_category,
    iou_types: Sequence[str] = ("bbox",),
    image_ids: Sequence | None = None,
) -> dict:
    """COCO metrics against an original COCO annotation file.

    Args:
        gt_json_path: path of the COCO instances JSON (its image ids must be the predictions'
            ``image_id``).
        predictions: per-image prediction dicts (module docstring); labels are mapped to
            category ids with ``label_to_category`` (sequence or mapping, required).
        iou_types: subset of ``("bbox", "segm")``.
        image_ids: evaluate only these images (e.g. a subset of val2017); default all images
            of the file.

    As with pycocotools, every category of the file counts in the summary numbers (a category
    the model never predicts has AP 0 where it has ground truth). Per-class keys are the
    file's category names, in label order.
    """
    iou_types = _check_iou_types(iou_types)
    coco_gt = _silently(COCO, str(gt_json_path))[0]
    if label_to_category is None:
        raise ValueError("evaluate_coco_json needs label_to_category (label -> category id)")
    num_classes = len(label_to_category)
    category_ids = category_ids_for(label_to_category, num_classes)
    missing = [c for c in category_ids if c not in coco_gt.cats]
    if missing:
        raise ValueError(f"category ids {missing} are not in {gt_json_path}")
    class_names = [str(coco_gt.cats[c].get("name", c)) for c in category_ids]
    results, predicted = {t: [] for t in iou_types}, set()
    for prediction in predictions:
        predicted.add(normalize_image_id(_field(prediction, "image_id", "prediction")))
        for iou_type, rs in prediction_to_results(prediction, category_ids, iou_types).items():
            results[iou_type].extend(rs)
    known = set(coco_gt.getImgIds())
    _check_known_images(predicted, known, "predictions", str(gt_json_path))
    if image_ids is not None:
        _check_known_images(image_ids, known, "image_ids", str(gt_json_path))
    metrics = {}
    for iou_type in iou_types:
        type_metrics, _ = run_cocoeval(
            coco_gt, results[iou_type], iou_type, class_names, category_ids, image_ids
        )
        metrics.update(type_metrics)
    return metrics
