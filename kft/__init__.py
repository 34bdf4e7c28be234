"""kft: fine-tune pretrained vision models in Keras 3 on TensorFlow.

Heavy modules load on first use, so ``kft --help`` stays fast::

    from kft.models import ResNetClassifier
    from kft.config import Recipe

Importing kft sets ``TF_CPP_MIN_LOG_LEVEL=2`` unless it is set already (a user's value wins),
so TensorFlow's C++ INFO and WARNING lines stay out of the way; it has no effect when
TensorFlow was imported before kft. :func:`quiet_tensorflow` (called by ``kft`` and
``python -m kft.run``, callable from a script) also hides the lines TensorFlow's C++ core
prints while it is imported, before its log level applies (``WARNING: All log messages before
absl::InitializeLog() ...``, ``I0000 ... port.cc ... oneDNN custom operations are on``);
:class:`quiet_stderr` does the same around any block (``kft predict`` and the export put
the TFLite converter and the interpreter's start in one).
"""

import os
import re

__version__ = "0.1.0"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# TensorFlow's C++ (absl / TSL) log lines, with their severity letter as group 1 or 2:
# "I0000 00:00:1796223643.450571    5372 port.cc:153] ..." (absl; before InitializeLog the
# seconds field holds the whole Unix time)
# and "2024-05-01 12:00:00.123456: W tensorflow/..." (older TSL builds).
_TF_LOG_LINE = re.compile(r"^(?:([IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^ \]]+:\d+\]"
                          r"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: ([IWEF]) )")
_ABSL_BANNER = "WARNING: All log messages before absl::InitializeLog() is called"
_TFLITE_INFO = "INFO: "  # the TFLite runtime's INFO lines ("INFO: Created TensorFlow Lite XNNPACK")
_QUANTIZER_SETTINGS = "fully_quantize: "  # the TFLite converter's int8 quantiser prints its
# settings: "fully_quantize: 0, inference_type: 6, input_inference_type: FLOAT32, ..."
# ERROR lines that only say that this machine has no usable GPU (hidden when TensorFlow then
# finds none: the CPU is used, as intended).
_NO_GPU = re.compile(r"failed call to cuInit|CUDA_ERROR_NO_DEVICE|no CUDA-capable device")


def _hidden(line: str, no_gpu: bool) -> bool:
    """Whether a captured start-up line is TensorFlow noise (see :func:`quiet_tensorflow`)."""
    if line.startswith((_ABSL_BANNER, _TFLITE_INFO, _QUANTIZER_SETTINGS)):
        return True
    match = _TF_LOG_LINE.match(line)
    if match is None:
        return False
    severity = match.group(1) or match.group(2)
    return severity in "IW" or (no_gpu and _NO_GPU.search(line) is not None)


def quiet_tensorflow() -> None:
    """Hides TensorFlow's C++ start-up log lines the next time ``tensorflow`` is imported.

    While TensorFlow is imported (and lists its devices), file descriptor 2 goes to a
    temporary file; afterwards every captured line is written back to stderr except
    TensorFlow's INFO / WARNING C++ log lines, absl's banner, and the ERROR saying that CUDA
    found no GPU when TensorFlow then lists none. Python warnings and any other output come
    through unchanged. Nothing happens when TensorFlow is imported already or when
    ``TF_CPP_MIN_LOG_LEVEL`` is below 2 (the user asked to see INFO / WARNING lines).
    """
    import sys

    try:
        level = int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        level = 0
    if level < 2 or "tensorflow" in sys.modules:
        return
    if not any(isinstance(f, _QuietTensorFlowFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowFinder())


class _QuietTensorFlowFinder:
    """A ``sys.meta_path`` finder that only wraps the loader of the top-level ``tensorflow``
    package (:func:`quiet_tensorflow`); it removes itself on first use."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "tensorflow":
            return None
        import importlib.machinery
        import sys

        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader:
    """Runs the wrapped loader with TensorFlow's C++ start-up lines filtered from fd 2."""

    def __init__(self, loader):
        self._loader = loader

    def __getattr__(self, name):  # resource readers, get_filename, ...
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        with quiet_stderr(force=True) as found_gpu:
            self._loader.exec_module(module)
            try:  # CUDA's probe, which logs when there is no GPU, runs here, not at first use
                found_gpu.append(bool(module.config.list_physical_devices("GPU")))
            except Exception:  # noqa: BLE001 - a partial TensorFlow: leave it to the caller
                pass
        module.__spec__.loader = self._loader
        module.__loader__ = self._loader


class quiet_stderr:
    """Context manager: fd 2 into a temporary file, then the file's lines back to stderr
    without TensorFlow's C++ INFO / WARNING log lines, absl's banner, the TFLite runtime's
    ``INFO:`` lines (``Created TensorFlow Lite XNNPACK delegate for CPU``) and the int8
    quantiser's ``fully_quantize: ...`` settings line (kft's export). Everything else
    comes through, after the block. Does nothing when ``TF_CPP_MIN_LOG_LEVEL`` is below 2
    (unless ``force``). ``__enter__`` returns a list that :func:`quiet_tensorflow`'s loader
    appends whether a GPU was found to (a no-GPU ERROR line is hidden only after ``False``)."""

    def __init__(self, force: bool = False):
        try:
            level = int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
        except ValueError:
            level = 0
        self.active = force or level >= 2

    def __enter__(self):
        import sys
        import tempfile

        self.found_gpu = []
        if not self.active:
            return self.found_gpu
        sys.stderr.flush()
        self.saved = os.dup(2)
        self.file = tempfile.TemporaryFile()
        os.dup2(self.file.fileno(), 2)
        return self.found_gpu

    def __exit__(self, *exc):
        import sys

        if not self.active:
            return False
        sys.stderr.flush()
        os.dup2(self.saved, 2)
        os.close(self.saved)
        self.file.seek(0)
        text = self.file.read().decode("utf-8", errors="replace")
        self.file.close()
        no_gpu = self.found_gpu == [False]
        kept = [line for line in text.splitlines(keepends=True) if not _hidden(line, no_gpu)]
        if kept:
            sys.stderr.write("".join(kept))
            sys.stderr.flush()
        return False
