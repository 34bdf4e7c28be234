"""``kft predict`` on run directories, .keras and .tflite files, image files and folders as a
user has them (photo sizes, stray files, a broken image), with --save, --format and class
names from every place a model keeps them."""

import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from kft import config as cfg
from kft.cli import main as kft_main
from kft.data import make_shapes_classification, make_shapes_detection, read_voc
from kft.predict import expand_inputs, format_lines, read_class_names
from kft.run import run_recipe

REPO = Path(__file__).resolve().parents[1]
PRETRAINED = REPO / "pretrained" / "ssdlite_shapes3.keras"
PRETRAINED_CLASSES = ["cross", "hexagon", "diamond"]
PHOTO_SIZES = {"a_wide.jpg": (500, 375), "b_tall.png": (333, 500),
               "sub/c_vga.jpg": (640, 480)}  # name -> (width, height)


def _photo():
    from matplotlib import cbook

    return Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A folder as a user has one: photos of three sizes (one in a subfolder), a text file,
    macOS debris and a hidden folder, and a truncated JPEG."""
    root = tmp_path_factory.mktemp("photos") / "holiday"
    photo = _photo()
    for name, size in PHOTO_SIZES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        photo.resize(size).save(root / name)
    (root / "notes.txt").write_text("not an image")
    (root / ".DS_Store").write_bytes(b"\0\1")
    (root / ".thumbs").mkdir()
    photo.save(root / ".thumbs" / "x.jpg")
    data = (root / "a_wide.jpg").read_bytes()
    (root / "broken.jpg").write_bytes(data[: len(data) // 3])
    return root


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory):
    """A finished two-class run with float32 and int8 TFLite files in its export folder."""
    import tensorflow as tf

    from kft.export.tflite import export_tflite
    from kft.saving import load_model

    tmp = tmp_path_factory.mktemp("cls")
    make_shapes_classification(tmp / "data", classes=("circle", "square"), per_class=6,
                               val_per_class=3, image_size=32, seed=0)
    recipe = cfg.Recipe(name="p", data=cfg.Data(root=str(tmp / "data"), image_size=32),
                        model=cfg.Model(arch="resnet_tiny"),
                        train=cfg.Train(epochs=1, batch_size=4, optimizer="adam",
                                        learning_rate=1e-3),
                        export=cfg.Export(enabled=False))
    run = tmp / "run"
    run_recipe(recipe, run, verbose=0)
    rng = np.random.default_rng(0)
    rep = tf.data.Dataset.from_tensor_slices(
        rng.uniform(0, 255, (8, 32, 32, 3)).astype("float32")).batch(1)
    export_tflite(load_model(run / "model.keras"), run / "export", rep,
                  formats=("float32", "int8"), num_calibration=8)
    return run


def _invoke(*args):
    result = CliRunner().invoke(kft_main, ["predict", *map(str, args)])
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def _one_line_error(result, *words):
    assert result.exit_code == 2, (result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kft: error: "), result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


def _keras_probs(run, path):
    """Softmax of the run's model on ``path`` resized by the evaluation pipeline."""
    from kft.data.pipeline import load_image

    model = keras.saving.load_model(run / "model.keras")
    logits = np.asarray(model.predict_on_batch(load_image(path, 32)[None])[0])
    probs = np.exp(logits - logits.max())
    return probs / probs.sum()


def test_expand_inputs_walks_folders_sorted_and_counts_what_it_skips(photos):
    from kft.data.report import DataReport

    report = DataReport()
    single = photos / "b_tall.png"
    images = expand_inputs([single, photos], report)
    assert images[0][0] == single
    assert [p.relative_to(photos).as_posix() for p, _ in images[1:]] == [
        "a_wide.jpg", "b_tall.png", "broken.jpg", "sub/c_vga.jpg"]
    assert [n.as_posix() for _, n in images] == ["b_tall", "holiday/a_wide", "holiday/b_tall",
                                                  "holiday/broken", "holiday/sub/c_vga"]
    skipped = {Path(s["path"]).name: s["field"] for s in report.to_dict()["skipped"]}
    assert skipped == {".DS_Store": "layout", ".thumbs": "layout", "notes.txt": "extension"}


def test_predict_a_run_on_a_folder_with_save(classifier_run, photos, tmp_path):
    out = tmp_path / "drawn"
    result = _invoke(classifier_run, photos, "--save", out, "--top-k", "2")
    rows = json.loads(result.stdout)
    assert len(result.stdout.strip().splitlines()) == len(rows) + 2  # "[", a line each, "]"
    assert [Path(r["image"]).name for r in rows] == ["a_wide.jpg", "b_tall.png", "broken.jpg",
                                                     "c_vga.jpg"]
    assert rows[2]["error"].startswith("cannot read image") and "top" not in rows[2]
    assert "skipped 3 files" in result.stderr and "1 of 4 images could not be read" in \
        result.stderr
    for row in (rows[0], rows[1], rows[3]):
        assert {t["class"] for t in row["top"]} == {"circle", "square"}
        probs = _keras_probs(classifier_run, row["image"])
        for t in row["top"]:
            assert t["prob"] == pytest.approx(float(probs[t["label"]]), abs=1e-5)
        saved = Image.open(row["saved"])
        assert saved.size == Image.open(row["image"]).size  # drawn at the photo's own size
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        "holiday/a_wide.png", "holiday/b_tall.png", "holiday/sub/c_vga.png"]
    drawn = np.asarray(Image.open(out / "holiday" / "a_wide.png").convert("RGB"))
    plain = np.asarray(Image.open(photos / "a_wide.jpg").convert("RGB"))
    assert (np.abs(drawn.astype(int) - plain).sum(axis=-1) > 60).mean() > 0.002  # the label


def test_tflite_in_the_runs_export_folder_predicts_as_keras(classifier_run, photos):
    tflite = classifier_run / "export" / "model_float32.tflite"
    result = _invoke(tflite, photos / "a_wide.jpg", photos / "sub" / "c_vga.jpg",
                     "--format", "jsonl", "--top-k", "2")
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2
    for line in lines:
        row = json.loads(line)
        probs = _keras_probs(classifier_run, row["image"])
        assert {t["class"] for t in row["top"]} == {"circle", "square"}  # the run's names
        for t in row["top"]:
            assert t["prob"] == pytest.approx(float(probs[t["label"]]), abs=1e-4)
    # the int8 file takes uint8 pixels: same names, probabilities that sum to one
    result = _invoke(classifier_run / "export" / "model_int8.tflite", photos / "b_tall.png",
                     "--top-k", "2")
    top = json.loads(result.stdout)[0]["top"]
    assert {t["class"] for t in top} == {"circle", "square"}
    assert sum(t["prob"] for t in top) == pytest.approx(1.0, abs=1e-4)


def test_a_bare_tflite_takes_names_from_beside_it(classifier_run, photos, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(classifier_run / "export" / "model_float32.tflite", bare / "m.tflite")
    image = photos / "b_tall.png"
    result = _invoke(bare / "m.tflite", image, "--format", "table")
    assert "no class names" in result.stderr
    assert result.stdout.split()[1] in ("0", "1")  # numbers, and said so

    (bare / "class_names.json").write_text(json.dumps(["disc", "box"]))
    result = _invoke(bare / "m.tflite", image, "--format", "table")
    assert result.stdout.split()[1] in ("disc", "box") and result.stderr == ""
    (bare / "m.json").write_text(json.dumps({"classes": ["round", "boxy"], "epochs": 3}))
    result = _invoke(bare / "m.tflite", image, "--format", "table")
    assert result.stdout.split()[1] in ("round", "boxy")  # <stem>.json first

    (bare / "m.json").write_text(json.dumps(["a", "b", "c"]))
    _one_line_error(CliRunner().invoke(kft_main, ["predict", str(bare / "m.tflite"),
                                                  str(image)]),
                    str(bare / "m.json"), "3 class names", "predicts 2 classes")
    (bare / "m.json").write_text("{not json")
    _one_line_error(CliRunner().invoke(kft_main, ["predict", str(bare / "m.tflite"),
                                                  str(image)]), "m.json", "not a JSON list")


@pytest.fixture(scope="module")
def shapes3(tmp_path_factory):
    """Generated 128 px images of the pretrained checkpoint's own classes (its training
    domain: a fixed resize stretches other aspect ratios, which changes the shapes)."""
    root = make_shapes_detection(tmp_path_factory.mktemp("det") / "shapes",
                                 classes=tuple(PRETRAINED_CLASSES), num_train=1, num_val=4,
                                 image_size=128, max_objects=3, seed=3)
    return read_voc(root / "VOC", "val", class_names=PRETRAINED_CLASSES)


def _iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union


def test_the_shipped_checkpoint_prints_its_class_names(shapes3, tmp_path):
    images = [r.image_path for r in shapes3.records]
    big = tmp_path / "big.png"  # the first image at 2.5x: boxes come back in its own pixels
    Image.open(images[0]).resize((320, 320), Image.NEAREST).save(big)
    result = _invoke(PRETRAINED, *images, big, "--threshold", "0.5", "--save", tmp_path / "out")
    rows = json.loads(result.stdout)
    assert result.stderr == ""  # names found in pretrained/ssdlite_shapes3.json ("classes")
    found = matched = 0
    for record, row in zip(shapes3.records, rows, strict=False):
        dets = row["detections"]
        assert dets and all(d["score"] >= 0.5 for d in dets)
        assert all(d["class"] == PRETRAINED_CLASSES[d["label"]] for d in dets)
        for box, label in zip(record.boxes, record.labels, strict=True):
            found += 1
            matched += any(d["label"] == label and _iou(d["box"], box) > 0.5 for d in dets)
        assert Image.open(row["saved"]).size == (record.width, record.height)
    assert matched >= found - 1, (matched, found)
    small, large = rows[0]["detections"], rows[-1]["detections"]
    assert [d["class"] for d in large] == [d["class"] for d in small]
    np.testing.assert_allclose([d["box"] for d in large],
                               [[2.5 * v for v in d["box"]] for d in small], atol=4.0)
    assert Image.open(rows[-1]["saved"]).size == (320, 320)
    table = _invoke(PRETRAINED, images[0], "--format", "table").stdout
    first = table.split("detections: " if "detections: " in table else "detection: ")[1]
    assert first.split()[0] in PRETRAINED_CLASSES, table


def _tiny_detector():
    """A small SSD on a non-square 96x128 input (fast to export), random weights."""
    from kft.models.ssd import SSD

    keras.utils.set_random_seed(1)
    images = keras.Input((96, 128, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(images)
    a = keras.layers.Conv2D(16, 3, strides=8, padding="same", activation="relu")(x)
    b = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(a)
    backbone = keras.Model(images, {"a": a, "b": b})
    backbone.level_names = ("a", "b")
    return SSD(backbone, 3, head="conv", score_threshold=0.0, max_detections=20)


def test_a_detector_tflite_predicts_as_its_keras_model(photos, tmp_path):
    from kft.export.detection import export_detector
    from kft.tasks.detection import DetectionTask

    model = _tiny_detector()
    rng = np.random.default_rng(0)
    paths = export_detector(model, tmp_path, [rng.uniform(0, 255, (1, 96, 128, 3))
                                              .astype("float32")], formats=("float32",))
    (tmp_path / "model_float32.json").write_text(json.dumps({"classes": ["x", "y", "z"]}))
    image = photos / "b_tall.png"  # 333x500: another aspect ratio than the model's input
    result = _invoke(paths["float32"], image, "--threshold", "0.0")
    got = json.loads(result.stdout)[0]["detections"]
    pixels = np.asarray(Image.open(image).convert("RGB"))
    want = DetectionTask().predict(model, pixels, ["x", "y", "z"], score_threshold=0.0)
    want = want["detections"]
    assert len(got) == len(want) == 20
    confident = [i for i, d in enumerate(want) if d["score"] > want[-1]["score"] + 1e-3]
    assert len(confident) >= 5
    for i in confident:
        assert got[i]["class"] == want[i]["class"] and got[i]["label"] == want[i]["label"]
        assert got[i]["score"] == pytest.approx(want[i]["score"], abs=2e-4)
        np.testing.assert_allclose(got[i]["box"], want[i]["box"], atol=0.15)
        assert 0 <= got[i]["box"][0] <= got[i]["box"][2] <= 333
        assert 0 <= got[i]["box"][1] <= got[i]["box"][3] <= 500


def test_predict_user_errors_are_one_line(classifier_run, photos, tmp_path):
    runner = CliRunner()
    image = photos / "a_wide.jpg"
    _one_line_error(runner.invoke(kft_main, ["predict", str(classifier_run),
                                             str(tmp_path / "missing.jpg")]),
                    "missing.jpg", "no such image file or folder")
    only_text = tmp_path / "texts"
    only_text.mkdir()
    (only_text / "a.txt").write_text("x")
    _one_line_error(runner.invoke(kft_main, ["predict", str(classifier_run), str(only_text)]),
                    "no image files", ".jpg")
    _one_line_error(runner.invoke(kft_main, ["predict", str(tmp_path / "no_run"), str(image)]),
                    "no such run directory or model file")
    unfinished = tmp_path / "unfinished"
    (unfinished / "export").mkdir(parents=True)
    shutil.copy(classifier_run / "export" / "model_float32.tflite", unfinished / "export")
    _one_line_error(runner.invoke(kft_main, ["predict", str(unfinished), str(image)]),
                    "no model.keras", "model_float32.tflite")
    (tmp_path / "junk.tflite").write_bytes(b"not a flatbuffer at all")
    _one_line_error(runner.invoke(kft_main, ["predict", str(tmp_path / "junk.tflite"),
                                             str(image)]), "junk.tflite", "cannot use")
    (tmp_path / "weights.h5").write_bytes(b"x")
    _one_line_error(runner.invoke(kft_main, ["predict", str(tmp_path / "weights.h5"),
                                             str(image)]), "not a model", ".tflite")


def test_format_lines_and_class_name_files(tmp_path):
    rows = [{"image": "a.png", "top": [{"label": 1, "class": "cat", "prob": 0.75}]},
            {"image": "b.png", "detections": [{"label": 0, "class": "dog", "score": 0.5,
                                               "box": [1.0, 2.5, 30.0, 40.0]}]},
            {"image": "c.png", "error": "cannot read image: truncated"}]
    assert json.loads("\n".join(format_lines(iter(rows)))) == rows
    assert json.loads("\n".join(format_lines(iter([])))) == []
    assert [json.loads(x) for x in format_lines(iter(rows), "jsonl")] == rows
    assert list(format_lines(iter(rows), "table")) == [
        "a.png  cat 0.750", "b.png  1 detection: dog 0.50 [1 2.5 30 40]",
        "c.png  error: cannot read image: truncated"]
    path = tmp_path / "n.json"
    path.write_text(json.dumps({"made_by": "x"}))
    assert read_class_names(path, required=False) is None
    with pytest.raises(cfg.ConfigError, match="n.json"):
        read_class_names(path)
    path.write_text(json.dumps([1, 2]))
    with pytest.raises(cfg.ConfigError, match="list of class names"):
        read_class_names(path, required=False)
