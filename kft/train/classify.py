"""The classification run: data -> model -> fine-tuning -> evaluation -> export, into a run dir.

Run directory (shared/DESIGN.md)::

    config.json        the resolved recipe          history.csv     one row per epoch
    data_report.json   what the readers skipped     load_report.json  what load_from reused
    checkpoints/       resumable, atomic            model.keras     the final model
    metrics.json       final evaluation             plots/          curves, confusion matrix
    logs/              TensorBoard                  export/         TFLite models + report.json
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import keras

from kft import config as cfg
from kft.data import (
    ClassificationAugment,
    ClassificationSplit,
    DataReport,
    classification_batches,
    load_tfds,
    make_shapes_classification,
    read_image_folder,
    stratified_split,
)
from kft.eval.classification import evaluate_classifier
from kft.eval.plots import plot_confusion_matrix, plot_history
from kft.models.classifier import ResNetClassifier
from kft.train.runs import (
    compile_for_training,
    fit,
    prepare_model,
    prepare_run_dir,
    read_history,
    resume_state,
    set_precision,
    training_callbacks,
)


@dataclass
class ClassificationData:
    train_source: object
    val_source: object
    class_names: list
    num_train: int
    num_val: int
    report: DataReport
    generated: bool


def prepare_data(data: cfg.Data, run_dir: Path, seed: int) -> ClassificationData:
    """Reads the folder or TFDS dataset named by ``data.root`` (generating it if asked)."""
    report = DataReport()
    generated = False
    root = data.root
    if not root:
        raise cfg.ConfigError("data.root is empty: set --set data.root=<image folder or tfds:name>")
    if root.startswith("tfds:"):
        name = root[len("tfds:"):]
        train_ds, class_names, n_train = load_tfds(
            name, data_dir=data.tfds_data_dir or None, split=data.train_split,
            download=data.tfds_download)
        val_ds, _, n_val = load_tfds(
            name, data_dir=data.tfds_data_dir or None, split=data.val_split,
            download=data.tfds_download)
        return ClassificationData((train_ds, n_train), (val_ds, n_val), list(class_names),
                                  n_train, n_val, report, False)
    if data.generate and not Path(root).exists():
        if data.generate != "shapes":
            raise cfg.ConfigError(f"data.generate={data.generate!r}: only 'shapes' exists")
        print(f"[kft] data.root {root} is missing: GENERATING kft's synthetic shapes dataset there "
              "(generated images, not real data)")
        # 50 validation images per class: accuracy steps of 1/300, fine enough to compare the
        # INT8 export with the Keras model to within a point.
        make_shapes_classification(root, image_size=max(64, data.image_size), seed=seed,
                                   val_per_class=50)
        generated = True
    if not Path(root).is_dir():
        raise cfg.ConfigError(f"data.root={root!r} is not a directory")
    generated = generated or (Path(root) / "GENERATED.txt").is_file()
    train, val = read_image_folder(root, val_fraction=data.val_fraction, seed=seed, report=report,
                                   cache_dir=run_dir / "cache" / "converted",
                                   min_side=data.min_side)
    if generated:
        print("[kft] NOTE: training on generated data (GENERATED.txt in data.root)")
    return ClassificationData(train, val, list(train.class_names), len(train.paths),
                              len(val.paths), report, generated)


def hold_out_for_selection(data: ClassificationData, fraction: float, seed: int):
    """Splits a seeded, stratified ``fraction`` off the training data for model selection
    (early stopping / best weights, D9), so the val split stays untouched for the reported
    metrics. Returns the selection source; ``data`` keeps the rest for training."""
    source = data.train_source
    if isinstance(source, ClassificationSplit):
        keep, held = stratified_split(source.labels, fraction, seed)
        if not keep or not held:
            raise cfg.ConfigError(f"data.val_fraction={fraction}: too few training images "
                                  f"({len(source)}) to hold out a model-selection slice")

        def pick(idx):
            return ClassificationSplit([source.paths[i] for i in idx],
                                       [source.labels[i] for i in idx], source.class_names,
                                       [source.sources[i] for i in idx])

        data.train_source, selection = pick(keep), pick(held)
        data.num_train = len(keep)
        return selection
    dataset, n = source  # TFDS: (dataset, size) in the dataset's fixed order
    k = min(max(1, int(round(n * fraction))), n - 1)
    data.train_source, data.num_train = (dataset.skip(k), n - k), n - k
    return dataset.take(k), k


def build_model(model_cfg: cfg.Model, num_classes: int, image_size: int) -> ResNetClassifier:
    return ResNetClassifier.from_arch(
        model_cfg.arch, num_classes=num_classes, image_size=image_size, preset=model_cfg.preset,
        head=model_cfg.head, head_units=model_cfg.head_units, dropout=model_cfg.dropout,
        se_stages=model_cfg.se_stages, se_reduction=model_cfg.se_reduction)


def compile_model(model, train: cfg.Train, steps_per_epoch: int, num_classes: int) -> list:
    """Freezes stages and compiles with the recipe's optimiser, schedule, loss and metrics
    (:func:`kft.train.runs.compile_for_training`); returns the freezing schedule's callbacks."""
    return compile_for_training(
        model, train, steps_per_epoch,
        loss=keras.losses.CategoricalCrossentropy(from_logits=True,
                                                  label_smoothing=train.label_smoothing),
        metrics=[
            keras.metrics.CategoricalAccuracy(name="accuracy"),
            keras.metrics.TopKCategoricalAccuracy(k=min(5, num_classes), name="top5_accuracy"),
            keras.metrics.F1Score(average="macro", name="macro_f1"),
        ])


def run_classification(recipe: cfg.Recipe, run_dir: str | Path, resume: bool = False,
                       verbose: int = 1) -> dict:
    """Runs a classification recipe end to end into ``run_dir``; returns the summary dict."""
    t0 = time.time()
    run_dir = Path(run_dir)
    ckpt_dir = prepare_run_dir(run_dir, resume)
    cfg.save_json(recipe, run_dir / "config.json")
    t = recipe.train
    keras.utils.set_random_seed(t.seed)
    set_precision(t.mixed_precision)
    try:
        return _run(recipe, run_dir, ckpt_dir, resume, verbose, t0)
    finally:
        keras.config.set_dtype_policy("float32")


def _run(recipe, run_dir, ckpt_dir, resume, verbose, t0):
    d, m, t = recipe.data, recipe.model, recipe.train
    data = prepare_data(d, run_dir, t.seed)
    selection = None
    if t.early_stopping_patience > 0:
        selection = hold_out_for_selection(data, d.val_fraction, t.seed)
        print(f"[kft] model selection (early stopping): val_* in history.csv are on "
              f"{_size(selection)} training images held out (data.val_fraction="
              f"{d.val_fraction}); metrics.json is on the val split ({data.num_val} images)")
    report = data.report.to_dict()
    report.update({"class_names": data.class_names, "num_train": data.num_train,
                   "num_val": data.num_val, "generated": data.generated, "root": d.root,
                   "num_selection": _size(selection) if selection is not None else 0})
    (run_dir / "data_report.json").write_text(json.dumps(report, indent=2))
    (run_dir / "class_names.json").write_text(json.dumps(data.class_names))
    if report.get("num_skipped"):
        print(f"[kft] data: {report['num_skipped']} files skipped, "
              f"{report.get('num_converted', 0)} converted (see data_report.json)")
    num_classes = m.num_classes or len(data.class_names)
    if num_classes != len(data.class_names):
        raise cfg.ConfigError(f"model.num_classes={m.num_classes} but the data has "
                              f"{len(data.class_names)} classes")

    model = build_model(m, num_classes, d.image_size)
    prepare_model(model, m, run_dir, ckpt_dir)

    augment = ClassificationAugment(seed=t.seed) if d.augment else None
    steps = data.num_train // t.batch_size
    if steps < 1:
        raise cfg.ConfigError(f"train.batch_size={t.batch_size} is larger than the training "
                              f"split ({data.num_train} images)")
    extra = compile_model(model, t, steps, num_classes)

    callbacks, es, nan_stop = training_callbacks(t, ckpt_dir, t.monitor or "val_macro_f1",
                                                 run_dir, resume, extra=extra)
    initial_epoch = resume_state(model, ckpt_dir, es, resume, t.epochs)

    train_batches = classification_batches(
        data.train_source, image_size=d.image_size, batch_size=t.batch_size,
        num_classes=num_classes, training=True, seed=t.seed, augment=augment, cache=d.cache,
        epochs=t.epochs, initial_epoch=min(initial_epoch, t.epochs - 1),
        shuffle_buffer=d.shuffle_buffer)
    val_batches = classification_batches(
        data.val_source, image_size=d.image_size, batch_size=recipe.eval.batch_size,
        num_classes=num_classes, training=False, seed=t.seed, cache=d.cache)
    monitored = val_batches if selection is None else classification_batches(
        selection, image_size=d.image_size, batch_size=recipe.eval.batch_size,
        num_classes=num_classes, training=False, seed=t.seed, cache=d.cache)

    fit(model, train_batches, monitored.dataset, t, callbacks, initial_epoch, ckpt_dir,
        nan_stop, es, verbose)

    model.save(run_dir / "model.keras")
    metrics = evaluate_classifier(model.predict_on_batch, val_batches.dataset, data.class_names)
    metrics["generated_data"] = data.generated
    metrics["split"] = f"val ({data.num_val} images)"
    metrics["selection_split"] = (f"{_size(selection)} images held out of train"
                                  if selection is not None else None)
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))

    plots = {}
    if recipe.eval.plots:
        plots["confusion_matrix"] = str(run_dir / "plots" / "confusion_matrix.png")
        plot_confusion_matrix(metrics["confusion_matrix"], data.class_names,
                              plots["confusion_matrix"])
        history = read_history(run_dir / "history.csv")
        if history:
            plots["curves"] = str(run_dir / "plots" / "training_curves.png")
            plot_history(history, plots["curves"])

    export_report = None
    if recipe.export.enabled and recipe.export.quantize:
        from kft.export.tflite import export_and_report

        rep = classification_batches(data.train_source, image_size=d.image_size, batch_size=1,
                                     num_classes=num_classes, training=False, seed=t.seed)
        rep_images = rep.dataset.map(lambda x, y: x).take(recipe.export.representative_samples)
        export_report = export_and_report(model, run_dir / "export", rep_images,
                                          val_batches.dataset, data.class_names,
                                          formats=tuple(recipe.export.quantize))

    summary = {
        "run_dir": str(run_dir),
        "epochs_run": t.epochs - initial_epoch,
        "metrics": {k: metrics[k] for k in ("accuracy", "top5_accuracy", "macro_f1")},
        "model": str(run_dir / "model.keras"),
        "plots": plots,
        "export": {k: str(run_dir / "export" / v["path"]) for k, v in
                   (export_report or {}).items() if isinstance(v, dict) and v.get("path")},
        "seconds": round(time.time() - t0, 1),
        "generated_data": data.generated,
        "split": metrics["split"],
        "selection_split": metrics["selection_split"],
    }
    _print_summary(summary, export_report)
    return summary


def _size(source) -> int:
    return len(source) if isinstance(source, ClassificationSplit) else int(source[1])


def _print_summary(summary: dict, export_report: dict | None):
    m = summary["metrics"]
    print("\n==== kft run summary ====")
    if summary["generated_data"]:
        print("data:      GENERATED by kft (synthetic shapes), not real images")
    print(f"evaluated: {summary['split']}" + (
        f"; model selected on {summary['selection_split']}" if summary["selection_split"]
        else ""))
    print(f"accuracy:  {m['accuracy']:.4f}   top-5: {m['top5_accuracy']:.4f}   "
          f"macro-F1: {m['macro_f1']:.4f}")
    if export_report:
        for fmt, r in export_report.items():
            if isinstance(r, dict) and "accuracy" in r:
                print(f"{fmt:9s}  accuracy {r['accuracy']:.4f}  size {r.get('size_mb', 0):.2f} MB"
                      f"  latency {r.get('latency_ms', 0):.2f} ms")
    print(f"run dir:   {summary['run_dir']}  ({summary['seconds']} s)")
    print(f"model:     {summary['model']}")
    for path in summary["plots"].values():
        print(f"plot:      {path}")
    for path in summary["export"].values():
        print(f"export:    {path}")
