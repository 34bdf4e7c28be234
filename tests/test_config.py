import pytest

from kft import config as cfg


def test_override_types_and_nesting():
    r = cfg.apply_overrides(cfg.Recipe(), [
        "train.epochs=3", "train.learning_rate=0.5", "data.cache=true", "data.root=/x",
        "train.milestones=7,9", 'train.layer_lrs={"layer4": 0.0001}',
        "train.trainable_stages=layer3,layer4", "model.load_from=/w.keras"])
    assert r.train.epochs == 3 and isinstance(r.train.epochs, int)
    assert r.train.learning_rate == 0.5
    assert r.data.cache is True and r.data.root == "/x"
    assert r.train.milestones == (7, 9)
    assert r.train.layer_lrs == {"layer4": 0.0001}
    assert r.train.trainable_stages == ("layer3", "layer4")
    assert r.model.load_from == "/w.keras"
    assert cfg.Recipe().train.epochs != 3  # the original is untouched


def test_unknown_key_lists_valid_keys():
    with pytest.raises(cfg.ConfigError) as e:
        cfg.apply_overrides(cfg.Recipe(), ["train.epoch=3"])
    msg = str(e.value)
    assert "unknown key 'train.epoch'" in msg and "\n" not in msg
    assert "did you mean 'train.epochs'?" in msg
    assert "Keys of train: epochs, batch_size" in msg  # the section's keys, on the same line


@pytest.mark.parametrize("typed,meant", [
    ("train.learnin_rate", "train.learning_rate"),
    ("trian.epochs", "train.epochs"),  # the section mistyped
    ("epochs", "train.epochs"),  # the section left out
    ("model.batch_size", "train.batch_size"),  # the right field in the wrong section
    ("eval.evry", "eval.every"),
    ("data.augmentation", "data.augment"),
])
def test_unknown_key_did_you_mean(typed, meant):
    with pytest.raises(cfg.ConfigError, match=f"did you mean [^?]*'{meant}'"):
        cfg.apply_overrides(cfg.Recipe(), [f"{typed}=1"])


def test_unknown_key_without_a_close_match_lists_sections():
    with pytest.raises(cfg.ConfigError) as e:
        cfg.apply_overrides(cfg.Recipe(), ["lr=1"])
    msg = str(e.value)
    assert "did you mean" not in msg and "Sections: data, eval, export, model, train" in msg


def test_bad_value_names_key_and_type():
    with pytest.raises(cfg.ConfigError, match=r"train.epochs expects int, got 'three'"):
        cfg.apply_overrides(cfg.Recipe(), ["train.epochs=three"])
    with pytest.raises(cfg.ConfigError, match="data.cache expects bool"):
        cfg.apply_overrides(cfg.Recipe(), ["data.cache=maybe"])
    with pytest.raises(cfg.ConfigError, match="key=value"):
        cfg.apply_overrides(cfg.Recipe(), ["train.epochs"])
    with pytest.raises(cfg.ConfigError, match="section"):
        cfg.apply_overrides(cfg.Recipe(), ["train=3"])


def test_required_keys_exist():
    keys = cfg.valid_keys()
    for key in ["data.root", "data.image_size", "train.epochs", "train.batch_size", "train.seed",
                "model.load_from", "export.quantize"]:
        assert key in keys


def test_json_round_trip(tmp_path):
    r = cfg.apply_overrides(cfg.Recipe(name="x"), ["train.milestones=7", "export.quantize=int8"])
    cfg.save_json(r, tmp_path / "c.json")
    import json

    back = cfg.from_dict(json.loads((tmp_path / "c.json").read_text()))
    assert back == r


@pytest.mark.parametrize("path", ["recipes/quickstart_classify.py", "recipes/resnet50_cifar100.py",
                                  "recipes/ssd_voc.py"])  # all validate: tests/test_validate.py
def test_recipes_load(path):
    recipe = cfg.load_recipe(path)
    assert isinstance(recipe, cfg.Recipe) and recipe.name


def test_recipe_file_without_recipe(tmp_path):
    p = tmp_path / "r.py"
    p.write_text("x = 1\n")
    with pytest.raises(cfg.ConfigError, match="RECIPE"):
        cfg.load_recipe(p)


def test_recipe_with_a_syntax_error_names_file_and_line(tmp_path):
    p = tmp_path / "broken.py"
    p.write_text("from kft.config import Recipe\n\nRECIPE = Recipe(name='x'\n")
    with pytest.raises(cfg.ConfigError) as e:
        cfg.load_recipe(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}:3: syntax error:") and "never closed" in msg, msg


def test_recipe_raising_at_import_names_file_line_and_error(tmp_path):
    p = tmp_path / "raises.py"
    p.write_text("from kft.config import Data, Recipe\n\nRECIPE = Recipe(data=Data(rot='x'))\n")
    with pytest.raises(cfg.ConfigError) as e:
        cfg.load_recipe(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}:3: the recipe raised TypeError:") and "'rot'" in msg, msg
    p.write_text("import kft_no_such_module\n")
    with pytest.raises(cfg.ConfigError, match=r"raises.py:1: .*ModuleNotFoundError"):
        cfg.load_recipe(p)


def test_syntax_error_in_a_base_recipe_names_that_file(tmp_path, monkeypatch):
    (tmp_path / "base_r.py").write_text("x = (\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    p = tmp_path / "variant.py"
    p.write_text("import base_r\n")
    with pytest.raises(cfg.ConfigError, match=r"base_r.py:1: syntax error"):
        cfg.load_recipe(p)


def test_ssd_keys_live_in_their_section_and_old_names_still_work(capsys):
    from kft import config as cfg

    r = cfg.apply_overrides(cfg.Recipe(task="detection"),
                            ["model.ssd.steps=8,16,32", "model.default_box_sizes=0.1,0.2,0.3",
                             "train.neg_pos_ratio=2"])
    assert r.model.ssd.steps == (8, 16, 32) and r.model.ssd.sizes == (0.1, 0.2, 0.3)
    assert r.model.ssd.neg_pos_ratio == 2.0
    out = capsys.readouterr().out
    assert "model.default_box_sizes is now model.ssd.sizes" in out
    assert "train.neg_pos_ratio is now model.ssd.neg_pos_ratio" in out
    assert "model.ssd.aspect_ratios" in cfg.valid_keys()
    assert "model.default_box_steps" not in cfg.valid_keys()
    # a config.json written before the keys moved reads with them moved
    old = cfg.to_dict(cfg.Recipe(task="detection"))
    del old["model"]["ssd"]
    old["model"]["default_box_steps"] = [8, 16]
    old["model"]["default_box_aspect_ratios"] = [[2], [2, 3]]
    old["train"]["iou_threshold"] = 0.4
    loaded = cfg.from_dict(old)
    assert loaded.model.ssd.steps == (8, 16)
    assert loaded.model.ssd.aspect_ratios == ((2,), (2, 3))
    assert loaded.model.ssd.iou_threshold == 0.4
    assert cfg.from_dict(cfg.to_dict(r)) == r


def test_ssd_section_is_refused_on_a_classification_recipe():
    from kft import config as cfg
    from kft.validate import validate_recipe

    r = cfg.apply_overrides(cfg.Recipe(data=cfg.Data(root="x")), ["model.ssd.steps=8,16"])
    with pytest.raises(cfg.ConfigError, match="model.ssd.steps"):
        validate_recipe(r, set_keys=["model.ssd.steps"])
