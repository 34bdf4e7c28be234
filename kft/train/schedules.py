"""Learning-rate schedules in epochs (T3), built on Keras' schedules.

* ``cosine_restarts``: Keras ``CosineDecayRestarts`` with T_0 / T_mult / eta_min given in epochs.
* ``warmup_multistep``: linear warm-up from ``warmup_factor`` x lr over ``warmup_steps`` steps,
  then lr x gamma at each milestone epoch (Keras ``PiecewiseConstantDecay``).
* ``step``: lr x gamma every ``step_epochs`` epochs (Keras ``ExponentialDecay``, staircase).
* ``constant``.
Any schedule can take a linear warm-up (``warmup_steps`` > 0).
"""

from __future__ import annotations

import keras
from keras import ops

schedules = keras.optimizers.schedules


@keras.saving.register_keras_serializable(package="kft")
class LinearWarmup(schedules.LearningRateSchedule):
    """``inner(step)`` scaled by a factor rising linearly from ``warmup_factor`` to 1.

    The factor is ``warmup_factor + (1 - warmup_factor) * step / warmup_steps`` for
    ``step < warmup_steps`` and 1 afterwards.
    """

    def __init__(self, inner, warmup_steps, warmup_factor=0.001):
        self.inner = inner
        self.warmup_steps = int(warmup_steps)
        self.warmup_factor = float(warmup_factor)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        progress = ops.minimum(step / max(self.warmup_steps, 1), 1.0)
        factor = self.warmup_factor + (1.0 - self.warmup_factor) * progress
        return _value(self.inner, step) * factor

    def get_config(self):
        return {
            "inner": keras.saving.serialize_keras_object(self.inner),
            "warmup_steps": self.warmup_steps,
            "warmup_factor": self.warmup_factor,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["inner"] = keras.saving.deserialize_keras_object(config["inner"])
        return cls(**config)


def _value(schedule, step):
    if isinstance(schedule, schedules.LearningRateSchedule):
        return ops.cast(schedule(step), "float32")
    return ops.cast(schedule, "float32")


def build_schedule(train, steps_per_epoch: int):
    """Returns a float or a ``LearningRateSchedule`` from a ``kft.config.Train``."""
    lr = train.learning_rate
    spe = max(int(steps_per_epoch), 1)
    kind = train.schedule
    if kind == "constant":
        schedule = lr
    elif kind == "cosine_restarts":
        schedule = schedules.CosineDecayRestarts(
            initial_learning_rate=lr,
            first_decay_steps=max(int(round(train.restart_epochs * spe)), 1),
            t_mul=train.restart_mult,
            m_mul=1.0,
            alpha=train.min_lr / lr if lr else 0.0,
        )
    elif kind == "warmup_multistep":
        boundaries = [int(m) * spe for m in sorted(train.milestones)]
        values = [lr * train.gamma**i for i in range(len(boundaries) + 1)]
        schedule = schedules.PiecewiseConstantDecay(boundaries, values) if boundaries else lr
    elif kind == "step":
        if train.step_epochs <= 0:
            raise ValueError("train.schedule='step' needs train.step_epochs > 0")
        schedule = schedules.ExponentialDecay(
            lr, decay_steps=train.step_epochs * spe, decay_rate=train.gamma, staircase=True)
    else:
        raise ValueError(
            f"train.schedule={kind!r} must be constant, cosine_restarts, warmup_multistep or step")
    if train.warmup_steps > 0:
        schedule = LinearWarmup(schedule, train.warmup_steps, train.warmup_factor)
    return schedule


def learning_rate_at(schedule, step: int) -> float:
    """The learning rate ``schedule`` gives at optimiser step ``step`` (a Python float)."""
    return float(keras.ops.convert_to_numpy(_value(schedule, step)))
