"""Faster R-CNN's second stage (RoI heads) as in torchvision's ``fasterrcnn_resnet50_fpn`` (v1, v2).

Parts, all with static shapes (they run under ``tf.function`` / XLA with an unknown batch):

* layers: :class:`TwoMLPHead` (v1: flatten, fc6 + ReLU, fc7 + ReLU), :class:`ConvFCHead`
  (v2: 3x3 conv + BN + ReLU blocks, flatten, FC + ReLU) and :class:`BoxPredictor` (class logits
  and class-specific box deltas);
* :func:`roi_targets`: torchvision's ``RoIHeads.select_training_samples``: the ground truth is
  added to the proposals, every candidate is matched (IoU >= 0.5 object, below background,
  no low-quality matches) and a fixed number per image is sampled, at most 25 % objects;
* :func:`box_head_loss`: torchvision's ``fastrcnn_loss`` (cross-entropy, class-specific
  smooth L1 with beta 1/9 over the sampled count), plus loss weights, OHEM, focal and GIoU;
* :class:`BoxDecoder`: torchvision's ``postprocess_detections`` (softmax, class-specific
  decode, clip, score and size filters, per-class NMS, top ``max_detections``, padded).

Labels. kft's labels are 0-based foreground classes (shared/DESIGN.md); inside this stage class
``k`` is logit / label ``k + 1`` and index 0 is background, torchvision's layout, so its
predictor weights load unchanged. :func:`roi_targets` returns labels in that ``0 = background``
form; :class:`BoxDecoder` returns 0-based kft labels again.

Flatten order. torchvision flattens the ``[C, 7, 7]`` RoI features channel-major before the
first FC layer, kft flattens its channels-last ``[7, 7, C]`` features as they lie (no transpose
at run time). :func:`map_box_head` permutes the rows of the first FC kernel from torchvision's
``(c, y, x)`` order to kft's ``(y, x, c)``, so converted weights give torchvision's numbers.

Box coding: :mod:`kft.ops.box_coder` with weights ``(10, 10, 5, 5)`` (:data:`BOX_WEIGHTS`);
decoding clamps ``dw, dh`` at ``log(1000 / 16)`` as torchvision does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
import numpy as np
from keras import layers, ops

from kft.losses import giou_loss, ohem_mask, smooth_l1, softmax_focal_loss
from kft.ops import box_coder, matcher
from kft.ops.boxes import pairwise_ioa, pairwise_iou
from kft.ops.nms import batched_nms
from kft.ops.sampler import balanced_sample

BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
"""torchvision's ``bbox_reg_weights`` of the box head (variances 0.1, 0.1, 0.2, 0.2)."""
SMOOTH_L1_BETA = 1.0 / 9.0
CLS_LOSSES = ("ce", "focal")
BOX_LOSSES = ("smooth_l1", "giou")
BN_EPSILON = 1e-5
"""torch ``BatchNorm2d``'s epsilon (Keras' default is 1e-3)."""


def _torch_linear(units, fan_in, activation=None, name=None):
    """``Dense`` initialised like torch's ``nn.Linear``: kernel and bias ``U(-b, b)``,
    ``b = 1 / sqrt(fan_in)`` (kaiming-uniform with ``a = sqrt(5)``)."""
    bound = 1.0 / math.sqrt(max(int(fan_in), 1))
    return layers.Dense(units, activation=activation, name=name,
                        kernel_initializer=keras.initializers.RandomUniform(-bound, bound),
                        bias_initializer=keras.initializers.RandomUniform(-bound, bound))


def _roi_shape(input_shape):
    """``[..., H, W, C]`` (rank 4 ``[N, H, W, C]`` or rank 5 ``[B, R, H, W, C]``) -> static
    ``(H, W, C)`` and the rank."""
    shape = tuple(input_shape)
    if len(shape) not in (4, 5) or any(d is None for d in shape[-3:]):
        raise ValueError(f"RoI features must be [N, H, W, C] or [B, R, H, W, C] with static "
                         f"H, W, C, got {shape}")
    return tuple(int(d) for d in shape[-3:]), len(shape)


def _flatten_rois(x, rank):
    """``[N, H, W, C]`` -> ``[N, H * W * C]``; ``[B, R, H, W, C]`` -> ``[B, R, H * W * C]``
    (channels-last order; ``R`` must be static)."""
    size = int(np.prod(x.shape[-3:]))
    if rank == 4:
        return ops.reshape(x, (-1, size))
    return ops.reshape(x, (-1, x.shape[1], size))


@keras.saving.register_keras_serializable(package="kft")
class TwoMLPHead(layers.Layer):
    """torchvision's ``TwoMLPHead``: flatten, ``fc6`` + ReLU, ``fc7`` + ReLU.

    Args:
        representation_size: width of both FC layers (torchvision 1024; the guide's 512 for
            small objects).

    Call: RoI features ``[N, H, W, C]`` or ``[B, R, H, W, C]`` (static ``R, H, W, C``) ->
    ``[N, representation_size]`` or ``[B, R, representation_size]``.

    Initialisation as torch's ``nn.Linear``. The flatten is channels-last (module docstring).
    """

    def __init__(self, representation_size: int = 1024, **kwargs):
        super().__init__(**kwargs)
        if int(representation_size) < 1:
            raise ValueError(f"representation_size must be >= 1, got {representation_size}")
        self.representation_size = int(representation_size)
        self.fc6 = None
        self.fc7 = None
        self.roi_shape = None

    def build(self, input_shape):
        self.roi_shape, rank = _roi_shape(input_shape)
        fan_in = int(np.prod(self.roi_shape))
        size = self.representation_size
        self.fc6 = _torch_linear(size, fan_in, "relu", name="fc6")
        self.fc7 = _torch_linear(size, size, "relu", name="fc7")
        flat = tuple(input_shape)[:rank - 3] + (fan_in,)
        self.fc6.build(flat)
        self.fc7.build(flat[:-1] + (size,))
        super().build(input_shape)

    def call(self, x):
        return self.fc7(self.fc6(_flatten_rois(x, len(x.shape))))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)[:-3] + (self.representation_size,)

    def get_config(self):
        config = super().get_config()
        config.update(representation_size=self.representation_size)
        return config


@keras.saving.register_keras_serializable(package="kft")
class ConvFCHead(layers.Layer):
    """torchvision's ``FastRCNNConvFCHead`` (the v2 model's box head).

    Per entry of ``conv_dims`` a 3x3 conv (``padding="same"``; no bias when normalised) +
    BatchNorm (epsilon 1e-5, torch momentum 0.1) + ReLU, then flatten, then per entry of
    ``fc_dims`` an FC + ReLU.

    Args:
        conv_dims: conv widths (v2: ``(256, 256, 256, 256)``).
        fc_dims: FC widths (v2: ``(1024,)``); the last one is the representation size.
        norm: ``"batch"`` or ``None`` (convs with bias, no normalisation).

    Call: ``[N, H, W, C]`` or ``[B, R, H, W, C]`` -> ``[N, fc_dims[-1]]`` /
    ``[B, R, fc_dims[-1]]``.

    Initialisation as torchvision: conv kernels kaiming-normal (fan-out, ReLU gain), conv
    biases 0, FC layers torch's ``nn.Linear`` default.
    """

    def __init__(self, conv_dims: Sequence[int] = (256,) * 4, fc_dims: Sequence[int] = (1024,),
                 norm: str | None = "batch", **kwargs):
        super().__init__(**kwargs)
        if norm not in ("batch", None):
            raise ValueError(f"norm={norm!r} must be 'batch' or None")
        self.conv_dims = tuple(int(d) for d in conv_dims)
        self.fc_dims = tuple(int(d) for d in fc_dims)
        if not self.fc_dims or min(self.conv_dims + self.fc_dims) < 1:
            raise ValueError(f"need at least one FC layer and positive widths, got conv_dims="
                             f"{self.conv_dims}, fc_dims={self.fc_dims}")
        self.norm = norm
        self.convs: list = []
        self.norms: list = []
        self.fcs: list = []
        self.roi_shape = None

    def build(self, input_shape):
        self.roi_shape, rank = _roi_shape(input_shape)
        h, w, c = self.roi_shape
        init = keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal")
        self.convs, self.norms, self.fcs = [], [], []
        for i, dim in enumerate(self.conv_dims):
            conv = layers.Conv2D(dim, 3, padding="same", use_bias=self.norm is None,
                                 kernel_initializer=init, bias_initializer="zeros",
                                 name=f"conv_{i}")
            conv.build((None, h, w, c))
            self.convs.append(conv)
            if self.norm == "batch":
                bn = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=0.9, name=f"bn_{i}")
                bn.build((None, h, w, dim))
                self.norms.append(bn)
            c = dim
        width = h * w * c
        lead = tuple(input_shape)[:rank - 3]
        for i, dim in enumerate(self.fc_dims):
            fc = _torch_linear(dim, width, "relu", name=f"fc_{i}")
            fc.build(lead + (width,))
            self.fcs.append(fc)
            width = dim
        super().build(input_shape)

    def call(self, x, training=None):
        rank = len(x.shape)
        count = x.shape[1] if rank == 5 else None
        x = ops.reshape(x, (-1, *x.shape[-3:]))
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if self.norms:
                x = self.norms[i](x, training=training)
            x = ops.relu(x)
        x = _flatten_rois(x, 4)
        if rank == 5:
            x = ops.reshape(x, (-1, count, x.shape[-1]))
        for fc in self.fcs:
            x = fc(x)
        return x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)[:-3] + (self.fc_dims[-1],)

    def get_config(self):
        config = super().get_config()
        config.update(conv_dims=list(self.conv_dims), fc_dims=list(self.fc_dims),
                      norm=self.norm)
        return config


@keras.saving.register_keras_serializable(package="kft")
class BoxPredictor(layers.Layer):
    """torchvision's ``FastRCNNPredictor``: class logits and class-specific box deltas.

    Args:
        num_classes: foreground classes; the layer predicts ``num_classes + 1`` logits (index
            0 background, index ``k + 1`` kft class ``k``) and ``4 (num_classes + 1)`` deltas,
            ordered ``(class, coordinate)`` as torchvision (class 0's 4 deltas first).

    Call: ``[..., D]`` -> ``(class_logits float32 [..., num_classes + 1], box_deltas float32
    [..., 4 (num_classes + 1)])``.

    Initialisation: torch's ``nn.Linear`` default (kernel and bias uniform in
    ``+-1 / sqrt(D)``), which torchvision keeps for its predictor.
    """

    def __init__(self, num_classes: int, **kwargs):
        super().__init__(**kwargs)
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.cls_score = None
        self.bbox_pred = None

    def build(self, input_shape):
        shape = tuple(input_shape)
        if shape[-1] is None:
            raise ValueError(f"BoxPredictor needs a static feature width, got {shape}")
        k = self.num_classes + 1
        self.cls_score = _torch_linear(k, shape[-1], name="cls_score")
        self.bbox_pred = _torch_linear(4 * k, shape[-1], name="bbox_pred")
        self.cls_score.build(shape)
        self.bbox_pred.build(shape)
        super().build(input_shape)

    def call(self, x):
        return (ops.cast(self.cls_score(x), "float32"), ops.cast(self.bbox_pred(x), "float32"))

    def compute_output_shape(self, input_shape):
        lead = tuple(input_shape)[:-1]
        k = self.num_classes + 1
        return lead + (k,), lead + (4 * k,)

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes)
        return config


def roi_targets(proposals, proposal_valid, gt_boxes, gt_labels, *, gt_crowd=None,
                batch_size_per_image: int = 512, positive_fraction: float = 0.25,
                fg_iou_threshold: float = 0.5, bg_iou_threshold: float = 0.5,
                weights: Sequence[float] = BOX_WEIGHTS, seed=None) -> dict:
    """Samples the RoIs the box head trains on, with their targets (torchvision's
    ``select_training_samples`` with static shapes).

    1. Candidates: the ``R`` proposals followed by the ``M`` ground-truth rows,
       ``[B, R + M, 4]``. Invalid proposals (``proposal_valid`` False), padded ground truth
       (label < 0) and crowd rows are candidates that are never sampled.
    2. Matching (torchvision's ``Matcher(0.5, 0.5, allow_low_quality_matches=False)``): a
       candidate's best IoU with a real, non-crowd box ``>= fg_iou_threshold`` makes it an
       object of that box's class (ties: the lower box index), below ``bg_iou_threshold``
       background, in between ignored. Crowd rows (``gt_crowd``) never match; a candidate that
       is not an object and lies mostly on one (intersection over its own area ``>=
       fg_iou_threshold``, :func:`kft.models.heads.rpn.rpn_targets`' rule) is ignored. An image
       without real ground truth has only background candidates.
    3. Sampling: :func:`kft.ops.sampler.balanced_sample`, ``S = batch_size_per_image`` per
       image with at most ``int(S * positive_fraction)`` objects, negatives filling the rest.
       When an image has fewer than ``S`` eligible candidates (or too few negatives to fill
       up), the remaining slots are padding: ``valid`` False, label -1, box and targets 0 (a
       zero box pools finite features); losses leave them out.

    Args:
        proposals: float32 ``[B, R, 4]`` ``xyxy`` pixels (no gradient flows into them).
        proposal_valid: bool ``[B, R]`` or ``None`` (all valid).
        gt_boxes: float32 ``[B, M, 4]`` ``xyxy`` pixels, padded.
        gt_labels: int ``[B, M]`` 0-based kft classes, -1 padding.
        gt_crowd: optional bool ``[B, M]``.
        batch_size_per_image, positive_fraction: ``S`` and the largest object share (512,
            0.25).
        fg_iou_threshold, bg_iou_threshold: matching thresholds (0.5, 0.5).
        weights: box-coding weights ``(10, 10, 5, 5)``.
        seed: for the sampler; pass a ``keras.random.SeedGenerator`` while training.

    Returns:
        ``{"rois": float32 [B, S, 4], "labels": int32 [B, S]`` (0 background, ``k + 1`` kft
        class ``k``, -1 padding), ``"targets": float32 [B, S, 4]`` (the matched box encoded
        against the RoI for objects, 0 elsewhere), ``"valid": bool [B, S]``,
        ``"matched_gt_index": int32 [B, S]`` (row of ``gt_boxes`` for objects, -1 elsewhere;
        what a mask head needs) and ``"indices": int32 [B, S]`` (candidate index: ``< R`` a
        proposal, ``R + m`` ground-truth row ``m``)}``. Objects come first in each image.
    """
    if not 0.0 <= bg_iou_threshold <= fg_iou_threshold <= 1.0:
        raise ValueError(f"need 0 <= bg_iou_threshold <= fg_iou_threshold <= 1, got "
                         f"{bg_iou_threshold}, {fg_iou_threshold}")
    proposals = ops.stop_gradient(ops.convert_to_tensor(proposals, "float32"))
    gt_boxes = ops.stop_gradient(ops.convert_to_tensor(gt_boxes, "float32"))
    gt_labels = ops.convert_to_tensor(gt_labels, "int32")
    if proposal_valid is None:
        proposal_valid = ops.ones(ops.shape(proposals)[:2], "bool")
    proposal_valid = ops.cast(proposal_valid, "bool")
    real = gt_labels >= 0                                                   # [B, M]
    crowd = None
    if gt_crowd is not None:
        crowd = ops.logical_and(ops.cast(gt_crowd, "bool"), real)
        real = ops.logical_and(real, ops.logical_not(crowd))
    candidates = ops.concatenate([proposals, gt_boxes], axis=1)              # [B, N, 4]
    eligible = ops.concatenate([proposal_valid, real], axis=1)              # [B, N]
    matched = _match(candidates, gt_boxes, real, crowd, fg_iou_threshold, bg_iou_threshold)
    matched = ops.where(eligible, matched, matcher.IGNORE)
    variances = box_coder.variances_from_weights(weights)
    labels, targets, _ = matcher.targets(gt_boxes, gt_labels, candidates, matched, variances)

    sample = balanced_sample(labels, batch_size_per_image, positive_fraction, seed=seed)
    index, valid = sample["indices"], sample["valid"]
    take = lambda x: ops.take_along_axis(x, index, axis=1)                  # noqa: E731
    take4 = lambda x: ops.take_along_axis(x, index[:, :, None], axis=1)     # noqa: E731
    labels = ops.where(valid, take(labels), -1)
    positive = labels > 0
    return {"rois": ops.where(valid[:, :, None], take4(candidates), 0.0),
            "labels": labels,
            "targets": ops.where(positive[:, :, None], take4(targets), 0.0),
            "valid": valid,
            "matched_gt_index": ops.where(positive, take(matched), -1),
            "indices": index}


def _match(candidates, gt_boxes, real, crowd, fg_iou_threshold, bg_iou_threshold):
    """``[B, N]`` matched ground-truth row, ``matcher.BACKGROUND`` or ``matcher.IGNORE``."""
    if gt_boxes.shape[1] == 0:
        return ops.full(ops.shape(candidates)[:2], matcher.BACKGROUND, "int32")
    iou = ops.where(real[:, None, :], pairwise_iou(candidates, gt_boxes), -1.0)   # [B, N, M]
    best = ops.max(iou, axis=2)
    best_gt = ops.cast(ops.argmax(iou, axis=2), "int32")
    matched = ops.where(best >= fg_iou_threshold, best_gt,
                        ops.where(best >= bg_iou_threshold, matcher.IGNORE,
                                  matcher.BACKGROUND))
    if crowd is not None:
        ioa = ops.where(crowd[:, None, :], pairwise_ioa(candidates, gt_boxes), 0.0)
        on_crowd = ops.max(ioa, axis=2) >= fg_iou_threshold
        matched = ops.where(ops.logical_and(on_crowd, matched < 0), matcher.IGNORE, matched)
    return ops.cast(matched, "int32")


def box_head_loss(class_logits, box_deltas, labels, targets, valid, *, rois=None,
                  beta: float = SMOOTH_L1_BETA, cls_weight: float = 1.0, loc_weight: float = 1.0,
                  ohem_fraction: float | None = None, cls_loss: str = "ce",
                  box_loss: str = "smooth_l1", focal_gamma: float = 2.0,
                  focal_alpha: float | None = None,
                  weights: Sequence[float] = BOX_WEIGHTS) -> dict:
    """The box head's losses, torchvision's ``fastrcnn_loss`` plus the options of T8 / T10.

    With ``n`` the number of valid sampled RoIs in the whole batch (``max(n, 1)``; torchvision's
    ``labels.numel()``):

    * ``cls_loss``: ``"ce"`` softmax cross-entropy (torchvision) or ``"focal"``
      (:func:`kft.losses.softmax_focal_loss` with ``focal_gamma`` / ``focal_alpha``), summed
      over the valid RoIs / n, times ``cls_weight``;
    * ``box_loss``: for objects only, on the deltas of their own class: ``"smooth_l1"``
      (``beta`` 1/9, summed over the 4 coordinates, torchvision) or ``"giou"`` (``1 - GIoU``
      of the decoded box against the decoded target, needs ``rois``), summed / n, times
      ``loc_weight``;
    * ``ohem_fraction`` (e.g. 0.3): online hard example mining (Shrivastava et al. 2016): per
      image only the hardest ``round(fraction * valid)`` RoIs by weighted total loss (class +
      box, no gradient through the choice) count, and ``n`` is the number kept.

    Args:
        class_logits: float ``[B, S, C + 1]``.
        box_deltas: float ``[B, S, 4 (C + 1)]`` class-specific deltas.
        labels: int ``[B, S]`` from :func:`roi_targets` (0 background, ``k + 1`` objects, -1
            padding); targets: float32 ``[B, S, 4]``; valid: bool ``[B, S]``.
        rois: float32 ``[B, S, 4]`` the sampled RoIs (only for ``box_loss="giou"``).
        weights: box-coding weights used for the targets (for ``"giou"`` decoding).

    Returns:
        ``{"cls_loss": float32 scalar, "box_loss": float32 scalar, "loss": their sum}`` (the
        weights already applied).
    """
    if cls_loss not in CLS_LOSSES or box_loss not in BOX_LOSSES:
        raise ValueError(f"cls_loss={cls_loss!r} must be one of {CLS_LOSSES} and "
                         f"box_loss={box_loss!r} one of {BOX_LOSSES}")
    if ohem_fraction is not None and not 0.0 < ohem_fraction <= 1.0:
        raise ValueError(f"ohem_fraction must be in (0, 1], got {ohem_fraction}")
    if box_loss == "giou" and rois is None:
        raise ValueError("box_loss='giou' decodes the deltas: pass rois=")
    logits = ops.cast(class_logits, "float32")
    num_logits = logits.shape[-1]
    deltas = ops.reshape(ops.cast(box_deltas, "float32"), (-1, logits.shape[1], num_logits, 4))
    valid = ops.logical_and(ops.cast(valid, "bool"), ops.convert_to_tensor(labels) >= 0)
    labels = ops.where(valid, ops.cast(labels, "int32"), 0)
    positive = ops.logical_and(valid, labels > 0)

    if cls_loss == "ce":
        per_roi_cls = -ops.take_along_axis(ops.log_softmax(logits, axis=-1), labels[:, :, None],
                                           axis=2)[:, :, 0]
    else:
        per_roi_cls = softmax_focal_loss(logits, labels, alpha=focal_alpha, gamma=focal_gamma)
    pred = ops.take_along_axis(deltas, labels[:, :, None, None], axis=2)[:, :, 0]   # [B, S, 4]
    targets = ops.cast(targets, "float32")
    if box_loss == "smooth_l1":
        per_roi_box = smooth_l1(pred, targets, beta=beta, axis=-1)
    else:
        variances = box_coder.variances_from_weights(weights)
        rois = ops.stop_gradient(ops.cast(rois, "float32"))
        per_roi_box = giou_loss(box_coder.decode(pred, rois, variances),
                                box_coder.decode(targets, rois, variances, clamp=math.inf))
    per_roi_cls = cls_weight * ops.where(valid, per_roi_cls, 0.0)
    per_roi_box = loc_weight * ops.where(positive, per_roi_box, 0.0)

    keep = valid
    if ohem_fraction is not None:
        keep = ohem_mask(per_roi_cls + per_roi_box, ohem_fraction, valid)
    weight = ops.cast(keep, "float32")
    count = ops.maximum(ops.sum(weight), 1.0)
    cls = ops.sum(per_roi_cls * weight) / count
    box = ops.sum(per_roi_box * weight) / count
    return {"cls_loss": cls, "box_loss": box, "loss": cls + box}


@keras.saving.register_keras_serializable(package="kft")
class BoxDecoder(layers.Layer):
    """Detections from the box head (torchvision's ``postprocess_detections``), padded.

    Per image: softmax over the ``C + 1`` logits; each proposal's class-specific deltas are
    decoded (weights ``(10, 10, 5, 5)``, ``dw, dh`` clamped at ``log(1000 / 16)``) and clipped
    to the image; the background column is dropped; a (proposal, class) pair is a candidate
    when its probability is ``> score_threshold``, both sides of its box are ``>= min_size``
    and the proposal is valid; per-class NMS (``nms_threshold``) through
    :func:`kft.ops.nms.batched_nms` on the class-specific boxes; the ``max_detections`` best.
    Invalid proposals never produce detections.

    The layer computes in float32 even under a mixed-precision policy (float16 would round
    pixel coordinates). Builtin TFLite ops only (softmax, exp, gather, NMS as in :mod:`kft.ops.nms`). With
    ``max_per_class=None`` (``= max_detections``, torchvision: no per-class cap) ``batched_nms``
    runs its exact class-offset path; a smaller ``max_per_class`` caps each class and runs one
    NMS per class.

    Args:
        num_classes: foreground classes ``C``; the inputs carry ``C + 1`` logits.
        image_size: static ``(height, width)`` to clip to (or pass ``image_size`` per call).
        weights: box-coding weights.
        score_threshold: 0.05; nms_threshold: 0.5; max_detections: ``D``, 100;
        min_size: 1e-2 pixels.

    Call: ``(class_logits [B, R, C + 1], box_deltas [B, R, 4 (C + 1)], proposals float32
    [B, R, 4], proposal_valid bool [B, R] or None, image_size=None)`` (``image_size`` a
    ``(height, width)`` pair or int ``[B, 2]``, overriding the layer's) ->
    ``{"boxes": float32 [B, D, 4] xyxy pixels, "scores": float32 [B, D], "labels": int32
    [B, D] 0-based kft classes, -1 padding, "num_detections": int32 [B]}``, sorted by
    decreasing score, padding rows 0.
    """

    def __init__(self, num_classes: int, image_size: Sequence[int] | None = None, *,
                 weights: Sequence[float] = BOX_WEIGHTS, score_threshold: float = 0.05,
                 nms_threshold: float = 0.5, max_detections: int = 100,
                 min_size: float = 1e-2, max_per_class: int | None = None, **kwargs):
        kwargs.setdefault("dtype", "float32")     # pixel boxes stay float32 under mixed precision
        super().__init__(**kwargs)
        if int(num_classes) < 1 or int(max_detections) < 1:
            raise ValueError(f"need num_classes >= 1 and max_detections >= 1, got "
                             f"{num_classes}, {max_detections}")
        if not 0.0 <= float(score_threshold) < 1.0:
            raise ValueError(f"score_threshold must be in [0, 1), got {score_threshold}")
        self.num_classes = int(num_classes)
        self.image_size = None if image_size is None else tuple(int(s) for s in image_size)
        self.box_weights = tuple(float(w) for w in weights)     # Layer.weights is taken
        box_coder.variances_from_weights(self.box_weights)
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.max_detections = int(max_detections)
        self.min_size = float(min_size)
        self.max_per_class = None if max_per_class is None else int(max_per_class)
        self.built = True                                     # no weights (lets export track it)

    def call(self, class_logits, box_deltas, proposals, proposal_valid=None, image_size=None):
        image_size = self.image_size if image_size is None else image_size
        if image_size is None:
            raise ValueError("BoxDecoder needs an image_size (constructor or call)")
        logits = ops.cast(class_logits, "float32")
        count, k = logits.shape[1], logits.shape[2]
        if k != self.num_classes + 1:
            raise ValueError(f"expected {self.num_classes + 1} logits, got {logits.shape}")
        scores = ops.softmax(logits, axis=-1)[:, :, 1:]                          # [B, R, C]
        deltas = ops.reshape(ops.cast(box_deltas, "float32"), (-1, count, k, 4))[:, :, 1:]
        proposals = ops.cast(proposals, "float32")
        boxes = box_coder.decode(deltas, proposals[:, :, None, :],
                                 box_coder.variances_from_weights(self.box_weights))
        boxes = _clip_to_image(boxes, image_size)                                # [B, R, C, 4]
        keep = ops.logical_and(boxes[..., 2] - boxes[..., 0] >= self.min_size,
                               boxes[..., 3] - boxes[..., 1] >= self.min_size)
        if proposal_valid is not None:
            keep = ops.logical_and(keep, ops.cast(proposal_valid, "bool")[:, :, None])
        scores = ops.where(keep, scores, -1.0)
        per_class = self.max_per_class or self.max_detections
        out = batched_nms(boxes, scores, iou_threshold=self.nms_threshold,
                          score_threshold=self.score_threshold, max_per_class=per_class,
                          max_detections=self.max_detections)
        return out

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes,
                      image_size=None if self.image_size is None else list(self.image_size),
                      weights=list(self.box_weights), score_threshold=self.score_threshold,
                      nms_threshold=self.nms_threshold, max_detections=self.max_detections,
                      min_size=self.min_size, max_per_class=self.max_per_class)
        return config


def _clip_to_image(boxes, image_size):
    """Clips ``[B, ..., 4]`` ``xyxy`` boxes to ``(height, width)`` or per-image ``[B, 2]``."""
    if isinstance(image_size, (tuple, list)) and len(image_size) == 2 and all(
            isinstance(s, (int, float, np.integer, np.floating)) for s in image_size):
        h, w = float(image_size[0]), float(image_size[1])
        limits = ops.convert_to_tensor(np.array([w, h, w, h], "float32"))
    else:
        size = ops.cast(ops.convert_to_tensor(image_size), "float32")           # [B, 2]
        limits = ops.stack([size[:, 1], size[:, 0], size[:, 1], size[:, 0]], axis=-1)
        limits = ops.reshape(limits, (-1,) + (1,) * (len(boxes.shape) - 2) + (4,))
    return ops.minimum(ops.maximum(boxes, 0.0), limits)


# --- torchvision weights ----------------------------------------------------------------------

def map_box_head(state_dict, head=None, predictor=None,
                 prefix: str = "roi_heads.") -> tuple[dict, set]:
    """torchvision box head / predictor keys -> kft variable paths (``kft.models.torchvision_map``
    conventions).

    Keys (after ``prefix``): :class:`TwoMLPHead` ``box_head.fc6`` / ``fc7``;
    :class:`ConvFCHead` ``box_head.{i}.0`` (conv) and ``box_head.{i}.1`` (BatchNorm) for conv
    ``i``, then ``box_head.{n + 1 + 2 j}`` for FC ``j`` (``nn.Sequential`` indices: ``n`` convs,
    a Flatten, Linear / ReLU pairs); :class:`BoxPredictor` ``box_predictor.cls_score`` /
    ``bbox_pred`` (same class layout: label ``k + 1`` is kft class ``k``). The first FC layer's
    inputs are permuted from torchvision's channel-major flatten to kft's channels-last one.

    Args:
        state_dict: ``{key: array}`` (NumPy arrays or CPU torch tensors), e.g. a torchvision
            ``FasterRCNN``'s ``state_dict()``.
        head, predictor: built layers; either may be ``None`` (not mapped).
        prefix: ``"roi_heads."`` for a whole ``FasterRCNN`` state dict.

    Returns:
        ``(mapping, used_keys)``: ``{variable path: float32 array}`` for
        :func:`kft.models.weights.transfer`, and the state-dict keys consumed. The head is
        strict (a missing or unexpected ``box_head.*`` key, or a shape that does not fit, raises
        :class:`~kft.models.weights.WeightsError`); the predictor's shapes are not checked, so
        a predictor for another number of classes shows up as ``transfer``'s shape mismatch.
    """
    mapping, used = {}, set()
    base = prefix + "box_head."
    if isinstance(head, TwoMLPHead):
        _need_built(head)
        _put_linear(mapping, used, state_dict, base + "fc6", head.fc6, head.roi_shape)
        _put_linear(mapping, used, state_dict, base + "fc7", head.fc7)
    elif isinstance(head, ConvFCHead):
        _need_built(head)
        h, w, c = head.roi_shape
        for i, conv in enumerate(head.convs):
            key = f"{base}{i}.0"
            _put(mapping, used, state_dict, key + ".weight", conv.kernel, (2, 3, 1, 0))
            if conv.use_bias:
                _put(mapping, used, state_dict, key + ".bias", conv.bias)
            if head.norms:
                bn = head.norms[i]
                for entry, variable in (("weight", bn.gamma), ("bias", bn.beta),
                                        ("running_mean", bn.moving_mean),
                                        ("running_var", bn.moving_variance)):
                    _put(mapping, used, state_dict, f"{base}{i}.1.{entry}", variable)
                if f"{base}{i}.1.num_batches_tracked" in state_dict:
                    used.add(f"{base}{i}.1.num_batches_tracked")
            c = conv.filters
        n = len(head.convs)
        for j, fc in enumerate(head.fcs):
            _put_linear(mapping, used, state_dict, f"{base}{n + 1 + 2 * j}", fc,
                        (h, w, c) if j == 0 else None)
    elif head is not None:
        raise TypeError(f"head must be a TwoMLPHead or ConvFCHead, got {type(head).__name__}")
    if predictor is not None:
        _need_built(predictor)
        for name in ("cls_score", "bbox_pred"):
            _put_linear(mapping, used, state_dict, f"{prefix}box_predictor.{name}",
                        getattr(predictor, name), check=False)
    parts = ([base] if head is not None else []) + (
        [prefix + "box_predictor."] if predictor is not None else [])
    unexpected = sorted(k for k in state_dict
                        if any(k.startswith(p) for p in parts) and k not in used)
    if unexpected:
        from kft.models.weights import WeightsError

        raise WeightsError(f"torchvision keys that map to no kft variable: {unexpected}")
    return mapping, used


def _array(value):
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value, "float32")


def _put(mapping, used, state_dict, key, variable, axes=None, check=True, value=None):
    """``mapping[variable.path] = state_dict[key]`` (transposed by ``axes``), shape-checked."""
    from kft.models.weights import WeightsError

    if value is None:
        if key not in state_dict:
            raise WeightsError(f"the state dict has no {key!r} (for {variable.path})")
        value = _array(state_dict[key])
        if axes is not None:
            value = value.transpose(axes)
    if check and tuple(value.shape) != tuple(variable.shape):
        raise WeightsError(f"{key}: torchvision shape {tuple(value.shape)} does not fit "
                           f"{variable.path} {tuple(variable.shape)}")
    mapping[variable.path] = value
    used.add(key)


def _put_linear(mapping, used, state_dict, key, dense, rows_hwc=None, check=True):
    """torch ``Linear`` ``weight [out, in]`` / ``bias`` -> Keras ``kernel [in, out]`` / ``bias``;
    ``rows_hwc=(h, w, c)`` reorders the inputs from channel-major ``(c, y, x)`` to ``(y, x, c)``."""
    from kft.models.weights import WeightsError

    if key + ".weight" not in state_dict:
        raise WeightsError(f"the state dict has no {key + '.weight'!r} (for {dense.kernel.path})")
    weight = _array(state_dict[key + ".weight"])
    if rows_hwc is not None:
        h, w, c = rows_hwc
        if weight.shape[1] != h * w * c:
            raise WeightsError(f"{key}.weight: {weight.shape[1]} inputs, kft's RoI features "
                               f"({h}, {w}, {c}) flatten to {h * w * c}")
        weight = weight.reshape(-1, c, h, w).transpose(0, 2, 3, 1).reshape(weight.shape[0], -1)
    _put(mapping, used, state_dict, key + ".weight", dense.kernel, check=check, value=weight.T)
    _put(mapping, used, state_dict, key + ".bias", dense.bias, check=check)


def _need_built(layer):
    if not layer.built:
        raise ValueError(f"build {layer.name} before mapping weights into it")
