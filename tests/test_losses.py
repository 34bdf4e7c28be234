import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from kft import losses as L


def _np(x):
    return ops.convert_to_numpy(x)


def _log_softmax(x):
    x = np.asarray(x, "float64")
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


# ------------------------------------------------------------------ regression


def test_smooth_l1_both_branches_and_axis_sum():
    pred = np.array([0.0, 0.5, -0.5, 2.0, -3.0], "float32")
    target = np.zeros(5, "float32")
    # |d| < 1: 0.5 d^2; else |d| - 0.5.
    np.testing.assert_allclose(_np(L.smooth_l1(pred, target)), [0, 0.125, 0.125, 1.5, 2.5])
    # beta = 2: 0.5 d^2 / 2 below 2, |d| - 1 above.
    np.testing.assert_allclose(_np(L.smooth_l1(pred, target, beta=2.0)),
                               [0, 0.0625, 0.0625, 1.0, 2.0])
    np.testing.assert_allclose(_np(L.smooth_l1(pred, target, beta=0.0)), np.abs(pred))
    boxes = np.array([[[0.5, 2.0, 0.0, -3.0]]], "float32")
    out = L.smooth_l1(boxes, np.zeros_like(boxes), axis=-1)
    assert tuple(out.shape) == (1, 1)
    np.testing.assert_allclose(_np(out), [[0.125 + 1.5 + 2.5]])


def test_giou_identical_disjoint_overlap():
    p = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 2, 2], [10, 20, 50, 80]], "float32")
    t = np.array([[0, 0, 1, 1], [2, 0, 3, 1], [1, 1, 3, 3], [10, 20, 50, 80]], "float32")
    # disjoint: IoU 0, enclosure 3x1, union 2 -> GIoU = -1/3, loss 4/3.
    # overlap: inter 1, union 7, enclosure 9 -> GIoU = 1/7 - 2/9.
    expected = [0.0, 4.0 / 3.0, 1.0 - (1.0 / 7.0 - 2.0 / 9.0), 0.0]
    np.testing.assert_allclose(_np(L.giou_loss(p, t)), expected, rtol=1e-5, atol=1e-6)


def test_giou_degenerate_boxes_no_nan_in_value_or_gradient():
    p = tf.Variable([[5, 5, 5, 5], [0, 0, 0, 0], [3, 3, 1, 1], [0, 0, 4, 0]], dtype="float32")
    t = tf.constant([[5, 5, 5, 5], [0, 0, 2, 2], [0, 0, 2, 2], [0, 0, 4, 4]], "float32")
    with tf.GradientTape() as tape:
        loss = L.giou_loss(p, t)
        total = ops.sum(loss)
    grad = tape.gradient(total, p)
    assert np.all(np.isfinite(_np(loss)))
    assert np.all(np.isfinite(grad.numpy()))
    assert np.all((_np(loss) >= 0) & (_np(loss) <= 2))
    # zero-area prediction inside the target: IoU 0, enclosure == union -> loss 1.
    np.testing.assert_allclose(_np(loss)[1], 1.0, atol=1e-6)


# ------------------------------------------------------------------ classification


def test_sigmoid_focal_reduces_to_bce_and_alpha_weights():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 3)).astype("float32")
    y = (rng.uniform(size=(4, 3)) > 0.5).astype("float32")
    bce = _np(keras.losses.binary_crossentropy(y[..., None], x[..., None], from_logits=True))
    np.testing.assert_allclose(_np(L.sigmoid_focal_loss(x, y, alpha=None, gamma=0.0)), bce,
                               rtol=1e-5)
    weighted = _np(L.sigmoid_focal_loss(x, y, alpha=0.25, gamma=0.0))
    np.testing.assert_allclose(weighted, np.where(y > 0, 0.25, 0.75) * bce, rtol=1e-5)
    # logit 0, positive: p_t = 0.5 -> 0.25 * 0.5^2 * log 2.
    one = _np(L.sigmoid_focal_loss([0.0], [1.0]))
    np.testing.assert_allclose(one, [0.25 * 0.25 * np.log(2.0)], rtol=1e-6)
    # easy examples are down-weighted much more than hard ones.
    easy, hard = _np(L.sigmoid_focal_loss([4.0, -4.0], [1.0, 1.0]))
    assert easy < 1e-3 * hard


def test_softmax_focal_reduces_to_ce_alpha_and_ignore():
    logits = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [1.0, 1.0, 1.0]], "float32")
    labels = np.array([0, 2, -1])
    ce = -_log_softmax(logits)[np.arange(3), np.maximum(labels, 0)]
    out = _np(L.softmax_focal_loss(logits, labels, alpha=None, gamma=0.0))
    np.testing.assert_allclose(out, [ce[0], ce[1], 0.0], rtol=1e-5)
    pt = np.exp(-ce)
    out = _np(L.softmax_focal_loss(logits, labels, alpha=0.25, gamma=2.0))
    np.testing.assert_allclose(out[:2], (0.25 * (1 - pt) ** 2 * ce)[:2], rtol=1e-5)
    per_class = _np(L.softmax_focal_loss(logits, labels, alpha=[0.1, 0.2, 0.7], gamma=0.0))
    np.testing.assert_allclose(per_class, [0.1 * ce[0], 0.7 * ce[1], 0.0], rtol=1e-5)


def test_label_smoothing_matches_keras_and_class_weights():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(6, 5)).astype("float32")
    labels = np.array([0, 1, 2, 3, 4, 1])
    ref = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1,
                                               reduction=None)
    expected = _np(ref(keras.utils.to_categorical(labels, 5), logits))
    got = _np(L.label_smoothing_cross_entropy(logits, labels, smoothing=0.1))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    plain = -_log_softmax(logits)[np.arange(6), labels]
    np.testing.assert_allclose(_np(L.label_smoothing_cross_entropy(logits, labels, 0.0)), plain,
                               rtol=1e-5)
    w = [1.0, 2.0, 3.0, 4.0, 5.0]
    weighted = _np(L.label_smoothing_cross_entropy(logits, labels, 0.1, class_weights=w))
    np.testing.assert_allclose(weighted, expected * np.take(w, labels), rtol=1e-5)
    ignored = _np(L.label_smoothing_cross_entropy(logits, [-1, 1, 2, 3, 4, 1], 0.1))
    assert ignored[0] == 0.0 and ignored[1] > 0


def test_weighted_bce_pos_weight():
    # logit 0: log 2 each; positives count 3x.
    out = _np(L.weighted_binary_cross_entropy([0.0, 0.0], [1.0, 0.0], pos_weight=3.0))
    np.testing.assert_allclose(out, [3 * np.log(2), np.log(2)], rtol=1e-6)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(5, 4)).astype("float32") * 5
    y = (rng.uniform(size=(5, 4)) > 0.5).astype("float32")
    sig = 1 / (1 + np.exp(-x.astype("float64")))
    ref = -(3.0 * y * np.log(sig) + (1 - y) * np.log(1 - sig))
    np.testing.assert_allclose(_np(L.weighted_binary_cross_entropy(x, y)), ref, rtol=1e-4)
    per_class = _np(L.weighted_binary_cross_entropy(x, y, pos_weight=[1.0, 2.0, 3.0, 4.0]))
    ref = -(np.array([1.0, 2.0, 3.0, 4.0]) * y * np.log(sig) + (1 - y) * np.log(1 - sig))
    np.testing.assert_allclose(per_class, ref, rtol=1e-4)
    # extreme logits stay finite.
    assert np.all(np.isfinite(_np(L.weighted_binary_cross_entropy([100.0, -100.0], [0.0, 1.0]))))


def test_dice_perfect_disjoint_and_per_instance():
    m = np.zeros((2, 8, 8), "float32")
    m[0, :4] = 1
    m[1, :, :2] = 1
    out = _np(L.dice_loss(m, m))
    assert out.shape == (2,)
    np.testing.assert_allclose(out, [0.0, 0.0], atol=1e-6)
    disjoint = 1.0 - m
    # sum(p) + sum(t) = 64 per instance: 1 - 1 / 65.
    np.testing.assert_allclose(_np(L.dice_loss(disjoint, m)), [64 / 65, 64 / 65], rtol=1e-6)
    half = np.full((1, 2, 2, 1), 0.5, "float32")
    tgt = np.array([[[[1], [0]], [[0], [0]]]], "float32")
    # inter 0.5, sums 2 + 1: 1 - (1 + 1) / (3 + 1).
    np.testing.assert_allclose(_np(L.dice_loss(half, tgt)), [0.5], rtol=1e-6)
    np.testing.assert_allclose(_np(L.dice_loss(np.full((1, 2, 2, 1), 0.0), tgt, from_logits=True)),
                               [0.5], rtol=1e-6)


def test_kd_loss_ce_only_when_equal_and_temperature_scaling():
    rng = np.random.default_rng(3)
    s = rng.normal(size=(4, 5)).astype("float32")
    t = rng.normal(size=(4, 5)).astype("float32") * 2
    labels = np.array([0, 1, 2, 3])
    ce = -_log_softmax(s)[np.arange(4), labels]
    np.testing.assert_allclose(_np(L.kd_loss(s, s, labels, temperature=3.0, alpha=0.7)),
                               0.3 * ce, rtol=1e-5)
    for temp in (2.0, 3.0):
        lt, ls = _log_softmax(t / temp), _log_softmax(s / temp)
        kl = (np.exp(lt) * (lt - ls)).sum(-1)
        np.testing.assert_allclose(_np(L.kd_loss(s, t, labels, temperature=temp, alpha=1.0)),
                                   temp**2 * kl, rtol=1e-4)
        np.testing.assert_allclose(_np(L.kd_loss(s, t, labels, temperature=temp, alpha=0.7)),
                                   0.7 * temp**2 * kl + 0.3 * ce, rtol=1e-4)
    sv, tv = tf.Variable(s), tf.Variable(t)
    with tf.GradientTape() as tape:
        loss = ops.sum(L.kd_loss(sv, tv, labels))
    gs, gt = tape.gradient(loss, [sv, tv])
    assert gt is None and np.abs(gs.numpy()).sum() > 0


def test_triplet_given_and_batch_forms():
    a = np.array([[0.0, 0.0], [0.0, 0.0]], "float32")
    p = np.array([[1.0, 0.0], [0.1, 0.0]], "float32")
    n = np.array([[0.0, 1.0], [2.0, 0.0]], "float32")
    # squared: 1 - 1 + 0.2 = 0.2; 0.01 - 4 + 0.2 < 0 -> 0.
    np.testing.assert_allclose(_np(L.triplet_loss(a, p, n)), [0.2, 0.0], atol=1e-6)
    n2 = np.array([[0.5, 0.0], [2.0, 0.0]], "float32")
    # euclidean: 1 - 0.5 + 0.2 = 0.7.
    np.testing.assert_allclose(_np(L.triplet_loss(a, p, n2, squared=False)), [0.7, 0.0],
                               atol=1e-6)
    emb = np.array([[0.0], [1.0], [3.0]], "float32")
    labels = np.array([0, 0, 1])
    # squared distances: d01 = 1, d02 = 9, d12 = 4. Valid triplets (a, p, n): (0,1,2) 1-9+m<0,
    # (1,0,2) 1-4+m<0 -> batch-all 0 with m=0.2, with m=3.5: (0,1,2) 0, (1,0,2) 0.5.
    assert float(_np(L.batch_triplet_loss(emb, labels, margin=0.2))) == 0.0
    np.testing.assert_allclose(_np(L.batch_triplet_loss(emb, labels, margin=3.5)), 0.5,
                               rtol=1e-6)
    # batch-hard, m=3.5: anchor 0: 1 - 9 + 3.5 < 0; anchor 1: 1 - 4 + 3.5 = 0.5; anchor 2 has no
    # positive -> mean over 2 anchors = 0.25.
    np.testing.assert_allclose(_np(L.batch_triplet_loss(emb, labels, 3.5, mining="hard")), 0.25,
                               rtol=1e-6)
    with pytest.raises(ValueError):
        L.batch_triplet_loss(emb, labels, mining="semi")


# ------------------------------------------------------------------ mining


def test_hard_negative_mining_three_to_one():
    rng = np.random.default_rng(4)
    loss = rng.permutation(40).reshape(4, 10).astype("float32")
    pos = np.zeros((4, 10), bool)
    pos[0, [0, 1]] = True  # 2 positives -> 6 negatives of 8.
    pos[1, :3] = True  # 3 positives -> 9 wanted, 7 available -> all 7.
    ignore = np.zeros((4, 10), bool)
    ignore[2, int(np.argmax(loss[2]))] = True  # ignore the hardest anchor of image 2.
    pos[2, 9] = True
    # image 3: no positives.
    neg = _np(L.hard_negative_mining(loss, pos, ignore))
    assert neg.dtype == bool
    np.testing.assert_array_equal(neg.sum(1), [6, 7, 3, 0])
    assert not np.any(neg & pos) and not np.any(neg & ignore)
    for b in range(3):
        avail = ~pos[b] & ~ignore[b]
        if neg[b].sum() < avail.sum():
            assert loss[b][neg[b]].min() > loss[b][avail & ~neg[b]].max()
    neg = _np(L.hard_negative_mining(loss, pos, ignore, min_negatives=2))
    np.testing.assert_array_equal(neg.sum(1), [6, 7, 3, 2])
    np.testing.assert_array_equal(np.flatnonzero(neg[3]), np.sort(np.argsort(-loss[3])[:2]))
    neg = _np(L.hard_negative_mining(loss, pos, neg_pos_ratio=1))
    np.testing.assert_array_equal(neg.sum(1), [2, 3, 1, 0])


def test_ohem_keeps_hardest_share():
    loss = np.stack([np.arange(10), np.arange(10)[::-1]]).astype("float32")
    keep = _np(L.ohem_mask(loss, share=0.3))
    np.testing.assert_array_equal(np.flatnonzero(keep[0]), [7, 8, 9])
    np.testing.assert_array_equal(np.flatnonzero(keep[1]), [0, 1, 2])
    keep = _np(L.ohem_mask(np.arange(40, dtype="float32").reshape(2, 20)))
    np.testing.assert_array_equal(keep.sum(1), [6, 6])
    valid = np.ones((2, 10), bool)
    valid[0, 9] = False
    valid[1] = False
    valid[1, 4] = True
    keep = _np(L.ohem_mask(loss, 0.3, valid=valid))
    np.testing.assert_array_equal(np.flatnonzero(keep[0]), [6, 7, 8])  # round(2.7) = 3
    np.testing.assert_array_equal(np.flatnonzero(keep[1]), [4])  # at least one
    valid[0, 7:] = False  # 7 valid: round(2.1) = 2
    np.testing.assert_array_equal(np.flatnonzero(_np(L.ohem_mask(loss, 0.3, valid))[0]), [5, 6])


# ------------------------------------------------------------------ SSD


def _ssd_case():
    # 2 images x 6 anchors, 2 object classes (+ background).
    labels = np.array([[1, 0, 0, 0, 0, -1], [0, 2, 2, 0, 0, 0]], "int32")
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(2, 6, 3)).astype("float32")
    deltas = rng.normal(size=(2, 6, 4)).astype("float32")
    targets = rng.normal(size=(2, 6, 4)).astype("float32")
    return logits, deltas, labels, targets


def test_multibox_zero_for_perfect_predictions():
    _, _, labels, targets = _ssd_case()
    logits = np.where(np.eye(3)[np.maximum(labels, 0)] > 0, 20.0, -20.0).astype("float32")
    targets[labels <= 0] = np.inf  # unmatched anchors may carry garbage targets
    out = L.ssd_multibox_loss(logits, np.nan_to_num(targets, posinf=0.0), labels, targets)
    assert float(_np(out["loss"])) < 1e-6
    assert float(_np(out["num_positives"])) == 3.0
    focal = L.ssd_multibox_loss(logits, np.nan_to_num(targets, posinf=0.0), labels, targets,
                                cls_loss="focal")
    assert float(_np(focal["loss"])) < 1e-6


def test_multibox_hand_value_and_weights():
    logits, deltas, labels, targets = _ssd_case()
    ce = -_log_softmax(logits)[np.arange(2)[:, None], np.arange(6)[None], np.maximum(labels, 0)]
    pos = labels > 0
    cls_sum = ce[pos].sum()
    # image 0: 1 positive -> 3 of its 4 negatives (anchor 5 ignored); image 1: 2 -> all 4.
    neg0 = np.sort(ce[0, 1:5])[::-1][:3].sum()
    cls_sum += neg0 + ce[1, [0, 3, 4, 5]].sum()
    d = np.abs(deltas - targets)
    sl1 = np.where(d < 1, 0.5 * d**2, d - 0.5).sum(-1)
    box_sum = sl1[pos].sum()
    out = L.ssd_multibox_loss(logits, deltas, labels, targets)
    np.testing.assert_allclose(_np(out["cls_loss"]), cls_sum / 3, rtol=1e-5)
    np.testing.assert_allclose(_np(out["box_loss"]), box_sum / 3, rtol=1e-5)
    np.testing.assert_allclose(_np(out["loss"]), (cls_sum + box_sum) / 3, rtol=1e-5)
    w = L.ssd_multibox_loss(logits, deltas, labels, targets, cls_weight=1.5, loc_weight=0.5)
    np.testing.assert_allclose(_np(w["cls_loss"]), 1.5 * cls_sum / 3, rtol=1e-5)
    np.testing.assert_allclose(_np(w["box_loss"]), 0.5 * box_sum / 3, rtol=1e-5)
    np.testing.assert_allclose(_np(w["loss"]), (1.5 * cls_sum + 0.5 * box_sum) / 3, rtol=1e-5)
    # focal: every non-ignored anchor, alpha 0.75 for background / 0.25 for objects.
    fl = (1 - np.exp(-ce)) ** 2 * ce * np.where(pos, 0.25, 0.75)
    fl[labels < 0] = 0
    f = L.ssd_multibox_loss(logits, deltas, labels, targets, cls_loss="focal")
    np.testing.assert_allclose(_np(f["cls_loss"]), fl.sum() / 3, rtol=1e-5)
    smoothed = L.ssd_multibox_loss(logits, deltas, labels, targets, label_smoothing=0.1)
    assert abs(float(_np(smoothed["cls_loss"])) - cls_sum / 3) > 1e-3
    with pytest.raises(ValueError):
        L.ssd_multibox_loss(logits, deltas, labels, targets, cls_loss="hinge")


def test_multibox_no_positives_and_giou_with_decode_fn():
    logits, deltas, _, targets = _ssd_case()
    labels = np.zeros((2, 6), "int32")
    out = L.ssd_multibox_loss(logits, deltas, labels, targets)
    assert float(_np(out["num_positives"])) == 0.0
    assert float(_np(out["loss"])) == 0.0  # SSD mines 3 x 0 negatives
    out = L.ssd_multibox_loss(logits, deltas, labels, targets, min_negatives=2)
    assert float(_np(out["cls_loss"])) > 0.0

    anchors = np.tile(np.array([[0, 0, 10, 10]], "float32"), (6, 1))
    _, _, labels, _ = _ssd_case()

    def decode(d, a):  # a toy decoder: deltas are corner offsets in pixels
        return ops.convert_to_tensor(a) + d

    out = L.ssd_multibox_loss(logits, deltas, labels, targets, box_loss="giou",
                              anchors=anchors, decode_fn=decode)
    pos = labels > 0
    expected = _np(L.giou_loss(anchors + deltas, anchors + targets))[pos].sum() / 3
    np.testing.assert_allclose(_np(out["box_loss"]), expected, rtol=1e-5)
    direct = L.ssd_multibox_loss(logits, anchors + deltas, labels, anchors + targets,
                                 box_loss="giou")
    np.testing.assert_allclose(_np(direct["box_loss"]), expected, rtol=1e-5)


@pytest.mark.parametrize("cls_loss,box_loss", [("ce", "smooth_l1"), ("focal", "giou")])
def test_multibox_gradients_finite_under_float16(cls_loss, box_loss):
    logits, deltas, labels, targets = _ssd_case()
    if box_loss == "giou":
        deltas = np.concatenate([deltas[..., :2], deltas[..., :2] + 1.0], -1)
        targets = np.concatenate([targets[..., :2], targets[..., :2] + 2.0], -1)
    targets[labels <= 0] = -np.inf  # log(0) encodings of padding boxes
    lv = tf.Variable(logits * 10, dtype="float16")
    dv = tf.Variable(deltas, dtype="float16")
    with tf.GradientTape() as tape:
        out = L.ssd_multibox_loss(lv, dv, labels, tf.constant(targets, "float16"),
                                  cls_loss=cls_loss, box_loss=box_loss, cls_weight=1.5)
    assert out["loss"].dtype == "float32"
    gl, gd = tape.gradient(out["loss"], [lv, dv])
    assert np.isfinite(float(out["loss"]))
    for g in (gl, gd):
        assert g.dtype == "float16"
        assert np.all(np.isfinite(g.numpy())) and np.abs(g.numpy()).sum() > 0


def test_multibox_in_compiled_graph():
    logits, deltas, labels, targets = _ssd_case()
    fn = tf.function(lambda *a: L.ssd_multibox_loss(*a)["loss"], jit_compile=True)
    eager = L.ssd_multibox_loss(logits, deltas, labels, targets)["loss"]
    np.testing.assert_allclose(fn(logits, deltas, labels, targets).numpy(), _np(eager),
                               rtol=1e-5)
