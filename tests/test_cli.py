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
                                        learning_rate=1e-3, warmup_epochs=0.5),
                        export=cfg.Export(enabled=False))
    run_recipe(recipe, tmp / "run", verbose=0)
    return tmp


def test_a_runs_config_gives_its_warmup_once(finished_run, tmp_path):
    """warmup_epochs (as quickstart_classify has) becomes warmup_steps in config.json, and
    only those: a run saved with both (kft before the fix) reads back with its steps."""
    from kft.run import read_config

    saved = json.loads((finished_run / "run" / "config.json").read_text())
    assert saved["train"]["warmup_steps"] == 2 and saved["train"]["warmup_epochs"] == 0
    assert saved["resolved"]["train.warmup_steps"]["to"] == 2
    saved["train"]["warmup_epochs"] = 0.5
    (tmp_path / "config.json").write_text(json.dumps(saved))
    recipe = read_config(tmp_path / "config.json")
    assert (recipe.train.warmup_steps, recipe.train.warmup_epochs) == (2, 0.0)
    assert saved["resolved"]["train.warmup_epochs"]["to"] == 0  # the clearing is recorded
    saved["train"]["warmup_epochs"] = None  # hand-edited: validation's message, no traceback
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert read_config(tmp_path / "config.json").train.warmup_epochs is None


def test_resume_with_a_new_warmup_in_epochs_replaces_the_saved_steps(finished_run, tmp_path):
    """config.json holds the warm-up in steps; --resume --set train.warmup_epochs=... must not
    be refused for giving both."""
    from kft.run import _unvalidated

    run = finished_run / "run"
    recipe_file = tmp_path / "r.py"
    recipe_file.write_text("from kft.config import Recipe\nRECIPE = Recipe(name='cli')\n")
    recipe, _, _ = _unvalidated(str(recipe_file), ["train.warmup_epochs=0.25"], str(run),
                                resume=True)
    assert (recipe.train.warmup_steps, recipe.train.warmup_epochs) == (0, 0.25)
    recipe, _, _ = _unvalidated(str(recipe_file), ["train.epochs=2"], str(run), resume=True)
    assert (recipe.train.warmup_steps, recipe.train.warmup_epochs) == (2, 0.0)


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


# --- B12: a user mistake is one line, exit status 2, no traceback, no half-made run dir -----


def _recipe_file(tmp_path, task="classification", root=None):
    root = root or tmp_path / "data"
    path = tmp_path / f"{task}.py"
    if task == "classification":
        body = (f"RECIPE = Recipe(name='c', data=Data(root={str(root)!r}, image_size=32),\n"
                "    model=Model(arch='resnet_tiny'), train=Train(epochs=1, batch_size=2),\n"
                "    export=Export(enabled=False))\n")
    else:
        body = (f"RECIPE = Recipe(name='d', task='detection', data=Data(root={str(root)!r},\n"
                "    format='voc', image_size=300), model=Model(arch='ssd300_vgg16'))\n")
    path.write_text("from kft.config import Data, Export, Model, Recipe, Train\n" + body)
    return path


def _user_error(result, *words):
    """Exit status 2 and one ``kft: error:`` line holding ``words``; no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception  # nothing escaped
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kft: error: "), result.stderr
    assert "Traceback" not in result.output
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


BAD_SETS = [
    ("classification", "export.quantize=none", ["export.quantize=none", "float32, float16, int8"]),
    ("classification", "export.quantize=int4", ["export.quantize=int4", "float32, float16, int8"]),
    ("classification", "train.optimizer=adamx", ["train.optimizer='adamx'", "sgd, adamw, adam"]),
    ("classification", "model.arch=resnet19", ["model.arch='resnet19'", "resnet18, resnet34"]),
    ("classification", "train.schedule=cosine", ["train.schedule='cosine'", "cosine_restarts"]),
    ("classification", "train.learning_rate=-1", ["train.learning_rate=-1.0", "> 0"]),
    ("detection", "eval.every=-1", ["eval.every=-1", ">= 0"]),
    ("classification", "data.detection_augment=ssd", ["data.detection_augment='ssd'",
                                                      "task 'classification'"]),
    ("detection", "model.head=mlp", ["model.head='mlp'", "task 'detection'"]),
    ("classification", "train.epoch=3", ["unknown key 'train.epoch'",
                                         "did you mean 'train.epochs'?"]),
]


@pytest.mark.parametrize("task,override,words", BAD_SETS, ids=[b[1] for b in BAD_SETS])
def test_bad_value_fails_before_any_work(tmp_path, task, override, words):
    recipe = _recipe_file(tmp_path, task)
    out = tmp_path / "runs" / "r"
    result = CliRunner().invoke(run_main, [str(recipe), "--set", override, "-o", str(out)])
    _user_error(result, *words)
    assert not (tmp_path / "runs").exists()


def test_kft_train_reports_bad_values_too(tmp_path):
    recipe = _recipe_file(tmp_path)
    result = CliRunner().invoke(kft_main, ["train", str(recipe), "--set",
                                           "export.quantize=none", "-o", str(tmp_path / "o")])
    _user_error(result, "export.quantize=none")
    assert not (tmp_path / "o").exists()


def test_bad_value_in_a_subprocess_is_one_line_and_quick(tmp_path):
    """The headline case end to end: before, the run trained to the end and died at export
    with a traceback. Now: one line, exit 2, and TensorFlow is not even imported."""
    import os
    import subprocess
    import sys
    import time

    recipe = _recipe_file(tmp_path)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("KFT_TRACEBACK", None)
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "kft.run", str(recipe),
                           "--set", "export.quantize=none", "-o", str(tmp_path / "o")],
                          capture_output=True, text=True, env=env, timeout=120)
    seconds = time.time() - t0
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("import time:")]
    assert errors == ["kft: error: export.quantize=none is not valid (unknown 'none'): give a "
                      "comma-separated list of distinct values from float32, float16, int8"]
    assert "| tensorflow" not in proc.stderr and "| keras" not in proc.stderr
    assert not (tmp_path / "o").exists() and seconds < 60


@pytest.mark.parametrize("source,words", [
    ("from kft.config import Recipe\nRECIPE = Recipe(name='x'\n", ["r.py:2: syntax error"]),
    ("from kft.config import Recipe\n\nRECIPE = Recipe(nam='x')\n",
     ["r.py:3: the recipe raised TypeError", "'nam'"]),
    ("import kft_no_such_module\n", ["r.py:1: the recipe raised ModuleNotFoundError"]),
])
def test_broken_recipe_file_names_file_and_line(tmp_path, source, words):
    recipe = tmp_path / "r.py"
    recipe.write_text(source)
    _user_error(CliRunner().invoke(run_main, [str(recipe)]), *words)


def _images(folder, n):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (16, 16), (40 * i % 255, 0, 0)).save(folder / f"{i}.png")


@pytest.mark.parametrize("layout,words", [
    ("empty", ["is empty", "<class>/<image files>"]),
    ("loose", ["has no class folders", "4 image files lie directly"]),
    ("one_class", ["1 class folder (cat)", "at least 2 classes"]),
])
def test_unusable_image_folder_is_one_line_and_leaves_no_run_dir(tmp_path, layout, words):
    root = tmp_path / "data"
    root.mkdir()
    if layout == "loose":
        _images(root, 4)
    elif layout == "one_class":
        _images(root / "cat", 4)
    recipe = _recipe_file(tmp_path, root=root)
    out = tmp_path / "runs" / "r"
    message = _user_error(CliRunner().invoke(run_main, [str(recipe), "-o", str(out)]), *words)
    assert str(root) in message
    assert not (tmp_path / "runs").exists()  # what the failed call created is gone


def _fake_run(tmp_path, recipe, class_names):
    """A run directory as a killed run leaves it (no training needed to test the checks)."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    cfg.save_json(recipe, run / "config.json")
    (run / "class_names.json").write_text(json.dumps(class_names))
    (run / "model.keras").write_bytes(b"not read: the checks come first")
    return run


def test_resume_with_other_data_names_the_keys_that_differ(tmp_path):
    _images(tmp_path / "a" / "cat", 2)
    _images(tmp_path / "a" / "dog", 2)
    recipe_path = _recipe_file(tmp_path, root=tmp_path / "a")
    run = _fake_run(tmp_path, cfg.load_recipe(recipe_path), ["cat", "dog"])
    args = [str(recipe_path), "-o", str(run), "--resume"]
    result = CliRunner().invoke(run_main, args + ["--set", f"data.root={tmp_path / 'b'}",
                                                  "--set", "model.num_classes=3"])
    message = _user_error(result, "--resume", "data.root", "model.num_classes (0 -> 3)",
                          str(run / "config.json"))
    assert "train.epochs" not in message
    # The same root, but a class folder was added since: named against class_names.json.
    _images(tmp_path / "a" / "emu", 2)
    result = CliRunner().invoke(run_main, args)
    _user_error(result, "now has 3 classes (cat, dog, emu)", "trained on 2 (cat, dog")
    assert (run / "config.json").is_file()  # a run directory that existed is kept


def test_resume_may_change_training_keys(tmp_path):
    from kft.run import check_resume

    _images(tmp_path / "a" / "cat", 2)
    _images(tmp_path / "a" / "dog", 2)
    recipe = cfg.load_recipe(_recipe_file(tmp_path, root=tmp_path / "a"))
    run = _fake_run(tmp_path, recipe, ["cat", "dog"])
    check_resume(cfg.apply_overrides(recipe, ["train.epochs=9", "train.learning_rate=0.5"]), run)


def test_eval_and_export_validate_before_loading_the_model(tmp_path):
    recipe = cfg.load_recipe(_recipe_file(tmp_path))
    run = _fake_run(tmp_path, recipe, ["cat", "dog"])  # model.keras is not a model
    runner = CliRunner()
    _user_error(runner.invoke(kft_main, ["eval", str(run), "--set", "eval.batch_size=0"]),
                "eval.batch_size=0", ">= 1")
    _user_error(runner.invoke(kft_main, ["eval", str(run), "--set", "data.format=coco"]),
                "data.format='coco'", "task 'classification'")
    _user_error(runner.invoke(kft_main, ["export", str(run), "--formats", "float32,int4"]),
                "--formats=float32,int4", "float32, float16, int8")
    _user_error(runner.invoke(kft_main, ["export", str(run), "--set", "train.epoch=1"]),
                "did you mean 'train.epochs'?")
    # with valid settings the broken model file is named, not a zip traceback
    _user_error(runner.invoke(kft_main, ["eval", str(run)]), "model.keras",
                "cannot load the Keras model")


def test_predict_with_a_broken_model_file(tmp_path):
    model = tmp_path / "m.keras"
    model.write_bytes(b"garbage")
    _images(tmp_path / "img", 1)
    image = tmp_path / "img" / "0.png"
    _user_error(CliRunner().invoke(kft_main, ["predict", str(model), str(image)]),
                "m.keras", "cannot load the Keras model")


def test_eval_on_data_with_another_class_count(finished_run, tmp_path):
    make_shapes_classification(tmp_path / "three", classes=("circle", "square", "star"),
                               per_class=2, val_per_class=2, image_size=32, seed=1)
    result = CliRunner().invoke(kft_main, ["eval", str(finished_run / "run"), "--data",
                                           str(tmp_path / "three")])
    _user_error(result, "the model predicts 2 classes", "has 3")


@pytest.mark.parametrize("trained", [False, True])
def test_a_failed_run_keeps_its_directory_only_once_training_began(tmp_path, monkeypatch,
                                                                   trained):
    import kft.train.runs

    def failing_run(task, recipe, run_dir, resume=False, verbose=1):
        (run_dir / "checkpoints").mkdir(parents=True)
        if trained:
            (run_dir / "history.csv").write_text("epoch,loss\n")
        raise ValueError("bad input found late")

    monkeypatch.setattr(kft.train.runs, "run_task", failing_run)
    recipe = cfg.Recipe(name="x", data=cfg.Data(root=str(tmp_path)))
    out = tmp_path / "new" / "run"
    with pytest.raises(ValueError, match="late"):
        run_recipe(recipe, out, verbose=0)
    assert out.exists() == trained and (tmp_path / "new").exists() == trained


def test_predict_resizes_as_the_pipeline_does(finished_run, tmp_path):
    """A large photo-sized image with fine detail: kft predict gives the probabilities of the
    evaluation pipeline's own preprocessing (PIL's antialiased resize would not)."""
    import keras
    import numpy as np
    from PIL import Image

    from kft.data.pipeline import load_image

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (300, 410, 3), dtype=np.uint8)
    pixels[::2] = 255 - pixels[::2]  # stripes a downscale must not blur differently
    path = tmp_path / "photo.png"
    Image.fromarray(pixels).save(path)
    run = finished_run / "run"
    result = CliRunner().invoke(kft_main, ["predict", str(run), str(path), "--top-k", "2"])
    assert result.exit_code == 0, result.output
    got = {t["class"]: t["prob"] for t in json.loads(result.output)[0]["top"]}
    model = keras.saving.load_model(run / "model.keras")
    logits = model.predict_on_batch(load_image(path, 32)[None])[0]
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    names = json.loads((run / "class_names.json").read_text())
    for i, name in enumerate(names):
        assert got[name] == pytest.approx(float(probs[i]), abs=1e-5)


# --- issue 9: threads, quiet TensorFlow, generation at a --set root, optional commands -------

TF_LOG_LINE = __import__("re").compile(
    r"^(\d{4} \d\d:\d\d:\d\d\.\d+: [IWE] |[IWEF]\d{4} |WARNING: All log messages before absl)")


def _env_without_log_level():
    import os

    return {k: v for k, v in os.environ.items()
            if k not in ("TF_CPP_MIN_LOG_LEVEL", "KFT_TRACEBACK")}


def test_threads_are_applied_before_tensorflow_runs_and_its_log_stays_quiet(tmp_path):
    """In a fresh process: ``--threads 3`` reaches TensorFlow's thread pools although the
    run then stops (its data folder is missing), and no TensorFlow C++ log line reaches
    stderr with the default log level."""
    import subprocess
    import sys

    recipe = _recipe_file(tmp_path, root=tmp_path / "no_such_folder")
    code = (
        "import sys\n"
        "from kft.run import main\n"
        "try:\n"
        f"    main([{str(recipe)!r}, '--threads', '3', '-o', {str(tmp_path / 'o')!r}])\n"
        "except SystemExit as e:\n"
        "    status = e.code\n"
        "import tensorflow as tf\n"
        "tf.constant(1.0) + 1.0\n"
        "t = tf.config.threading\n"
        "print(status, t.get_intra_op_parallelism_threads(),"
        " t.get_inter_op_parallelism_threads())\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=_env_without_log_level(), timeout=300)
    assert proc.stdout.split() == ["2", "3", "3"], (proc.stdout, proc.stderr)
    assert "no_such_folder" in proc.stderr
    assert not [line for line in proc.stderr.splitlines() if TF_LOG_LINE.match(line)], \
        proc.stderr


def test_import_kft_sets_the_tf_log_level_unless_the_user_did():
    import subprocess
    import sys

    code = "import os, kft; print(os.environ['TF_CPP_MIN_LOG_LEVEL'])"
    env = _env_without_log_level()
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60).stdout.strip() == "2"
    assert subprocess.run([sys.executable, "-c", code], env={**env, "TF_CPP_MIN_LOG_LEVEL": "0"},
                          capture_output=True, text=True, timeout=60).stdout.strip() == "0"


def test_the_start_up_filter_hides_tensorflow_noise_only():
    from kft import _hidden

    noise = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 00:00:1796223643.450571    5372 port.cc:153] oneDNN custom operations are on.",
        "W0000 00:00:1796223643.450904    5372 cudart_stub.cc:31] Could not find cuda drivers",
        "2024-05-01 12:00:00.123456: I tensorflow/core/util/port.cc:113] oneDNN custom ops",
        "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",
        "fully_quantize: 0, inference_type: 6, input_inference_type: FLOAT32, "
        "output_inference_type: FLOAT32",
    ]
    assert all(_hidden(line, no_gpu=False) for line in noise)
    cu_init = ("E0000 00:00:1796223785.352216    7742 cuda_platform.cc:52] failed call to "
               "cuInit: INTERNAL: CUDA error")
    assert _hidden(cu_init, no_gpu=True) and not _hidden(cu_init, no_gpu=False)
    for kept in ["E0000 00:00:1796223785.3 77 dso_loader.cc:9] libcudnn.so.9: not found",
                 "UserWarning: something the user should see",
                 "I0000 is how a sentence could start"]:
        assert not _hidden(kept, no_gpu=True), kept


@pytest.mark.parametrize("command", [[], ["eval", "RUN"], ["export", "RUN"],
                                     ["predict", "RUN", "img.png"]])
def test_negative_threads_is_one_line(tmp_path, command):
    recipe = _recipe_file(tmp_path)
    args = ([str(recipe)] if not command else [c.replace("RUN", str(tmp_path / "run"))
                                               for c in command]) + ["--threads", "-1"]
    result = CliRunner().invoke(run_main if not command else kft_main, args)
    _user_error(result, "--threads=-1", "0 (TensorFlow's default) or a positive number")


def _generating_recipe(tmp_path):
    path = tmp_path / "gen.py"
    path.write_text(
        "from kft.config import Data, Export, Model, Recipe, Train\n"
        f"RECIPE = Recipe(name='g', data=Data(root={str(tmp_path / 'generated')!r},\n"
        "    generate='shapes', image_size=32), model=Model(arch='resnet_tiny'),\n"
        "    train=Train(epochs=1, batch_size=2), export=Export(enabled=False))\n")
    return path


def test_a_template_never_generates_at_a_set_data_root(tmp_path, monkeypatch):
    import kft.train.runs

    ran = []
    monkeypatch.setattr(kft.train.runs, "run_task",
                        lambda task, recipe, run_dir, resume=False, verbose=1:
                        ran.append(recipe) or {})
    recipe = _generating_recipe(tmp_path)
    typo = tmp_path / "my_photos_typo"
    result = CliRunner().invoke(run_main, [str(recipe), "--set", f"data.root={typo}",
                                           "-o", str(tmp_path / "o")])
    _user_error(result, f"data.root='{typo}' does not exist", "--set data.generate=shapes")
    assert not typo.exists() and not ran and not (tmp_path / "o").exists()

    # an existing folder: generation is off, and nothing extra is printed
    photos = tmp_path / "photos"
    photos.mkdir()
    result = CliRunner().invoke(run_main, [str(recipe), "--set", f"data.root={photos}",
                                           "-o", str(tmp_path / "o2")])
    assert result.exit_code == 0, result.output
    assert ran[-1].data.generate == "" and ran[-1].data.root == str(photos)
    assert result.output == ""

    # asked for explicitly, it generates there; the recipe's own root keeps generating
    for extra in (["--set", f"data.root={typo}", "--set", "data.generate=shapes"], []):
        result = CliRunner().invoke(run_main, [str(recipe), *extra, "-o",
                                               str(tmp_path / f"o{len(ran)}")])
        assert result.exit_code == 0, result.output
        assert ran[-1].data.generate == "shapes"
    assert [r.data.root for r in ran[-2:]] == [str(typo), str(tmp_path / "generated")]


def test_eval_on_other_data_than_a_generating_run_does_not_generate(tmp_path):
    recipe = cfg.load_recipe(_generating_recipe(tmp_path))
    run = _fake_run(tmp_path, recipe, ["circle", "square"])  # model.keras is not a model
    missing = tmp_path / "elsewhere"
    _user_error(CliRunner().invoke(kft_main, ["eval", str(run), "--data", str(missing)]),
                "does not exist", "data.generate=shapes")
    assert not missing.exists()


def test_optional_commands_register_only_when_their_module_exists(tmp_path, monkeypatch):
    import importlib.util
    import sys
    import types

    import click

    from kft.cli import main as group
    from kft.cli import register_optional

    # kft.cli registered lr-find exactly when kft/cli_lrfind.py is there
    assert ("lr-find" in group.commands) == (
        importlib.util.find_spec("kft.cli_lrfind") is not None)

    fresh = click.Group()
    monkeypatch.setitem(sys.modules, "kft_missing_cmd", None)  # import raises for this name
    assert register_optional(fresh, "kft_missing_cmd", "lr_find") is False
    assert fresh.commands == {}

    module = types.ModuleType("kft_fake_cmd")
    module.lr_find = click.Command("lr-find", callback=lambda: click.echo("found"))
    monkeypatch.setitem(sys.modules, "kft_fake_cmd", module)
    assert register_optional(fresh, "kft_fake_cmd", "lr_find") is True
    assert CliRunner().invoke(fresh, ["lr-find"]).output == "found\n"

    # the module exists but imports something missing: that error is not hidden
    (tmp_path / "kft_broken_cmd.py").write_text("import kft_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="kft_no_such_dependency"):
        register_optional(fresh, "kft_broken_cmd", "lr_find")
