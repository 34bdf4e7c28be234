"""Region Proposal Network (Ren et al. 2015) as in torchvision's ``fasterrcnn_resnet50_fpn``.

Three parts, all with static shapes:

* :class:`RPNHead`, a layer: a shared 3x3 conv + ReLU, then 1x1 convs for ``A`` objectness
  logits and ``4 A`` box deltas per location, the same weights on every pyramid level;
* :func:`generate_proposals`: decode, clip, per-level top-k, per-level NMS, the best
  ``post_nms_top_n`` overall, padded (torchvision's ``RegionProposalNetwork.filter_proposals``);
* :func:`rpn_targets` / :func:`rpn_loss`: anchor matching (IoU >= 0.7 object, < 0.3
  background, in between ignored, each ground truth also claims its best anchors), 256 anchors
  sampled per image with at most half positives, objectness BCE and smooth-L1 box loss.

Anchor order. The head flattens every level ``[B, H, W, A]`` / ``[B, H, W, 4 A]`` row-major to
``[B, H * W * A]`` / ``[B, H * W * A, 4]`` and concatenates the levels finest first: level,
then ``y``, then ``x``, then the ``A`` anchors of one location. That is the order of
:func:`kft.ops.anchors.grid_anchors` (level, row-major location, then size, then ratio) and of
torchvision's ``concat_box_prediction_layers`` / ``AnchorGenerator``, so ``anchors[i]`` belongs
to ``objectness[:, i]`` as long as the anchors are made for the same feature sizes (``ceil(image
/ stride)``, what ``padding="same"`` backbones give). Differences from torchvision's anchors to
keep in mind when loading its weights (the head's channel ``a`` must mean the same anchor):

* ratios: kft's are width / height, torchvision's height / width, so torchvision's
  ``(0.5, 1.0, 2.0)`` is kft's :data:`TORCHVISION_ASPECT_RATIOS` ``(2.0, 1.0, 0.5)``;
* with several sizes per level (the MobileNetV3 FPN model: 5 sizes x 3 ratios per level)
  torchvision orders ratio-major (all sizes of the first ratio first), kft size-major;
* torchvision centres anchors at ``offset=0`` (cell corners) and rounds the base anchors to
  whole pixels; ``grid_anchors(..., offset=0.0)`` gives the centres, not the rounding.

Box coding: ``kft.ops.box_coder`` with weights ``(1, 1, 1, 1)`` (``RPN_VARIANCES``); ``decode``
clamps ``dw, dh`` at ``log(1000 / 16)`` as torchvision does.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from kft.ops import box_coder, matcher
from kft.ops.boxes import pairwise_ioa, pairwise_iou
from kft.ops.nms import batched_nms
from kft.ops.sampler import balanced_sample

FPN_ANCHOR_SIZES = (32, 64, 128, 256, 512)
"""fasterrcnn_resnet50_fpn: one anchor size per level P2..P6."""
FPN_STRIDES = (4, 8, 16, 32, 64)
"""Strides of P2..P6."""
TORCHVISION_ASPECT_RATIOS = (2.0, 1.0, 0.5)
"""torchvision's ``(0.5, 1.0, 2.0)`` (height / width) as kft width / height, same order."""

PRE_NMS_TOP_N = {"training": 2000, "testing": 1000}
"""Proposals kept per level before NMS (torchvision's fasterrcnn_resnet50_fpn)."""
POST_NMS_TOP_N = {"training": 2000, "testing": 1000}
"""Proposals kept per image after NMS."""
NMS_THRESHOLD = 0.7
MIN_SIZE = 1e-3
SMOOTH_L1_BETA = 1.0 / 9.0


@keras.saving.register_keras_serializable(package="kft")
class RPNHead(layers.Layer):
    """Objectness logits and box deltas for every anchor of every level.

    Args:
        num_anchors: ``A``, anchors per location (3 for fasterrcnn_resnet50_fpn, 15 for the
            MobileNetV3 FPN model).
        conv_depth: number of shared 3x3 conv + ReLU layers (torchvision's default 1).
        channels: width of the shared convs; ``None`` keeps the input width (torchvision).

    Call:
        ``features``: a dict (values in order) or list of levels ``[B, H_l, W_l, C]``, all with
        the same ``C``. Returns ``(objectness float32 [B, N], deltas float32 [B, N, 4])`` with
        ``N = sum(H_l * W_l * A)`` in the module's anchor order.

    Initialisation as torchvision: kernels normal with std 0.01, biases 0.
    """

    def __init__(self, num_anchors: int = 3, conv_depth: int = 1, channels: int | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        if int(num_anchors) < 1 or int(conv_depth) < 0:
            raise ValueError(f"need num_anchors >= 1 and conv_depth >= 0, got {num_anchors}, "
                             f"{conv_depth}")
        self.num_anchors = int(num_anchors)
        self.conv_depth = int(conv_depth)
        self.channels = None if channels is None else int(channels)
        self.convs: list = []
        self.cls_logits = None
        self.bbox_pred = None

    def build(self, input_shape):
        shapes = list(input_shape.values()) if isinstance(input_shape, dict) else input_shape
        if not shapes or isinstance(shapes[0], int) or shapes[0] is None:
            shapes = [input_shape]
        depths = {tuple(s)[-1] for s in shapes}
        if len(depths) != 1:
            raise ValueError(f"RPNHead needs levels of one width, got widths {sorted(depths)}")
        width = depths.pop()
        shape = tuple(shapes[0])
        init = keras.initializers.RandomNormal(stddev=0.01)
        hidden = self.channels or width
        self.convs = []
        for i in range(self.conv_depth):
            conv = layers.Conv2D(hidden, 3, padding="same", activation="relu",
                                 kernel_initializer=init, bias_initializer="zeros",
                                 name=f"conv_{i}")
            conv.build(shape)
            shape = shape[:-1] + (hidden,)
            self.convs.append(conv)
        self.cls_logits = layers.Conv2D(self.num_anchors, 1, kernel_initializer=init,
                                        bias_initializer="zeros", name="cls_logits")
        self.bbox_pred = layers.Conv2D(4 * self.num_anchors, 1, kernel_initializer=init,
                                       bias_initializer="zeros", name="bbox_pred")
        self.cls_logits.build(shape)
        self.bbox_pred.build(shape)
        super().build(input_shape)

    def call(self, features):
        levels = _levels(features)
        logits, deltas = [], []
        for x in levels:
            for conv in self.convs:
                x = conv(x)
            per_location = _flat_size(x)
            n = -1 if per_location is None else per_location * self.num_anchors
            logits.append(ops.reshape(self.cls_logits(x), (-1, n)))
            deltas.append(ops.reshape(self.bbox_pred(x), (-1, n, 4)))
        return (ops.cast(ops.concatenate(logits, axis=1), "float32"),
                ops.cast(ops.concatenate(deltas, axis=1), "float32"))

    def num_anchors_per_level(self, features) -> list[int]:
        """``H_l * W_l * A`` of each level (static ints) for the given features or shapes."""
        levels = _levels(features)
        return [int(_shape(x)[1] * _shape(x)[2] * self.num_anchors) for x in levels]

    def get_config(self):
        config = super().get_config()
        config.update(num_anchors=self.num_anchors, conv_depth=self.conv_depth,
                      channels=self.channels)
        return config


def generate_proposals(objectness, deltas, anchors, num_anchors_per_level, image_size, *,
                       pre_nms_top_n: int = PRE_NMS_TOP_N["testing"],
                       post_nms_top_n: int = POST_NMS_TOP_N["testing"],
                       nms_threshold: float = NMS_THRESHOLD, min_size: float = MIN_SIZE,
                       score_threshold: float = 0.0) -> dict:
    """Region proposals from RPN outputs, padded to ``post_nms_top_n`` per image.

    torchvision's ``filter_proposals`` with static shapes: per level the ``pre_nms_top_n``
    anchors with the highest logits; decode their deltas; clip to the image; drop boxes with a
    side below ``min_size`` and boxes whose probability ``sigmoid(logit)`` is below
    ``score_threshold``; NMS within each level (boxes of different levels never suppress each
    other, torchvision's ``batched_nms`` by level); the ``post_nms_top_n`` best survivors of all
    levels by probability. No gradient flows into the proposals (torchvision detaches them).
    Use the ``PRE_NMS_TOP_N`` / ``POST_NMS_TOP_N`` ``"training"`` values while training.

    NMS runs through :func:`kft.ops.nms.batched_nms` with one score column per level (a box's
    probability in its level's column, -1 elsewhere), so its class-offset path is exactly the
    per-level NMS; a box suppresses same-level boxes with IoU above ``nms_threshold``.

    Args:
        objectness: float ``[B, N]`` logits from :class:`RPNHead`.
        deltas: float ``[B, N, 4]`` box deltas.
        anchors: float32 ``[N, 4]`` ``xyxy`` pixels in the head's order.
        num_anchors_per_level: ``L`` static ints summing to ``N``.
        image_size: ``(height, width)`` ints shared by the batch, or int ``[B, 2]``
            per-image ``(height, width)`` (the unpadded image inside a padded batch).
        pre_nms_top_n: proposals kept per level before NMS (a level with fewer anchors keeps
            them all).
        post_nms_top_n: ``P``, proposals kept per image.
        nms_threshold: IoU above which a lower-scoring same-level box is suppressed.
        min_size: smallest width and height (pixels) kept.
        score_threshold: smallest probability kept.

    Returns:
        ``{"boxes": float32 [B, P, 4] xyxy pixels, "scores": float32 [B, P] probabilities,
        "levels": int32 [B, P] level index, "valid": bool [B, P], "num_proposals": int32
        [B]}``, sorted by decreasing score; padding rows have boxes 0, scores 0, levels -1.
    """
    sizes = [int(n) for n in num_anchors_per_level]
    objectness = ops.stop_gradient(ops.cast(objectness, "float32"))
    deltas = ops.stop_gradient(ops.cast(deltas, "float32"))
    anchors = ops.convert_to_tensor(anchors, "float32")
    if objectness.shape[1] != sum(sizes) or anchors.shape[0] != sum(sizes):
        raise ValueError(f"num_anchors_per_level sums to {sum(sizes)} but objectness has "
                         f"{objectness.shape[1]} and anchors {anchors.shape[0]} entries")
    if pre_nms_top_n < 1 or post_nms_top_n < 1:
        raise ValueError(f"pre_nms_top_n and post_nms_top_n must be >= 1, got "
                         f"{pre_nms_top_n}, {post_nms_top_n}")

    logits, picked_deltas, picked_anchors, level_ids = [], [], [], []
    start = 0
    for level, n in enumerate(sizes):
        k = min(int(pre_nms_top_n), n)
        top, index = ops.top_k(objectness[:, start:start + n], k)          # [B, k]
        logits.append(top)
        picked_deltas.append(ops.take_along_axis(deltas[:, start:start + n], index[:, :, None],
                                                 axis=1))
        picked_anchors.append(ops.take(anchors[start:start + n], index, axis=0))
        level_ids.append(np.full(k, level, "int32"))
        start += n
    logits = ops.concatenate(logits, axis=1)                                 # [B, K]
    boxes = box_coder.decode(ops.concatenate(picked_deltas, axis=1),
                             ops.concatenate(picked_anchors, axis=1), box_coder.RPN_VARIANCES)
    boxes = _clip(boxes, image_size)
    scores = ops.sigmoid(logits)
    keep = ops.logical_and(ops.logical_and(boxes[..., 2] - boxes[..., 0] >= min_size,
                                           boxes[..., 3] - boxes[..., 1] >= min_size),
                           scores >= score_threshold)
    level_ids = np.concatenate(level_ids)
    one_hot = (level_ids[:, None] == np.arange(len(sizes))[None, :])        # [K, L]
    per_level = ops.where(ops.logical_and(keep[:, :, None], one_hot[None]),
                          scores[:, :, None], -1.0)                          # [B, K, L]
    out = batched_nms(boxes, per_level, iou_threshold=nms_threshold, score_threshold=-0.5,
                      max_per_class=post_nms_top_n, max_detections=post_nms_top_n)
    valid = out["labels"] >= 0
    return {"boxes": out["boxes"], "scores": out["scores"], "levels": out["labels"],
            "valid": valid, "num_proposals": out["num_detections"]}


def rpn_targets(anchors, gt_boxes, gt_labels, *, gt_crowd=None,
                fg_iou_threshold: float = 0.7, bg_iou_threshold: float = 0.3,
                allow_low_quality: bool = True):
    """Objectness labels and box-regression targets of every anchor (torchvision's matcher).

    Matching as torchvision's ``Matcher(0.7, 0.3, allow_low_quality_matches=True)``:

    1. an anchor whose best IoU with a real ground-truth box is ``>= fg_iou_threshold`` is an
       object matched to that box (ties: the lower box index); below ``bg_iou_threshold`` it is
       background; in between it is ignored;
    2. with ``allow_low_quality``, for every real box *every* anchor whose IoU with it equals
       that box's best IoU over all anchors becomes an object too, matched to its own best
       box. Ties matter: a box smaller than the anchors has the same IoU with every anchor
       of one shape that contains it, and all of them become objects (torchvision and
       detectron2 do this on purpose; :func:`kft.ops.matcher.match` gives each box one
       anchor, so it is not used here). Unlike torchvision, a box that overlaps no anchor at
       all claims none (torchvision would claim every anchor at IoU 0);
    3. padded rows (label < 0) never match; crowd rows (``gt_crowd``) never match, and an
       anchor that is not an object and lies mostly inside one (intersection over the
       anchor's area ``>= fg_iou_threshold``, the rule of :func:`kft.ops.matcher.match`) is
       ignored. An image without real ground truth has only background anchors.

    Args:
        anchors: float32 ``[N, 4]`` ``xyxy`` pixels.
        gt_boxes: float32 ``[B, M, 4]`` ``xyxy`` pixels, padded.
        gt_labels: int ``[B, M]`` class ids, -1 for padding (only ``>= 0`` matters here).
        gt_crowd: optional bool ``[B, M]``.
        fg_iou_threshold, bg_iou_threshold: the two IoU thresholds (0.7, 0.3).
        allow_low_quality: apply rule 2.

    Returns:
        ``(labels int32 [B, N], box_targets float32 [B, N, 4])``: labels 1 object, 0
        background, -1 ignored; box targets are the encoded matched boxes (weights 1, 1, 1, 1)
        for objects and 0 elsewhere.
    """
    if not 0.0 <= bg_iou_threshold <= fg_iou_threshold <= 1.0:
        raise ValueError(f"need 0 <= bg_iou_threshold <= fg_iou_threshold <= 1, got "
                         f"{bg_iou_threshold}, {fg_iou_threshold}")
    anchors = ops.convert_to_tensor(anchors, "float32")
    gt_boxes = ops.convert_to_tensor(gt_boxes, "float32")
    gt_labels = ops.convert_to_tensor(gt_labels, "int32")
    if gt_boxes.shape[1] == 0:
        shape = ops.shape(gt_labels)[:1] + (anchors.shape[0],)
        return ops.zeros(shape, "int32"), ops.zeros(shape + (4,), "float32")
    real = gt_labels >= 0                                                # [B, M]
    crowd = None
    if gt_crowd is not None:
        crowd = ops.logical_and(ops.convert_to_tensor(gt_crowd, "bool"), real)
        real = ops.logical_and(real, ops.logical_not(crowd))
    iou = ops.where(real[:, None, :], pairwise_iou(anchors, gt_boxes), -1.0)   # [B, N, M]
    best = ops.max(iou, axis=2)
    best_gt = ops.cast(ops.argmax(iou, axis=2), "int32")                 # [B, N]
    matched = ops.where(best >= fg_iou_threshold, best_gt,
                        ops.where(best >= bg_iou_threshold, matcher.IGNORE,
                                  matcher.BACKGROUND))
    if allow_low_quality:
        gt_best = ops.max(iou, axis=1)                                   # [B, M]
        claims = ops.logical_and(gt_best > 0.0, real)
        tied = ops.logical_and(iou == gt_best[:, None, :], claims[:, None, :])
        matched = ops.where(ops.any(tied, axis=2), best_gt, matched)
    if crowd is not None:
        ioa = ops.where(crowd[:, None, :], pairwise_ioa(anchors, gt_boxes), 0.0)
        on_crowd = ops.max(ioa, axis=2) >= fg_iou_threshold
        matched = ops.where(ops.logical_and(on_crowd, matched < 0), matcher.IGNORE, matched)
    cls, box_targets, _ = matcher.targets(gt_boxes, gt_labels, anchors, matched,
                                          box_coder.RPN_VARIANCES)
    return ops.cast(ops.minimum(cls, 1), "int32"), box_targets


def rpn_loss(objectness, deltas, anchors, gt_boxes, gt_labels, *, gt_crowd=None,
             batch_size_per_image: int = 256, positive_fraction: float = 0.5,
             fg_iou_threshold: float = 0.7, bg_iou_threshold: float = 0.3,
             beta: float = SMOOTH_L1_BETA, seed=None) -> dict:
    """The RPN losses of a batch, as torchvision's ``RegionProposalNetwork.compute_loss``.

    Targets from :func:`rpn_targets`; per image ``batch_size_per_image`` anchors sampled with
    :func:`kft.ops.sampler.balanced_sample` (at most ``positive_fraction`` objects). With
    ``S`` the number of anchors sampled in the whole batch (``max(S, 1)``):

    * ``rpn_objectness``: binary cross-entropy of the logits, summed over sampled anchors / S;
    * ``rpn_box``: smooth L1 (``beta``, 1/9) of the deltas, summed over the sampled objects'
      4 coordinates / S.

    Args:
        objectness: float ``[B, N]`` logits; deltas: float ``[B, N, 4]`` (from the head).
        anchors: float32 ``[N, 4]``; gt_boxes / gt_labels / gt_crowd: as :func:`rpn_targets`.
        seed: for the sampler; pass a ``keras.random.SeedGenerator`` while training.

    Returns:
        ``{"rpn_objectness": float32 scalar, "rpn_box": float32 scalar}``.
    """
    labels, box_targets = rpn_targets(anchors, gt_boxes, gt_labels, gt_crowd=gt_crowd,
                                      fg_iou_threshold=fg_iou_threshold,
                                      bg_iou_threshold=bg_iou_threshold)
    sample = balanced_sample(labels, batch_size_per_image, positive_fraction, seed=seed)
    index, valid, positive = sample["indices"], sample["valid"], sample["positive"]
    logits = ops.take_along_axis(ops.cast(objectness, "float32"), index, axis=1)   # [B, S]
    pred = ops.take_along_axis(ops.cast(deltas, "float32"), index[:, :, None], axis=1)
    target = ops.take_along_axis(box_targets, index[:, :, None], axis=1)          # [B, S, 4]
    weight = ops.cast(valid, "float32")
    count = ops.maximum(ops.sum(weight), 1.0)
    z = ops.cast(positive, "float32")
    bce = ops.maximum(logits, 0.0) - logits * z + ops.log1p(ops.exp(-ops.abs(logits)))
    diff = ops.abs(pred - target)
    smooth = ops.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)
    box = ops.sum(ops.sum(smooth, axis=-1) * z)
    return {"rpn_objectness": ops.sum(bce * weight) / count, "rpn_box": box / count}


def _clip(boxes, image_size):
    """Clips ``[B, K, 4]`` boxes to ``(height, width)`` or to per-image ``[B, 2]`` sizes."""
    if isinstance(image_size, (tuple, list)) and len(image_size) == 2 and all(
            isinstance(s, (int, float, np.integer, np.floating)) for s in image_size):
        height = ops.full((1, 1), float(image_size[0]))
        width = ops.full((1, 1), float(image_size[1]))
    else:
        size = ops.cast(ops.convert_to_tensor(image_size), "float32")
        height, width = size[:, 0:1], size[:, 1:2]                          # [B, 1]
    limits = ops.stack([width, height, width, height], axis=-1)            # [B or 1, 1, 4]
    return ops.minimum(ops.maximum(boxes, 0.0), limits)


def _levels(features) -> list:
    if isinstance(features, dict):
        return list(features.values())
    if isinstance(features, (list, tuple)) and features and not isinstance(features[0], int):
        return list(features)
    return [features]


def _shape(x):
    return tuple(x.shape) if hasattr(x, "shape") else tuple(x)


def _flat_size(x):
    h, w = x.shape[1], x.shape[2]
    return None if h is None or w is None else int(h) * int(w)
