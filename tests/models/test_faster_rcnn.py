"""FasterRCNN composition: shapes, training from a user's script, saving, class re-init."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

from kft.models.faster_rcnn import ARCHS, ArchError, FasterRCNN
from kft.ops.boxes import pairwise_iou

SIZE = (64, 96)          # multiples of 32, not square
SMALL = {"rpn_pre_nms_top_n": (300, 150), "rpn_post_nms_top_n": (120, 60),
         "rpn_batch_size_per_image": 64, "box_batch_size_per_image": 48,
         "representation_size": 64, "box_score_threshold": 0.05}


def tiny(num_classes=3, seed=0, **kw):
    keras.utils.set_random_seed(seed)
    return FasterRCNN.from_arch("fasterrcnn_resnet_tiny_fpn", num_classes, image_size=SIZE,
                                seed=seed, **{**SMALL, **kw})


def scene(seed=0):
    """Two images with bright boxes of three colours (class = colour) on a noisy background."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 60, (2, *SIZE, 3)).astype("float32")
    boxes = np.zeros((2, 4, 4), "float32")
    labels = np.full((2, 4), -1, "int32")
    layout = [[(4, 6, 40, 34, 0), (50, 20, 90, 60, 2)], [(10, 30, 46, 62, 1)]]
    for i, objects in enumerate(layout):
        for j, (x1, y1, x2, y2, c) in enumerate(objects):
            colour = np.zeros(3, "float32")
            colour[c] = 250.0
            images[i, y1:y2, x1:x2] = colour
            boxes[i, j] = (x1, y1, x2, y2)
            labels[i, j] = c
    return images, {"boxes": boxes, "labels": labels}


def test_first_stage_outputs_and_detections_have_static_shapes():
    model = tiny()
    images, _ = scene()
    raw = model(images)
    n = sum(model.num_anchors_per_level)
    assert model.pyramid_names == ("P2", "P3", "P4", "P5")
    assert model.anchors.shape == (n, 4) and raw["objectness"].shape == (2, n)
    assert raw["rpn_deltas"].shape == (2, n, 4)
    assert raw["proposals"].shape == (2, 60, 4) and raw["proposal_valid"].shape == (2, 60)
    det = model.predict(images, verbose=0)
    assert det["boxes"].shape == (2, 100, 4) and det["scores"].shape == (2, 100)
    assert det["labels"].shape == (2, 100) and det["num_detections"].shape == (2,)
    # padding rows are marked, real rows hold foreground labels inside the image
    for i in range(2):
        k = int(det["num_detections"][i])
        assert (det["labels"][i, k:] == -1).all()
        assert ((det["labels"][i, :k] >= 0) & (det["labels"][i, :k] < 3)).all()
        b = det["boxes"][i, :k]
        assert (b[:, 0] >= 0).all() and (b[:, 2] <= SIZE[1]).all() and (b[:, 3] <= SIZE[0]).all()


def test_fit_learns_one_batch_from_a_users_script():
    model = tiny(num_classes=3, seed=1)
    images, targets = scene()
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    first = model.evaluate(images, targets, verbose=0, return_dict=True)
    history = model.fit(images, targets, epochs=60, batch_size=2, verbose=0)
    losses = history.history
    for key in ("rpn_objectness", "rpn_box", "roi_cls", "roi_box"):
        assert key in losses
    assert losses["loss"][-1] < 0.35 * losses["loss"][0], losses["loss"][::10]
    after = model.evaluate(images, targets, verbose=0, return_dict=True)
    assert after["loss"] < first["loss"]
    det = model.predict(images, verbose=0)
    for i in range(2):
        real = targets["labels"][i] >= 0
        gt, gt_labels = targets["boxes"][i][real], targets["labels"][i][real]
        k = int(det["num_detections"][i])
        assert k > 0
        iou = np.asarray(pairwise_iou(ops.convert_to_tensor(gt),
                                      ops.convert_to_tensor(det["boxes"][i, :k])))
        for g in range(len(gt)):          # every object found with its class at IoU >= 0.5
            hits = (iou[g] >= 0.5) & (det["labels"][i, :k] == gt_labels[g])
            assert hits.any(), (i, g, iou[g].max())


def test_crowd_and_empty_ground_truth_give_finite_losses():
    model = tiny()
    images, targets = scene()
    raw = model(images, training=True)
    crowd = np.zeros_like(targets["labels"], dtype=bool)
    crowd[0, 0] = True
    empty = {"boxes": np.zeros((2, 0, 4), "float32"), "labels": np.zeros((2, 0), "int32")}
    for y in ({**targets, "iscrowd": crowd}, empty,
              {"boxes": targets["boxes"], "labels": np.full_like(targets["labels"], -1)}):
        loss = float(model.compute_loss(images, y, raw, training=True))
        assert np.isfinite(loss) and loss > 0


def test_config_and_keras_file_round_trip(tmp_path):
    model = tiny(cls_weight=1.5, ohem_fraction=0.3)
    images, _ = scene()
    path = tmp_path / "frcnn.keras"
    model.save(path)
    from kft.saving import load_model

    loaded = load_model(path)
    assert isinstance(loaded, FasterRCNN) and loaded.arch == "fasterrcnn_resnet_tiny_fpn"
    assert loaded.get_config()["cls_weight"] == 1.5 and loaded.ohem_fraction == 0.3
    a, b = model.predict(images, verbose=0), loaded.predict(images, verbose=0)
    np.testing.assert_array_equal(a["num_detections"], b["num_detections"])
    np.testing.assert_allclose(a["boxes"], b["boxes"], atol=1e-4)
    np.testing.assert_allclose(a["scores"], b["scores"], atol=1e-5)


def test_load_from_keeps_the_box_predictor_new_for_other_classes(tmp_path):
    import json

    from kft.models.weights import load_from

    source = tiny(3)
    source.save(tmp_path / "model.keras")
    (tmp_path / "class_names.json").write_text(json.dumps(["a", "b", "c"]))
    target = tiny(3, seed=5)
    report = load_from(target, str(tmp_path), class_names=["x", "y", "z"])
    assert sorted(report["reinitialised"]) == sorted(
        v.path for v in target.weights if v.path.startswith("box_predictor/"))
    assert any(p.startswith("rpn_head/") for p in report["loaded"])
    # another count: the predictor is a shape mismatch, everything else loads
    report = load_from(tiny(5, seed=6), str(tmp_path), class_names=list("vwxyz"))
    assert {m["path"].split("/")[0] for m in report["shape_mismatch"]} == {"box_predictor"}


def test_bad_settings_are_clear_errors():
    with pytest.raises(ArchError, match="multiples of 32"):
        FasterRCNN.from_arch("fasterrcnn_resnet_tiny_fpn", 3, image_size=(60, 96))
    with pytest.raises(ArchError, match="choose from"):
        FasterRCNN.from_arch("fasterrcnn_resnet18", 3)
    with pytest.raises(ValueError, match="anchor_sizes has 2 entries"):
        tiny(anchor_sizes=((16,), (32,)))
    assert "fasterrcnn_resnet50_fpn" in ARCHS


def test_a_faster_rcnn_builds_after_an_ssd_in_the_same_process():
    """Keras puts Functional into the bases of a functionally built model's classes; SSD is one,
    and before Detector became a mixin every later FasterRCNN failed to build."""
    from kft.models.ssd import SSD

    SSD.from_arch("ssdlite_mobilenet_v2", num_classes=3, image_size=96, width_multiplier=0.35)
    model = tiny()
    assert isinstance(model, keras.Model) and model.num_classes == 3
    assert model(np.zeros((1, *SIZE, 3), "float32"))["objectness"].shape[0] == 1


def test_backbone_surgery_from_a_recipe_trains_the_new_layers(capsys):
    """M6 through the detection task: SE after layer2 and separable 3x3 convs in layer3 of the
    tiny ResNet, the parameter change printed; a fit step moves the new layers although the
    recipe freezes their stages' pretrained layers (new layers belong to no stage)."""
    from kft import config as cfg
    from kft.tasks.detection import build_faster_rcnn
    from kft.train.finetune import set_trainable_stages

    m = cfg.Model(arch="fasterrcnn_resnet_tiny_fpn", se_stages=("layer2",),
                  separable_stages=("layer3",))
    m.frcnn.rpn_pre_nms_top_n, m.frcnn.rpn_post_nms_top_n = (300, 150), (120, 60)
    m.frcnn.representation_size = 64
    keras.utils.set_random_seed(0)
    model = build_faster_rcnn(m, cfg.Train(), cfg.Eval(), 3,
                              cfg.Data(image_size=64, max_size=96, resize="keep_aspect"))
    out = capsys.readouterr().out
    surgery = model.backbone.surgery
    assert surgery["params_after"] < surgery["params_before"]
    assert (f"{surgery['params_before']:,} -> {surgery['params_after']:,}" in out
            and "SE after ['layer2']" in out and f"{surgery['change']:+.1%}" in out)
    set_trainable_stages(model, ("layer1",))
    new = {v.path for v in model.backbone.trainable_variables
           if "separable" in v.path or "squeeze" in v.path or "excite" in v.path}
    assert any("separable" in p for p in new) and any("excite" in p for p in new)
    assert not any(v.path.startswith("stack2_block0_0_conv") for v in
                   model.backbone.trainable_variables)
    before = {v.path: ops.convert_to_numpy(v).copy() for v in model.backbone.weights
              if v.path in new}
    model.compile(optimizer=keras.optimizers.SGD(0.05))
    images, targets = scene()                  # 64 x 96, padded to the 96 x 96 canvas
    images = np.pad(images, ((0, 0), (0, 32), (0, 0), (0, 0)))
    model.fit(images, targets, batch_size=2, epochs=1, verbose=0)
    moved = [p for p, v in before.items() if not np.array_equal(
        v, ops.convert_to_numpy(next(w for w in model.backbone.weights if w.path == p)))]
    assert any("separable" in p for p in moved) and any("excite" in p for p in moved)


def test_fit_under_mixed_float16_learns_with_loss_scaling():
    """T5 (the R2 recipes' train.mixed_precision=float16): float16 compute, float32 variables,
    a loss-scaled optimiser; losses, targets and detections stay float32 and the model still
    learns the batch and finds every object."""
    keras.config.set_dtype_policy("mixed_float16")
    model = tiny(num_classes=3, seed=1)
    images, targets = scene()
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    conv = [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.Conv2D)]
    assert conv and all(layer.compute_dtype == "float16" for layer in conv)
    assert all(v.dtype == "float32" for v in model.trainable_variables)
    raw = model(images, training=True)
    loss = model.compute_loss(images, targets, raw, training=True)
    assert loss.dtype == "float32" and np.isfinite(float(loss))
    history = model.fit(images, targets, epochs=60, batch_size=2, verbose=0).history
    assert np.all(np.isfinite(history["loss"]))
    assert history["loss"][-1] < 0.35 * history["loss"][0], history["loss"][::10]
    det = model.predict(images, verbose=0)
    assert det["boxes"].dtype == np.float32 and det["scores"].dtype == np.float32
    for i in range(2):
        real = targets["labels"][i] >= 0
        k = int(det["num_detections"][i])
        iou = np.asarray(pairwise_iou(ops.convert_to_tensor(targets["boxes"][i][real]),
                                      ops.convert_to_tensor(det["boxes"][i, :k])))
        for g, label in enumerate(targets["labels"][i][real]):
            assert ((iou[g] >= 0.5) & (det["labels"][i, :k] == label)).any(), (i, g)
