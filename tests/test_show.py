"""``python -m kft.run RECIPE --show`` (keys, values, docs from kft/config.py's comments) and
``kft recipes``."""

import os
import re
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from kft import config as cfg
from kft.cli import main as kft_main
from kft.run import main as run_main
from kft.show import default_recipes_dir, key_docs, list_recipes, parse_docs, recipe_lines

REPO = Path(__file__).resolve().parents[1]
TF_LOG_LINE = re.compile(r"^(\d{4} \d\d:\d\d:\d\d\.\d+: [IWE] |[IWEF]\d{4} |WARNING: All log)")

SOURCE = '''
"""Module doc."""
import dataclasses


@dataclasses.dataclass
class Part:
    """First paragraph
    goes on here.

    Second paragraph, not shown.
    """

    plain: int = 1
    inline: str = "x"  # what inline means
    hashed: str = "# not a comment"
    # the block above
    # spans two lines
    above: float = 0.5

    # a blank line breaks the block

    after_blank: int = 0  # noqa: E501
    spread: tuple = (
        1,
        2,  # on its last line
    )


class NoDoc:
    field: int = 3
'''


def test_parse_docs_reads_real_comments_only():
    docs = parse_docs(SOURCE)
    part = docs["Part"]
    assert part.doc == "First paragraph goes on here."
    assert part.fields == {"inline": "what inline means",
                           "above": "the block above spans two lines",
                           "spread": "on its last line"}
    assert "plain" not in part.fields and "hashed" not in part.fields  # '#' inside a string
    assert "after_blank" not in part.fields  # a noqa pragma is not documentation
    assert docs["NoDoc"].doc == "" and docs["NoDoc"].fields == {}


def test_config_docs_cover_known_fields_and_sections():
    keys, sections = key_docs()
    assert set(keys) == set(cfg.valid_keys())
    assert "D9" in keys["data.val_fraction"]  # the inline comment of its line
    assert keys["train.schedule"].startswith("T3 schedules")  # the comment line above it
    assert "decoupled" in keys["train.weight_decay_mode"]  # a three-line block above
    assert keys["train.seed"] == "" and keys["name"] == ""
    assert sections["train"].startswith("Optimisation and fine-tuning controls")
    assert "SSD" in sections["model.ssd"]
    assert sections["eval"] == ""  # Eval has no docstring (not dataclass's generated one)


def _recipe(tmp_path, body="", name="r.py"):
    path = tmp_path / name
    path.write_text("from kft.config import Data, Eval, Model, Recipe, Train\n"
                    f"RECIPE = Recipe(name='shown', {body})\n")
    return path


def test_show_prints_every_key_value_and_doc_and_runs_nothing(tmp_path):
    recipe = _recipe(tmp_path, "data=Data(root='photos', image_size=96), "
                               "train=Train(epochs=7, layer_lrs={'layer4': 0.001})")
    out = tmp_path / "runs" / "x"
    result = CliRunner().invoke(run_main, [str(recipe), "--show", "-o", str(out),
                                           "--set", "train.epochs=3",
                                           "--set", "export.quantize=float32,int8"])
    assert result.exit_code == 0, result.output
    assert not out.exists() and not (tmp_path / "runs").exists()
    lines = result.stdout.splitlines()
    by_key = {}
    for line in lines:
        m = re.match(r"^([* ]) (\S+) = (.*?)(?:\s+# (.*))?$", line)
        if m:
            by_key[m.group(2)] = (m.group(1), m.group(3), m.group(4))
    assert set(by_key) == set(cfg.valid_keys())
    assert by_key["train.epochs"][:2] == ("*", "3")  # --set wins over the recipe's 7
    assert by_key["data.root"][:2] == ("*", '"photos"')
    assert by_key["export.quantize"][:2] == ("*", '["float32", "int8"]')
    assert by_key["train.layer_lrs"][:2] == ("*", '{"layer4": 0.001}')
    assert by_key["train.seed"] == (" ", "0", None)  # default, no comment: no doc
    assert by_key["data.tfds_data_dir"][:2] == (" ", '""')
    assert "D9: share of the target data" in by_key["data.val_fraction"][2]
    assert any(line.startswith("[train] Optimisation") for line in lines)
    assert result.stderr == ""  # a valid recipe: no note


def test_show_names_what_the_run_would_refuse_but_still_lists(tmp_path):
    recipe = _recipe(tmp_path)  # no data.root
    result = CliRunner().invoke(run_main, [str(recipe), "--show"])
    assert result.exit_code == 0
    assert "data.root is empty" in result.stderr and "  data.root = \"\"" in result.stdout
    # a bad --set type cannot be shown: the usual one-line error
    result = CliRunner().invoke(run_main, [str(recipe), "--show", "--set", "train.epochs=x"])
    assert result.exit_code == 2 and "train.epochs expects int" in result.stderr


def test_show_in_a_subprocess_with_default_log_level_is_clean(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL",
                                                           "KFT_TRACEBACK")}
    proc = subprocess.run([sys.executable, "-m", "kft.run", str(REPO / "recipes" /
                                                                "quickstart.py"), "--show"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "* data.generate = \"shapes\"" in proc.stdout
    assert not [line for line in proc.stderr.splitlines() if TF_LOG_LINE.match(line)]


def test_recipe_lines_of_the_default_recipe_mark_nothing():
    lines = recipe_lines(cfg.Recipe(), "x.py")
    assert lines[0].startswith("# x.py: ")
    assert not [line for line in lines[1:] if line.startswith("*")]


def _recipe_folder(tmp_path):
    folder = tmp_path / "recipes"
    folder.mkdir()
    _recipe(folder, "task='detection', description='a\\n  two-line   description'",
            name="b_det.py")
    _recipe(folder, "", name="a_cls.py")
    (folder / "c_broken.py").write_text("from kft.config import Recipe\nRECIPE = Recipe(\n")
    (folder / "d_none.py").write_text("X = 1\n")
    (folder / "_helper.py").write_text("raise SystemExit('never loaded')\n")
    (folder / "notes.md").write_text("not a recipe\n")
    return folder


def test_kft_recipes_lists_each_file_with_name_task_description_or_error(tmp_path):
    folder = _recipe_folder(tmp_path)
    result = CliRunner().invoke(kft_main, ["recipes", str(folder)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 4
    assert [Path(line.split()[0]).name for line in lines] == ["a_cls.py", "b_det.py",
                                                              "c_broken.py", "d_none.py"]
    assert lines[0].split()[1:] == ["shown", "classification", "(no", "description)"]
    assert lines[1].split()[1:] == ["shown", "detection", "a", "two-line", "description"]
    assert "error: " in lines[2] and "c_broken.py:2: syntax error" in lines[2]
    assert "must define RECIPE" in lines[3]
    rows = list_recipes(folder)
    assert [r.get("task") for r in rows] == ["classification", "detection", None, None]


def test_kft_recipes_defaults_to_the_current_folder_then_the_checkout(tmp_path, monkeypatch):
    folder = _recipe_folder(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert default_recipes_dir() == Path("recipes")
    result = CliRunner().invoke(kft_main, ["recipes"])
    assert result.exit_code == 0 and "recipes/a_cls.py" in result.stdout
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    monkeypatch.chdir(empty)
    assert default_recipes_dir().resolve() == REPO / "recipes"
    result = CliRunner().invoke(kft_main, ["recipes"])
    assert result.exit_code == 0, result.output
    assert re.search(r"quickstart\.py +quickstart +detection +SSDLite", result.stdout)
    assert folder.is_dir()


def test_kft_recipes_on_a_missing_or_empty_folder_is_one_line(tmp_path):
    for target, words in [(tmp_path / "nope", "no such recipe folder"),
                          (tmp_path, "no recipe files")]:
        result = CliRunner().invoke(kft_main, ["recipes", str(target)])
        assert result.exit_code == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("kft: error: ") and words in lines[0]


def test_kft_recipes_in_a_subprocess_has_no_tensorflow_log_lines():
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.run([sys.executable, "-m", "kft", "recipes"], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == len(list((REPO / "recipes").glob("[!_]*.py")))
    assert not [line for line in proc.stderr.splitlines() if TF_LOG_LINE.match(line)]
