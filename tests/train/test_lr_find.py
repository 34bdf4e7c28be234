"""The learning-rate range test (kft.train.lr_find) and ``kft lr-find`` (kft.cli_lrfind): on an
image folder of photo-sized files (500x375, 333x500, 640x480) whose 21 training images no
batch size of 4 divides, and on kft's generated detection set in its COCO layout."""

import json
import math
from pathlib import Path

import keras
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from kft import config as cfg
from kft.cli_lrfind import lr_find
from kft.train.lr_find import ExponentialRange, lr_range_test, smooth_losses, suggest
from kft.validate import validate_recipe

# (height, width): 500x375 landscape, 333x500 portrait, 640x480 landscape
PHOTO_SIZES = [(375, 500), (500, 333), (480, 640)]
CLASSES = ("blue", "green", "red")  # folder order; image class = the dominant channel
CHANNEL = {"red": 0, "green": 1, "blue": 2}


def _colour_image(rng, height, width, channel):
    pixels = rng.uniform(0, 70, (height, width, 3))
    pixels[..., channel] += 170
    return pixels.astype("uint8")


def write_colour_folder(root: Path, per_class_train=7, per_class_val=2, seed=0) -> Path:
    """``root/{train,val}/<class>/*.jpg`` as an image-folder export lays it out; 3 classes."""
    rng = np.random.default_rng(seed)
    k = 0
    for split, n in (("train", per_class_train), ("val", per_class_val)):
        for name in CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                h, w = PHOTO_SIZES[k % len(PHOTO_SIZES)]
                k += 1
                Image.fromarray(_colour_image(rng, h, w, CHANNEL[name])).save(
                    folder / f"IMG_{i:04d}.jpg", quality=90)
    return root


def _recipe(root, **overrides):
    recipe = cfg.Recipe(
        name="colours", data=cfg.Data(root=str(root), image_size=32, augment="none"),
        model=cfg.Model(arch="resnet_tiny"),
        train=cfg.Train(batch_size=4, optimizer="sgd", learning_rate=0.01),
        eval=cfg.Eval(plots=False), export=cfg.Export(enabled=False))
    recipe = cfg.apply_overrides(recipe, [f"{k}={v}" for k, v in overrides.items()])
    validate_recipe(recipe)
    return recipe


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_colour_folder(tmp_path_factory.mktemp("lrf") / "colours")


@pytest.fixture(scope="module")
def classifier_run(folder, tmp_path_factory):
    """One range test of the tiny ResNet up to a rate that must blow it up (1e4)."""
    out = tmp_path_factory.mktemp("lrf_out") / "lr_find"
    result = lr_range_test(_recipe(folder), out, min_lr=1e-4, max_lr=1e4, num_steps=60)
    return result, out


# --- the schedule and the suggestion rule ---------------------------------------------------


def test_schedule_is_exponential_and_serializable():
    schedule = ExponentialRange(1e-6, 1.0, 25)
    values = np.array([float(schedule(i)) for i in range(30)])
    assert values[0] == pytest.approx(1e-6, rel=1e-6)
    assert values[24] == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose(values[1:25] / values[:24], 10 ** (6 / 24), rtol=1e-4)
    np.testing.assert_allclose(values[24:], 1.0, rtol=1e-5)  # held at max_lr after the end
    restored = keras.saving.deserialize_keras_object(
        json.loads(json.dumps(keras.saving.serialize_keras_object(schedule))))
    assert isinstance(restored, ExponentialRange)
    assert [float(restored(i)) for i in (0, 7, 24)] == [float(schedule(i)) for i in (0, 7, 24)]


def test_suggest_picks_the_steepest_descent_before_the_minimum():
    lrs = [10.0 ** (k / 4 - 5) for k in range(20)]
    # flat, then a fall steepest between steps 8 and 9, a minimum at 14, then a rise
    smoothed = [2.0] * 6 + [1.9, 1.7, 1.3, 0.8, 0.6, 0.5, 0.45, 0.42, 0.40, 0.5, 0.9, 2.0, 5.0,
                            math.nan]
    picked = suggest(lrs, smoothed)
    assert picked["suggested_index"] in (8, 9)
    assert picked["min_loss_index"] == 14
    assert picked["min_loss_lr_div10"] == pytest.approx(lrs[14] / 10)
    # a rate repeated by a skipped step (float16 overflow) does not break the slope
    repeated = suggest([lrs[0]] + lrs, [smoothed[0]] + smoothed)
    assert repeated["suggested_index"] in (9, 10) and repeated["min_loss_index"] == 15
    # a loss that only rises gives no suggestion, and says what to do
    rising = suggest(lrs[:8], [1.0 + 0.1 * k for k in range(8)])
    assert rising["suggested_lr"] is None and "--min-lr" in rising["note"]
    still_falling = suggest(lrs[:8], [2.0 - 0.1 * k for k in range(8)])
    assert still_falling["suggested_lr"] is not None and "--max-lr" in still_falling["note"]


# --- a classifier through the whole test ---------------------------------------------------


def test_the_loss_rises_at_the_high_end_and_the_test_stops(classifier_run):
    result, _ = classifier_run
    assert result["stopped_early"] and result["steps"] < 60
    assert result["diverged_lr"] < 1e4
    smoothed = np.array(result["smoothed"])
    last = smoothed[-1]
    assert not math.isfinite(last) or last > 4.0 * np.nanmin(smoothed[:-1])
    assert result["smoothed"] == pytest.approx(smooth_losses(result["losses"], 0.98),
                                               nan_ok=True)
    # more steps than the 21 images give (6 batches of 4, the last one filled): repeated
    assert result["data"]["steps_per_epoch"] == 6 and result["steps"] > 6


def test_rates_grow_by_a_constant_factor(classifier_run):
    result, _ = classifier_run
    lrs = np.array(result["lrs"])
    assert len(lrs) == result["steps"]
    assert lrs[0] == pytest.approx(1e-4, rel=1e-6)
    np.testing.assert_allclose(lrs[1:] / lrs[:-1], 1e8 ** (1 / 59), rtol=1e-4)


def test_the_suggestion_lies_between_min_lr_and_divergence(classifier_run):
    result, _ = classifier_run
    assert result["rule"] == "steepest descent of the smoothed loss"
    assert 1e-4 < result["suggested_lr"] < result["diverged_lr"]
    assert result["suggested_lr"] <= result["min_loss_lr"] < result["diverged_lr"]
    assert result["min_loss_lr_div10"] == pytest.approx(result["min_loss_lr"] / 10)


def test_the_range_test_learns_the_easy_data(classifier_run):
    """The colour classes are learnt within a few steps: the smoothed loss at the suggested
    rate is well below the one at min_lr (it would stay flat if no rate reached the model)."""
    result, _ = classifier_run
    smoothed = result["smoothed"]
    assert smoothed[result["suggested_index"]] < 0.9 * smoothed[0]
    assert smoothed[result["min_loss_index"]] < 0.5 * smoothed[0]


def test_only_the_plot_and_the_json_are_written(classifier_run):
    result, out = classifier_run
    assert sorted(p.name for p in out.iterdir()) == ["lr_find.json", "lr_find.png"]
    assert result["plot"] == str(out / "lr_find.png")
    with Image.open(out / "lr_find.png") as image:
        assert image.format == "PNG" and min(image.size) > 200

    def refuse(constant):
        raise AssertionError(f"{constant} in lr_find.json")

    saved = json.loads((out / "lr_find.json").read_text(), parse_constant=refuse)
    for key in ("suggested_lr", "min_loss_lr", "steps", "stopped_early", "rule", "lrs"):
        assert saved[key] == result[key]
    finite = [v for v in result["losses"] if math.isfinite(v)]
    assert [v for v in saved["losses"] if v is not None] == finite


def test_load_from_and_frozen_stages_are_applied(folder, classifier_run, tmp_path):
    """A model that already knows the colours, loaded by model.load_from, starts with a far
    lower loss on the same first batch than the scratch model; only the stage the recipe trains
    is trainable."""
    keras.utils.set_random_seed(1)
    from kft.models.classifier import ResNetClassifier

    model = ResNetClassifier.from_arch("resnet_tiny", num_classes=3, image_size=32)
    rng = np.random.default_rng(5)
    labels = np.arange(48) % 3
    x = np.stack([_colour_image(rng, 32, 32, CHANNEL[CLASSES[c]]) for c in labels])
    model.compile(keras.optimizers.Adam(3e-3),
                  keras.losses.CategoricalCrossentropy(from_logits=True))
    model.fit(x.astype("float32"), keras.utils.to_categorical(labels, 3), epochs=6,
              batch_size=8, verbose=0)
    model.save(tmp_path / "colours.keras")

    scratch, _ = classifier_run  # same seed, same first batch: its first loss is comparable
    loaded = lr_range_test(
        _recipe(folder, **{"model.load_from": str(tmp_path / "colours.keras"),
                           "train.trainable_stages": "layer3",
                           "train.layer_lrs": '{"layer3": 0.001}'}),
        tmp_path / "loaded", min_lr=1e-6, max_lr=1e-5, num_steps=5)
    assert "loaded" in loaded["load_from"] and scratch["load_from"] == ""
    assert loaded["losses"][0] < 0.5 * scratch["losses"][0]
    assert loaded["trainable_stages"] == ["layer3"]
    assert scratch["trainable_stages"] == ["stem", "layer1", "layer2", "layer3"]


def test_bad_arguments_are_one_line_errors(folder, tmp_path):
    recipe = _recipe(folder)
    with pytest.raises(cfg.ConfigError, match=r"max_lr=0\.001 must be larger than min_lr"):
        lr_range_test(recipe, tmp_path, min_lr=0.01, max_lr=1e-3)
    with pytest.raises(cfg.ConfigError, match="num_steps=2 must be an integer >= 5"):
        lr_range_test(recipe, tmp_path, num_steps=2)
    with pytest.raises(cfg.ConfigError, match="as long as the whole run"):
        # the run's own plan applies first: a warm-up longer than the run is refused
        lr_range_test(_recipe(folder, **{"train.warmup_steps": 10_000}), tmp_path / "big")


# --- a detector -----------------------------------------------------------------------------


# slow tier (~30 s): the classification range test covers the code path
@pytest.mark.slow
def test_a_detector_recipe_runs_through_it(tmp_path):
    from kft.data import make_shapes_detection

    root = make_shapes_detection(tmp_path / "shapes", num_train=13, num_val=3, max_objects=3,
                                 image_size=[(96, 128), (120, 90), (100, 100)], seed=4)
    recipe = cfg.Recipe(
        name="shapes_det", task="detection",
        data=cfg.Data(root=str(root / "COCO"), format="coco", image_size=64,
                      train_split="train", val_split="val", max_instances=6,
                      detection_augment="none"),
        model=cfg.Model(arch="ssdlite_mobilenet_v2", width_multiplier=0.35),
        train=cfg.Train(batch_size=4, optimizer="adam", learning_rate=1e-3, weight_decay=0.0,
                        trainable_stages=("stride16", "stride32")),
        eval=cfg.Eval(batch_size=4, plots=False), export=cfg.Export(enabled=False))
    validate_recipe(recipe)
    result = lr_range_test(recipe, tmp_path / "out", min_lr=1e-5, max_lr=1e4, num_steps=24)
    assert result["task"] == "detection"
    assert result["data"]["steps_per_epoch"] == 4 and result["steps"] > 4  # 13 images repeated
    assert result["trainable_stages"] == ["stride16", "stride32"]
    lrs = np.array(result["lrs"])
    np.testing.assert_allclose(lrs[1:] / lrs[:-1], 1e9 ** (1 / 23), rtol=1e-4)
    assert all(math.isfinite(v) and v > 0 for v in result["losses"][:3])  # the multibox loss
    assert result["stopped_early"] and 1e-5 < result["suggested_lr"] < result["diverged_lr"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["lr_find.json",
                                                                      "lr_find.png"]


# --- the command ----------------------------------------------------------------------------


def _recipe_file(tmp_path, root) -> Path:
    path = tmp_path / "colours_recipe.py"
    path.write_text(
        "from kft.config import Data, Eval, Export, Model, Recipe, Train\n\n"
        f"RECIPE = Recipe(name='colours', data=Data(root={str(root)!r}, image_size=32, "
        "augment='none'), model=Model(arch='resnet_tiny'), train=Train(batch_size=8), "
        "eval=Eval(plots=False), export=Export(enabled=False))\n")
    return path


def test_cli_prints_the_rate_and_the_set_line(folder, tmp_path, monkeypatch):
    recipe = _recipe_file(tmp_path, folder)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(lr_find, [str(recipe), "--set", "train.batch_size=4",
                                          "--steps", "40", "--min-lr", "1e-4", "--max-lr",
                                          "1e3", "--quiet"])
    assert result.exit_code == 0, (result.output, result.exception)
    out = tmp_path / "runs" / "lr_find" / "colours"  # the default folder
    saved = json.loads((out / "lr_find.json").read_text())
    assert saved["batch_size"] == 4 and saved["num_steps"] == 40  # --set and --steps applied
    lines = result.stdout.splitlines()
    suggested = next(line for line in lines if line.startswith("suggested:"))
    assert "steepest descent of the smoothed loss" in suggested
    use = next(line for line in lines if line.startswith("use it:"))
    value = float(use.split("--set train.learning_rate=")[1])
    assert value == pytest.approx(saved["suggested_lr"], rel=0.06)  # two significant digits
    assert cfg.apply_overrides(cfg.Recipe(), [use.split("--set ")[1]]).train.learning_rate \
        == value
    assert f"plot:       {Path('runs/lr_find/colours/lr_find.png')}" in lines
    assert f"json:       {Path('runs/lr_find/colours/lr_find.json')}" in lines


@pytest.mark.parametrize("args, words", [
    (["--set", "train.batch_sise=4"], ["train.batch_sise", "train.batch_size"]),
    (["--set", "train.batch_size=four"], ["train.batch_size expects int", "'four'"]),
    (["--min-lr", "1e-2", "--max-lr", "1e-3"], ["--max-lr=0.001", "--min-lr=0.01"]),
    (["--steps", "3"], ["--steps=3 must be >= 5"]),
])
def test_cli_bad_input_is_one_line(folder, tmp_path, args, words):
    recipe = _recipe_file(tmp_path, folder)
    out = tmp_path / "never"
    result = CliRunner().invoke(lr_find, [str(recipe), "-o", str(out), *args])
    assert result.exit_code == 2, (result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kft: error: "), result.stderr
    for word in words:
        assert word in lines[0]
    assert "Traceback" not in result.output and not out.exists()
