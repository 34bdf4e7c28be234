"""Losses for classification, detection and segmentation fine-tuning (MISSION T8, T10, T11).

Pure ``keras.ops`` functions: they run on any Keras backend, inside ``tf.function``/XLA, and
under mixed precision (every input is cast to float32 first, so a float16 model still gets a
float32 loss and its gradients flow back through the casts).

Reduction: the per-element / per-sample losses return *unreduced* tensors with the shapes their
docstrings give, so the caller picks the mean or the normaliser (Keras' ``compile(loss=...)``
reduces a per-sample loss itself). Only :func:`ssd_multibox_loss` and the batch triplet loss
reduce, because their normaliser is part of the method.

Integer labels below 0 mean "ignore" wherever a loss takes integer labels: such entries get
loss 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from keras import ops

from kft.ops.boxes import box_area

_EPS = 1e-7


def _f32(x):
    return ops.cast(ops.convert_to_tensor(x), "float32")


def _labels(labels):
    """(labels clipped to >= 0 as int32, valid bool) for integer labels with -1 = ignore."""
    labels = ops.cast(ops.convert_to_tensor(labels), "int32")
    valid = labels >= 0
    return ops.where(valid, labels, 0), valid


def _gather_last(x, idx):
    """``x[..., idx]`` per element: x ``[..., C]``, idx int ``[...]`` -> ``[...]``."""
    return ops.squeeze(ops.take_along_axis(x, ops.expand_dims(idx, -1), axis=-1), -1)


# ---------------------------------------------------------------------------------------------
# Regression losses
# ---------------------------------------------------------------------------------------------


def smooth_l1(pred, target, beta: float = 1.0, axis: int | None = None):
    """Smooth L1 (Huber / beta) loss, Fast R-CNN (Girshick 2015, eq. 3) with torchvision's beta.

    ``d = |pred - target|``; ``0.5 * d**2 / beta`` where ``d < beta``, else ``d - 0.5 * beta``.
    ``beta == 0`` is plain L1.

    Args:
        pred, target: float ``[...]`` (same shape, e.g. ``[B, A, 4]`` box deltas).
        beta: where the quadratic part turns linear.
        axis: if given, the loss is summed over this axis (``-1`` sums the 4 box coordinates).

    Returns:
        float32 ``[...]`` elementwise, or that shape less ``axis``. No other reduction.
    """
    d = ops.abs(_f32(pred) - _f32(target))
    if beta < 1e-5:
        loss = d
    else:
        loss = ops.where(d < beta, 0.5 * ops.square(d) / beta, d - 0.5 * beta)
    return loss if axis is None else ops.sum(loss, axis=axis)


def giou_loss(pred_xyxy, target_xyxy):
    """``1 - GIoU`` of paired boxes (Rezatofighi et al. 2019, "Generalized IoU", Alg. 1).

    ``GIoU = IoU - (|C| - |A u B|) / |C|`` with ``C`` the smallest box enclosing both. The loss
    lies in ``[0, 2]``: 0 for identical boxes, above 1 for disjoint ones. Boxes with ``x2 < x1``
    or ``y2 < y1`` (early, unconstrained predictions) count as empty; empty unions and empty
    enclosures give IoU 0 and no penalty term instead of 0/0, so the value and its gradient stay
    finite.

    Args:
        pred_xyxy, target_xyxy: float ``[..., 4]`` boxes ``[x1, y1, x2, y2]``, paired elementwise.

    Returns:
        float32 ``[...]`` per box pair, unreduced.
    """
    p = _f32(pred_xyxy)
    t = _f32(target_xyxy)
    lt = ops.maximum(p[..., :2], t[..., :2])
    rb = ops.minimum(p[..., 2:], t[..., 2:])
    wh = ops.maximum(rb - lt, 0.0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(p) + box_area(t) - inter
    iou = ops.where(union > 0, inter / ops.maximum(union, _EPS), 0.0)
    c_lt = ops.minimum(p[..., :2], t[..., :2])
    c_rb = ops.maximum(p[..., 2:], t[..., 2:])
    c_wh = ops.maximum(c_rb - c_lt, 0.0)
    enclose = c_wh[..., 0] * c_wh[..., 1]
    penalty = ops.where(enclose > 0, (enclose - union) / ops.maximum(enclose, _EPS), 0.0)
    return 1.0 - (iou - penalty)


# ---------------------------------------------------------------------------------------------
# Classification losses
# ---------------------------------------------------------------------------------------------


def sigmoid_focal_loss(logits, targets, alpha: float | None = 0.25, gamma: float = 2.0):
    """Binary (sigmoid) focal loss, RetinaNet (Lin et al. 2017, eq. 5; torchvision's form).

    ``p = sigmoid(logits)``, ``p_t = p * y + (1 - p) * (1 - y)``,
    ``loss = alpha_t * (1 - p_t)**gamma * BCE(logits, y)`` with
    ``alpha_t = alpha * y + (1 - alpha) * (1 - y)``. ``alpha=None`` drops the alpha weighting;
    ``gamma=0, alpha=None`` is plain binary cross-entropy.

    Args:
        logits: float ``[...]``.
        targets: float ``[...]`` in ``[0, 1]`` (one-hot per class for multi-label detection).

    Returns:
        float32 ``[...]`` elementwise, unreduced (RetinaNet sums it and divides by the number of
        positive anchors).
    """
    x = _f32(logits)
    y = _f32(targets)
    ce = y * ops.softplus(-x) + (1.0 - y) * ops.softplus(x)
    p = ops.sigmoid(x)
    p_t = p * y + (1.0 - p) * (1.0 - y)
    loss = ce * ops.power(ops.maximum(1.0 - p_t, 0.0), gamma)
    if alpha is not None:
        loss = (alpha * y + (1.0 - alpha) * (1.0 - y)) * loss
    return loss


def softmax_focal_loss(logits, labels, alpha: float | Sequence[float] | None = 0.25,
                       gamma: float = 2.0):
    """Multi-class (softmax) focal loss, the guide's ``alpha * (1 - p_t)**gamma * CE``.

    ``CE = -log softmax(logits)[label]``, ``p_t = exp(-CE)``. This is the multi-class form of
    Lin et al. 2017 that the guide writes with ``F.cross_entropy``.

    Args:
        logits: float ``[..., C]``.
        labels: int ``[...]`` in ``[0, C)``; negative labels are ignored (loss 0).
        alpha: a float weighs every class alike (the guide's form), a sequence of ``C`` floats
            weighs each sample by ``alpha[label]`` (e.g. ``1 - a`` for background, ``a`` for
            objects, as :func:`ssd_multibox_loss` does), ``None`` means 1.
        gamma: focusing parameter; ``gamma=0, alpha=None`` is cross-entropy.

    Returns:
        float32 ``[...]`` per sample, unreduced.
    """
    x = _f32(logits)
    idx, valid = _labels(labels)
    ce = -_gather_last(ops.log_softmax(x, axis=-1), idx)
    p_t = ops.exp(-ce)
    loss = ce * ops.power(ops.maximum(1.0 - p_t, 0.0), gamma)
    if alpha is not None:
        if isinstance(alpha, (int, float)):
            loss = float(alpha) * loss
        else:
            loss = ops.take(_f32(alpha), idx) * loss
    return ops.where(valid, loss, 0.0)


def label_smoothing_cross_entropy(logits, labels, smoothing: float = 0.1,
                                  class_weights: Sequence[float] | None = None):
    """Softmax cross-entropy with label smoothing (Szegedy et al. 2016, "Rethinking Inception").

    Target ``q = (1 - smoothing) * one_hot(label) + smoothing / C``, loss
    ``-sum_c q_c * log softmax(logits)_c`` -- the convention of Keras'
    ``CategoricalCrossentropy(label_smoothing=...)`` and torch's ``CrossEntropyLoss``. (The
    guide's snippet spreads ``smoothing / (C - 1)`` over the wrong classes only; the difference is
    a rescaling of ``smoothing`` by ``(C - 1) / C``.)

    Args:
        logits: float ``[..., C]``.
        labels: int ``[...]`` in ``[0, C)``; negative labels are ignored (loss 0).
        smoothing: share of the target mass spread uniformly; 0 gives plain cross-entropy.
        class_weights: optional ``C`` floats; each sample's loss is multiplied by
            ``class_weights[label]`` (1/frequency weights for imbalanced data).

    Returns:
        float32 ``[...]`` per sample, unreduced.
    """
    x = _f32(logits)
    num_classes = x.shape[-1]
    idx, valid = _labels(labels)
    logp = ops.log_softmax(x, axis=-1)
    nll = -_gather_last(logp, idx)
    loss = (1.0 - smoothing) * nll - (smoothing / num_classes) * ops.sum(logp, axis=-1)
    if class_weights is not None:
        loss = ops.take(_f32(class_weights), idx) * loss
    return ops.where(valid, loss, 0.0)


def weighted_binary_cross_entropy(logits, targets, pos_weight: float | Sequence[float] = 3.0):
    """Binary cross-entropy on logits with positives up-weighted (the guide's ``pos_weight=3.0``).

    ``loss = -[pos_weight * y * log sigmoid(x) + (1 - y) * log(1 - sigmoid(x))]``, computed as
    ``pos_weight * y * softplus(-x) + (1 - y) * softplus(x)`` (torch's
    ``BCEWithLogitsLoss(pos_weight=...)``), stable for any logit.

    Args:
        logits: float ``[..., C]`` (or any shape).
        targets: float, same shape, in ``[0, 1]``.
        pos_weight: a float, or ``C`` floats broadcast over the last axis.

    Returns:
        float32, the shape of ``logits``, elementwise, unreduced.
    """
    x = _f32(logits)
    y = _f32(targets)
    w = pos_weight if isinstance(pos_weight, (int, float)) else _f32(pos_weight)
    return w * y * ops.softplus(-x) + (1.0 - y) * ops.softplus(x)


def dice_loss(pred_probs, target_masks, smooth: float = 1.0, from_logits: bool = False):
    """Soft Dice loss per instance (Milletari et al. 2016, V-Net, with additive smoothing).

    ``1 - (2 * sum(p * t) + smooth) / (sum(p) + sum(t) + smooth)``, the sums over every axis but
    the first. A perfect prediction gives 0, a disjoint one ``1 - smooth / (sum(p) + sum(t) +
    smooth)``, close to 1; two empty masks give 0.

    Args:
        pred_probs: float ``[N, ...]`` probabilities in ``[0, 1]`` (logits if ``from_logits``),
            e.g. ``[N, H, W]`` instance masks or ``[N, H, W, 1]``.
        target_masks: float or bool, same shape, 0/1.
        smooth: additive smoothing on numerator and denominator.

    Returns:
        float32 ``[N]`` per instance, unreduced.
    """
    p = _f32(pred_probs)
    if from_logits:
        p = ops.sigmoid(p)
    t = _f32(target_masks)
    axes = tuple(range(1, len(p.shape)))
    inter = ops.sum(p * t, axis=axes)
    denom = ops.sum(p, axis=axes) + ops.sum(t, axis=axes)
    return 1.0 - (2.0 * inter + smooth) / (denom + smooth)


def kd_loss(student_logits, teacher_logits, labels, temperature: float = 2.0,
            alpha: float = 0.7):
    """Knowledge distillation (Hinton et al. 2015) in the guide's form: 0.7 KD + 0.3 CE.

    ``alpha * T**2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, labels)``.
    The KL is summed over classes per sample (torch's ``reduction="batchmean"``, which is what
    the ``T**2`` scaling assumes; the guide's ``nn.KLDivLoss()`` default averages over classes
    too, shrinking the KD term by ``1 / C``). The teacher gets no gradient.

    Args:
        student_logits, teacher_logits: float ``[..., C]``.
        labels: int ``[...]``; negative labels drop the CE term of that sample.
        temperature: softening temperature ``T`` (the guide uses 2-3).
        alpha: weight of the KD term; ``1 - alpha`` weighs the hard-label cross-entropy.

    Returns:
        float32 ``[...]`` per sample, unreduced.
    """
    s = _f32(student_logits)
    t = ops.stop_gradient(_f32(teacher_logits))
    log_p_t = ops.log_softmax(t / temperature, axis=-1)
    log_p_s = ops.log_softmax(s / temperature, axis=-1)
    kl = ops.sum(ops.exp(log_p_t) * (log_p_t - log_p_s), axis=-1)
    ce = label_smoothing_cross_entropy(s, labels, smoothing=0.0)
    return alpha * temperature**2 * kl + (1.0 - alpha) * ce


# ---------------------------------------------------------------------------------------------
# Metric learning
# ---------------------------------------------------------------------------------------------


def _distance(a, b, squared: bool):
    d2 = ops.sum(ops.square(a - b), axis=-1)
    # sqrt'(0) is infinite: keep the gradient finite for coincident embeddings.
    return d2 if squared else ops.sqrt(ops.maximum(d2, 1e-12))


def triplet_loss(anchor, positive, negative, margin: float = 0.2, squared: bool = True):
    """Triplet loss on given triplets (Schroff et al. 2015, FaceNet, eq. 1).

    ``max(d(a, p) - d(a, n) + margin, 0)`` with ``d`` the squared Euclidean distance (FaceNet,
    for L2-normalised embeddings, margin 0.2) or, ``squared=False``, the Euclidean distance
    (torch's ``TripletMarginLoss``). For triplets mined from a labelled batch see
    :func:`batch_triplet_loss`.

    Args:
        anchor, positive, negative: float ``[..., D]`` embeddings.

    Returns:
        float32 ``[...]`` per triplet, unreduced.
    """
    a, p, n = _f32(anchor), _f32(positive), _f32(negative)
    return ops.relu(_distance(a, p, squared) - _distance(a, n, squared) + margin)


def batch_triplet_loss(embeddings, labels, margin: float = 0.2, mining: str = "all",
                       squared: bool = True):
    """Triplet loss over every triplet a labelled batch holds (Hermans et al. 2017).

    ``mining="all"`` (batch-all): the mean of ``max(d(a,p) - d(a,n) + margin, 0)`` over the valid
    triplets (``a != p``, ``label a == label p != label n``) whose loss is positive, 0 if none.
    ``mining="hard"`` (batch-hard): per anchor, its farthest positive and nearest negative; the
    mean over anchors that have both. Needs ``O(B**3)`` memory for "all".

    Args:
        embeddings: float ``[B, D]``.
        labels: int ``[B]``.

    Returns:
        float32 scalar.
    """
    e = _f32(embeddings)
    y = ops.cast(ops.convert_to_tensor(labels), "int32")
    d = _distance(e[:, None, :], e[None, :, :], squared)
    n = e.shape[0]
    same = ops.equal(y[:, None], y[None, :])
    not_self = ops.logical_not(ops.cast(ops.eye(n), "bool"))
    pos = ops.logical_and(same, not_self)
    neg = ops.logical_not(same)
    if mining == "all":
        losses = ops.relu(d[:, :, None] - d[:, None, :] + margin)
        valid = ops.cast(ops.logical_and(pos[:, :, None], neg[:, None, :]), "float32")
        losses = losses * valid
        count = ops.sum(ops.cast(losses > 1e-16, "float32"))
        return ops.sum(losses) / ops.maximum(count, 1.0)
    if mining == "hard":
        hardest_pos = ops.max(ops.where(pos, d, 0.0), axis=1)
        big = ops.max(d) + 1.0
        hardest_neg = ops.min(ops.where(neg, d, big), axis=1)
        has_both = ops.cast(ops.logical_and(ops.any(pos, axis=1), ops.any(neg, axis=1)),
                            "float32")
        losses = ops.relu(hardest_pos - hardest_neg + margin) * has_both
        return ops.sum(losses) / ops.maximum(ops.sum(has_both), 1.0)
    raise ValueError(f"mining must be 'all' or 'hard', got {mining!r}")


# ---------------------------------------------------------------------------------------------
# Hard example mining
# ---------------------------------------------------------------------------------------------


def _rank_descending(scores):
    """Rank ``[B, N]`` int32 of each entry within its row, 0 = largest. Static shapes."""
    order = ops.argsort(-scores, axis=-1)
    return ops.cast(ops.argsort(order, axis=-1), "int32")


def hard_negative_mining(cls_loss, positive, ignore=None, neg_pos_ratio: float = 3.0,
                         min_negatives: int = 0):
    """SSD's hard negative mining (Liu et al. 2016, sec. 2.2 "Hard negative mining"; T10 3:1).

    Per image, keeps the ``k = min(max(neg_pos_ratio * num_pos, min_negatives), num_available)``
    negatives with the highest loss, where the available negatives are the anchors neither
    positive nor ignored. ``min_negatives`` gives images without positives some negatives to
    learn from (0, the SSD paper, keeps none). Shapes stay static: ``k`` is a per-image tensor
    and the selection is ``rank < k`` with ``rank = argsort(argsort(-loss))``.

    Args:
        cls_loss: float ``[B, A]`` per-anchor classification loss (its gradient is not used).
        positive: bool ``[B, A]`` anchors matched to an object.
        ignore: optional bool ``[B, A]`` anchors excluded from both sides.
        neg_pos_ratio: negatives per positive.
        min_negatives: floor on the negatives per image, before the cap at the available count.

    Returns:
        bool ``[B, A]`` the selected negatives (never a positive or ignored anchor).
    """
    loss = ops.stop_gradient(_f32(cls_loss))
    positive = ops.cast(positive, "bool")
    available = ops.logical_not(positive)
    if ignore is not None:
        available = ops.logical_and(available, ops.logical_not(ops.cast(ignore, "bool")))
    num_pos = ops.sum(ops.cast(positive, "float32"), axis=-1, keepdims=True)
    num_avail = ops.sum(ops.cast(available, "float32"), axis=-1, keepdims=True)
    k = ops.minimum(ops.maximum(ops.floor(neg_pos_ratio * num_pos), float(min_negatives)),
                    num_avail)
    scores = ops.where(available, loss, float("-inf"))
    rank = _rank_descending(scores)
    return ops.logical_and(available, ops.cast(rank, "float32") < k)


def ohem_mask(loss, share: float = 0.3, valid=None):
    """Online hard example mining (Shrivastava et al. 2016): keep the hardest ``share`` per image.

    Per row keeps the ``k = round(share * n)`` entries with the highest loss, at least one when
    the row has any, ``n`` the number of valid entries (the guide's 30%: ``share=0.3``).

    Args:
        loss: float ``[B, N]`` per-example (RoI / anchor / pixel) loss.
        share: fraction kept.
        valid: optional bool ``[B, N]``; only valid entries count and can be kept.

    Returns:
        bool ``[B, N]``.
    """
    loss = ops.stop_gradient(_f32(loss))
    valid = ops.ones_like(loss, "bool") if valid is None else ops.cast(valid, "bool")
    n = ops.sum(ops.cast(valid, "float32"), axis=-1, keepdims=True)
    k = ops.minimum(ops.maximum(ops.round(share * n), 1.0), n)
    rank = _rank_descending(ops.where(valid, loss, float("-inf")))
    return ops.logical_and(valid, ops.cast(rank, "float32") < k)


# ---------------------------------------------------------------------------------------------
# SSD
# ---------------------------------------------------------------------------------------------


def ssd_multibox_loss(cls_logits, box_deltas, cls_targets, box_targets, *,
                      neg_pos_ratio: float = 3.0, min_negatives: int = 0,
                      cls_loss: str = "ce", box_loss: str = "smooth_l1",
                      cls_weight: float = 1.0, loc_weight: float = 1.0,
                      label_smoothing: float = 0.0, smooth_l1_beta: float = 1.0,
                      focal_alpha: float = 0.25, focal_gamma: float = 2.0,
                      anchors=None, decode_fn: Callable | None = None):
    """SSD MultiBox loss (Liu et al. 2016, eq. 1-3): ``(cls_w * L_conf + loc_w * L_loc) / N``.

    ``N`` is the number of positive anchors in the whole batch (at least 1), as in the paper.

    * ``cls_loss="ce"``: softmax cross-entropy (with optional ``label_smoothing``) on the
      positives plus the negatives :func:`hard_negative_mining` picks (``neg_pos_ratio`` : 1,
      ranked by the background loss).
    * ``cls_loss="focal"``: :func:`softmax_focal_loss` on every non-ignored anchor, no mining,
      alpha-balanced RetinaNet-style (``focal_alpha`` for objects, ``1 - focal_alpha`` for
      background). ``label_smoothing`` does not apply.
    * ``box_loss="smooth_l1"``: smooth L1 on the encoded deltas of the positives, summed over
      the 4 coordinates.
    * ``box_loss="giou"``: :func:`giou_loss` on boxes: with ``decode_fn`` the deltas and the
      targets are decoded by ``decode_fn(deltas [B, A, 4], anchors) -> xyxy [B, A, 4]``; without
      it, ``box_deltas`` and ``box_targets`` must already be ``xyxy`` boxes.

    The guide's weights are ``cls_weight=1.5, loc_weight=1.0``.

    Args:
        cls_logits: float ``[B, A, C + 1]``, index 0 = background.
        box_deltas: float ``[B, A, 4]`` predicted encodings (or xyxy boxes, see ``box_loss``).
        cls_targets: int ``[B, A]``: 0 background, ``k + 1`` for class ``k``, -1 ignore.
        box_targets: float ``[B, A, 4]`` target encodings (or xyxy); read for positives only.

    Returns:
        dict of float32 scalars: ``loss`` (= ``cls_loss + box_loss``), ``cls_loss`` and
        ``box_loss`` (each already weighted and divided by ``N``), ``num_positives`` (the
        unclamped count).
    """
    logits = _f32(cls_logits)
    labels = ops.cast(ops.convert_to_tensor(cls_targets), "int32")
    positive = labels > 0
    valid = labels >= 0
    pos_f = ops.cast(positive, "float32")
    num_pos = ops.sum(pos_f)
    norm = ops.maximum(num_pos, 1.0)

    if cls_loss == "ce":
        per_anchor = label_smoothing_cross_entropy(logits, labels, smoothing=label_smoothing)
        negatives = hard_negative_mining(per_anchor, positive, ops.logical_not(valid),
                                         neg_pos_ratio=neg_pos_ratio,
                                         min_negatives=min_negatives)
        selected = ops.cast(ops.logical_or(positive, negatives), "float32")
        conf = ops.sum(per_anchor * selected)
    elif cls_loss == "focal":
        num_classes = logits.shape[-1]
        alpha = [1.0 - focal_alpha] + [focal_alpha] * (num_classes - 1)
        conf = ops.sum(softmax_focal_loss(logits, labels, alpha=alpha, gamma=focal_gamma))
    else:
        raise ValueError(f"cls_loss must be 'ce' or 'focal', got {cls_loss!r}")

    pred = _f32(box_deltas)
    # Targets of unmatched anchors may hold anything (an encoding of a zero-size padding box is
    # -inf); replacing them with the constant prediction keeps value and gradient finite.
    target = ops.where(positive[..., None], _f32(box_targets), ops.stop_gradient(pred))
    if box_loss == "smooth_l1":
        per_box = smooth_l1(pred, target, beta=smooth_l1_beta, axis=-1)
    elif box_loss == "giou":
        if decode_fn is not None:
            pred, target = decode_fn(pred, anchors), decode_fn(target, anchors)
        per_box = giou_loss(pred, target)
    else:
        raise ValueError(f"box_loss must be 'smooth_l1' or 'giou', got {box_loss!r}")
    loc = ops.sum(ops.where(positive, per_box, 0.0))

    cls_term = cls_weight * conf / norm
    box_term = loc_weight * loc / norm
    return {"loss": cls_term + box_term, "cls_loss": cls_term, "box_loss": box_term,
            "num_positives": num_pos}
