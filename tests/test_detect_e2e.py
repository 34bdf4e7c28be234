"""A detection recipe through `python -m kft.run`'s code path on kft's generated shapes set."""

import json

import pytest

from kft import config as cfg
from kft.data import SHAPE_CLASSES, make_shapes_detection
from kft.run import run_recipe


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes_detection(tmp_path_factory.mktemp("det") / "shapes", num_train=16,
                                 num_val=4, image_size=(96, 128), max_objects=3, seed=0)


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


@pytest.mark.parametrize("fmt,train_split,val_split", [("voc", "train", "val"),
                                                      ("coco", "train", "val")])
def test_detection_run_writes_the_run_directory(shapes, tmp_path, fmt, train_split, val_split):
    root = shapes / fmt.upper()
    summary = run_recipe(_recipe(root, fmt, train_split, val_split), tmp_path / "run",
                         verbose=0)
    run = tmp_path / "run"
    for name in ["config.json", "history.csv", "metrics.json", "model.keras",
                 "data_report.json", "checkpoints/state.json", "plots/training_curves.png"]:
        assert (run / name).is_file(), name
    header = (run / "history.csv").read_text().splitlines()[0]
    assert "val_bbox_AP50" in header and "cls_loss" in header and "learning_rate" in header
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["bbox_AP50"] <= 1.0 and metrics["num_images"] == 4
    if fmt == "voc":
        assert metrics["voc07_mAP"] is not None
    assert summary["epochs_run"] == 2
    report = json.loads((run / "data_report.json").read_text())
    assert report["generated"] is True and report["num_train"] == 16


def test_detection_run_refuses_unknown_arch_and_no_objects(shapes, tmp_path):
    voc = _recipe(shapes / "VOC", "voc", "train", "val", **{"data.class_names": "cat,dog"})
    with pytest.raises(cfg.ConfigError, match="no usable objects.*data.class_names"):
        run_recipe(voc, tmp_path / "c", verbose=0)
    recipe = _recipe(shapes / "COCO", "coco", "train", "val")
    with pytest.raises(cfg.ConfigError, match="model.arch"):
        run_recipe(cfg.apply_overrides(recipe, ["model.arch=resnet50"]), tmp_path / "b",
                   verbose=0)
