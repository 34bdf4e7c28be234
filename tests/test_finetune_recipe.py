"""recipes/finetune_classify.py and the small-data rules of a run (issue 9, part 2).

The target split has 21 training images of three sizes in 3 classes (21 is divided by no
batch size a user would pick); the source model is a kft run on other data."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kft import config as cfg
from kft.run import run_recipe
from kft.train.runs import read_history

REPO = Path(__file__).resolve().parents[1]
SIZES = [(48, 64), (37, 50), (64, 40)]  # (h, w): non-square, several sizes


def _folder(root: Path, classes, per_class: dict, seed: int) -> Path:
    """Images whose class is a colour and a stripe direction, with noise; sizes vary."""
    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = SIZES[(i + c) % len(SIZES)]
                image = rng.uniform(0, 60, (h, w, 3))
                image[..., c % 3] += 150
                if c >= 3:
                    image[::4] = 255  # horizontal stripes for the second three classes
                Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(
                    root / split / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    """A tiny ResNet trained 2 epochs on four other classes (32 px)."""
    tmp = tmp_path_factory.mktemp("source")
    data = _folder(tmp / "data", ["w", "x", "y", "z"], {"train": 12, "val": 4}, seed=1)
    recipe = cfg.Recipe(name="source", data=cfg.Data(root=str(data), image_size=32),
                        model=cfg.Model(arch="resnet_tiny"),
                        train=cfg.Train(epochs=2, batch_size=12, optimizer="adamw",
                                        learning_rate=3e-3),
                        export=cfg.Export(enabled=False))
    run_recipe(recipe, tmp / "run", verbose=0)
    return tmp / "run"


def test_finetune_recipe_settles_its_settings_from_the_data_and_the_source(source_run,
                                                                          tmp_path, capsys):
    target = _folder(tmp_path / "target", ["red", "green", "blue"], {"train": 7, "val": 5},
                     seed=2)
    recipe = cfg.load_recipe(REPO / "recipes" / "finetune_classify.py")
    assert recipe.data.root == "" and recipe.model.arch == "" and recipe.train.epochs == 0
    recipe = cfg.apply_overrides(recipe, [
        f"data.root={target}", f"model.load_from={source_run / 'model.keras'}",
        "export.enabled=false", "train.epochs=4"])
    summary = run_recipe(recipe, tmp_path / "run", verbose=0)
    out = capsys.readouterr().out
    run = tmp_path / "run"
    resolved = json.loads((run / "config.json").read_text())["resolved"]
    # the source run's architecture and image size
    assert resolved["model.arch"]["to"] == "resnet_tiny"
    assert resolved["data.image_size"]["to"] == 32
    # 21 images: auto batch 4 (largest power of two <= 21 / 5), fitted to 6 steps of 4
    assert resolved["train.batch_size"]["from"] == 0 and resolved["train.batch_size"]["to"] == 4
    assert resolved["train.learning_rate"]["to"] == 1e-3
    assert resolved["train.restart_epochs"]["to"] == 4.0
    assert "train.batch_size: 0 -> 4" in out and "only the new head" in out
    assert "3 images drawn again" in out  # 6 x 4 = 24 places for 21 images: none left out
    saved = cfg.from_dict(json.loads((run / "config.json").read_text()))
    assert saved.train.batch_size == 4 and saved.model.arch == "resnet_tiny"
    # the policy: head first, then the backbone at a lower rate (0.3, chosen on fewshot's dev
    # splits)
    assert saved.train.backbone_lr_scale == 0.3 and "at 0.3 x the learning rate" in out
    history = read_history(run / "history.csv")
    assert len(history["loss"]) == 4
    assert [int(r.split(",")[0]) for r in (run / "history.csv").read_text().split()[1:]] == [
        1, 2, 3, 4]  # epochs counted from 1, as on screen
    metrics = json.loads((run / "metrics.json").read_text())
    assert "top5_accuracy" not in metrics  # 3 classes: top-5 says nothing
    assert summary["metrics"]["accuracy"] == metrics["accuracy"]
    load = json.loads((run / "load_report.json").read_text())
    assert load["loaded"] and any("predictions" in m["path"] for m in load["shape_mismatch"])


def test_a_warmup_longer_than_the_run_is_refused_before_training(tmp_path):
    target = _folder(tmp_path / "target", ["a", "b"], {"train": 6, "val": 2}, seed=3)
    recipe = cfg.Recipe(name="w", data=cfg.Data(root=str(target), image_size=32),
                        model=cfg.Model(arch="resnet_tiny"),
                        train=cfg.Train(epochs=3, batch_size=4, warmup_steps=100),
                        export=cfg.Export(enabled=False))
    with pytest.raises(cfg.ConfigError, match="as long as the whole run"):
        run_recipe(recipe, tmp_path / "run", verbose=0)
    assert not (tmp_path / "run").exists()
