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
    assert "train.epoch" in msg and "train.epochs" in msg and "data.root" in msg


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
                                  "recipes/ssd_voc.py"])
def test_recipes_load(path):
    recipe = cfg.load_recipe(path)
    assert isinstance(recipe, cfg.Recipe) and recipe.name


def test_recipe_file_without_recipe(tmp_path):
    p = tmp_path / "r.py"
    p.write_text("x = 1\n")
    with pytest.raises(cfg.ConfigError, match="RECIPE"):
        cfg.load_recipe(p)
