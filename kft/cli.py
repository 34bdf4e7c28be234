"""The ``kft`` command: train / eval / export / predict.

``kft train`` is ``python -m kft.run``. ``eval`` and ``export`` take a run directory (its
``model.keras`` and ``config.json`` say what data and settings to use) or a ``.keras`` file with
``--data``. Classifiers and detectors (SSD / SSDLite) both: the model file says which.

The recipe (``config.json`` + ``--data`` + ``--set``) is validated before any data is read; user
errors print one line ``kft: error: ...`` and exit with status 2 (``KFT_TRACEBACK=1`` shows the
traceback).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from kft import config as cfg
from kft.run import main as run_main
from kft.run import override_keys, read_config, reporting_errors


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """kft: fine-tune pretrained vision models in Keras 3."""


main.add_command(run_main, name="train")


def _load_run(target: str, data_root: str | None, overrides=()):
    """(model, recipe, run_dir) from a run directory or a ``.keras`` file (+ ``--data``); the
    recipe is validated (before the model is loaded when the run's config.json is there)."""
    from kft.validate import validate_recipe

    path = Path(target)
    from_config = False
    if path.is_dir():
        model_path, config_path = path / "model.keras", path / "config.json"
        if not model_path.is_file():
            raise cfg.ConfigError(f"{path}: no model.keras (did the run finish?)")
        from_config = config_path.is_file()
        recipe = read_config(config_path) if from_config else cfg.Recipe()
        run_dir = path
    elif path.is_file():
        model_path, recipe, run_dir = path, cfg.Recipe(), path.parent
    else:
        raise cfg.ConfigError(f"{target}: no such run directory or model file")
    if data_root:
        recipe = cfg.apply_overrides(recipe, [f"data.root={data_root}"])
    recipe = cfg.apply_overrides(recipe, list(overrides))
    set_keys = override_keys(overrides) + (["data.root"] if data_root else [])
    if not recipe.data.root:
        raise cfg.ConfigError("no data: pass --data ROOT (an image folder or tfds:name)")
    if from_config:  # a bad --set fails before the model is loaded
        validate_recipe(recipe, set_keys=set_keys)

    model = _load_model(model_path)
    size = model.input_shape[1]
    if recipe.data.image_size != size:
        recipe = cfg.apply_overrides(recipe, [f"data.image_size={size}"])
    if _is_detector(model) and recipe.task != "detection":
        recipe = cfg.apply_overrides(recipe, ["task=detection"])
    if recipe.task == "detection" and not recipe.data.format:
        raise cfg.ConfigError(f"{target}: a detector needs data.format: pass --set "
                              "data.format=voc (or coco, cityscapes)")
    # Without config.json the model file, not the recipe, says which network it is.
    validate_recipe(recipe, set_keys=set_keys, check_model=from_config)
    return model, recipe, run_dir


def _load_model(model_path: Path):
    """:func:`kft.saving.load_model`; a file that is not a loadable Keras model is a user error
    naming it."""
    from kft.saving import load_model

    if not Path(model_path).is_file():
        raise cfg.ConfigError(f"{model_path}: no such model file")
    try:
        return load_model(model_path)
    except Exception as e:  # noqa: BLE001 - a zip, a format or a deserialisation error
        first = (str(e).strip().splitlines() or [""])[0]
        raise cfg.ConfigError(f"{model_path}: cannot load the Keras model "
                              f"({type(e).__name__}: {first})") from e


def _check_num_classes(model, class_names, recipe) -> None:
    """The classifier's output width matches the classes of the data it is scored on."""
    n = int(model.output_shape[-1])
    if n != len(class_names):
        raise cfg.ConfigError(
            f"the model predicts {n} classes but data.root={recipe.data.root} has "
            f"{len(class_names)} ({', '.join(class_names[:6])}"
            f"{', ...' if len(class_names) > 6 else ''}): evaluate on the data it was trained on")


def _is_detector(model) -> bool:
    return callable(getattr(model, "detect", None))


def _detection_val(recipe, run_dir):
    """(val split, val batches with meta) of a detection recipe."""
    from kft.data import detection_batches
    from kft.train.detect import read_split

    d = recipe.data
    val = read_split(d, d.val_split, run_dir, d.val_root or d.root, seed=recipe.train.seed)
    val_batches = detection_batches(val, image_size=d.image_size, resize=d.resize,
                                    batch_size=recipe.eval.batch_size,
                                    max_instances=d.max_instances, training=False,
                                    seed=recipe.train.seed, with_meta=True)
    return val, val_batches.dataset


def _val_batches(recipe, data, num_classes):
    from kft.data import classification_batches

    return classification_batches(data.val_source, image_size=recipe.data.image_size,
                                  batch_size=recipe.eval.batch_size, num_classes=num_classes,
                                  training=False, seed=recipe.train.seed)


@main.command("eval")
@click.argument("target")
@click.option("--data", "data_root", default=None, help="Image folder or tfds:name to evaluate on.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
@click.option("--output", "-o", default=None, help="Where to write the metrics JSON.")
def eval_cmd(target, data_root, overrides, output):
    """Re-evaluate a saved run or model on its validation split."""
    from kft.eval.classification import evaluate_classifier
    from kft.train.classify import prepare_data

    with reporting_errors():
        model, recipe, run_dir = _load_run(target, data_root, overrides)
        if recipe.task == "detection":
            return _eval_detector(model, recipe, run_dir, output)
        data = prepare_data(recipe.data, run_dir, recipe.train.seed)
        _check_num_classes(model, data.class_names, recipe)
        val = _val_batches(recipe, data, len(data.class_names))
        metrics = evaluate_classifier(model.predict_on_batch, val.dataset, data.class_names)
    out = Path(output) if output else run_dir / "metrics_eval.json"
    out.write_text(json.dumps(metrics, indent=2))
    click.echo(f"accuracy {metrics['accuracy']:.4f}  top-5 {metrics['top5_accuracy']:.4f}  "
               f"macro-F1 {metrics['macro_f1']:.4f}  ({metrics['num_examples']} images) -> {out}")


def _eval_detector(model, recipe, run_dir, output):
    from kft.eval.detection import evaluate_detector

    val, batches = _detection_val(recipe, run_dir)
    metrics = evaluate_detector(model.predict_on_batch, val, batches,
                                voc=recipe.data.format == "voc")
    out = Path(output) if output else run_dir / "metrics_eval.json"
    out.write_text(json.dumps(metrics, indent=2))
    click.echo(f"bbox AP {metrics['bbox_AP']:.4f}  AP50 {metrics['bbox_AP50']:.4f}  "
               f"AP75 {metrics['bbox_AP75']:.4f}  ({metrics['num_images']} images) -> {out}")


@main.command("export")
@click.argument("target")
@click.option("--data", "data_root", default=None, help="Data for calibration and comparison.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
@click.option("--formats", default="float32,float16,int8", show_default=True)
@click.option("--samples", default=100, show_default=True, type=click.IntRange(min=1),
              help="Representative images for INT8.")
@click.option("--output", "-o", default=None, help="Export directory (default RUN/export).")
def export_cmd(target, data_root, overrides, formats, samples, output):
    """Export a saved run or model to TFLite (float32 / float16 / full-integer INT8) and compare
    each file with the Keras model on the val split (report.json)."""
    from kft.data import classification_batches
    from kft.export.tflite import export_and_report
    from kft.train.classify import prepare_data
    from kft.validate import check_formats

    formats = tuple(f.strip() for f in formats.split(",") if f.strip())
    with reporting_errors():
        check_formats("--formats", formats)
        model, recipe, run_dir = _load_run(target, data_root, overrides)
        out = Path(output) if output else run_dir / "export"
        if recipe.task == "detection":
            report = _export_detector(model, recipe, run_dir, out, formats, samples)
            click.echo(json.dumps(report, indent=2))
            return
        data = prepare_data(recipe.data, run_dir, recipe.train.seed)
        _check_num_classes(model, data.class_names, recipe)
        n = len(data.class_names)
        rep = classification_batches(data.train_source, image_size=recipe.data.image_size,
                                     batch_size=1, num_classes=n, training=False,
                                     seed=recipe.train.seed)
        rep_images = rep.dataset.map(lambda x, y: x).take(samples)
        report = export_and_report(model, out, rep_images, _val_batches(recipe, data, n).dataset,
                                   data.class_names, formats=formats)
    click.echo(json.dumps(report, indent=2))


def _export_detector(model, recipe, run_dir, out, formats, samples):
    from kft.data import detection_batches
    from kft.export.detection import export_detector_and_report
    from kft.train.detect import read_split

    d = recipe.data
    val, val_batches = _detection_val(recipe, run_dir)
    train = read_split(d, d.train_split, run_dir, seed=recipe.train.seed)  # calibration images
    rep = detection_batches(train, image_size=d.image_size, resize=d.resize,
                            batch_size=recipe.eval.batch_size, max_instances=d.max_instances,
                            training=False, seed=recipe.train.seed)
    return export_detector_and_report(model, out, rep.dataset, val, val_batches,
                                      formats=formats, voc=d.format == "voc",
                                      num_calibration=samples)


@main.command("predict")
@click.argument("model_path", type=click.Path(exists=True, dir_okay=True))
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--top-k", default=3, show_default=True, type=click.IntRange(min=1),
              help="Classifiers: classes per image.")
@click.option("--score-threshold", default=0.3, show_default=True,
              type=click.FloatRange(0.0, 1.0), help="Detectors: lowest score printed.")
def predict_cmd(model_path, images, top_k, score_threshold):
    """Classify or detect on image files with a saved model (a run directory or .keras);
    prints JSON (detections as xyxy boxes in the image's own pixels)."""
    with reporting_errors():
        _predict(model_path, images, top_k, score_threshold)


def _predict(model_path, images, top_k, score_threshold):
    import numpy as np
    from PIL import Image, ImageOps

    from kft.data.pipeline import resize_uint8

    path = Path(model_path)
    names_file = (path if path.is_dir() else path.parent) / "class_names.json"
    model = _load_model(path / "model.keras" if path.is_dir() else path)
    try:
        names = json.loads(names_file.read_text()) if names_file.is_file() else None
    except json.JSONDecodeError as e:
        raise cfg.ConfigError(f"{names_file}: not a JSON list of class names ({e})") from e
    h, w = model.input_shape[1:3]
    detector = _is_detector(model)
    results = []
    for image_path in images:
        try:
            with Image.open(image_path) as im:
                pixels = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
            if not detector:
                # the training/eval pipeline's own resize (bilinear without antialiasing,
                # rounded to uint8), not PIL's antialiased one
                pixels = np.asarray(resize_uint8(pixels, (h, w)), dtype="float32")
        except OSError as e:
            results.append({"image": image_path, "error": f"cannot read image: {e}"})
            continue
        if detector:
            results.append({"image": image_path, "detections": _detect_one(
                model, pixels, names, score_threshold)})
            continue
        logits = model.predict_on_batch(pixels[None])[0]
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        top = np.argsort(-probs)[:top_k]
        results.append({"image": image_path, "top": [
            {"label": int(i), "class": names[i] if names else str(i), "prob": float(probs[i])}
            for i in top]})
    click.echo(json.dumps(results, indent=2))


def _detect_one(model, pixels, names, score_threshold) -> list[dict]:
    """Detections of one ``[H, W, 3]`` image, resized as in training, boxes in its pixels."""
    import numpy as np

    from kft.data.detection_pipeline import resize_image, to_original

    image, scale, _ = resize_image(pixels, image_size=tuple(model.input_shape[1:3]))
    det = model.predict_on_batch(image[None])
    boxes = np.asarray(to_original(det["boxes"][0], scale, pixels.shape[:2]))
    out = []
    for i in range(int(det["num_detections"][0])):
        score = float(det["scores"][0][i])
        if score < score_threshold:
            continue
        label = int(det["labels"][0][i])
        out.append({"label": label, "class": names[label] if names else str(label),
                    "score": round(score, 4), "box": [round(float(v), 1) for v in boxes[i]]})
    return out


from kft.cli_data import data as data_group  # noqa: E402

main.add_command(data_group, name="data")

if __name__ == "__main__":
    main()
