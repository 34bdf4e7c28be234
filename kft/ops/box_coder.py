"""Centre-size box encoding shared by SSD, the RPN and the Faster / Mask R-CNN box heads.

A box is regressed relative to an anchor (default box / proposal) ``a`` as::

    tx = (cx - cx_a) / w_a / v0        ty = (cy - cy_a) / h_a / v1
    tw = log(w / w_a) / v2             th = log(h / h_a) / v3

with ``variances = (v0, v1, v2, v3)``. SSD calls them variances (``(0.1, 0.1, 0.2, 0.2)``);
Faster R-CNN writes the same thing as weights ``(10, 10, 5, 5) = 1 / variances`` (the RPN uses
weights ``(1, 1, 1, 1)``). Use :func:`variances_from_weights` to pass a weights tuple.

Boxes and anchors are float32 ``xyxy`` in absolute pixels (shared/DESIGN.md). :func:`decode`
is the inverse of :func:`encode`; it clamps the log-size deltas at ``BBOX_XFORM_CLIP`` before
``exp`` so untrained heads cannot produce ``inf`` boxes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from keras import ops

from kft.ops.boxes import xyxy_to_cxcywh

BBOX_XFORM_CLIP = math.log(1000.0 / 16.0)
"""Largest ``log(w / w_a)`` that :func:`decode` lets through (a box at most 62.5x its anchor)."""

SSD_VARIANCES = (0.1, 0.1, 0.2, 0.2)
"""SSD variances, the same numbers as Faster R-CNN's box-head weights ``(10, 10, 5, 5)``."""

RPN_VARIANCES = (1.0, 1.0, 1.0, 1.0)
"""The RPN's weights ``(1, 1, 1, 1)`` as variances."""

MIN_BOX_SIZE = 1e-6
"""Widths / heights below this (degenerate or padded boxes) are raised to it before ``log``."""


def variances_from_weights(weights: Sequence[float]) -> tuple[float, float, float, float]:
    """Faster R-CNN style weights ``(wx, wy, ww, wh)`` -> variances ``(1/wx, 1/wy, 1/ww, 1/wh)``."""
    if len(weights) != 4 or any(w <= 0 for w in weights):
        raise ValueError(f"weights must be 4 positive numbers, got {weights}")
    return tuple(1.0 / float(w) for w in weights)


def encode(boxes, anchors, variances: Sequence[float] = SSD_VARIANCES):
    """Encodes ``xyxy`` boxes relative to ``xyxy`` anchors.

    Args:
        boxes: float32 ``[..., 4]`` ``xyxy`` pixels (targets).
        anchors: float32 ``[..., 4]`` ``xyxy`` pixels, broadcastable against ``boxes`` (e.g.
            boxes ``[B, A, 4]`` with anchors ``[A, 4]``).
        variances: ``(v0, v1, v2, v3)``; see the module docstring.

    Returns:
        float32 ``[..., 4]`` deltas ``(tx, ty, tw, th)``. Sizes below ``MIN_BOX_SIZE`` are
        raised to it first, so degenerate and zero padded boxes encode to finite values.
    """
    v = _variances(variances)
    boxes = ops.convert_to_tensor(boxes, "float32")
    anchors = ops.convert_to_tensor(anchors, "float32")
    cx, cy, w, h = _centre_size(boxes)
    cxa, cya, wa, ha = _centre_size(anchors)
    return ops.stack([(cx - cxa) / wa / v[0],
                      (cy - cya) / ha / v[1],
                      ops.log(w / wa) / v[2],
                      ops.log(h / ha) / v[3]], axis=-1)


def decode(deltas, anchors, variances: Sequence[float] = SSD_VARIANCES,
           clamp: float = BBOX_XFORM_CLIP):
    """Decodes deltas back to ``xyxy`` boxes (inverse of :func:`encode`).

    Args:
        deltas: float32 ``[..., 4]`` ``(tx, ty, tw, th)``.
        anchors: float32 ``[..., 4]`` ``xyxy`` pixels, broadcastable against ``deltas``.
        variances: the ones used by :func:`encode`.
        clamp: upper bound of ``tw * v2`` and ``th * v3`` (``log`` of the size ratio) before
            ``exp``; very negative values need no bound (``exp`` goes to 0).

    Returns:
        float32 ``[..., 4]`` ``xyxy`` pixels, not clipped to the image
        (use :func:`kft.ops.boxes.clip_boxes`).
    """
    v = _variances(variances)
    deltas = ops.convert_to_tensor(deltas, "float32")
    anchors = ops.convert_to_tensor(anchors, "float32")
    cxa, cya, wa, ha = _centre_size(anchors)
    cx = deltas[..., 0] * v[0] * wa + cxa
    cy = deltas[..., 1] * v[1] * ha + cya
    w = ops.exp(ops.minimum(deltas[..., 2] * v[2], clamp)) * wa
    h = ops.exp(ops.minimum(deltas[..., 3] * v[3], clamp)) * ha
    return ops.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


def _centre_size(boxes):
    """``xyxy [..., 4]`` -> ``cx, cy, w, h`` each ``[...]``, sizes at least ``MIN_BOX_SIZE``."""
    c = xyxy_to_cxcywh(boxes)
    return (c[..., 0], c[..., 1], ops.maximum(c[..., 2], MIN_BOX_SIZE),
            ops.maximum(c[..., 3], MIN_BOX_SIZE))


def _variances(variances: Sequence[float]) -> tuple[float, float, float, float]:
    if len(variances) != 4 or any(float(v) <= 0 for v in variances):
        raise ValueError(f"variances must be 4 positive numbers, got {variances}")
    return tuple(float(v) for v in variances)
