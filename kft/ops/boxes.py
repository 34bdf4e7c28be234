"""Box utilities. Pure tensor functions on ``keras.ops`` (any backend, usable in tf.data).

Conventions (shared/DESIGN.md): boxes are float32 ``xyxy`` in absolute pixels of their image,
half-open (a box ``[x1, y1, x2, y2]`` covers ``x1 <= x < x2``), so width is ``x2 - x1``. Padded
rows of a fixed-size box tensor carry label -1 and any coordinates.
"""

from __future__ import annotations

from keras import ops


def xywh_to_xyxy(boxes):
    """COCO ``[x, y, w, h]`` ``[..., 4]`` -> ``[x1, y1, x2, y2]`` ``[..., 4]``."""
    x, y, w, h = ops.split(boxes, 4, axis=-1)
    return ops.concatenate([x, y, x + w, y + h], axis=-1)


def xyxy_to_xywh(boxes):
    """``[x1, y1, x2, y2]`` ``[..., 4]`` -> COCO ``[x, y, w, h]`` ``[..., 4]``."""
    x1, y1, x2, y2 = ops.split(boxes, 4, axis=-1)
    return ops.concatenate([x1, y1, x2 - x1, y2 - y1], axis=-1)


def xyxy_to_cxcywh(boxes):
    """``[x1, y1, x2, y2]`` -> centre form ``[cx, cy, w, h]``; shapes ``[..., 4]``."""
    x1, y1, x2, y2 = ops.split(boxes, 4, axis=-1)
    return ops.concatenate([(x1 + x2) * 0.5, (y1 + y2) * 0.5, x2 - x1, y2 - y1], axis=-1)


def cxcywh_to_xyxy(boxes):
    """Centre form ``[cx, cy, w, h]`` -> ``[x1, y1, x2, y2]``; shapes ``[..., 4]``."""
    cx, cy, w, h = ops.split(boxes, 4, axis=-1)
    return ops.concatenate([cx - w * 0.5, cy - h * 0.5, cx + w * 0.5, cy + h * 0.5], axis=-1)


def box_area(boxes):
    """Areas ``[...]`` of ``xyxy`` boxes ``[..., 4]``; degenerate boxes have area 0."""
    w = ops.maximum(boxes[..., 2] - boxes[..., 0], 0.0)
    h = ops.maximum(boxes[..., 3] - boxes[..., 1], 0.0)
    return w * h


def pairwise_intersection(a, b):
    """Intersection areas of every box in ``a`` ``[..., N, 4]`` with every box in ``b``
    ``[..., M, 4]`` -> ``[..., N, M]``."""
    a = ops.convert_to_tensor(a, "float32")
    b = ops.convert_to_tensor(b, "float32")
    lt = ops.maximum(a[..., :, None, :2], b[..., None, :, :2])
    rb = ops.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    wh = ops.maximum(rb - lt, 0.0)
    return wh[..., 0] * wh[..., 1]


def pairwise_ioa(a, b):
    """Intersection over the area of ``a``: ``[..., N, 4]`` x ``[..., M, 4]`` -> ``[..., N, M]``
    (how much of each ``a`` box lies inside each ``b`` box; pycocotools' crowd rule). Empty
    ``a`` boxes get 0."""
    area = box_area(ops.convert_to_tensor(a, "float32"))[..., :, None]
    return ops.where(area > 0, pairwise_intersection(a, b) / ops.maximum(area, 1e-12), 0.0)


def pairwise_iou(a, b):
    """IoU of every box in ``a`` ``[N, 4]`` with every box in ``b`` ``[M, 4]`` -> ``[N, M]``.

    Works batched too: ``[B, N, 4]`` x ``[B, M, 4]`` -> ``[B, N, M]``. Pairs whose union is
    empty get IoU 0.
    """
    a = ops.convert_to_tensor(a, "float32")
    b = ops.convert_to_tensor(b, "float32")
    inter = pairwise_intersection(a, b)
    union = box_area(a)[..., :, None] + box_area(b)[..., None, :] - inter
    return ops.where(union > 0, inter / ops.maximum(union, 1e-12), 0.0)


def clip_boxes(boxes, height, width):
    """Clips ``xyxy`` boxes ``[..., 4]`` to the image ``[0, width] x [0, height]``."""
    x1, y1, x2, y2 = ops.split(boxes, 4, axis=-1)
    w = ops.cast(width, boxes.dtype)
    h = ops.cast(height, boxes.dtype)
    return ops.concatenate([ops.clip(x1, 0.0, w), ops.clip(y1, 0.0, h),
                            ops.clip(x2, 0.0, w), ops.clip(y2, 0.0, h)], axis=-1)


def valid_boxes(boxes, min_size: float = 0.0):
    """Boolean ``[...]``: width and height both greater than ``min_size``."""
    return ops.logical_and(boxes[..., 2] - boxes[..., 0] > min_size,
                           boxes[..., 3] - boxes[..., 1] > min_size)
