"""The fused training-mode BatchNormalization equals Keras' own, step for step."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from kft.ops.batch_norm import batch_norm_training, uses_fused_kernel
from kft.train.fused_bn import fused_batch_norms


def _keras_reference(x, gamma, beta, epsilon):
    mean, variance = ops.moments(x, axes=list(range(len(x.shape) - 1)))
    y = ops.batch_normalization(x, mean, variance, axis=-1, offset=beta, scale=gamma,
                                epsilon=epsilon)
    return y, mean, variance


@pytest.mark.parametrize("shape", [(4, 5, 6, 8), (1, 1, 1, 3), (2, 3)])
@pytest.mark.parametrize("epsilon", [1e-3, 1e-5])
def test_op_equals_keras_moments_and_normalisation(shape, epsilon):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=shape) * 3 + 1).astype("float32")
    gamma = rng.uniform(0.5, 2, shape[-1]).astype("float32")
    beta = rng.normal(size=shape[-1]).astype("float32")
    got = batch_norm_training(ops.convert_to_tensor(x), gamma, beta, epsilon)
    want = _keras_reference(ops.convert_to_tensor(x), gamma, beta, epsilon)
    for g, w, name in zip(got, want, ("y", "mean", "variance"), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-5,
                                   err_msg=name)
    if shape == (1, 1, 1, 3):  # one value per channel: population variance 0, y = beta
        np.testing.assert_allclose(np.asarray(got[2]), 0.0, atol=1e-7)
        np.testing.assert_allclose(np.asarray(got[0]).reshape(-1), beta, atol=1e-3)
    # on a CPU both epsilons (keras-hub ResNets use 1e-5) take the fused kernel, 4-D only
    if not tf.config.list_logical_devices("GPU"):
        assert uses_fused_kernel(len(shape), "float32", epsilon) == (len(shape) == 4)


def _net(seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 3, use_bias=False)(inputs)
    x = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-3, name="bn1")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(6, 3, strides=2)(x)
    x = keras.layers.BatchNormalization(center=False, scale=False, name="bn2")(x)
    frozen = keras.layers.BatchNormalization(name="frozen")
    frozen.trainable = False
    x = frozen(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.BatchNormalization(name="bn_2d")(x)
    return keras.Model(inputs, keras.layers.Dense(2)(x))


def _step(model, x, y):
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    loss = model.train_on_batch(x, y)
    return loss, [np.asarray(v) for v in model.weights]


def test_training_steps_equal_keras_and_the_layers_stay_plain_keras(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (6, 12, 12, 3)).astype("float32")
    y = rng.normal(size=(6, 2)).astype("float32")
    plain = _net(0)
    fused = _net(0)
    with fused_batch_norms(fused) as covered:
        # bn1, bn2, the frozen one (trainable=False: inference mode, as in Keras) and the 2-D
        # bn_2d (Keras' path inside the op)
        assert covered == 4
        assert "_fused_call" in fused.get_layer("bn1").call.__name__
        out_fused = np.asarray(fused(x, training=True))
        step_fused = _step(fused, x, y)
    out_plain = np.asarray(plain(x, training=True))
    step_plain = _step(plain, x, y)
    np.testing.assert_allclose(out_fused, out_plain, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(step_fused[0], step_plain[0], rtol=1e-4)
    # every weight after the step, moving statistics included, as Keras computes them
    for a, b, v in zip(step_fused[1], step_plain[1], plain.weights, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=v.path)
    moving = plain.get_layer("bn1").moving_mean
    assert np.abs(np.asarray(moving)).max() > 0  # the statistics did move
    # closed: the class method again, the config and the saved file those of plain Keras
    bn = fused.get_layer("bn1")
    assert "call" not in vars(bn) and bn.call.__func__ is keras.layers.BatchNormalization.call
    fused.save(tmp_path / "m.keras")
    with __import__("zipfile").ZipFile(tmp_path / "m.keras") as z:
        config = json.loads(z.read("config.json"))
    classes = {layer["class_name"] for layer in config["config"]["layers"]}
    assert "BatchNormalization" in classes and not any("kft" in c for c in classes)
    loaded = keras.saving.load_model(tmp_path / "m.keras", compile=False)
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(fused(x)), atol=1e-6)


def test_options_the_fused_path_does_not_cover_keep_keras_path():
    inputs = keras.Input((4, 4, 2))
    renorm = keras.layers.BatchNormalization(renorm=True, name="renorm")
    synced = keras.layers.BatchNormalization(synchronized=True, name="synced")
    first_axis = keras.layers.BatchNormalization(axis=1, name="axis1")
    model = keras.Model(inputs, first_axis(synced(renorm(inputs))))
    x = np.random.default_rng(2).normal(size=(3, 4, 4, 2)).astype("float32")
    want = np.asarray(model(x, training=True))
    with fused_batch_norms(model) as covered:
        assert covered == 1  # only the axis=1 layer, which falls back at call time
        assert "call" not in vars(renorm) and "call" not in vars(synced)
        with fused_batch_norms(model) as nested:  # nested: the outer block keeps its layers
            assert nested == 0
        assert "call" in vars(first_axis)
        got = np.asarray(model(x, training=True))
    assert "call" not in vars(first_axis)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_mixed_precision_output_dtype_and_values():
    keras.config.set_dtype_policy("mixed_float16")
    try:
        layer = keras.layers.BatchNormalization()
        model = keras.Sequential([keras.Input((5, 5, 4)), layer])
        x = np.random.default_rng(3).normal(size=(2, 5, 5, 4)).astype("float32")
        want = np.asarray(model(x, training=True), "float32")
        with fused_batch_norms(model):
            out = model(x, training=True)
        assert keras.backend.standardize_dtype(out.dtype) == "float16"
        np.testing.assert_allclose(np.asarray(out, "float32"), want, atol=5e-3)
    finally:
        keras.config.set_dtype_policy("float32")
