"""The shipped VOC detection recipes run to the end on a standard VOC folder with one epoch.

The acceptance command is ``python -m kft.run recipes/<recipe>.py --set data.root=<VOC folder>
--set train.epochs=1``; these tests run the same recipes through the same code path (the
recipes' own settings: batch 32, SSD augmentation, float32 + INT8 export) on a VOC-layout folder
written here whose objects carry VOC class names (kft's generated shapes relabelled, so the
recipes' default 20 VOC classes read them).
"""

import json
import re

import pytest

from kft import config as cfg
from kft.data import make_shapes_detection
from kft.run import run_recipe

VOC_NAMES = {"circle": "cat", "square": "dog", "triangle": "person", "star": "car",
             "ring": "bottle"}


@pytest.fixture(scope="module")
def voc_folder(tmp_path_factory):
    """A VOC2007-style folder: 34 trainval images (one batch of 32), 4 test images."""
    root = make_shapes_detection(tmp_path_factory.mktemp("vocrecipe") / "shapes", num_train=30,
                                 num_val=4, image_size=(96, 128), max_objects=3, seed=5)
    voc = root / "VOC"
    pattern = re.compile(r"<name>(\w+)</name>")
    for xml in (voc / "Annotations").glob("*.xml"):
        text = pattern.sub(lambda m: f"<name>{VOC_NAMES[m.group(1)]}</name>", xml.read_text())
        xml.write_text(text)
    return voc


def _run(recipe_path, voc, tmp_path, extra=()):
    recipe = cfg.load_recipe(recipe_path)
    recipe = cfg.apply_overrides(recipe, [f"data.root={voc}", "train.epochs=1", *extra])
    return run_recipe(recipe, tmp_path / "run", verbose=0), tmp_path / "run"


def _check_run(summary, run, formats=("float32", "int8")):
    assert summary["epochs_run"] == 1
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["num_images"] == 4 and metrics["voc07_mAP"] is not None
    report = json.loads((run / "export" / "report.json").read_text())
    for fmt in formats:
        assert (run / "export" / f"model_{fmt}.tflite").is_file()
        assert report[fmt]["size_mb"] > 0 and report[fmt]["latency_ms"] > 0
        assert 0.0 <= report[fmt]["bbox_AP50"] <= 1.0
    # the INT8 file is smaller than the float one (int8 weights)
    assert report["int8"]["size_mb"] < 0.5 * report["float32"]["size_mb"]
    class_names = json.loads((run / "class_names.json").read_text())
    assert len(class_names) == 20 and "cat" in class_names


def test_ssd300_voc_recipe_one_epoch(voc_folder, tmp_path):
    summary, run = _run("recipes/ssd_voc.py", voc_folder, tmp_path,
                        ["data.val_root=" + str(voc_folder)])
    _check_run(summary, run)


def test_ssdlite_voc_recipe_one_epoch_with_int8(voc_folder, tmp_path):
    summary, run = _run("recipes/ssdlite_mobilenet_voc.py", voc_folder, tmp_path)
    _check_run(summary, run)
