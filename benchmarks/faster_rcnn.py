"""Faster R-CNN R50-FPN speed and memory benchmark, kft against torchvision; prints one JSON.

Both sides run the same network with the same weights on the same pixels and ground truth:

* Weights: drawn by ``tools/seeded_state_dict.py`` from the key names and shapes of
  torchvision's ``fasterrcnn_resnet50_fpn`` state dict (the spec stored in
  ``tests/fixtures/fasterrcnn_resnet50_fpn_torchvision.npz``, its predictor rows widened to
  91 classes, the fixture's gains), loaded into torchvision with ``load_state_dict(strict=True)``
  and into kft with ``kft.models.convert_torchvision.convert_faster_rcnn`` (the converter the
  CI fixture checks: same proposals and detections). A freshly initialised model would not
  do: torchvision's random R50 with FrozenBatchNorm2d (mean 0, var 1) blows its activations up
  (loss 1e4, then NaN at the second step), and NaN boxes change what NMS has to do.
* Model settings: kft ``FasterRCNN.from_arch("fasterrcnn_resnet50_fpn", 90, image_size=S)``
  (90 foreground classes); torchvision ``FasterRCNN(resnet50 FPN body, num_classes=91,
  min_size=S, max_size=S)`` built by hand so that its ResNet uses ``FrozenBatchNorm2d`` (what
  ``fasterrcnn_resnet50_fpn`` does only with pretrained weights; with ``weights=None`` it
  builds trainable ``BatchNorm2d``) with ``trainable_layers=5`` (every stage trains, as kft's
  default). The JSON gives both trainable parameter counts (equal). RPN 2000 / 2000 train and
  1000 / 1000 test proposals (pre- / post-NMS), 256 sampled anchors, 512 sampled RoIs at 0.25
  positives, score threshold 0.05, NMS 0.5, 100 detections: torchvision's defaults, which
  kft's ``from_arch`` copies (read back from both models into the JSON).
* Images: ``S x S`` (512) synthetic scenes, noise with ``BOXES_PER_IMAGE`` (3) flat coloured
  rectangles that are also the ground truth (labels 1..90 random; kft 0-based). kft gets
  0..255 pixels, torchvision the same / 255 (its transform neither resizes nor pads at
  ``min_size = max_size = S``).

What is timed (medians of individually timed calls after untimed warm-up):

1. Train step, batch ``--batch`` (2), SGD ``--lr`` (1e-4; at 0.01 both sides' losses go
   from 5 to 1e15 .. 1e18 within 5 steps from the seeded, not pretrained, weights, and
   diverged values change what NMS and the samplers do) momentum 0.9 on every trainable
   variable: kft ``train_on_batch`` (the compiled train function of ``fit``) with
   ``jit_compile=False`` and, with ``--jit both`` / ``on``, ``True`` (XLA; on CPU it fails:
   TensorFlow has no XLA_CPU_JIT kernel for ``NonMaxSuppressionV5``, reported as
   ``train_error``); torchvision
   ``zero_grad``, ``sum(model(images, targets).values())``, ``backward``, ``step``.
   First and last losses are reported, and ``train_loss_finite_and_below_first`` (every later
   loss finite and not above the first: the timed steps did ordinary arithmetic).
2. Batch-1 inference on ``--infer-images`` images, the seeded weights reloaded (not the
   trained ones): kft ``tf.function(model.detect)``, torchvision ``eval()`` under
   ``inference_mode``. Detections per image are reported for both (same weights: the counts
   should agree up to a score tie).
3. TFLite: float32 and full-integer INT8 files of a small kft Faster R-CNN (``--tflite-arch``
   at ``--tflite-size``, random weights) exported by ``kft.export.export_detector``, median
   batch-1 latency; ``{"skipped": "<error>"}`` when the export fails. Its randomly initialised
   classifier scores every class near 1/91, under the 0.05 threshold: the files detect
   nothing, so this times the network, RoIAlign and box head, not the final NMS.
4. Peak memory: ``ru_maxrss`` of each side's process right after its timed train steps (each
   side in its own child process: kft under this interpreter, torchvision under
   ``--torch-python``).

``--profile`` adds where each side's train step goes: forward time of backbone + FPN, RPN
(head, proposals, anchor targets and loss), RoI stage (sampling, RoIAlign, box head, loss),
and backward + update as the rest of the step (kft: cumulative ``tf.function`` prefixes of the
train step; torchvision: forward hooks on ``backbone``, ``rpn``, ``roi_heads``), plus kft's
ops timed alone.

Threads: both sides ``--threads`` (default: all cores) intra-op threads (TensorFlow inter-op
too). The machine may be shared: the JSON records the load average around each side's run;
compare numbers from one run.

    python benchmarks/faster_rcnn.py [--steps 5] [--warmup 2] [--batch 2] [--size 512]
        [--infer-images 5] [--jit off|on|both] [--profile] [--torch-python PATH]
        [--skip train,infer,tflite,torch]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARCH = "fasterrcnn_resnet50_fpn"
NUM_CLASSES = 90                 # foreground; torchvision's num_classes = 91 with background
BOXES_PER_IMAGE = 3
WEIGHT_SEED = 0
SETTINGS_KEYS = ("rpn_pre_nms_top_n", "rpn_post_nms_top_n", "rpn_batch_size_per_image",
                 "rpn_positive_fraction", "box_batch_size_per_image", "box_positive_fraction",
                 "box_score_threshold", "box_nms_threshold", "max_detections")


# --- shared by both sides (NumPy only) ---------------------------------------------------------

def _seeded():
    spec = importlib.util.spec_from_file_location("seeded_state_dict",
                                                  ROOT / "tools" / "seeded_state_dict.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def seeded_weights() -> dict:
    """``{torchvision key: float32 array}``: the R50-FPN v1 fixture's spec (key names and
    shapes of torchvision's state dict) with the predictor widened to 91 classes, drawn with
    the fixture's seed-independent gains and :data:`WEIGHT_SEED`."""
    import numpy as np

    seeded = _seeded()
    with np.load(ROOT / "tests" / "fixtures" / f"{ARCH}_torchvision.npz") as f:
        spec = seeded.unpack_spec(f["spec_keys"], f["spec_shapes"])
        gains = {str(k): float(v) for k, v in zip(f["gain_prefixes"], f["gain_values"],
                                                  strict=True)}
    k = NUM_CLASSES + 1
    widened = {"roi_heads.box_predictor.cls_score.weight": (k, 1024),
               "roi_heads.box_predictor.cls_score.bias": (k,),
               "roi_heads.box_predictor.bbox_pred.weight": (4 * k, 1024),
               "roi_heads.box_predictor.bbox_pred.bias": (4 * k,)}
    spec = [(key, widened.get(key, shape)) for key, shape in spec]
    return seeded.draw(spec, WEIGHT_SEED, gains)


def scenes(count: int, size: int, seed: int):
    """``count`` synthetic images ``float32 [count, size, size, 3]`` (0..255: noise with
    :data:`BOXES_PER_IMAGE` flat coloured rectangles), their boxes ``[count, 3, 4]`` (xyxy
    pixels, the rectangles) and 0-based labels ``[count, 3]`` in ``0..NUM_CLASSES-1``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 80, (count, size, size, 3)).astype("float32")
    boxes = np.zeros((count, BOXES_PER_IMAGE, 4), "float32")
    for i in range(count):
        for j in range(BOXES_PER_IMAGE):
            w, h = rng.integers(size // 10, size // 2, 2)
            x1, y1 = rng.integers(0, size - w), rng.integers(0, size - h)
            images[i, y1:y1 + h, x1:x1 + w] = rng.uniform(120, 255, 3)
            boxes[i, j] = (x1, y1, x1 + w, y1 + h)
    labels = rng.integers(0, NUM_CLASSES, (count, BOXES_PER_IMAGE)).astype("int32")
    return images, boxes, labels


def median_timed(fn, runs: int, warmup: int) -> tuple[float, list[float]]:
    """(median seconds, all timings) of ``runs`` calls of ``fn`` (each blocks until done)
    after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def peak_rss_mib() -> float:
    """This process's resident-set high-water mark (``ru_maxrss``, KiB on Linux) in MiB."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def train_entry(step_s: float, times, batch: int, losses, rss: float, extra: dict) -> dict:
    return {"train_step_s": round(step_s, 3), "train_step_all_s": [round(t, 3) for t in times],
            "train_images_per_s": round(batch / step_s, 3),
            "train_loss_first_last": [round(losses[0], 4), round(losses[-1], 4)],
            "train_loss_finite_and_below_first": bool(all(math.isfinite(v) and v <= losses[0]
                                                          for v in losses[1:])),
            "peak_rss_mib_after_train": rss, **extra}


# --- kft (TensorFlow) --------------------------------------------------------------------------

def _tf_threads(threads: int) -> None:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


def _kft_model(size: int, weights: dict | None):
    import keras

    from kft.models.convert_torchvision import convert_faster_rcnn
    from kft.models.faster_rcnn import FasterRCNN

    keras.utils.set_random_seed(0)
    model = FasterRCNN.from_arch(ARCH, NUM_CLASSES, image_size=size, seed=0)
    if weights is not None:
        report = convert_faster_rcnn(weights, model)
        if report["shape_mismatch"] or report["unused_keys"]:
            raise RuntimeError(f"conversion left {report['shape_mismatch']} / "
                               f"{report['unused_keys']}")
    return model


def bench_kft(size: int, batch: int, steps: int, warmup: int, lr: float, jit: bool,
              threads: int, infer_images: int, profile: bool) -> dict:
    """kft's train step (and, with ``infer_images``, batch-1 inference) in this process."""
    _tf_threads(threads)
    import keras
    import tensorflow as tf

    weights = seeded_weights()
    model = _kft_model(size, weights)
    settings = {k: getattr(model, k) for k in SETTINGS_KEYS}
    model.compile(optimizer=keras.optimizers.SGD(lr, momentum=0.9), jit_compile=jit)
    out = {"model": f"kft FasterRCNN.from_arch({ARCH!r}, {NUM_CLASSES}, image_size={size}), "
                    "seeded torchvision weights via convert_faster_rcnn",
           "threads": {"intra_op": threads, "inter_op": threads},
           "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()},
           "tensorflow": tf.__version__, "keras": keras.__version__}
    if steps:
        try:
            out.update(_kft_train(model, size, batch, steps, warmup, jit, profile))
        except Exception as e:  # noqa: BLE001 - XLA may not compile every op (reported)
            if not jit:
                raise
            message = " ".join(str(e).split("The op is created at")[0].split())
            out.update(jit_compile=jit, train_error=f"{type(e).__name__}: {message[:400]}")
    if infer_images:
        from kft.models.convert_torchvision import convert_faster_rcnn

        convert_faster_rcnn(weights, model)            # the seeded weights, not the trained
        out["inference"] = _kft_inference(model, size, infer_images, warmup)
    return out


def _kft_train(model, size: int, batch: int, steps: int, warmup: int, jit: bool,
               profile: bool) -> dict:
    import numpy as np
    import tensorflow as tf

    images, boxes, labels = scenes(batch, size, seed=0)
    x = tf.constant(images)
    y = {"boxes": tf.constant(boxes), "labels": tf.constant(labels)}
    losses = []
    load_before = load()
    start = time.perf_counter()
    losses.append(float(model.train_on_batch(x, y, return_dict=True)["loss"]))  # + trace
    first_call_s = time.perf_counter() - start
    step_s, times = median_timed(lambda: losses.append(float(
        model.train_on_batch(x, y, return_dict=True)["loss"])), steps, warmup)
    rss = peak_rss_mib()
    trainable = int(sum(np.prod(v.shape) for v in model.trainable_variables))
    out = {"jit_compile": jit,
           **train_entry(step_s, times, batch, losses, rss,
                         {"first_call_s_trace_compile": round(first_call_s, 1),
                          "trainable_params": trainable, "params": int(model.count_params()),
                          "load_avg_before_after": [load_before, load()]})}
    if profile:
        out["profile"] = _kft_profile(model, x, y, runs=max(2, steps // 2))
    return out


def _kft_inference(model, size: int, count: int, warmup: int) -> dict:
    import tensorflow as tf

    images, _, _ = scenes(count, size, seed=1)
    detect = tf.function(model.detect)
    singles = [tf.constant(images[i:i + 1]) for i in range(count)]
    counts = []
    for _ in range(warmup):
        detect(singles[0])["num_detections"].numpy()
    times = []
    for one in singles:
        start = time.perf_counter()
        counts.append(int(detect(one)["num_detections"].numpy()[0]))
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"call": "tf.function(model.detect)", "inference_ms": round(1000 * median, 1),
            "inference_all_ms": [round(1000 * t, 1) for t in times],
            "detections_per_image": counts}


def _kft_profile(model, x, y, runs: int) -> dict:
    """Median seconds of cumulative prefixes of kft's train step (traced, no XLA), and some of
    its ops alone on the same inputs; the differences say what each part adds."""
    import tensorflow as tf

    from kft.models.heads import box as box_heads
    from kft.models.heads.rpn import generate_proposals, rpn_loss
    from kft.ops.roi_align import multilevel_roi_align

    trainable = model.trainable_variables

    @tf.function
    def backbone_fpn():
        return model.neck(model.backbone(x, training=True), training=True)

    @tf.function
    def first_stage():                    # + RPN head + proposals (2000 / level, 2000 kept)
        return model(x, training=True)

    @tf.function
    def forward_loss():                   # + RPN targets / loss, RoI sampling, RoIAlign, head
        return model.compute_loss(x, y, model(x, training=True), training=True)

    @tf.function
    def forward_backward():
        with tf.GradientTape() as tape:
            loss = model.compute_loss(x, y, model(x, training=True), training=True)
        return tape.gradient(loss, trainable)

    raw = first_stage()
    gt_boxes, gt_labels = tf.cast(y["boxes"], tf.float32), tf.cast(y["labels"], tf.int32)

    @tf.function
    def proposals_alone():
        return generate_proposals(
            raw["objectness"], raw["rpn_deltas"], model.anchors, model.num_anchors_per_level,
            model.image_size, pre_nms_top_n=model.rpn_pre_nms_top_n[0],
            post_nms_top_n=model.rpn_post_nms_top_n[0], nms_threshold=model.rpn_nms_threshold,
            min_size=model.rpn_min_size, score_threshold=model.rpn_score_threshold)

    @tf.function
    def rpn_targets_loss_alone():
        return rpn_loss(raw["objectness"], raw["rpn_deltas"], model.anchors, gt_boxes,
                        gt_labels, batch_size_per_image=model.rpn_batch_size_per_image,
                        positive_fraction=model.rpn_positive_fraction,
                        fg_iou_threshold=model.rpn_fg_iou_threshold,
                        bg_iou_threshold=model.rpn_bg_iou_threshold, seed=model._rpn_seed)

    @tf.function
    def roi_sampling_alone():
        return box_heads.roi_targets(
            raw["proposals"], raw["proposal_valid"], gt_boxes, gt_labels,
            batch_size_per_image=model.box_batch_size_per_image,
            positive_fraction=model.box_positive_fraction,
            fg_iou_threshold=model.box_fg_iou_threshold,
            bg_iou_threshold=model.box_bg_iou_threshold, weights=model.box_weights,
            seed=model._roi_seed)

    rois = roi_sampling_alone()["rois"]
    features = [raw[f"feature_{n}"] for n in model._pool_levels]

    @tf.function
    def roi_align_fwd_bwd_alone():
        with tf.GradientTape() as tape:
            tape.watch(features)
            pooled = multilevel_roi_align(features, rois, strides=model._pool_strides,
                                          output_size=model.roi_output_size,
                                          sampling_ratio=model.sampling_ratio)
            total = tf.reduce_sum(pooled)
        return tape.gradient(total, features)

    @tf.function
    def box_stage_fwd_bwd_alone():      # RoIAlign + box head + predictor, forward + backward
        head_vars = model.box_head.trainable_variables + model.box_predictor.trainable_variables
        with tf.GradientTape() as tape:
            tape.watch(features)
            logits, deltas = model.box_stage(raw, rois, training=True)
            total = tf.reduce_sum(logits) + tf.reduce_sum(deltas)
        return tape.gradient(total, [*features, *head_vars])

    parts = {"backbone_fpn_forward": backbone_fpn, "plus_rpn_head_proposals": first_stage,
             "plus_losses_forward": forward_loss, "plus_backward": forward_backward,
             "alone_generate_proposals": proposals_alone,
             "alone_rpn_targets_and_loss": rpn_targets_loss_alone,
             "alone_roi_sampling": roi_sampling_alone,
             "alone_roi_align_forward_backward": roi_align_fwd_bwd_alone,
             "alone_box_stage_forward_backward": box_stage_fwd_bwd_alone}
    return {name: round(median_timed(lambda f=fn: tf.nest.map_structure(
        lambda t: t.numpy(), f()), runs, warmup=1)[0], 3) for name, fn in parts.items()}


def bench_tflite(arch: str, size: int, threads: int, count: int) -> dict:
    """float32 vs INT8 TFLite latency of ``arch`` at ``size`` (random weights), or
    ``{"skipped": error}`` when kft's export does not handle it."""
    _tf_threads(threads)
    import keras
    import numpy as np

    from kft.models.faster_rcnn import FasterRCNN

    keras.utils.set_random_seed(0)
    out = {"model": f"kft FasterRCNN.from_arch({arch!r}, {NUM_CLASSES}, image_size={size}), "
                    "random weights, kft.export.export_detector",
           "threads": threads, "batch": 1, "image_size": size}
    try:
        from kft.export.detection import TFLiteDetector, export_detector

        model = FasterRCNN.from_arch(arch, NUM_CLASSES, image_size=size, seed=0)
        images, _, _ = scenes(count, size, seed=1)
        calibration, _, _ = scenes(8, size, seed=3)
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            paths = export_detector(model, tmp, [c[None] for c in calibration],
                                    formats=("float32", "int8"), num_calibration=8)
            out["export_s"] = round(time.perf_counter() - start, 1)
            for fmt, path in paths.items():
                runner = TFLiteDetector(path, num_threads=threads)
                detections = runner.detect(images)["num_detections"]
                out[fmt] = {"latency_ms": round(1000 * statistics.median(runner.timed.timings),
                                                1),
                            "size_mb": round(os.path.getsize(path) / 2**20, 2),
                            "detections_per_image": [int(d) for d in np.ravel(detections)]}
        out["int8_speedup"] = round(out["float32"]["latency_ms"] / out["int8"]["latency_ms"], 2)
    except Exception as e:  # noqa: BLE001 - the export is another engineer's work in progress
        message = " ".join(str(e).split())
        out["skipped"] = f"{type(e).__name__}: {message[:500]}"
    return out


# --- torchvision (child process) ---------------------------------------------------------------

def _torch_model(size: int, weights: dict):
    """torchvision's Faster R-CNN R50-FPN v1 with FrozenBatchNorm2d and every stage trainable,
    the seeded weights loaded strictly."""
    import torch
    from torchvision.models import resnet50
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import FrozenBatchNorm2d

    torch.manual_seed(0)
    body = resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    model = FasterRCNN(_resnet_fpn_extractor(body, 5), num_classes=NUM_CLASSES + 1,
                       min_size=size, max_size=size)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
    return model


def _torch_settings(model) -> dict:
    rpn, roi = model.rpn, model.roi_heads
    return {"rpn_pre_nms_top_n": [rpn._pre_nms_top_n["training"], rpn._pre_nms_top_n["testing"]],
            "rpn_post_nms_top_n": [rpn._post_nms_top_n["training"],
                                   rpn._post_nms_top_n["testing"]],
            "rpn_batch_size_per_image": rpn.fg_bg_sampler.batch_size_per_image,
            "rpn_positive_fraction": rpn.fg_bg_sampler.positive_fraction,
            "box_batch_size_per_image": roi.fg_bg_sampler.batch_size_per_image,
            "box_positive_fraction": roi.fg_bg_sampler.positive_fraction,
            "box_score_threshold": roi.score_thresh, "box_nms_threshold": roi.nms_thresh,
            "max_detections": roi.detections_per_img}


def _to_torch(images):
    import torch

    return list(torch.from_numpy(images / 255.0).float().permute(0, 3, 1, 2).contiguous())


def bench_torchvision(size: int, batch: int, steps: int, warmup: int, lr: float, threads: int,
                      infer_images: int, profile: bool) -> dict:
    import torch
    import torchvision

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(threads)
    weights = seeded_weights()
    model = _torch_model(size, weights)
    out = {"model": "torchvision FasterRCNN(_resnet_fpn_extractor(resnet50(norm_layer="
                    f"FrozenBatchNorm2d), trainable_layers=5), num_classes={NUM_CLASSES + 1}, "
                    f"min_size={size}, max_size={size}), seeded weights (strict load)",
           "threads": {"intra_op": torch.get_num_threads(),
                       "inter_op": torch.get_num_interop_threads()},
           "settings": _torch_settings(model),
           "torch": torch.__version__, "torchvision": torchvision.__version__}
    if steps:
        out.update(_torch_train(model, size, batch, steps, warmup, lr, profile))
    if infer_images:
        model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
        model.eval()
        pixels = _to_torch(scenes(infer_images, size, seed=1)[0])
        counts, times = [], []
        with torch.inference_mode():
            for _ in range(warmup):
                model([pixels[0]])
            for image in pixels:
                start = time.perf_counter()
                counts.append(len(model([image])[0]["scores"]))
                times.append(time.perf_counter() - start)
        out["inference"] = {"call": "model.eval()(images) under torch.inference_mode()",
                            "inference_ms": round(1000 * statistics.median(times), 1),
                            "inference_all_ms": [round(1000 * t, 1) for t in times],
                            "detections_per_image": counts}
    return out


def _torch_train(model, size: int, batch: int, steps: int, warmup: int, lr: float,
                 profile: bool) -> dict:
    import torch

    images, boxes, labels = scenes(batch, size, seed=0)
    x = _to_torch(images)
    targets = [{"boxes": torch.from_numpy(boxes[i]),
                "labels": torch.from_numpy(labels[i]).long() + 1} for i in range(batch)]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9)
    model.train()
    losses = []

    def step():
        optimizer.zero_grad()
        loss = sum(model(x, targets).values())
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))

    load_before = load()
    start = time.perf_counter()
    step()                                              # first call, untimed (as kft's trace)
    first_call_s = time.perf_counter() - start
    step_s, times = median_timed(step, steps, warmup)
    rss = peak_rss_mib()
    out = train_entry(step_s, times, batch, losses, rss,
                      {"first_call_s": round(first_call_s, 1),
                       "trainable_params": int(sum(p.numel() for p in params)),
                       "params": int(sum(p.numel() for p in model.parameters())),
                       "load_avg_before_after": [load_before, load()]})
    if profile:
        out["profile"] = _torch_profile(model, step, runs=max(2, steps // 2))
    return out


def _torch_profile(model, step, runs: int) -> dict:
    """Median seconds per train step spent in the forwards of ``backbone`` (body + FPN),
    ``rpn`` (head, anchors, proposals, targets, loss) and ``roi_heads`` (sampling, RoIAlign,
    box head, loss), and the whole step; the rest is transform, backward and update."""
    spent = {"backbone": [], "rpn": [], "roi_heads": []}
    marks = {}
    handles = []
    for name in spent:
        module = getattr(model, name)
        handles.append(module.register_forward_pre_hook(
            lambda _m, _i, n=name: marks.__setitem__(n, time.perf_counter())))
        handles.append(module.register_forward_hook(
            lambda _m, _i, _o, n=name: spent[n].append(time.perf_counter() - marks[n])))
    step_s, _ = median_timed(step, runs, warmup=0)
    for handle in handles:
        handle.remove()
    out = {f"{k}_forward": round(statistics.median(v), 3) for k, v in spent.items()}
    out["step"] = round(step_s, 3)
    out["rest_backward_update"] = round(step_s - sum(out[f"{k}_forward"] for k in spent), 3)
    return out


# --- driver ------------------------------------------------------------------------------------

def run_child(python: str, call: str) -> dict:
    """``faster_rcnn.<call>`` in a fresh ``python`` process (its own memory high-water mark)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from child import run_in

    return run_in(python, "faster_rcnn", call)


def torchvision_python(requested: str | None) -> str | None:
    """An interpreter that imports torchvision: ``requested``, ``~/tv/bin/python``, or this
    one; None if none does."""
    for python in (requested, os.path.expanduser("~/tv/bin/python"), sys.executable):
        if not python:
            continue
        try:
            probe = subprocess.run([python, "-c", "import torchvision"], capture_output=True)
        except OSError:
            continue
        if probe.returncode == 0:
            return python
    return None


def ratio(a: dict, b: dict, key: str, sub: str | None = None):
    a, b = (a.get(sub, {}), b.get(sub, {})) if sub else (a, b)
    if not isinstance(a, dict) or not isinstance(b, dict) or key not in a or key not in b:
        return None
    return round(a[key] / b[key], 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed train steps")
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed steps / calls after the first (tracing) one")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--lr", type=float, default=1e-4,
                        help="SGD learning rate (at 0.01 both sides' losses reach 1e15+ within "
                             "5 steps from the seeded weights)")
    parser.add_argument("--infer-images", type=int, default=5)
    parser.add_argument("--jit", choices=("off", "on", "both"), default="both",
                        help="kft's jit_compile for the train step (XLA)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--tflite-arch", default="fasterrcnn_resnet_tiny_fpn")
    parser.add_argument("--tflite-size", type=int, default=256)
    parser.add_argument("--profile", action="store_true",
                        help="where each side's train step goes")
    parser.add_argument("--torch-python", default=None,
                        help="a Python with torch + torchvision (default ~/tv/bin/python, then "
                             "this one)")
    parser.add_argument("--skip", default="", help="comma list of: train,infer,tflite,torch")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    start = time.perf_counter()
    infer = 0 if "infer" in skip else args.infer_images
    result = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                          "load_avg_at_start": load()},
              "threads_each_side": args.threads,
              "train": {"arch": ARCH, "image_size": args.size, "batch": args.batch,
                        "boxes_per_image": BOXES_PER_IMAGE, "timed_steps": args.steps,
                        "warmup_steps": f"1 first call + {args.warmup}",
                        "optimizer": f"SGD lr {args.lr:g} momentum 0.9, all trainable "
                                     "variables (every backbone stage, BatchNorm frozen)"},
              "inference": {"batch": 1, "timed_images": infer,
                            "warmup_calls": args.warmup}}
    common = f"{args.size}, {args.batch}, {args.steps}, {args.warmup}, {args.lr}"
    if "train" not in skip or infer:
        steps_call = common if "train" not in skip else \
            f"{args.size}, {args.batch}, 0, 0, {args.lr}"
        jits = {"off": [False], "on": [True], "both": [False, True]}[args.jit]
        kft = {}
        for i, jit in enumerate(jits):
            kft[f"jit_compile_{jit}"] = run_child(
                sys.executable, f"bench_kft({steps_call}, {jit}, {args.threads}, "
                                f"{infer if i == 0 else 0}, {args.profile and i == 0})")
        result["kft"] = kft
        python = None if "torch" in skip else torchvision_python(args.torch_python)
        if python:
            tv = run_child(python, f"bench_torchvision({steps_call}, {args.threads}, {infer}, "
                                   f"{args.profile})")
            result["torchvision"] = tv
            result["ratio_kft_over_torchvision"] = {
                **{f"train_step_{k}": ratio(v, tv, "train_step_s") for k, v in kft.items()},
                "inference": ratio(kft[f"jit_compile_{jits[0]}"], tv, "inference_ms",
                                   "inference"),
                **{f"peak_rss_{k}": ratio(v, tv, "peak_rss_mib_after_train")
                   for k, v in kft.items()}}
        else:
            result["torchvision"] = "not available"
    if "tflite" not in skip:
        result["tflite"] = run_child(
            sys.executable, f"bench_tflite({args.tflite_arch!r}, {args.tflite_size}, "
                            f"{args.threads}, {max(infer, 3)})")
    result["machine"]["load_avg_at_end"] = load()
    result["total_s"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
