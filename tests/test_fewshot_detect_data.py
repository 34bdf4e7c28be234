"""benchmarks/fewshot_detect_data.py's rules: which boxes a crop keeps, that train and test never
share a pixel, and that its VOC folders read (and train) in kft, on a small wheel-shaped zip
written here with the same file names as DeepForest's (the real one is not on CI)."""

import importlib.util
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def builder():
    spec = importlib.util.spec_from_file_location(
        "fewshot_detect_data", ROOT / "benchmarks" / "fewshot_detect_data.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["fewshot_detect_data"] = module
    spec.loader.exec_module(module)
    return module


def _fake_wheel(path: Path, builder, rng) -> dict:
    """A zip with deepforest/data/<name>.png/.xml for every photograph the builder reads."""
    boxes_of = {}
    sizes = {builder.SOURCE_PHOTOS[0]: (900, 820), builder.SOURCE_PHOTOS[1]: (500, 610)}
    with zipfile.ZipFile(path, "w") as z:
        for name in builder.SOURCE_PHOTOS + builder.TARGET_PHOTOS:
            h, w = sizes.get(name, (400, 400))
            image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
            from io import BytesIO
            buf = BytesIO()
            Image.fromarray(image).save(buf, format="PNG")
            z.writestr(f"deepforest/data/{name}.png", buf.getvalue())
            xy = rng.uniform(0, [w - 40, h - 40], size=(30, 2))
            boxes = np.concatenate([xy, xy + rng.uniform(15, 40, size=(30, 2))], axis=1)
            label = "Alive" if name == "SOAP_061" else "Tree"
            objects = "".join(
                f"<object><name>{label}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
                f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for b in boxes)
            z.writestr(f"deepforest/data/{name}.xml", f"<annotation>{objects}</annotation>")
            boxes_of[name] = boxes
    return boxes_of


def test_a_crop_keeps_boxes_mostly_inside_clipped_and_counts_the_cut_ones(builder):
    boxes = np.array([[10, 10, 30, 30],     # inside
                      [90, 10, 110, 30],    # half outside on the right: dropped
                      [85, 50, 105, 70],    # 75 % inside: kept, clipped to x=100
                      [200, 200, 220, 220]])  # elsewhere: not counted
    kept, dropped = builder.crop_boxes(boxes.astype(float), (0, 0, 100, 100))
    np.testing.assert_allclose(kept, [[10, 10, 30, 30], [85, 50, 100, 70]])
    assert dropped == 1
    kept, dropped = builder.crop_boxes(boxes.astype(float), (5, 80, 100, 200))  # frame moves
    np.testing.assert_allclose(kept, [[10, 5, 30, 25], [5, 45, 25, 65]])
    assert dropped == 0


def test_the_task_splits_never_share_pixels_and_train_in_kft(builder, tmp_path):
    rng = np.random.default_rng(0)
    wheel = tmp_path / "deepforest-0-py3-none-any.whl"
    _fake_wheel(wheel, builder, rng)
    manifest = builder.build(wheel, tmp_path / "out", seed=1)
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["class"] == "tree"
    assert manifest["labels_merged"]["SOAP_061"] == ["Alive"]
    src = manifest["counts"]["source"]
    assert src["train"]["images"] == builder.SOURCE_TRAIN and src["val"]["images"] == 40

    def boxes_yxyx(files, split):
        return [(f["photo"], f["crop_yxyx"]) for f in files if f["split"] == split]

    def overlap(a, b):
        return a[0] == b[0] and min(a[1][2], b[1][2]) > max(a[1][0], b[1][0]) and \
            min(a[1][3], b[1][3]) > max(a[1][1], b[1][1])

    for key in ("source_files", "target_a_files", "target_b_files"):
        train, test = boxes_yxyx(manifest[key], "train"), boxes_yxyx(manifest[key], "val")
        assert train and test
        assert not any(overlap(a, b) for a in train for b in test), key
    a_test = boxes_yxyx(manifest["target_a_files"], "val")
    assert all(c[1] >= 200 for _, c in a_test)  # fold a tests on the right halves
    assert len(a_test) == 4 and manifest["counts"]["target_a"]["train"]["images"] == 40
    # kft reads the folders with the class inferred and every box kept, inside its image
    from kft.data.readers.voc import read_voc

    for fold in ("a", "b"):
        for split in ("train", "val"):
            read = read_voc(manifest["roots"][f"target_{fold}"], split)
            assert read.class_names == ["tree"] and read.class_names_source == "inferred"
            counts = manifest["counts"][f"target_{fold}"][split]
            assert len(read) == counts["images"]
            assert sum(len(r.boxes) for r in read.records) == counts["boxes"] > 0
            sizes = {(r.height, r.width) for r in read.records}
            assert len(sizes) > 1 or split == "val"  # train crops of many sizes
            for r in read.records:
                assert np.all(r.boxes[:, 2:] <= [r.width, r.height]) and np.all(r.boxes >= 0)
