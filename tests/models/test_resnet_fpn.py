"""kft's ResNet-50-FPN body against torchvision's fasterrcnn_resnet50_fpn (v1) / _v2 backbones.

The fixture (tools/make_resnet_fpn_fixture.py) stores the state-dict spec, seed and gains; the
weights are redrawn here with tools/seeded_state_dict.py and loaded through the torchvision
mapping. R50 is built three times in this file (v1, v2, one other size); the behaviour tests
use the three-stage resnet_tiny.
"""

from pathlib import Path

import keras
import numpy as np
import pytest
from keras import layers, ops

from kft.models.backbones.resnet import (
    FrozenBatchNormalization,
    ResNetFPNBody,
    build_resnet_backbone,
    resnet_fpn_body,
)
from kft.models.necks.fpn import FPN, RESNET_FPN
from kft.models.torchvision_map import map_fpn, map_resnet_body, resnet_target
from kft.models.weights import WeightsError, transfer
from kft.train.finetune import set_trainable_stages, trainable_stages

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "resnet_fpn_torchvision.npz"
BN_NAMES = ("gamma", "beta", "moving_mean", "moving_variance")
# measured max |kft - torchvision| / max |torchvision| per level: <= 2.1e-6 (v1 and v2,
# TF 2.21 CPU); the bound leaves a 10x margin for other CPUs / oneDNN kernels
RELATIVE_TOLERANCE = 2e-5


def _seeded():
    import seeded_state_dict  # tools/, on pytest's pythonpath

    return seeded_state_dict


@pytest.fixture(scope="module")
def fixture():
    with np.load(FIXTURE) as data:
        return {k: data[k] for k in data.files}


def _state_dict(fixture, version):
    seeded = _seeded()
    spec = seeded.unpack_spec(fixture[f"{version}_spec_keys"], fixture[f"{version}_spec_shapes"])
    gains = dict(zip((str(k) for k in fixture[f"{version}_gain_keys"]),
                     fixture[f"{version}_gain_values"].tolist(), strict=True))
    return seeded.draw(spec, int(fixture[f"{version}_seed"]), gains)


def _detector_backbone(image_size, frozen_bn, norm):
    body = resnet_fpn_body("resnet50", image_size, frozen_bn=frozen_bn)
    fpn = FPN(**RESNET_FPN, norm=norm, name="fpn")
    images = keras.Input((*image_size, 3))
    features = body(images)
    model = keras.Model(images, {"body": features, "fpn": fpn(features)})
    return model, body, fpn


@pytest.fixture(scope="module", params=["v1", "v2"])
def loaded(request, fixture):
    """(version, model, body, fpn, state dict) with the fixture's weights transferred."""
    version = request.param
    size = fixture["images"].shape[1:3]
    model, body, fpn = _detector_backbone(size, version == "v1", None if version == "v1"
                                          else "batch")
    state_dict = _state_dict(fixture, version)
    body_map, body_used = map_resnet_body(state_dict, body)
    fpn_map, fpn_used = map_fpn(state_dict, fpn)
    assert body_used | fpn_used == set(state_dict) and not body_used & fpn_used
    report = transfer(model, {**body_map, **fpn_map})
    assert not report["new"] and not report["shape_mismatch"] and not report["unused"]
    return version, model, body, fpn, state_dict


def _assert_close(got, want, label):
    assert got.shape == want.shape, label
    scale = float(np.abs(want).max())
    assert scale > 1.0, label                   # the draw neither vanishes ...
    assert float(np.abs(want).std()) < 20, label    # ... nor explodes
    np.testing.assert_allclose(got, want, rtol=0, atol=RELATIVE_TOLERANCE * scale,
                               err_msg=label)


def test_matches_torchvision(loaded, fixture):
    version, model, body, _, _ = loaded
    out = model(fixture["images"].astype("float32"), training=False)
    for level in range(2, 6):
        got = ops.convert_to_numpy(out["body"][f"P{level}"])
        want = fixture[f"{version}_body_P{level}"]
        _assert_close(got[..., :want.shape[-1]], want, f"{version} body P{level}")
    assert list(out["fpn"]) == ["P2", "P3", "P4", "P5", "P6"]
    for level in range(2, 7):
        got = ops.convert_to_numpy(out["fpn"][f"P{level}"])
        want = fixture[f"{version}_fpn_P{level}"]
        assert got.shape[-1] == 256
        _assert_close(got[..., :want.shape[-1]], want, f"{version} FPN P{level}")
    kinds = {type(layer) for layer in body._flatten_layers(recursive=True)}
    if version == "v1":
        assert FrozenBatchNormalization in kinds and layers.BatchNormalization not in kinds
        # frozen: training=True is the same computation
        again = model(fixture["images"].astype("float32"), training=True)
        np.testing.assert_array_equal(ops.convert_to_numpy(again["body"]["P5"]),
                                      ops.convert_to_numpy(out["body"]["P5"]))
    else:
        assert layers.BatchNormalization in kinds and FrozenBatchNormalization not in kinds


def test_levels_strides_and_shapes_on_non_square_sizes(loaded):
    version, _, body, _, _ = loaded
    bodies = [body]
    if version == "v1":                 # one more size, taller than wide (the fixture's is wide)
        bodies.append(resnet_fpn_body("resnet50", (100, 72)))
    for body in bodies:
        assert body.level_names == ("P2", "P3", "P4", "P5")
        assert body.strides == (4, 8, 16, 32)
        assert body.stage_names() == ["stem", "layer1", "layer2", "layer3", "layer4"]
        height, width = body.input.shape[1:3]
        for name, stride, channels in zip(body.level_names, body.strides,
                                          (256, 512, 1024, 2048), strict=True):
            # torch's conv arithmetic: every stride-2 step is ceil(n / 2)
            assert tuple(body.output[name].shape) == (None, -(-height // stride),
                                                      -(-width // stride), channels)
        assert body.stage_of("stack3_block2_3_bn") == "layer4"
        assert body.stage_of("conv1_conv") == "stem"
    assert [tuple(b.input.shape[1:3]) for b in bodies] == [(88, 136), (100, 72)][:len(bodies)]


def test_resnet_key_mapping_by_hand():
    assert resnet_target("conv1.weight") == ("conv1_conv", "kernel")
    assert resnet_target("bn1.running_var") == ("conv1_bn", "moving_variance")
    assert resnet_target("layer3.0.conv2.weight") == ("stack2_block0_2_conv", "kernel")
    assert resnet_target("layer4.2.bn3.bias") == ("stack3_block2_3_bn", "beta")
    assert resnet_target("layer1.0.downsample.0.weight") == ("stack0_block0_0_conv", "kernel")
    assert resnet_target("layer1.0.downsample.1.weight") == ("stack0_block0_0_bn", "gamma")
    assert resnet_target("layer2.1.bn1.num_batches_tracked") == ("", "")
    assert resnet_target("layer2.1.conv1.bias") is None          # torchvision convs: no bias
    assert resnet_target("fpn.inner_blocks.0.weight") is None


def test_mapping_errors_and_leftovers(loaded):
    version, _, body, fpn, state_dict = loaded
    if version == "v1":
        others = {"rpn.head.conv.0.0.weight": np.zeros((256, 256, 3, 3), "float32"),
                  "roi_heads.box_head.fc6.bias": np.zeros(1024, "float32"),
                  "backbone.body.fc.weight": np.zeros((1000, 2048), "float32")}
        mapping, used = map_resnet_body({**state_dict, **others}, body)
        assert not used & set(others) and len(mapping) == len(body.weights)

        missing = dict(state_dict)
        del missing["backbone.body.layer2.1.bn2.running_var"]
        with pytest.raises(WeightsError, match=r"missing.*stack1_block1_2_bn/moving_variance"):
            map_resnet_body(missing, body)
        extra = {**state_dict, "backbone.body.layer5.0.conv1.weight": np.zeros((1, 1, 1, 1)),
                 "backbone.body.layer1.0.conv1.bias": np.zeros(64)}
        with pytest.raises(WeightsError, match=r"unexpected.*layer1\.0\.conv1\.bias.*layer5"):
            map_resnet_body(extra, body)
        wrong = {**state_dict, "backbone.body.conv1.weight": np.zeros((64, 3, 3, 3))}
        with pytest.raises(WeightsError, match=r"shape mismatches.*conv1\.weight"):
            map_resnet_body(wrong, body)

        # torchvision < 0.13 spelled the FPN convs inner_blocks.{i}.weight: same mapping
        old = {k.replace(".0.weight", ".weight").replace(".0.bias", ".bias")
               if k.startswith("backbone.fpn.") else k: v for k, v in state_dict.items()}
        assert any(k.startswith("backbone.fpn.inner_blocks.0.weight") for k in old)
        new_map, _ = map_fpn(state_dict, fpn)
        old_map, old_used = map_fpn(old, fpn)
        assert sorted(old_map) == sorted(new_map) and len(old_used) == 16
        for path in new_map:
            np.testing.assert_array_equal(old_map[path], new_map[path])
        with pytest.raises(WeightsError, match=r"unexpected.*extra_blocks\.p6\.weight"):
            map_fpn({**state_dict, "backbone.fpn.extra_blocks.p6.weight": np.zeros(1)}, fpn)
        with pytest.raises(ValueError, match="build the FPN"):
            map_fpn(state_dict, FPN())
    else:
        # a v1 checkpoint (biases, no BatchNorm) does not fit the v2 FPN
        v1_like = {k: v for k, v in state_dict.items() if ".1." not in k}
        v1_like.update({k.replace(".0.weight", ".0.bias"): np.zeros(256, "float32")
                        for k in state_dict if k.startswith("backbone.fpn.")
                        and k.endswith(".0.weight")})
        with pytest.raises(WeightsError, match=r"missing.*lateral_P2_bn/gamma.*unexpected.*"
                                               r"inner_blocks\.0\.0\.bias"):
            map_fpn(v1_like, fpn)
        assert len(fpn.lateral_norms) == len(fpn.output_norms) == 4


# --- behaviour, on the three-stage resnet_tiny ------------------------------------------------


class TinyClassifier(keras.Model):
    """A classifier on the body's last level: the ``model.backbone`` finetune works on."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self.pool = layers.GlobalAveragePooling2D()
        self.head = layers.Dense(3)

    def call(self, images, training=False):
        levels = self.backbone(images, training=training)
        return self.head(self.pool(levels[self.backbone.level_names[-1]]))


def _bn_values(body):
    return {v.path: ops.convert_to_numpy(v).copy() for v in body.weights
            if v.path.rsplit("/", 1)[-1] in BN_NAMES}


@pytest.mark.parametrize("frozen_bn", [True, False])
def test_frozen_batchnorm_survives_unfreezing_and_training(frozen_bn):
    body = resnet_fpn_body("resnet_tiny", (64, 96), frozen_bn=frozen_bn)
    assert body.level_names == ("P2", "P3", "P4") and body.strides == (4, 8, 16)
    model = TinyClassifier(body)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (2, 64, 96, 3)).astype("float32")
    model(images)
    # the unfreeze callbacks set layer.trainable = True on every layer of the stages
    assert set_trainable_stages(model, ("layer2", "layer3")) == ["layer2", "layer3"]
    assert trainable_stages(model) == ["layer2", "layer3"]
    trainable = {v.path for v in model.trainable_variables}
    bn_trainable = {p for p in trainable if p.rsplit("/", 1)[-1] in ("gamma", "beta")}
    assert bool(bn_trainable) != frozen_bn
    assert "stack1_block0_1_conv/kernel" in trainable and "conv1_conv/kernel" not in trainable
    set_trainable_stages(model, ("all",))
    all_bn = {v.path for v in model.trainable_variables if v.path.endswith(("gamma", "beta"))}
    assert bool(all_bn) != frozen_bn
    set_trainable_stages(model, ("layer2", "layer3"))

    before_bn = _bn_values(body)
    kernel = body.get_layer("resnet").get_layer("stack1_block0_1_conv").kernel
    stem = body.get_layer("resnet").get_layer("conv1_conv").kernel
    before_kernel, before_stem = (ops.convert_to_numpy(v).copy() for v in (kernel, stem))
    model.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(images, np.array([0, 2]), batch_size=2, epochs=1, verbose=0)
    assert np.abs(ops.convert_to_numpy(kernel) - before_kernel).max() > 0
    np.testing.assert_array_equal(ops.convert_to_numpy(stem), before_stem)
    after_bn = _bn_values(body)
    changed = [p for p in before_bn if not np.array_equal(before_bn[p], after_bn[p])]
    if frozen_bn:
        assert not changed                 # neither statistics nor affine parameters
    else:                                  # v2: plain BatchNorm trains and tracks batches
        assert any(p.endswith("moving_mean") for p in changed)
        assert any(p.startswith("stack1") and p.endswith("gamma") for p in changed)


def test_frozen_batchnorm_layer():
    bn = FrozenBatchNormalization(epsilon=1e-3, name="bn")
    x = np.random.default_rng(1).normal(size=(2, 3, 4, 5)).astype("float32")
    bn.build(x.shape)
    gamma, beta, mean, var = (np.linspace(lo, hi, 5, dtype="float32")
                              for lo, hi in ((0.5, 2), (-1, 1), (-0.3, 0.4), (0.2, 3)))
    bn.set_weights([gamma, beta, mean, var])
    want = (x - mean) / np.sqrt(var + 1e-3) * gamma + beta
    for training in (False, True):
        np.testing.assert_allclose(ops.convert_to_numpy(bn(x, training=training)), want,
                                   atol=1e-5)
    bn.trainable = True
    assert not bn.trainable_weights and len(bn.non_trainable_weights) == 4
    assert [v.path for v in bn.weights] == [f"bn/{n}" for n in BN_NAMES]
    clone = FrozenBatchNormalization.from_config(bn.get_config())
    assert clone.epsilon == 1e-3


def test_config_and_keras_round_trip(tmp_path):
    body = resnet_fpn_body("resnet_tiny", (64, 96), normalization="torch", name="body")
    images = np.random.default_rng(2).uniform(0, 255, (1, 64, 96, 3)).astype("float32")
    for v in body.weights:        # non-default values everywhere, the frozen BN included
        v.assign(np.random.default_rng(len(v.path)).uniform(0.5, 1.5, v.shape))
    config = body.get_config()
    assert config["frozen_bn"] and config["resnet"]["block_type"] == "basic_block"
    clone = ResNetFPNBody.from_config(config)
    assert clone.get_config() == config
    assert [v.path for v in clone.weights] == [v.path for v in body.weights]
    path = tmp_path / "body.keras"
    body.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, ResNetFPNBody) and loaded.get_config() == config
    assert loaded.level_names == body.level_names and loaded.strides == body.strides
    assert loaded.stage_names() == ["stem", "layer1", "layer2", "layer3"]
    before, after = body(images), loaded(images)
    for name in body.level_names:
        np.testing.assert_allclose(ops.convert_to_numpy(after[name]),
                                   ops.convert_to_numpy(before[name]), rtol=1e-6)
    assert any(isinstance(layer, FrozenBatchNormalization)
               for layer in loaded._flatten_layers(recursive=True))


def test_preset_folder_weights_reach_the_frozen_batchnorm(tmp_path):
    hub = build_resnet_backbone("resnet_tiny", 64)
    rng = np.random.default_rng(3)
    for v in hub.weights:
        v.assign(rng.uniform(0.5, 1.5, v.shape))
    hub.save_to_preset(str(tmp_path / "preset"))
    body = resnet_fpn_body("resnet_tiny", (64, 96), preset=str(tmp_path / "preset"))
    values = {v.path: ops.convert_to_numpy(v) for v in body.weights}
    assert values.keys() == {v.path for v in hub.weights}
    for v in hub.weights:
        np.testing.assert_array_equal(values[v.path], ops.convert_to_numpy(v))
    with pytest.raises(WeightsError, match="cannot load"):
        resnet_fpn_body("resnet_tiny", 64, preset=str(tmp_path / "nowhere"))


# --- ResNeXt-101 32x8d (kft-built, grouped convolutions) ---------------------------------------

RESNEXT_FIXTURE = ROOT / "tests" / "fixtures" / "resnext_fpn_torchvision.npz"


def test_resnext101_body_matches_torchvision_from_an_imagenet_state_dict(tmp_path):
    """torchvision's resnext101_32x8d (FrozenBatchNorm2d) + FPN, weights drawn from the
    fixture's spec: the body loads them from an ImageNet-style .npz (classifier keys, fc.*
    included), the FPN through map_fpn, and both match torchvision's outputs."""
    with np.load(RESNEXT_FIXTURE) as data:
        fixture = {k: data[k] for k in data.files}
    state_dict = _state_dict(fixture, "x101")
    body_keys = {k.removeprefix("backbone.body."): v for k, v in state_dict.items()
                 if k.startswith("backbone.body.")}
    body_keys["fc.weight"] = np.zeros((1000, 2048), "float32")       # a classifier's head
    body_keys["fc.bias"] = np.zeros(1000, "float32")
    np.savez(tmp_path / "resnext101_32x8d.npz", **body_keys)
    size = tuple(fixture["images"].shape[1:3])
    body = resnet_fpn_body("resnext101_32x8d", size, weights=tmp_path / "resnext101_32x8d.npz")
    assert body.level_names == ("P2", "P3", "P4", "P5") and body.strides == (4, 8, 16, 32)
    grouped = [layer for layer in body._flatten_layers(recursive=True)
               if isinstance(layer, layers.Conv2D) and layer.groups > 1]
    assert len(grouped) == 3 + 4 + 23 + 3 and {g.groups for g in grouped} == {32}
    # torchvision's resnext101_32x8d has 88,791,336 parameters, 2,049,000 of them in fc; its
    # BatchNorm statistics are buffers (kft counts them: 2 x 101,440 BatchNorm channels)
    assert body.count_params() == 88_791_336 - 2_049_000 + 2 * 101_440
    assert body.get_config()["resnet"] is None
    fpn = FPN(**RESNET_FPN, name="fpn")
    images = keras.Input((*size, 3))
    features = body(images)
    model = keras.Model(images, {"body": features, "fpn": fpn(features)})
    fpn_map, _ = map_fpn(state_dict, fpn)
    transfer(fpn, fpn_map)
    out = model(fixture["images"].astype("float32"), training=False)
    for level in range(2, 6):
        want = fixture[f"x101_body_P{level}"]
        got = ops.convert_to_numpy(out["body"][f"P{level}"])[..., :want.shape[-1]]
        _assert_close(got, want, f"x101 body P{level}")
    for level in range(2, 7):
        want = fixture[f"x101_fpn_P{level}"]
        got = ops.convert_to_numpy(out["fpn"][f"P{level}"])[..., :want.shape[-1]]
        _assert_close(got, want, f"x101 FPN P{level}")
    with pytest.raises(ValueError, match="keras-hub has no ResNeXt"):
        resnet_fpn_body("resnext101_32x8d", 64, preset="resnet_50_imagenet")


# --- backbone surgery (M6) --------------------------------------------------------------------


def test_se_block_starts_as_identity_and_trains_with_its_stage_frozen(tmp_path):
    images = np.random.default_rng(4).uniform(0, 255, (2, 64, 96, 3)).astype("float32")
    plain = resnet_fpn_body("resnet_tiny", (64, 96), frozen_bn=False)
    body = resnet_fpn_body("resnet_tiny", (64, 96), frozen_bn=False, se_stages=("layer2",),
                           se_reduction=8)
    shared = {v.path: v for v in plain.weights}
    for v in body.weights:             # the same ResNet weights, the SE's own left as built
        if v.path in shared:
            v.assign(shared[v.path])
    se = [v.path for v in body.weights if v.path not in shared]
    assert se and all("squeeze" in p or "excite" in p for p in se)
    before, after = plain(images), body(images)
    for name in body.level_names:      # SE's excite starts at zero: gate 2 * sigmoid(0) = 1
        np.testing.assert_allclose(ops.convert_to_numpy(after[name]),
                                   ops.convert_to_numpy(before[name]), rtol=1e-5, atol=1e-5)
    assert body.surgery["params_after"] == body.surgery["params_before"] + sum(
        int(np.prod(v.shape)) for v in body.weights if v.path not in shared)
    model = TinyClassifier(body)
    model(images)
    set_trainable_stages(model, ("layer3",))          # layer2 frozen, its new SE block trains
    trainable = {v.path for v in model.trainable_variables}
    assert set(se) <= trainable and "stack1_block0_1_conv/kernel" not in trainable
    assert trainable_stages(model) == ["layer3"]
    path = tmp_path / "se.keras"
    body.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.get_config()["se_stages"] == ["layer2"]
    np.testing.assert_allclose(ops.convert_to_numpy(loaded(images)["P4"]),
                               ops.convert_to_numpy(body(images)["P4"]), rtol=1e-6)
    with pytest.raises(ValueError, match=r"\['layer4'\] are not stages"):
        resnet_fpn_body("resnet_tiny", 64, se_stages=("layer4",))


def test_depthwise_separable_stages_cut_the_parameters():
    plain = resnet_fpn_body("resnet_tiny", (64, 64))
    body = resnet_fpn_body("resnet_tiny", (64, 64), separable_stages=("layer2", "layer3"))
    kinds = {layer.name: type(layer) for layer in body._flatten_layers(recursive=True)}
    separable = sorted(n for n, k in kinds.items() if k is layers.SeparableConv2D)
    # each basic block has two 3x3 convolutions; layer1 and the 7x7 stem stay as they were
    assert separable == [f"stack{s}_block0_{i}_conv_separable" for s in (1, 2) for i in (1, 2)]
    assert kinds["stack0_block0_1_conv"] is layers.Conv2D and kinds["conv1_conv"] is layers.Conv2D
    # a 3x3 64 -> 64 conv (36,864 weights) becomes 3 x 3 x 64 + 64 x 64 = 4,672: four of them
    assert plain.count_params() - body.count_params() == 4 * (36_864 - 4_672)
    assert body.surgery["params_before"] == plain.count_params()
    assert body.surgery["change"] == round(body.count_params() / plain.count_params() - 1, 4)
    assert body.stage_of("stack1_block0_1_conv_separable") is None
    out = body(np.zeros((1, 64, 64, 3), "float32"))
    assert tuple(out["P4"].shape) == (1, 4, 4, 64)
