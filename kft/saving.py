"""Loading kft ``.keras`` files: the one place that registers every kft class with Keras.

A saved kft model names its own classes (``kft>SSD``, ``kft>SSDLiteMobileNet``, ...) and, when
it was saved compiled, its optimiser and schedule (``kft>LayerwiseSGD``, ``kft>LinearWarmup``).
Keras finds them once their modules are imported; :func:`load_model` imports them all, so no
other module has to import ``kft.train`` just for that (models import nothing from train).
"""

from __future__ import annotations

import os


def register_all() -> None:
    """Imports every module that registers kft classes for ``keras.saving``."""
    import kft.models  # noqa: F401  (layers, backbones, models)
    import kft.train.optimizers  # noqa: F401  (a compiled model's optimiser)
    import kft.train.schedules  # noqa: F401  (its learning-rate schedule)


def load_model(path: str | os.PathLike, compile: bool = True, **kwargs):
    """``keras.saving.load_model`` with every kft class registered."""
    import keras

    register_all()
    return keras.saving.load_model(path, compile=compile, **kwargs)
