"""SSD: shapes, save round trip, decoder format, and an overfit run scored by COCO AP."""

import keras
import numpy as np
import pytest

from kft.data import detection_batches, make_shapes_detection, read_coco
from kft.eval.coco import COCOEvaluator
from kft.models.backbones.mobilenet import ssdlite_mobilenet_v2
from kft.models.ssd import SSD
from kft.ops.anchors import num_boxes_per_location


def _ssd(num_classes=3, size=128, **kw):
    keras.utils.set_random_seed(0)
    return SSD(ssdlite_mobilenet_v2(image_size=size, alpha=0.35), num_classes, head="depthwise",
               **kw)


def test_outputs_match_the_default_boxes(tmp_path):
    model = _ssd()
    per_loc = num_boxes_per_location(model.aspect_ratios)
    shapes = [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1), (1, 1)]
    assert model.anchors.shape == (sum(h * w * k for (h, w), k in zip(shapes, per_loc,
                                                                      strict=True)), 4)
    x = np.random.default_rng(0).uniform(0, 255, (2, 128, 128, 3)).astype("float32")
    raw = model(x)
    assert tuple(raw["cls_logits"].shape) == (2, model.anchors.shape[0], 4)
    assert tuple(raw["box_deltas"].shape) == (2, model.anchors.shape[0], 4)
    det = model.predict(x, verbose=0)
    assert det["boxes"].shape == (2, 100, 4) and det["labels"].dtype == np.int32
    model.save(tmp_path / "ssd.keras")
    loaded = keras.saving.load_model(tmp_path / "ssd.keras")
    assert isinstance(loaded, SSD) and loaded.head == "depthwise"
    np.testing.assert_allclose(loaded(x)["box_deltas"], raw["box_deltas"], atol=1e-5)
    np.testing.assert_array_equal(loaded.anchors, model.anchors)


def test_decoder_inverts_perfect_predictions():
    """Logits and deltas built from the targets decode back to the ground-truth boxes."""
    from kft.ops.matcher import match, targets

    model = _ssd(num_classes=2)
    gt = np.array([[[20.0, 30.0, 70.0, 90.0], [80.0, 10.0, 120.0, 50.0]]], "float32")
    labels = np.array([[0, 1]], "int32")
    index, _ = match(gt, labels, model.anchors)
    cls_t, box_t, pos = targets(gt, labels, model.anchors, index, model.variances)
    logits = keras.ops.one_hot(keras.ops.maximum(cls_t, 0), 3) * 20.0
    det = model.decoder(logits, box_t)
    n = int(det["num_detections"][0])
    found = {int(lab): keras.ops.convert_to_numpy(det["boxes"][0, i])
             for i, lab in enumerate(keras.ops.convert_to_numpy(det["labels"][0])[:n])}
    assert set(found) == {0, 1}
    np.testing.assert_allclose(found[0], gt[0, 0], atol=1e-3)
    np.testing.assert_allclose(found[1], gt[0, 1], atol=1e-3)


@pytest.fixture(scope="module")
def shapes_split(tmp_path_factory):
    root = make_shapes_detection(tmp_path_factory.mktemp("ssd") / "shapes", num_train=8,
                                 num_val=2, image_size=(128, 128), max_objects=2, seed=3)
    return read_coco(root / "COCO", "train")


def test_loss_falls_on_one_batch_and_the_boxes_follow(shapes_split):
    """The default tier's SSD learning check (the AP overfit run below is in the slow tier):
    20 steps on one batch of 8 images cut the loss below half, and the top detection of
    each image moves onto one of its objects."""
    split = shapes_split
    model = _ssd(num_classes=len(split.class_names))
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.5                 # inference statistics follow 20 steps
    batch = next(iter(detection_batches(split, image_size=128, batch_size=8, max_instances=4,
                                        training=True, seed=0, epochs=1).dataset))
    images, targets = batch
    model.compile(keras.optimizers.Adam(3e-3), jit_compile=False)
    loss = model.fit(images, targets, batch_size=8, epochs=20, verbose=0,
                     shuffle=False).history["loss"]
    assert loss[-1] < 0.5 * loss[0], loss
    from kft.ops.boxes import pairwise_iou

    det = model.predict_on_batch(images)
    hits = 0
    for i in range(8):
        valid = np.asarray(targets["labels"][i]) >= 0
        iou = keras.ops.convert_to_numpy(pairwise_iou(det["boxes"][i, :1],
                                                      targets["boxes"][i][valid]))
        hits += int(iou.max() >= 0.5)
    assert hits >= 6, hits


# slow tier (~130 s); the default tier's SSD learning check is the one-batch test above
@pytest.mark.slow
def test_overfits_a_few_images_to_high_ap(shapes_split):
    split = shapes_split
    model = _ssd(num_classes=len(split.class_names))
    # From scratch and only ~100 steps: keras.applications' BN momentum (0.999) would leave the
    # moving statistics near their initial values, so inference-mode scores would not reflect
    # what was learnt. Pretrained backbones do not have this problem.
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    train = detection_batches(split, image_size=128, batch_size=8, max_instances=4,
                              training=True, seed=0, epochs=100)
    model.compile(keras.optimizers.Adam(3e-3), jit_compile=False)
    first = model.evaluate(train.dataset.take(1), verbose=0, return_dict=True)["loss"]
    model.fit(train.dataset, steps_per_epoch=train.steps, epochs=100, verbose=0, shuffle=False)
    evaluator = COCOEvaluator(split.class_names)
    evaluation = detection_batches(split, image_size=128, batch_size=8, max_instances=4,
                                   training=False, seed=0, with_meta=True)
    for images, _, meta in evaluation.dataset:
        det = model.predict_on_batch(images)
        for i in range(images.shape[0]):
            rec = split.records[int(meta["index"][i])]
            n = int(det["num_detections"][i])
            scale = keras.ops.convert_to_numpy(meta["scale"][i])  # (sy, sx)
            boxes = det["boxes"][i, :n] / np.array([scale[1], scale[0]] * 2, "float32")
            evaluator.add_ground_truth({"image_id": rec.image_id, "height": rec.height,
                                        "width": rec.width, "boxes": rec.boxes,
                                        "labels": rec.labels, "iscrowd": rec.iscrowd})
            evaluator.add_predictions({"image_id": rec.image_id, "boxes": boxes,
                                       "scores": det["scores"][i, :n],
                                       "labels": det["labels"][i, :n]})
    metrics = evaluator.evaluate()
    last = model.evaluate(train.dataset.take(1), verbose=0, return_dict=True)["loss"]
    assert last < first * 0.3
    assert metrics["bbox_AP50"] > 0.8, metrics


def test_predict_with_a_partial_last_batch():
    """Keras retraces predict for a new batch size with every dimension relaxed to None; the
    decoder must still find its static anchor count (the crash of issue 8)."""
    model = _ssd()
    x = np.random.default_rng(1).uniform(0, 255, (5, 128, 128, 3)).astype("float32")
    full = model.predict_on_batch(x[:4])
    part = model.predict_on_batch(x[4:])
    assert part["boxes"].shape == (1, 100, 4) and full["boxes"].shape == (4, 100, 4)
    det = model.predict(x, batch_size=2, verbose=0)
    assert det["scores"].shape == (5, 100)


def test_crowd_objects_are_not_trained_as_positives():
    model = _ssd(num_classes=2)
    x = np.random.default_rng(2).uniform(0, 255, (1, 128, 128, 3)).astype("float32")
    y = {"boxes": np.array([[[20, 30, 70, 90], [80, 10, 120, 50]]], "float32"),
         "labels": np.array([[0, 1]], "int32")}
    raw = model(x)

    def box_loss(**extra):
        model.box_loss_tracker.reset_state()
        model.compute_loss(x, {**y, **extra}, raw)
        return float(model.box_loss_tracker.result())

    both = box_loss()
    one = box_loss(iscrowd=np.array([[False, True]]))
    none = box_loss(iscrowd=np.array([[True, True]]))
    assert none == 0.0 and one > 0.0 and one != both


def test_ssd_is_a_detector_whose_head_can_be_passed_in(tmp_path):
    """The Detector base (detect = network + decode, inference_model) and a head part passed
    in: a custom SSDHead survives keras.saving, a head that does not fit is refused."""
    from kft.models.detector import DETECTION_KEYS, Detector
    from kft.models.heads.ssd import SSDHead

    backbone = ssdlite_mobilenet_v2(image_size=96, alpha=0.35)
    ratios = ((2, 3),) * 6
    head = SSDHead(3, num_boxes_per_location(ratios), kind="conv", prior_probability=0.2,
                   name="ssd_head")
    keras.utils.set_random_seed(1)
    model = SSD(backbone, 3, aspect_ratios=ratios, head=head)
    assert isinstance(model, Detector) and model.resize == "fixed"
    assert model.ssd_head is head and model.input_size == (96, 96)
    x = np.random.default_rng(1).uniform(0, 255, (2, 96, 96, 3)).astype("float32")
    det = model.detect(x)
    assert set(det) == set(DETECTION_KEYS)
    functional = model.inference_model()
    np.testing.assert_allclose(functional(x)["scores"], det["scores"], atol=1e-5)
    # the prior 0.2 (not the default 0.01) is in the class bias: mean foreground score
    probs = keras.ops.softmax(model(x)["cls_logits"], axis=-1)[..., 1:]
    assert float(keras.ops.mean(probs)) > 0.1
    model.save(tmp_path / "custom_head.keras")
    loaded = keras.saving.load_model(tmp_path / "custom_head.keras")
    assert loaded.ssd_head.prior_probability == 0.2 and loaded.ssd_head.kind == "conv"
    np.testing.assert_allclose(loaded(x)["cls_logits"], model(x)["cls_logits"], atol=1e-5)
    with pytest.raises(ValueError, match="predicts 5 classes"):
        SSD(ssdlite_mobilenet_v2(image_size=96, alpha=0.35), 3, aspect_ratios=ratios,
            head=SSDHead(5, num_boxes_per_location(ratios)))
