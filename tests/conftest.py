"""Shared fixtures: tiny models and data made by the tests themselves."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Under pytest-xdist (two workers on CI's two cores) each worker runs TensorFlow on one
    # intra-op thread: two processes that each size their pools for every core thrash (two
    # workers with TensorFlow's default pools took 1782 s against 1212 s serial), and most of
    # the suite's time is single-threaded Python (tracing train steps, TFLite conversion).
    import tensorflow as tf  # noqa: E402

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(2)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _float32_policy():
    keras.config.set_dtype_policy("float32")
    yield
    keras.config.set_dtype_policy("float32")


@pytest.fixture
def tiny_classifier():
    from kft.models.classifier import ResNetClassifier

    keras.utils.set_random_seed(0)
    return ResNetClassifier.from_arch("resnet_tiny", num_classes=3, image_size=64)


@pytest.fixture
def colour_batch():
    """64x64 images whose class is the dominant colour channel (learnable in a few steps)."""
    rng = np.random.default_rng(0)
    labels = np.arange(12) % 3
    images = rng.uniform(0, 60, size=(12, 64, 64, 3)).astype("float32")
    for i, c in enumerate(labels):
        images[i, :, :, c] += 180
    return images, keras.utils.to_categorical(labels, 3).astype("float32")


class KftProcess:
    """``python -m kft.run`` in a child process (CPU only, quiet TF), for kill/resume tests."""

    repo = __import__("pathlib").Path(__file__).resolve().parents[1]

    def start(self, args):
        import subprocess
        import sys

        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
        return subprocess.Popen([sys.executable, "-m", "kft.run", *args], cwd=self.repo,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)

    def kill_after_epoch(self, args, state, epoch: int, settle: float = 0.0) -> int:
        """Starts a run, SIGKILLs it once ``state`` (its state.json) has committed ``epoch``
        (plus ``settle`` seconds into the next one); returns the last committed epoch."""
        import json
        import signal
        import time

        process = self.start(args)
        deadline = time.time() + 600
        while not (state.is_file() and json.loads(state.read_text())["epoch"] >= epoch):
            if process.poll() is not None:  # ended (failed, or finished) before that epoch
                raise AssertionError(f"the run ended (status {process.returncode}) before "
                                     f"committing epoch {epoch}:\n{process.stdout.read()}")
            if time.time() > deadline:
                process.kill()
                raise AssertionError(f"epoch {epoch} not committed within 600 s")
            time.sleep(0.05)
        time.sleep(settle)
        process.send_signal(signal.SIGKILL)
        process.wait()
        return json.loads(state.read_text())["epoch"]


@pytest.fixture
def kft_process():
    return KftProcess()
