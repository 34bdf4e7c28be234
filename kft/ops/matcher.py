"""Anchor-to-ground-truth matching (SSD rules) and the training targets it gives.

Batched and static-shape: ground truth is padded to ``M`` rows per image with label -1
(shared/DESIGN.md), anchors are one ``[A, 4]`` set shared by the batch, and every output has a
fixed shape, so the functions run inside ``train_step`` / ``tf.function`` / XLA with an
unknown batch size. An image whose ground truth is all padding gets all-background matches
in-graph.

``matched_gt_index`` values:

* ``>= 0``: index into the ``M`` ground-truth rows of that image (positive anchor);
* ``BACKGROUND = -1``: negative anchor;
* ``IGNORE = -2``: neither (IoU in ``[negative_threshold, iou_threshold)``, or an anchor lying
  on a crowd box), left out of the classification loss.
"""

from __future__ import annotations

from collections.abc import Sequence

from keras import ops

from kft.ops.box_coder import SSD_VARIANCES, encode
from kft.ops.boxes import pairwise_ioa, pairwise_iou

BACKGROUND = -1
IGNORE = -2


def match(gt_boxes, gt_labels, anchors, *, iou_threshold: float = 0.5,
          negative_threshold: float | None = None, allow_low_quality: bool = True,
          gt_crowd=None):
    """Assigns each anchor a ground-truth box, background or ignore.

    Rules (SSD, Liu et al. 2016, with detectron2's optional ignore band):

    1. Each anchor takes the real ground truth it overlaps most when that IoU is at least
       ``iou_threshold``; ties go to the lower ground-truth index.
    2. Otherwise it is background, or ``IGNORE`` when ``negative_threshold`` is set and its
       best IoU is at least ``negative_threshold``.
    3. With ``allow_low_quality``, each real ground truth then claims the anchor it overlaps
       most (SSD's "best prior per object"; ties go to the lower anchor index), even below
       the threshold, provided that IoU is above 0. When several ground truths claim the same
       anchor, the one it overlaps most wins (ties: lower ground-truth index).

    4. Crowd rows (``gt_crowd``: COCO ``iscrowd``, Cityscapes ``*group``) are regions of many
       unannotated instances: they never match or claim an anchor, and an anchor that is not
       positive and lies mostly inside one (intersection over the anchor's area at least
       ``iou_threshold``, pycocotools' crowd rule) is ``IGNORE`` rather than background, as
       in detectron2 / torchvision, so it is trained neither as object nor as background.

    Padded rows (label < 0) never match and never claim an anchor.

    Args:
        gt_boxes: float32 ``[B, M, 4]`` ``xyxy`` pixels, padded.
        gt_labels: int ``[B, M]`` 0-based class ids, -1 for padding.
        anchors: float32 ``[A, 4]`` ``xyxy`` pixels.
        iou_threshold: positive IoU threshold, in ``[0, 1]``.
        negative_threshold: IoU below which an anchor is background; ``None`` means the
            same as ``iou_threshold`` (no ignore band). Must not exceed ``iou_threshold``.
        allow_low_quality: apply rule 3.
        gt_crowd: optional bool ``[B, M]``, True for crowd rows (rule 4).

    Returns:
        ``(matched_gt_index int32 [B, A], matched_iou float32 [B, A])``: ``matched_iou`` is
        the IoU with the matched ground truth for positive anchors and the anchor's best IoU
        with any real ground truth (0 if none) for the others.
    """
    negative_threshold = _check_thresholds(iou_threshold, negative_threshold)
    gt_boxes = ops.convert_to_tensor(gt_boxes, "float32")
    gt_labels = ops.convert_to_tensor(gt_labels, "int32")
    anchors = ops.convert_to_tensor(anchors, "float32")
    num_anchors = anchors.shape[0]
    if gt_boxes.shape[1] == 0:
        shape = ops.shape(gt_labels)[:1] + (num_anchors,)
        return ops.full(shape, BACKGROUND, "int32"), ops.zeros(shape, "float32")

    real = gt_labels >= 0                                             # [B, M]
    crowd = None
    if gt_crowd is not None:
        crowd = ops.logical_and(ops.convert_to_tensor(gt_crowd, "bool"), real)
        real = ops.logical_and(real, ops.logical_not(crowd))
    iou = pairwise_iou(anchors, gt_boxes)                             # [B, A, M]
    iou = ops.where(real[:, None, :], iou, -1.0)
    best_iou = ops.max(iou, axis=2)                                   # [B, A]
    best_gt = ops.cast(ops.argmax(iou, axis=2), "int32")
    matched = ops.where(best_iou >= iou_threshold, best_gt, BACKGROUND)
    if negative_threshold < iou_threshold:
        band = ops.logical_and(best_iou >= negative_threshold, best_iou < iou_threshold)
        matched = ops.where(band, IGNORE, matched)
    matched_iou = ops.maximum(best_iou, 0.0)

    if allow_low_quality:
        best_anchor = ops.cast(ops.argmax(iou, axis=1), "int32")       # [B, M]
        claims = ops.logical_and(ops.max(iou, axis=1) > 0.0, real)    # [B, M]
        anchor_ids = ops.arange(num_anchors, dtype="int32")
        claimed = ops.logical_and(anchor_ids[None, :, None] == best_anchor[:, None, :],
                                  claims[:, None, :])                 # [B, A, M]
        claim_iou = ops.where(claimed, iou, -1.0)
        forced = ops.any(claimed, axis=2)                             # [B, A]
        forced_gt = ops.cast(ops.argmax(claim_iou, axis=2), "int32")
        matched = ops.where(forced, forced_gt, matched)
        matched_iou = ops.where(forced, ops.max(claim_iou, axis=2), matched_iou)
    if crowd is not None:
        ioa = ops.where(crowd[:, None, :], pairwise_ioa(anchors, gt_boxes), 0.0)  # [B, A, M]
        on_crowd = ops.max(ioa, axis=2) >= iou_threshold
        matched = ops.where(ops.logical_and(on_crowd, matched < 0), IGNORE, matched)
    return matched, matched_iou


def targets(gt_boxes, gt_labels, anchors, matched_gt_index,
            variances: Sequence[float] = SSD_VARIANCES):
    """Classification and box-regression targets from a :func:`match` result.

    Args:
        gt_boxes: float32 ``[B, M, 4]`` ``xyxy`` pixels, padded.
        gt_labels: int ``[B, M]`` 0-based class ids, -1 for padding.
        anchors: float32 ``[A, 4]`` ``xyxy`` pixels.
        matched_gt_index: int32 ``[B, A]`` from :func:`match`.
        variances: box-coder variances (:mod:`kft.ops.box_coder`).

    Returns:
        ``(cls_targets int32 [B, A], box_targets float32 [B, A, 4], positive bool [B, A])``:
        ``cls_targets`` is ``label + 1`` for positive anchors, 0 for background and -1 for
        ignored ones (so class 0 of a classification head is background); ``box_targets`` are
        the encoded matched boxes for positive anchors and 0 elsewhere.
    """
    matched_gt_index = ops.convert_to_tensor(matched_gt_index, "int32")
    gt_boxes = ops.convert_to_tensor(gt_boxes, "float32")
    gt_labels = ops.convert_to_tensor(gt_labels, "int32")
    positive = matched_gt_index >= 0
    if gt_boxes.shape[1] == 0:
        cls_targets = ops.where(matched_gt_index == IGNORE, -1, 0)
        box_targets = ops.zeros(ops.shape(matched_gt_index) + (4,), "float32")
        return ops.cast(cls_targets, "int32"), box_targets, positive

    index = ops.maximum(matched_gt_index, 0)
    labels = ops.take_along_axis(gt_labels, index, axis=1)            # [B, A]
    boxes = ops.take_along_axis(gt_boxes, index[:, :, None], axis=1)  # [B, A, 4]
    cls_targets = ops.where(positive, labels + 1,
                            ops.where(matched_gt_index == IGNORE, -1, 0))
    box_targets = ops.where(positive[:, :, None], encode(boxes, anchors, variances), 0.0)
    return ops.cast(cls_targets, "int32"), box_targets, positive


def _check_thresholds(iou_threshold: float, negative_threshold: float | None) -> float:
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
    if negative_threshold is None:
        return float(iou_threshold)
    if not 0.0 <= negative_threshold <= iou_threshold:
        raise ValueError(f"negative_threshold must be in [0, iou_threshold={iou_threshold}], "
                         f"got {negative_threshold}")
    return float(negative_threshold)
