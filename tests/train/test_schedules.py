import pytest

from kft.config import Train
from kft.train.schedules import build_schedule, learning_rate_at


def test_cosine_restarts_in_epochs():
    t = Train(learning_rate=0.1, schedule="cosine_restarts", restart_epochs=5, restart_mult=2,
              min_lr=1e-6)
    s = build_schedule(t, steps_per_epoch=10)
    assert learning_rate_at(s, 0) == pytest.approx(0.1)
    assert learning_rate_at(s, 25) == pytest.approx(1e-6 + (0.1 - 1e-6) * 0.5, rel=1e-3)
    assert learning_rate_at(s, 49) < 0.001  # end of the first cycle: near eta_min
    assert learning_rate_at(s, 50) == pytest.approx(0.1)  # restart after T_0 = 5 epochs
    assert learning_rate_at(s, 149) < 0.001  # second cycle is T_0 * T_mult = 10 epochs long
    assert learning_rate_at(s, 150) == pytest.approx(0.1)


def test_warmup_multistep_guide_settings():
    # Mask R-CNN guide: warm-up factor 0.001 over 500 iterations, milestone epoch 7, gamma 0.1.
    t = Train(learning_rate=0.01, schedule="warmup_multistep", warmup_steps=500,
              warmup_factor=0.001, milestones=(7,), gamma=0.1)
    s = build_schedule(t, steps_per_epoch=100)
    assert learning_rate_at(s, 0) == pytest.approx(1e-5)
    assert learning_rate_at(s, 250) == pytest.approx(0.01 * (0.001 + 0.999 * 0.5), rel=1e-4)
    assert learning_rate_at(s, 600) == pytest.approx(0.01)
    assert learning_rate_at(s, 701) == pytest.approx(0.001)


def test_step_decay_and_errors():
    s = build_schedule(Train(learning_rate=1.0, schedule="step", step_epochs=2, gamma=0.5), 10)
    assert [learning_rate_at(s, i) for i in (0, 19, 20, 40)] == pytest.approx([1, 1, .5, .25])
    with pytest.raises(ValueError, match="step_epochs"):
        build_schedule(Train(schedule="step"), 10)
    with pytest.raises(ValueError, match="train.schedule"):
        build_schedule(Train(schedule="poly"), 10)
