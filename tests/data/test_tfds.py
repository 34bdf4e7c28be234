"""load_tfds offline: a tiny TFDS builder prepared into tmp_path, then loaded by name."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from kft.data import classification_batches, load_tfds
from kft.data.readers.tfds import TFDSNotPreparedError

NAME = "kft_tiny_colours"
CLASSES = ["red", "green", "blue"]


class KftTinyColours(tfds.core.GeneratorBasedBuilder):
    """Nine 8x8 images per split; the class is the bright channel."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(8, 8, 3)),
                "label": tfds.features.ClassLabel(names=CLASSES),
                "note": tfds.features.Text(),
            }),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(9), "test": self._generate_examples(6)}

    def _generate_examples(self, n):
        for i in range(n):
            image = np.full((8, 8, 3), 20, np.uint8)
            image[..., i % 3] = 200 + i
            yield i, {"image": image, "label": i % 3, "note": f"example {i}"}


@pytest.fixture
def prepared(tmp_path):
    KftTinyColours(data_dir=str(tmp_path)).download_and_prepare()
    return tmp_path


def test_loads_a_prepared_dataset_by_name_offline(prepared):
    ds, class_names, n = load_tfds(NAME, data_dir=prepared, split="train")
    assert class_names == CLASSES and n == 9
    items = list(ds.as_numpy_iterator())
    assert len(items) == 9
    for image, label in items:
        assert image.dtype == np.uint8 and image.shape == (8, 8, 3)
        assert image[0, 0].argmax() == label
    _, _, n_test = load_tfds(NAME, data_dir=prepared, split="test")
    _, _, n_slice = load_tfds(NAME, data_dir=prepared, split="train[:3]")
    assert (n_test, n_slice) == (6, 3)
    batches = classification_batches((ds, n), image_size=4, batch_size=3, num_classes=3,
                                     training=True, seed=0, epochs=2)
    out = [(x.numpy(), y.numpy()) for x, y in batches.dataset]
    assert len(out) == 6 and batches.steps == 3
    for x, y in out:
        np.testing.assert_array_equal(x[:, 0, 0].argmax(1), y.argmax(1))


def test_missing_dataset_split_and_name_give_clear_errors(prepared, tmp_path):
    empty = tmp_path / "nothing_here"
    with pytest.raises(TFDSNotPreparedError) as err:
        load_tfds(NAME, data_dir=empty, split="train")
    message = str(err.value)
    assert str(empty) in message and f"tfds build {NAME}" in message
    assert "tfds_download=true" in message
    with pytest.raises(ValueError, match="no split 'validation'.*'test', 'train'"):
        load_tfds(NAME, data_dir=prepared, split="validation")
    with pytest.raises(ValueError, match="no dataset named 'kft_no_such_set'"):
        load_tfds("kft_no_such_set", data_dir=prepared)


def test_download_true_prepares_a_missing_dataset(tmp_path):
    ds, class_names, n = load_tfds(NAME, data_dir=tmp_path / "fresh", split="test",
                                   download=True)
    assert n == 6 and len(list(ds)) == 6 and class_names == CLASSES


def test_recipe_runs_on_tfds_by_name(prepared, tmp_path):
    """`data.root=tfds:<name>` with `data.tfds_data_dir` drives a whole run offline."""
    import json

    from kft import config as cfg
    from kft.run import run_recipe

    recipe = cfg.apply_overrides(cfg.Recipe(name="tfds"), [
        f"data.root=tfds:{NAME}", f"data.tfds_data_dir={prepared}", "data.image_size=32",
        "data.train_split=train", "data.val_split=test", "model.arch=resnet_tiny",
        "train.epochs=1", "train.batch_size=3", "train.optimizer=adam",
        "train.learning_rate=0.001", "export.enabled=false", "eval.plots=false"])
    summary = run_recipe(recipe, tmp_path / "run", verbose=0)
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert report["class_names"] == CLASSES
    assert (report["num_train"], report["num_val"]) == (9, 6)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["num_examples"] == 6 and summary["epochs_run"] == 1
