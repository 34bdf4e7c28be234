"""Seeded stand-in weights for a torchvision state dict, with NumPy only.

The torchvision-equality fixtures need the same weights on both sides: a tool run where torch
is installed loads them into torchvision's model, a CI test (no torch) converts them into kft's
model. Storing a ResNet-50's weights in the repository would take 100 MB, so both sides *draw*
them from the key names and shapes alone (the fixture stores that spec, a few KiB).

Every key gets its own generator seeded with ``(seed, crc32(key))``: the draw of one key does
not depend on which other keys exist or their order. Values by kind:

* ``*.running_mean``: normal, std 0.1;  ``*.running_var``: uniform 0.5 .. 1.5;
* 1-D ``*.weight`` (norm scales): uniform 0.5 .. 1.5;  ``*.bias``: normal, std 0.05;
* weights of 2 or more dims (conv ``[out, in/groups, kh, kw]``, linear ``[out, in]``): normal
  with std ``gain / sqrt(fan_in)``, ``fan_in = prod(shape[1:])``; ``gains`` maps a key prefix
  to its gain (the longest matching prefix wins, default 1.0), so e.g. a detector's final
  classifier can be scaled to give spread-out scores;
* ``*num_batches_tracked``: skipped (not a float weight).

Import it by path where kft is not importable (``importlib.util.spec_from_file_location``).
"""

from __future__ import annotations

import zlib

import numpy as np


def draw_one(key: str, shape, seed: int = 0, gain: float = 1.0) -> np.ndarray:
    """The float32 stand-in value of state-dict entry ``key`` with ``shape`` (see module)."""
    shape = tuple(int(s) for s in shape)
    rng = np.random.default_rng([int(seed), zlib.crc32(key.encode())])
    if key.endswith("running_mean"):
        value = rng.normal(0.0, 0.1, shape)
    elif key.endswith("running_var"):
        value = rng.uniform(0.5, 1.5, shape)
    elif len(shape) >= 2:
        fan_in = int(np.prod(shape[1:]))
        value = rng.normal(0.0, gain / np.sqrt(fan_in), shape)
    elif key.endswith("weight"):
        value = rng.uniform(0.5, 1.5, shape)
    else:
        value = rng.normal(0.0, 0.05, shape)
    return value.astype("float32")


def draw(spec, seed: int = 0, gains: dict | None = None) -> dict:
    """``{key: float32 array}`` for ``spec``, an iterable of ``(key, shape)`` pairs.

    ``gains``: ``{key prefix: gain}`` for the std of multi-dimensional weights (module doc).
    """
    gains = dict(gains or {})
    out = {}
    for key, shape in spec:
        if key.endswith("num_batches_tracked"):
            continue
        matches = [p for p in gains if key.startswith(p)]
        gain = gains[max(matches, key=len)] if matches else 1.0
        out[key] = draw_one(key, shape, seed, gain)
    return out


def spec_of(state_dict) -> list:
    """``[(key, shape)]`` of a torch state dict (or any mapping of arrays), in its order."""
    return [(k, tuple(v.shape)) for k, v in state_dict.items()
            if not k.endswith("num_batches_tracked")]


def pack_spec(spec) -> dict:
    """The spec as two NumPy arrays for an ``.npz``: ``spec_keys`` (str) and ``spec_shapes``
    (``[K, 4]`` int32, ``-1`` past each key's rank)."""
    keys = np.array([k for k, _ in spec])
    shapes = np.full((len(spec), 4), -1, "int32")
    for i, (_, shape) in enumerate(spec):
        shapes[i, :len(shape)] = shape
    return {"spec_keys": keys, "spec_shapes": shapes}


def unpack_spec(keys, shapes) -> list:
    """Inverse of :func:`pack_spec`."""
    return [(str(k), tuple(int(d) for d in s if d >= 0)) for k, s in zip(keys, shapes, strict=True)]
