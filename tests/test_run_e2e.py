"""End-to-end runs through ``python -m kft.run`` / ``run_recipe`` on data the tests generate."""

import json
from pathlib import Path

import numpy as np
import pytest

from kft import config as cfg
from kft.data import make_shapes_classification
from kft.run import run_recipe
from kft.saving import load_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    make_shapes_classification(root, classes=("circle", "square", "triangle"), per_class=24,
                               val_per_class=8, image_size=64, seed=0)
    return root


def _recipe(root, **train):
    base = cfg.Recipe(
        name="e2e",
        data=cfg.Data(root=str(root), image_size=64, augment=True),
        model=cfg.Model(arch="resnet_tiny"),
        train=cfg.Train(epochs=2, batch_size=12, optimizer="adamw", learning_rate=3e-3,
                        schedule="cosine_restarts", restart_epochs=1, clipnorm=5.0,
                        label_smoothing=0.1, seed=0),
        export=cfg.Export(quantize=("float32", "int8"), representative_samples=16),
    )
    return cfg.apply_overrides(base, [f"train.{k}={v}" for k, v in train.items()])


def test_run_writes_the_whole_run_directory(shapes, tmp_path):
    summary = run_recipe(_recipe(shapes), tmp_path / "run", verbose=0)
    run = tmp_path / "run"
    for name in ["config.json", "history.csv", "metrics.json", "model.keras", "data_report.json",
                 "checkpoints/state.json", "export/report.json", "export/model_int8.tflite",
                 "export/model_float32.tflite", "plots/confusion_matrix.png",
                 "plots/training_curves.png", "class_names.json"]:
        assert (run / name).is_file(), name
    assert any((run / "logs").rglob("*tfevents*"))
    history = (run / "history.csv").read_text().strip().splitlines()
    assert len(history) == 3 and "learning_rate" in history[0] and "val_macro_f1" in history[0]
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["per_class"]) == {"circle", "square", "triangle"}
    assert summary["metrics"]["accuracy"] == metrics["accuracy"]
    # where the run's time went, phase by phase, adding up to the whole run
    phases = summary["phases"]
    assert list(phases) == ["data and model", "training", "evaluation", "plots", "export"]
    assert all(v >= 0 for v in phases.values()) and phases["training"] > 0
    assert abs(sum(phases.values()) - summary["seconds"]) < 0.5
    assert json.loads((run / "config.json").read_text())["train"]["epochs"] == 2
    # A second run into the same directory without --resume is refused.
    with pytest.raises(cfg.ConfigError, match="--resume"):
        run_recipe(_recipe(shapes), run, verbose=0)


def _recipe_file(tmp_path, root):
    path = tmp_path / "resume_recipe.py"
    path.write_text(
        "from kft.config import *\n"
        f"RECIPE = Recipe(name='resume', data=Data(root={str(root)!r}, image_size=64),\n"
        "    model=Model(arch='resnet_tiny'),\n"
        "    train=Train(epochs=4, batch_size=6, optimizer='sgd', learning_rate=0.02,\n"
        "                schedule='step', step_epochs=1, gamma=0.5, seed=3),\n"
        "    export=Export(enabled=False))\n")
    return path


def test_sigkill_then_resume_matches_an_uninterrupted_run(shapes, tmp_path, kft_process):
    recipe = _recipe_file(tmp_path, shapes)
    full = kft_process.start([str(recipe), "--output", str(tmp_path / "full"), "--quiet"])
    out, _ = full.communicate(timeout=600)
    assert full.returncode == 0, out

    state = tmp_path / "killed" / "checkpoints" / "state.json"
    done = kft_process.kill_after_epoch(
        [str(recipe), "--output", str(tmp_path / "killed"), "--quiet"], state, 2,
        settle=0.3)  # into epoch 3
    assert 2 <= done < 4, f"kill landed after epoch {done}"

    resumed = kft_process.start(
        [str(recipe), "--output", str(tmp_path / "killed"), "--resume", "--quiet"])
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out
    assert f"resuming after epoch {done}" in out
    # The right learning rate: step decay halves it every epoch; the last committed epoch
    # (0-based done - 1) ran at 0.02 * 0.5 ** (done - 1).
    assert f"last learning rate {0.02 * 0.5 ** (done - 1):.3g}" in out

    a = load_model(tmp_path / "full" / "model.keras")
    b = load_model(tmp_path / "killed" / "model.keras")
    for va, vb in zip(a.weights, b.weights, strict=True):
        np.testing.assert_allclose(va.numpy(), vb.numpy(), rtol=1e-4, atol=1e-5, err_msg=va.path)
    rows = (tmp_path / "killed" / "history.csv").read_text().strip().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4"]  # as on screen


# slow tier (accuracy acceptance, ~90 s); the default tier runs and resumes a classification run
@pytest.mark.slow
def test_pretrained_on_other_classes_beats_scratch(tmp_path):
    """Fine-tuning from a checkpoint trained on other classes beats training from scratch when
    the target task has few images per class."""
    source = tmp_path / "source"
    target = tmp_path / "target"
    make_shapes_classification(source, classes=("circle", "square", "triangle", "cross"),
                               per_class=100, val_per_class=10, image_size=32, seed=1)
    make_shapes_classification(target, classes=("ring", "star"), per_class=8,
                               val_per_class=40, image_size=32, seed=2)
    pre = cfg.apply_overrides(_recipe(source, epochs=40, batch_size=32, restart_epochs=40),
                              ["export.enabled=false", "eval.plots=false", "data.image_size=32"])
    run_recipe(pre, tmp_path / "pretrain", verbose=0)

    few = cfg.apply_overrides(_recipe(target, epochs=20, batch_size=8, learning_rate=1e-3,
                                      restart_epochs=20),
                              ["export.enabled=false", "eval.plots=false", "data.image_size=32"])
    scratch = run_recipe(few, tmp_path / "scratch", verbose=0)["metrics"]["accuracy"]
    tuned_recipe = cfg.apply_overrides(few, [f"model.load_from={tmp_path / 'pretrain'}"])
    tuned = run_recipe(tuned_recipe, tmp_path / "tuned", verbose=0)["metrics"]["accuracy"]
    report = json.loads((tmp_path / "tuned" / "load_report.json").read_text())
    assert {m["path"] for m in report["shape_mismatch"]} == {"predictions/kernel",
                                                             "predictions/bias"}
    assert tuned >= scratch + 0.2, (tuned, scratch)


# slow tier (accuracy acceptance, ~90 s); INT8 export itself: tests/export/test_tflite.py
@pytest.mark.slow
def test_quickstart_recipe_int8_within_one_point(tmp_path):
    """The README's quick start: generated data, whole run dir, INT8 within 1 point of Keras."""
    recipe = cfg.load_recipe(REPO / "recipes" / "quickstart_classify.py")
    recipe = cfg.apply_overrides(recipe, [f"data.root={tmp_path / 'shapes'}"])
    summary = run_recipe(recipe, tmp_path / "run", verbose=0)
    assert summary["generated_data"] is True
    assert (tmp_path / "shapes" / "GENERATED.txt").is_file()
    report = json.loads((tmp_path / "run" / "export" / "report.json").read_text())
    assert report["keras"]["num_examples"] == 300
    # a model that learned (3 classes: chance 0.33), so the INT8 comparison means something;
    # the accuracy itself moves with TensorFlow's thread count (float reduction order): >= 0.85
    # serially on 2 threads, 0.8467 (254 / 300) in a one-thread xdist worker
    assert report["keras"]["accuracy"] >= 0.8
    assert abs(report["int8"]["accuracy"] - report["keras"]["accuracy"]) <= 0.01
    assert (tmp_path / "run" / "export" / "model_int8.tflite").stat().st_size < \
        (tmp_path / "run" / "export" / "model_float32.tflite").stat().st_size / 3
