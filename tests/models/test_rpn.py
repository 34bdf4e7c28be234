import math
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from kft.models.heads.rpn import (
    TORCHVISION_ASPECT_RATIOS,
    RPNHead,
    generate_proposals,
    rpn_loss,
    rpn_targets,
)
from kft.ops import box_coder
from kft.ops.anchors import grid_anchors, num_anchors_per_location

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "rpn_torchvision.npz"


def _np(x):
    return ops.convert_to_numpy(x)


def _features(height, width, strides=(4, 8, 16), channels=8, batch=2, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(batch, -(-height // s), -(-width // s), channels))
            .astype("float32") for s in strides]


# --- head ---------------------------------------------------------------------------------

def test_head_shapes_static_and_initialisation():
    head = RPNHead(num_anchors=3)
    features = _features(96, 160)
    objectness, deltas = head(features)
    n = (24 * 40 + 12 * 20 + 6 * 10) * 3
    assert tuple(objectness.shape) == (2, n) and tuple(deltas.shape) == (2, n, 4)
    assert head.num_anchors_per_level(features) == [24 * 40 * 3, 12 * 20 * 3, 6 * 10 * 3]
    kernel = _np(head.convs[0].kernel)
    assert abs(kernel.std() - 0.01) < 0.002 and not _np(head.convs[0].bias).any()
    assert not _np(head.cls_logits.bias).any() and not _np(head.bbox_pred.bias).any()
    # shared weights: one conv stack whatever the number of levels
    assert len(head.weights) == 6
    inputs = [keras.Input(f.shape[1:]) for f in features]
    model = keras.Model(inputs, head(inputs))
    assert tuple(model.outputs[0].shape) == (None, n)
    assert tuple(model.outputs[1].shape) == (None, n, 4)


def test_head_order_matches_grid_anchors():
    """Each output row must belong to the anchor at the same index of grid_anchors."""
    image, strides, sizes, ratios = (40, 72), (8, 16, 32), ((16, 24), (48,), (96,)), (0.5, 2.0)
    per_location = num_anchors_per_location(sizes, ratios)
    assert per_location == [4, 2, 2]
    anchors = grid_anchors(image, strides, sizes[:1] * 3, ratios)    # 4 anchors everywhere
    count = per_location[0]
    levels = []
    for s in strides:
        h, w = -(-image[0] // s), -(-image[1] // s)
        cy, cx = np.meshgrid((np.arange(h) + 0.5) * s, (np.arange(w) + 0.5) * s, indexing="ij")
        levels.append(np.stack([cx, cy], axis=-1)[None].astype("float32"))
    head = RPNHead(num_anchors=count, conv_depth=0)
    head(levels)
    # objectness channel a = a; delta channel (a, 0) = cx, (a, 1) = cy of the location.
    head.cls_logits.set_weights([np.zeros((1, 1, 2, count), "float32"),
                                 np.arange(count, dtype="float32")])
    kernel = np.zeros((1, 1, 2, 4 * count), "float32")
    kernel[0, 0, 0, 0::4] = 1.0
    kernel[0, 0, 1, 1::4] = 1.0
    head.bbox_pred.set_weights([kernel, np.zeros(4 * count, "float32")])
    objectness, deltas = (_np(t)[0] for t in head(levels))
    assert objectness.shape[0] == anchors.shape[0]
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    np.testing.assert_allclose(deltas[:, :2], centres, atol=1e-4)
    # anchor a of a location: size index a // len(ratios), ratio index a % len(ratios)
    a = objectness.round().astype(int)
    np.testing.assert_array_equal(a, np.tile(np.arange(count), anchors.shape[0] // count))
    wh = anchors[:, 2:] - anchors[:, :2]
    np.testing.assert_allclose(wh[:, 0] / wh[:, 1], np.asarray(ratios)[a % 2], rtol=1e-5)
    np.testing.assert_allclose(np.sqrt(wh[:, 0] * wh[:, 1]),
                               np.asarray(sizes[0], "float32")[a // 2], rtol=1e-5)


def test_head_config_round_trip_and_dict_input():
    head = RPNHead(num_anchors=15, conv_depth=2, channels=6, name="rpn")
    config = head.get_config()
    clone = RPNHead.from_config(config)
    assert clone.get_config() == config
    features = dict(zip(("P2", "P3"), _features(32, 48, strides=(4, 8), channels=5),
                        strict=True))
    objectness, deltas = clone(features)
    assert tuple(objectness.shape) == (2, (8 * 12 + 4 * 6) * 15)
    assert clone.convs[1].filters == 6 and len(clone.convs) == 2
    with pytest.raises(ValueError, match="one width"):
        RPNHead()([np.zeros((1, 4, 4, 3)), np.zeros((1, 2, 2, 5))])


def test_head_matches_torchvision_fixture():
    fixture = np.load(FIXTURE)
    levels = [fixture[f"head_in{i}"] for i in range(5)]
    head = RPNHead(num_anchors=3)
    head(levels)
    head.convs[0].set_weights([fixture["head_conv_kernel"], fixture["head_conv_bias"]])
    head.cls_logits.set_weights([fixture["head_cls_kernel"], fixture["head_cls_bias"]])
    head.bbox_pred.set_weights([fixture["head_bbox_kernel"], fixture["head_bbox_bias"]])
    objectness, deltas = head(levels)
    np.testing.assert_allclose(_np(objectness), fixture["head_objectness"], atol=1e-5)
    np.testing.assert_allclose(_np(deltas), fixture["head_deltas"], atol=1e-5)


def test_torchvision_anchor_order_and_centres():
    """grid_anchors with offset 0 and (2, 1, 0.5) ratios are torchvision's anchors before its
    rounding of the base anchors to whole pixels."""
    fixture = np.load(FIXTURE)
    height, width = (int(v) for v in fixture["image_size"])
    anchors = grid_anchors((height, width), (4, 8, 16, 32, 64), (32, 64, 128, 256, 512),
                           TORCHVISION_ASPECT_RATIOS, offset=0.0)
    assert anchors.shape == fixture["anchors"].shape
    np.testing.assert_allclose(anchors, fixture["anchors"], atol=0.5)
    np.testing.assert_allclose((anchors[:, :2] + anchors[:, 2:]) / 2,
                               (fixture["anchors"][:, :2] + fixture["anchors"][:, 2:]) / 2,
                               atol=1e-4)


# --- proposals ----------------------------------------------------------------------------

ANCHORS = np.array([[10, 10, 50, 50],      # level 0: the best
                    [12, 12, 52, 52],      # level 0: IoU 0.82 with 0, lower score
                    [60, 10, 90, 40],      # level 0: apart from 0
                    [-20, -10, 30, 20],    # level 0: partly outside the image
                    [10, 10, 50, 50],      # level 1: same box as 0 on another level
                    [70, 60, 70.0005, 90]],  # level 1: thinner than min_size
                   "float32")
LOGITS = np.array([[5.0, 4.0, 1.0, 0.5, 3.0, 6.0]], "float32")


def _proposals(logits=LOGITS, deltas=None, **kwargs):
    deltas = np.zeros((1, 6, 4), "float32") if deltas is None else deltas
    settings = {"pre_nms_top_n": 10, "post_nms_top_n": 8, **kwargs}
    out = generate_proposals(logits, deltas, ANCHORS, [4, 2], (80, 100), **settings)
    return {k: _np(v)[0] for k, v in out.items()}


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def test_proposals_by_hand():
    out = _proposals()
    # anchor 1 is suppressed by anchor 0 (same level), anchor 4 is not (other level); the
    # thin anchor 5 is dropped; anchor 3 is clipped to the image.
    assert out["num_proposals"] == 4 and out["valid"].tolist() == [True] * 4 + [False] * 4
    np.testing.assert_allclose(out["boxes"][:4], [[10, 10, 50, 50], [10, 10, 50, 50],
                                                  [60, 10, 90, 40], [0, 0, 30, 20]])
    np.testing.assert_allclose(out["scores"][:4], [_sigmoid(v) for v in (5, 3, 1, 0.5)],
                               rtol=1e-6)
    assert out["levels"].tolist() == [0, 1, 0, 0] + [-1] * 4
    assert not out["boxes"][4:].any() and not out["scores"][4:].any()


def test_proposals_deltas_caps_and_thresholds():
    deltas = np.zeros((1, 6, 4), "float32")
    deltas[0, 2] = [0.5, 0.0, math.log(2.0), 0.0]   # move right by 15 px and double the width
    out = _proposals(deltas=deltas)
    np.testing.assert_allclose(out["boxes"][2], [60, 10, 100, 40], atol=1e-4)   # clipped
    deltas[0, 2] = [0.0, 0.0, 50.0, 0.0]                                      # clamped dw
    wide = generate_proposals(LOGITS, deltas, ANCHORS, [4, 2], (80, 10_000),
                              pre_nms_top_n=10, post_nms_top_n=8)
    half_width = _np(wide["boxes"])[0, 2, 2] - 75.0         # x1 is clipped at 0
    np.testing.assert_allclose(half_width, 15 * math.exp(box_coder.BBOX_XFORM_CLIP), rtol=1e-4)
    assert _proposals(post_nms_top_n=2)["num_proposals"] == 2
    assert _proposals(post_nms_top_n=2)["levels"].tolist() == [0, 1]
    # pre_nms_top_n=1 keeps one anchor per level before NMS: 0 and the best of level 1 (5)
    # which min_size then removes.
    one = _proposals(pre_nms_top_n=1)
    assert one["num_proposals"] == 1 and one["levels"][0] == 0
    # without NMS suppression (threshold 1) anchor 1 survives; a 0.9 score threshold keeps
    # only logits >= 2.2.
    assert _proposals(nms_threshold=1.0)["num_proposals"] == 5
    assert _proposals(score_threshold=0.9)["num_proposals"] == 2
    assert _proposals(min_size=0.0)["num_proposals"] == 5


def test_proposals_per_image_sizes_and_unknown_batch():
    logits = np.concatenate([LOGITS, LOGITS[:, ::-1]])
    deltas = np.zeros((2, 6, 4), "float32")

    @tf.function(input_signature=[tf.TensorSpec((None, 6)), tf.TensorSpec((None, 6, 4)),
                                  tf.TensorSpec((None, 2), tf.int32)])
    def run(logits, deltas, sizes):
        out = generate_proposals(logits, deltas, ANCHORS, [4, 2], sizes, pre_nms_top_n=3,
                                 post_nms_top_n=5)
        assert out["boxes"].shape[1:] == (5, 4) and out["valid"].shape[1:] == (5,)
        return out

    out = {k: v.numpy() for k, v in run(logits, deltas, np.array([[80, 100], [30, 40]],
                                                                  "int32")).items()}
    assert out["boxes"][1].max() <= 40 and out["boxes"][1][:, 3].max() <= 30
    # pre_nms_top_n=3: anchors 0, 1, 2 and 4, 5 compete; 1 is suppressed, 5 too thin
    assert out["num_proposals"].tolist() == [3, 3]


@pytest.mark.parametrize("case", [0, 1, 2])
def test_proposals_match_torchvision_fixture(case):
    fixture = np.load(FIXTURE)
    pre, post, nms, min_size, score = fixture[f"prop{case}_settings"]
    out = generate_proposals(fixture["prop_objectness"], fixture["prop_deltas"],
                             fixture["anchors"], fixture["num_anchors_per_level"].tolist(),
                             fixture[f"prop{case}_image_sizes"], pre_nms_top_n=int(pre),
                             post_nms_top_n=int(post), nms_threshold=float(nms),
                             min_size=float(min_size), score_threshold=float(score))
    np.testing.assert_array_equal(_np(out["num_proposals"]), fixture[f"prop{case}_count"])
    np.testing.assert_allclose(_np(out["boxes"]), fixture[f"prop{case}_boxes"], atol=1e-3)
    np.testing.assert_allclose(_np(out["scores"]), fixture[f"prop{case}_scores"], atol=1e-6)


# --- targets and loss ---------------------------------------------------------------------

TARGET_ANCHORS = np.array([[0, 0, 32, 32], [4, 0, 36, 32], [8, 0, 40, 32], [40, 40, 72, 72],
                           [44, 40, 76, 72], [100, 100, 132, 132]], "float32")


def _targets(boxes, labels, crowd=None):
    labels_out, box_targets = rpn_targets(
        TARGET_ANCHORS, np.asarray(boxes, "float32")[None], np.asarray(labels, "int32")[None],
        gt_crowd=None if crowd is None else np.asarray(crowd)[None])
    return _np(labels_out)[0], _np(box_targets)[0]


def test_targets_thresholds_ties_padding_and_crowd():
    # GT 0 equals anchor 3 (IoU 1; anchor 4 has IoU 0.78 -> object too); GT 1 (10x10) lies
    # inside anchors 0, 1 and 2 with the same IoU 100/1024 each: every tied anchor is an
    # object (torchvision's low-quality rule); the padded row equals anchor 5 and is unused.
    labels, box_targets = _targets([[40, 40, 72, 72], [12, 10, 22, 20], [100, 100, 132, 132]],
                                   [0, 2, -1])
    assert labels.tolist() == [1, 1, 1, 1, 1, 0]
    np.testing.assert_allclose(box_targets[3], 0.0, atol=1e-6)
    np.testing.assert_allclose(box_targets[0], box_coder.encode(
        np.array([12, 10, 22, 20], "float32"), TARGET_ANCHORS[0], box_coder.RPN_VARIANCES),
        atol=1e-6)
    assert not box_targets[5].any()
    # IoUs 0.41 and 0.33 (between 0.3 and 0.7) are ignored, 0.5 is GT 1's best: an object
    labels, _ = _targets([[40, 40, 72, 72], [0, 0, 32, 16]], [0, 0])
    assert labels.tolist() == [1, -1, -1, 1, 1, 0]
    labels, _ = _targets([[0, 0, 32, 16], [0, 0, 32, 32]], [0, 0])
    assert labels.tolist() == [1, 1, -1, 0, 0, 0]            # anchor 1: IoU 0.78 with GT 1
    # a crowd box never matches; anchors 3 and 4 inside it are ignored
    labels, _ = _targets([[0, 0, 32, 32], [38, 38, 80, 80]], [1, 1], crowd=[False, True])
    assert labels.tolist() == [1, 1, -1, -1, -1, 0]


def test_targets_without_ground_truth():
    labels, box_targets = _targets([[0, 0, 32, 32]], [-1])
    assert labels.tolist() == [0] * 6 and not box_targets.any()
    labels, box_targets = rpn_targets(TARGET_ANCHORS, np.zeros((2, 0, 4), "float32"),
                                      np.zeros((2, 0), "int32"))
    assert _np(labels).tolist() == [[0] * 6] * 2 and _np(box_targets).shape == (2, 6, 4)


def _loss_case():
    boxes = np.array([[[40, 40, 72, 72], [12, 10, 22, 20]], [[0, 0, 0, 0], [0, 0, 0, 0]]],
                     "float32")
    labels = np.array([[0, 1], [-1, -1]], "int32")
    return boxes, labels


def test_loss_zero_for_perfect_predictions_positive_otherwise():
    boxes, gt_labels = _loss_case()
    labels, box_targets = (_np(t) for t in rpn_targets(TARGET_ANCHORS, boxes, gt_labels))
    perfect = np.where(labels == 1, 30.0, -30.0).astype("float32")
    loss = rpn_loss(perfect, box_targets, TARGET_ANCHORS, boxes, gt_labels, seed=0)
    assert float(loss["rpn_objectness"]) < 1e-6 and float(loss["rpn_box"]) < 1e-6
    wrong = rpn_loss(-perfect, box_targets + 0.5, TARGET_ANCHORS, boxes, gt_labels, seed=0)
    assert float(wrong["rpn_objectness"]) > 10 and float(wrong["rpn_box"]) > 0.1
    # by hand: 12 sampled anchors (6 per image; objects 0, 1, 2 tied on the small box, 3, 4
    # on the other); each object adds 4 * (0.5 - 0.5 / 9) of smooth L1 at an error of 0.5.
    assert (labels == 1).sum() == 5
    np.testing.assert_allclose(float(wrong["rpn_box"]), 5 * 4 * (0.5 - 0.5 / 9) / 12,
                               rtol=1e-5)
    np.testing.assert_allclose(float(wrong["rpn_objectness"]),
                               30 + math.log1p(math.exp(-30)), rtol=1e-5)


def test_loss_without_ground_truth_has_no_nan():
    objectness = np.random.default_rng(0).normal(size=(2, 6)).astype("float32")
    loss = rpn_loss(objectness, np.ones((2, 6, 4), "float32"), TARGET_ANCHORS,
                    np.zeros((2, 3, 4), "float32"), np.full((2, 3), -1, "int32"), seed=0)
    assert float(loss["rpn_box"]) == 0.0
    assert np.isfinite(float(loss["rpn_objectness"])) and float(loss["rpn_objectness"]) > 0
    empty = rpn_loss(objectness, np.ones((2, 6, 4), "float32"), TARGET_ANCHORS,
                     np.zeros((2, 0, 4), "float32"), np.zeros((2, 0), "int32"), seed=0)
    assert all(np.isfinite(float(v)) for v in empty.values())


def test_loss_samples_at_most_batch_size_per_image():
    boxes, gt_labels = _loss_case()
    labels, _ = (_np(t) for t in rpn_targets(TARGET_ANCHORS, boxes, gt_labels))
    objectness = np.where(labels == 1, -2.0, 2.0).astype("float32")   # all wrong by 2
    loss = rpn_loss(objectness, np.zeros((2, 6, 4), "float32"), TARGET_ANCHORS, boxes,
                    gt_labels, batch_size_per_image=2, positive_fraction=0.5, seed=0)
    # every sampled anchor costs log(1 + e^2), whatever the sample
    np.testing.assert_allclose(float(loss["rpn_objectness"]), math.log1p(math.exp(2.0)),
                               rtol=1e-5)


def test_loss_matches_torchvision_fixture():
    fixture = np.load(FIXTURE)
    labels, box_targets = rpn_targets(fixture["anchors"], fixture["loss_gt_boxes"],
                                      fixture["loss_gt_labels"])
    labels = _np(labels)
    np.testing.assert_array_equal(labels, fixture["loss_labels"])
    np.testing.assert_allclose(np.where((labels == 1)[..., None], _np(box_targets), 0.0),
                               fixture["loss_targets"], atol=1e-5)
    n = fixture["anchors"].shape[0]
    loss = rpn_loss(fixture["prop_objectness"], fixture["prop_deltas"], fixture["anchors"],
                    fixture["loss_gt_boxes"], fixture["loss_gt_labels"],
                    batch_size_per_image=n, seed=0)
    np.testing.assert_allclose(float(loss["rpn_objectness"]), fixture["loss_objectness"],
                               rtol=1e-5)
    np.testing.assert_allclose(float(loss["rpn_box"]), fixture["loss_box"], rtol=1e-5)


def test_one_gradient_step_lowers_the_loss():
    keras.utils.set_random_seed(0)
    image, strides, sizes = (48, 64), (8, 16), (32, 64)
    features = _features(*image, strides=strides, channels=8, batch=2)
    anchors = grid_anchors(image, strides, sizes, TORCHVISION_ASPECT_RATIOS)
    boxes = np.array([[[4, 6, 30, 40], [30, 10, 62, 44]], [[10, 10, 40, 30], [0, 0, 0, 0]]],
                     "float32")
    labels = np.array([[0, 1], [2, -1]], "int32")
    head = RPNHead(num_anchors=3)
    head(features)
    optimizer = keras.optimizers.SGD(learning_rate=0.5)

    def total():
        objectness, deltas = head(features)
        loss = rpn_loss(objectness, deltas, anchors, boxes, labels, batch_size_per_image=32,
                        seed=5)
        return loss["rpn_objectness"] + loss["rpn_box"], loss

    with tf.GradientTape() as tape:
        before, parts = total()
    assert float(parts["rpn_box"]) > 0
    grads = tape.gradient(before, head.trainable_variables)
    assert all(g is not None and np.isfinite(_np(g)).all() for g in grads)
    optimizer.apply_gradients(zip(grads, head.trainable_variables, strict=True))
    after, _ = total()
    assert float(after) < float(before) - 1e-3
