"""read_image_folder: layouts, stratified split, and a folder full of broken files."""

import numpy as np
import pytest
from PIL import Image

from kft.data import DataReport, classification_batches, read_image_folder
from kft.data.readers import folder as folder_reader
from kft.data.readers.folder import FolderError, folder_class_names, stratified_split


def _write_class(folder, n, seed=0, ext="png"):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        arr = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"img_{i:03d}.{ext}")


def test_broken_folder_is_reported_and_the_pipeline_completes(tmp_path, broken_files,
                                                               stray_files):
    root = tmp_path / "data"
    files = broken_files(root / "train" / "zebra")
    strays = stray_files(root / "train" / "zebra")
    _write_class(root / "train" / "ant", 5)
    _write_class(root / "val" / "ant", 2, seed=1)
    _write_class(root / "val" / "zebra", 1, seed=2, ext="jpg")
    (root / "train" / "loose.jpg").write_bytes(b"")  # outside any class folder
    report = DataReport()
    train, val = read_image_folder(root, report=report, cache_dir=tmp_path / "cache")

    assert train.class_names == ["ant", "zebra"]
    data = report.to_dict()
    skipped = {e["path"]: e["reason"] for e in data["skipped"]}
    converted = {e["path"]: e["reason"] for e in data["converted"]}
    used = set(train.sources)
    for kind, (path, expected) in files.items():
        path = str(path)
        if expected == "skipped":
            assert path in skipped and path not in used, kind
        else:
            assert path in used, (kind, skipped.get(path))
            assert (path in converted) == (expected == "converted"), kind
    for path in strays:
        assert "not an image file" in skipped[str(path)]
    assert "outside any class folder" in skipped[str(root / "train" / "loose.jpg")]
    usable = sum(e != "skipped" for _, e in files.values())
    assert len(train) == 5 + usable and len(val) == 3
    assert data["counts"]["train_images"] == len(train)

    # Every usable file goes through the real tf.data pipeline without an error.
    batches = classification_batches(train, image_size=8, batch_size=4, num_classes=2,
                                     training=False, seed=0)
    seen = sum(int(x.shape[0]) for x, _ in batches.dataset)
    assert seen == len(train) and batches.steps == -(-len(train) // 4)
    training = classification_batches(train, image_size=8, batch_size=4, num_classes=2,
                                      training=True, seed=0, epochs=2)
    assert sum(1 for _ in training.dataset) == 2 * -(-len(train) // 4)  # none left out


def test_stratified_split_keeps_every_class_in_training():
    labels = [0] * 1 + [1] * 2 + [2] * 10 + [3] * 25
    train, val = stratified_split(labels, 0.1, seed=3)
    assert sorted(train + val) == list(range(len(labels)))
    per_class_val = np.bincount(np.asarray(labels)[val], minlength=4).tolist()
    assert per_class_val == [0, 1, 1, 3]
    assert stratified_split(labels, 0.1, seed=3) == (train, val)
    assert stratified_split(labels, 0.1, seed=4)[1] != val
    assert stratified_split(labels, 0.0, seed=3) == (list(range(len(labels))), [])
    with pytest.raises(ValueError, match="val_fraction"):
        stratified_split(labels, 1.0, seed=0)


def test_split_without_val_folder_and_flat_layout(tmp_path):
    for name, n in (("cat", 10), ("dog", 20), ("solo", 1)):
        _write_class(tmp_path / "a" / "train" / name, n)
        _write_class(tmp_path / "b" / name, n)
    train, val = read_image_folder(tmp_path / "a", val_fraction=0.1, seed=0,
                                   cache_dir=tmp_path / "cache")
    assert train.class_names == ["cat", "dog", "solo"]
    assert np.bincount(val.labels, minlength=3).tolist() == [1, 2, 0]
    assert np.bincount(train.labels, minlength=3).tolist() == [9, 18, 1]
    assert not set(train.paths) & set(val.paths)
    again = read_image_folder(tmp_path / "a", val_fraction=0.1, seed=0)
    assert again[1].paths == val.paths
    flat_train, flat_val = read_image_folder(tmp_path / "b", val_fraction=0.1, seed=0)
    assert flat_train.class_names == ["cat", "dog", "solo"]
    assert [p.split("/")[-2:] for p in flat_val.paths] == [p.split("/")[-2:] for p in val.paths]


def test_roboflow_classification_export_uses_its_valid_folder(tmp_path):
    # Roboflow's folder export: train/, valid/, test/ (and a README); valid/ is the val
    # split (it used to be ignored and 10% of train held out instead)
    root = tmp_path / "Digits.v1i.folder"
    for split, n in (("train", 6), ("valid", 3), ("test", 2)):
        for k, name in enumerate(("five", "six")):
            _write_class(root / split / name, n, seed=k)
    (root / "README.roboflow.txt").write_text("exported via roboflow.com\n")
    train, val = read_image_folder(root, val_fraction=0.1, seed=0)
    assert len(train.paths) == 12 and len(val.paths) == 6
    assert all("/valid/" in p for p in val.paths)
    assert folder_reader.folder_layout(root) == (root / "train", root / "valid")
    (root / "val" / "five").mkdir(parents=True)  # val/ first when both exist
    assert folder_reader.folder_layout(root)[1] == root / "val"
    other = tmp_path / "tfds_style"
    for split in ("train", "validation"):
        for k, name in enumerate(("five", "six")):
            _write_class(other / split / name, 2, seed=k)
    assert folder_reader.folder_layout(other) == (other / "train", other / "validation")


def test_flat_classes_named_valid_are_classes(tmp_path):
    # root/<class>/* with classes "valid" and "invalid": no train/, so valid/ is a class
    for k, name in enumerate(("valid", "invalid")):
        _write_class(tmp_path / "forms" / name, 5, seed=k)
    train, val = read_image_folder(tmp_path / "forms", val_fraction=0.2, seed=0)
    assert train.class_names == ["invalid", "valid"]
    assert len(train.paths) + len(val.paths) == 10
    assert folder_class_names(tmp_path / "forms") == ["invalid", "valid"]


def test_layout_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        read_image_folder(tmp_path / "missing")
    _write_class(tmp_path / "x" / "train" / "cat", 2)
    _write_class(tmp_path / "x" / "train" / "dog", 2)
    _write_class(tmp_path / "x" / "val" / "cow", 2)
    with pytest.raises(FolderError, match="cow"):
        read_image_folder(tmp_path / "x")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(FolderError, match="empty/train is empty"):
        read_image_folder(tmp_path / "empty")
    for name in ("cat", "dog"):
        (tmp_path / "bad" / "train" / name).mkdir(parents=True)
        (tmp_path / "bad" / "train" / name / "a.png").write_text("text")
    with pytest.raises(FolderError, match="no usable training images"):
        read_image_folder(tmp_path / "bad", cache_dir=tmp_path / "cache")
    (tmp_path / "v" / "val" / "cat").mkdir(parents=True)
    with pytest.raises(FolderError, match="val/ folder but no train/ folder"):
        read_image_folder(tmp_path / "v")


def _no_scan(monkeypatch):
    """Makes reading any image fail the test: the error must come from the layout alone."""
    def scan(*args, **kwargs):
        raise AssertionError("images were read")
    monkeypatch.setattr(folder_reader, "scan_images", scan)


def test_empty_folder_or_no_class_folders_is_a_folder_error(tmp_path, monkeypatch):
    _no_scan(monkeypatch)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FolderError, match=r"empty is empty: expected .*empty/<class>/"):
        read_image_folder(tmp_path / "empty")
    _write_class(tmp_path / "loose", 3)  # images, but not in class folders
    with pytest.raises(FolderError, match=r"no class folders \(3 image files lie directly"):
        read_image_folder(tmp_path / "loose")


def test_one_class_is_refused_before_any_image_is_read(tmp_path, monkeypatch):
    _no_scan(monkeypatch)
    _write_class(tmp_path / "one" / "train" / "cat", 4)
    _write_class(tmp_path / "one" / "val" / "cat", 2)
    with pytest.raises(FolderError, match=r"1 class folder \(cat\): a classifier needs at "
                                          r"least 2 classes"):
        read_image_folder(tmp_path / "one")
    _write_class(tmp_path / "flat" / "cat", 4)
    with pytest.raises(FolderError, match="flat has 1 class folder"):
        read_image_folder(tmp_path / "flat")


def test_one_class_with_usable_images_is_refused(tmp_path):
    _write_class(tmp_path / "d" / "cat", 4)
    (tmp_path / "d" / "dog").mkdir()
    (tmp_path / "d" / "dog" / "a.png").write_text("not an image")
    with pytest.raises(FolderError, match=r"usable training images in only 1 class \(cat;"):
        read_image_folder(tmp_path / "d", cache_dir=tmp_path / "cache")


def test_folder_class_names_reads_no_image(tmp_path, monkeypatch):
    _no_scan(monkeypatch)
    for name in ("dog", "cat", ".hidden"):
        (tmp_path / "r" / "train" / name).mkdir(parents=True)
    assert folder_class_names(tmp_path / "r") == ["cat", "dog"]


def test_prepare_data_prints_which_folders_it_read(tmp_path, capsys):
    from kft import config as cfg
    from kft.tasks.classification import prepare_data

    for split, n in (("train", 5), ("valid", 2)):
        for k, name in enumerate(("cat", "dog")):
            _write_class(tmp_path / "with_val" / split / name, n, seed=k)
            if split == "train":
                _write_class(tmp_path / "train_only" / split / name, n, seed=k)
    prepare_data(cfg.Data(root=str(tmp_path / "with_val")), tmp_path / "run1", seed=0)
    out = capsys.readouterr().out
    assert (f"[kft] images: train {tmp_path / 'with_val' / 'train'} (10 images, 2 classes); "
            f"val {tmp_path / 'with_val' / 'valid'} (4 images)") in out, out
    prepare_data(cfg.Data(root=str(tmp_path / "train_only"), val_fraction=0.2), tmp_path / "run2",
                 seed=0)
    out = capsys.readouterr().out
    assert "(8 images, 2 classes); val = 2 images held out of it" in out, out
    assert "data.val_fraction=0.2" in out
