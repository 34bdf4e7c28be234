"""The detection run's controls: eval dry run, class-list alignment, freezing and layer-wise
learning rates on detector backbones, early stopping on a train hold-out, and a SIGKILL-resume
that matches an uninterrupted run (COCO-eval values carried across the resume)."""

import csv
import json
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from kft import config as cfg
from kft.data import make_shapes_detection, read_coco
from kft.data.readers.detection import align_classes
from kft.models.backbones.mobilenet import ssdlite_mobilenet_v2
from kft.models.backbones.vgg import ssd_vgg16
from kft.models.ssd import SSD
from kft.run import run_recipe
from kft.train.finetune import stage_lr_multipliers, trainable_stages
from kft.train.optimizers import LayerwiseSGD
from kft.train.runs import compile_for_training

REPO = Path(__file__).resolve().parents[1]
SIZES = [(96, 128), (120, 90), (100, 100)]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes_detection(tmp_path_factory.mktemp("ctl") / "shapes", num_train=21,
                                 num_val=7, image_size=SIZES, max_objects=3, seed=4)


def _recipe(root, **overrides):
    recipe = cfg.Recipe(
        name="ctl", task="detection",
        data=cfg.Data(root=str(root / "COCO"), format="coco", image_size=64,
                      train_split="train", val_split="val", max_instances=6,
                      detection_augment="none"),
        model=cfg.Model(arch="ssdlite_mobilenet_v2", width_multiplier=0.35),
        train=cfg.Train(epochs=2, batch_size=8, optimizer="adam", learning_rate=1e-3,
                        weight_decay=0.0),
        eval=cfg.Eval(batch_size=4, every=1, plots=False),
        export=cfg.Export(enabled=False))
    return cfg.apply_overrides(recipe, [f"{k}={v}" for k, v in overrides.items()])


def test_a_broken_evaluation_fails_before_training(shapes, tmp_path, monkeypatch):
    import kft.tasks.detection as detect

    def broken(*args, **kwargs):
        raise RuntimeError("eval is broken")

    monkeypatch.setattr(detect, "evaluate_detector", broken)
    start = time.time()
    with pytest.raises(RuntimeError, match="eval is broken"):
        run_recipe(_recipe(shapes), tmp_path / "run", verbose=0)
    assert not (tmp_path / "run" / "history.csv").exists()  # no epoch ran
    assert not (tmp_path / "run" / "checkpoints" / "state.json").exists()
    assert time.time() - start < 120


def test_one_predict_graph_serves_the_dry_run_and_every_evaluation(shapes, tmp_path,
                                                                  monkeypatch):
    """The dry run (batches of 2 and 1) and the in-training evaluations (4 + 3 images) share
    one trace; the final evaluation reuses the last epoch's, which scored the same weights."""
    import kft.tasks.detection as detect

    seen = {}
    evaluate = detect.DetectionTask.evaluate

    def spy(self, model, data, recipe):
        seen["traces"] = model.predict_function.experimental_get_tracing_count()
        seen["metrics"] = evaluate(self, model, data, recipe)
        seen["fresh"] = detect.evaluate_detector(model.predict_on_batch, data.val,
                                                 self._val(data, recipe).dataset)
        return seen["metrics"]

    monkeypatch.setattr(detect.DetectionTask, "evaluate", spy)
    run_recipe(_recipe(shapes, **{"train.early_stopping_patience": 0}), tmp_path / "run",
               verbose=0)
    assert seen["traces"] == 1
    assert seen["metrics"]["num_images"] == 7
    for key in ("bbox_AP", "bbox_AP50", "bbox_per_class_AP"):
        assert seen["metrics"][key] == seen["fresh"][key]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["bbox_AP"] == seen["fresh"]["bbox_AP"]


def test_val_classes_are_aligned_by_name_or_refused(shapes, tmp_path):
    train = read_coco(shapes / "COCO", "train", check_images="header")
    data = json.loads((shapes / "COCO" / "annotations" / "instances_val.json").read_text())
    # the same classes with other ids, in the reverse order (the reader orders them by id)
    new_id = {c["id"]: 20 - c["id"] for c in data["categories"]}
    data["categories"] = [{**c, "id": new_id[c["id"]]} for c in data["categories"]]
    for ann in data["annotations"]:
        ann["category_id"] = new_id[ann["category_id"]]
    path = tmp_path / "val_reordered.json"
    path.write_text(json.dumps(data))
    val = read_coco(shapes / "COCO", "val", annotation_file=path, check_images="header")
    assert val.class_names != train.class_names
    aligned = align_classes(train, val, "train.json", "val.json")
    assert aligned.class_names == train.class_names
    for before, after in zip(val.records, aligned.records, strict=True):
        names = [val.class_names[i] for i in before.labels]
        assert [train.class_names[i] for i in after.labels] == names
    # evaluation maps labels back to the val file's own category ids
    name = train.class_names[0]
    own_id = next(c["id"] for c in data["categories"] if c["name"] == name)
    assert aligned.label_to_category[0] == own_id

    data["categories"].append({"id": 99, "name": "hexagon", "supercategory": "shape"})
    data["annotations"][0]["category_id"] = 99
    path.write_text(json.dumps(data))
    extra = read_coco(shapes / "COCO", "val", annotation_file=path, check_images="header")
    with pytest.raises(ValueError, match=r"val\.json has classes \['hexagon'\].*train\.json"):
        align_classes(train, extra, "train.json", "val.json")


def _tiny_ssd(backbone):
    keras.utils.set_random_seed(0)
    return SSD(backbone, 3, head="depthwise")


def test_trainable_stages_and_layer_lrs_on_detector_backbones(shapes):
    model = _tiny_ssd(ssdlite_mobilenet_v2(64, alpha=0.35))
    t = cfg.Train(optimizer="sgd", learning_rate=0.1, trainable_stages=("stride16", "stride32"),
                  layer_lrs={"stride16": 0.01})
    compile_for_training(model, t, steps_per_epoch=1)
    assert trainable_stages(model) == ["stride16", "stride32"]
    paths = {v.path for v in model.trainable_variables}
    assert "Conv1/kernel" not in paths and "block_3_expand/kernel" not in paths
    assert "block_13_expand/kernel" in paths and "extra1_reduce/kernel" in paths
    opt = model.optimizer
    assert opt.multiplier_for("block_7_expand/kernel") == pytest.approx(0.1)
    assert opt.multiplier_for("block_14_expand/kernel") == 1.0
    assert opt.multiplier_for("ssd_head/cls_0/cls_0_pw/kernel") == 1.0

    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    y = {"boxes": np.array([[[5, 5, 40, 40]], [[10, 20, 60, 50]]], "float32"),
         "labels": np.array([[0], [2]], "int32")}
    frozen = {v.path: v.numpy().copy() for v in model.weights if v.path.startswith("Conv1")}
    top = {v.path: v.numpy().copy() for v in model.weights if v.path.startswith("block_14")}
    model.fit(x, y, epochs=1, batch_size=2, verbose=0)
    for v in model.weights:
        if v.path in frozen:
            np.testing.assert_array_equal(v.numpy(), frozen[v.path], err_msg=v.path)
    assert any(not np.array_equal(v.numpy(), top[v.path]) for v in model.weights
               if v.path in top)

    vgg = _tiny_ssd(ssd_vgg16(300))
    sgd = LayerwiseSGD(learning_rate=0.1, lr_multipliers=stage_lr_multipliers(
        vgg, {"block1": 0.0, "head": 0.2}, 0.1))
    assert sgd.multiplier_for("block1_conv2/kernel") == 0.0
    assert sgd.multiplier_for("block5_conv1/kernel") == 1.0  # a stage left at the base rate
    assert sgd.multiplier_for("fc7/kernel") == 1.0
    assert sgd.multiplier_for("conv8_1/kernel") == pytest.approx(2.0)  # new extras: head rate
    assert sgd.multiplier_for("ssd_head/cls_0/kernel") == pytest.approx(2.0)
    with pytest.raises(ValueError, match="unknown stage 'layer4'"):
        stage_lr_multipliers(vgg, {"layer4": 0.01}, 0.1)


# slow tier (~65 s); the hold-out itself is checked in tests/test_detect_e2e.py
@pytest.mark.slow
def test_early_stopping_selects_on_a_train_holdout(shapes, tmp_path):
    summary = run_recipe(_recipe(shapes, **{"train.early_stopping_patience": 2,
                                            "data.val_fraction": 0.2}),
                         tmp_path / "run", verbose=0)
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert report["num_selection"] == 4 and report["num_train"] == 17  # 21 = 17 + 4
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["num_images"] == 7  # the val split, untouched
    assert "4 images held out" in metrics["selection_split"]
    assert summary["epochs_run"] == 2


def _history(run):
    with open(run / "history.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_detection_sigkill_then_resume_matches_an_uninterrupted_run(shapes, tmp_path,
                                                                    kft_process):
    recipe = tmp_path / "det_resume.py"
    recipe.write_text(
        "from kft.config import *\n"
        f"RECIPE = Recipe(name='det_resume', task='detection',\n"
        f"    data=Data(root={str(shapes / 'COCO')!r}, format='coco', image_size=128,\n"
        "              train_split='train', val_split='val', max_instances=6,\n"
        "              detection_augment='ssd', val_fraction=0.3),\n"
        "    model=Model(arch='ssdlite_mobilenet_v2', width_multiplier=0.35, bn_momentum=0.9,\n"
        f"                load_from={str(REPO / 'pretrained' / 'ssdlite_shapes3.keras')!r}),\n"
        "    train=Train(epochs=4, batch_size=8, optimizer='sgd', learning_rate=0.005,\n"
        "                schedule='step', step_epochs=1, gamma=0.5, seed=3,\n"
        "                early_stopping_patience=4),\n"
        "    eval=Eval(batch_size=4, every=2, plots=False, score_threshold=0.0),\n"
        "    export=Export(enabled=False))\n")
    full = kft_process.start([str(recipe), "--output", str(tmp_path / "full"), "--quiet"])
    out, _ = full.communicate(timeout=600)
    assert full.returncode == 0, out

    state = tmp_path / "killed" / "checkpoints" / "state.json"
    done = kft_process.kill_after_epoch(
        [str(recipe), "--output", str(tmp_path / "killed"), "--quiet"], state, 2)
    assert 2 <= done < 4, f"kill landed after epoch {done}"

    resumed = kft_process.start([str(recipe), "--output", str(tmp_path / "killed"),
                                 "--resume", "--quiet"])
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out
    assert f"resuming after epoch {done}" in out
    a = keras.saving.load_model(tmp_path / "full" / "model.keras")
    b = keras.saving.load_model(tmp_path / "killed" / "model.keras")
    for va, vb in zip(a.weights, b.weights, strict=True):
        np.testing.assert_allclose(va.numpy(), vb.numpy(), rtol=1e-4, atol=1e-5,
                                   err_msg=va.path)
    full_rows, resumed_rows = _history(tmp_path / "full"), _history(tmp_path / "killed")
    assert [r["epoch"] for r in resumed_rows] == ["1", "2", "3", "4"]  # as on screen
    # epochs 2 and 4 evaluate; 1 logs 0.0 and 3 carries epoch 2's values, which must survive
    # a resume after epoch 2 (the fine-tuned checkpoint detects something: not 0 against 0)
    for key in ("val_bbox_AP50", "val_bbox_AP", "learning_rate"):
        np.testing.assert_allclose([float(r[key]) for r in resumed_rows],
                                   [float(r[key]) for r in full_rows], rtol=1e-3, atol=1e-4,
                                   err_msg=key)
    assert float(full_rows[2]["val_bbox_AP50"]) == float(full_rows[1]["val_bbox_AP50"])
    assert max(float(r["val_bbox_AP50"]) for r in full_rows) > 0.0  # not 0 against 0


def test_fitted_anchor_sizes_reach_the_model_and_config(shapes, tmp_path):
    """model.frcnn.fit_anchors: the sizes are fitted to the training boxes as the pipeline
    resizes them (keep-aspect to 64 / 96 on a 96 canvas), recorded as a resolved change and
    built into the model."""
    from kft.tasks.detection import DetectionTask, fit_anchor_sizes
    from kft.train.runs import apply_changes

    recipe = _recipe(shapes, **{"model.arch": "fasterrcnn_resnet_tiny_fpn", "data.max_size": 96,
                                "data.resize": "keep_aspect", "model.width_multiplier": 1.0,
                                "model.frcnn.fit_anchors": True})
    task = DetectionTask()
    data = task.read(recipe, tmp_path, "train")
    change = next(c for c in data.resolved if c.key == "model.frcnn.anchor_sizes")
    assert change.old == () and len(change.new) == 4 and "training boxes" in change.reason
    assert change == fit_anchor_sizes(data.train, recipe)        # deterministic: resumes agree
    # the shapes' objects are 10-50 % of a 96-128 px image side, at 64 / 96 of that scale:
    # the fit's smallest anchor is below torchvision-tiny's 16 .. 128 ladder top
    sizes = [s[0] for s in change.new]
    assert sizes == sorted(sizes) and sizes[-1] <= 128
    assert "coverage" in change.reason and "->" in change.reason
    model = task.build_model(apply_changes(recipe, data.resolved), data)
    assert model.anchor_sizes == change.new
    with pytest.raises(cfg.ConfigError, match="remove model.frcnn.anchor_sizes"):
        from kft.validate import validate_recipe

        validate_recipe(cfg.apply_overrides(
            recipe, ["model.frcnn.anchor_sizes=[[8], [16], [32], [64]]"]))


def test_cutmix_reaches_the_training_batches(shapes, tmp_path):
    """data.batch_augment=cutmix (R4): the task's training batches carry pasted rectangles
    and their boxes; evaluation batches are never mixed."""
    from kft.tasks.detection import DetectionTask

    task = DetectionTask()

    def first_epoch(batch_augment):
        recipe = _recipe(shapes, **{"data.batch_augment": batch_augment, "train.epochs": 1})
        data = task.read(recipe, tmp_path / batch_augment, "train")
        return [(np.asarray(x), {k: np.asarray(v) for k, v in y.items()})
                for x, y in task.train_batches(data, recipe, 0).dataset]

    plain, mixed = first_epoch("none"), first_epoch("cutmix")
    assert len(plain) == len(mixed) == 3                            # ceil(21 / 8)
    changed = sum(int(np.any(a[0][i] != b[0][i])) for a, b in zip(plain, mixed, strict=True)
                  for i in range(len(a[0])))
    assert 0 < changed < 24                                         # p = 0.5 per image
    more = sum(int((b[1]["labels"] >= 0).sum() > (a[1]["labels"] >= 0).sum())
               for a, b in zip(plain, mixed, strict=True))
    assert more >= 1                                                # pasted boxes join
    for _, y in mixed:                                              # boxes stay in the image
        valid = y["labels"] >= 0
        assert (y["boxes"][valid] >= 0).all() and (y["boxes"][valid] <= 64).all()
