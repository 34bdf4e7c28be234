"""Batched per-class non-maximum suppression with static, padded outputs.

:func:`batched_nms` is the one NMS entry point of kft. It has two implementations with the
same results (up to score ties and float rounding of IoUs at the threshold):

* TensorFlow backend: ``NonMaxSuppressionV5`` (``tf.raw_ops``, ``pad_to_max_output_size``),
  which the TFLite converter maps to its ``NON_MAX_SUPPRESSION_V5`` builtin, plus
  ``GATHER`` / ``TOPK_V2`` / elementwise ops; every shape is static. When
  ``max_per_class >= max_detections`` one class-agnostic NMS runs per image on boxes shifted
  apart per class (the class-offset trick: class ``c`` adds ``c * (coordinate span + 1)``, so
  boxes of different classes never overlap); otherwise one NMS runs per class and ``top_k``
  merges them. Images are unrolled when the batch size is static (TFLite export, ``predict``)
  and mapped with ``tf.map_fn`` when it is not. ``tf.image.combined_non_max_suppression`` is
  not used: TFLite has no builtin for it (it would need the Flex delegate).
* Other backends: a fixed-iteration greedy NMS in ``keras.ops`` (``fori_loop`` over the
  ``max_detections`` output slots, each taking the best remaining (box, class) candidate and
  suppressing same-class boxes overlapping it).

Semantics (TensorFlow's): a candidate needs ``score > score_threshold``; a kept box suppresses
same-class boxes with ``IoU > iou_threshold``; each class keeps at most ``max_per_class``;
the image keeps the ``max_detections`` best, sorted by decreasing score.
"""

from __future__ import annotations

import keras
from keras import ops

from kft.ops.boxes import pairwise_iou


def batched_nms(boxes, scores, *, iou_threshold: float = 0.45, score_threshold: float = 0.01,
                max_per_class: int = 100, max_detections: int = 100) -> dict:
    """Per-class NMS over a batch, padded to ``max_detections``.

    Args:
        boxes: float32 ``[B, K, 4]`` ``xyxy`` pixels shared by all classes, or
            ``[B, K, C, 4]`` class-specific boxes (Faster R-CNN's box head). Boxes must be
            well formed (``x1 <= x2``, ``y1 <= y2``).
        scores: float32 ``[B, K, C]`` per-class scores, background column excluded; ``K`` and
            ``C`` must be static.
        iou_threshold: same-class boxes with IoU above this are suppressed.
        score_threshold: candidates need a score above this.
        max_per_class: most boxes kept per class and image.
        max_detections: ``D``, most boxes kept per image.

    Returns:
        ``{"boxes": float32 [B, D, 4], "scores": float32 [B, D], "labels": int32 [B, D],
        "num_detections": int32 [B]}``; detections sorted by decreasing score, then padding
        (boxes 0, scores 0, labels -1). ``labels`` index the ``C`` score columns.
    """
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
    if max_per_class < 1 or max_detections < 1:
        raise ValueError(f"max_per_class and max_detections must be >= 1, got "
                         f"{max_per_class}, {max_detections}")
    args = (float(iou_threshold), float(score_threshold), int(max_per_class),
            int(max_detections))
    if keras.backend.backend() == "tensorflow":
        return _tf_batched_nms(boxes, scores, *args)
    return _ops_batched_nms(boxes, scores, *args)


def _check_shapes(boxes, scores):
    if len(scores.shape) != 3 or scores.shape[1] is None or scores.shape[2] is None:
        raise ValueError(f"scores must be [B, K, C] with static K and C, got {scores.shape}")
    expected = tuple(scores.shape[1:2]), tuple(scores.shape[1:3])
    if boxes.shape[-1] != 4 or tuple(boxes.shape[1:-1]) not in expected:
        raise ValueError(f"boxes must be [B, K, 4] or [B, K, C, 4] for scores "
                         f"{tuple(scores.shape)}, got {tuple(boxes.shape)}")
    return scores.shape[1], scores.shape[2], len(boxes.shape) == 4


def _ops_batched_nms(boxes, scores, iou_threshold, score_threshold, max_per_class,
                     max_detections):
    """Greedy NMS in ``keras.ops``: one output slot per ``fori_loop`` step."""
    boxes = ops.convert_to_tensor(boxes, "float32")
    scores = ops.convert_to_tensor(scores, "float32")
    num_boxes, num_classes, class_specific = _check_shapes(boxes, scores)
    flat = ops.reshape(scores, (-1, num_boxes * num_classes))         # index k * C + c
    class_ids = ops.arange(num_classes, dtype="int32")
    slots = ops.arange(max_detections, dtype="int32")
    candidate_ids = ops.arange(num_boxes * num_classes, dtype="int32")
    batch = ops.shape(scores)[:1]

    def body(i, state):
        alive, out_boxes, out_scores, out_labels, counts = state
        live = ops.where(alive, flat, float("-inf"))
        index = ops.cast(ops.argmax(live, axis=1), "int32")           # [B]
        valid = ops.any(alive, axis=1)
        score = ops.max(live, axis=1)
        k = index // num_classes
        c = index % num_classes
        if class_specific:
            class_boxes = ops.take_along_axis(boxes, c[:, None, None, None], axis=2)[:, :, 0]
        else:
            class_boxes = boxes                                           # [B, K, 4]
        box = ops.take_along_axis(class_boxes, k[:, None, None], axis=1)  # [B, 1, 4]
        overlap = pairwise_iou(box, class_boxes)[:, 0] > iou_threshold  # [B, K]
        same_class = class_ids[None, :] == c[:, None]                     # [B, C]
        counts = counts + ops.cast(ops.logical_and(same_class, valid[:, None]), "int32")
        dead = ops.logical_or(ops.logical_and(overlap[:, :, None], same_class[:, None, :]),
                              (counts >= max_per_class)[:, None, :])     # [B, K, C]
        picked = candidate_ids[None, :] == index[:, None]                 # [B, K * C]
        dead = ops.logical_or(ops.reshape(dead, (-1, num_boxes * num_classes)), picked)
        alive = ops.logical_and(alive, ops.logical_not(dead))
        write = ops.logical_and(slots[None, :] == i, valid[:, None])     # [B, D]
        out_boxes = ops.where(write[:, :, None], box, out_boxes)
        out_scores = ops.where(write, score[:, None], out_scores)
        out_labels = ops.where(write, c[:, None], out_labels)
        return alive, out_boxes, out_scores, out_labels, counts

    state = (flat > score_threshold,
             ops.zeros(batch + (max_detections, 4), "float32"),
             ops.zeros(batch + (max_detections,), "float32"),
             ops.full(batch + (max_detections,), -1, "int32"),
             ops.zeros(batch + (num_classes,), "int32"))
    _, out_boxes, out_scores, out_labels, _ = ops.fori_loop(0, max_detections, body, state)
    return {"boxes": out_boxes, "scores": out_scores, "labels": out_labels,
            "num_detections": ops.sum(ops.cast(out_labels >= 0, "int32"), axis=1)}


def _tf_batched_nms(boxes, scores, iou_threshold, score_threshold, max_per_class,
                    max_detections):
    """TensorFlow / TFLite-builtin implementation (see the module docstring)."""
    import tensorflow as tf

    boxes = tf.convert_to_tensor(boxes, tf.float32)
    scores = tf.convert_to_tensor(scores, tf.float32)
    num_boxes, num_classes, class_specific = _check_shapes(boxes, scores)
    if max_per_class >= max_detections:
        one_image = _tf_offset_nms
    else:
        one_image = _tf_per_class_nms
    settings = dict(iou_threshold=iou_threshold, score_threshold=score_threshold,
                    max_per_class=max_per_class, max_detections=max_detections,
                    num_boxes=num_boxes, num_classes=num_classes, class_specific=class_specific)
    batch_size = scores.shape[0]
    if batch_size is not None:
        outputs = [one_image(boxes[b], scores[b], **settings) for b in range(batch_size)]
        outputs = [tf.stack(parts, axis=0) for parts in zip(*outputs, strict=True)]
    else:
        signature = (tf.TensorSpec((max_detections, 4), tf.float32),
                     tf.TensorSpec((max_detections,), tf.float32),
                     tf.TensorSpec((max_detections,), tf.int32),
                     tf.TensorSpec((), tf.int32))
        outputs = tf.map_fn(lambda x: one_image(x[0], x[1], **settings), (boxes, scores),
                            fn_output_signature=signature)
    return dict(zip(("boxes", "scores", "labels", "num_detections"), outputs, strict=True))


def _tf_candidates(boxes, num_boxes, num_classes, class_specific):
    """``[K, 4]`` or ``[K, C, 4]`` -> ``[K * C, 4]`` candidate boxes, index ``k * C + c``."""
    import tensorflow as tf

    if not class_specific:
        boxes = tf.tile(boxes[:, None, :], (1, num_classes, 1))
    return tf.reshape(boxes, (num_boxes * num_classes, 4))


def _tf_offset_nms(boxes, scores, *, iou_threshold, score_threshold, max_per_class,
                   max_detections, num_boxes, num_classes, class_specific):
    """One class-agnostic NMS over class-shifted boxes (exact when max_per_class >= D)."""
    import tensorflow as tf

    candidates = _tf_candidates(boxes, num_boxes, num_classes, class_specific)
    low = tf.reduce_min(candidates)
    span = tf.reduce_max(candidates) - low + 1.0
    labels = tf.tile(tf.range(num_classes, dtype=tf.int32), (num_boxes,))   # [K * C]
    shifted = candidates - low + tf.cast(labels, tf.float32)[:, None] * span
    size = min(max_detections, num_boxes * num_classes)
    index, kept_scores, count = tf.raw_ops.NonMaxSuppressionV5(
        boxes=shifted, scores=tf.reshape(scores, (-1,)), max_output_size=size,
        iou_threshold=iou_threshold, score_threshold=score_threshold, soft_nms_sigma=0.0,
        pad_to_max_output_size=True)
    return _tf_pack(tf.gather(candidates, index), kept_scores, tf.gather(labels, index),
                    tf.range(size) < count, max_detections)


def _tf_per_class_nms(boxes, scores, *, iou_threshold, score_threshold, max_per_class,
                      max_detections, num_boxes, num_classes, class_specific):
    """One NMS per class (``max_per_class`` each), then the best ``max_detections``."""
    import tensorflow as tf

    size = min(max_per_class, num_boxes)
    kept_boxes, kept_scores, kept_labels, kept_valid = [], [], [], []
    for c in range(num_classes):
        class_boxes = boxes[:, c] if class_specific else boxes
        index, class_scores, count = tf.raw_ops.NonMaxSuppressionV5(
            boxes=class_boxes, scores=scores[:, c], max_output_size=size,
            iou_threshold=iou_threshold, score_threshold=score_threshold, soft_nms_sigma=0.0,
            pad_to_max_output_size=True)
        kept_boxes.append(tf.gather(class_boxes, index))
        kept_scores.append(class_scores)
        kept_labels.append(tf.fill((size,), c))
        kept_valid.append(tf.range(size) < count)
    valid = tf.concat(kept_valid, axis=0)
    ranked = tf.where(valid, tf.concat(kept_scores, axis=0), float("-inf"))
    top = min(max_detections, size * num_classes)
    _, order = tf.math.top_k(ranked, k=top)
    return _tf_pack(tf.gather(tf.concat(kept_boxes, axis=0), order),
                    tf.gather(ranked, order), tf.gather(tf.concat(kept_labels, axis=0), order),
                    tf.gather(valid, order), max_detections)


def _tf_pack(boxes, scores, labels, valid, max_detections):
    """Zeroes / -1s the invalid rows and pads ``[n]`` rows to ``[max_detections]``."""
    import tensorflow as tf

    pad = max_detections - int(valid.shape[0])
    boxes = tf.pad(tf.where(valid[:, None], boxes, 0.0), ((0, pad), (0, 0)))
    scores = tf.pad(tf.where(valid, scores, 0.0), ((0, pad),))
    labels = tf.pad(tf.where(valid, labels, -1), ((0, pad),), constant_values=-1)
    return boxes, scores, labels, tf.reduce_sum(tf.cast(valid, tf.int32))
