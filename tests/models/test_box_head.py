import math
import tempfile
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from kft.models.heads.box import (
    BoxDecoder,
    BoxPredictor,
    ConvFCHead,
    TwoMLPHead,
    box_head_loss,
    map_box_head,
    roi_targets,
)
from kft.models.weights import WeightsError, transfer
from kft.ops import box_coder

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = np.load(ROOT / "tests" / "fixtures" / "box_head_torchvision.npz")
IMAGE_SIZE = tuple(int(s) for s in FIXTURE["image_size"])
NUM_CLASSES = int(FIXTURE["num_classes"])
TF_ONLY = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                             reason="TensorFlow graph / TFLite path")


def _seeded():
    import seeded_state_dict  # tools/, on pytest's pythonpath

    return seeded_state_dict


def _state_dict(version):
    seeded = _seeded()
    spec = seeded.unpack_spec(FIXTURE[f"{version}_spec_keys"], FIXTURE[f"{version}_spec_shapes"])
    return seeded.draw(spec, seed=7)


def _np(x):
    return ops.convert_to_numpy(x)


def _load(mapping, *layers):
    for layer in layers:
        report = transfer(layer, mapping)
        assert not report["new"] and not report["shape_mismatch"], report


def _heads(version):
    rois = FIXTURE["rois_in"]
    if version == "v1":
        head = TwoMLPHead(int(FIXTURE["representation_size"]))
    else:
        head = ConvFCHead([int(d) for d in FIXTURE["v2_conv_dims"]],
                          [int(d) for d in FIXTURE["v2_fc_dims"]])
    head.build((None,) + rois.shape[1:])
    predictor = BoxPredictor(NUM_CLASSES)
    predictor.build(head.compute_output_shape((None,) + rois.shape[1:]))
    return head, predictor


def test_fixture_covers_the_hard_cases():
    assert (~FIXTURE["sample_proposal_valid"]).sum() > 10                  # interleaved padding
    assert (FIXTURE["sample_gt_labels"][1] < 0).all()                      # an image without gt
    assert (FIXTURE["sample_gt_labels"][0] < 0).any()
    valid = FIXTURE["post_valid"]
    dw = FIXTURE["post_deltas"][..., 6][valid] / 5.0
    assert (dw > box_coder.BBOX_XFORM_CLIP).sum() > 5                      # clamped widths
    widths = np.diff(FIXTURE["post_proposals"][..., ::2], axis=-1)[..., 0][valid]
    assert (widths < 1e-2).sum() >= 4                                      # min_size drops
    assert FIXTURE["post1_count"].tolist() == [7, 7]                       # the top-k cut


# --- layers against torchvision ---------------------------------------------------------------

@pytest.mark.parametrize("version", ["v1", "v2"])
def test_heads_and_predictor_equal_torchvision(version):
    head, predictor = _heads(version)
    mapping, used = map_box_head(_state_dict(version), head, predictor)
    assert sorted(used) == sorted(str(k) for k in FIXTURE[f"{version}_spec_keys"])
    _load(mapping, head, predictor)
    rois = FIXTURE["rois_in"]
    features = head(rois, training=False)
    logits, deltas = predictor(features)
    np.testing.assert_allclose(_np(features), FIXTURE[f"{version}_features"], atol=2e-5)
    np.testing.assert_allclose(_np(logits), FIXTURE[f"{version}_logits"], atol=2e-5)
    np.testing.assert_allclose(_np(deltas), FIXTURE[f"{version}_deltas"], atol=2e-5)
    # [B, R, 7, 7, C] input gives the same rows, batched
    batched = _np(head(rois.reshape(2, 5, *rois.shape[1:]), training=False))
    assert batched.shape == (2, 5, features.shape[-1])
    np.testing.assert_allclose(batched.reshape(10, -1), _np(features), atol=1e-5)


def test_flatten_order_matters():
    """Without map_box_head's row permutation torchvision's fc6 gives other numbers."""
    head, predictor = _heads("v1")
    state = _state_dict("v1")
    _load(map_box_head(state, head, predictor)[0], head, predictor)
    weight = state["roi_heads.box_head.fc6.weight"]
    head.fc6.set_weights([weight.T, state["roi_heads.box_head.fc6.bias"]])
    got = _np(head(FIXTURE["rois_in"]))
    assert np.abs(got - FIXTURE["v1_features"]).max() > 1e-2


def test_map_box_head_strict_head_lenient_predictor():
    head, _ = _heads("v1")
    predictor = BoxPredictor(NUM_CLASSES + 1)                      # another class count
    predictor.build((None, int(FIXTURE["representation_size"])))
    state = _state_dict("v1")
    mapping, used = map_box_head(state, head, predictor)
    report = transfer(predictor, mapping)
    assert len(report["shape_mismatch"]) == 4 and not report["loaded"]
    assert len(transfer(head, mapping)["loaded"]) == 4
    with pytest.raises(WeightsError, match="fc7"):
        map_box_head({k: v for k, v in state.items() if "fc7.bias" not in k}, head)
    with pytest.raises(WeightsError, match="no kft variable"):
        map_box_head({**state, "roi_heads.box_head.fc8.weight": np.zeros(3)}, head)
    small, _ = _heads("v1")
    wrong = {**state, "roi_heads.box_head.fc7.weight": np.zeros((5, 5), "float32")}
    with pytest.raises(WeightsError, match="fc7.weight"):
        map_box_head(wrong, small)
    conv = ConvFCHead([int(d) for d in FIXTURE["v2_conv_dims"]][:3],
                      [int(d) for d in FIXTURE["v2_fc_dims"]])
    conv.build((None,) + FIXTURE["rois_in"].shape[1:])
    with pytest.raises(WeightsError):                               # 3 convs for a 4-conv head
        map_box_head(_state_dict("v2"), conv)


def test_initialisation_like_torch_linear_and_kaiming():
    head = TwoMLPHead(64)
    head.build((None, 7, 7, 16))
    kernel = _np(head.fc6.kernel)
    bound = 1 / math.sqrt(7 * 7 * 16)
    assert kernel.shape == (784, 64) and np.abs(kernel).max() <= bound
    assert abs(kernel.std() - bound / math.sqrt(3)) < 0.1 * bound
    conv = ConvFCHead((32,), (24,))
    conv.build((None, 7, 7, 16))
    std = _np(conv.convs[0].kernel).std()
    assert abs(std - math.sqrt(2 / (9 * 32))) < 0.01 and not conv.convs[0].use_bias
    assert conv.norms[0].epsilon == 1e-5
    predictor = BoxPredictor(5)
    predictor.build((None, 24))
    assert _np(predictor.cls_score.kernel).shape == (24, 6)
    assert _np(predictor.bbox_pred.kernel).shape == (24, 24)
    assert np.abs(_np(predictor.bbox_pred.bias)).max() <= 1 / math.sqrt(24)


# --- sampling against torchvision -------------------------------------------------------------

def _tv_order(valid, gt_labels, indices):
    """torchvision's candidate index of kft's candidate ``indices`` of one image: the valid
    proposals in order, then the real ground truth in order."""
    num_props = len(valid)
    props = np.cumsum(valid) - 1
    real = gt_labels >= 0
    gts = valid.sum() + np.cumsum(real) - 1
    return np.where(indices < num_props, props[np.minimum(indices, num_props - 1)],
                    gts[np.maximum(indices - num_props, 0)])


def test_roi_targets_equal_torchvision():
    proposals, valid = FIXTURE["sample_proposals"], FIXTURE["sample_proposal_valid"]
    gt_boxes, gt_labels = FIXTURE["sample_gt_boxes"], FIXTURE["sample_gt_labels"]
    size = proposals.shape[1] + gt_boxes.shape[1] + 10            # room for all: none random
    out = {k: _np(v) for k, v in roi_targets(proposals, valid, gt_boxes, gt_labels,
                                             batch_size_per_image=size,
                                             positive_fraction=1.0, seed=3).items()}
    starts = np.concatenate([[0], np.cumsum(FIXTURE["sample_count"])])
    worst = 0.0
    for b in range(2):
        tv = slice(starts[b], starts[b + 1])
        ok = out["valid"][b]
        assert ok.sum() == FIXTURE["sample_count"][b]
        order = _tv_order(valid[b], gt_labels[b], out["indices"][b][ok])
        rank = np.argsort(order)
        np.testing.assert_array_equal(order[rank], np.arange(ok.sum()))
        labels = out["labels"][b][ok][rank]
        np.testing.assert_array_equal(labels, FIXTURE["sample_labels"][tv])
        np.testing.assert_allclose(out["rois"][b][ok][rank], FIXTURE["sample_rois"][tv],
                                   atol=1e-6)
        pos = labels > 0
        targets = out["targets"][b][ok][rank]
        np.testing.assert_allclose(targets[pos], FIXTURE["sample_targets"][tv][pos], atol=2e-5)
        worst = max(worst, np.abs(targets[pos] - FIXTURE["sample_targets"][tv][pos]).max(
            initial=0.0))
        assert not targets[~pos].any()
        matched = out["matched_gt_index"][b][ok][rank]
        real_rows = np.flatnonzero(gt_labels[b] >= 0)
        if len(real_rows):
            np.testing.assert_array_equal(matched[pos],
                                          real_rows[FIXTURE["sample_matched"][tv][pos]])
        assert (matched[~pos] == -1).all()
        # padding slots
        assert (out["labels"][b][~ok] == -1).all() and not out["rois"][b][~ok].any()
    assert (FIXTURE["sample_labels"] > 0).sum() > 10 and worst < 2e-5


def test_roi_targets_sampling_caps_and_padding():
    rng = np.random.default_rng(0)
    proposals = np.tile(np.array([[10, 10, 40, 40]], "float32"), (2, 30, 1))
    proposals[:, 15:] += 20                                        # IoU 1/7 with the box
    valid = np.ones((2, 30), bool)
    valid[:, 25:] = False
    gt = np.array([[[10, 10, 40, 40], [0, 0, 0, 0]]] * 2, "float32")
    labels = np.array([[2, -1], [-1, -1]], "int32")
    out = roi_targets(proposals, valid, gt, labels, batch_size_per_image=16,
                      positive_fraction=0.25, seed=int(rng.integers(100)))
    out = {k: _np(v) for k, v in out.items()}
    # image 0: 15 + 1 (gt) positives, 10 negatives: 4 positives (int(16 * 0.25)) + 10 negatives
    assert (out["labels"][0] == 3).sum() == 4 and (out["labels"][0] == 0).sum() == 10
    assert out["valid"][0].sum() == 14 and (out["labels"][0][~out["valid"][0]] == -1).all()
    # image 1 (no ground truth): 25 valid proposals, 16 negatives, none invalid
    assert out["valid"][1].all() and (out["labels"][1] == 0).all()
    assert (out["indices"][1] < 25).all()
    taken = out["indices"][0][out["labels"][0] == 3]               # proposals 0..14 or the gt
    assert ((taken < 15) | (taken == 30)).all() and len(set(taken.tolist())) == 4
    assert set(out["indices"][0][out["labels"][0] == 0].tolist()) == set(range(15, 25))
    assert (out["matched_gt_index"][0][out["labels"][0] > 0] == 0).all()


def test_roi_targets_crowd_and_empty():
    proposals = np.array([[[10, 10, 40, 40], [12, 12, 30, 30], [60, 60, 90, 90],
                           [61, 61, 89, 89]]], "float32")
    gt = np.array([[[60, 60, 90, 90], [0, 0, 50, 50]]], "float32")
    labels = np.array([[0, 1]], "int32")
    crowd = np.array([[False, True]])
    out = {k: _np(v) for k, v in roi_targets(proposals, None, gt, labels, gt_crowd=crowd,
                                             batch_size_per_image=8, positive_fraction=1.0,
                                             seed=0).items()}
    sampled = {int(i): int(c) for i, c, v in zip(out["indices"][0], out["labels"][0],
                                                 out["valid"][0], strict=True) if v}
    # proposals 0, 1 lie on the crowd box: ignored; 2, 3 and the real gt (4) are class 0;
    # the crowd row (5) is no candidate
    assert sampled == {2: 1, 3: 1, 4: 1}
    empty = roi_targets(proposals, None, np.zeros((1, 0, 4), "float32"),
                        np.zeros((1, 0), "int32"), batch_size_per_image=8)
    assert (_np(empty["labels"])[0][:4] == 0).all() and _np(empty["valid"]).sum() == 4


# --- losses ------------------------------------------------------------------------------------

def _loss_batch(size=30, seed=0):
    """torchvision's loss rows placed into [2, size] slots, padding with garbage."""
    rng = np.random.default_rng(seed)
    counts = FIXTURE["sample_count"]
    k = NUM_CLASSES + 1
    logits = rng.normal(0, 5, (2, size, k)).astype("float32")
    deltas = rng.normal(0, 5, (2, size, 4 * k)).astype("float32")
    labels = np.full((2, size), -1, "int32")
    targets = rng.normal(0, 5, (2, size, 4)).astype("float32")
    valid = np.zeros((2, size), bool)
    start = 0
    for b, n in enumerate(counts):
        slots = np.sort(rng.choice(size, n, replace=False))
        rows = slice(start, start + n)
        logits[b, slots], deltas[b, slots] = FIXTURE["loss_logits"][rows], FIXTURE["loss_deltas"][rows]
        labels[b, slots], targets[b, slots] = FIXTURE["sample_labels"][rows], FIXTURE["sample_targets"][rows]
        valid[b, slots] = True
        start += n
    return logits, deltas, labels, targets, valid


def test_box_head_loss_equals_fastrcnn_loss():
    logits, deltas, labels, targets, valid = _loss_batch(size=40)
    out = box_head_loss(logits, deltas, labels, targets, valid)
    cls, box = float(out["cls_loss"]), float(out["box_loss"])
    assert abs(cls - float(FIXTURE["loss_cls"])) < 1e-5
    assert abs(box - float(FIXTURE["loss_box"])) < 1e-5
    assert abs(float(out["loss"]) - cls - box) < 1e-6
    weighted = box_head_loss(logits, deltas, labels, targets, valid, cls_weight=1.5,
                             loc_weight=0.5)
    assert abs(float(weighted["cls_loss"]) - 1.5 * cls) < 1e-5
    assert abs(float(weighted["box_loss"]) - 0.5 * box) < 1e-5


def test_ohem_keeps_the_hardest():
    k = 3
    logits = np.zeros((1, 10, k), "float32")
    logits[0, :, 0] = np.arange(10, dtype="float32")              # background ever more sure
    labels = np.array([[0, 0, 0, 0, 0, 1, 0, 0, 0, -1]], "int32")
    valid = labels >= 0
    deltas = np.zeros((1, 10, 4 * k), "float32")
    targets = np.zeros((1, 10, 4), "float32")
    ce = -np.log(np.exp(logits[0, :, 0] * (labels[0] <= 0)) / np.exp(logits[0]).sum(-1))
    ce = np.where(labels[0] == 1, np.log(np.exp(logits[0]).sum(-1)) - logits[0, :, 1], ce)
    out = box_head_loss(logits, deltas, labels, targets, valid, ohem_fraction=0.3)
    # 9 valid RoIs -> round(2.7) = 3 hardest: the positive (5, CE ~ 5) and RoIs 0, 1
    hardest = np.argsort(-np.where(valid[0], ce, -np.inf))[:3]
    assert sorted(hardest.tolist()) == [0, 1, 5]
    np.testing.assert_allclose(float(out["cls_loss"]), ce[hardest].mean(), rtol=1e-5)
    plain = box_head_loss(logits, deltas, labels, targets, valid)
    np.testing.assert_allclose(float(plain["cls_loss"]), ce[valid[0]].mean(), rtol=1e-5)


@pytest.mark.parametrize("options", [dict(cls_loss="focal"), dict(box_loss="giou"),
                                     dict(cls_loss="focal", box_loss="giou",
                                          ohem_fraction=0.5)])
def test_focal_and_giou_decrease_on_a_toy_problem(options, seed=0):
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(1)
    rois = np.array([[[10, 10, 30, 30], [40, 20, 70, 50], [5, 5, 60, 60], [0, 0, 9, 9]]],
                    "float32")
    gt = np.array([[[12, 8, 34, 30], [38, 22, 74, 48], [0, 0, 0, 0], [0, 0, 0, 0]]], "float32")
    labels = np.array([[1, 2, 0, 0]], "int32")
    targets = _np(box_coder.encode(gt, rois, box_coder.variances_from_weights((10, 10, 5, 5))))
    targets = np.where(labels[..., None] > 0, targets, 0.0).astype("float32")
    valid = np.ones((1, 4), bool)
    features = rng.normal(size=(1, 4, 8)).astype("float32")
    predictor = BoxPredictor(2)
    predictor.build((None, 4, 8))
    optimizer = keras.optimizers.Adam(0.05)
    optimizer.build(predictor.trainable_variables)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            logits, deltas = predictor(features)
            out = box_head_loss(logits, deltas, labels, targets, valid, rois=rois, **options)
        grads = tape.gradient(out["loss"], predictor.trainable_variables)
        optimizer.apply_gradients(zip(grads, predictor.trainable_variables, strict=True))
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads])
        return out["cls_loss"], out["box_loss"], finite

    history = []
    for _ in range(30):
        cls, box, finite = step()
        assert bool(finite)
        history.append((float(cls), float(box)))
    history = np.array(history)
    assert np.isfinite(history).all()
    assert history[-1, 0] < 0.5 * history[0, 0] and history[-1, 1] < 0.5 * history[0, 1]


def test_giou_needs_rois_and_options_are_checked():
    args = (np.zeros((1, 2, 3), "float32"), np.zeros((1, 2, 12), "float32"),
            np.zeros((1, 2), "int32"), np.zeros((1, 2, 4), "float32"), np.ones((1, 2), bool))
    with pytest.raises(ValueError, match="rois"):
        box_head_loss(*args, box_loss="giou")
    with pytest.raises(ValueError, match="cls_loss"):
        box_head_loss(*args, cls_loss="bce")
    out = box_head_loss(*args[:4], np.zeros((1, 2), bool))         # nothing valid: 0, finite
    assert float(out["loss"]) == 0.0


# --- decoder against torchvision ---------------------------------------------------------------

@pytest.mark.parametrize("case", [0, 1])
def test_decoder_equals_postprocess_detections(case):
    score, nms, per_img = FIXTURE[f"post{case}_settings"]
    decoder = BoxDecoder(NUM_CLASSES, IMAGE_SIZE, score_threshold=score, nms_threshold=nms,
                         max_detections=int(per_img))
    out = decoder(FIXTURE["post_logits"], FIXTURE["post_deltas"], FIXTURE["post_proposals"],
                  FIXTURE["post_valid"])
    out = {k: _np(v) for k, v in out.items()}
    count = FIXTURE[f"post{case}_count"]
    np.testing.assert_array_equal(out["num_detections"], count)
    labels = np.where(np.arange(int(per_img))[None] < count[:, None],
                      FIXTURE[f"post{case}_labels"] - 1, -1)
    np.testing.assert_array_equal(out["labels"], labels)
    np.testing.assert_allclose(out["scores"], FIXTURE[f"post{case}_scores"], atol=1e-6)
    np.testing.assert_allclose(out["boxes"], FIXTURE[f"post{case}_boxes"], atol=2e-4)


def test_decoder_never_uses_invalid_proposals():
    logits = FIXTURE["post_logits"]
    valid = FIXTURE["post_valid"]
    decoder = BoxDecoder(NUM_CLASSES, IMAGE_SIZE, max_detections=200)
    out = decoder(logits, FIXTURE["post_deltas"], FIXTURE["post_proposals"], valid)
    all_in = decoder(logits, FIXTURE["post_deltas"], FIXTURE["post_proposals"], None)
    # invalid rows carry class-0 logits of 12: without the mask they dominate
    assert _np(all_in["scores"])[:, 0].min() > 0.9999 and _np(out["scores"])[:, 0].max() < 0.9999
    assert (_np(out["num_detections"]) == FIXTURE["post0_count"]).all()


def test_decoder_keeps_float32_under_mixed_precision():
    args = (FIXTURE["post_logits"], FIXTURE["post_deltas"], FIXTURE["post_proposals"],
            FIXTURE["post_valid"])
    keras.config.set_dtype_policy("mixed_float16")
    out = BoxDecoder(NUM_CLASSES, IMAGE_SIZE)(*args)
    assert out["boxes"].dtype == "float32"
    np.testing.assert_allclose(_np(out["boxes"]), FIXTURE["post0_boxes"], atol=2e-4)


def test_decoder_per_class_cap_and_clip():
    proposals = np.array([[[10, 10, 30, 30], [11, 11, 31, 31], [50, 40, 70, 60],
                           [-5, -5, 20, 20]]], "float32")
    logits = np.array([[[0, 5, 0], [0, 4, 0], [0, 3, 3.5], [0, 0, 6]]], "float32")
    deltas = np.zeros((1, 4, 12), "float32")
    decoder = BoxDecoder(2, (64, 64), max_detections=5, max_per_class=1)
    out = {k: _np(v) for k, v in decoder(logits, deltas, proposals).items()}
    assert out["num_detections"][0] == 2 and sorted(out["labels"][0][:2].tolist()) == [0, 1]
    np.testing.assert_allclose(out["boxes"][0][0], [0, 0, 20, 20])   # clipped, class 1 first
    small = decoder(logits, deltas, proposals, image_size=np.array([[15, 25]], "int32"))
    assert _np(small["boxes"]).max(axis=(0, 1)).tolist() <= [25, 15, 25, 15]
    assert _np(small["boxes"])[0, :, 2].max() == 25 and _np(small["boxes"])[0, :, 3].max() == 15
    free = {k: _np(v) for k, v in BoxDecoder(2, (64, 64), max_detections=5)(
        logits, deltas, proposals).items()}
    # no cap: proposal 1 is suppressed by 0 (IoU 0.82), proposal 2 kept for both classes
    assert free["num_detections"][0] == 4


# --- graph, config, export ----------------------------------------------------------------------

def test_static_shapes_under_tf_function_with_unknown_batch():
    head, predictor = TwoMLPHead(16), BoxPredictor(NUM_CLASSES)
    decoder = BoxDecoder(NUM_CLASSES, IMAGE_SIZE, max_detections=9)
    rois_shape = (None, 12, 7, 7, 4)
    seed = keras.random.SeedGenerator(1)
    head.build(rois_shape)
    predictor.build(head.compute_output_shape(rois_shape))

    @tf.function(input_signature=[tf.TensorSpec(rois_shape, tf.float32),
                                  tf.TensorSpec((None, 12, 4), tf.float32),
                                  tf.TensorSpec((None, 12), tf.bool),
                                  tf.TensorSpec((None, 3, 4), tf.float32),
                                  tf.TensorSpec((None, 3), tf.int32)], jit_compile=False)
    def step(pooled, proposals, valid, gt_boxes, gt_labels):
        sample = roi_targets(proposals, valid, gt_boxes, gt_labels, batch_size_per_image=8,
                             seed=seed)
        logits, deltas = predictor(head(pooled))
        loss = box_head_loss(logits[:, :8], deltas[:, :8], sample["labels"], sample["targets"],
                             sample["valid"], rois=sample["rois"], box_loss="giou",
                             ohem_fraction=0.3)
        return sample, loss, decoder(logits, deltas, proposals, valid)

    concrete = step.get_concrete_function()
    sample, loss, det = concrete.structured_outputs
    assert sample["rois"].shape.as_list() == [None, 8, 4]
    assert sample["labels"].shape.as_list() == [None, 8]
    assert det["boxes"].shape.as_list() == [None, 9, 4]
    assert det["scores"].shape.as_list() == [None, 9]
    assert det["num_detections"].shape.as_list() == [None]
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 40, (3, 12, 2))
    proposals = np.concatenate([xy, xy + rng.uniform(4, 20, (3, 12, 2))], -1).astype("float32")
    gt = proposals[:, :3] + 1.0
    labels = np.array([[0, 2, -1], [-1, -1, -1], [1, 1, 0]], "int32")
    sample, loss, det = step(rng.normal(size=(3, 12, 7, 7, 4)).astype("float32"), proposals,
                             np.ones((3, 12), bool), gt, labels)
    assert np.isfinite(float(loss["loss"])) and _np(det["boxes"]).shape == (3, 9, 4)
    assert (_np(sample["labels"])[1] <= 0).all()                    # empty image: background


def test_xla_roi_targets_and_loss():
    @tf.function(jit_compile=True, input_signature=[
        tf.TensorSpec((None, 10, 4), tf.float32), tf.TensorSpec((None, 2, 4), tf.float32),
        tf.TensorSpec((None, 2), tf.int32), tf.TensorSpec((None, 6, 3), tf.float32),
        tf.TensorSpec((None, 6, 12), tf.float32)])
    def step(proposals, gt_boxes, gt_labels, logits, deltas):
        sample = roi_targets(proposals, None, gt_boxes, gt_labels, batch_size_per_image=6,
                             seed=5)
        return box_head_loss(logits, deltas, sample["labels"], sample["targets"],
                             sample["valid"])["loss"]

    rng = np.random.default_rng(2)
    xy = rng.uniform(0, 40, (2, 10, 2))
    proposals = np.concatenate([xy, xy + 15], -1).astype("float32")
    value = step(proposals, proposals[:, :2] + 0.5, np.array([[0, 1], [-1, -1]], "int32"),
                 rng.normal(size=(2, 6, 3)).astype("float32"),
                 rng.normal(size=(2, 6, 12)).astype("float32"))
    assert np.isfinite(float(value))


def test_config_round_trip():
    for layer in (TwoMLPHead(512, name="h"), ConvFCHead((8, 8), (32,), norm=None),
                  BoxPredictor(4), BoxDecoder(4, (96, 160), score_threshold=0.1,
                                              nms_threshold=0.4, max_detections=20,
                                              max_per_class=5)):
        config = layer.get_config()
        clone = type(layer).from_config(config)
        assert clone.get_config() == config
        restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
        assert type(restored) is type(layer) and restored.get_config() == config


def test_saved_model_round_trip(tmp_path):
    inputs = keras.Input((6, 7, 7, 4))
    features = ConvFCHead((4,), (8,))(inputs)
    outputs = BoxPredictor(2)(features)
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(0).normal(size=(2, 6, 7, 7, 4)).astype("float32")
    model.save(tmp_path / "m.keras")
    restored = keras.saving.load_model(tmp_path / "m.keras")
    for a, b in zip(model(x), restored(x), strict=True):
        np.testing.assert_allclose(_np(a), _np(b), atol=1e-6)


@TF_ONLY
def test_decoder_tflite_builtins_round_trip():
    from kft.export.core import interpreter_class

    decoder = BoxDecoder(NUM_CLASSES, IMAGE_SIZE, max_detections=20)
    arrays = [FIXTURE["post_logits"], FIXTURE["post_deltas"], FIXTURE["post_proposals"],
              FIXTURE["post_valid"].astype("float32")]
    names = ("logits", "deltas", "proposals", "valid")

    def serve(logits, deltas, proposals, valid):
        return decoder(logits, deltas, proposals, valid > 0.5)

    archive = keras.export.ExportArchive()
    archive.track(decoder)
    archive.add_endpoint("serve", serve, input_signature=[
        tf.TensorSpec(a.shape, tf.float32, name=n) for a, n in zip(arrays, names, strict=True)])
    with tempfile.TemporaryDirectory() as directory:
        archive.write_out(directory, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(directory)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        flatbuffer = converter.convert()
    interpreter = interpreter_class()(model_content=flatbuffer)
    op_names = {op["op_name"] for op in interpreter._get_ops_details()}
    assert "NON_MAX_SUPPRESSION_V5" in op_names and not any("FLEX" in o for o in op_names)
    runner = interpreter.get_signature_runner(next(iter(interpreter.get_signature_list())))
    got = runner(**dict(zip(names, arrays, strict=True)))
    expected = {k: _np(v) for k, v in serve(*arrays).items()}
    np.testing.assert_array_equal(got["num_detections"], expected["num_detections"])
    np.testing.assert_array_equal(got["labels"], expected["labels"])
    np.testing.assert_allclose(got["scores"], expected["scores"], atol=1e-5)
    np.testing.assert_allclose(got["boxes"], expected["boxes"], atol=1e-3)
