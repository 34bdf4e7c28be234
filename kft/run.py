"""``python -m kft.run RECIPE.py [--set key=value]... [--output DIR] [--resume]``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from kft import config as cfg


def run_recipe(recipe: cfg.Recipe, output: str | Path | None = None, resume: bool = False,
               verbose: int = 1) -> dict:
    """Runs ``recipe`` into ``output`` (default ``runs/<recipe name>``) and returns its summary."""
    run_dir = Path(output) if output else Path("runs") / recipe.name
    if recipe.task == "classification":
        from kft.train.classify import run_classification

        return run_classification(recipe, run_dir, resume=resume, verbose=verbose)
    if recipe.task == "detection":
        from kft.train.detect import run_detection

        return run_detection(recipe, run_dir, resume=resume, verbose=verbose)
    raise cfg.ConfigError(f"recipe task {recipe.task!r} must be classification or detection")


def resolve(recipe_path: str, overrides, output: str | None, resume: bool) -> cfg.Recipe:
    """The recipe to run: the file's, or on --resume the run's own config.json, then --set."""
    recipe = cfg.load_recipe(recipe_path)
    run_dir = Path(output) if output else Path("runs") / recipe.name
    saved = run_dir / "config.json"
    if resume and saved.is_file():
        import json

        recipe = cfg.from_dict(json.loads(saved.read_text()))
    return cfg.apply_overrides(recipe, list(overrides))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("recipe_path", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe field, e.g. --set train.epochs=3 (repeatable).")
@click.option("--output", "-o", default=None, help="Run directory (default runs/<recipe name>).")
@click.option("--resume", is_flag=True, help="Continue the run in --output from its last checkpoint.")
@click.option("--quiet", is_flag=True, help="One line per epoch instead of progress bars.")
def main(recipe_path, overrides, output, resume, quiet):
    """Run a kft recipe: train, evaluate and export into a run directory."""
    from kft.models.weights import WeightsError
    from kft.train.runs import TrainingDiverged

    try:
        recipe = resolve(recipe_path, overrides, output, resume)
        run_recipe(recipe, output, resume=resume, verbose=2 if quiet else 1)
    except (cfg.ConfigError, WeightsError, FileNotFoundError) as e:
        click.echo(f"kft: error: {e}", err=True)
        sys.exit(2)
    except TrainingDiverged as e:
        click.echo(f"kft: training diverged: {e}", err=True)
        sys.exit(3)


if __name__ == "__main__":
    main()
