"""A detection recipe through `python -m kft.run`'s code path on kft's generated shapes set,
and `kft eval / export / predict` on the finished run."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner
from PIL import Image

from kft import config as cfg
from kft.cli import main as kft_main
from kft.data import SHAPE_CLASSES, make_shapes_detection
from kft.run import run_recipe

SPLITS = {"voc": ("train", "val"), "coco": ("train", "val")}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    # several sizes and aspect ratios; 17 / 5 images: no batch size (8 train, 4 eval) divides
    return make_shapes_detection(tmp_path_factory.mktemp("det") / "shapes", num_train=17,
                                 num_val=5, image_size=[(96, 128), (150, 100), (120, 120)],
                                 max_objects=3, seed=0)


def _recipe(root, fmt, train_split, val_split, **extra):
    recipe = cfg.Recipe(
        name="det", task="detection",
        data=cfg.Data(root=str(root), format=fmt, image_size=128, train_split=train_split,
                      val_split=val_split, max_instances=8, detection_augment="ssd",
                      class_names=SHAPE_CLASSES[:5]),
        model=cfg.Model(arch="ssdlite_mobilenet_v2"),
        train=cfg.Train(epochs=2, batch_size=8, optimizer="adam", learning_rate=1e-3,
                        weight_decay=0.0, early_stopping_patience=3),
        eval=cfg.Eval(batch_size=4, every=1),
        export=cfg.Export(enabled=False))
    return cfg.apply_overrides(recipe, [f"{k}={v}" for k, v in extra.items()])


# the COCO run is in the slow tier: the COCO reader is run by the quick-start FRCNN recipe test
# (tests/test_detect_recipes.py) and the layout tests
@pytest.fixture(scope="module", params=[pytest.param("coco", marks=pytest.mark.slow), "voc"])
def finished_run(request, shapes, tmp_path_factory):
    fmt = request.param
    run = tmp_path_factory.mktemp(f"run_{fmt}") / "run"
    summary = run_recipe(_recipe(shapes / fmt.upper(), fmt, *SPLITS[fmt]), run, verbose=0)
    return fmt, run, summary


def test_detection_run_writes_the_run_directory(finished_run):
    fmt, run, summary = finished_run
    for name in ["config.json", "history.csv", "metrics.json", "model.keras",
                 "data_report.json", "checkpoints/state.json", "plots/training_curves.png"]:
        assert (run / name).is_file(), name
    header = (run / "history.csv").read_text().splitlines()[0]
    assert "val_bbox_AP50" in header and "cls_loss" in header and "learning_rate" in header
    metrics = json.loads((run / "metrics.json").read_text())
    assert isinstance(metrics["bbox_AP50"], float) and metrics["num_images"] == 5
    if fmt == "voc":
        assert metrics["voc07_mAP"] is not None
    assert summary["epochs_run"] == 2
    report = json.loads((run / "data_report.json").read_text())
    # early stopping selects on 2 of the 17 training images (data.val_fraction 0.1)
    assert report["generated"] is True and report["num_train"] == 15
    assert report["num_selection"] == 2 and "2 images held out" in metrics["selection_split"]


def test_detection_run_refuses_unknown_arch_and_no_objects(shapes, tmp_path):
    voc = _recipe(shapes / "VOC", "voc", "train", "val", **{"data.class_names": "cat,dog"})
    with pytest.raises(cfg.ConfigError, match="no usable objects.*data.class_names"):
        run_recipe(voc, tmp_path / "c", verbose=0)
    recipe = _recipe(shapes / "COCO", "coco", "train", "val")
    with pytest.raises(cfg.ConfigError, match="model.arch"):
        run_recipe(cfg.apply_overrides(recipe, ["model.arch=resnet50"]), tmp_path / "b",
                   verbose=0)


@pytest.mark.parametrize("finished_run", ["voc"], indirect=True)
def test_cli_eval_and_predict_on_a_detection_run(finished_run, shapes, tmp_path):
    _, run, _ = finished_run
    runner = CliRunner()
    result = runner.invoke(kft_main, ["eval", str(run)])
    assert result.exit_code == 0, result.output
    assert "bbox AP" in result.output
    again = json.loads((run / "metrics_eval.json").read_text())
    first = json.loads((run / "metrics.json").read_text())
    assert again["bbox_AP50"] == pytest.approx(first["bbox_AP50"])
    assert again["num_images"] == first["num_images"] == 5

    # predict on a .keras file; a copy whose decoder keeps every box (the 2-epoch model scores
    # nothing above 0.01) so there is something to compare with a direct model.detect
    model = keras.saving.load_model(run / "model.keras")
    model.score_threshold = 0.0
    model.save(run / "keep_all.keras")
    image = sorted((shapes / "VOC" / "JPEGImages").iterdir())[0]
    pixels = np.asarray(Image.open(image).convert("RGB"))
    height, width = pixels.shape[:2]
    result = runner.invoke(kft_main, ["predict", str(run / "keep_all.keras"), str(image),
                                      "--score-threshold", "0.0"])
    assert result.exit_code == 0, result.output
    detections = json.loads(result.output)[0]["detections"]
    assert len(detections) == 100
    direct = keras.saving.load_model(run / "keep_all.keras").detect(
        tf.image.resize(pixels[None].astype("float32"), (128, 128)))
    expected = np.asarray(direct["boxes"][0]) * np.array([width, height] * 2) / 128
    np.testing.assert_allclose([d["box"] for d in detections], expected, atol=0.06)
    assert [d["label"] for d in detections] == list(np.asarray(direct["labels"][0]))
    assert {d["class"] for d in detections} <= set(SHAPE_CLASSES[:5])


# slow tier (~60 s: a SavedModel and a conversion): the default tier exports detectors in the
# quick-start FRCNN recipe test and in tests/export/
@pytest.mark.slow
@pytest.mark.parametrize("finished_run", ["voc"], indirect=True)
def test_cli_export_of_a_detection_run(finished_run, tmp_path):
    _, run, _ = finished_run
    result = CliRunner().invoke(kft_main, ["export", str(run), "--formats", "float32",
                                           "--samples", "4", "--output", str(tmp_path / "exp")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "exp" / "report.json").read_text())
    assert (tmp_path / "exp" / "model_float32.tflite").is_file()
    assert report["float32"]["bbox_AP50"] == pytest.approx(report["keras"]["bbox_AP50"],
                                                           abs=1e-3)


def test_cli_eval_of_a_detector_file_without_format_fails_clearly(shapes, tmp_path):
    recipe = _recipe(shapes / "VOC", "voc", "train", "val", **{"train.epochs": 1})
    model_path = tmp_path / "m.keras"
    from kft.tasks.detection import build_detector

    build_detector(recipe.model, recipe.train, recipe.eval, 5, 128).save(model_path)
    result = CliRunner().invoke(kft_main, ["eval", str(model_path), "--data",
                                           str(shapes / "VOC")])
    assert result.exit_code == 2
    assert "data.format=voc" in result.output
