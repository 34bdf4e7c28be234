import json

import pytest
from click.testing import CliRunner

from kft import config as cfg
from kft.cli import main as kft_main
from kft.data import make_shapes_classification
from kft.run import main as run_main
from kft.run import run_recipe


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    make_shapes_classification(tmp / "data", classes=("circle", "square"), per_class=8,
                               val_per_class=4, image_size=32, seed=0)
    recipe = cfg.Recipe(name="cli", data=cfg.Data(root=str(tmp / "data"), image_size=32),
                        model=cfg.Model(arch="resnet_tiny"),
                        train=cfg.Train(epochs=1, batch_size=4, optimizer="adam",
                                        learning_rate=1e-3),
                        export=cfg.Export(enabled=False))
    run_recipe(recipe, tmp / "run", verbose=0)
    return tmp


def test_eval_export_predict(finished_run):
    runner = CliRunner()
    run = finished_run / "run"
    result = runner.invoke(kft_main, ["eval", str(run)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "metrics_eval.json").read_text())
    assert metrics["accuracy"] == json.loads((run / "metrics.json").read_text())["accuracy"]

    result = runner.invoke(kft_main, ["export", str(run), "--formats", "float32",
                                      "--output", str(finished_run / "exp")])
    assert result.exit_code == 0, result.output
    assert (finished_run / "exp" / "model_float32.tflite").is_file()
    report = json.loads((finished_run / "exp" / "report.json").read_text())
    assert report["float32"]["accuracy"] == pytest.approx(report["keras"]["accuracy"])

    image = next((finished_run / "data" / "val" / "circle").iterdir())
    result = runner.invoke(kft_main, ["predict", str(run), str(image), "--top-k", "2"])
    assert result.exit_code == 0, result.output
    top = json.loads(result.output)[0]["top"]
    assert {t["class"] for t in top} == {"circle", "square"}
    assert sum(t["prob"] for t in top) == pytest.approx(1.0, abs=1e-5)


def test_run_command_reports_bad_overrides(tmp_path):
    recipe = tmp_path / "r.py"
    recipe.write_text("from kft.config import Recipe\nRECIPE = Recipe(name='x')\n")
    runner = CliRunner()
    result = runner.invoke(run_main, [str(recipe), "--set", "train.epoch=2"])
    assert result.exit_code == 2
    assert "unknown key 'train.epoch'" in result.output and "train.epochs" in result.output
    result = runner.invoke(run_main, [str(recipe), "--set", "train.epochs=two"])
    assert result.exit_code == 2 and "train.epochs expects int" in result.output
    result = runner.invoke(run_main, [str(recipe), "--output", str(tmp_path / "o")])
    assert result.exit_code == 2 and "data.root is empty" in result.output


def test_eval_without_data_fails_clearly(tmp_path):
    result = CliRunner().invoke(kft_main, ["eval", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "no such run directory" in result.output
