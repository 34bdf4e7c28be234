"""Training step with Keras' BatchNormalization against kft's fused one; prints one JSON object.

kft trains (the runner's ``fit``, ``Detector.fit``) inside :func:`kft.train.fused_bn.
fused_batch_norms`, which computes every plain BatchNormalization's training-mode output and
statistics with TensorFlow's fused kernel instead of Keras' generic ops (same results:
``tests/train/test_fused_bn.py``). This script measures what that changes, on two models each
built twice from the same seed, one per side, on the same batch:

* ``ssdlite_quickstart``: the detection quick start's SSDLite-MobileNetV2 (width 0.35, 128 px,
  5 classes, 76 BatchNormalization layers), batch ``--ssd-batch`` (32), 3 random boxes per
  image, AdamW; the whole compiled Keras train step (matching, hard negative mining, loss,
  backward, update).
* ``resnet50``: kft's ResNet-50 classifier (keras-hub backbone), 224 px, batch
  ``--resnet-batch`` (8), SGD momentum 0.9, softmax cross-entropy.

Each side's ``train_on_batch`` is traced with (``fused``) or without (``keras``) the fused
layers; the two sides take turns, ``--steps`` timed steps each after 2 untimed ones, and the
median is reported with ``ratio`` = fused / keras (below 1: the fused side is faster);
``fused_kernel_layers`` counts the layers that take the fused kernel. The sides' losses agree to
float32 rounding, which a randomly initialised network amplifies over steps (on the SSDLite
both sides' initial training-mode logits differ from a float64 Keras reference by about as
much: 1.4e-3 Keras, 1.7e-3 fused, on logits up to 8.9; two Keras runs of ResNet-50 already
part by the third step, oneDNN's reductions being unordered). The machine may be shared with
other work: compare numbers from one run.

    python benchmarks/batch_norm.py [--steps 10] [--skip ssdlite_quickstart,resnet50]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys

WARMUP_STEPS = 2


def _ssdlite(batch: int):
    import keras
    import numpy as np

    from kft.models.ssd import SSD

    def build():
        keras.utils.set_random_seed(0)
        model = SSD.from_arch("ssdlite_mobilenet_v2", 5, image_size=128, width_multiplier=0.35)
        model.compile(optimizer=keras.optimizers.AdamW(1e-3))
        return model

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch, 128, 128, 3)).astype("float32")
    corners = rng.uniform(0, 96, (batch, 3, 2)).astype("float32")
    sizes = rng.uniform(16, 32, (batch, 3, 2)).astype("float32")
    y = {"boxes": np.concatenate([corners, corners + sizes], -1),
         "labels": rng.integers(0, 5, (batch, 3)).astype("int32")}
    return build, x, y, (f"kft SSD.from_arch('ssdlite_mobilenet_v2', 5, image_size=128, "
                         f"width_multiplier=0.35), batch {batch}, AdamW")


def _resnet50(batch: int):
    import keras
    import numpy as np

    from kft.models.classifier import ResNetClassifier

    def build():
        keras.utils.set_random_seed(0)
        model = ResNetClassifier.from_arch("resnet50", num_classes=10, image_size=224)
        model.compile(keras.optimizers.SGD(1e-3, momentum=0.9),
                      keras.losses.CategoricalCrossentropy(from_logits=True))
        return model

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch, 224, 224, 3)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, 10, batch), 10).astype("float32")
    return build, x, y, f"kft ResNetClassifier.from_arch('resnet50'), 224 px, batch {batch}, SGD"


def bench(make, batch: int, steps: int) -> dict:
    import time

    import keras

    from kft.ops.batch_norm import uses_fused_kernel
    from kft.train.fused_bn import fused_batch_norms

    build, x, y, described = make(batch)
    models = {"keras": build(), "fused": build()}
    for model in models.values():
        model.optimizer.build(model.trainable_variables)
    with fused_batch_norms(models["fused"]) as covered:
        models["fused"].train_on_batch(x, y)  # traced here, with the fused layers
    models["keras"].train_on_batch(x, y)
    times = {name: [] for name in models}
    losses = {name: [] for name in models}
    for step in range(WARMUP_STEPS + steps):
        for name, model in models.items():
            start = time.perf_counter()
            loss = model.train_on_batch(x, y)
            if step >= WARMUP_STEPS:
                times[name].append(time.perf_counter() - start)
                losses[name].append(float(loss[0] if isinstance(loss, list) else loss))
    bns = [layer for layer in models["keras"]._flatten_layers(include_self=False)
           if isinstance(layer, keras.layers.BatchNormalization)]
    kernel = sum(layer.trainable and uses_fused_kernel(len(layer.input.shape), "float32",
                                                       layer.epsilon) for layer in bns)
    out = {"model": described, "batch_norm_layers": len(bns), "covered_layers": covered,
           "fused_kernel_layers": int(kernel)}
    for name in models:
        out[name] = {"train_step_s": round(statistics.median(times[name]), 4),
                     "train_step_min_s": round(min(times[name]), 4),
                     "first_loss": round(losses[name][0], 4),
                     "last_loss": round(losses[name][-1], 4)}
    out["ratio"] = round(out["fused"]["train_step_s"] / out["keras"]["train_step_s"], 3)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--ssd-batch", type=int, default=32)
    parser.add_argument("--resnet-batch", type=int, default=8)
    parser.add_argument("--skip", default="", help="comma-separated: ssdlite_quickstart,resnet50")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    result = {"what": "median seconds of a compiled Keras train step, Keras' BatchNormalization "
                      "(keras) against kft.train.fused_bn (fused), same model, seed and batch",
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
              "steps": args.steps, "warmup_steps": WARMUP_STEPS}
    if "ssdlite_quickstart" not in skip:
        result["ssdlite_quickstart"] = bench(_ssdlite, args.ssd_batch, args.steps)
    if "resnet50" not in skip:
        result["resnet50"] = bench(_resnet50, args.resnet_batch, args.steps)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
