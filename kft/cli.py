"""The ``kft`` command: train / eval / export / predict / recipes (and ``kft data``).

``kft train`` is ``python -m kft.run``. ``eval`` and ``export`` take a run directory (its
``model.keras`` and ``config.json`` say what data and settings to use) or a ``.keras`` file with
``--data``. Classifiers and detectors (SSD / SSDLite) both: the model file says which.
``predict`` also takes a ``.tflite`` export (:mod:`kft.predict`); ``recipes`` lists the recipes
of a folder. ``--threads N`` (train, eval, export, predict) sets TensorFlow's CPU thread pools.

The recipe (``config.json`` + ``--data`` + ``--set``) is validated before any data is read; user
errors print one line ``kft: error: ...`` and exit with status 2 (``KFT_TRACEBACK=1`` shows the
traceback).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from kft import config as cfg
from kft.run import (
    adapt_generation,
    apply_threads,
    check_root_given,
    check_threads,
    override_keys,
    read_config,
    reporting_errors,
    threads_option,
)
from kft.run import main as run_main


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """kft: fine-tune pretrained vision models in Keras 3."""
    from kft import quiet_tensorflow

    quiet_tensorflow()


main.add_command(run_main, name="train")


def _load_run(target: str, data_root: str | None, overrides=(), threads: int | None = None):
    """(model, recipe, run_dir, task) from a run directory or a ``.keras`` file (+ ``--data``);
    the recipe is validated (before the model is loaded when the run's config.json is there),
    then ``--threads`` is applied. The model file says which task it does
    (:func:`kft.tasks.task_for_model`). Other data than the run's (``--data`` or ``--set
    data.root``) is never generated (:func:`kft.run.adapt_generation`)."""
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
    # other data than the run's: never generated there unless --set data.generate is given
    adapted = adapt_generation(recipe, set_keys)
    generate, recipe = (recipe.data.generate if adapted is not recipe else ""), adapted
    if not recipe.data.root:
        raise cfg.ConfigError("no data: pass --data ROOT (an image folder or tfds:name)")
    if from_config:  # a bad --set fails before the model is loaded
        validate_recipe(recipe, set_keys=set_keys)
    check_root_given(recipe, generate)

    apply_threads(threads)
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
    """:func:`kft.predict.load_keras_model` (a file that cannot be loaded is a user error)."""
    from kft.predict import load_keras_model

    return load_keras_model(model_path)


@main.command("eval")
@click.argument("target")
@click.option("--data", "data_root", default=None, help="Image folder or tfds:name to evaluate on.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
@click.option("--output", "-o", default=None, help="Where to write the metrics JSON.")
@threads_option
def eval_cmd(target, data_root, overrides, output, threads):
    """Re-evaluate a saved run or model on its validation split."""
    with reporting_errors():
        check_threads(threads)
        model, recipe, run_dir, task = _load_run(target, data_root, overrides, threads)
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
@threads_option
def export_cmd(target, data_root, overrides, formats, samples, output, threads):
    """Export a saved run or model to TFLite (float32 / float16 / full-integer INT8) and compare
    each file with the Keras model on the val split (report.json)."""
    from kft.validate import check_formats

    formats = tuple(f.strip() for f in formats.split(",") if f.strip())
    with reporting_errors():
        check_formats("--formats", formats)
        check_threads(threads)
        model, recipe, run_dir, task = _load_run(target, data_root, overrides, threads)
        out = Path(output) if output else run_dir / "export"
        data = task.read(recipe, run_dir, "export")
        task.check_model(model, data, recipe)
        report = task.export(model, data, recipe, out, formats, samples)
    click.echo(json.dumps(report, indent=2))


@main.command("predict")
@click.argument("model_path", metavar="RUN_DIR_OR_MODEL")
@click.argument("inputs", metavar="INPUT...", nargs=-1, required=True)
@click.option("--top-k", default=3, show_default=True, type=click.IntRange(min=1),
              help="Classifiers: classes per image.")
@click.option("--threshold", "--score-threshold", "score_threshold", default=0.3,
              show_default=True, type=click.FloatRange(0.0, 1.0),
              help="Detectors: lowest score printed (and drawn).")
@click.option("--save", "save_dir", default=None, metavar="DIR",
              help="Write each image with its boxes and classes (or top class) drawn, as "
                   "DIR/<name>.png.")
@click.option("--format", "output_format", default="json", show_default=True,
              type=click.Choice(["json", "jsonl", "table"]),
              help="json: a JSON list, one image a line; jsonl: JSON lines; table: text.")
@threads_option
def predict_cmd(model_path, inputs, top_k, score_threshold, save_dir, output_format, threads):
    """Classify or detect on images with a saved model: a run directory, a .keras or a .tflite
    file. INPUT: image files and folders (every image under a folder, sorted). Prints one
    result per image: the top classes, or detections as xyxy boxes in the image's own pixels,
    with class names from the run's class_names.json (or <model>.json / class_names.json
    beside the file)."""
    with reporting_errors():
        _predict(model_path, inputs, top_k, score_threshold, save_dir, output_format, threads)


def _predict(model_path, inputs, top_k, score_threshold, save_dir, output_format, threads):
    from kft.data.report import DataReport
    from kft.predict import expand_inputs, format_lines, load_predictor, predict_images, skip_note

    check_threads(threads)
    report = DataReport()
    images = expand_inputs(inputs, report)  # a missing input fails before the model loads
    skipped = report.to_dict()["num_skipped"]
    if not images:
        raise cfg.ConfigError(f"no image files in {', '.join(inputs)} (image files end in "
                              f".jpg, .jpeg, .png, .bmp or .gif; {skipped} other files)")
    note = skip_note(report)
    if note:
        click.echo(note, err=True)
    apply_threads(threads)
    predictor = load_predictor(model_path, threads)
    if predictor.class_names is None:
        click.echo(f"[kft] predict: no class names for {predictor.path} (looked for the run's "
                   "class_names.json, <model>.json and class_names.json beside it): classes "
                   "are printed as numbers", err=True)
    failed = []
    results = predict_images(predictor, images, top_k, score_threshold, save_dir)

    def noting_failures(rows):
        for row in rows:
            if "error" in row:
                failed.append(row["image"])
            yield row

    for line in format_lines(noting_failures(results), output_format):
        click.echo(line)
    if failed:
        click.echo(f"[kft] predict: {len(failed)} of {len(images)} images could not be read "
                   "(their results hold \"error\")", err=True)


@main.command("recipes")
@click.argument("folder", required=False, metavar="[DIR]")
def recipes_cmd(folder):
    """List the recipes in DIR (default: recipes/ of the current directory, else of the kft
    checkout): file, name, task and description, one per line. A recipe that does not load is
    listed with its error."""
    from kft.show import default_recipes_dir, list_recipes, recipe_table

    with reporting_errors():
        rows = list_recipes(folder if folder else default_recipes_dir())
        if not rows:
            raise cfg.ConfigError(f"{folder or default_recipes_dir()}: no recipe files (*.py)")
    for line in recipe_table(rows):
        click.echo(line)


from kft.cli_data import data as data_group  # noqa: E402

main.add_command(data_group, name="data")


def register_optional(group: click.Group, module: str, attribute: str) -> bool:
    """Adds the click command ``module.attribute`` to ``group`` when ``module`` exists and
    says whether it did; a module that is not there (yet) is skipped, any other import error
    (the module exists but something it imports does not) is raised."""
    import importlib

    try:
        command = getattr(importlib.import_module(module), attribute)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise
        return False
    group.add_command(command)
    return True


register_optional(main, "kft.cli_lrfind", "lr_find")  # kft lr-find
register_optional(main, "kft.cli_convert", "convert")  # kft convert torchvision

if __name__ == "__main__":
    main()
