"""``load_from``: reuse every pretrained variable whose path and shape still fit (M8).

Sources, by what ``spec`` points at:

* a ``.keras`` file (any earlier kft model);
* a kft run directory (its ``model.keras``, or its last checkpoint when training never finished);
* a checkpoint file ``.../checkpoints/epoch-NNNN.weights.h5`` of a kft run;
* a keras-hub preset folder (``config.json`` + ``model.weights.h5``) or preset name;
* a keras.applications-style ResNet weights file (``*.h5``: ResNet50/101/152, Keras layer names
  ``conv2_block1_1_conv`` ...), mapped onto keras-hub names with the conv biases folded into the
  following BatchNorm.

Variables are matched by path (``stack3_block0_1_conv/kernel``). The report lists what was
loaded, what was skipped for a shape mismatch (e.g. a head with another class count) and what
stayed newly initialised.

Class-dependent layers (a classifier's ``predictions``, an SSD's final class convolutions:
:data:`CLASS_DEPENDENT`) are also kept newly initialised when the source's class names are known
(its run's ``class_names.json``, or the ``classes`` of the record ``X.json`` beside a file
``X.keras``) and differ from the model's, even with the same count: logit 2 of a model trained
on ``[cat, dog, bird]`` means "bird", and starting ``[car, bus, van]``'s "van" from it is a
wrong start, not transfer. The report's ``reinitialised`` says which variables and why.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import keras
import numpy as np


class WeightsError(ValueError):
    """A weights source that cannot be used; the message names the file."""


def file_digest(path: str | Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_checksum(path: str | Path, expected: str) -> str:
    """Checks ``path`` against ``"sha256:<hex>"`` or ``"md5:<hex>"``; returns the digest."""
    if ":" not in expected:
        raise WeightsError(f"model.load_from_hash={expected!r} must be 'sha256:<hex>' or 'md5:<hex>'")
    algorithm, want = expected.split(":", 1)
    algorithm = algorithm.lower()
    if algorithm not in ("sha256", "md5"):
        raise WeightsError(f"model.load_from_hash: unsupported algorithm {algorithm!r} (sha256, md5)")
    got = file_digest(path, algorithm)
    if got.lower() != want.strip().lower():
        raise WeightsError(f"{path}: {algorithm} checksum mismatch: expected {want}, file has {got}")
    return got


def resolve_weights_file(spec: str) -> Path | None:
    """The single file whose bytes ``spec`` stands for (used for the checksum), or None."""
    p = Path(spec)
    if p.is_file():
        return p
    if p.is_dir():
        for name in ("model.keras", "model.weights.h5"):
            if (p / name).is_file():
                return p / name
        ckpt = p / "checkpoints" / "state.json"
        if ckpt.is_file():
            return p / "checkpoints" / json.loads(ckpt.read_text())["weights"]
    return None


def source_variables(spec: str, target=None) -> dict[str, np.ndarray]:
    """Reads the variables of the source ``spec`` as ``{path: array}``."""
    p = Path(spec)
    if p.is_dir():
        if (p / "model.keras").is_file():
            return _variables(_load_keras(p / "model.keras"))
        if (p / "checkpoints" / "state.json").is_file():
            state = json.loads((p / "checkpoints" / "state.json").read_text())
            return _checkpoint_variables(p / "checkpoints" / state["weights"])
        if (p / "config.json").is_file() and (p / "model.weights.h5").is_file():
            return _variables(_load_preset(str(p)))
        raise WeightsError(f"{p}: not a kft run directory (model.keras or checkpoints/) nor a "
                           "keras-hub preset folder (config.json + model.weights.h5)")
    if p.is_file():
        if p.name.endswith(".keras"):
            return _variables(_load_keras(p))
        if p.name.endswith(".weights.h5") and (p.parent / "model_config.json").is_file():
            return _checkpoint_variables(p)
        if p.suffix == ".h5":
            return _applications_resnet_variables(p, target)
        raise WeightsError(f"{p}: unknown weights file type (expected .keras, a kft checkpoint "
                           ".weights.h5, or a keras.applications .h5)")
    if re.fullmatch(r"[A-Za-z0-9_\-]+", spec) or spec.startswith(("kaggle://", "hf://")):
        return _variables(_load_preset(spec))
    raise WeightsError(f"model.load_from={spec!r}: no such file or directory")


# variable paths whose meaning is one class each (the layers that map features to per-class
# logits): a classifier's Dense "predictions"; an SSD head's class predictor, a plain conv
# "cls_<i>" or the pointwise conv "cls_<i>_pw" of the depthwise kind; a Faster R-CNN's
# box predictor
CLASS_DEPENDENT = (re.compile(r"(^|/)predictions/(kernel|bias)$"),
                   re.compile(r"(^|/)cls_\d+/(kernel|bias)$"),
                   re.compile(r"(^|/)cls_\d+_pw/(kernel|bias)$"),
                   # a Faster R-CNN's box predictor (class logits, class-specific deltas)
                   re.compile(r"(^|/)box_predictor/(cls_score|bbox_pred)/(kernel|bias)$"))


def is_class_dependent(path: str) -> bool:
    """Whether variable ``path`` belongs to a class-dependent layer (:data:`CLASS_DEPENDENT`)."""
    return any(p.search(path) for p in CLASS_DEPENDENT)


def source_class_names(spec: str) -> list[str] | None:
    """The class names the source ``spec`` was trained on, where it says: ``class_names.json``
    of its kft run (``spec`` the run directory, a file in it or in its ``checkpoints/``), or the
    ``classes`` / ``class_names`` list of the record ``X.json`` beside a file ``X.keras``;
    ``None`` when unknown (a keras-hub preset, a bare file)."""
    p = Path(spec)
    candidates = []
    if p.is_dir():
        candidates.append(p / "class_names.json")
    elif p.is_file():
        candidates += [p.parent / "class_names.json", p.parent.parent / "class_names.json",
                       p.with_suffix(".json")]
    for file in candidates:
        if not file.is_file():
            continue
        try:
            data = json.loads(file.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            data = data.get("classes", data.get("class_names"))
        if isinstance(data, list) and all(isinstance(n, str) for n in data):
            return list(data)
    return None


def transfer(target, source: dict[str, np.ndarray], keep_new=()) -> dict:
    """Assigns every source variable whose path and shape match a target variable, except the
    paths in ``keep_new`` (reported under ``"reinitialised"``). A variable whose shape differs is
    listed under ``"shape_mismatch"`` whether or not it is in ``keep_new``, so ``"reinitialised"``
    holds only the same-shape variables that were deliberately left new.

    Returns ``{"loaded": [...], "shape_mismatch": [{"path", "source", "target"}], "new": [...],
    "unused": [...], "reinitialised": [...]}``.
    """
    report = {"loaded": [], "shape_mismatch": [], "new": [], "unused": [], "reinitialised": []}
    keep_new = set(keep_new)
    seen = set()
    for var in target.weights:
        path = var.path
        if path not in source:
            report["new"].append(path)
            continue
        seen.add(path)
        value = source[path]
        if tuple(value.shape) != tuple(var.shape):  # reported as a mismatch even if in keep_new
            report["shape_mismatch"].append(
                {"path": path, "source": list(value.shape), "target": list(var.shape)})
            continue
        if path in keep_new:
            report["reinitialised"].append(path)
            continue
        var.assign(value.astype(var.dtype))
        report["loaded"].append(path)
    report["unused"] = sorted(set(source) - seen)
    return report


def load_from(model, spec: str, expected_hash: str = "", class_names=None) -> dict:
    """Loads ``spec`` into ``model`` by path and shape; returns the report (see :func:`transfer`).

    With ``class_names`` (the model's classes, in label order) and a source whose class names
    are known (:func:`source_class_names`) but differ, the class-dependent variables
    (:func:`is_class_dependent`) stay newly initialised; the report's ``classes`` says why.
    """
    digest = None
    if expected_hash:
        file = resolve_weights_file(spec)
        if file is None:
            raise WeightsError(f"model.load_from={spec!r}: no local file to check the hash of")
        digest = verify_checksum(file, expected_hash)
    keep_new, classes = [], None
    known = source_class_names(spec) if class_names is not None else None
    if known is not None:
        same = list(known) == list(class_names)
        classes = {"source": known, "model": list(class_names), "same": same}
        if not same:
            keep_new = [v.path for v in model.weights if is_class_dependent(v.path)]
    report = transfer(model, source_variables(spec, target=model), keep_new)
    report["source"] = spec
    if classes is not None:
        report["classes"] = classes
    if digest:
        report["checksum"] = f"{expected_hash.split(':')[0].lower()}:{digest}"
    if not report["loaded"]:
        raise WeightsError(f"model.load_from={spec!r}: no variable matched the model by path and "
                           f"shape ({len(report['unused'])} source variables). Is it the same "
                           "architecture?")
    return report


def summarize(report: dict) -> str:
    lines = [f"load_from {report.get('source', '')}: {len(report['loaded'])} loaded, "
             f"{len(report['shape_mismatch'])} shape mismatch, {len(report['new'])} new, "
             f"{len(report['unused'])} unused in source"]
    for item in report["shape_mismatch"][:10]:
        lines.append(f"  shape mismatch {item['path']}: source {item['source']} -> "
                     f"model {item['target']} (kept new)")
    if report.get("reinitialised"):
        classes = report.get("classes", {})
        lines.append(f"  {len(report['reinitialised'])} class-dependent variables kept new: the "
                     f"source's classes {classes.get('source')} are not the model's "
                     f"{classes.get('model')}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------


def _variables(model) -> dict[str, np.ndarray]:
    return {v.path: keras.ops.convert_to_numpy(v) for v in model.weights}


def _load_keras(path: Path):
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        raise WeightsError(f"{path}: cannot load as a Keras model: {e}") from e


def _load_preset(spec: str):
    import keras_hub

    try:
        return keras_hub.models.Backbone.from_preset(spec)
    except Exception as e:  # noqa: BLE001
        raise WeightsError(f"model.load_from={spec!r}: cannot load keras-hub preset (a preset "
                           f"name needs network the first time): {e}") from e


def _checkpoint_variables(path: Path) -> dict[str, np.ndarray]:
    """Rebuilds the model from ``model_config.json`` beside a checkpoint and loads it."""
    config = json.loads((path.parent / "model_config.json").read_text())
    model = keras.saving.deserialize_keras_object(config)
    try:
        model.load_weights(path, skip_mismatch=False)
    except Exception as e:  # noqa: BLE001
        raise WeightsError(f"{path}: cannot load checkpoint: {e}") from e
    return _variables(model)


_APPS_NAME = re.compile(r"^conv(\d+)_block(\d+)_(\d+)_(conv|bn)$")


def _applications_resnet_variables(path: Path, target) -> dict[str, np.ndarray]:
    """Reads a keras.applications ResNet50/101/152 weights file into keras-hub variable paths.

    keras.applications convolutions have biases and keras-hub's do not: each bias is folded into
    the BatchNorm that follows (``moving_mean -= bias``), which is exact. keras.applications
    strides in the first 1x1 convolution of a block and keras-hub in the 3x3 (ResNet v1.5), so
    the loaded network computes the v1.5 variant with the original weights.
    """
    blocks = list(getattr(getattr(target, "backbone", None), "stackwise_num_blocks", []))
    builders = {(3, 4, 6, 3): keras.applications.ResNet50,
                (3, 4, 23, 3): keras.applications.ResNet101,
                (3, 8, 36, 3): keras.applications.ResNet152}
    builder = builders.get(tuple(blocks))
    if builder is None:
        raise WeightsError(f"{path}: keras.applications weights fit ResNet-50/101/152 only; the "
                           f"model has blocks {blocks}")
    try:
        apps = builder(weights=str(path), include_top=False, input_shape=(64, 64, 3))
    except Exception as e:  # noqa: BLE001
        raise WeightsError(f"{path}: not a keras.applications {builder.__name__} weights file "
                           f"(include_top=False): {e}") from e
    out = {}
    biases = {}
    for layer in apps.layers:
        name = layer.name
        m = _APPS_NAME.match(name)
        if m:
            stage, block, idx, kind = m.groups()
            hub = f"stack{int(stage) - 2}_block{int(block) - 1}_{idx}_{kind}"
        elif name in ("conv1_conv", "conv1_bn"):
            hub = name
        else:
            continue
        weights = [keras.ops.convert_to_numpy(w) for w in layer.weights]
        if isinstance(layer, keras.layers.Conv2D):
            out[f"{hub}/kernel"] = weights[0]
            if layer.use_bias:
                biases[hub[: -len("conv")] + "bn"] = weights[1]
        elif isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = weights
            out.update({f"{hub}/gamma": gamma, f"{hub}/beta": beta,
                        f"{hub}/moving_mean": mean, f"{hub}/moving_variance": var})
    for bn, bias in biases.items():
        if f"{bn}/moving_mean" in out:
            out[f"{bn}/moving_mean"] = out[f"{bn}/moving_mean"] - bias
    return out
