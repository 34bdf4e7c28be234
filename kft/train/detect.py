"""The detection run: readers -> box-aware pipeline -> SSD -> fine-tuning with COCO evaluation.

Same run directory and controls as classification (``kft/train/runs.py``): config.json,
history.csv (with ``val_bbox_AP``/``val_bbox_AP50`` from the COCO-evaluation callback),
checkpoints/ (atomic, ``--resume``), model.keras, metrics.json (COCO metrics in original image
pixels, per class), plots/ (curves, per-class AP), logs/, data_report.json, load_report.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import keras

from kft import config as cfg
from kft.data import DataReport, detection_batches, read_cityscapes, read_coco, read_voc
from kft.data.detection_augment import default_detection_augment, ssd_augment
from kft.eval.detection import COCOEvalCallback, evaluate_detector
from kft.eval.detection_plots import plot_per_class_ap
from kft.eval.plots import plot_history
from kft.models.backbones.mobilenet import ssdlite_mobilenet_v2, ssdlite_mobilenet_v3
from kft.models.backbones.vgg import load_vgg16_imagenet, ssd_vgg16
from kft.models.ssd import SSD
from kft.ops.anchors import SSD300_SIZES, SSD512_SIZES, SSDLITE320_SIZES
from kft.train.optimizers import build_optimizer
from kft.train.runs import (
    fit,
    logging_callbacks,
    prepare_model,
    prepare_run_dir,
    read_history,
    resume_state,
    set_precision,
    training_callbacks,
)
from kft.train.schedules import build_schedule

SSD_ARCHS = ("ssd300_vgg16", "ssd512_vgg16", "ssdlite_mobilenet_v2", "ssdlite_mobilenet_v3")


def read_split(data: cfg.Data, split: str, run_dir: Path, root: str | None = None):
    """A :class:`DetectionSplit` of ``root`` (default ``data.root``) in ``data.format``."""
    fmt, root = data.format, root or data.root
    if not root:
        raise cfg.ConfigError("data.root is empty: set --set data.root=<dataset folder>")
    if not Path(root).exists():
        raise cfg.ConfigError(f"data.root={root!r} does not exist")
    cache = run_dir / "cache" / "converted"
    if fmt == "voc":
        roots = [r.strip() for r in root.split(",") if r.strip()]  # "VOC2007,VOC2012" = 07+12
        return read_voc(roots, split, class_names=list(data.class_names) or None,
                        cache_dir=cache)
    if fmt == "coco":
        return read_coco(root, split, cache_dir=cache)
    if fmt == "cityscapes":
        return read_cityscapes(root, split, cache_dir=cache)
    raise cfg.ConfigError(f"data.format={fmt!r} must be voc, coco or cityscapes")


def build_detector(m: cfg.Model, t: cfg.Train, e: cfg.Eval, num_classes: int,
                   image_size: int) -> SSD:
    """An SSD / SSDLite from recipe fields (``model.arch`` one of ``SSD_ARCHS``)."""
    if m.arch == "ssd300_vgg16" or m.arch == "ssd512_vgg16":
        backbone = ssd_vgg16(300 if m.arch == "ssd300_vgg16" else 512)
        sizes, head = (SSD300_SIZES if m.arch == "ssd300_vgg16" else SSD512_SIZES), "conv"
    elif m.arch == "ssdlite_mobilenet_v2":
        backbone = ssdlite_mobilenet_v2(image_size, weights=m.backbone_weights or None)
        sizes, head = SSDLITE320_SIZES, "depthwise"
    elif m.arch == "ssdlite_mobilenet_v3":
        backbone = ssdlite_mobilenet_v3(image_size, weights=m.backbone_weights or None)
        sizes, head = SSDLITE320_SIZES, "depthwise"
    else:
        raise cfg.ConfigError(f"model.arch={m.arch!r} is not a detector; choose from "
                              f"{list(SSD_ARCHS)}")
    if m.arch.endswith("vgg16") and m.backbone_weights:
        load_vgg16_imagenet(backbone, m.backbone_weights)
    model = SSD(backbone, num_classes, sizes=m.default_box_sizes or sizes, head=head,
                iou_threshold=t.iou_threshold, neg_pos_ratio=t.neg_pos_ratio,
                cls_loss=t.cls_loss, box_loss=t.box_loss, cls_weight=t.cls_weight,
                loc_weight=t.loc_weight, label_smoothing=t.label_smoothing,
                score_threshold=e.score_threshold, nms_iou_threshold=e.nms_iou_threshold,
                max_detections=e.max_detections)
    if model.image_size[0] != image_size:
        raise cfg.ConfigError(f"model.arch={m.arch} takes {model.image_size[0]} px images: set "
                              f"data.image_size={model.image_size[0]}")
    return model


def _generated(root: str) -> bool:
    """Whether ``root`` (or its parent, for kft's VOC/ + COCO/ layout) is kft-generated data."""
    first = Path(root.split(",")[0])
    return any((p / "GENERATED.txt").is_file() for p in (first, first.parent))


def _augment(name: str, seed: int):
    if name in ("", "none"):
        return None
    if name == "ssd":
        return ssd_augment(seed=seed)
    if name == "default":
        return default_detection_augment(seed=seed)
    raise cfg.ConfigError(f"data.detection_augment={name!r} must be none, ssd or default")


def run_detection(recipe: cfg.Recipe, run_dir: str | Path, resume: bool = False,
                  verbose: int = 1) -> dict:
    """Runs a detection recipe end to end into ``run_dir``; returns the summary dict."""
    t0 = time.time()
    run_dir = Path(run_dir)
    ckpt_dir = prepare_run_dir(run_dir, resume)
    if recipe.export.enabled:
        raise cfg.ConfigError("export.enabled=true: TFLite export of detectors is not available "
                              "yet; set export.enabled=false")
    cfg.save_json(recipe, run_dir / "config.json")
    keras.utils.set_random_seed(recipe.train.seed)
    set_precision(recipe.train.mixed_precision)
    try:
        return _run(recipe, run_dir, ckpt_dir, resume, verbose, t0)
    finally:
        keras.config.set_dtype_policy("float32")


def _run(recipe, run_dir, ckpt_dir, resume, verbose, t0):
    d, m, t, e = recipe.data, recipe.model, recipe.train, recipe.eval
    train_split = read_split(d, d.train_split, run_dir)
    val_split = read_split(d, d.val_split, run_dir, d.val_root or d.root)
    report = DataReport().merge(train_split.report).merge(val_split.report).to_dict()
    report.update({"class_names": train_split.class_names, "num_train": len(train_split),
                   "num_val": len(val_split), "root": d.root, "format": d.format,
                   "generated": _generated(d.root)})
    (run_dir / "data_report.json").write_text(json.dumps(report, indent=2))
    (run_dir / "class_names.json").write_text(json.dumps(train_split.class_names))
    if report["num_skipped"]:
        print(f"[kft] data: {report['num_skipped']} entries skipped, {report['num_converted']} "
              "corrected or converted (see data_report.json)")

    if train_split.num_objects == 0:
        raise cfg.ConfigError(
            f"data.root={d.root!r} split {d.train_split!r}: no usable objects in "
            f"{len(train_split)} images ({report['num_skipped']} entries skipped, e.g. unknown "
            "class names: set data.class_names; see data_report.json)")
    num_classes = m.num_classes or len(train_split.class_names)
    model = build_detector(m, t, e, num_classes, d.image_size)
    prepare_model(model, m, run_dir, ckpt_dir)

    steps = len(train_split) // t.batch_size
    if steps < 1:
        raise cfg.ConfigError(f"train.batch_size={t.batch_size} is larger than the training "
                              f"split ({len(train_split)} images)")
    optimizer = build_optimizer(t.optimizer, build_schedule(t, steps), momentum=t.momentum,
                                nesterov=t.nesterov, weight_decay=t.weight_decay,
                                clipnorm=t.clipnorm, grad_accum_steps=t.grad_accum_steps)
    model.compile(optimizer=optimizer, jit_compile=t.jit_compile)
    model.optimizer.build(model.trainable_variables)

    val_batches = detection_batches(val_split, image_size=d.image_size, resize=d.resize,
                                    batch_size=e.batch_size, max_instances=d.max_instances,
                                    training=False, seed=t.seed, with_meta=True)
    coco = COCOEvalCallback(val_split, val_batches.dataset, every=e.every,
                            voc=d.format == "voc")
    monitor = t.monitor or "val_bbox_AP50"
    callbacks, es, nan_stop = training_callbacks(t, ckpt_dir, monitor, metric_callbacks=[coco])
    initial_epoch = resume_state(model, ckpt_dir, es, resume)
    callbacks += logging_callbacks(run_dir, initial_epoch)
    train_batches = detection_batches(
        train_split, image_size=d.image_size, resize=d.resize, batch_size=t.batch_size,
        max_instances=d.max_instances, training=True, seed=t.seed,
        augment=_augment(d.detection_augment, t.seed), cache=d.cache, epochs=t.epochs,
        initial_epoch=initial_epoch)
    fit(model, train_batches, None, t, callbacks, initial_epoch, ckpt_dir, nan_stop, es,
        verbose, monitor)

    model.save(run_dir / "model.keras")
    metrics = evaluate_detector(model.predict_on_batch, val_split, val_batches.dataset,
                                voc=d.format == "voc")
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plots = {}
    if e.plots:
        history = read_history(run_dir / "history.csv")
        if history:
            plots["curves"] = plot_history(history, run_dir / "plots" / "training_curves.png")
        if metrics.get("bbox_per_class_AP"):
            plots["per_class_ap"] = plot_per_class_ap(
                metrics["bbox_per_class_AP"], run_dir / "plots" / "per_class_ap.png",
                title="bbox AP@[.5:.95] per class")
    summary = {"run_dir": str(run_dir), "epochs_run": t.epochs - initial_epoch,
               "metrics": {k: metrics.get(k) for k in ("bbox_AP", "bbox_AP50", "bbox_AP75")},
               "model": str(run_dir / "model.keras"), "plots": plots,
               "seconds": round(time.time() - t0, 1)}
    print("\n==== kft run summary ====")
    print("bbox AP {bbox_AP} AP50 {bbox_AP50} AP75 {bbox_AP75}".format(
        **{k: "n/a" if v is None else f"{v:.4f}" for k, v in summary["metrics"].items()}))
    print(f"run dir:   {run_dir}  ({summary['seconds']} s)")
    print(f"model:     {summary['model']}")
    for path in plots.values():
        print(f"plot:      {path}")
    return summary
