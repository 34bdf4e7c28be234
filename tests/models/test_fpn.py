from pathlib import Path

import keras
import numpy as np
import pytest
from keras import ops

from kft.models.necks import FPN
from kft.models.necks.fpn import MOBILENET_V3_FPN, RESNET_FPN, nearest_resize_like

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "rpn_torchvision.npz"


def _levels(height, width, strides=(4, 8, 16, 32), channels=(3, 5, 6, 7), batch=2):
    rng = np.random.default_rng(0)
    return {f"P{i + 2}": rng.normal(size=(batch, -(-height // s), -(-width // s), c))
            .astype("float32") for i, (s, c) in enumerate(zip(strides, channels, strict=True))}


@pytest.mark.parametrize("size", [(96, 160), (100, 150)])
def test_output_strides_and_shapes_on_non_square_inputs(size):
    height, width = size
    fpn = FPN(channels=8)
    out = fpn(_levels(height, width))
    assert list(out) == ["P2", "P3", "P4", "P5", "P6"]
    for name, stride in zip(out, (4, 8, 16, 32, 64), strict=True):
        assert tuple(out[name].shape) == (2, -(-height // stride), -(-width // stride), 8)


def test_static_shapes_in_a_functional_model():
    levels = _levels(96, 160)
    inputs = {k: keras.Input(v.shape[1:], name=k) for k, v in levels.items()}
    model = keras.Model(inputs, FPN(**RESNET_FPN)(inputs))
    shapes = {k: tuple(v.shape) for k, v in model.output.items()}
    assert shapes == {"P2": (None, 24, 40, 256), "P3": (None, 12, 20, 256),
                      "P4": (None, 6, 10, 256), "P5": (None, 3, 5, 256),
                      "P6": (None, 2, 3, 256)}


def test_nearest_resize_is_torch_nearest():
    x = np.arange(2 * 3 * 5, dtype="float32").reshape(1, 2, 3, 5, 1)[0]      # [2, 3, 5, 1]
    for out_h, out_w in [(6, 10), (5, 9), (3, 5), (7, 4)]:
        ref = np.zeros((2, out_h, out_w, 1), "float32")
        got = ops.convert_to_numpy(nearest_resize_like(x, ref))
        rows = np.floor(np.arange(out_h) * 3 / out_h).astype(int)
        cols = np.floor(np.arange(out_w) * 5 / out_w).astype(int)
        np.testing.assert_array_equal(got, x[:, rows][:, :, cols])
    # for the stride-2 sizes it is the 2x repeat cropped to the lateral
    up = np.repeat(np.repeat(x, 2, axis=1), 2, axis=2)[:, :5, :9]
    np.testing.assert_array_equal(
        ops.convert_to_numpy(nearest_resize_like(x, np.zeros((2, 5, 9, 1)))), up)


def _identity_fpn(fpn, levels):
    """Single-channel FPN with identity lateral and output convolutions, zero biases."""
    fpn(levels)
    for lateral, output in zip(fpn.laterals, fpn.outputs, strict=True):
        lateral.set_weights([np.ones((1, 1, 1, 1), "float32"), np.zeros(1, "float32")])
        kernel = np.zeros((3, 3, 1, 1), "float32")
        kernel[1, 1] = 1.0
        output.set_weights([kernel, np.zeros(1, "float32")])
    return {k: ops.convert_to_numpy(v)[0, :, :, 0] for k, v in fpn(levels).items()}


def test_top_down_sums_by_hand():
    c4 = np.arange(5 * 7, dtype="float32").reshape(1, 5, 7, 1)
    c5 = np.array([[1, 2, 3, 4], [10, 20, 30, 40], [100, 200, 300, 400]],
                  "float32").reshape(1, 3, 4, 1)
    out = _identity_fpn(FPN(channels=1), {"C4": c4, "C5": c5})
    assert list(out) == ["C4", "C5", "C6"]
    np.testing.assert_array_equal(out["C5"], c5[0, :, :, 0])
    up = np.repeat(np.repeat(c5[0, :, :, 0], 2, axis=0), 2, axis=1)[:5, :7]
    np.testing.assert_array_equal(out["C4"], c4[0, :, :, 0] + up)
    # kernel 1, stride 2 max pool = every other cell: 3x4 -> 2x2
    np.testing.assert_array_equal(out["C6"], [[1, 3], [100, 300]])


def test_mobilenet_variant_same_size_levels_and_level_selection():
    rng = np.random.default_rng(1)
    levels = {"C3": rng.normal(size=(1, 20, 20, 4)).astype("float32"),
              "C5a": rng.normal(size=(1, 10, 10, 1)).astype("float32"),
              "C5": rng.normal(size=(1, 10, 10, 1)).astype("float32")}
    fpn = FPN(**{**MOBILENET_V3_FPN, "channels": 1}, levels=("C5a", "C5"))
    out = _identity_fpn(fpn, levels)
    assert list(out) == ["C5a", "C5", "pool"]           # C3 is not used
    assert len(fpn.laterals) == 2
    np.testing.assert_allclose(out["C5a"], (levels["C5a"] + levels["C5"])[0, :, :, 0],
                               atol=1e-6)
    np.testing.assert_array_equal(out["pool"], out["C5"][::2, ::2])
    assert fpn.output_names(levels) == ("C5a", "C5", "pool")
    no_extra = FPN(channels=4, levels=("C5a", "C5"), extra=None)(levels)
    assert list(no_extra) == ["C5a", "C5"]


def test_config_round_trip_and_saving(tmp_path):
    fpn = FPN(channels=6, levels=("P3", "P4", "P5"), extra="max_pool", extra_name="P6x",
              name="neck")
    config = fpn.get_config()
    clone = FPN.from_config(config)
    assert clone.get_config() == config
    assert (clone.channels, clone.levels, clone.extra, clone.extra_name) == (
        6, ("P3", "P4", "P5"), "max_pool", "P6x")
    levels = _levels(64, 96, batch=1)
    inputs = {k: keras.Input(v.shape[1:], name=k) for k, v in levels.items()}
    model = keras.Model(inputs, fpn(inputs))
    path = tmp_path / "fpn.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    before, after = model.predict(levels, verbose=0), loaded.predict(levels, verbose=0)
    assert list(after) == ["P3", "P4", "P5", "P6x"]
    for name in before:
        np.testing.assert_allclose(after[name], before[name], atol=1e-6)


def test_initialisation_and_errors():
    fpn = FPN(channels=16)
    fpn(_levels(64, 64, batch=1))
    kernel = ops.convert_to_numpy(fpn.outputs[0].kernel)       # fan_in 9 * 16
    limit = np.sqrt(3.0 / (9 * 16))
    assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.8 * limit
    assert not ops.convert_to_numpy(fpn.outputs[0].bias).any()
    with pytest.raises(ValueError, match="not among"):
        FPN(levels=("P2", "P9"))(_levels(64, 64, batch=1))
    with pytest.raises(ValueError, match="extra"):
        FPN(extra="conv")


def test_matches_torchvision_fixture():
    fixture = np.load(FIXTURE)
    levels = {f"L{i}": fixture[f"fpn_in{i}"] for i in range(4)}
    fpn = FPN(channels=int(fixture["fpn_out0"].shape[-1]))
    fpn(levels)
    for i in range(4):
        fpn.laterals[i].set_weights([fixture[f"fpn_lateral{i}_kernel"],
                                     fixture[f"fpn_lateral{i}_bias"]])
        fpn.outputs[i].set_weights([fixture[f"fpn_output{i}_kernel"],
                                    fixture[f"fpn_output{i}_bias"]])
    out = fpn(levels)
    assert list(out) == ["L0", "L1", "L2", "L3", "L4"]
    for i, name in enumerate(out):
        np.testing.assert_allclose(ops.convert_to_numpy(out[name]), fixture[f"fpn_out{i}"],
                                   atol=1e-4)


# --- norm="batch" (fasterrcnn_resnet50_fpn_v2) -------------------------------------------------

def test_default_norm_keeps_the_variables():
    fpn = FPN(channels=4, name="fpn")
    fpn(_levels(32, 48, strides=(4, 8), channels=(3, 5), batch=1))
    assert [v.path for v in fpn.weights] == [
        f"fpn/{kind}_{level}/{var}" for level in ("P2", "P3")
        for kind in ("lateral", "output") for var in ("kernel", "bias")]
    assert fpn.norm is None and not fpn.lateral_norms and not fpn.output_norms


def test_batch_norm_variant_by_hand():
    c4 = np.arange(5 * 7, dtype="float32").reshape(1, 5, 7, 1)
    c5 = np.arange(3 * 4, dtype="float32").reshape(1, 3, 4, 1) * 10
    levels = {"C4": c4, "C5": c5}
    fpn = FPN(channels=1, norm="batch", name="fpn")
    plain = _identity_fpn(FPN(channels=1), levels)
    fpn(levels)
    for conv in fpn.laterals + fpn.outputs:
        assert not conv.use_bias and conv.bias is None
    assert [v.path for v in fpn.weights][:4] == [
        "fpn/lateral_C4/kernel", "fpn/output_C4/kernel", "fpn/lateral_C4_bn/gamma",
        "fpn/lateral_C4_bn/beta"]
    kernel = np.zeros((3, 3, 1, 1), "float32")
    kernel[1, 1] = 1.0
    # lateral BN: identity; output BN: (x - 3) / sqrt(4 + 1e-5) * 2 + 1
    for lateral, output, lbn, obn in zip(fpn.laterals, fpn.outputs, fpn.lateral_norms,
                                         fpn.output_norms, strict=True):
        lateral.set_weights([np.ones((1, 1, 1, 1), "float32")])
        output.set_weights([kernel])
        assert (lbn.epsilon, lbn.momentum, obn.name) == (1e-5, 0.9, output.name + "_bn")
        lbn.set_weights([np.ones(1), np.zeros(1), np.zeros(1), np.full(1, 1 - 1e-5)])
        obn.set_weights([np.full(1, 2.0), np.ones(1), np.full(1, 3.0), np.full(1, 4.0)])
    out = {k: ops.convert_to_numpy(v)[0, :, :, 0] for k, v in fpn(levels).items()}
    for name in ("C4", "C5"):
        np.testing.assert_allclose(out[name], (plain[name] - 3) / np.sqrt(4 + 1e-5) * 2 + 1,
                                   rtol=1e-5)
    np.testing.assert_array_equal(out["C6"], out["C5"][::2, ::2])
    # training=True normalises with the batch statistics: every output has mean beta = 1
    trained = fpn(levels, training=True)
    np.testing.assert_allclose(ops.convert_to_numpy(trained["C4"]).mean(), 1.0, atol=1e-4)


def test_batch_norm_config_round_trip_and_saving(tmp_path):
    fpn = FPN(channels=4, norm="batch", name="neck")
    config = fpn.get_config()
    assert config["norm"] == "batch" and FPN.from_config(config).get_config() == config
    levels = _levels(64, 96, batch=2)
    inputs = {k: keras.Input(v.shape[1:], name=k) for k, v in levels.items()}
    model = keras.Model(inputs, fpn(inputs))
    for norm in fpn.lateral_norms + fpn.output_norms:
        norm.moving_mean.assign(np.full(4, 0.3, "float32"))
    path = tmp_path / "fpn.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    before, after = model.predict(levels, verbose=0), loaded.predict(levels, verbose=0)
    for name in before:
        np.testing.assert_allclose(after[name], before[name], atol=1e-6)
    with pytest.raises(ValueError, match="norm"):
        FPN(norm="group")
