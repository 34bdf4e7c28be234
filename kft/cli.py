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
    """(model, recipe, run_dir, task) from a run directory or a ``.keras`` file (+ ``--data``);
    the recipe is validated (before the model is loaded when the run's config.json is there).
    The model file says which task it does (:func:`kft.tasks.task_for_model`)."""
    from kft.tasks import task_for_model
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
    task = task_for_model(model)
    size = model.input_shape[1]
    if recipe.data.image_size != size:
        recipe = cfg.apply_overrides(recipe, [f"data.image_size={size}"])
    if recipe.task != task.name:
        recipe = cfg.apply_overrides(recipe, [f"task={task.name}"])
    if recipe.task == "detection" and not recipe.data.format:
        raise cfg.ConfigError(f"{target}: a detector needs data.format: pass --set "
                              "data.format=voc (or coco, cityscapes)")
    # Without config.json the model file, not the recipe, says which network it is.
    validate_recipe(recipe, set_keys=set_keys, check_model=from_config)
    return model, recipe, run_dir, task


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


@main.command("eval")
@click.argument("target")
@click.option("--data", "data_root", default=None, help="Image folder or tfds:name to evaluate on.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
@click.option("--output", "-o", default=None, help="Where to write the metrics JSON.")
def eval_cmd(target, data_root, overrides, output):
    """Re-evaluate a saved run or model on its validation split."""
    with reporting_errors():
        model, recipe, run_dir, task = _load_run(target, data_root, overrides)
        data = task.read(recipe, run_dir, "eval")
        task.check_model(model, data, recipe)
        metrics = task.evaluate(model, data, recipe)
    out = Path(output) if output else run_dir / "metrics_eval.json"
    out.write_text(json.dumps(metrics, indent=2))
    click.echo(f"{task.metrics_line(metrics)} -> {out}")


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
    from kft.validate import check_formats

    formats = tuple(f.strip() for f in formats.split(",") if f.strip())
    with reporting_errors():
        check_formats("--formats", formats)
        model, recipe, run_dir, task = _load_run(target, data_root, overrides)
        out = Path(output) if output else run_dir / "export"
        data = task.read(recipe, run_dir, "export")
        task.check_model(model, data, recipe)
        report = task.export(model, data, recipe, out, formats, samples)
    click.echo(json.dumps(report, indent=2))


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

    from kft.tasks import task_for_model

    path = Path(model_path)
    names_file = (path if path.is_dir() else path.parent) / "class_names.json"
    model = _load_model(path / "model.keras" if path.is_dir() else path)
    try:
        names = json.loads(names_file.read_text()) if names_file.is_file() else None
    except json.JSONDecodeError as e:
        raise cfg.ConfigError(f"{names_file}: not a JSON list of class names ({e})") from e
    task = task_for_model(model)
    results = []
    for image_path in images:
        try:
            with Image.open(image_path) as im:
                pixels = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
        except OSError as e:
            results.append({"image": image_path, "error": f"cannot read image: {e}"})
            continue
        results.append({"image": image_path, **task.predict(
            model, pixels, names, top_k=top_k, score_threshold=score_threshold)})
    click.echo(json.dumps(results, indent=2))


from kft.cli_data import data as data_group  # noqa: E402

main.add_command(data_group, name="data")

if __name__ == "__main__":
    main()
