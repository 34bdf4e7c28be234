"""Every class kft registers with ``keras.saving`` has a name of its own.

Keras keeps one class per registered name and a later registration silently replaces an
earlier one, so two kft classes under one name deserialise as whichever module was imported
last (``kft.data.augment`` and ``kft.data.detection_augment`` both registered
``kft>RandomHorizontalFlip``: a restored ``natural`` augmentation then flipped other images).
"""

import importlib
import inspect
import pkgutil

import keras


def _kft_modules():
    import kft

    for info in pkgutil.walk_packages(kft.__path__, "kft."):
        if not info.name.endswith("__main__"):  # kft/__main__.py runs the CLI
            yield importlib.import_module(info.name)


def test_every_registered_kft_class_has_its_own_name():
    owners: dict[str, list[str]] = {}
    for module in _kft_modules():
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != module.__name__:
                continue
            name = keras.saving.get_registered_name(cls)
            if name.startswith("kft>"):
                owners.setdefault(name, []).append(f"{cls.__module__}.{cls.__qualname__}")
    assert len(owners) > 30, f"only {len(owners)} registered kft classes found: {sorted(owners)}"
    shared = {name: classes for name, classes in owners.items() if len(classes) > 1}
    assert not shared, f"registered names used by more than one class: {shared}"
    for name, (qualname,) in owners.items():
        cls = keras.saving.get_registered_object(name)
        assert cls is not None and f"{cls.__module__}.{cls.__qualname__}" == qualname, name


def test_both_horizontal_flips_survive_a_round_trip_whatever_was_imported():
    from kft.data import augment, detection_augment

    for cls in (augment.RandomHorizontalFlip, detection_augment.RandomHorizontalFlip):
        layer = cls(0.5, name="flip")
        restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
        assert type(restored) is cls
