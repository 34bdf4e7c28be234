"""Every shipped detection recipe's architecture, run as a user would on data laid out like
theirs: a VOC folder of non-square images of several sizes whose split sizes no batch size
divides (56 trainval / 19 test images), and a COCO folder, one short epoch with an in-training
evaluation (``eval.every=1``), to metrics.json and export.

Only data keys and the run length are set (plus, for the two VGG16 recipes, a smaller training
batch, a smaller folder of the same sizes, 13 trainval / 7 test, and float32 export only for
SSD300 and none for SSD512, whose exporter is SSD300's; and fewer INT8 calibration images), so
that the suite stays within its CPU budget; evaluation batch sizes stay the recipes' own (16, 8 and
50), so the last evaluation batch is partial (19 = 16 + 3; 7 < 16 and 8), which is how every
SSD recipe once crashed at its first evaluation; the dry run before training evaluates a full
and a partial batch of 2.
"""

import csv
import json
import re

import pytest

from kft import config as cfg
from kft.data import make_shapes_detection
from kft.run import run_recipe

VOC_NAMES = {"circle": "cat", "square": "dog", "triangle": "person", "star": "car",
             "ring": "bottle"}
# (H, W): VOC-like landscape and portrait photos, a wide and a square one
SIZES = [(375, 500), (500, 375), (281, 500), (333, 333), (240, 427)]
NUM_TRAIN, NUM_VAL = 37, 19


def _write(root, num_train, num_val):
    root = make_shapes_detection(root, num_train=num_train, num_val=num_val, image_size=SIZES,
                                 max_objects=3, seed=5)
    voc = root / "VOC"
    pattern = re.compile(r"<name>(\w+)</name>")
    for xml in (voc / "Annotations").glob("*.xml"):
        xml.write_text(pattern.sub(lambda m: f"<name>{VOC_NAMES[m.group(1)]}</name>",
                                   xml.read_text()))
    return root


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """``{"voc": VOC2007-style folder with VOC class names, "coco": COCO folder}``."""
    root = _write(tmp_path_factory.mktemp("layouts") / "shapes", NUM_TRAIN, NUM_VAL)
    return {"voc": root / "VOC", "coco": root / "COCO"}


@pytest.fixture(scope="module")
def small_voc(tmp_path_factory):
    """A smaller VOC folder for the VGG16 recipes (SSD512: 3x SSD300's compute per image):
    6 train + 7 val = 13 trainval images (no batch size of 4 or 8 divides it), 7 test."""
    return _write(tmp_path_factory.mktemp("small") / "shapes", 6, 7) / "VOC"


def _run(recipe_path, root, run_dir, extra=()):
    recipe = cfg.load_recipe(recipe_path)
    # one epoch: no warm-up (the recipes' own, 1-2 epochs, would be as long as the run)
    recipe = cfg.apply_overrides(recipe, [f"data.root={root}", "train.epochs=1",
                                          "train.warmup_epochs=0", "train.warmup_steps=0",
                                          "eval.every=1", *extra])
    return run_recipe(recipe, run_dir, verbose=0), recipe


def _check_run(run, recipe, num_val=NUM_VAL):
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["num_images"] == num_val
    with open(run / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and "val_bbox_AP50" in rows[0]  # the in-training evaluation ran
    if not recipe.export.enabled:
        assert not list((run / "export").glob("*"))  # nothing exported
        return metrics
    report = json.loads((run / "export" / "report.json").read_text())
    assert report["keras"]["num_images"] == num_val
    for fmt in recipe.export.quantize:
        assert (run / "export" / f"model_{fmt}.tflite").is_file()
        assert report[fmt]["num_images"] == num_val
    if "int8" in recipe.export.quantize:
        assert report["int8"]["size_mb"] < 0.5 * report["float32"]["size_mb"]
        convs = report["int8_ops"]["CONV_2D"]
        if recipe.model.arch.startswith("fasterrcnn_"):
            # every conv in int8 except the RPN's two output convs per level (kept float:
            # the proposals rank raw objectness, int8 logits would rank with ties)
            assert convs["int8"] > convs["float32"] and convs["float32"] in (6, 8, 10)  # 3-5 levels
        else:
            assert set(convs) == {"int8"}
    return metrics


@pytest.mark.slow
def test_ssd300_voc_recipe(small_voc, tmp_path):
    # INT8 export is tested on the SSDLite recipe (VGG16's calibration is slow on a CPU)
    _, recipe = _run("recipes/ssd_voc.py", small_voc, tmp_path / "run",
                     ["data.val_root=" + str(small_voc), "train.batch_size=4",
                      "export.quantize=float32"])
    metrics = _check_run(tmp_path / "run", recipe, num_val=7)
    assert metrics["voc07_mAP"] is not None
    names = json.loads((tmp_path / "run" / "class_names.json").read_text())
    assert len(names) == 20 and "cat" in names  # the 20 VOC classes by default


@pytest.mark.slow
def test_ssd512_voc_recipe(small_voc, tmp_path):
    # no export: SSD300 above exports the same VGG16 detector, at 3x less compute per image
    _, recipe = _run("recipes/ssd512_voc.py", small_voc, tmp_path / "run",
                     ["train.batch_size=4", "export.enabled=false"])
    _check_run(tmp_path / "run", recipe, num_val=7)


# slow tier: SSD's end-to-end run in the default tier is tests/test_detect_e2e.py (VOC)
@pytest.mark.slow
def test_ssdlite_mobilenet_v3_voc_recipe_with_int8(layouts, tmp_path):
    # (SSDLite-MobileNetV2 is the quick start's architecture, below)
    _, recipe = _run("recipes/ssdlite_mobilenet_voc.py", layouts["voc"], tmp_path / "run",
                     ["export.representative_samples=16"])
    _check_run(tmp_path / "run", recipe)


# slow tier: SSD's default-tier run is tests/test_detect_e2e.py; INT8 parity on a trained SSD
# is tests/export/test_detection_export.py
@pytest.mark.slow
def test_quickstart_recipe_on_a_coco_folder(layouts, tmp_path):
    # 37 train images: the quick start's batch of 32 leaves 5 over; 19 val images in batches
    # of 50 are one partial batch
    _, recipe = _run("recipes/quickstart.py", layouts["coco"], tmp_path / "run",
                     ["data.generate=", "data.format=coco", "data.class_names=",
                      "data.train_split=train", "data.val_split=val",
                      "export.quantize=float32,int8", "export.representative_samples=16"])
    metrics = _check_run(tmp_path / "run", recipe)
    assert set(metrics["bbox_per_class_AP"]) == set(VOC_NAMES)  # the JSON's own categories


# Faster R-CNN: the recipes' architectures at a CPU-sized canvas (short side 96, long side at
# most 128 on a 128 x 128 canvas: the non-square images are scaled with their aspect ratio
# kept and padded) and with fewer proposals / RoIs than torchvision's 2000 / 1000 / 512.
FRCNN_SMALL = ["data.image_size=96", "data.max_size=128",
               "model.frcnn.rpn_pre_nms_top_n=300,150",
               "model.frcnn.rpn_post_nms_top_n=150,100",
               "model.frcnn.box_batch_size_per_image=64"]


@pytest.mark.slow
def test_fasterrcnn_r50fpn_voc_recipe(small_voc, tmp_path):
    # no ImageNet preset offline (a random backbone, said in the output); CPU float32; early
    # stopping's held-out slice would be 1 image of 13
    _, recipe = _run("recipes/fasterrcnn_r50fpn_voc.py", small_voc, tmp_path / "run",
                     [*FRCNN_SMALL, "model.preset=", "train.batch_size=4",
                      "train.mixed_precision=", "train.early_stopping_patience=0",
                      "data.val_root=" + str(small_voc), "export.quantize=float32"])
    metrics = _check_run(tmp_path / "run", recipe, num_val=7)
    assert metrics["voc07_mAP"] is not None
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["train"]["trainable_stages"] == ["layer2", "layer3", "layer4"]


@pytest.mark.slow
def test_fasterrcnn_mobilenet_v3_voc_recipe(layouts, tmp_path):
    _, recipe = _run("recipes/fasterrcnn_mobilenet_v3_fpn_voc.py", layouts["voc"],
                     tmp_path / "run", [*FRCNN_SMALL, "export.quantize=float32"])
    _check_run(tmp_path / "run", recipe)


def test_quickstart_frcnn_recipe_on_a_coco_folder_with_int8(layouts, tmp_path):
    _, recipe = _run("recipes/quickstart_frcnn.py", layouts["coco"], tmp_path / "run",
                     ["data.generate=", "data.format=coco", "data.class_names=",
                      "data.train_split=train", "data.val_split=val",
                      "export.quantize=float32,int8", "export.representative_samples=16"])
    metrics = _check_run(tmp_path / "run", recipe)
    assert set(metrics["bbox_per_class_AP"]) == set(VOC_NAMES)
    assert (tmp_path / "run" / "plots" / "predictions.png").is_file()
    # from the shipped 11-class checkpoint: everything but the class-dependent box predictor
    # (class scores, class-specific box regression) loads
    load = json.loads((tmp_path / "run" / "load_report.json").read_text())
    assert load["source"] == "pretrained/frcnn_shapes11.keras"
    assert not load["new"] and not load["unused"] and load["shape_mismatch"]
    assert {m["path"].split("/")[0] for m in load["shape_mismatch"]} == {"box_predictor"}
    # kft predict: the float32 file resizes a non-square photo as the Keras model does
    # (keep-aspect short / long side from the run's config, padded to the file's input)
    from click.testing import CliRunner

    from kft.cli import main

    photo = sorted((layouts["coco"] / "val").glob("*.jpg"))[0]
    outputs = []
    for target in (tmp_path / "run", tmp_path / "run" / "export" / "model_float32.tflite"):
        out = CliRunner().invoke(main, ["predict", str(target), str(photo), "--threshold",
                                        "0.05"])
        assert out.exit_code == 0, out.output
        outputs.append(json.loads(out.output[out.output.index("["):])[0]["detections"])
    keras_dets, tflite_dets = outputs
    assert len(keras_dets) == len(tflite_dets)
    for a, b in zip(keras_dets, tflite_dets, strict=True):
        assert a["class"] == b["class"] and abs(a["score"] - b["score"]) <= 2e-3
        assert max(abs(u - v) for u, v in zip(a["box"], b["box"], strict=True)) <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fasterrcnn_r50fpn_coco_finetune", "fasterrcnn_traffic_signs",
                                  "fasterrcnn_defects"])
def test_fasterrcnn_guide_recipes(name, layouts, tmp_path):
    """R2 from COCO weights (with its float16 mixed precision, T5: trained loss-scaled,
    exported with float32 compute), R3 (anchors fitted to the data, no flips) and R4 (8 px
    anchors, 512 head, CutMix) at the CPU-sized canvas, float32 export."""
    extra = [*FRCNN_SMALL, "model.preset=", "train.early_stopping_patience=0",
             "export.quantize=float32"]
    if name != "fasterrcnn_r50fpn_coco_finetune":
        extra.append("train.mixed_precision=")
    if name == "fasterrcnn_r50fpn_coco_finetune":
        # a stand-in for `kft convert torchvision` output: an R50-FPN Faster R-CNN .keras of
        # 90 classes (COCO's), so the box predictor is a shape mismatch and starts new
        from kft.tasks.detection import build_detector

        base = cfg.apply_overrides(cfg.load_recipe(f"recipes/{name}.py"), FRCNN_SMALL)
        source = build_detector(base.model, base.train, base.eval, 90, 96, base.data)
        source.save(tmp_path / "coco_frcnn.keras")
        extra.append(f"model.load_from={tmp_path / 'coco_frcnn.keras'}")
    _, recipe = _run(f"recipes/{name}.py", layouts["coco"], tmp_path / "run", extra)
    _check_run(tmp_path / "run", recipe)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    if name == "fasterrcnn_r50fpn_coco_finetune":
        assert config["train"]["mixed_precision"] == "float16"
        history = (tmp_path / "run" / "history.csv").read_text().splitlines()
        assert len(history) > 1 and "nan" not in "".join(history[1:]).lower()
        report = json.loads((tmp_path / "run" / "load_report.json").read_text())
        assert {m["path"].split("/")[0] for m in report["shape_mismatch"]} == {"box_predictor"}
        # all the rest came from the source: R50 53 convs + 53 BatchNorms x 4 variables, FPN
        # 16, RPN head 6, box head 4
        assert len(report["loaded"]) == 53 + 53 * 4 + 16 + 6 + 4
        assert not [p for p in report["new"] if "seed" not in p]
    if name == "fasterrcnn_traffic_signs":
        fitted = config["resolved"]["model.frcnn.anchor_sizes"]
        assert len(fitted["to"]) == 5 and "training boxes" in fitted["why"]
    if name == "fasterrcnn_defects":
        assert config["data"]["batch_augment"] == "cutmix"
        assert config["model"]["frcnn"]["anchor_sizes"][0] == [8]
