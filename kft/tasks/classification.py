"""Classification: an image folder or a TFDS dataset -> ResNet classifier -> accuracy /
top-5 / macro-F1, confusion matrix, TFLite export (:class:`ClassificationTask`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from kft import config as cfg
from kft.data import (
    ClassificationSplit,
    DataReport,
    classification_augment,
    classification_batches,
    folder_layout,
    load_tfds,
    make_shapes_classification,
    read_image_folder,
    stratified_split,
)
from kft.eval.classification import evaluate_classifier
from kft.models.classifier import ResNetClassifier
from kft.tasks import Task, TaskData


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
    train_dir, val_dir = folder_layout(root)
    print(f"[kft] images: train {train_dir} ({len(train.paths)} images, "
          f"{len(train.class_names)} classes); val "
          + (f"{val_dir} ({len(val.paths)} images)" if val_dir is not None else
             f"= {len(val.paths)} images held out of it (no val/, valid/ or validation/ folder; "
             f"data.val_fraction={data.val_fraction:g}, stratified)"))
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


def compile_arguments(train: cfg.Train, num_classes: int) -> dict:
    """The loss and metrics a classifier compiles with (label smoothing from the recipe)."""
    top5 = ([keras.metrics.TopKCategoricalAccuracy(k=5, name="top5_accuracy")]
            if num_classes > 5 else [])  # with 5 classes or fewer it is always 1
    return {
        "loss": keras.losses.CategoricalCrossentropy(from_logits=True,
                                                     label_smoothing=train.label_smoothing),
        "metrics": [keras.metrics.CategoricalAccuracy(name="accuracy"), *top5,
                    keras.metrics.F1Score(average="macro", name="macro_f1")]}


def compile_model(model, train: cfg.Train, steps_per_epoch: int, num_classes: int) -> list:
    """Freezes stages and compiles ``model`` with the recipe's optimiser, schedule, loss and
    metrics (:func:`kft.train.runs.compile_for_training`); returns the freezing schedule's
    callbacks."""
    from kft.train.runs import compile_for_training

    return compile_for_training(model, train, steps_per_epoch,
                                **compile_arguments(train, num_classes))


DEFAULT_ARCH, DEFAULT_IMAGE_SIZE = "resnet50", 224
# what an empty model.arch / data.image_size = 0 take from the run model.load_from names
SOURCE_KEYS = ("model.arch", "model.head", "model.head_units", "model.se_stages",
               "data.image_size")


def source_run_config(spec: str) -> tuple[dict, Path] | None:
    """``(config.json, its path)`` of the kft run that ``model.load_from`` names (the run
    folder, its model.keras, or one of its checkpoints), or None."""
    if not spec:
        return None
    p = Path(spec)
    for folder in (p, p.parent, p.parent.parent):
        config = folder / "config.json"
        if config.is_file() and ((folder / "model.keras").is_file()
                                 or (folder / "checkpoints").is_dir()):
            try:
                return json.loads(config.read_text()), config
            except ValueError:
                return None
    return None


def resolve_from_source(recipe: cfg.Recipe) -> list:
    """Changes for ``model.arch=""`` and ``data.image_size=0``: the values of the run that
    ``model.load_from`` names (so a fine-tuning recipe builds the network it loads), else
    ``resnet50`` / 224 px."""
    from kft.train.plan import Change

    m, d = recipe.model, recipe.data
    if m.arch and d.image_size:
        return []
    found = source_run_config(m.load_from)
    changes = []
    if found is not None:
        config, path = found
        wanted = SOURCE_KEYS if not m.arch else ("data.image_size",)
        for key in wanted:
            section, name = key.split(".")
            if key == "data.image_size" and d.image_size:
                continue
            value = config.get(section, {}).get(name)
            current = getattr(getattr(recipe, section), name)
            if value is not None and value != current and value != list(current or ()):
                changes.append(Change(key, current, tuple(value) if isinstance(value, list)
                                      else value, f"from {path} (model.load_from)"))
    keys = {c.key for c in changes}
    if not m.arch and "model.arch" not in keys:
        changes.append(Change("model.arch", "", DEFAULT_ARCH, "model.arch empty: the default"))
    if not d.image_size and "data.image_size" not in keys:
        changes.append(Change("data.image_size", 0, DEFAULT_IMAGE_SIZE,
                              "data.image_size=0: the default"))
    return changes


def _size(source) -> int:
    return len(source) if isinstance(source, ClassificationSplit) else int(source[1])


class ClassificationTask(Task):
    name = "classification"
    default_monitor = "val_macro_f1"

    def read(self, recipe, run_dir, purpose="train") -> TaskData:
        from kft.train.runs import apply_changes

        resolved = resolve_from_source(recipe)
        recipe = apply_changes(recipe, resolved)
        d, t = recipe.data, recipe.train
        data = prepare_data(d, Path(run_dir), t.seed)
        selection = None
        if purpose == "train" and t.early_stopping_patience > 0:
            selection = hold_out_for_selection(data, d.val_fraction, t.seed)
            print(f"[kft] model selection (early stopping): val_* in history.csv are on "
                  f"{_size(selection)} training images held out (data.val_fraction="
                  f"{d.val_fraction}); metrics.json is on the val split ({data.num_val} images)")
        report = data.report.to_dict()
        num_selection = _size(selection) if selection is not None else 0
        report.update({"class_names": data.class_names, "num_train": data.num_train,
                       "num_val": data.num_val, "generated": data.generated, "root": d.root,
                       "num_selection": num_selection})
        if purpose == "train" and report.get("num_skipped"):
            print(f"[kft] data: {report['num_skipped']} files skipped, "
                  f"{report.get('num_converted', 0)} converted (see data_report.json)")
        return TaskData(
            train=data.train_source, val=data.val_source, class_names=data.class_names,
            report=report, generated=data.generated, num_train=data.num_train,
            num_val=data.num_val, selection=selection, num_selection=num_selection,
            val_description=f"val ({data.num_val} images)",
            selection_description=(f"{num_selection} images held out of train"
                                   if selection is not None else None),
            resolved=resolved)

    def build_model(self, recipe, data):
        m = recipe.model
        num_classes = m.num_classes or len(data.class_names)
        if num_classes != len(data.class_names):
            raise cfg.ConfigError(f"model.num_classes={m.num_classes} but the data has "
                                  f"{len(data.class_names)} classes")
        if not m.preset and not m.load_from:
            print(f"[kft] note: {m.arch} starts from RANDOM weights (model.preset and "
                  "model.load_from are empty): training from scratch")
        return build_model(m, num_classes, recipe.data.image_size)

    def compile_arguments(self, recipe, data):
        return compile_arguments(recipe.train, len(data.class_names))

    def _batches(self, source, recipe, data, batch_size=None, **kwargs):
        d, t = recipe.data, recipe.train
        return classification_batches(
            source, image_size=d.image_size, batch_size=batch_size or recipe.eval.batch_size,
            num_classes=len(data.class_names), seed=t.seed, **kwargs)

    def _val(self, data, recipe):
        if "val" not in data.batches:
            data.batches["val"] = self._batches(data.val, recipe, data, training=False,
                                                cache=recipe.data.cache)
        return data.batches["val"]

    def monitoring(self, model, data, recipe):
        monitored = self._val(data, recipe) if data.selection is None else self._batches(
            data.selection, recipe, data, training=False, cache=recipe.data.cache)
        return monitored.dataset, []

    def train_batches(self, data, recipe, initial_epoch):
        d, t = recipe.data, recipe.train
        augment = classification_augment(d.augment, seed=t.seed)
        return self._batches(data.train, recipe, data, batch_size=t.batch_size, training=True,
                             augment=augment, cache=d.cache, epochs=t.epochs,
                             initial_epoch=min(initial_epoch, t.epochs - 1),
                             shuffle_buffer=d.shuffle_buffer)

    def check_model(self, model, data, recipe):
        n = int(model.output_shape[-1])
        names = data.class_names
        if n != len(names):
            raise cfg.ConfigError(
                f"the model predicts {n} classes but data.root={recipe.data.root} has "
                f"{len(names)} ({', '.join(names[:6])}{', ...' if len(names) > 6 else ''}): "
                "evaluate on the data it was trained on")

    def evaluate(self, model, data, recipe):
        metrics = evaluate_classifier(model.predict_on_batch, self._val(data, recipe).dataset,
                                      data.class_names)
        metrics["generated_data"] = data.generated
        return metrics

    def plots(self, model, data, metrics, run_dir, recipe):
        from kft.eval.plots import plot_confusion_matrix, plot_history
        from kft.train.runs import read_history

        plots = {"confusion_matrix": str(run_dir / "plots" / "confusion_matrix.png")}
        plot_confusion_matrix(metrics["confusion_matrix"], data.class_names,
                              plots["confusion_matrix"])
        history = read_history(run_dir / "history.csv")
        if history:
            plots["curves"] = str(run_dir / "plots" / "training_curves.png")
            plot_history(history, plots["curves"])
        return plots

    def export(self, model, data, recipe, out_dir, formats, samples, keras_metrics=None):
        from kft.export.tflite import export_and_report

        rep = self._batches(data.train, recipe, data, batch_size=1, training=False)
        rep_images = rep.dataset.map(lambda x, y: x).take(samples)
        return export_and_report(model, out_dir, rep_images, self._val(data, recipe).dataset,
                                 data.class_names, formats=tuple(formats),
                                 num_calibration=samples, keras_metrics=keras_metrics)

    def headline_metrics(self, metrics):
        return {k: metrics[k] for k in ("accuracy", "top5_accuracy", "macro_f1") if k in metrics}

    def metrics_line(self, metrics):
        top5 = (f"  top-5 {metrics['top5_accuracy']:.4f}" if "top5_accuracy" in metrics else "")
        return (f"accuracy {metrics['accuracy']:.4f}{top5}  "
                f"macro-F1 {metrics['macro_f1']:.4f}  ({metrics['num_examples']} images)")

    def stalled_hint(self, data, recipe):
        from kft.train.callbacks import StalledMetricHint

        chance = 1.0 / max(len(data.class_names), 1)
        return StalledMetricHint("val_accuracy", min(1.5 * chance, 0.99),
                                 what=f"val accuracy (chance {chance:.2f})")

    def export_lines(self, export_report):
        return [f"{fmt:9s}  accuracy {r['accuracy']:.4f}  size {r.get('size_mb', 0):.2f} MB"
                f"  latency {r.get('latency_ms', 0):.2f} ms"
                for fmt, r in (export_report or {}).items()
                if isinstance(r, dict) and "accuracy" in r]

    def predict(self, model, pixels, class_names, top_k=3, score_threshold=0.3):
        from kft.data.pipeline import resize_uint8

        h, w = model.input_shape[1:3]
        # the training/eval pipeline's own resize (bilinear without antialiasing, rounded to
        # uint8), not PIL's antialiased one
        x = np.asarray(resize_uint8(pixels, (h, w)), dtype="float32")
        from kft.export.tflite import top_classes

        return top_classes(np.asarray(model.predict_on_batch(x[None])[0]), class_names, top_k)
