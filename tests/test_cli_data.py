"""``kft data``: make-shapes, check, browse and convert through the CLI, on a small shapes set."""

import json
import math
import shutil
import sys
from collections import Counter
from xml.etree import ElementTree as ET

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from kft.cli_data import data as data_cli
from kft.data.gallery import gallery_size
from kft.data.readers.voc import read_voc

NUM_TRAIN, NUM_VAL, SIZE = 10, 5, 64


def invoke(*args):
    return CliRunner().invoke(data_cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_data") / "shapes"
    result = invoke("make-shapes", root, "--num-train", NUM_TRAIN, "--num-val", NUM_VAL,
                    "--image-size", SIZE, "--classes", "circle,square,triangle", "--seed", 3)
    assert result.exit_code == 0, result.output
    assert "GENERATED" in result.output and str(root) in result.output
    return root


def test_make_shapes_wrote_both_layouts(shapes):
    assert "GENERATED" in (shapes / "GENERATED.txt").read_text()
    coco = json.loads((shapes / "COCO/annotations/instances_train.json").read_text())
    assert len(coco["images"]) == NUM_TRAIN
    assert [c["name"] for c in coco["categories"]] == ["circle", "square", "triangle"]
    assert len((shapes / "VOC/ImageSets/Main/val.txt").read_text().split()) == NUM_VAL
    again = invoke("make-shapes", shapes, "--num-train", 2)
    assert again.exit_code == 2 and str(shapes) in again.output
    bad = invoke("make-shapes", shapes.parent / "other", "--classes", "circle,blob")
    assert bad.exit_code == 2 and "blob" in bad.output


def _png_ok(path):
    assert path.stat().st_size > 2000
    with Image.open(path) as im:
        im.verify()
        assert im.format == "PNG"


def test_check_coco_counts_match_the_json(shapes, tmp_path):
    out = tmp_path / "check"
    result = invoke("check", shapes / "COCO", "--format", "coco", "--split", "train",
                    "--val-split", "val", "--out", out)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "check.json").read_text())
    for key in ("class_names", "splits", "distribution", "kl_train_val", "kl_warning",
                "consistency_ok", "reference", "plots"):
        assert key in report
    for key, name in (("train", "train"), ("val", "val")):
        coco = json.loads((shapes / f"COCO/annotations/instances_{name}.json").read_text())
        names = {c["id"]: c["name"] for c in coco["categories"]}
        split = report["splits"][key]
        assert split["images"] == len(coco["images"])
        assert split["objects"] == len(coco["annotations"])
        expected = Counter(names[a["category_id"]] for a in coco["annotations"])
        assert split["per_class"] == {n: expected.get(n, 0) for n in names.values()}
        assert sum(split["box_sizes"]["coco_sizes"].values()) == len(coco["annotations"])
        assert split["bad_files"]["num_skipped"] == 0
        assert set(split["consistency"]) >= {"share_consistent", "ok", "duplicate_pairs"}
    counts = {k: [report["splits"][k]["per_class"][n] + 1 for n in report["class_names"]]
              for k in ("train", "val")}  # additive smoothing 1
    p = [c / sum(counts["train"]) for c in counts["train"]]
    q = [c / sum(counts["val"]) for c in counts["val"]]
    kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
    assert report["kl_train_val"] == pytest.approx(kl)
    assert report["kl_warning"] is (kl > 0.2)
    assert ("WARNING: KL(train || val)" in result.output) is (kl > 0.2)
    for name in ("class_histogram.png", "box_sizes.png", "class_distribution.png"):
        _png_ok(out / name)


def _objects(xml_path):
    return ET.parse(xml_path).getroot().findall("object")


def _edit_voc_copy(shapes, dst):
    """A VOC copy with: a duplicated box (image A), a box shifted by half its width
    (image B), every val object renamed 'circle', and a listed image without annotation."""
    shutil.copytree(shapes / "VOC", dst)
    train_ids = (dst / "ImageSets/Main/train.txt").read_text().split()
    a, b = train_ids[0], train_ids[1]
    tree = ET.parse(dst / f"Annotations/{a}.xml")
    first = tree.getroot().find("object")
    copy = ET.fromstring(ET.tostring(first))
    copy.find("bndbox/xmax").text = str(int(copy.findtext("bndbox/xmax")) - 1)
    tree.getroot().append(copy)
    tree.write(dst / f"Annotations/{a}.xml")
    tree = ET.parse(dst / f"Annotations/{b}.xml")
    box = tree.getroot().find("object/bndbox")
    x1, x2 = int(box.findtext("xmin")), int(box.findtext("xmax"))
    shift = (x2 - x1 + 1) // 2 * (1 if x2 + (x2 - x1) // 2 < SIZE else -1)
    box.find("xmin").text, box.find("xmax").text = str(x1 + shift), str(x2 + shift)
    tree.write(dst / f"Annotations/{b}.xml")
    for stem in (dst / "ImageSets/Main/val.txt").read_text().split():
        tree = ET.parse(dst / f"Annotations/{stem}.xml")
        for obj in tree.getroot().findall("object"):
            obj.find("name").text = "circle"
        tree.write(dst / f"Annotations/{stem}.xml")
    with open(dst / "ImageSets/Main/train.txt", "a") as f:
        f.write("999999\n")
    return a, b, len(_objects(dst / f"Annotations/{a}.xml")) - 1


def test_check_voc_duplicates_reference_and_kl_warning(shapes, tmp_path):
    a, b, dup_index = _edit_voc_copy(shapes, tmp_path / "edited")
    out = tmp_path / "check"
    result = invoke("check", tmp_path / "edited", "--format", "voc", "--split", "train",
                    "--val-split", "val", "--reference", shapes / "VOC", "--out", out)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "check.json").read_text())
    train = report["splits"]["train"]
    pairs = [(p["image_id"].split("/")[-1], p["boxes"])
             for p in train["consistency"]["duplicate_pairs"]]
    assert (a, [0, dup_index]) in pairs
    missing = [e["path"] for e in train["bad_files"]["skipped"]]
    assert any(p.endswith("999999.xml") for p in missing)
    ref = report["reference"]["train"]
    assert ref["images_compared"] == NUM_TRAIN
    assert ref["boxes"] == train["objects"] and ref["boxes_agreeing"] == ref["boxes"] - 1
    assert [(d["image_id"].split("/")[-1], d["box"]) for d in ref["disagreeing"]] == [(b, 0)]
    assert report["reference"]["val"]["boxes_agreeing"] < report["reference"]["val"]["boxes"]
    assert report["kl_warning"] is True and report["kl_train_val"] > 0.2
    assert "WARNING: KL(train || val)" in result.output


def test_browse_gallery_matches_grid(shapes, tmp_path):
    out = tmp_path / "gallery.png"
    result = invoke("browse", shapes / "COCO", "--format", "coco", "--split", "val",
                    "--n", 5, "--tile", 64, "--out", out)
    assert result.exit_code == 0, result.output
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == gallery_size(5, 64)
    voc = invoke("browse", shapes / "VOC", "--format", "voc", "--n", 40, "--tile", 32,
                 "--cols", 4, "--out", tmp_path / "voc.png")
    assert voc.exit_code == 0, voc.output
    with Image.open(tmp_path / "voc.png") as im:  # trainval: all images, 4 per row
        assert im.size == gallery_size(NUM_TRAIN + NUM_VAL, 32, cols=4)


def test_browse_augment_without_module_is_a_clear_error(shapes, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "kft.data.detection_augment", None)
    result = invoke("browse", shapes / "COCO", "--format", "coco", "--split", "val",
                    "--augment", "default", "--out", tmp_path / "g.png")
    assert result.exit_code == 2
    assert "kft.data.detection_augment" in result.output
    assert not (tmp_path / "g.png").exists()


def test_browse_augmented(shapes, tmp_path):
    sheets = {}
    for name in ("none", "default", "ssd"):
        out = tmp_path / f"{name}.png"
        result = invoke("browse", shapes / "COCO", "--format", "coco", "--split", "train",
                        "--n", 4, "--tile", 64, "--augment", name, "--seed", 1, "--out", out)
        assert result.exit_code == 0, result.output
        with Image.open(out) as im:
            assert im.size == gallery_size(4, 64)
            sheets[name] = np.asarray(im.convert("RGB"), np.int16)
    assert np.abs(sheets["ssd"] - sheets["none"]).mean() > 1.0  # seeded, so deterministic


def _boxes_by_file(split):
    return {r.image_path.rsplit("/", 1)[-1]: sorted(
        (split.class_names[int(k)], tuple(float(v) for v in box))
        for box, k in zip(r.boxes, r.labels, strict=True)) for r in split.records}


def test_convert_round_trip(shapes, tmp_path):
    coco_json = tmp_path / "train.json"
    result = invoke("convert", shapes / "VOC", "--from", "voc", "--to", "coco", "--split",
                    "train", "--out", coco_json)
    assert result.exit_code == 0, result.output
    written = json.loads(coco_json.read_text())
    original = json.loads((shapes / "COCO/annotations/instances_train.json").read_text())
    assert len(written["annotations"]) == len(original["annotations"])
    assert f"{NUM_TRAIN} images" in result.output
    back = tmp_path / "voc_back"
    result = invoke("convert", coco_json, "--from", "coco", "--to", "voc", "--image-dir",
                    shapes / "VOC/JPEGImages", "--out", back, "--split", "train")
    assert result.exit_code == 0, result.output
    names = [c["name"] for c in written["categories"]]
    before = read_voc(shapes / "VOC", "train", class_names=names, check_images="header")
    after = read_voc(back, "train", class_names=names, check_images="header")
    assert _boxes_by_file(after) == _boxes_by_file(before)
    wrong = invoke("convert", coco_json, "--from", "coco", "--to", "voc", "--out", back)
    assert wrong.exit_code == 2 and "--image-dir" in wrong.output


def test_clear_errors(shapes, tmp_path):
    from kft.cli import main as kft_main

    missing = tmp_path / "no_such_root"
    result = CliRunner().invoke(kft_main, ["data", "check", str(missing), "--format", "voc"])
    assert result.exit_code == 2 and str(missing) in result.output
    result = invoke("check", shapes / "VOC", "--format", "darknet")
    assert result.exit_code == 2 and "--format" in result.output
    result = invoke("check", shapes / "VOC", "--format", "yolo")
    assert result.exit_code == 2 and "looks like voc" in result.output
    assert "--format voc" in result.output
    result = invoke("browse", shapes / "COCO", "--format", "voc", "--out", tmp_path / "g.png")
    assert result.exit_code == 2 and str(shapes / "COCO") in result.output
    result = invoke("check", shapes / "COCO", "--format", "coco", "--split", "nope",
                    "--out", tmp_path / "c")
    assert result.exit_code == 2 and "instances_nope.json" in result.output
    result = invoke("check", shapes / "COCO", "--format", "coco", "--split", "train",
                    "--val-split", "val2017", "--out", tmp_path / "c")
    assert result.exit_code == 2 and "instances_val2017.json" in result.output
    assert "--val-split none" in result.output
    # without --val-split, the val split that exists goes with train
    result = invoke("check", shapes / "COCO", "--split", "train", "--out", tmp_path / "c")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "c/check.json").read_text())["split_names"] == \
        {"train": "train", "val": "val"}


def test_cityscapes_check_browse_convert(tmp_path):
    root = tmp_path / "cityscapes"
    frames = {"aachen/aachen_000000_000019": [
        {"label": "car", "polygon": [[2, 3], [9, 3], [9, 7], [2, 7]]},
        {"label": "car", "polygon": [[2, 3], [9, 3], [9, 6], [2, 6]]},  # IoU 32/40 = 0.8
        {"label": "person", "polygon": [[20, 10], [25, 10], [25, 20]]}]}
    for name, objects in frames.items():
        image = root / "leftImg8bit/train" / f"{name}_leftImg8bit.png"
        ann = root / "gtFine/train" / f"{name}_gtFine_polygons.json"
        image.parent.mkdir(parents=True)
        ann.parent.mkdir(parents=True)
        Image.fromarray(np.full((24, 40, 3), 90, np.uint8)).save(image)
        ann.write_text(json.dumps({"imgHeight": 24, "imgWidth": 40, "objects": objects}))
    result = invoke("check", root, "--format", "cityscapes", "--val-split", "none",
                    "--out", tmp_path / "check")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "check/check.json").read_text())
    train = report["splits"]["train"]
    assert train["per_class"]["car"] == 2 and train["per_class"]["person"] == 1
    assert [p["boxes"] for p in train["consistency"]["duplicate_pairs"]] == [[0, 1]]
    assert train["consistency"]["share_consistent"] == pytest.approx(1 / 3)
    assert report["consistency_ok"] is False and report["distribution"] is None
    assert "BELOW TARGET" in result.output
    result = invoke("browse", root, "--format", "cityscapes", "--tile", 40,
                    "--out", tmp_path / "g.png")
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "g.png") as im:
        assert im.size == gallery_size(1, 40)
        assert len(set(im.getdata())) > 3  # masks and boxes over the flat grey image
    result = invoke("convert", root, "--from", "cityscapes", "--to", "coco", "--out",
                    tmp_path / "cs.json")
    assert result.exit_code == 0, result.output
    assert len(json.loads((tmp_path / "cs.json").read_text())["annotations"]) == 3
