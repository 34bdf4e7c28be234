"""SSD / SSDLite speed benchmark; prints one JSON object.

* kft SSD300-VGG16 (20 classes): train-step images/s (batch 8, 300x300, SGD momentum, the
  compiled Keras train function with matching, hard negative mining and the multibox loss) and
  inference images/s at batch 1 (network + decode + per-class NMS, a traced ``model.detect``).
* kft SSDLite-MobileNetV3-Large 320: the same two numbers.
* SSDLite (MobileNetV3-Large and MobileNetV2, 320) TFLite latency, float32 vs full-integer
  INT8 (``kft.export.export_detector``, decode and NMS inside the file), batch 1,
  ``--tflite-threads`` threads.
* When torchvision is importable (in this interpreter or the one given by ``--torch-python``):
  torchvision's ``ssd300_vgg16`` and ``ssdlite320_mobilenet_v3_large`` measured the same way in a
  child process of the same run, and ``ratio`` = kft time / torchvision time (below 1: kft is
  faster).

Weights are random (no downloads); the targets are 3 random boxes per image; both frameworks get
the same shapes, batch, optimizer and thread count (all cores). Times are medians of the timed
steps after warm-up.

    python benchmarks/ssd.py [--steps 5] [--infer-steps 20] [--torch-python PATH]
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

NUM_CLASSES = 20
BOXES_PER_IMAGE = 3


def random_targets(rng, batch: int, size: int):
    """``BOXES_PER_IMAGE`` random boxes (xyxy pixels) and labels (0-based) per image."""
    import numpy as np

    xy = rng.uniform(0, size * 0.6, (batch, BOXES_PER_IMAGE, 2))
    wh = rng.uniform(size * 0.1, size * 0.4, (batch, BOXES_PER_IMAGE, 2))
    boxes = np.concatenate([xy, np.minimum(xy + wh, size - 1)], -1).astype("float32")
    labels = rng.integers(0, NUM_CLASSES, (batch, BOXES_PER_IMAGE)).astype("int32")
    return boxes, labels


# --- kft (TensorFlow) --------------------------------------------------------------------------

def _kft_model(arch: str, size: int):
    from kft import config as cfg
    from kft.train.detect import build_detector

    return build_detector(cfg.Model(arch=arch), cfg.Train(), cfg.Eval(), NUM_CLASSES, size)


def timed(fn, runs: int, warmup: int) -> float:
    """Median seconds of ``runs`` calls of ``fn`` (each call must block until done), after
    ``warmup`` untimed ones. The median keeps one slow step (a page fault, another process)
    from moving the result."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def summary(train_s: float, infer_s: float, batch: int, params: int) -> dict:
    return {"train_step_s": round(train_s, 4), "train_images_per_s": round(batch / train_s, 2),
            "inference_ms": round(infer_s * 1000, 2),
            "inference_images_per_s": round(1 / infer_s, 2), "params": int(params)}


def bench_kft(arch: str, size: int, batch: int, steps: int, infer_steps: int) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    model = _kft_model(arch, size)
    model.compile(optimizer=keras.optimizers.SGD(1e-3, momentum=0.9))
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    boxes, labels = random_targets(rng, batch, size)
    x = tf.constant(images)
    y = {"boxes": tf.constant(boxes), "labels": tf.constant(labels)}
    # the compiled train function of fit(); train_on_batch returns numpy, so each call blocks
    train_s = timed(lambda: model.train_on_batch(x, y), steps, warmup=2)
    detect = tf.function(model.detect)
    one = tf.constant(images[:1])
    infer_s = timed(lambda: detect(one)["boxes"].numpy(), infer_steps, warmup=3)
    return summary(train_s, infer_s, batch, model.count_params())


def bench_tflite(arch: str, size: int, infer_steps: int, threads: int) -> dict:
    import numpy as np

    from kft.export.detection import TFLiteDetector, export_detector

    model = _kft_model(arch, size)
    rng = np.random.default_rng(1)
    calibration = [rng.uniform(0, 255, (1, size, size, 3)).astype("float32") for _ in range(20)]
    out = {"threads": threads}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        paths = export_detector(model, tmp, calibration, formats=("float32", "int8"),
                                num_calibration=len(calibration))
        out["export_s"] = round(time.perf_counter() - start, 1)
        for fmt, path in paths.items():
            runner = TFLiteDetector(path, num_threads=threads)
            runner.detect(np.concatenate(calibration[:1] * infer_steps))
            out[fmt] = {"latency_ms": round(1000 * statistics.median(runner.timings), 2),
                        "size_mb": round(os.path.getsize(path) / 2**20, 2)}
    out["int8_speedup"] = round(out["float32"]["latency_ms"] / out["int8"]["latency_ms"], 2)
    return out


# --- torchvision (child process) ---------------------------------------------------------------

def bench_torchvision(name: str, size: int, batch: int, steps: int, infer_steps: int) -> dict:
    import numpy as np
    import torch
    import torchvision

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    build = getattr(torchvision.models.detection, name)
    model = build(weights=None, weights_backbone=None, num_classes=NUM_CLASSES + 1)
    rng = np.random.default_rng(0)
    images = [torch.rand(3, size, size) for _ in range(batch)]
    boxes, labels = random_targets(rng, batch, size)
    targets = [{"boxes": torch.from_numpy(boxes[i]),
                "labels": torch.from_numpy(labels[i]).long() + 1} for i in range(batch)]
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    model.train()

    def step():
        optimizer.zero_grad()
        loss = sum(model(images, targets).values())
        loss.backward()
        optimizer.step()

    train_s = timed(step, steps, warmup=2)
    model.eval()
    with torch.inference_mode():
        infer_s = timed(lambda: model(images[:1]), infer_steps, warmup=3)
    return {**summary(train_s, infer_s, batch, sum(p.numel() for p in model.parameters())),
            "torch": torch.__version__, "torchvision": torchvision.__version__}


def run_torchvision(python: str, name: str, size: int, batch: int, steps: int,
                    infer_steps: int) -> dict:
    """Runs :func:`bench_torchvision` in ``python`` (a clean process: no TensorFlow threads)."""
    code = (f"import sys, json; sys.path.insert(0, {os.path.dirname(__file__)!r}); "
            f"import ssd; print(json.dumps(ssd.bench_torchvision({name!r}, {size}, {batch}, "
            f"{steps}, {infer_steps})))")
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        return {"error": f"{python}: {tail[0]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def torchvision_python(requested: str | None) -> str | None:
    """The interpreter that can import torchvision: ``requested`` or this one, else None."""
    python = requested or sys.executable
    probe = subprocess.run([python, "-c", "import torchvision"], capture_output=True)
    return python if probe.returncode == 0 else None


def ratio(kft_result: dict, peer: dict, key: str) -> float | None:
    if "error" in peer or key not in peer:
        return None
    return round(kft_result[key] / peer[key], 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed train steps")
    parser.add_argument("--infer-steps", type=int, default=20, help="timed batch-1 inferences")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tflite-threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--torch-python", default=None,
                        help="a Python with torch + torchvision (default: this one)")
    parser.add_argument("--skip", default="", help="comma list of: ssd300,ssdlite,tflite,torch")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    import keras
    import tensorflow as tf

    result = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                          "tensorflow": tf.__version__, "keras": keras.__version__},
              "batch": args.batch, "steps": args.steps, "infer_steps": args.infer_steps}
    python = None if "torch" in skip else torchvision_python(args.torch_python)
    result["torchvision_available"] = python is not None
    for key, arch, peer, size in (("ssd300_vgg16", "ssd300_vgg16", "ssd300_vgg16", 300),
                                  ("ssdlite_mobilenet_v3", "ssdlite_mobilenet_v3",
                                   "ssdlite320_mobilenet_v3_large", 320)):
        if key.split("_")[0] in skip:
            continue
        entry = {"kft": bench_kft(arch, size, args.batch, args.steps, args.infer_steps)}
        if python:
            tv = run_torchvision(python, peer, size, args.batch, args.steps, args.infer_steps)
            entry["torchvision"] = tv
            entry["ratio"] = {"train_step_time": ratio(entry["kft"], tv, "train_step_s"),
                              "inference_time": ratio(entry["kft"], tv, "inference_ms")}
        result[key] = entry
    if "tflite" not in skip:
        for arch in ("ssdlite_mobilenet_v3", "ssdlite_mobilenet_v2"):
            result[f"{arch}_tflite"] = bench_tflite(arch, 320, args.infer_steps,
                                                    args.tflite_threads)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
