"""tools/tune_quickstart.py's rules: the grid, the epoch-following cosine cycle, the choice, and
the refusal to tune on the quick start's reported split (its runs are not repeated here)."""

import importlib.util
import sys
from pathlib import Path

import pytest

from kft import config as cfg

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("tune_quickstart",
                                                  ROOT / "tools" / "tune_quickstart.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["tune_quickstart"] = module
    spec.loader.exec_module(module)
    return module


def test_grid_parses_lists_and_refuses_bad_keys(tool):
    grid = tool.parse_grid(["train.epochs=6,8", "train.trainable_stages=stride16+stride32"])
    assert grid == [("train.epochs", ["6", "8"]),
                    ("train.trainable_stages", ["stride16,stride32"])]
    assert len(tool.settings(grid)) == 2
    for bad, match in [(["train.epoch=6"], "epoch"), (["train.epochs"], "key=v1,v2"),
                       (["train.epochs="], "no values"),
                       (["train.epochs=6", "train.epochs=8"], "twice")]:
        with pytest.raises(cfg.ConfigError, match=match):
            tool.parse_grid(bad)
    with pytest.raises(cfg.ConfigError, match="integers"):
        tool.parse_seeds("1,x")


def test_epochs_move_a_whole_run_cosine_cycle(tool):
    recipe = cfg.load_recipe(ROOT / "recipes" / "quickstart.py")
    assert recipe.train.schedule == "cosine_restarts"
    assert recipe.train.restart_epochs == recipe.train.epochs
    assert tool.overrides_for(recipe, {"train.epochs": "7"}) == [
        "train.epochs=7", "train.restart_epochs=7"]
    other = cfg.apply_overrides(recipe, ["train.restart_epochs=2"])
    assert tool.overrides_for(other, {"train.epochs": "7"}) == ["train.epochs=7"]


def test_choice_is_the_cheapest_setting_reaching_the_target(tool):
    base = cfg.load_recipe(ROOT / "recipes" / "quickstart.py")

    def row(epochs, images, ap50):
        recipe = cfg.apply_overrides(base, [f"train.epochs={epochs}",
                                            f"data.generate_num_train={images}"])
        return {"setting": {"epochs": epochs, "images": images}, "recipe": recipe,
                "mean_AP50": ap50}

    rows = [row(4, 1200, 0.86), row(6, 600, 0.88), row(8, 1200, 0.93), row(3, 600, 0.80)]
    # 6 x 600 = 3600 images trained on beats 4 x 1200 = 4800; 3 x 600 misses the target
    assert tool.choose(rows, 0.85)["setting"] == {"epochs": 6, "images": 600}
    # nothing reaches the target: the best mean AP50
    assert tool.choose(rows, 0.95)["setting"] == {"epochs": 8, "images": 1200}
    with pytest.raises(ValueError):
        tool.choose([], 0.85)


def test_the_reported_split_is_never_tuned_on(tool, tmp_path):
    recipe = cfg.load_recipe(ROOT / "recipes" / "quickstart.py")
    with pytest.raises(cfg.ConfigError, match="reported split"):
        tool.make_tuning_data(tmp_path, recipe, tool.REPORTED_SEED, 10)
    assert tool.main(["--seeds", "0,1", "--record", str(tmp_path / "r.json")]) == 2
    assert not (tmp_path / "r.json").exists()


def test_the_quick_start_runs_the_recorded_choice():
    """recipes/quickstart.py trains with what pretrained/quickstart_tuning.json chose."""
    import json

    record = json.loads((ROOT / "pretrained" / "quickstart_tuning.json").read_text())
    recipe = cfg.load_recipe(ROOT / "recipes" / "quickstart.py")
    runs = {"train.epochs": recipe.train.epochs, "train.learning_rate": recipe.train.learning_rate,
            "train.batch_size": recipe.train.batch_size}
    assert {k: float(v) for k, v in record["chosen"].items()} == {
        k: float(runs[k]) for k in record["chosen"]}
    assert recipe.train.restart_epochs == recipe.train.epochs  # one cosine cycle per run
    if not record["reached_target"]:  # the rule then takes the best mean AP50
        best = max(record["results"], key=lambda row: row["mean_AP50"])
        assert best["setting"] == {"train.epochs": str(recipe.train.epochs)}
