"""SSD / SSDLite speed benchmark, kft against torchvision; prints one JSON object.

What is timed (every time is the median of individually timed calls after untimed warm-up):

* Train step (kft SSD300-VGG16 and SSDLite320-MobileNetV3-Large, 20 classes, random weights):
  batch ``--batch`` (8) at 300x300 / 320x320 with 3 random boxes per image, SGD ``--lr``
  (1e-4; at 1e-3 torchvision's SSD300 reaches NaN by its third step) momentum 0.9, 2 warm-up
  steps. kft runs the compiled Keras train function (``train_on_batch``: matching, hard
  negative mining, multibox loss, backward, update); torchvision runs
  ``sum(model(images, targets).values())``, ``backward()``, ``step()``. The first and last
  losses are reported, so a reader sees both runs stayed finite.
* Batch-1 inference with decode and NMS on a freshly built model (not the trained one),
  ``--infer-steps`` different images (random pixels, the same on both sides), 3 warm-up calls:
  kft's traced ``model.detect`` (network, softmax, box decoding, clipping,
  ``NonMaxSuppressionV5``); torchvision's ``model.eval()`` forward under
  ``torch.inference_mode()`` (transform, network, per-class threshold and top-k,
  ``batched_nms``).

Both detectors do the same post-processing work. With random weights their class scores sit in
different places (kft's head starts every foreground class at probability 0.01, just under its
0.01 threshold, so NMS would get nothing; torchvision's passes 400 boxes per class), so the
score threshold is not a fixed number: each side's threshold is set from its own scores on the
timed images so that on average ``--nms-candidates`` (2000) (box, class) pairs per image lie
above it and go into NMS. torchvision's per-class pre-NMS top-k is raised to the anchor count
(kft has no such cap; with it torchvision would drop candidates kft keeps). Both sides use NMS
IoU ``--nms-iou`` (0.45) and keep at most ``--max-detections`` (100). A freshly initialised
SSDLite, kft's and torchvision's alike, has vanishing activations and all-equal scores (kft:
the 0.01 prior; torchvision: 1/21), which no threshold can split; then that side's kernels are
redrawn He-normal before its inference (``inference_kernels_redrawn_he_normal`` counts them:
the same ops on other values). The JSON
gives, for each side, the model, threshold, top-k, maximum detections and the mean numbers of
candidates that entered NMS (counted untimed from the same network outputs) and of detections
that came out (from the timed calls).

* TFLite (SSDLite320 MobileNetV3-Large and MobileNetV2, float32 and full-integer INT8 by
  ``kft.export.export_detector``, decode and NMS inside the file): median batch-1 latency over
  the same images, ``--tflite-threads`` threads, after 3 warm-up runs; the decoder threshold is
  set as above on the Keras model before export. The JSON gives the detections each file
  returned and the candidates above the threshold inside each file (from its softmax output).

Both frameworks use every core (``threads``). ``ratio`` = kft time / torchvision time (below 1:
kft is faster). torchvision runs in a child process (the interpreter of ``--torch-python``,
default this one); without torch the peer says "not available". The machine may be shared with
other work: compare numbers from one run.

    python benchmarks/ssd.py [--steps 5] [--infer-steps 20] [--nms-candidates 2000] [--lr 1e-4]
                             [--torch-python PATH] [--skip ssd300,ssdlite,tflite,torch]
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
DETECTORS = (  # JSON key, kft arch, torchvision builder, image side
    ("ssd300_vgg16", "ssd300_vgg16", "ssd300_vgg16", 300),
    ("ssdlite_mobilenet_v3", "ssdlite_mobilenet_v3", "ssdlite320_mobilenet_v3_large", 320),
)


def random_targets(rng, batch: int, size: int):
    """``BOXES_PER_IMAGE`` random boxes (xyxy pixels) and labels (0-based) per image."""
    import numpy as np

    xy = rng.uniform(0, size * 0.6, (batch, BOXES_PER_IMAGE, 2))
    wh = rng.uniform(size * 0.1, size * 0.4, (batch, BOXES_PER_IMAGE, 2))
    boxes = np.concatenate([xy, np.minimum(xy + wh, size - 1)], -1).astype("float32")
    labels = rng.integers(0, NUM_CLASSES, (batch, BOXES_PER_IMAGE)).astype("int32")
    return boxes, labels


def inference_images(size: int, count: int):
    """``count`` random images ``float32 [count, size, size, 3]`` in 0..255, the same in every
    process (both frameworks time the same pixels)."""
    import numpy as np

    return np.random.default_rng(2).uniform(0, 255, (count, size, size, 3)).astype("float32")


def threshold_for(scores, per_image: int) -> float:
    """A score threshold with, on average over the images of ``scores`` (``[T, K, C]``
    foreground scores), ``per_image`` (box, class) pairs strictly above it: the
    ``per_image * T + 1``-th largest score (float32, as both NMS implementations compare)."""
    import numpy as np

    scores = np.asarray(scores, np.float32)
    if not np.isfinite(scores).all():
        raise ValueError(f"{int((~np.isfinite(scores)).sum())} scores are not finite")
    flat = np.sort(scores.ravel())[::-1]
    n = per_image * scores.shape[0]
    if n >= flat.size:  # fewer pairs than asked: every one is a candidate
        return float(np.nextafter(flat[-1], np.float32(-np.inf)))
    return float(flat[n])


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


def timed_each(fn, inputs, warmup: int):
    """``fn`` on each of ``inputs``, each call timed, after ``warmup`` untimed calls on the
    first; returns (median seconds, the calls' results)."""
    for _ in range(warmup):
        fn(inputs[0])
    times, results = [], []
    for item in inputs:
        start = time.perf_counter()
        results.append(fn(item))
        times.append(time.perf_counter() - start)
    return statistics.median(times), results


def train_summary(train_s: float, batch: int, params: int, losses: list[float]) -> dict:
    """``losses``: the loss of every train step, warm-up included (first and last reported:
    a diverging run, inf / NaN, would time other arithmetic)."""
    return {"train_step_s": round(train_s, 4), "train_images_per_s": round(batch / train_s, 2),
            "params": int(params), "train_loss_first_last": [round(losses[0], 3),
                                                             round(losses[-1], 3)]}


def inference_summary(infer_s: float, threshold: float, top_k, max_detections: int,
                      iou: float, candidates, detections) -> dict:
    return {"inference_ms": round(infer_s * 1000, 2),
            "inference_images_per_s": round(1 / infer_s, 2),
            "score_threshold": threshold, "pre_nms_top_k_per_class": top_k,
            "max_detections": max_detections, "nms_iou_threshold": iou,
            "nms_candidates_mean": round(statistics.mean(candidates), 1),
            "nms_candidates_min_max": [int(min(candidates)), int(max(candidates))],
            "detections_mean": round(statistics.mean(detections), 1)}


# --- kft (TensorFlow) --------------------------------------------------------------------------

def _kft_model(arch: str, size: int, iou: float, max_detections: int):
    """A kft detector with seeded random weights (the same in every run)."""
    import keras

    from kft.models.ssd import SSD

    keras.utils.set_random_seed(0)
    return SSD.from_arch(arch, NUM_CLASSES, image_size=size, nms_iou_threshold=iou,
                         max_detections=max_detections)


def _kft_scores(model, images):
    """Foreground scores ``[T, K, C]`` exactly as the decoder computes them."""
    import numpy as np
    from keras import ops

    rows = []
    for start in range(0, len(images), 8):
        raw = model(images[start:start + 8], training=False)
        rows.append(np.asarray(ops.softmax(ops.cast(raw["cls_logits"], "float32"))[..., 1:]))
    return np.concatenate(rows)


def redraw_kernels(model, seed: int = 0) -> int:
    """Redraws every convolution / dense kernel He-normal (std ``sqrt(2 / fan_in)``, fan-in
    ``kh * kw`` for a depthwise kernel); returns how many. Biases and BatchNorm are kept."""
    import keras
    import numpy as np

    rng = np.random.default_rng(seed)
    count = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            fan_in = layer.kernel.shape[0] * layer.kernel.shape[1]
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            fan_in = int(np.prod(layer.kernel.shape[:-1]))
        else:
            continue
        std = np.sqrt(2.0 / fan_in)
        layer.kernel.assign(rng.normal(0.0, std, layer.kernel.shape).astype("float32"))
        count += 1
    return count


def _set_kft_threshold(model, images, per_image: int) -> dict:
    """Sets the decoder's score threshold for ``per_image`` candidates on ``images``.

    A random keras.applications MobileNet (glorot-uniform kernels, BatchNorm at its initial
    statistics) shrinks its activations ~10x per stage: the SSDLite head sees features near
    1e-9, every class logit equals its prior bias and all scores tie, so no threshold selects
    ``per_image`` candidates. Then the kernels are redrawn He-normal (:func:`redraw_kernels`,
    the scale at which activations keep their size) and the scores measured again; the work
    per call is the same, only the values change. (torchvision's random SSDLite ties too, at
    1/21, and gets the same treatment.)

    Returns ``{"score_threshold", "candidates" (per image), "kernels_redrawn"}``.
    """
    scores = _kft_scores(model, images)
    redrawn = 0
    if _tied_at_cut(scores, per_image):
        redrawn = redraw_kernels(model)
        scores = _kft_scores(model, images)
    threshold = threshold_for(scores, per_image)
    model.score_threshold = threshold  # the config value
    model.decoder.score_threshold = threshold  # what model.detect reads when it is traced
    return {"score_threshold": threshold, "kernels_redrawn": redrawn,
            "candidates": [int((s > threshold).sum()) for s in scores]}


def _tied_at_cut(scores, per_image: int) -> bool:
    """Whether the scores around the ``per_image`` cut tie (no threshold can make it)."""
    import numpy as np

    flat = np.sort(np.asarray(scores, np.float32).ravel())[::-1]
    n = per_image * scores.shape[0]
    return n < flat.size and flat[n - 1] == flat[n]


def bench_kft(arch: str, size: int, args) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    model = _kft_model(arch, size, args.nms_iou, args.max_detections)
    model.compile(optimizer=keras.optimizers.SGD(args.lr, momentum=0.9))
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (args.batch, size, size, 3)).astype("float32")
    boxes, labels = random_targets(rng, args.batch, size)
    x = tf.constant(images)
    y = {"boxes": tf.constant(boxes), "labels": tf.constant(labels)}
    # the compiled train function of fit(); train_on_batch returns numpy, so each call blocks
    losses = []
    train_s = timed(lambda: losses.append(float(
        model.train_on_batch(x, y, return_dict=True)["loss"])), args.steps, warmup=2)

    params = model.count_params()

    # inference on a fresh model: a few steps from random weights can push a network's scores
    # to inf / NaN (torchvision's SSD300 at lr 1e-3), which would leave NMS nothing to do
    model = _kft_model(arch, size, args.nms_iou, args.max_detections)
    timed_images = inference_images(size, args.infer_steps)
    setting = _set_kft_threshold(model, timed_images, args.nms_candidates)
    detect = tf.function(model.detect)
    singles = [tf.constant(timed_images[i:i + 1]) for i in range(len(timed_images))]
    infer_s, counts = timed_each(lambda one: int(detect(one)["num_detections"].numpy()[0]),
                                 singles, warmup=3)
    return {"model": f"kft SSD.from_arch({arch!r}), {NUM_CLASSES} classes, random weights",
            **train_summary(train_s, args.batch, params, losses),
            **inference_summary(infer_s, setting["score_threshold"], None, args.max_detections,
                                args.nms_iou, setting["candidates"], counts),
            "inference_kernels_redrawn_he_normal": setting["kernels_redrawn"]}


def _tflite_candidates(path: str, images, threshold: float):
    """Candidates above ``threshold`` per image in a kft detector file, from its decoder's
    SOFTMAX output (an untimed interpreter that keeps every tensor); None when unreadable."""
    import numpy as np

    from kft.export.core import interpreter_class, quantize_input

    try:
        interpreter = interpreter_class()(model_path=path, experimental_preserve_all_tensors=True)
        interpreter.allocate_tensors()
        softmax = [op["outputs"][0] for op in interpreter._get_ops_details()
                   if op["op_name"] == "SOFTMAX"]
        if len(softmax) != 1:
            return None
        detail = interpreter.get_input_details()[0]
        counts = []
        for image in images:
            interpreter.set_tensor(detail["index"], quantize_input(image[None], detail))
            interpreter.invoke()
            scores = interpreter.get_tensor(softmax[0])[..., 1:]
            counts.append(int((scores > np.float32(threshold)).sum()))
        return counts
    except Exception:  # noqa: BLE001 - a private interpreter API; the count is optional
        return None


def bench_tflite(arch: str, size: int, args) -> dict:
    import numpy as np

    from kft.export.detection import TFLiteDetector, export_detector

    model = _kft_model(arch, size, args.nms_iou, args.max_detections)
    timed_images = inference_images(size, args.infer_steps)
    setting = _set_kft_threshold(model, timed_images, args.nms_candidates)
    threshold = setting["score_threshold"]
    rng = np.random.default_rng(1)
    calibration = [rng.uniform(0, 255, (1, size, size, 3)).astype("float32") for _ in range(20)]
    out = {"model": f"kft SSD.from_arch({arch!r}) exported by kft.export.export_detector",
           "threads": args.tflite_threads, "batch": 1, "image_size": size,
           "score_threshold": threshold, "max_detections": args.max_detections,
           "nms_iou_threshold": args.nms_iou,
           "kernels_redrawn_he_normal": setting["kernels_redrawn"],
           "keras_nms_candidates_mean": round(statistics.mean(setting["candidates"]), 1)}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        paths = export_detector(model, tmp, calibration, formats=("float32", "int8"),
                                num_calibration=len(calibration))
        out["export_s"] = round(time.perf_counter() - start, 1)
        for fmt, path in paths.items():
            runner = TFLiteDetector(path, num_threads=args.tflite_threads)
            detections = runner.detect(timed_images)["num_detections"]
            file_candidates = _tflite_candidates(path, timed_images, threshold)
            out[fmt] = {"latency_ms": round(1000 * statistics.median(runner.timed.timings), 2),
                        "size_mb": round(os.path.getsize(path) / 2**20, 2),
                        "nms_candidates_mean": (None if file_candidates is None else
                                                round(statistics.mean(file_candidates), 1)),
                        "detections_mean": round(float(np.mean(detections)), 1)}
    out["int8_speedup"] = round(out["float32"]["latency_ms"] / out["int8"]["latency_ms"], 2)
    return out


# --- torchvision (child process) ---------------------------------------------------------------

def bench_torchvision(name: str, size: int, batch: int, steps: int, infer_steps: int,
                      nms_candidates: int, max_detections: int, nms_iou: float,
                      lr: float) -> dict:
    import numpy as np
    import torch
    import torchvision

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    build = getattr(torchvision.models.detection, name)
    model = build(weights=None, weights_backbone=None, num_classes=NUM_CLASSES + 1)
    defaults = {"score_thresh": model.score_thresh, "topk_candidates": model.topk_candidates,
                "detections_per_img": model.detections_per_img, "nms_thresh": model.nms_thresh}
    rng = np.random.default_rng(0)
    images = [torch.rand(3, size, size) for _ in range(batch)]
    boxes, labels = random_targets(rng, batch, size)
    targets = [{"boxes": torch.from_numpy(boxes[i]),
                "labels": torch.from_numpy(labels[i]).long() + 1} for i in range(batch)]
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    losses = []

    def step():
        optimizer.zero_grad()
        loss = sum(model(images, targets).values())
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))

    train_s = timed(step, steps, warmup=2)
    params = sum(p.numel() for p in model.parameters())

    # inference on a fresh model (as kft): training from random weights can turn the scores
    # to NaN in a few steps (ssd300_vgg16 at lr 1e-3), and NaN scores pass no threshold, so
    # NMS would get nothing
    torch.manual_seed(0)
    model = build(weights=None, weights_backbone=None, num_classes=NUM_CLASSES + 1)
    model.eval()
    pixels = torch.from_numpy(inference_images(size, infer_steps) / 255.0).float()
    timed_images = list(pixels.permute(0, 3, 1, 2).contiguous())

    def foreground_scores():
        logits = []
        hook = model.head.register_forward_hook(
            lambda _m, _i, out: logits.append(out["cls_logits"]))
        with torch.inference_mode():
            for image in timed_images:
                model([image])
        hook.remove()
        return torch.cat(logits).softmax(-1)[..., 1:].numpy()

    scores = foreground_scores()
    redrawn = 0
    if _tied_at_cut(scores, nms_candidates):  # a random SSDLite: every score is 1 / 21
        redrawn = _redraw_torch_kernels(model)
        scores = foreground_scores()
    threshold = threshold_for(scores, nms_candidates)
    model.score_thresh = threshold
    model.topk_candidates = int(scores.shape[1])  # every anchor: no per-class cap (as kft)
    model.detections_per_img = max_detections
    model.nms_thresh = nms_iou
    candidates = [int(sum(min(model.topk_candidates, int((s[:, c] > threshold).sum()))
                          for c in range(s.shape[1]))) for s in scores]
    with torch.inference_mode():
        infer_s, counts = timed_each(lambda image: len(model([image])[0]["scores"]),
                                     timed_images, warmup=3)
    return {"model": f"torchvision.models.detection.{name}(weights=None, "
                     f"num_classes={NUM_CLASSES + 1})",
            **train_summary(train_s, batch, params, losses),
            **inference_summary(infer_s, threshold, model.topk_candidates, max_detections,
                                nms_iou, candidates, counts),
            "inference_kernels_redrawn_he_normal": redrawn,
            "torchvision_defaults_replaced": defaults, "threads": threads,
            "torch": torch.__version__, "torchvision": torchvision.__version__}


def _redraw_torch_kernels(model, seed: int = 0) -> int:
    """:func:`redraw_kernels` for a torch model (``Conv2d`` / ``Linear`` weights)."""
    import math

    import torch

    generator = torch.Generator().manual_seed(seed)
    count = 0
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                std = math.sqrt(2.0 / module.weight[0].numel())  # fan-in: in / groups * kh * kw
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * std)
                count += 1
    return count


def run_torchvision(python: str, name: str, size: int, args) -> dict:
    """Runs :func:`bench_torchvision` in ``python`` (a clean process: no TensorFlow threads)."""
    call = (f"bench_torchvision({name!r}, {size}, {args.batch}, {args.steps}, "
            f"{args.infer_steps}, {args.nms_candidates}, {args.max_detections}, "
            f"{args.nms_iou}, {args.lr})")
    from child import run_in

    return run_in(python, "ssd", call)


def torchvision_python(requested: str | None) -> str | None:
    """The interpreter that can import torchvision: ``requested`` or this one, else None."""
    python = requested or sys.executable
    try:
        probe = subprocess.run([python, "-c", "import torchvision"], capture_output=True)
    except OSError:
        return None
    return python if probe.returncode == 0 else None


def ratio(kft_result: dict, peer: dict, key: str) -> float | None:
    if "error" in peer or key not in peer:
        return None
    return round(kft_result[key] / peer[key], 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed train steps")
    parser.add_argument("--infer-steps", type=int, default=20,
                        help="timed batch-1 inferences (one per image)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-4,
                        help="SGD learning rate (1e-3 sends torchvision's random SSD300 to NaN "
                             "within 3 steps)")
    parser.add_argument("--nms-candidates", type=int, default=2000,
                        help="mean (box, class) pairs per image fed to NMS on both sides")
    parser.add_argument("--nms-iou", type=float, default=0.45)
    parser.add_argument("--max-detections", type=int, default=100)
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
              "train": {"batch": args.batch, "steps": args.steps, "warmup_steps": 2,
                        "optimizer": f"SGD lr {args.lr:g} momentum 0.9",
                        "boxes_per_image": BOXES_PER_IMAGE},
              "inference": {"batch": 1, "timed_images": args.infer_steps, "warmup_calls": 3,
                            "nms_candidates_target": args.nms_candidates,
                            "nms_iou_threshold": args.nms_iou,
                            "max_detections": args.max_detections},
              "threads": os.cpu_count()}
    python = None if "torch" in skip else torchvision_python(args.torch_python)
    result["torchvision_available"] = python is not None
    for key, arch, peer, size in DETECTORS:
        if key.split("_")[0] in skip:
            continue
        entry = {"image_size": size, "kft": bench_kft(arch, size, args)}
        if python:
            tv = run_torchvision(python, peer, size, args)
            entry["torchvision"] = tv
            entry["ratio"] = {"train_step_time": ratio(entry["kft"], tv, "train_step_s"),
                              "inference_time": ratio(entry["kft"], tv, "inference_ms")}
        else:
            entry["torchvision"] = "not available"
        result[key] = entry
    if "tflite" not in skip:
        for arch in ("ssdlite_mobilenet_v3", "ssdlite_mobilenet_v2"):
            result[f"{arch}_tflite"] = bench_tflite(arch, 320, args)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
