"""The export core every kft model shares: a SavedModel from a serve function, one conversion
per TFLite format, and a timed batch-1 interpreter runner.

Route (TF 2.21 + Keras 3; works for functional models and ``keras.Model`` subclasses, including
ones wrapping keras-hub backbones):

1. A ``tf.Module`` holds the model's variables and gets a ``serve`` signature (a function
   of one image tensor ``[1, H, W, 3]``) per input dtype the formats need (float32; uint8 for
   a detector's int8 file), traced with ``training=False`` semantics; it is written once as a
   TF SavedModel into a temporary folder (:func:`write_saved_model`). A model built
   under a mixed-precision policy is traced with float32 compute (:func:`float32_compute`):
   its variables are float32 already, and TFLite builtins have no float16 kernels.
2. ``tf.lite.TFLiteConverter.from_saved_model`` converts one signature of that SavedModel per
   format (:func:`convert`).

(``from_concrete_functions`` on a ``tf.function`` around a Keras 3 model is not used: it leaves
the Keras variables as uninitialised resource variables and the model outputs NaN.) The batch
is fixed to 1, the usual on-device shape, so every tensor shape in a file is static.

Formats:

* ``float32``: plain conversion.
* ``float16``: float16 weights, float32 compute and input/output.
* ``int8``: full-integer post-training quantisation calibrated on single images. Two variants,
  chosen by :func:`convert`'s ``keep_float``:

  - ``keep_float=None`` (classifiers): ``TFLITE_BUILTINS_INT8`` only, so the conversion fails
    instead of silently keeping float ops; the input becomes ``uint8`` (scale / zero point
    from the calibration range) and the output float32 through a final DEQUANTIZE.
  - ``keep_float="decoder"`` (detectors): every op is int8 except the tensors whose names hold
    that scope, which stay float32 by selective quantisation (a denylist, as
    ``QuantizationDebugger`` applies it): TFLite's NMS has no integer kernel, and 8-bit box
    decoding costs AP. The endpoint for this variant takes ``uint8`` pixels itself (its serve function casts them).
    ``keep_float`` may also be a predicate on tensor names (two-stage detectors keep
    everything float but the network layers' scopes, :mod:`kft.export.detection`).

:class:`TimedInterpreter` runs any such file one image at a time with (de)quantisation from the
tensors' own scale / zero point and times every invocation after ``WARMUP_RUNS`` untimed ones.
It uses the LiteRT interpreter (``ai_edge_litert``), or ``tf.lite.Interpreter`` when LiteRT is
not installed. Sizes are MiB (``bytes / 2**20``).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence

import keras
import numpy as np
import tensorflow as tf

from kft import quiet_stderr

FORMATS = ("float32", "float16", "int8")
WARMUP_RUNS = 3
MAX_KERAS_LATENCY_IMAGES = 50
FLOAT_OPS = ("TOPK_V2",)
"""Op types a selective int8 conversion (``keep_float``) always keeps float32 (denylisted by
type): ranking int8 values makes ties, and the two-output TOPK_V2 stays int8 even when its
output tensors are denylisted by name (seen on Faster R-CNN's RPN top-k, TF 2.21)."""


def check_formats(formats: Sequence[str]) -> tuple[str, ...]:
    """The requested formats as a tuple; distinct names of :data:`FORMATS` or a ValueError."""
    formats = (formats,) if isinstance(formats, str) else tuple(formats)
    unknown = [fmt for fmt in formats if fmt not in FORMATS]
    if unknown or not formats or len(set(formats)) != len(formats):
        raise ValueError(f"formats must be distinct values of {FORMATS}, got {formats}")
    return formats


def interpreter_class():
    """LiteRT's ``Interpreter``; ``tf.lite.Interpreter`` when ai-edge-litert is missing."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        return tf.lite.Interpreter
    return Interpreter


def plain_interpreter(path: str | os.PathLike):
    """An allocated interpreter of a ``.tflite`` file with the builtin kernels only, no
    default (XNNPACK) delegate, so every op of the file is listed as itself (a delegate
    would replace the ops it takes by one ``DELEGATE`` node)."""
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError:
        Interpreter, OpResolverType = tf.lite.Interpreter, tf.lite.experimental.OpResolverType
    interpreter = Interpreter(model_path=os.fspath(path), experimental_op_resolver_type=
                              OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    return interpreter


@contextlib.contextmanager
def float32_compute(model: keras.Model):
    """Temporarily gives float32 compute to layers with a mixed (float16 / bfloat16) policy.

    Mixed-precision variables are already float32, so only the compute dtype changes; the
    original policies are restored on exit.
    """
    switched = []
    for layer in model._flatten_layers(include_self=True, recursive=True):
        policy = layer.dtype_policy
        if (policy.quantization_mode is None and policy.variable_dtype == "float32"
                and policy.compute_dtype != "float32"):
            switched.append((layer, policy))
            layer.dtype_policy = "float32"
    try:
        yield
    finally:
        for layer, policy in switched:
            layer.dtype_policy = policy


def single_images(dataset: Iterable, limit: int) -> Iterator[tf.Tensor]:
    """Yields up to ``limit`` float32 ``[1, H, W, 3]`` images from image (or tuple) batches."""
    count = 0
    for batch in dataset:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        images = tf.convert_to_tensor(images, tf.float32)
        for i in range(int(images.shape[0])):
            if count >= limit:
                return
            yield images[i:i + 1]
            count += 1


def calibration_images(representative: Iterable, limit: int, image_shape: tuple | None = None,
                       warn: bool = True) -> list[np.ndarray]:
    """Up to ``limit`` single float32 images of ``representative`` for int8 calibration; a
    ValueError when there are none or they do not have ``image_shape`` ``(H, W, 3)``; with
    ``warn``, a warning when they do not span 0..255 (:func:`warn_if_narrow_range`)."""
    images = [image.numpy() for image in single_images(representative, limit)]
    if not images:
        raise ValueError("int8 export needs a non-empty representative dataset")
    if image_shape is not None and tuple(images[0].shape[1:]) != tuple(image_shape):
        raise ValueError(f"representative images {images[0].shape[1:]} do not match the model "
                         f"input {tuple(image_shape)}")
    if warn:
        warn_if_narrow_range(images)
    return images


def warn_if_narrow_range(images: list[np.ndarray]) -> None:
    """Warns when calibration pixels do not span 0..255 (the uint8 input would clip)."""
    low = min(float(image.min()) for image in images)
    high = max(float(image.max()) for image in images)
    if low > 8.0 or high < 247.0:
        warnings.warn(
            f"int8 calibration images span pixel values {low:.0f}..{high:.0f}, not 0..255: the "
            "uint8 input is quantised to that range and pixels outside it are clipped",
            stacklevel=3)


def write_saved_model(model: keras.Model, directory: str, serve: Callable,
                      image_shape: tuple, input_dtypes=(tf.float32,)) -> dict[str, str]:
    """Writes one SavedModel with a ``serve`` signature per input dtype, ``images [1, H, W, 3]
    dtype -> serve(images)``, traced once each with float32 compute (:func:`float32_compute`).

    The SavedModel's root is a ``tf.Module`` holding the model's variables (the ``tf.Variable``
    inside each Keras variable), so the signatures' captured variables are saved with it and
    their values reach the converter. ``keras.export.ExportArchive`` also works, but it walks
    every tracked layer and traces the network again for each of its checks: 22 s against 8 s
    for the quick start's SSDLite, same TFLite outputs. Returns ``{dtype name: signature key}``:
    the first dtype's signature is ``serving_default``, the others ``serve_<dtype>`` (the
    signature key a TFLite file converted from it keeps).
    """
    module = tf.Module()
    module.model_variables = [v.value if isinstance(v, keras.Variable) else v
                              for v in model.variables]
    signatures, keys = {}, {}
    with float32_compute(model):
        for i, dtype in enumerate(input_dtypes):
            name = tf.as_dtype(dtype).name
            keys[name] = "serving_default" if i == 0 else f"serve_{name}"
            spec = tf.TensorSpec((1, *image_shape), dtype, name="images")
            signatures[keys[name]] = tf.function(
                serve, input_signature=[spec], autograph=False).get_concrete_function()
    tf.saved_model.save(module, directory, signatures=signatures)
    return keys


def convert(saved_model_dir: str, fmt: str, calibration: Sequence[np.ndarray] = (),
            keep_float: str | Callable[[str], bool] | None = None,
            signature_key: str = "serving_default") -> bytes:
    """One TFLite flatbuffer of ``fmt`` from a SavedModel's ``signature_key`` endpoint (see the
    module docstring).

    ``calibration``: single images ``[1, H, W, 3]`` in the endpoint's input dtype (int8 only).
    ``keep_float``: int8 only; the tensors kept in float32 (selective quantisation): a
    tensor-name scope (names holding it), or a predicate on tensor names.

    Selective quantisation runs the two steps TF's ``QuantizationDebugger`` runs for a
    denylist, without its debug model: a calibrate-only conversion (float ops annotated with
    the calibration ranges), whose tensor names are the ones the denylist refers to, then the
    MLIR quantiser with the kept names and :data:`FLOAT_OPS` denylisted. The file is the one
    ``QuantizationDebugger(...).get_nondebug_quantized_model()`` returns, in one conversion
    instead of three (calibration, the debug model, and a float conversion for the names).
    """
    with quiet_stderr():  # the converter's C++ log lines (anything else comes through after)
        return _convert(saved_model_dir, fmt, calibration, keep_float, signature_key)


def _convert(saved_model_dir, fmt, calibration, keep_float, signature_key) -> bytes:
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir, [signature_key])
    if fmt == "float32":
        return converter.convert()
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if fmt == "float16":
        converter.target_spec.supported_types = [tf.float16]
        return converter.convert()
    if fmt != "int8":
        raise ValueError(f"unknown format {fmt!r}: one of {FORMATS}")
    calibration = list(calibration)
    if not calibration:
        raise ValueError("int8 export needs calibration images")
    converter.representative_dataset = lambda: ([image] for image in calibration)
    if keep_float is None:
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.float32
        return converter.convert()
    from tensorflow.lite.python import convert as tflite_convert  # the debugger's quantiser

    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                           tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.experimental_mlir_quantizer = True
    converter._experimental_calibrate_only = True
    calibrated = converter.convert()
    kept = tensor_names(calibrated, keep_float)
    if not kept:
        raise ValueError(f"int8 export: no {keep_float!r} tensors found to keep in float32")
    return tflite_convert.mlir_quantize(
        calibrated, disable_per_channel=converter._experimental_disable_per_channel,
        fully_quantize=False, enable_numeric_verify=False, denylisted_ops=list(FLOAT_OPS),
        denylisted_nodes=kept)


def tensor_names(content: bytes, keep_float: str | Callable[[str], bool]) -> list[str]:
    """The tensor names of a (float or calibrated) TFLite flatbuffer that ``keep_float``
    selects (a scope: names holding it; a predicate: names it is true of), sorted."""
    select = keep_float if callable(keep_float) else (lambda name: keep_float in name)
    return sorted({t["name"] for t in interpreter_class()(model_content=content)
                   .get_tensor_details() if select(t["name"])})


def export_formats(model: keras.Model, out_dir: str | os.PathLike, image_shape: tuple,
                   formats: Sequence[str], serve: Callable,
                   calibration: Sequence[np.ndarray] = (), int8_input=tf.float32,
                   keep_float: str | Callable[[str], bool] | None = None) -> dict[str, str]:
    """Writes ``out_dir/model_<format>.tflite`` for every format; returns ``{format: path}``.

    ``serve(images)`` is traced once per input dtype, into one SavedModel: float32 for the
    float formats, ``int8_input`` for int8 (``tf.uint8``: the serve function receives camera
    bytes and casts them; the calibration images are then rounded to uint8, and the int8
    file's signature is ``serve_uint8``). ``calibration``, ``keep_float``: as in
    :func:`convert`.
    """
    formats = check_formats(formats)
    os.makedirs(out_dir, exist_ok=True)
    dtypes = [tf.float32] if any(f != "int8" for f in formats) else []
    if "int8" in formats and tf.as_dtype(int8_input) not in dtypes:
        dtypes.append(tf.as_dtype(int8_input))
    paths = {}
    with tempfile.TemporaryDirectory(prefix="kft_savedmodel_") as tmp:
        keys = write_saved_model(model, tmp, serve, image_shape, dtypes)
        for fmt in formats:
            if fmt == "int8":
                images = list(calibration)
                if tf.as_dtype(int8_input) == tf.uint8:
                    images = [np.clip(np.round(c), 0, 255).astype(np.uint8) for c in images]
                content = convert(tmp, fmt, images, keep_float,
                                  keys[tf.as_dtype(int8_input).name])
            else:
                content = convert(tmp, fmt, signature_key=keys["float32"])
            paths[fmt] = os.path.join(os.fspath(out_dir), f"model_{fmt}.tflite")
            with open(paths[fmt], "wb") as f:
                f.write(content)
    return paths


def quantize_input(x: np.ndarray, detail: dict) -> np.ndarray:
    """Float pixels -> the dtype of an interpreter input (``get_input_details()`` entry).

    Integer inputs with a scale use ``q = round(x / scale) + zero_point`` clipped to the dtype
    range; integer inputs without one get ``round(x)`` clipped; float inputs a plain cast.
    """
    dtype = np.dtype(detail["dtype"])
    if not np.issubdtype(dtype, np.integer):
        return x.astype(dtype)
    scale, zero_point = detail["quantization"]
    q = np.round(x / scale) + zero_point if scale > 0 else np.round(x)
    info = np.iinfo(dtype)
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize_output(q: np.ndarray, detail: dict) -> np.ndarray:
    """Raw interpreter output -> float32, ``(q - zero_point) * scale`` when quantised."""
    scale, zero_point = detail["quantization"]
    if np.issubdtype(np.dtype(detail["dtype"]), np.integer) and scale > 0:
        return ((q.astype(np.float32) - zero_point) * scale).astype(np.float32)
    return q.astype(np.float32)


class TimedInterpreter:
    """A ``.tflite`` file with one image input ``[1, H, W, 3]``, run one image at a time.

    ``run(image)`` returns ``{output name: float32 array}`` (quantised outputs dequantised;
    integer outputs without a scale, e.g. labels, keep their dtype). Names are the signature's
    output names when the file has exactly one signature (kft's exports), else ``"output_<i>"``
    in output order. ``run_batch(images)`` times each image after ``WARMUP_RUNS`` untimed
    runs; ``mean_latency_ms()`` averages those timings.
    """

    def __init__(self, path: str | os.PathLike, num_threads: int | None = None):
        self.path = os.fspath(path)
        self.interpreter = interpreter_class()(model_path=self.path, num_threads=num_threads)
        signatures = self.interpreter.get_signature_list()
        self.runner = None
        if len(signatures) == 1:
            self.runner = self.interpreter.get_signature_runner(next(iter(signatures)))
            inputs = self.runner.get_input_details()
            if len(inputs) != 1:
                raise ValueError(f"{self.path}: expected one image input, got {list(inputs)}")
            self.input_name, self.input = next(iter(inputs.items()))
            self.outputs = dict(self.runner.get_output_details())
        else:
            inputs = self.interpreter.get_input_details()
            if len(inputs) != 1:
                raise ValueError(f"{self.path}: expected one image input, got {len(inputs)}")
            if int(inputs[0]["shape"][0]) != 1:
                self.interpreter.resize_tensor_input(inputs[0]["index"],
                                                     [1, *inputs[0]["shape"][1:]])
            self.interpreter.allocate_tensors()
            self.input = self.interpreter.get_input_details()[0]
            self.outputs = {f"output_{i}": d for i, d in
                            enumerate(self.interpreter.get_output_details())}
        shape = [int(d) for d in self.input["shape"]]
        if len(shape) != 4 or shape[-1] != 3:
            raise ValueError(f"{self.path}: expected an image input [1, H, W, 3], got {shape}")
        self.image_shape = tuple(shape[1:])
        self.timings: list[float] = []
        self.warmed_up = False
        self.invoked = False

    def run(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """One float32 ``[1, H, W, 3]`` image -> ``{output name: array}`` (untimed)."""
        x = quantize_input(np.asarray(image, np.float32), self.input)
        if self.invoked:
            raw = self._invoke(x)
        else:  # the runtime applies its default delegate at the first call, and prints so
            with quiet_stderr():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
                raw = self._invoke(x)
            self.invoked = True
        return {name: _dequantized(raw[name], self.outputs[name]) for name in self.outputs}

    def _invoke(self, x: np.ndarray) -> dict[str, np.ndarray]:
        if self.runner is not None:
            return self.runner(**{self.input_name: x})
        self.interpreter.set_tensor(self.input["index"], x)
        self.interpreter.invoke()
        return {name: self.interpreter.get_tensor(d["index"]) for name, d in self.outputs.items()}

    def run_batch(self, images) -> list[dict[str, np.ndarray]]:
        """``float32 [B, H, W, 3]`` -> one output dict per image, each invocation timed."""
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 4 or images.shape[1:] != self.image_shape:
            raise ValueError(f"images of shape {images.shape} do not fit the TFLite input "
                             f"[B, {', '.join(map(str, self.image_shape))}] of {self.path}")
        if not self.warmed_up:
            for _ in range(WARMUP_RUNS):
                self.run(images[:1])
            self.warmed_up = True
        rows = []
        for i in range(len(images)):
            start = time.perf_counter()
            rows.append(self.run(images[i:i + 1]))
            self.timings.append(time.perf_counter() - start)
        return rows

    def mean_latency_ms(self) -> float:
        """Mean timed invocation in milliseconds (NaN before any)."""
        return float(np.mean(self.timings) * 1000.0) if self.timings else float("nan")


def _dequantized(raw: np.ndarray, detail: dict) -> np.ndarray:
    if np.issubdtype(np.dtype(detail["dtype"]), np.integer) and not detail["quantization"][0]:
        return np.asarray(raw)  # plain integers (labels, counts)
    return dequantize_output(raw, detail)


def keras_latency_ms(fn: Callable, dataset: Iterable,
                     max_images: int = MAX_KERAS_LATENCY_IMAGES) -> float:
    """Mean ms of one batch-1 call of the traced ``fn(images)`` over up to ``max_images``
    images of ``dataset`` (after ``WARMUP_RUNS`` untimed calls); ``fn`` returns a tensor or a
    dict of tensors, all of which are fetched."""
    images = list(single_images(dataset, max_images))
    if not images:
        raise ValueError("keras latency: empty dataset")
    forward = tf.function(fn)

    def call(image):
        return [np.asarray(t) for t in tf.nest.flatten(forward(image))]

    for _ in range(WARMUP_RUNS):
        call(images[0])
    start = time.perf_counter()
    for image in images:
        call(image)
    return (time.perf_counter() - start) * 1000.0 / len(images)


def keras_weights_mb(model: keras.Model) -> float:
    """Size of all weights (trainable and not) in MiB, counted in their storage dtype."""
    total = sum(int(np.prod(w.shape)) * np.dtype(w.dtype).itemsize for w in model.weights)
    return total / 2**20


def file_mb(path: str | os.PathLike) -> float:
    return os.path.getsize(path) / 2**20


def write_report(out_dir: str | os.PathLike, report: dict) -> dict:
    """Writes ``out_dir/report.json`` (the export's comparison with Keras); returns it."""
    with open(os.path.join(os.fspath(out_dir), "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report
