"""Classification speed benchmark, kft against keras.applications and torchvision; prints one JSON
object.

Three ResNets of the same depth (``--arch``, default ResNet-50), 1000 classes, random weights,
timed in the same run with the same statistic:

* ``kft``: ``kft.models.classifier.ResNetClassifier.from_arch(arch)``: ImageNet normalisation
  layer -> keras-hub ``ResNetBackbone`` -> global average pool -> Dense. keras-hub's blocks put
  the stride on the 3x3 convolution ("v1.5", as torchvision and the ImageNet presets kft loads).
* ``keras_applications``: ``keras.applications.ResNet50(weights=None)`` (logits out; no
  normalisation inside, callers run ``preprocess_input``). Keras' ResNet puts the stride on the
  first 1x1 convolution ("v1"), so its stages 2-4 run their 3x3 convolutions at a quarter of
  the positions for the first block: ~6% fewer FLOPs than v1.5 (``forward_gflops_per_image``).
* ``torchvision``: ``torchvision.models.resnet50(weights=None)`` in a child process (the
  interpreter of ``--torch-python``, default this one; "not available" without torch).

For each: the median of ``--steps`` individually timed train steps (batch ``--batch``,
``--size`` x ``--size`` random pixels, SGD lr 0.01 momentum 0.9, softmax cross-entropy on the
logits) after 2 untimed warm-up steps (the first traces), and the median of as many timed
inference steps on the same batch after 2 warm-up ones. Keras models run ``train_on_batch`` /
``predict_on_batch`` (the compiled train / predict functions of ``fit`` / ``predict``; both
return numpy, so every call has finished when the timer stops); torchvision runs ``zero_grad``,
forward, ``cross_entropy``, ``backward``, ``step`` and, for inference, ``model.eval()`` under
``torch.inference_mode()``. The two Keras models alternate step by step, so load from other
processes falls on both alike; ``min`` times are given next to the medians for the same reason.
Every framework uses all cores. ``ratio`` = kft time / peer time (above 1: kft is slower).

Then the tf.data pipeline alone (decode + resize + D4 augmentation + batch) on a folder of 500x375
JPEGs it writes itself, images/s.

    python benchmarks/classify.py [--steps 10] [--batch 16] [--size 224] [--arch resnet50]
                                  [--torch-python PATH] [--skip keras,torch,pipeline]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

NUM_CLASSES = 1000
WARMUP_STEPS = 2
LEARNING_RATE = 0.01
MOMENTUM = 0.9
KERAS_APPLICATIONS = {"resnet50": "ResNet50", "resnet101": "ResNet101", "resnet152": "ResNet152"}


def summary(train: list[float], infer: list[float], batch: int, params: int,
            gflops: float) -> dict:
    train_s, infer_s = statistics.median(train), statistics.median(infer)
    return {"train_step_s": round(train_s, 4), "train_step_min_s": round(min(train), 4),
            "train_images_per_s": round(batch / train_s, 2),
            "inference_step_s": round(infer_s, 4), "inference_step_min_s": round(min(infer), 4),
            "inference_images_per_s": round(batch / infer_s, 2),
            "params": int(params), "forward_gflops_per_image": round(gflops, 3)}


def alternating(calls: dict, runs: int, warmup: int) -> dict[str, list[float]]:
    """Seconds of each of ``runs`` calls of every function in ``calls`` (each call blocks until
    done), the functions taking turns, after ``warmup`` untimed rounds."""
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    times = {name: [] for name in calls}
    for _ in range(runs):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


# --- Keras (kft and keras.applications) --------------------------------------------------------

def keras_gflops(model) -> float:
    """Forward GFLOPs per image (2 x multiply-adds of every convolution and dense layer)."""
    import keras

    def layers_of(m):
        for layer in m.layers:
            if isinstance(layer, keras.Model):
                yield from layers_of(layer)
            else:
                yield layer

    total = 0
    for layer in layers_of(model):
        if isinstance(layer, keras.layers.Conv2D):  # not depthwise: ResNets have none
            kh, kw, cin, cout = layer.kernel.shape
            h, w = layer.output.shape[1:3]
            total += 2 * h * w * kh * kw * cin * cout
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * layer.kernel.shape[0] * layer.kernel.shape[1]
    return total / 1e9


def keras_models(arch: str, size: int, skip: set) -> dict:
    import keras

    from kft.models.classifier import ResNetClassifier

    keras.utils.set_random_seed(0)
    models = {"kft": ResNetClassifier.from_arch(arch, num_classes=NUM_CLASSES, image_size=size)}
    if "keras" not in skip and arch in KERAS_APPLICATIONS:
        build = getattr(keras.applications, KERAS_APPLICATIONS[arch])
        models["keras_applications"] = build(weights=None, input_shape=(size, size, 3),
                                             classes=NUM_CLASSES, classifier_activation=None)
    for model in models.values():
        model.compile(keras.optimizers.SGD(LEARNING_RATE, momentum=MOMENTUM),
                      keras.losses.CategoricalCrossentropy(from_logits=True))
    return models


def bench_keras(arch: str, size: int, batch: int, steps: int, skip: set) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    models = keras_models(arch, size, skip)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(0, 255, (batch, size, size, 3)).astype("float32"))
    y = tf.constant(keras.utils.to_categorical(rng.integers(0, NUM_CLASSES, batch),
                                               NUM_CLASSES).astype("float32"))
    train = alternating({name: (lambda m=m: m.train_on_batch(x, y))
                         for name, m in models.items()}, steps, WARMUP_STEPS)
    infer = alternating({name: (lambda m=m: m.predict_on_batch(x))
                         for name, m in models.items()}, steps, WARMUP_STEPS)
    described = {
        "kft": f"kft ResNetClassifier.from_arch({arch!r}): Normalization + keras-hub "
               "ResNetBackbone (v1.5, stride on the 3x3 conv) + GAP + Dense",
        "keras_applications": f"keras.applications.{KERAS_APPLICATIONS.get(arch)}(weights=None, "
                              "classifier_activation=None) (v1, stride on the first 1x1 conv)",
    }
    return {name: {"model": described[name],
                   **summary(train[name], infer[name], batch, model.count_params(),
                             keras_gflops(model))}
            for name, model in models.items()}


# --- torchvision (child process) ---------------------------------------------------------------

def bench_torchvision(arch: str, size: int, batch: int, steps: int) -> dict:
    import torch
    import torchvision

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=NUM_CLASSES)
    x = torch.rand(batch, 3, size, size) * 255.0
    y = torch.randint(0, NUM_CLASSES, (batch,))

    flops = []

    def count(module, inputs, output):
        if isinstance(module, torch.nn.Conv2d):
            kh, kw = module.kernel_size
            per_out = kh * kw * module.in_channels // module.groups
            flops.append(2 * output[0].numel() * per_out)
        else:
            flops.append(2 * module.in_features * module.out_features)

    hooks = [m.register_forward_hook(count) for m in model.modules()
             if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.inference_mode():
        model.eval()
        model(x[:1])
    for hook in hooks:
        hook.remove()

    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)

    def train_step():
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    model.train()
    train = alternating({"step": train_step}, steps, WARMUP_STEPS)["step"]
    model.eval()
    with torch.inference_mode():
        infer = alternating({"step": lambda: model(x)}, steps, WARMUP_STEPS)["step"]
    return {"model": f"torchvision.models.{arch}(weights=None) (v1.5, stride on the 3x3 conv)",
            **summary(train, infer, batch, sum(p.numel() for p in model.parameters()),
                      sum(flops) / 1e9),
            "threads": threads, "torch": torch.__version__,
            "torchvision": torchvision.__version__}


def run_torchvision(python: str, arch: str, size: int, batch: int, steps: int) -> dict:
    """Runs :func:`bench_torchvision` in ``python`` (a clean process: no TensorFlow threads)."""
    from child import run_in

    return run_in(python, "classify", f"bench_torchvision({arch!r}, {size}, {batch}, {steps})")


def torchvision_python(requested: str | None, arch: str) -> str | None:
    """The interpreter that can import torchvision and has ``arch``, else None."""
    python = requested or sys.executable
    probe_code = f"import torchvision; torchvision.models.{arch}"
    try:
        probe = subprocess.run([python, "-c", probe_code], capture_output=True)
    except OSError:
        return None
    return python if probe.returncode == 0 else None


# --- input pipeline ----------------------------------------------------------------------------

def bench_pipeline(size: int, batch: int, n_images: int = 256) -> dict:
    import numpy as np
    from PIL import Image

    from kft.data import ClassificationAugment, classification_batches
    from kft.data.readers.folder import ClassificationSplit

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as root:
        paths, labels = [], []
        for i in range(n_images):
            path = os.path.join(root, f"{i}.jpg")
            Image.fromarray(rng.integers(0, 255, (375, 500, 3), dtype=np.uint8)).save(path)
            paths.append(path)
            labels.append(i % 10)
        split = ClassificationSplit(paths, labels, [str(c) for c in range(10)])
        batches = classification_batches(split, image_size=size, batch_size=batch,
                                         num_classes=10, training=True, seed=0,
                                         augment=ClassificationAugment(seed=0), epochs=3)
        it = iter(batches.dataset)
        next(it)  # warm up
        t = time.perf_counter()
        count = 0
        for _ in range(batches.steps * 2 - 1):
            x, _ = next(it)
            count += int(x.shape[0])
        return {"pipeline_images_per_s": round(count / (time.perf_counter() - t), 2),
                "source": "500x375 JPEG, decode+resize+D4 augment+batch"}


def ratio(kft_result: dict, peer, key: str) -> float | None:
    if not isinstance(peer, dict) or key not in peer:
        return None
    return round(kft_result[key] / peer[key], 3)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=10, help="timed train and inference steps")
    p.add_argument("--torch-python", default=None,
                   help="a Python with torch + torchvision (default: this one)")
    p.add_argument("--skip", default="", help="comma list of: keras,torch,pipeline")
    args = p.parse_args()
    skip = set(filter(None, args.skip.split(",")))

    import keras
    import tensorflow as tf

    result = {
        "benchmark": "classify",
        "arch": args.arch, "image_size": args.size, "batch": args.batch, "classes": NUM_CLASSES,
        "steps": args.steps, "warmup_steps": WARMUP_STEPS,
        "optimizer": f"SGD lr {LEARNING_RATE} momentum {MOMENTUM}",
        "loss": "softmax cross-entropy on logits", "statistic": "median of timed steps",
        "device": "GPU" if tf.config.list_physical_devices("GPU") else "CPU",
        "cpu_count": os.cpu_count(), "threads": os.cpu_count(), "machine": platform.machine(),
        "tensorflow": tf.__version__, "keras": keras.__version__,
        "load_average_before": [round(v, 2) for v in os.getloadavg()],
    }
    result.update(bench_keras(args.arch, args.size, args.batch, args.steps, skip))
    if "keras_applications" not in result:
        result["keras_applications"] = "not available"
    python = None if "torch" in skip else torchvision_python(args.torch_python, args.arch)
    result["torchvision"] = (run_torchvision(python, args.arch, args.size, args.batch,
                                             args.steps) if python else "not available")
    result["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    kft_result = result["kft"]
    result["ratio"] = {
        f"kft_over_{peer}": {key: ratio(kft_result, result[peer], key)
                             for key in ("train_step_s", "inference_step_s",
                                         "forward_gflops_per_image")}
        for peer in ("keras_applications", "torchvision")}
    if "pipeline" not in skip:
        result.update(bench_pipeline(args.size, args.batch))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
