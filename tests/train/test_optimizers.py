import keras
import numpy as np
import pytest

from kft.train.optimizers import LayerwiseAdamW, LayerwiseSGD, build_optimizer


def _two_layer_model():
    inp = keras.Input((4,))
    h = keras.layers.Dense(3, name="stack3_block0_dense", kernel_initializer="ones")(inp)
    out = keras.layers.Dense(2, name="predictions", kernel_initializer="ones")(h)
    return keras.Model(inp, out)


def _one_step(optimizer):
    model = _two_layer_model()
    before = {v.path: v.numpy().copy() for v in model.trainable_weights}
    grads = [keras.ops.ones_like(v) for v in model.trainable_weights]
    optimizer.apply_gradients(zip(grads, model.trainable_weights, strict=True))
    return {v.path: before[v.path] - v.numpy() for v in model.trainable_weights}


def test_sgd_multiplier_scales_the_update_exactly():
    delta = _one_step(LayerwiseSGD(learning_rate=0.1, lr_multipliers={r"^stack3_": 0.01}))
    np.testing.assert_allclose(delta["stack3_block0_dense/kernel"], 0.001, rtol=1e-4)
    np.testing.assert_allclose(delta["predictions/kernel"], 0.1, rtol=1e-4)


def test_adamw_multiplier_is_not_cancelled_by_normalisation():
    # Scaling gradients would be invisible to Adam; scaling the step is not.
    delta = _one_step(LayerwiseAdamW(learning_rate=0.1, weight_decay=0.0,
                                     lr_multipliers={r"^stack3_": 0.1}))
    ratio = delta["stack3_block0_dense/kernel"].mean() / delta["predictions/kernel"].mean()
    assert ratio == pytest.approx(0.1, rel=1e-4)


def test_multipliers_survive_model_save(tmp_path):
    model = _two_layer_model()
    model.compile(build_optimizer("sgd", 0.1, lr_multipliers={r"^stack3_": 0.5}), "mse")
    model.fit(np.ones((4, 4)), np.ones((4, 2)), verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.optimizer, LayerwiseSGD)
    assert loaded.optimizer.lr_multipliers == {r"^stack3_": 0.5}
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy())


def test_build_optimizer_fields():
    opt = build_optimizer("sgd", 0.01, momentum=0.9, weight_decay=1e-4, clipnorm=5.0,
                          grad_accum_steps=4)
    assert opt.global_clipnorm == 5.0 and opt.gradient_accumulation_steps == 4
    assert opt.momentum == 0.9 and opt.weight_decay == 1e-4
    with pytest.raises(ValueError, match="train.optimizer"):
        build_optimizer("lion", 0.1)
