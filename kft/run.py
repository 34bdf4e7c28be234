"""``python -m kft.run RECIPE.py [--set key=value]... [--output DIR] [--resume] [--threads N]
[--show]``.

``--show`` prints every key of the resolved recipe with its value and documentation
(:mod:`kft.show`) and exits without running. ``--threads N`` sets TensorFlow's intra- and
inter-op thread pools to N before any TensorFlow op runs (0: TensorFlow's default).

A recipe that generates its data (``data.generate``) does not generate it at a ``data.root``
given with ``--set`` unless ``--set data.generate=...`` is given too (:func:`adapt_generation`):
a mistyped path to the user's own data is then an error, not a folder of synthetic images.

Every recipe value is checked (:mod:`kft.validate`) before a run directory is made or any data
is read. A user error (a bad value, a missing folder, a broken recipe file) ends in one line
``kft: error: ...`` and exit status 2, and a run directory this call created is removed again
when the run fails before its first checkpoint. ``KFT_TRACEBACK=1`` shows the traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path

import click

from kft import config as cfg

# What a user's mistake raises: ConfigError, WeightsError, the readers' FolderError and
# AnnotationError are ValueErrors; missing files and TFDS datasets FileNotFoundErrors.
USER_ERRORS = (cfg.ConfigError, FileNotFoundError, ValueError)


def run_recipe(recipe: cfg.Recipe, output: str | Path | None = None, resume: bool = False,
               verbose: int = 1, set_keys=()) -> dict:
    """Runs ``recipe`` into ``output`` (default ``runs/<recipe name>``) and returns its summary.

    ``set_keys``: the keys given with ``--set`` (see :func:`kft.validate.validate_recipe`).
    """
    from kft.validate import validate_recipe

    validate_recipe(recipe, set_keys=set_keys)
    run_dir = Path(output) if output else Path("runs") / recipe.name
    if resume:
        check_resume(recipe, run_dir)
    created = _first_missing(run_dir)
    try:
        from kft.tasks import task_named
        from kft.train.runs import run_task

        return run_task(task_named(recipe.task), recipe, run_dir, resume=resume,
                        verbose=verbose)
    except USER_ERRORS:
        if created is not None and not _training_started(run_dir):
            shutil.rmtree(created, ignore_errors=True)  # failed before training: no half run
        raise


def _training_started(run_dir: Path) -> bool:
    """Whether ``fit`` began (its CSV logger opens history.csv at train begin, TensorBoard
    writes logs/) or a checkpoint was committed: from then on a failed run's directory is kept
    for inspection."""
    logs = run_dir / "logs"
    return any((run_dir / name).exists() for name in ("history.csv",
                                                       "checkpoints/state.json")) or (
        logs.is_dir() and any(p.is_file() for p in logs.rglob("*")))


def _first_missing(path: Path) -> Path | None:
    """The topmost folder of ``path`` that does not exist yet (what a run would create)."""
    missing = None
    for p in [path, *path.parents]:
        if p.exists():
            break
        missing = p
    return missing


def check_resume(recipe: cfg.Recipe, run_dir: Path) -> None:
    """Refuses to resume ``run_dir`` with another model or other data than it was trained on:
    the keys that differ from its ``config.json`` (and, for an image folder, class folders
    that differ from its ``class_names.json``) are named."""
    from kft.validate import resume_differences

    saved_path = run_dir / "config.json"
    if not saved_path.is_file():
        return
    saved = read_config(saved_path)
    diff = resume_differences(recipe, saved)
    if diff:
        raise cfg.ConfigError(
            f"--resume: {'; '.join(diff)} differ from {saved_path}: a run resumes with the "
            "model and data it was trained on; start a new run with --output (and "
            "model.load_from to start from this one)")
    names_path = run_dir / "class_names.json"
    root = recipe.data.root
    if recipe.task != "classification" or root.startswith("tfds:") or not names_path.is_file():
        return
    if not Path(root).is_dir():
        return  # the runner names the missing folder
    from kft.data.readers.folder import folder_class_names

    now, before = folder_class_names(root), json.loads(names_path.read_text())
    if now != before:
        raise cfg.ConfigError(
            f"--resume: data.root={root} now has {len(now)} classes ({_short(now)}) but the "
            f"run was trained on {len(before)} ({_short(before)}, {names_path}): start a new "
            "run with --output")


def _short(names: list, n: int = 6) -> str:
    return ", ".join(names[:n]) + (f", ... ({len(names) - n} more)" if len(names) > n else "")


def read_config(path: Path) -> cfg.Recipe:
    """The recipe saved in a run's ``config.json``; a file that is not one is a ConfigError.

    Runs written before the plan cleared ``train.warmup_epochs`` once it had become
    ``train.warmup_steps`` hold both (which a recipe may not): the steps, which the run
    trained with, are kept."""
    try:
        recipe = cfg.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError, AttributeError) as e:
        raise cfg.ConfigError(f"{path}: not a kft config.json ({e})") from e
    t = recipe.train
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool)
                  for v in (t.warmup_epochs, t.warmup_steps))
    if numbers and t.warmup_epochs > 0 and t.warmup_steps > 0:  # (a bad type: validation's)
        recipe = dataclasses.replace(recipe, train=dataclasses.replace(t, warmup_epochs=0.0))
    return recipe


def override_keys(overrides) -> list[str]:
    """The keys of ``key=value`` overrides."""
    return [item.split("=", 1)[0].strip() for item in overrides if "=" in item]


def adapt_generation(recipe: cfg.Recipe, set_keys) -> cfg.Recipe:
    """``recipe`` with ``data.generate`` turned off when ``data.root`` is among ``set_keys``
    (the ``--set`` keys) and ``data.generate`` is not: a template recipe pointed at the user's
    own folder never writes synthetic data there (nor at a mistyped path)."""
    keys = set(set_keys)
    if recipe.data.generate and "data.root" in keys and "data.generate" not in keys:
        return dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, generate=""))
    return recipe


def check_root_given(recipe: cfg.Recipe, generate: str) -> None:
    """After :func:`adapt_generation` turned ``generate`` off: a ``data.root`` that does not
    exist is a ConfigError saying how to generate there after all (nothing when it exists)."""
    root = recipe.data.root.split(",")[0].strip()
    if not generate or not root or root.startswith("tfds:") or Path(root).exists():
        return
    raise cfg.ConfigError(
        f"data.root={recipe.data.root!r} does not exist (the recipe generates kft's synthetic "
        f"data only at its own data.root; add --set data.generate={generate} to generate it "
        "at this path)")


def _unvalidated(recipe_path: str, overrides, output: str | None, resume: bool):
    """``(recipe, generate, run_dir)``: the file's recipe (on --resume the run's config.json)
    with ``--set`` applied and generation adapted (:func:`adapt_generation`); ``generate`` is
    the ``data.generate`` that was turned off (``""`` when none was)."""
    recipe = cfg.load_recipe(recipe_path)
    run_dir = Path(output) if output else Path("runs") / recipe.name
    saved = run_dir / "config.json"
    keys = override_keys(overrides)
    if resume and saved.is_file():
        recipe = read_config(saved)
        if "train.warmup_epochs" in keys and "train.warmup_steps" not in keys:
            # config.json holds the planned warm-up in steps: a new one in epochs replaces it
            recipe = dataclasses.replace(
                recipe, train=dataclasses.replace(recipe.train, warmup_steps=0))
    recipe = cfg.apply_overrides(recipe, list(overrides))
    adapted = adapt_generation(recipe, keys)
    return adapted, recipe.data.generate if adapted is not recipe else "", run_dir


def resolve(recipe_path: str, overrides, output: str | None, resume: bool) -> cfg.Recipe:
    """The recipe to run: the file's, or on --resume the run's own config.json, then --set
    (and :func:`adapt_generation`); validated (and on --resume compared with config.json)."""
    recipe, generate, run_dir = _unvalidated(recipe_path, overrides, output, resume)
    from kft.validate import validate_recipe

    validate_recipe(recipe, set_keys=override_keys(overrides))
    check_root_given(recipe, generate)
    if resume:
        check_resume(recipe, run_dir)
    return recipe


def show(recipe_path: str, overrides, output: str | None, resume: bool) -> None:
    """``--show``: prints every key of the resolved recipe with its value and doc
    (:func:`kft.show.recipe_lines`). A value the run would refuse is named in a note on
    stderr; the listing itself never fails on it."""
    from kft.show import recipe_lines
    from kft.validate import validate_recipe

    recipe, generate, _ = _unvalidated(recipe_path, overrides, output, resume)
    click.echo("\n".join(recipe_lines(recipe, recipe_path)))
    try:
        validate_recipe(recipe, set_keys=override_keys(overrides))
        check_root_given(recipe, generate)
    except cfg.ConfigError as e:
        click.echo(f"kft: note: as shown, the run would stop with: {e}", err=True)


def check_threads(threads: int | None) -> None:
    """``--threads``: ``None`` or ``0`` (TensorFlow's default) or a positive count."""
    if threads is not None and threads < 0:
        raise cfg.ConfigError(f"--threads={threads} is not valid: give 0 (TensorFlow's "
                              "default) or a positive number of CPU threads")


def apply_threads(threads: int | None) -> None:
    """Sets TensorFlow's intra-op and inter-op parallelism to ``threads`` (nothing for 0 or
    ``None``). Call it before any TensorFlow op runs: once TensorFlow's runtime has started in
    this process the pools are fixed, and a note on stderr says that the value was not
    applied."""
    check_threads(threads)
    if not threads:
        return
    import tensorflow as tf

    threading = tf.config.threading
    try:
        threading.set_intra_op_parallelism_threads(threads)
        threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        now = (threading.get_intra_op_parallelism_threads(),
               threading.get_inter_op_parallelism_threads())
        if now != (threads, threads):
            click.echo(f"[kft] note: --threads {threads} not applied: TensorFlow already runs "
                       f"in this process with intra/inter-op threads {now[0]}/{now[1]}",
                       err=True)


def threads_option(function):
    """The ``--threads N`` option of ``python -m kft.run`` and ``kft eval/export/predict``."""
    return click.option(
        "--threads", type=int, default=0, show_default=True, metavar="N",
        help="TensorFlow intra- and inter-op CPU threads (0: TensorFlow's default).")(function)


@contextlib.contextmanager
def reporting_errors():
    """Turns a user error into ``kft: error: <message>`` and exit status 2, a diverged run
    into exit status 3; ``KFT_TRACEBACK=1`` re-raises instead."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - sorted below
        if os.environ.get("KFT_TRACEBACK"):
            raise
        runs = sys.modules.get("kft.train.runs")  # loaded whenever training ran
        if runs is not None and isinstance(e, runs.TrainingDiverged):
            click.echo(f"kft: training diverged: {e}", err=True)
            sys.exit(3)
        if isinstance(e, USER_ERRORS):
            click.echo(f"kft: error: {e}", err=True)
            sys.exit(2)
        raise


@click.command(context_settings={"help_option_names": ["-h", "--help"]},
               epilog="Errors print one line; set KFT_TRACEBACK=1 to see the traceback.")
@click.argument("recipe_path", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe field, e.g. --set train.epochs=3 (repeatable).")
@click.option("--output", "-o", default=None, help="Run directory (default runs/<recipe name>).")
@click.option("--resume", is_flag=True, help="Continue the run in --output from its last checkpoint.")
@click.option("--quiet", is_flag=True, help="One line per epoch instead of progress bars.")
@click.option("--show", "show_only", is_flag=True,
              help="Print every key with its value and doc (* = not the default), then exit.")
@threads_option
def main(recipe_path, overrides, output, resume, quiet, show_only, threads):
    """Run a kft recipe: train, evaluate and export into a run directory."""
    from kft import quiet_tensorflow

    quiet_tensorflow()
    with reporting_errors():
        check_threads(threads)
        if show_only:
            show(recipe_path, overrides, output, resume)
            return
        recipe = resolve(recipe_path, overrides, output, resume)
        apply_threads(threads)
        run_recipe(recipe, output, resume=resume, verbose=2 if quiet else 1,
                   set_keys=override_keys(overrides))


if __name__ == "__main__":
    main()
