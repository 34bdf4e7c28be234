"""SSD's VGG16 and SSDLite's MobileNet feature extractors: levels, weights, serialisation."""

import h5py
import keras
import numpy as np
import pytest

from kft.models.backbones.mobilenet import (
    SSDLiteMobileNet,
    depthwise_separable_conv,
    ssdlite_mobilenet_v2,
    ssdlite_mobilenet_v3,
)
from kft.models.backbones.vgg import (
    SSDVGG16,
    VGG16_CONV_NAMES,
    ImageNormalization,
    L2Normalization,
    load_vgg16_imagenet,
    read_h5_layer_weights,
    ssd_vgg16,
    subsample_fc6,
    subsample_fc7,
)
from kft.models.weights import WeightsError


def _level_shapes(model):
    """``{level: (h, w, c)}`` from a symbolic call, in the order the model returns them."""
    out = model(keras.Input(model.input_shape[1:]))
    return {name: tuple(t.shape[1:]) for name, t in out.items()}


@pytest.fixture(scope="module")
def vgg300():
    keras.utils.set_random_seed(0)
    return ssd_vgg16(300)


# ---------------------------------------------------------------------------------- VGG16


def test_vgg300_levels(vgg300):
    assert vgg300.level_names == ("conv4_3", "fc7", "conv8_2", "conv9_2", "conv10_2", "conv11_2")
    assert _level_shapes(vgg300) == {
        "conv4_3": (38, 38, 512), "fc7": (19, 19, 1024), "conv8_2": (10, 10, 512),
        "conv9_2": (5, 5, 256), "conv10_2": (3, 3, 256), "conv11_2": (1, 1, 256)}
    # pool3 rounds up (75 -> 38), pool5 keeps 19x19, fc6 is a dilated 3x3 conv.
    assert vgg300.get_layer("block4_conv1").input.shape[1] == 38
    assert vgg300.get_layer("fc6").dilation_rate == (6, 6)
    assert vgg300.get_layer("fc6").input.shape[1:3] == (19, 19)


def test_vgg512_levels():
    model = ssd_vgg16(512)
    assert _level_shapes(model) == {
        "conv4_3": (64, 64, 512), "fc7": (32, 32, 1024), "conv8_2": (16, 16, 512),
        "conv9_2": (8, 8, 256), "conv10_2": (4, 4, 256), "conv11_2": (2, 2, 256),
        "conv12_2": (1, 1, 256)}
    with pytest.raises(ValueError, match="300, 512"):
        ssd_vgg16(320)


def test_l2norm_scale_starts_at_20_and_normalises(vgg300):
    scale = vgg300.get_layer("conv4_3_norm").scale
    assert scale.path == "conv4_3_norm/scale" and tuple(scale.shape) == (512,)
    np.testing.assert_array_equal(scale.numpy(), np.full(512, 20.0, "float32"))

    x = np.random.default_rng(0).uniform(0, 300, (2, 3, 3, 512)).astype("float32")
    x[0, 0, 0] = 0.0  # an all-zero pixel stays zero instead of dividing by zero
    y = L2Normalization(20.0)(x).numpy()
    norms = np.linalg.norm(y, axis=-1)
    np.testing.assert_allclose(norms.reshape(-1)[1:], 20.0, rtol=1e-5)
    assert norms[0, 0, 0] == 0.0
    # Under mixed precision (float16 activations in) a float16 sum of squares (~1.5e7) would
    # overflow; it is computed in float32.
    y16 = L2Normalization(20.0, dtype="mixed_float16")(x.astype("float16"))
    assert keras.backend.standardize_dtype(y16.dtype) == "float16"
    np.testing.assert_allclose(np.linalg.norm(np.asarray(y16, "float32"), axis=-1)
                               .reshape(-1)[1:], 20.0, rtol=2e-3)


def test_caffe_normalisation_matches_keras_applications():
    x = np.random.default_rng(1).uniform(0, 255, (2, 4, 5, 3)).astype("float32")
    np.testing.assert_allclose(ImageNormalization("caffe")(x).numpy(),
                               keras.applications.vgg16.preprocess_input(x.copy()), atol=1e-4)
    torch = ImageNormalization("torch")(x).numpy()
    np.testing.assert_allclose(torch[..., 0], (x[..., 0] / 255 - 0.485) / 0.229, atol=1e-4)


def _save_legacy_h5(model, path):
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)


@pytest.mark.parametrize("layout", ["keras3", "legacy"])
def test_load_vgg16_imagenet_copies_block_convs(vgg300, tmp_path, layout):
    keras.utils.set_random_seed(3 if layout == "keras3" else 4)
    apps = keras.applications.VGG16(weights=None, include_top=False, input_shape=(64, 64, 3))
    if layout == "keras3":
        path = tmp_path / "vgg16_notop.weights.h5"
        apps.save_weights(path)
    else:  # the layout of keras.applications' downloads (vgg16_..._notop.h5)
        path = tmp_path / "vgg16_notop.h5"
        _save_legacy_h5(apps, path)
    fc6_before = vgg300.get_layer("fc6").kernel.numpy()

    report = load_vgg16_imagenet(vgg300, path)

    assert report["loaded"] == list(VGG16_CONV_NAMES)
    assert {"fc6", "fc7", "conv4_3_norm", "conv8_1", "conv11_2"} <= set(report["new"])
    for name in VGG16_CONV_NAMES:
        for ours, theirs in zip(vgg300.get_layer(name).weights, apps.get_layer(name).weights,
                                strict=True):
            np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    np.testing.assert_array_equal(vgg300.get_layer("fc6").kernel.numpy(), fc6_before)
    if layout == "legacy":
        # Same features as keras.applications on caffe-preprocessed input (first two blocks).
        x = np.random.default_rng(2).uniform(0, 255, (1, 300, 300, 3)).astype("float32")
        ours = keras.Model(vgg300.input, vgg300.get_layer("block2_conv1").output)(x)
        y = keras.applications.vgg16.preprocess_input(x.copy())
        for name in ("block1_conv1", "block1_conv2", "block1_pool", "block2_conv1"):
            y = apps.get_layer(name)(y)
        np.testing.assert_allclose(ours.numpy(), y.numpy(), rtol=1e-4, atol=1e-3)
        with pytest.raises(WeightsError, match="no fc1/fc2"):
            load_vgg16_imagenet(vgg300, path, fc_weights_path=path)


def test_read_h5_rejects_non_keras_files(tmp_path):
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.create_dataset("a", data=np.zeros(3))
    with pytest.raises(WeightsError, match="not a Keras weights file"):
        read_h5_layer_weights(tmp_path / "x.h5")
    (tmp_path / "y.h5").write_text("not hdf5")
    with pytest.raises(WeightsError, match="HDF5"):
        read_h5_layer_weights(tmp_path / "y.h5")


def test_fc_subsampling_to_atrous_fc6_and_fc7():
    # A fake fc1 on a 7x7x2 map with 16 units and a fake 16x16 fc2, values = flat index.
    fc1 = np.arange(7 * 7 * 2 * 16, dtype="float32").reshape(98, 16)
    fc2 = np.arange(16 * 16, dtype="float32").reshape(16, 16)
    b1, b2 = np.arange(16, dtype="float32"), 100 + np.arange(16, dtype="float32")
    # fc1's rows follow Keras' channels-last Flatten: row (h * 7 + w) * C + c.
    grid = np.arange(98, dtype="float32").reshape(1, 7, 7, 2)
    assert keras.layers.Flatten()(grid).numpy()[0, (3 * 7 + 6) * 2 + 1] == grid[0, 3, 6, 1]

    k6, c6 = subsample_fc6(fc1, b1)
    assert k6.shape == (3, 3, 2, 4) and c6.shape == (4,)
    # Tap (1, 2) reads map cell (3, 6); output 3 is unit 12.
    assert k6[1, 2, 1, 3] == fc1[(3 * 7 + 6) * 2 + 1, 12]
    assert k6[0, 0, 0, 0] == fc1[0, 0] and k6[2, 2, 0, 1] == fc1[(6 * 7 + 6) * 2, 4]
    np.testing.assert_array_equal(c6, [0, 4, 8, 12])

    k7, c7 = subsample_fc7(fc2, b2)
    assert k7.shape == (1, 1, 4, 4) and c7.shape == (4,)
    assert k7[0, 0, 2, 3] == fc2[8, 12]
    np.testing.assert_array_equal(c7, [100, 104, 108, 112])
    with pytest.raises(ValueError, match="7x7xC"):
        subsample_fc6(np.zeros((50, 4)), np.zeros(4))


def _tiny_vgg(top):
    """VGG16's layer names at 4 channels: with fc1/fc2 (``top``) or with SSD's fc6/fc7."""
    inputs = keras.Input((7, 7, 3))
    x = inputs
    for name in VGG16_CONV_NAMES:
        x = keras.layers.Conv2D(4, 3, padding="same", name=name)(x)
    if top:
        x = keras.layers.Flatten()(x)
        x = keras.layers.Dense(16, name="fc1")(x)
        x = keras.layers.Dense(16, name="fc2")(x)
    else:
        x = keras.layers.Conv2D(4, 3, padding="same", dilation_rate=6, name="fc6")(x)
        x = keras.layers.Conv2D(4, 1, name="fc7")(x)
    return keras.Model(inputs, x)


def test_load_vgg16_imagenet_subsamples_fc_layers_from_a_file(tmp_path):
    keras.utils.set_random_seed(7)
    source, target = _tiny_vgg(top=True), _tiny_vgg(top=False)
    source.save_weights(tmp_path / "vgg16_top.weights.h5")
    report = load_vgg16_imagenet(target, tmp_path / "vgg16_top.weights.h5")
    assert report["loaded"] == [*VGG16_CONV_NAMES, "fc6", "fc7"] and report["new"] == []
    fc1, b1 = (w.numpy() for w in source.get_layer("fc1").weights)
    fc2, b2 = (w.numpy() for w in source.get_layer("fc2").weights)
    fc6, c6 = (w.numpy() for w in target.get_layer("fc6").weights)
    fc7, c7 = (w.numpy() for w in target.get_layer("fc7").weights)
    assert fc6[2, 1, 3, 2] == fc1[(6 * 7 + 3) * 4 + 3, 8] and fc6.shape == (3, 3, 4, 4)
    assert fc7[0, 0, 1, 3] == fc2[4, 12]
    np.testing.assert_array_equal(c6, b1[::4])
    np.testing.assert_array_equal(c7, b2[::4])


def test_vgg_config_round_trip():
    model = ssd_vgg16(300, normalization="torch", name="my_vgg")
    config = keras.saving.serialize_keras_object(model)
    assert config["config"] == {"image_size": 300, "normalization": "torch", "name": "my_vgg",
                                "trainable": True}
    again = keras.saving.deserialize_keras_object(config)
    assert isinstance(again, SSDVGG16) and again.get_config() == model.get_config()
    assert again.level_names == model.level_names
    assert again.count_params() == model.count_params()


def test_custom_layers_save_and_load(tmp_path):
    inputs = keras.Input((6, 6, 3))
    x = ImageNormalization("caffe", name="normalize")(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same")(x)
    x = L2Normalization(10.0, name="l2norm")(x)
    model = keras.Model(inputs, x)
    model.get_layer("l2norm").scale.assign(np.linspace(1, 8, 8, dtype="float32"))
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras")
    assert again.get_layer("normalize").mode == "caffe"
    assert again.get_layer("l2norm").scale_init == 10.0
    x = np.random.default_rng(0).uniform(0, 255, (2, 6, 6, 3)).astype("float32")
    np.testing.assert_allclose(again(x).numpy(), model(x).numpy(), rtol=1e-6)


# ------------------------------------------------------------------------------ MobileNet


def test_ssdlite_mobilenet_v2_levels():
    model = ssdlite_mobilenet_v2(320)
    assert model.level_names == ("C4", "C5", "extra1", "extra2", "extra3", "extra4")
    assert _level_shapes(model) == {
        "C4": (20, 20, 576), "C5": (10, 10, 1280), "extra1": (5, 5, 512),
        "extra2": (3, 3, 256), "extra3": (2, 2, 256), "extra4": (1, 1, 128)}
    base = model.get_layer("mobilenet_v2")
    # C4 is the expansion output of block 13 (before its stride-2 depthwise conv).
    assert base.outputs[0] is base.get_layer("block_13_expand_relu").output
    assert base.outputs[1] is base.get_layer("out_relu").output


@pytest.mark.parametrize("variant,c4,c5", [("large", 672, 960), ("small", 288, 576)])
def test_ssdlite_mobilenet_v3_levels(variant, c4, c5):
    model = ssdlite_mobilenet_v3(320, variant)
    assert _level_shapes(model) == {
        "C4": (20, 20, c4), "C5": (10, 10, c5), "extra1": (5, 5, 512),
        "extra2": (3, 3, 256), "extra3": (2, 2, 256), "extra4": (1, 1, 128)}
    base = model.get_layer(f"mobilenet_v3_{variant}")
    block = {"large": 12, "small": 8}[variant]
    # C4: the activation of block 12 (large) / 8 (small)'s expansion; C5: of conv_1.
    c4_activation = base.outputs[0]._keras_history.operation
    assert c4_activation.input is base.get_layer(f"expanded_conv_{block}_expand_bn").output
    assert base.get_layer(f"expanded_conv_{block}_depthwise").strides == (2, 2)
    assert base.outputs[1]._keras_history.operation.input is base.get_layer("conv_1_bn").output
    assert not any(isinstance(layer, keras.layers.Rescaling) for layer in base.layers)


def test_ssdlite_small_input_forward_and_save(tmp_path):
    keras.utils.set_random_seed(5)
    model = ssdlite_mobilenet_v2(128)
    x = np.random.default_rng(0).uniform(0, 255, (2, 128, 128, 3)).astype("float32")
    out = model(x)
    assert list(out) == list(model.level_names)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "C4": (2, 8, 8, 576), "C5": (2, 4, 4, 1280), "extra1": (2, 2, 2, 512),
        "extra2": (2, 1, 1, 256), "extra3": (2, 1, 1, 256), "extra4": (2, 1, 1, 128)}
    # Scaled to [-1, 1] inside.
    normalize = model.get_layer("normalize")
    np.testing.assert_allclose(normalize(np.array([0.0, 127.5, 255.0])).numpy(), [-1, 0, 1])

    model.save(tmp_path / "ssdlite.keras")
    again = keras.saving.load_model(tmp_path / "ssdlite.keras")
    assert isinstance(again, SSDLiteMobileNet) and again.get_config() == model.get_config()
    assert again.get_config()["image_size"] == 128
    for name, value in again(x).items():
        np.testing.assert_allclose(value.numpy(), out[name].numpy(), rtol=1e-5, atol=1e-5)


# Keras warns per skipped weightless operation while it fails to load the alpha=0.5 case.
@pytest.mark.filterwarnings("ignore:Skipping nested container")
@pytest.mark.parametrize("arch", ["mobilenet_v2", "mobilenet_v3_large"])
def test_ssdlite_weights_file_round_trip(tmp_path, arch):
    keras.utils.set_random_seed(6)
    if arch == "mobilenet_v2":
        apps = keras.applications.MobileNetV2(weights=None, include_top=False,
                                              input_shape=(96, 96, 3))
    else:  # keras' default include_preprocessing=True: one weightless layer more
        apps = keras.applications.MobileNetV3Large(weights=None, include_top=False,
                                                   input_shape=(96, 96, 3))
    path = tmp_path / f"{arch}_notop.weights.h5"
    apps.save_weights(path)

    if arch == "mobilenet_v2":
        model = ssdlite_mobilenet_v2(128, weights=path)
    else:
        model = ssdlite_mobilenet_v3(128, "large", weights=str(path))
    base = {v.path: v.numpy() for v in model.get_layer(arch).weights}
    source = {v.path: v.numpy() for v in apps.weights}
    assert base.keys() == source.keys()
    for key, value in source.items():
        np.testing.assert_array_equal(base[key], value, err_msg=key)
    assert model.get_config().get("weights") is None  # reloads from its own file, not this one
    if arch == "mobilenet_v2":
        with pytest.raises(WeightsError, match="alpha=0.5"):
            ssdlite_mobilenet_v2(128, alpha=0.5, weights=path)


def test_depthwise_separable_conv():
    inputs = keras.Input((16, 16, 32))
    y = depthwise_separable_conv(inputs, 64, strides=2, activation="relu6", name="sep")
    model = keras.Model(inputs, y)
    assert tuple(y.shape) == (None, 8, 8, 64)
    # depthwise 3x3x32 + BN(32) + pointwise 32x64 (no bias) + BN(64); BN has 4 vectors.
    assert model.count_params() == 9 * 32 + 4 * 32 + 32 * 64 + 4 * 64
    assert [layer.name for layer in model.layers[1:]] == [
        "sep_dw_pad", "sep_dw", "sep_dw_bn", "sep_dw_relu", "sep_pw", "sep_pw_bn", "sep_pw_act"]
    out = model(np.random.default_rng(0).normal(size=(1, 16, 16, 32)).astype("float32"))
    assert float(np.min(out)) >= 0.0 and float(np.max(out)) <= 6.0

    # A prediction head variant: pointwise conv with bias, no BN, no activation.
    inputs = keras.Input((5, 5, 8))
    head = keras.Model(inputs, depthwise_separable_conv(inputs, 12, pointwise_norm=False,
                                                        name="h"))
    assert head.output_shape == (None, 5, 5, 12)
    assert head.count_params() == 9 * 8 + 4 * 8 + 8 * 12 + 12
    assert "h_pw_bn" not in [layer.name for layer in head.layers]
