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


def _decay_steps(optimizer, steps=2):
    """Kernels after ``steps`` steps with zero gradients (only weight decay moves them)."""
    model = _two_layer_model()
    for _ in range(steps):
        grads = [keras.ops.zeros_like(v) for v in model.trainable_weights]
        optimizer.apply_gradients(zip(grads, model.trainable_weights, strict=True))
    return {v.path: v.numpy() for v in model.trainable_weights}


def test_decoupled_weight_decay_follows_the_multiplier():
    # Keras alone decays every variable with the base rate: 1 - 0.1 * 0.1 per step
    plain = _decay_steps(keras.optimizers.SGD(0.1, weight_decay=0.1), steps=1)
    np.testing.assert_allclose(plain["stack3_block0_dense/kernel"], 0.99, rtol=1e-6)
    out = _decay_steps(LayerwiseSGD(learning_rate=0.1, weight_decay=0.1,
                                    lr_multipliers={r"^stack3_": 0.1}), steps=1)
    np.testing.assert_allclose(out["stack3_block0_dense/kernel"], 1 - 0.001, rtol=1e-6)
    np.testing.assert_allclose(out["predictions/kernel"], 1 - 0.01, rtol=1e-6)


def test_multiplier_zero_freezes_the_variable_decay_included():
    out = _decay_steps(LayerwiseAdamW(learning_rate=0.1, weight_decay=0.1,
                                      lr_multipliers={r"^stack3_": 0.0}))
    np.testing.assert_array_equal(out["stack3_block0_dense/kernel"], 1.0)
    assert np.all(out["predictions/kernel"] < 1.0)


def test_coupled_weight_decay_goes_through_momentum():
    # torch.optim.SGD(lr=0.1, momentum=0.9, weight_decay=0.1) from w = 1 with zero gradients:
    # buf = 0.1 -> w = 0.99; buf = 0.9 * 0.1 + 0.099 -> w = 0.99 - 0.1 * 0.189 = 0.9711
    coupled = _decay_steps(LayerwiseSGD(learning_rate=0.1, momentum=0.9, weight_decay=0.1,
                                        weight_decay_mode="coupled"))
    np.testing.assert_allclose(coupled["predictions/kernel"], 0.9711, rtol=1e-6)
    decoupled = _decay_steps(LayerwiseSGD(learning_rate=0.1, momentum=0.9, weight_decay=0.1))
    np.testing.assert_allclose(decoupled["predictions/kernel"], 0.99 * 0.99, rtol=1e-6)
    half = _decay_steps(LayerwiseSGD(learning_rate=0.1, momentum=0.9, weight_decay=0.1,
                                     weight_decay_mode="coupled",
                                     lr_multipliers={r"^stack3_": 0.5}))
    # lr 0.05: w = 0.995, buf 0.1 * 0.9 + 0.0995 -> w = 0.995 - 0.05 * 0.1895
    np.testing.assert_allclose(half["stack3_block0_dense/kernel"], 0.995 - 0.05 * 0.1895,
                               rtol=1e-6)


def test_weight_decay_mode_is_checked_and_saved():
    with pytest.raises(ValueError, match="weight_decay_mode"):
        LayerwiseSGD(learning_rate=0.1, weight_decay_mode="l2")
    opt = build_optimizer("sgd", 0.1, weight_decay=1e-4, weight_decay_mode="coupled")
    assert LayerwiseSGD.from_config(opt.get_config()).weight_decay_mode == "coupled"


def test_adamw_without_weight_decay_builds():
    """train.weight_decay=0 with AdamW used to fail in Keras ("weight_decay must be a float")."""
    import keras as _keras

    from kft.train.optimizers import build_optimizer as _build

    v = _keras.Variable(np.ones(3, "float32"))
    opt = _build("adamw", 0.1, weight_decay=0.0)
    opt.apply([_keras.ops.zeros(3)], [v])  # zero gradient, no decay: nothing moves
    np.testing.assert_allclose(v.numpy(), 1.0)


@pytest.mark.parametrize("amsgrad", [False, True])
def test_adamw_matches_keras_adamw_step_for_step(amsgrad):
    """On TensorFlow the update runs as one ResourceApplyAdam kernel (AMSGrad: Keras' own
    update_step); either way the weights follow keras.optimizers.AdamW."""
    rng = np.random.default_rng(0)
    shapes = [(3, 4), (4,), (2, 2, 3)]
    start = [rng.normal(size=s).astype("float32") for s in shapes]
    grads = [[rng.normal(size=s).astype("float32") for s in shapes] for _ in range(5)]
    results = []
    for optimizer in (LayerwiseAdamW(learning_rate=0.01, weight_decay=0.05, amsgrad=amsgrad),
                      keras.optimizers.AdamW(learning_rate=0.01, weight_decay=0.05,
                                             amsgrad=amsgrad)):
        variables = [keras.Variable(v.copy()) for v in start]
        optimizer.build(variables)
        if isinstance(optimizer, LayerwiseAdamW):
            assert optimizer._fused_adam(variables[0].value) == (
                keras.backend.backend() == "tensorflow" and not amsgrad)
            if keras.backend.backend() == "tensorflow":  # under a strategy: Keras' own step
                import tensorflow as tf

                with tf.distribute.OneDeviceStrategy("/cpu:0").scope():
                    assert not optimizer._fused_adam(variables[0].value)
        for step in grads:
            optimizer.apply_gradients(zip([keras.ops.convert_to_tensor(g) for g in step],
                                          variables, strict=True))
        results.append([v.numpy() for v in variables])
    moved = np.abs(results[1][0] - start[0]).max()
    assert moved > 0.01  # five steps of lr 0.01 did move the weights
    for ours, theirs in zip(*results, strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)  # float32 rounding
