"""read_yolo on folders laid out as Ultralytics and Roboflow export them: exact pixel boxes,
polygons, background images, every kind of bad line, class names, lost annotations, the CLI."""

import json
import shutil
import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from kft.cli_data import data as data_cli
from kft.data.convert import write_yolo
from kft.data.readers.detection import AnnotationsLostError, decode_masks, to_example
from kft.data.readers.formats import read_detection
from kft.data.readers.layout import available_splits, detect_format
from kft.data.readers.yolo import TOLERANCE, label_path, read_yolo

ULTRALYTICS_YAML = """\
# Ultralytics YOLO dataset config, as in ultralytics/cfg/datasets/coco8.yaml
path: ../datasets/parking # dataset root dir (relative to the Ultralytics datasets dir)
train: images/train # train images (relative to 'path')
val: images/val # val images (relative to 'path')
test: # test images (optional)

# Classes
names:
  0: person
  1: car
  2: traffic light
"""

# image stem -> ((width, height), label file text or None for no label file)
ULTRALYTICS_TRAIN = {
    "000001": ((500, 375), "0 0.5 0.5 0.2 0.4\n1 0.1 0.2 0.2 0.4\n"),
    "000002": ((333, 500), "2 0.25 0.75 0.5 0.5\n2 0.5 0.5 abc 0.1\n"),  # bad line 2
    "000003": ((640, 480), "1 0.1 0.1 0.3 0.1 0.3 0.4 0.1 0.4\n"),  # polygon
    "000004": ((375, 500), None),  # no label file: background
    "000005": ((500, 333), ""),  # empty label file: background
    "000006": ((640, 480), "0 0.9 0.9 0.3 0.3\n"),  # reaches past the corner: clipped
    "000007": ((500, 375), "1 0.3 0.3 0.1 0.1\n0 0.7 0.7 0.05 0.05\n"),
}
ULTRALYTICS_VAL = {
    "000101": ((640, 480), "1 0.5 0.5 0.5 0.5\n"),
    "000102": ((333, 500), "0 0.25 0.25 0.1 0.1\n2 0.75 0.75 0.2 0.2\n"),
    "000103": ((500, 375), None),
}


def photo(path, width, height, seed=0):
    y, x = np.mgrid[0:height, 0:width]
    arr = np.stack([x * 255 // (width - 1), y * 255 // (height - 1),
                    np.full_like(x, (37 * seed) % 255)], -1).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def write_split(images_dir, labels_dir, frames, suffix=".jpg"):
    for k, (stem, ((width, height), text)) in enumerate(frames.items()):
        photo(images_dir / f"{stem}{suffix if k != 2 else '.png'}", width, height, k)
        if text is not None:
            labels_dir.mkdir(parents=True, exist_ok=True)
            (labels_dir / f"{stem}.txt").write_text(text)


def write_ultralytics(root):
    """An Ultralytics dataset: data.yaml (names as a dict), images/<split>, labels/<split>."""
    root.mkdir(parents=True)
    (root / "data.yaml").write_text(ULTRALYTICS_YAML)
    for split, frames in (("train", ULTRALYTICS_TRAIN), ("val", ULTRALYTICS_VAL)):
        write_split(root / "images" / split, root / "labels" / split, frames)
    return root


ROBOFLOW_YAML = """\
train: ../train/images
val: ../valid/images
test: ../test/images

nc: 2
names: ['crack', 'pothole']

roboflow:
  workspace: roads
  project: potholes-xyz
  version: 3
  license: CC BY 4.0
  url: https://universe.roboflow.com/roads/potholes-xyz/dataset/3
"""


def write_roboflow(root):
    """Roboflow's YOLO export: <split>/images, <split>/labels for train/valid/test."""
    root.mkdir(parents=True)
    (root / "data.yaml").write_text(ROBOFLOW_YAML)
    rf = "_jpg.rf.5e1c0ffee"
    splits = {
        "train": {f"road1{rf}": ((640, 480), "0 0.5 0.5 0.25 0.5\n1 0.2 0.8 0.1 0.1\n"),
                  f"road2{rf}": ((500, 375), "1 0.5 0.5 1 1\n"),
                  f"road3{rf}": ((333, 500), "")},
        "valid": {f"road4{rf}": ((500, 333), "0 0.1 0.1 0.2 0.2\n")},
        "test": {f"road5{rf}": ((375, 500), "1 0.9 0.9 0.2 0.2\n")},
    }
    for split, frames in splits.items():
        write_split(root / split / "images", root / split / "labels", frames)
    (root / "README.roboflow.txt").write_text("Potholes - v3\n")
    return root


@pytest.fixture(scope="module")
def ultralytics(tmp_path_factory):
    return write_ultralytics(tmp_path_factory.mktemp("yolo") / "parking")


def test_ultralytics_boxes_in_pixels_exactly(ultralytics):
    split = read_yolo(ultralytics, "train")
    assert split.class_names == ["person", "car", "traffic light"]
    assert split.class_names_source == "file" and split.label_to_category is None
    assert split.image_dir == str(ultralytics / "images/train")
    assert "Ultralytics layout" in split.layout_note
    assert [r.image_id for r in split.records] == [f"00000{i}" for i in range(1, 8)]
    by_id = {r.image_id: r for r in split.records}
    a = by_id["000001"]
    assert (a.width, a.height) == (500, 375)
    np.testing.assert_array_equal(a.boxes, [[200, 112.5, 300, 262.5], [0, 0, 100, 150]])
    assert a.labels.tolist() == [0, 1] and a.boxes.dtype == np.float32
    b = by_id["000002"]  # 333x500, second line skipped
    np.testing.assert_array_equal(b.boxes, np.float32([[0, 250, 166.5, 500]]))
    assert b.labels.tolist() == [2]
    np.testing.assert_array_equal(by_id["000006"].boxes, [[480, 360, 640, 480]])  # clipped
    assert by_id["000007"].labels.tolist() == [1, 0]
    assert split.report.counts["images_without_label_file"] == 1
    assert split.report.counts["images_without_objects"] == 2
    assert by_id["000004"].num_objects == 0 and by_id["000005"].num_objects == 0
    skipped = [(e["path"].rsplit("/", 1)[-1], e["field"]) for e in split.report.skipped]
    assert skipped == [("000002.txt", "line 2")]
    assert "'abc' is not a finite number" in split.report.skipped[0]["reason"]
    converted = split.report.converted
    assert len(converted) == 1 and converted[0]["path"].endswith("000006.txt")
    assert converted[0]["reason"].startswith("line 1: coordinates [0.75, 0.75, 1.05, 1.05] go "
                                             "outside [0, 1]")


def test_polygon_line_gives_its_bounding_box_and_mask(ultralytics):
    split = read_yolo(ultralytics, "train", check_images="header")
    record = next(r for r in split.records if r.image_id == "000003")
    assert record.image_path.endswith("000003.png") and (record.width, record.height) == (640, 480)
    np.testing.assert_allclose(record.boxes, [[64, 48, 192, 192]], atol=1e-4)
    assert record.segmentation is not None and len(record.segmentation[0][0]) == 8
    mask = decode_masks(record)[0]
    assert mask.shape == (480, 640) and mask[100:150, 100:150].all() and not mask[:40].any()
    example = to_example(record, with_masks=True)
    assert example["image"].shape == (480, 640, 3)


def test_val_split_and_read_detection(ultralytics):
    val = read_detection("yolo", ultralytics, "val")
    assert len(val) == 3 and val.num_objects == 3
    np.testing.assert_allclose(val.records[1].boxes,
                               [[66.6, 100, 99.9, 150], [216.45, 325, 283.05, 425]], atol=1e-4)
    assert detect_format(ultralytics) == ("yolo", "data.yaml (YOLO)")
    assert available_splits("yolo", ultralytics) == ["train", "val"]
    with pytest.raises(FileNotFoundError) as info:
        read_yolo(ultralytics, "test")
    message = str(info.value)
    assert str(ultralytics / "images/test") in message
    assert "splits found: ['train', 'val']" in message


BAD_LINES = {
    # line text -> (field/kind, text in the reason, counter)
    "0 0.5 0.5 0.2": ("skip", "4 fields", "objects_invalid"),
    "0 0.5 0.5 0.2 0.4 0.1": ("skip", "6 fields", "objects_invalid"),
    "0 0.5 nan 0.2 0.4": ("skip", "'nan' is not a finite number", "objects_invalid"),
    "x 0.5 0.5 0.2 0.4": ("skip", "'x' is not a non-negative integer", "objects_invalid"),
    "1.5 0.5 0.5 0.2 0.4": ("skip", "not a non-negative integer", "objects_invalid"),
    "-1 0.5 0.5 0.2 0.4": ("skip", "not a non-negative integer", "objects_invalid"),
    "3 0.5 0.5 0.2 0.4": ("skip", "class index 3 is out of range", "objects_unknown_class"),
    "0 0.5 0.5 0 0.4": ("skip", "degenerate", "boxes_degenerate"),
    "0 0.5 0.5 0.2 -0.4": ("skip", "degenerate", "boxes_degenerate"),
    "0 1.5 0.5 0.2 0.4": ("skip", "lies outside the image", "boxes_outside"),
    "0 0.1 0.5 0.4 0.4": ("convert", "go outside [0, 1]", "boxes_clipped"),
    "0 0.1 0.1 0.2 0.2 0.1 0.2 0.3": ("skip", "8 fields", "objects_invalid"),
    "0 0.1 0.1 0.5 0.1 0.9 0.1": ("skip", "degenerate polygon", "boxes_degenerate"),
    "0 250 187 100 150": ("skip", "lies outside the image", "boxes_outside"),  # pixels, not 0..1
}


def _one_image(root, text, size=(500, 375), names=("a", "b", "c")):
    (root / "images/train").mkdir(parents=True)
    photo(root / "images/train/img.jpg", *size)
    (root / "labels/train").mkdir(parents=True)
    (root / "labels/train/img.txt").write_text(text)
    (root / "data.yaml").write_text("train: images/train\nnames: [" + ", ".join(names) + "]\n")
    return root


@pytest.mark.parametrize("line", sorted(BAD_LINES))
def test_bad_lines_are_reported_with_file_and_line(line, tmp_path):
    kind, text, counter = BAD_LINES[line]
    good = "1 0.5 0.5 0.5 0.5\n2 0.25 0.25 0.1 0.1\n"
    root = _one_image(tmp_path / "ds", good + line + "\n")
    split = read_yolo(root, "train", check_images="header")
    entries = split.report.skipped if kind == "skip" else split.report.converted
    assert len(entries) == 1, split.report
    entry = entries[0]
    assert entry["path"] == str(root / "labels/train/img.txt")
    where = entry["field"] if kind == "skip" else entry["reason"]
    assert where.startswith("line 3"), entry
    assert text in entry["reason"], entry
    assert split.report.counts[counter] == 1
    assert split.num_objects == (3 if kind == "convert" else 2)


def test_tolerance_clips_silently(tmp_path):
    assert 1e-4 < TOLERANCE <= 1e-3  # exporters' rounding, not a mislabelled box
    root = _one_image(tmp_path / "ds", "0 0.0999 0.5 0.2 0.2\n0 0.5 0.5 1 1.0008\n")
    split = read_yolo(root, "train", check_images="header")
    assert split.report.converted == [] and split.report.skipped == []
    np.testing.assert_allclose(split.records[0].boxes, [[0, 150, 100, 225], [0, 0, 500, 375]],
                               atol=0.3)
    assert split.records[0].boxes.min() >= 0 and split.records[0].boxes[1, 3] == 375


def test_all_lines_lost_is_an_error_most_lost_warns(tmp_path):
    root = _one_image(tmp_path / "a", "3 0.5 0.5 0.2 0.2\n4 0.5 0.5 0.2 0.2\n4 0.1 0.1 0.1 0.1\n")
    with pytest.raises(AnnotationsLostError) as info:
        read_yolo(root, "train")
    message = str(info.value)
    assert "all 3 objects of " + str(root / "labels/train") in message
    assert "class indices not in class_names: 4, 3" in message
    assert "data.yaml names has 3 classes (indices 0..2)" in message
    root = _one_image(tmp_path / "b", "0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2\n0 2 2 0.1 0.1\n")
    with pytest.warns(UserWarning, match=r"2 of 3 objects of .*labels/train were dropped: 1 "
                      r"with a missing or unusable field, 1 with a box outside the image; "
                      r"e\.g\. .*img\.txt \[line 2\]"):
        split = read_yolo(root, "train")
    assert split.num_objects == 1
    root = _one_image(tmp_path / "c", "0 0.5 0.5 0.2 0.2\n1 0.5 0.5 0.2 0.2\n", names=("a",))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 1 of 2: no warning
        split = read_yolo(root, "train")
    assert split.num_objects == 1 and split.report.counts["objects_unknown_class"] == 1


def test_roboflow_export(tmp_path):
    root = write_roboflow(tmp_path / "Potholes.v3i.yolov8")
    assert detect_format(root)[0] == "yolo"
    assert available_splits("yolo", root) == ["test", "train", "valid"]
    train = read_yolo(root, "train")
    assert train.class_names == ["crack", "pothole"] and len(train) == 3
    assert train.image_dir == str(root / "train/images")
    assert "Roboflow layout" in train.layout_note
    np.testing.assert_array_equal(train.records[0].boxes,
                                  [[240, 120, 400, 360], [96, 360, 160, 408]])
    np.testing.assert_array_equal(train.records[1].boxes, [[0, 0, 500, 375]])
    for name in ("valid", "val"):  # the folder name and data.yaml's key
        valid = read_yolo(root, name)
        assert valid.image_dir == str(root / "valid/images")
        np.testing.assert_allclose(valid.records[0].boxes, [[0, 0, 100, 66.6]], atol=1e-4)
    assert read_yolo(root, "test").records[0].labels.tolist() == [1]


def test_roboflow_export_without_its_test_folder(tmp_path):
    # Roboflow's data.yaml names test: ../test/images whether or not the export has a test
    # split; listing the splits used to recurse (resolve_split <-> yolo_splits) without end
    root = write_roboflow(tmp_path / "Potholes.v3i.yolov8")
    shutil.rmtree(root / "test")
    assert available_splits("yolo", root) == ["train", "valid"]
    assert len(read_yolo(root, "val")) == 1
    with pytest.raises(FileNotFoundError, match=r"no YOLO split 'test'.*"
                                                r"splits found: \['train', 'valid'\]"):
        read_yolo(root, "test")
    result = invoke("check", root, "--out", tmp_path / "check")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "check/check.json").read_text())["split_names"] == {
        "train": "train", "val": "valid"}


def test_label_studio_yolo_export_is_one_split_named_all(tmp_path):
    """Label Studio's YOLO export: images/ and labels/ with no split folders, classes.txt."""
    root = tmp_path / "project-7-at-2026-12-01"
    write_split(root / "images", root / "labels", {
        "a1b2c3d4-road1": ((640, 480), "1 0.5 0.5 0.25 0.5\n"),
        "e5f6a7b8-road2": ((333, 500), "0 0.1 0.1 0.2 0.2\n1 0.5 0.5 1 1\n")})
    (root / "classes.txt").write_text("crack\npothole\n")
    (root / "notes.json").write_text('{"categories": [], "info": {}}')
    assert detect_format(root)[0] == "yolo"
    assert available_splits("yolo", root) == ["all"]
    split = read_yolo(root, "all")
    assert split.class_names == ["crack", "pothole"] and len(split) == 2
    assert "Label Studio" in split.layout_note
    np.testing.assert_array_equal(split.records[0].boxes, [[240, 120, 400, 360]])
    assert split.records[1].labels.tolist() == [0, 1]
    with pytest.raises(FileNotFoundError, match=r"splits found: \['all'\]"):
        read_yolo(root, "train")
    result = invoke("check", root, "--out", tmp_path / "check")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "check/check.json").read_text())["split_names"] == {
        "train": "all"}


def test_without_data_yaml_classes_are_named_by_index(tmp_path):
    root = tmp_path / "exported"
    write_split(root / "images" / "train", root / "labels" / "train",
                {"a": ((500, 375), "2 0.5 0.5 0.2 0.2\n"),
                 "b": ((333, 500), "0 0.5 0.5 0.4 0.4\n")})
    assert detect_format(root) == ("yolo", "labels/ beside images/ (YOLO)")
    split = read_yolo(root, "train")
    assert split.class_names == ["0", "1", "2"] and split.class_names_source == "inferred"
    assert "classes named by index" in split.layout_note
    (root / "classes.txt").write_text("wolf\nfox\nbear\n")  # LabelImg's class list
    split = read_yolo(root, "train")
    assert split.class_names == ["wolf", "fox", "bear"] and split.class_names_source == "file"
    given = read_yolo(root, "train", class_names=["x", "y", "z"])
    assert given.class_names_source == "given" and given.class_names == ["x", "y", "z"]


def test_orphan_labels_and_unreadable_images_are_reported(tmp_path):
    root = _one_image(tmp_path / "ds", "0 0.5 0.5 0.2 0.2\n")
    (root / "labels/train/gone.txt").write_text("1 0.5 0.5 0.2 0.2\n")
    photo(root / "images/train/second.jpg", 333, 500)
    (root / "labels/train/second.txt").write_text("1 0.5 0.5 0.2 0.2\n")
    (root / "images/train/broken.jpg").write_bytes(b"not a jpeg")
    (root / "labels/train/broken.txt").write_text("1 0.5 0.5 0.2 0.2\n2 0.1 0.1 0.1 0.1\n")
    (root / "images/train/notes.md").write_text("hand labelled\n")
    split = read_yolo(root, "train")
    assert len(split) == 2
    counts = split.report.counts
    assert counts["label_files_without_image"] == 1 and counts["files_not_images"] == 1
    assert counts["objects_dropped_with_image"] == 2 and counts["images_unreadable"] == 1
    reasons = {e["path"].rsplit("/", 1)[-1]: e["field"] for e in split.report.skipped}
    assert reasons == {"gone.txt": "image", "broken.jpg": "decode", "notes.md": "extension"}


@pytest.mark.parametrize("yaml_text, text", [
    ("train: images/train\nnames: {0: a, 2: b}\n", "class indices must be 0..1, got [0, 2]"),
    ("train: images/train\nnames: [a, b]\nnc: 3\n", "[nc]: nc=3 but names has 2 entries"),
    ("train: images/train\nnames: [a, a]\n", "repeated class names ['a']"),
    ("train: images/train\nnames: 7\n", "[names]: expected a list"),
    ("train: [images/train\nnames: [a]\n", "malformed YAML at line"),
    ("- train\n- val\n", "top level is a list"),
])
def test_bad_data_yaml_is_a_clear_error(yaml_text, text, tmp_path):
    root = _one_image(tmp_path / "ds", "0 0.5 0.5 0.2 0.2\n")
    (root / "data.yaml").write_text(yaml_text)
    with pytest.raises(ValueError) as info:
        read_yolo(root, "train")
    assert str(root / "data.yaml") in str(info.value) and text in str(info.value)


def test_label_path_follows_ultralytics():
    from pathlib import Path

    assert label_path(Path("/d/images/train/a.jpg")) == Path("/d/labels/train/a.txt")
    assert label_path(Path("/d/train/images/sub/a.b.png")) == Path("/d/train/labels/sub/a.b.txt")
    assert label_path(Path("/images/d/images/x.jpg")) == Path("/images/d/labels/x.txt")
    assert label_path(Path("/d/obj_train_data/a.jpg")) == Path("/d/obj_train_data/a.txt")


def test_write_yolo_two_splits_into_one_folder(ultralytics, tmp_path):
    train, val = read_yolo(ultralytics, "train"), read_yolo(ultralytics, "val")
    out = tmp_path / "copy"
    write_yolo(train, out, "train")
    write_yolo(val, out, "valid")
    again_train, again_val = read_yolo(out, "train"), read_yolo(out, "val")
    assert again_val.image_dir == str(out / "images/valid")
    for a, b in ((train, again_train), (val, again_val)):
        assert [r.image_id for r in a.records] == [r.image_id for r in b.records]
        for ra, rb in zip(a.records, b.records, strict=True):
            np.testing.assert_allclose(ra.boxes, rb.boxes, atol=1e-3)
            assert ra.labels.tolist() == rb.labels.tolist()
    other = read_yolo(ultralytics, "val", class_names=["p", "c", "t"])
    with pytest.raises(ValueError, match=r"data\.yaml \[names\].*differ"):
        write_yolo(other, out, "test")


def invoke(*args):
    return CliRunner().invoke(data_cli, [str(a) for a in args])


def test_cli_check_and_browse_yolo_layouts(ultralytics, tmp_path):
    result = invoke("check", ultralytics, "--out", tmp_path / "c1")
    assert result.exit_code == 0, result.output
    assert "format: yolo (data.yaml (YOLO))" in result.output
    assert "Ultralytics layout" in result.output
    assert "classes (from the dataset's files): ['person', 'car', 'traffic light']" in result.output
    report = json.loads((tmp_path / "c1/check.json").read_text())
    assert report["split_names"] == {"train": "train", "val": "val"}
    train = report["splits"]["train"]
    assert train["images"] == 7 and train["objects"] == 7 and train["background_images"] == 2
    assert train["bad_files"]["counts"]["images_without_label_file"] == 1
    assert train["bad_files"]["num_skipped"] == 1
    assert report["splits"]["val"]["per_class"] == {"person": 1, "car": 1, "traffic light": 1}
    roboflow = write_roboflow(tmp_path / "rf")
    result = invoke("check", roboflow, "--out", tmp_path / "c2")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "c2/check.json").read_text())
    assert report["split_names"] == {"train": "train", "val": "valid"}
    assert report["splits"]["train"]["per_class"] == {"crack": 1, "pothole": 2}
    result = invoke("browse", roboflow, "--n", 3, "--tile", 64, "--out", tmp_path / "g.png")
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "g.png") as im:
        assert im.format == "PNG"
    lost = _one_image(tmp_path / "lost", "5 0.5 0.5 0.2 0.2\n")
    result = invoke("check", lost, "--val-split", "none", "--out", tmp_path / "c3")
    assert result.exit_code == 2 and "all 1 objects" in result.output
    assert "Traceback" not in result.output
