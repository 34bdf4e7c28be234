from pathlib import Path

import keras
import numpy as np
import pytest

from kft.models.backbones.mobilenet_v3_fpn import (
    FrozenBatchNormalization,
    MobileNetV3FPNBody,
    assign_values,
    make_divisible,
    map_mobilenet_v3_body,
    mobilenet_v3_fpn_body,
    stage_starts,
)
from kft.models.necks.fpn import FPN, MOBILENET_V3_FPN
from kft.models.torchvision_map import map_fpn
from kft.models.weights import WeightsError
from kft.train import finetune

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "mobilenet_v3_fpn_torchvision.npz"
# Measured max |kft - torchvision| on the fixture (float32, TF CPU): body C5a 3.1e-5, C5
# 6.6e-5, FPN C5a 4.3e-5, C5 2.5e-5, pool 1.9e-5, at activation std ~2-3; tolerance ~5x.
ATOL, RTOL = 3e-4, 1e-4


def _seeded():
    import seeded_state_dict  # tools/, on pytest's pythonpath

    return seeded_state_dict


@pytest.fixture(scope="module")
def fixture():
    data = dict(np.load(FIXTURE))
    seeded = _seeded()
    spec = seeded.unpack_spec(data["spec_keys"], data["spec_shapes"])
    gains = dict(zip((str(k) for k in data["gain_keys"]), data["gain_values"].tolist(),
                     strict=True))
    data["state_dict"] = seeded.draw(spec, int(data["seed"]), gains)
    return data


@pytest.fixture(scope="module")
def body(fixture):
    return mobilenet_v3_fpn_body(fixture["images"].shape[1:3])


def _np(x):
    return keras.ops.convert_to_numpy(x)


def test_body_and_fpn_match_torchvision(fixture, body):
    values, used = map_mobilenet_v3_body(fixture["state_dict"], body)
    body_keys = {k for k in fixture["state_dict"] if k.startswith("backbone.body.")}
    assert set(used) == body_keys and len(used) == len(body_keys) == 262
    assign_values(body, values)
    images = fixture["images"].astype("float32")
    features = body(images)
    assert list(features) == ["C5a", "C5"] and body.level_names == ("C5a", "C5")
    for name in body.level_names:
        diff = np.abs(_np(features[name]) - fixture[f"body_{name}"]).max()
        print(f"body {name}: max |kft - torchvision| = {diff:.2e}")
        np.testing.assert_allclose(_np(features[name]), fixture[f"body_{name}"], atol=ATOL,
                                   rtol=RTOL)

    fpn = FPN(levels=body.level_names, **MOBILENET_V3_FPN)
    fpn.build({k: tuple(v.shape) for k, v in features.items()})
    values, used = map_fpn(fixture["state_dict"], fpn)
    assert set(used) == {k for k in fixture["state_dict"] if k.startswith("backbone.fpn.")}
    assign_values(fpn, values)
    pyramid = fpn(features)
    assert list(pyramid) == ["C5a", "C5", "pool"]
    for name in pyramid:
        diff = np.abs(_np(pyramid[name]) - fixture[f"fpn_{name}"]).max()
        print(f"fpn {name}: max |kft - torchvision| = {diff:.2e}")
        np.testing.assert_allclose(_np(pyramid[name]), fixture[f"fpn_{name}"], atol=ATOL,
                                   rtol=RTOL)


def test_weights_file_loads_torchvision_classifier_keys(fixture, tmp_path):
    """``weights=`` takes a mobilenet_v3_large state dict (``features.*``, ``classifier.*``)."""
    prefix = "backbone.body."
    state = {"features." + k[len(prefix):]: v for k, v in fixture["state_dict"].items()
             if k.startswith(prefix)}
    state["classifier.0.weight"] = np.zeros((1280, 960), "float32")
    state["features.0.1.num_batches_tracked"] = np.zeros((), "int64")
    path = tmp_path / "mobilenet_v3_large.npz"
    np.savez(path, **state)
    model = mobilenet_v3_fpn_body((64, 96), weights=path)
    expected, _ = map_mobilenet_v3_body(fixture["state_dict"], model)
    for var in model.weights:
        np.testing.assert_array_equal(_np(var), expected[var.path], err_msg=var.path)
    kernel = model.get_layer("block13_dw").kernel          # [C, 1, 5, 5] -> [5, 5, C, 1]
    np.testing.assert_array_equal(_np(kernel)[1, 2, :, 0],
                                  state["features.13.block.1.0.weight"][:, 0, 1, 2])
    del state["features.16.0.weight"]
    np.savez(path, **state)
    with pytest.raises(WeightsError, match="last_conv/kernel <- features.16.0.weight"):
        mobilenet_v3_fpn_body((64, 96), weights=path)


def test_mapping_errors(fixture, body):
    state = dict(fixture["state_dict"])
    state["backbone.body.4.block.2.fc1.weight"] = np.zeros((16, 72, 1, 1), "float32")
    with pytest.raises(WeightsError, match=r"fc1.weight \(1, 1, 72, 16\) \(Keras layout\) vs "
                       r"block4_se_fc1/kernel \(1, 1, 72, 24\)"):
        map_mobilenet_v3_body(state, body)
    state = {**fixture["state_dict"], "backbone.body.17.0.weight": np.zeros((1,), "float32")}
    with pytest.raises(WeightsError, match=r"unexpected \['backbone.body.17.0.weight'\]"):
        map_mobilenet_v3_body(state, body)
    with pytest.raises(WeightsError, match="stem_conv/kernel <- features.0.0.weight"):
        map_mobilenet_v3_body(fixture["state_dict"], body, prefix="features.")


@pytest.mark.parametrize(("size", "cells"), [((64, 96), (2, 3)), ((97, 65), (4, 3))])
def test_shapes_non_square(size, cells):
    model = mobilenet_v3_fpn_body(size, name="b")
    out = model(np.zeros((1, *size, 3), "float32"))
    assert tuple(out["C5a"].shape) == (1, *cells, 160)
    assert tuple(out["C5"].shape) == (1, *cells, 960)
    assert model.strides == (32, 32)
    assert model.get_layer("block13_dw").kernel.shape == (5, 5, 672, 1)
    assert model.get_layer("block13_se_fc1").kernel.shape == (1, 1, 672, 168)


def test_width_multiplier_and_make_divisible():
    assert [make_divisible(v) for v in (16, 12, 3, 960 * 0.75, 672 // 4)] == [16, 16, 8, 720,
                                                                                168]
    assert stage_starts() == (0, 2, 4, 7, 13, 16)
    model = mobilenet_v3_fpn_body((64, 64), width_multiplier=0.5)
    assert tuple(model.output["C5a"].shape) == (None, 2, 2, 80)
    assert tuple(model.output["C5"].shape) == (None, 2, 2, 480)


def _tiny_frozen_model(frozen: bool):
    inputs = keras.Input((4, 4, 3))
    x = keras.layers.Conv2D(3, 1, name="block1_dw")(inputs)
    norm = (FrozenBatchNormalization(name="block1_dw_bn") if frozen else
            keras.layers.BatchNormalization(name="block1_dw_bn"))
    return keras.Model(inputs, norm(x)), norm


@pytest.mark.parametrize("frozen", [True, False])
def test_frozen_batch_norm_never_changes(frozen):
    model, norm = _tiny_frozen_model(frozen)
    norm.moving_mean.assign(np.array([0.5, -1.0, 2.0], "float32"))
    norm.moving_variance.assign(np.array([2.0, 0.5, 1.5], "float32"))
    before = [_np(v).copy() for v in norm.weights]
    x = np.random.default_rng(0).normal(size=(8, 4, 4, 3)).astype("float32")
    same_in_training = np.allclose(_np(model(x, training=True)), _np(model(x, training=False)))
    model.trainable = True
    norm.trainable = True
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    model.fit(x, x + 1.0, epochs=2, verbose=0)
    unchanged = all(np.array_equal(b, _np(v)) for b, v in zip(before, norm.weights,
                                                               strict=True))
    assert same_in_training == frozen and unchanged == frozen
    if frozen:
        assert not norm.trainable_weights and len(norm.non_trainable_weights) == 4
        scale = before[0] / np.sqrt(before[3] + 1e-5)
        np.testing.assert_allclose(_np(norm(x)), (x - before[2]) * scale + before[1],
                                   rtol=1e-5, atol=1e-5)


def test_frozen_bn_in_body_and_batch_norm_option(body):
    frozen = [layer for layer in body.layers if isinstance(layer, FrozenBatchNormalization)]
    assert len(frozen) == 1 + 15 * 3 - 1 + 1 and all(layer.epsilon == 1e-5 for layer in frozen)
    x = np.random.default_rng(1).uniform(0, 255, (1, *body.input_shape[1:])).astype("float32")
    train, infer = body(x, training=True), body(x, training=False)
    np.testing.assert_array_equal(_np(train["C5"]), _np(infer["C5"]))
    plain = mobilenet_v3_fpn_body((64, 64), frozen_bn=False)
    assert not [layer for layer in plain.layers if isinstance(layer, FrozenBatchNormalization)]
    bn = plain.get_layer("stem_conv_bn")
    assert isinstance(bn, keras.layers.BatchNormalization) and bn.epsilon == 1e-5


def test_stages_match_torchvision_trainable_layers(fixture, body):
    assert body.stage_names() == ["stem", "stride4", "stride8", "stride16", "stride32",
                                  "last_conv"]
    assert [body.stage_of(n) for n in ("stem_conv", "block1_project_bn", "block2_dw",
                                       "block6_se_fc2", "block7_expand", "block12_project",
                                       "block13_dw", "block15_add", "last_conv_bn",
                                       "normalize")] == \
        ["stem", "stem", "stride4", "stride8", "stride16", "stride16", "stride32", "stride32",
         "last_conv", None]
    assert all(body.stage_of(layer.name) for layer in body.layers if layer.weights)

    class Holder:
        backbone = body

    try:
        for k, expected in enumerate(fixture["trainable_params"]):
            stages = finetune.top_down_stages(Holder, k)
            finetune.set_trainable_stages(Holder, stages or ("none",))
            count = sum(int(np.prod(v.shape)) for v in body.trainable_weights)
            assert count == expected, (k, stages)
            assert finetune.trainable_stages(Holder) == stages
    finally:
        finetune.set_trainable_stages(Holder, ("all",))


def test_config_and_keras_round_trip(tmp_path):
    model = mobilenet_v3_fpn_body((64, 96), name="backbone", normalization="none",
                                  width_multiplier=0.75)
    config = model.get_config()
    assert config == {"image_size": [64, 96], "frozen_bn": True, "normalization": "none",
                      "width_multiplier": 0.75, "name": "backbone", "trainable": True}
    clone = MobileNetV3FPNBody.from_config(config)
    assert [v.path for v in clone.weights] == [v.path for v in model.weights]
    rng = np.random.default_rng(2)
    for var in model.weights:
        var.assign(rng.normal(0, 0.2, var.shape).astype("float32"))
    path = tmp_path / "body.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, MobileNetV3FPNBody) and loaded.level_names == ("C5a", "C5")
    x = rng.uniform(-2, 2, (2, 64, 96, 3)).astype("float32")
    for name in model.level_names:
        np.testing.assert_array_equal(_np(loaded(x)[name]), _np(model(x)[name]))
