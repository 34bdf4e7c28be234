"""Issue 9 acceptance: datasets as annotation tools export them train with recipes/ssd_voc.py
and pass ``kft data check`` with only the data root and one split key set.

One generated dataset (images of three sizes and aspect ratios, 13 train / 7 val: no batch
size divides them) is laid out four ways: a VOC folder with custom classes and only
train.txt / val.txt, a CVAT COCO export (annotations/instances_<split>.json + one images/
folder), a Roboflow COCO export (<split>/_annotations.coco.json beside the images, ``valid``)
and an Ultralytics YOLO folder (data.yaml, images/<split>, labels/<split>)."""

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from kft import config as cfg
from kft.cli import main as kft_main
from kft.data.convert import write_yolo
from kft.data.readers.voc import read_voc
from kft.data.shapes import make_shapes_detection
from kft.run import run_recipe

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("circle", "square", "triangle")  # not VOC classes: they must be inferred
SIZES = [(96, 128), (128, 96), (80, 112)]
SPLIT_KEY = {"voc": "train,val", "cvat": "train,val", "roboflow": "train,valid",
             "yolo": "train,val"}


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("layouts")
    shapes = make_shapes_detection(tmp / "shapes", classes=CLASSES, num_train=13, num_val=7,
                                   image_size=SIZES, seed=3)
    (shapes / "GENERATED.txt").unlink(missing_ok=True)  # laid out as a user's own data
    for extra in ("trainval", "test"):  # a custom VOC export: train.txt and val.txt only
        (shapes / "VOC" / "ImageSets" / "Main" / f"{extra}.txt").unlink()
    out = {"voc": shapes / "VOC"}
    coco = shapes / "COCO"
    cvat = tmp / "cvat"  # CVAT "COCO 1.0": annotations/instances_<subset>.json, images/
    (cvat / "annotations").mkdir(parents=True)
    (cvat / "images").mkdir()
    robo = tmp / "roboflow"  # Roboflow "COCO": <split>/_annotations.coco.json beside images
    for split, robo_split in (("train", "train"), ("val", "valid")):
        shutil.copy(coco / "annotations" / f"instances_{split}.json",
                    cvat / "annotations" / f"instances_{split}.json")
        (robo / robo_split).mkdir(parents=True)
        shutil.copy(coco / "annotations" / f"instances_{split}.json",
                    robo / robo_split / "_annotations.coco.json")
        for image in (coco / split).iterdir():
            shutil.copy(image, cvat / "images" / image.name)
            shutil.copy(image, robo / robo_split / image.name)
    out["cvat"], out["roboflow"] = cvat, robo
    yolo = tmp / "yolo"
    for split in ("train", "val"):
        write_yolo(read_voc(shapes / "VOC", split), yolo, split)
    out["yolo"] = yolo
    # CVAT "Pascal VOC 1.1" of one task: a single subset, ImageSets/Main/default.txt
    cvat_voc = tmp / "cvat_voc"
    shutil.copytree(shapes / "VOC", cvat_voc)
    main = cvat_voc / "ImageSets" / "Main"
    ids = [(main / f"{s}.txt").read_text() for s in ("train", "val")]
    (main / "default.txt").write_text("".join(ids))
    for split in ("train", "val"):
        (main / f"{split}.txt").unlink()
    (cvat_voc / "labelmap.txt").write_text(
        "# label:color_rgb:parts:actions\nbackground:0,0,0::\n"
        + "".join(f"{c}:{40 * i},0,0::\n" for i, c in enumerate(CLASSES, 1)))
    out["cvat_voc"] = cvat_voc
    return out


@pytest.mark.parametrize("layout", ["voc", "cvat", "roboflow", "yolo"])
def test_kft_data_check_passes_with_the_root_and_a_split_key(layouts, layout, tmp_path):
    train, val = SPLIT_KEY[layout].split(",")
    result = CliRunner().invoke(kft_main, ["data", "check", str(layouts[layout]), "--split",
                                           train, "--val-split", val, "--out",
                                           str(tmp_path / "check")])
    assert result.exit_code == 0, result.output
    report = json.loads(next((tmp_path / "check").glob("*.json")).read_text())
    text = json.dumps(report)
    assert all(name in text for name in CLASSES)


def _recipe(layouts, layout):
    recipe = cfg.load_recipe(REPO / "recipes" / "ssd_voc.py")
    return cfg.apply_overrides(recipe, [
        f"data.root={layouts[layout]}", f"data.splits={SPLIT_KEY[layout]}",
        # reduced settings for this machine (the layout keys above are all a user sets)
        "model.arch=ssdlite_mobilenet_v2", "model.width_multiplier=0.35",
        "data.image_size=96", "train.epochs=1", "train.batch_size=4",
        "train.warmup_epochs=0", "train.milestones=", "eval.every=1", "eval.batch_size=4",
        "data.max_instances=8", "export.enabled=false", "eval.plots=false"])


FORMAT = {"voc": "voc", "cvat": "coco", "roboflow": "coco", "yolo": "yolo"}


@pytest.mark.parametrize("layout", ["voc", "cvat", "roboflow", "yolo"])
def test_the_runner_reads_each_layout_with_one_split_key(layouts, layout, tmp_path, capsys):
    """What the run reads before training, for every layout (training itself: below)."""
    from kft.tasks.detection import DetectionTask

    data = DetectionTask().read(_recipe(layouts, layout), tmp_path, "train")
    out = capsys.readouterr().out
    resolved = {c.key: c for c in data.resolved}
    assert resolved["data.format"].new == FORMAT[layout]
    assert sorted(data.class_names) == sorted(CLASSES)
    assert data.num_train == 13 and data.num_val == 7 and data.report["num_skipped"] == 0
    assert data.train.num_objects == sum(len(r.boxes) for r in data.train.records) > 13
    if layout == "voc":
        assert "inferred" in resolved["data.class_names"].reason
    if layout in ("cvat", "roboflow"):
        assert "images" in out  # the layout note says where the images were found


@pytest.mark.parametrize("layout", ["voc", "cvat", "roboflow", "yolo"])
def test_a_missing_split_names_the_key_the_splits_found_and_the_fix(layouts, layout, tmp_path):
    """ssd_voc.py's own splits (trainval / test) are in none of these folders: the run stops
    before any work with one line naming the key, the splits there, and data.splits."""
    from kft.tasks.detection import DetectionTask

    train, val = SPLIT_KEY[layout].split(",")
    recipe = cfg.apply_overrides(_recipe(layouts, layout),
                                 ["data.splits=", "data.train_split=trainval",
                                  "data.val_split=test"])
    for key, value, sets in (("data.train_split", "trainval", []),
                             ("data.val_split", "test", [f"data.train_split={train}"])):
        with pytest.raises(cfg.ConfigError) as info:
            DetectionTask().read(cfg.apply_overrides(recipe, sets), tmp_path, "train")
        message = str(info.value)
        assert message.startswith(f"{key}='{value}': ") and "\n" not in message, message
        assert f"'{train}'" in message and f"'{val}'" in message, message  # the splits found
        assert f"set {key} to one of them" in message and "data.splits=TRAIN,VAL" in message


def test_one_split_export_holds_out_its_validation_images(layouts, tmp_path, capsys):
    """A CVAT VOC export of one subset ('default'): data.val_split=holdout validates on a
    seeded data.val_fraction of it, never trained on, and kft eval draws the same images."""
    from kft.tasks.detection import DetectionTask

    recipe = cfg.apply_overrides(_recipe(layouts, "voc"), [
        f"data.root={layouts['cvat_voc']}", "data.splits=default,holdout",
        "data.val_fraction=0.3"])
    data = DetectionTask().read(recipe, tmp_path, "train")
    out = capsys.readouterr().out
    assert "6 of the 20 images of 'default' held out for validation" in out, out
    assert data.num_train == 14 and data.num_val == 6
    train_ids = {r.image_id for r in data.train.records}
    val_ids = [r.image_id for r in data.val.records]
    assert not train_ids & set(val_ids) and len(train_ids | set(val_ids)) == 20
    assert sorted(data.class_names) == sorted(CLASSES)
    assert "held out" in data.val_description and "'default'" in data.val_description
    again = DetectionTask().read(recipe, tmp_path, "eval")
    assert [r.image_id for r in again.val.records] == val_ids
    other = DetectionTask().read(cfg.apply_overrides(recipe, ["train.seed=1"]), tmp_path, "eval")
    assert [r.image_id for r in other.val.records] != val_ids
    # a real split of that name is not silently replaced by the held-out share
    main = layouts["cvat_voc"] / "ImageSets" / "Main"
    (main / "holdout.txt").write_text((main / "default.txt").read_text())
    try:
        with pytest.raises(cfg.ConfigError, match="has a split named 'holdout'"):
            DetectionTask().read(recipe, tmp_path, "train")
    finally:
        (main / "holdout.txt").unlink()
    # without the key: the message lists the split there and names the holdout
    with pytest.raises(cfg.ConfigError, match=r"data.val_split='test'.*\['default'\].*"
                                              r"data.val_split=holdout"):
        DetectionTask().read(cfg.apply_overrides(recipe, ["data.splits=", "data.val_split=test"]),
                             tmp_path, "train")


# slow tier: what the runner reads is checked above for every layout, and the default tier's
# SSD run (tests/test_detect_e2e.py) trains what it reads
@pytest.mark.slow
@pytest.mark.parametrize("layout", ["voc", "cvat", "roboflow", "yolo"])
def test_trains_with_ssd_voc_recipe_and_one_split_key(layouts, layout, tmp_path, capsys):
    recipe = _recipe(layouts, layout)
    summary = run_recipe(recipe, tmp_path / "run", verbose=0)
    out = capsys.readouterr().out
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    fmt = FORMAT[layout]
    assert config["resolved"]["data.format"]["to"] == fmt
    assert json.loads((tmp_path / "run" / "class_names.json").read_text()) == sorted(CLASSES) \
        or json.loads((tmp_path / "run" / "class_names.json").read_text()) == list(CLASSES)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["num_images"] == 7 and summary["metrics"]["bbox_AP50"] is not None
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert report["num_train"] == 13 and report["num_skipped"] == 0
    if layout == "voc":
        assert "inferred" in config["resolved"]["data.class_names"]["why"]
    if layout in ("cvat", "roboflow"):
        assert "images" in out  # the layout note says where the images were found
