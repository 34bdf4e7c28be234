import keras
import numpy as np
import pytest

from kft.train.finetune import (
    ProgressiveUnfreeze,
    candidate_trainable_variables,
    set_trainable_stages,
    stage_lr_multipliers,
    top_down_stages,
    trainable_stages,
)


def _values(model, prefix):
    return {v.path: v.numpy().copy() for v in model.weights if v.path.startswith(prefix)}


def test_freeze_all_but_top_stage(tiny_classifier, colour_batch):
    model = tiny_classifier
    assert set_trainable_stages(model, ("layer3",)) == ["layer3"]
    assert trainable_stages(model) == ["layer3"]
    paths = {v.path for v in model.trainable_variables}
    assert any(p.startswith("stack2_") for p in paths)
    assert not any(p.startswith(("stack0_", "stack1_", "conv1_")) for p in paths)
    assert any(p.startswith("predictions/") for p in paths)

    frozen_before = _values(model, "stack0_")  # includes BN moving statistics
    top_before = _values(model, "stack2_")
    x, y = colour_batch
    model.compile(keras.optimizers.SGD(0.05), keras.losses.CategoricalCrossentropy(True))
    model.fit(x, y, epochs=2, batch_size=6, verbose=0)
    for path, value in _values(model, "stack0_").items():
        np.testing.assert_array_equal(value, frozen_before[path], err_msg=path)
    moved = [p for p, v in _values(model, "stack2_").items()
             if not np.array_equal(v, top_before[p])]
    assert any("moving_mean" in p for p in moved)  # the trainable stage's BN still adapts
    assert any("kernel" in p for p in moved)


def test_frozen_batchnorm_runs_in_inference_mode(tiny_classifier):
    model = tiny_classifier
    set_trainable_stages(model, "none" and ("none",))
    x = np.random.default_rng(0).uniform(0, 255, (4, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(model(x, training=True), model(x, training=False), atol=1e-4)


def test_unknown_stage_rejected(tiny_classifier):
    with pytest.raises(ValueError, match="layer4"):
        set_trainable_stages(tiny_classifier, ("layer4",))  # the tiny ResNet has 3 stages


def test_top_down_and_multipliers(tiny_classifier):
    assert top_down_stages(tiny_classifier, 2) == ["layer2", "layer3"]
    patterns = stage_lr_multipliers(tiny_classifier, {"layer3": 1e-4, "stem": 0.0}, 1e-2)
    assert sorted(patterns.values()) == pytest.approx([0.0, 0.01])
    with pytest.raises(ValueError, match="layer_lrs"):
        stage_lr_multipliers(tiny_classifier, {"fc": 1.0}, 1e-2)


def test_progressive_unfreeze_during_fit(tiny_classifier, colour_batch):
    model = tiny_classifier
    set_trainable_stages(model, ("none",))
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                  keras.losses.CategoricalCrossentropy(True))
    model.optimizer.build(candidate_trainable_variables(model))
    seen = []

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(trainable_stages(self.model))

    stem_before = _values(model, "conv1_")
    l3_before = _values(model, "stack2_")
    x, y = colour_batch
    model.fit(x, y, epochs=5, batch_size=6, verbose=0,
              callbacks=[ProgressiveUnfreeze(initial=0, every=2, per_round=1, verbose=False),
                         Record()])
    assert seen == [[], [], ["layer3"], ["layer3"], ["layer2", "layer3"]]
    assert all(np.array_equal(v, stem_before[p]) for p, v in _values(model, "conv1_").items())
    assert any(not np.array_equal(v, l3_before[p]) for p, v in _values(model, "stack2_").items())


def test_head_first_freezes_the_backbone_then_trains_it_at_a_lower_rate(tiny_classifier,
                                                                       colour_batch):
    from kft.train.finetune import HeadFirst, scaled_backbone_lrs

    model = tiny_classifier
    set_trainable_stages(model, ("none",))
    lrs = scaled_backbone_lrs(model, 0.1, 1e-2, {"layer3": 5e-3})
    assert lrs == {"stem": 1e-3, "layer1": 1e-3, "layer2": 1e-3, "layer3": 5e-3}
    model.compile(keras.optimizers.SGD(0.05), keras.losses.CategoricalCrossentropy(True))
    model.optimizer.build(candidate_trainable_variables(model))
    seen = []

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(trainable_stages(self.model))

    stem_before = _values(model, "conv1_")
    x, y = colour_batch
    model.fit(x, y, epochs=3, batch_size=6, verbose=0,
              callbacks=[HeadFirst(2, ("all",), verbose=False), Record()])
    assert seen == [[], [], ["stem", "layer1", "layer2", "layer3"]]
    assert any(not np.array_equal(v, stem_before[p]) for p, v in _values(model, "conv1_").items())
