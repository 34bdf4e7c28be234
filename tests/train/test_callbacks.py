import json

import keras
import numpy as np
import pytest

from kft.train.callbacks import (
    EpochCheckpoint,
    LearningRateLogger,
    ResumableEarlyStopping,
    StopOnNaN,
    read_state,
    restore_checkpoint,
)


def _model(lr=0.05):
    keras.utils.set_random_seed(0)
    inp = keras.Input((3,))
    out = keras.layers.Dense(1, name="out")(keras.layers.Dense(8, name="h")(inp))
    model = keras.Model(inp, out)
    model.compile(keras.optimizers.SGD(lr, momentum=0.9), "mse")
    model.optimizer.build(model.trainable_variables)
    return model


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 3)).astype("float32")
    return x, x.sum(axis=1, keepdims=True)


def test_checkpoint_commits_state_and_restores_optimizer(tmp_path):
    x, y = _data()
    model = _model()
    model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[EpochCheckpoint(tmp_path)])
    state = read_state(tmp_path)
    assert state["epoch"] == 2 and state["iterations"] == 8
    assert sorted(p.name for p in tmp_path.glob("*.weights.h5")) == ["epoch-0002.weights.h5"]
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob("partial-*"))

    fresh = _model()
    assert restore_checkpoint(fresh, tmp_path)["epoch"] == 2
    for a, b in zip(model.weights + model.optimizer.variables,
                    fresh.weights + fresh.optimizer.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_no_checkpoint_means_none(tmp_path):
    assert restore_checkpoint(_model(), tmp_path) is None


def test_state_names_a_missing_file(tmp_path):
    (tmp_path / "state.json").write_text(json.dumps({"epoch": 1, "weights": "gone.weights.h5"}))
    with pytest.raises(FileNotFoundError, match="gone.weights.h5"):
        restore_checkpoint(_model(), tmp_path)


def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path):
    x, y = _data()
    model = _model()
    nan = StopOnNaN()
    ckpt = EpochCheckpoint(tmp_path)
    model.fit(x, y, epochs=1, batch_size=8, verbose=0, callbacks=[nan, ckpt])
    good = {v.path: v.numpy().copy() for v in model.weights}
    y_bad = y.copy()
    y_bad[5] = np.inf
    model.fit(x, y_bad, epochs=3, initial_epoch=1, batch_size=8, verbose=0, callbacks=[nan, ckpt])
    assert nan.bad is not None and nan.bad[0] == 1 and not np.isfinite(nan.bad[2])
    assert read_state(tmp_path)["epoch"] == 1  # the diverged epoch was not written
    fresh = _model()
    restore_checkpoint(fresh, tmp_path)
    for v in fresh.weights:
        np.testing.assert_array_equal(v.numpy(), good[v.path])


def test_learning_rate_logged_and_early_stopping_state_resumes(tmp_path):
    x, y = _data()
    model = _model()
    schedule = keras.optimizers.schedules.ExponentialDecay(0.05, 4, 0.5, staircase=True)
    model.compile(keras.optimizers.SGD(schedule), "mse")
    es = ResumableEarlyStopping(monitor="loss", mode="min", patience=3,
                                restore_best_weights=True)
    history = model.fit(x, y, epochs=2, batch_size=8, verbose=0,
                        callbacks=[LearningRateLogger(), es, EpochCheckpoint(tmp_path, es)])
    # 4 steps per epoch: epoch 1 steps 0-3 use 0.05, epoch 2 steps 4-7 use 0.025
    assert history.history["learning_rate"] == pytest.approx([0.05, 0.025])
    state = read_state(tmp_path)["early_stopping"]
    assert state["best"] == pytest.approx(history.history["loss"][1])
    es2 = ResumableEarlyStopping(monitor="loss", mode="min", patience=3,
                                 restore_best_weights=True)
    restore_checkpoint(model, tmp_path, es2)
    es2.set_model(model)
    es2.on_train_begin()
    assert es2.best == pytest.approx(state["best"]) and es2.best_epoch == 1
    assert len(es2.best_weights) == len(model.get_weights())


def test_logged_learning_rate_is_the_last_updates_under_accumulation():
    # 4 batches per epoch, an update every 2nd batch (raw counters 1 and 3); Keras evaluates
    # the schedule at the raw counter: update 1 uses lr(1) = 0.1, update 2 lr(3) = 0.01.
    x, y = _data()
    model = _model()
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([2], [0.1, 0.01])
    optimizer = keras.optimizers.SGD(schedule, gradient_accumulation_steps=2)
    model.compile(optimizer, "mse")
    history = model.fit(x, y, epochs=2, batch_size=8, verbose=0,
                        callbacks=[LearningRateLogger()])
    assert history.history["learning_rate"] == pytest.approx([0.01, 0.01])
    model = _model()
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([4], [0.1, 0.01])
    model.compile(keras.optimizers.SGD(schedule, gradient_accumulation_steps=2), "mse")
    history = model.fit(x, y, epochs=2, batch_size=8, verbose=0,
                        callbacks=[LearningRateLogger()])
    assert history.history["learning_rate"] == pytest.approx([0.1, 0.01])


def test_an_early_stopped_run_is_not_trained_again_on_resume(tmp_path):
    from kft.train.runs import resume_state

    x, y = _data()
    model = _model()
    # the loss falls, so "max" mode sees no improvement after epoch 0 and stops after epoch 1
    es = ResumableEarlyStopping(monitor="loss", mode="max", patience=1,
                                restore_best_weights=True)
    model.fit(x, y, epochs=10, batch_size=8, verbose=0,
              callbacks=[es, EpochCheckpoint(tmp_path, es)])
    state = read_state(tmp_path)
    assert state["epoch"] == 2 and state["stopped_early"] is True
    # the best weights are epoch 1's, in a file named by the committed state
    assert state["best_weights"] == "best-0001.npz"
    assert sorted(p.name for p in tmp_path.glob("best*.npz")) == ["best-0001.npz"]
    fresh = _model()
    es2 = ResumableEarlyStopping(monitor="loss", mode="max", patience=1,
                                 restore_best_weights=True)
    assert resume_state(fresh, tmp_path, es2, True, epochs=10) == 10


def test_stalled_metric_hint_prints_what_to_check_once(capsys):
    """E7: the loss falls by a third but val AP50 stays near 0 for two evaluations."""
    from kft.train.callbacks import STALLED_CHECKS, StalledMetricHint

    hint = StalledMetricHint("val_bbox_AP50", 0.02, what="val bbox AP50")
    logs = [{"loss": 9.9}, {"loss": 8.0, "val_bbox_AP50": 0.0001},
            {"loss": 7.5, "val_bbox_AP50": 0.0}, {"loss": 4.7, "val_bbox_AP50": 0.0}]
    for epoch, entry in enumerate(logs[:3]):
        hint.on_epoch_end(epoch, dict(entry))
    assert capsys.readouterr().out == ""  # 8.0 and 7.5 are not a third below 9.9
    hint.on_epoch_end(3, dict(logs[3]))
    out = capsys.readouterr().out
    assert "fell from 9.9 to 4.7" in out and "val bbox AP50 is still 0.0000" in out
    assert all(line.split(":")[0] in out for line in STALLED_CHECKS)
    hint.on_epoch_end(4, {"loss": 4.0, "val_bbox_AP50": 0.0})
    assert capsys.readouterr().out == ""  # once


def test_stalled_metric_hint_counts_only_evaluated_epochs(capsys):
    """eval.every=3: epochs 1 and 2 log the 0.0 placeholder of a metric not computed yet (the
    quick start printed the hint after its second epoch); epochs 3 and 6 are evaluations."""
    from kft.train.callbacks import StalledMetricHint

    hint = StalledMetricHint("val_bbox_AP50", 0.02, what="val bbox AP50", every=3)
    hint.set_params({"epochs": 7})
    losses = [4.2, 2.7, 2.5, 2.2, 2.1, 2.0, 1.9]
    values = [0.0, 0.0, 0.01, 0.01, 0.01, 0.0, 0.0]
    for epoch in range(5):
        hint.on_epoch_end(epoch, {"loss": losses[epoch], "val_bbox_AP50": values[epoch]})
    assert capsys.readouterr().out == ""  # one evaluation so far (epoch 3)
    hint.on_epoch_end(5, {"loss": losses[5], "val_bbox_AP50": values[5]})
    assert "val bbox AP50 is still 0.0000" in capsys.readouterr().out  # epochs 3 and 6
    quiet = StalledMetricHint("val_bbox_AP50", 0.02, every=3)
    quiet.set_params({"epochs": 2})
    quiet.on_epoch_end(0, {"loss": 4.2, "val_bbox_AP50": 0.0})
    quiet.on_epoch_end(1, {"loss": 2.7, "val_bbox_AP50": 0.0})  # last epoch: one evaluation
    assert capsys.readouterr().out == ""


def test_stalled_metric_hint_is_quiet_when_the_metric_moves(capsys):
    from kft.train.callbacks import StalledMetricHint

    hint = StalledMetricHint("val_accuracy", 0.35)
    for epoch, (loss, acc) in enumerate([(2.0, 0.3), (1.0, 0.4), (0.5, 0.8), (0.3, 0.45)]):
        hint.on_epoch_end(epoch, {"loss": loss, "val_accuracy": acc})
    assert capsys.readouterr().out == ""  # never two low evaluations in a row after the fall
