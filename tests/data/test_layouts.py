"""Datasets laid out as annotation tools export them: a custom-class VOC folder (CVAT /
LabelImg), CVAT's COCO 1.0 export, Roboflow's COCO export; class inference, lost annotations,
COCO file discovery, format detection and round trips through YOLO."""

import json
import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from kft.cli_data import data as data_cli
from kft.data.convert import write_coco, write_yolo
from kft.data.readers.coco import read_coco
from kft.data.readers.detection import AnnotationsLostError
from kft.data.readers.formats import DETECTION_FORMATS, read_detection
from kft.data.readers.layout import available_splits, detect_format, find_coco_files
from kft.data.readers.voc import VOC_CLASSES, infer_voc_class_names, read_voc
from kft.data.readers.yolo import read_yolo
from kft.data.shapes import make_shapes_detection

SIZES = [(500, 375), (333, 500), (640, 480), (375, 500), (500, 333)]  # (width, height)


def photo(path, width, height, seed=0):
    """A smooth JPEG/PNG of ``width x height`` (gradients and a few blocks, like a photo)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    arr = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1),
                    np.full_like(x, 40 * seed % 255)], -1).astype(np.uint8)
    for _ in range(3):
        x0, y0 = rng.integers(0, width // 2), rng.integers(0, height // 2)
        arr[y0:y0 + height // 4, x0:x0 + width // 4] = rng.integers(0, 255, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def invoke(*args):
    return CliRunner().invoke(data_cli, [str(a) for a in args])


# ------------------------------------------------------------------------------- VOC

def voc_xml(filename, width, height, objects):
    """A VOC annotation as CVAT's "PASCAL VOC 1.1" export writes it (1-based pixel boxes)."""
    objs = "".join(
        f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>0</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for name, b in objects)
    return (f"<annotation><folder></folder><filename>{filename}</filename><source>"
            f"<database>Unknown</database></source><size><width>{width}</width>"
            f"<height>{height}</height><depth>3</depth></size><segmented>0</segmented>{objs}"
            "</annotation>")


# 5 train + 2 val images of several sizes; "rust" only in val
VOC_CUSTOM = {
    "train": [("frame_000", [("scratch", (10, 20, 110, 90)), ("dent", (200, 30, 260, 300))]),
              ("frame_001", [("dent", (1, 1, 333, 500))]),
              ("frame_002", [("scratch", (320, 240, 640, 480)), ("scratch", (5, 5, 50, 40))]),
              ("frame_003", [("dent", (100, 100, 200, 160))]),
              ("frame_004", [])],
    "val": [("frame_005", [("rust", (50, 60, 150, 200)), ("scratch", (1, 2, 33, 44))]),
            ("frame_006", [("dent", (7, 8, 90, 99))])],
}


def write_voc_folder(root, splits=VOC_CUSTOM):
    """A VOC export with only ImageSets/Main/<split>.txt for the splits given (no trainval)."""
    index = 0
    for split, frames in splits.items():
        for stem, objects in frames:
            width, height = SIZES[index % len(SIZES)]
            photo(root / "JPEGImages" / f"{stem}.jpg", width, height, index)
            (root / "Annotations").mkdir(parents=True, exist_ok=True)
            (root / "Annotations" / f"{stem}.xml").write_text(
                voc_xml(f"{stem}.jpg", width, height, objects))
            index += 1
        main = root / "ImageSets" / "Main"
        main.mkdir(parents=True, exist_ok=True)
        (main / f"{split}.txt").write_text("".join(f"{s}\n" for s, _ in frames))
    return root


@pytest.fixture(scope="module")
def voc_custom(tmp_path_factory):
    return write_voc_folder(tmp_path_factory.mktemp("voc") / "defects_voc")


def test_voc_custom_classes_are_inferred_not_dropped(voc_custom):
    split = read_voc(voc_custom, "train")
    assert split.class_names == ["dent", "scratch"] and split.class_names_source == "inferred"
    assert "inferred" in split.layout_note
    assert len(split) == 5 and split.num_objects == 6
    expected = dict(VOC_CUSTOM["train"])
    for record in split.records:
        objects = expected[record.image_id.split("/")[1]]
        assert [split.class_names[k] for k in record.labels] == [n for n, _ in objects]
        want = np.array([[b[0] - 1, b[1] - 1, b[2], b[3]] for _, b in objects],
                        np.float32).reshape(-1, 4)
        np.testing.assert_array_equal(record.boxes, want)
    assert {(r.width, r.height) for r in split.records} == set(SIZES)
    assert split.report.counts.get("objects_unknown_class", 0) == 0
    # train + val together: both get the same labels, "rust" included
    both = infer_voc_class_names(voc_custom, ["train", "val"])
    assert both == ["dent", "rust", "scratch"]
    assert infer_voc_class_names([voc_custom], "val") == ["dent", "rust", "scratch"]
    given = read_voc(voc_custom, "train", class_names=both)
    assert given.class_names_source == "given" and given.num_objects == 6


def test_voc_names_only_from_voc_give_the_voc_classes(tmp_path):
    root = write_voc_folder(tmp_path / "VOC", {"train": [
        ("a", [("dog", (3, 4, 100, 120))]), ("b", [("person", (1, 1, 20, 30))])]})
    split = read_voc(root, "train")
    assert split.class_names == list(VOC_CLASSES) and split.class_names_source == "voc"
    assert [split.class_names[k] for r in split.records for k in r.labels] == ["dog", "person"]


def test_voc_all_objects_unknown_is_an_error_naming_file_and_names(voc_custom):
    with pytest.raises(AnnotationsLostError) as info:
        read_voc(voc_custom, "train", class_names=list(VOC_CLASSES))
    message = str(info.value)
    assert "all 6 objects" in message and str(voc_custom / "ImageSets/Main/train.txt") in message
    assert "'dent'" in message and "'scratch'" in message
    assert "class_names=None" in message
    assert info.value.report.counts["objects_unknown_class"] == 6


def test_voc_most_objects_dropped_warns_half_does_not(voc_custom):
    with pytest.warns(UserWarning, match=r"2 of 3 objects of .*val\.txt have class names not "
                      r"in class_names: .*'scratch'"):
        split = read_voc(voc_custom, "val", class_names=["rust"])
    assert split.num_objects == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 3 of 6 and 1 of 3 dropped: no warning
        half = read_voc(voc_custom, "train", class_names=["dent"])
        third = read_voc(voc_custom, "val", class_names=["dent", "scratch"])
    assert half.num_objects == 3 and half.report.counts["objects_unknown_class"] == 3
    assert third.num_objects == 2 and third.report.counts["objects_unknown_class"] == 1


def test_voc_detection_and_splits(voc_custom):
    assert detect_format(voc_custom)[0] == "voc"
    assert available_splits("voc", voc_custom) == ["train", "val"]


def test_cli_check_voc_custom_with_auto_format(voc_custom, tmp_path):
    result = invoke("check", voc_custom, "--out", tmp_path / "check")
    assert result.exit_code == 0, result.output
    assert "format: voc" in result.output
    assert "classes (inferred from the annotations): ['dent', 'rust', 'scratch']" in result.output
    report = json.loads((tmp_path / "check/check.json").read_text())
    assert report["split_names"] == {"train": "train", "val": "val"}
    assert report["class_names_source"] == "inferred"
    assert report["splits"]["train"]["per_class"] == {"dent": 3, "rust": 0, "scratch": 3}
    assert report["splits"]["val"]["per_class"] == {"dent": 1, "rust": 1, "scratch": 1}
    assert report["splits"]["train"]["background_images"] == 1


# ------------------------------------------------------------------------------ COCO

CATEGORIES = [{"id": 1, "name": "car", "supercategory": ""},
              {"id": 2, "name": "bus", "supercategory": ""}]


def coco_json(images, categories=CATEGORIES):
    """A COCO dict from ``[(file_name, width, height, [(category_id, [x, y, w, h]), ...])]``."""
    data = {"licenses": [{"name": "", "id": 0, "url": ""}],
            "info": {"contributor": "", "date_created": "", "description": "", "url": "",
                     "version": "", "year": ""},
            "categories": categories, "images": [], "annotations": []}
    for i, (name, width, height, anns) in enumerate(images, 1):
        data["images"].append({"id": i, "width": width, "height": height, "file_name": name,
                               "license": 0, "flickr_url": "", "coco_url": "",
                               "date_captured": 0})
        for cid, bbox in anns:
            data["annotations"].append({
                "id": len(data["annotations"]) + 1, "image_id": i, "category_id": cid,
                "segmentation": [], "area": bbox[2] * bbox[3], "bbox": bbox, "iscrowd": 0,
                "attributes": {"occluded": False}})
    return data


CVAT_IMAGES = {
    "train": [("street_01.jpg", [(1, [12.5, 30.25, 100.0, 80.5]), (2, [200, 100, 250, 200])]),
              ("street_02.jpg", [(1, [0, 0, 333, 500])]),
              ("street_03.jpg", [(2, [320.75, 240.5, 319.25, 239.5])])],
    "val": [("street_04.jpg", [(1, [50, 60, 70, 80])]),
            ("street_05.jpg", [])],
}


def write_cvat_coco(root, subsets=CVAT_IMAGES, json_names=None):
    """CVAT's COCO 1.0 export with images: ``annotations/instances_<subset>.json`` and every
    image in one flat ``images/`` folder."""
    (root / "annotations").mkdir(parents=True)
    index = 0
    for subset, frames in subsets.items():
        entries = []
        for name, anns in frames:
            width, height = SIZES[index % len(SIZES)]
            photo(root / "images" / name, width, height, index)
            entries.append((name, width, height, anns))
            index += 1
        name = (json_names or {}).get(subset, f"instances_{subset}.json")
        (root / "annotations" / name).write_text(json.dumps(coco_json(entries)))
    return root


def _xyxy(anns):
    return np.array([[x, y, x + w, y + h] for _, (x, y, w, h) in anns], np.float32).reshape(-1, 4)


def test_cvat_coco_images_folder_is_found(tmp_path):
    root = write_cvat_coco(tmp_path / "cvat_task_12")
    split = read_coco(root, "train")
    assert split.image_dir == str(root / "images")
    assert split.layout_note.startswith(f"images of train: {root / 'images'} (CVAT layout")
    assert split.class_names == ["car", "bus"] and split.class_names_source == "file"
    assert len(split) == 3
    for record, (_, anns) in zip(split.records, CVAT_IMAGES["train"], strict=True):
        np.testing.assert_allclose(record.boxes, _xyxy(anns), atol=1e-4)
        assert [split.label_to_category[k] for k in record.labels] == [c for c, _ in anns]
    # the last box reaches exactly the 640x480 corner: kept as is, not clipped
    assert split.records[2].boxes[0, 2:].tolist() == [640.0, 480.0]
    assert split.report.counts.get("boxes_clipped", 0) == 0
    # CVAT writes "segmentation": [] for plain boxes: no masks, one line in the report
    assert all(r.segmentation is None for r in split.records)
    assert [e["reason"][:50] for e in split.report.skipped] == \
        ["4 annotation(s) have an empty segmentation [] (CVA"]
    path, image_dir, note = find_coco_files(root, "val")
    assert path == root / "annotations/instances_val.json" and image_dir == root / "images"
    assert "CVAT" in note
    val = read_coco(root, "val", check_images="header")
    assert len(val) == 2 and val.report.counts["images_without_objects"] == 1


def test_cvat_default_subset_and_images_subfolder(tmp_path):
    root = tmp_path / "cvat"
    write_cvat_coco(root, {"default": CVAT_IMAGES["train"]})
    split = read_coco(root, "default", check_images="header")
    assert split.image_dir == str(root / "images") and len(split) == 3
    assert available_splits("coco", root) == ["default"]
    # newer CVAT / Datumaro: images/<subset>/
    (root / "images").rename(tmp_path / "flat")
    (root / "images").mkdir()
    (tmp_path / "flat").rename(root / "images" / "default")
    split = read_coco(root, "default", check_images="header")
    assert split.image_dir == str(root / "images" / "default")
    assert "images/<split>" in split.layout_note


def test_an_existing_wrong_folder_is_not_taken(tmp_path):
    root = write_cvat_coco(tmp_path / "data", {"train": CVAT_IMAGES["train"]})
    photo(root / "train" / "unrelated.jpg", 64, 48)  # <root>/train exists but is not it
    split = read_coco(root, "train", check_images="header")
    assert split.image_dir == str(root / "images") and len(split) == 3


def test_nothing_found_lists_every_place_tried(tmp_path):
    root = write_cvat_coco(tmp_path / "data", {"train": CVAT_IMAGES["train"]})
    (root / "images").rename(root / "pictures")
    (root / "train").mkdir()
    with pytest.raises(FileNotFoundError) as info:
        read_coco(root, "train")
    message = str(info.value)
    for place in (root / "train", root / "images" / "train", root / "images", root / "annotations"):
        assert str(place) in message
    assert "'street_01.jpg'" in message and "image_dir" in message
    split = read_coco(root, "train", image_dir=root / "pictures", check_images="header")
    assert len(split) == 3 and "(given)" in split.layout_note
    with pytest.raises(FileNotFoundError) as info:
        read_coco(root, "test")
    message = str(info.value)
    for name in ("annotations/instances_test.json", "annotations/test.json",
                 "test/_annotations.coco.json", "splits found: ['train']"):
        assert name in message


def test_all_annotations_with_unknown_categories_is_an_error(tmp_path):
    root = tmp_path / "coco"
    write_cvat_coco(root, {"train": CVAT_IMAGES["train"]})
    path = root / "annotations/instances_train.json"
    data = json.loads(path.read_text())
    data["categories"] = [{"id": 7, "name": "truck"}]
    path.write_text(json.dumps(data))
    with pytest.raises(AnnotationsLostError, match=r"all 4 objects of .*instances_train\.json "
                       r"have category ids not in class_names: 1, 2.*ids \[7\]"):
        read_coco(root, "train", check_images="header")


ROBOFLOW = {"train": [("IMG_0001_jpg.rf.3f2a9c.jpg", [(1, [10, 10, 100, 50])]),
                      ("IMG_0002_jpg.rf.77b1e0.jpg", [(2, [5, 6, 7, 8]), (1, [0, 0, 30, 30])]),
                      ("IMG_0003_jpg.rf.0c9d11.jpg", [])],
            "valid": [("IMG_0004_jpg.rf.aa01bb.jpg", [(2, [20, 30, 40, 50])])]}
ROBOFLOW_CATEGORIES = [{"id": 0, "name": "vehicles-x1yz", "supercategory": "none"},
                       {"id": 1, "name": "car", "supercategory": "vehicles-x1yz"},
                       {"id": 2, "name": "bus", "supercategory": "vehicles-x1yz"}]


def write_roboflow_coco(root):
    """Roboflow's COCO export: ``<split>/_annotations.coco.json`` beside the images, the
    dataset name as category 0."""
    index = 0
    for split, frames in ROBOFLOW.items():
        entries = []
        for name, anns in frames:
            width, height = SIZES[(index + 1) % len(SIZES)]
            photo(root / split / name, width, height, index)
            entries.append((name, width, height, anns))
            index += 1
        (root / split / "_annotations.coco.json").write_text(
            json.dumps(coco_json(entries, ROBOFLOW_CATEGORIES)))
    (root / "README.roboflow.txt").write_text("exported from roboflow.com\n")
    return root


def test_roboflow_coco_export(tmp_path):
    root = write_roboflow_coco(tmp_path / "Vehicles.v2i.coco")
    assert detect_format(root) == ("coco", "train/_annotations.coco.json (Roboflow COCO)")
    assert available_splits("coco", root) == ["train", "valid"]
    split = read_coco(root, "train")
    assert split.class_names == ["car", "bus"] and split.label_to_category == {0: 1, 1: 2}
    assert split.report.counts["categories_dropped"] == 1
    assert split.image_dir == str(root / "train") and "Roboflow layout" in split.layout_note
    np.testing.assert_array_equal(split.records[1].boxes, [[5, 6, 12, 14], [0, 0, 30, 30]])
    assert split.records[1].labels.tolist() == [1, 0]
    fmt_split = read_detection("coco", root, "valid", check_images="header")
    assert fmt_split.records[0].labels.tolist() == [1] and "yolo" in DETECTION_FORMATS


def test_label_studio_coco_export(tmp_path):
    """Label Studio's COCO export: result.json at the top, file_name "images/<name>"."""
    root = tmp_path / "project-3-at-2026-12-01"
    entries = []
    for index, (name, anns) in enumerate(CVAT_IMAGES["train"]):
        width, height = SIZES[index % len(SIZES)]
        photo(root / "images" / name, width, height, index)
        entries.append((f"images/{name}", width, height, anns))
    (root / "result.json").write_text(json.dumps(coco_json(entries)))
    assert detect_format(root)[0] == "coco" and "Label Studio" in detect_format(root)[1]
    assert available_splits("coco", root) == ["result"]
    (root / "train.json").write_text("{}")  # other JSON at the top are no split
    assert available_splits("coco", root) == ["result"]
    with pytest.raises(FileNotFoundError, match="splits found: \\['result'\\]"):
        read_coco(root, "train")
    split = read_coco(root, "result")
    assert len(split) == 3 and split.class_names == ["car", "bus"]
    assert split.image_dir == str(root)
    for record, (_, anns) in zip(split.records, CVAT_IMAGES["train"], strict=True):
        np.testing.assert_allclose(record.boxes, _xyxy(anns), atol=1e-4)
    result = invoke("check", root, "--out", tmp_path / "check")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "check/check.json").read_text())["splits"]["train"][
        "objects"] == 4


def test_cli_check_cvat_and_roboflow_with_auto_format(tmp_path):
    cvat = write_cvat_coco(tmp_path / "cvat")
    result = invoke("check", cvat, "--out", tmp_path / "c1")
    assert result.exit_code == 0, result.output
    assert "format: coco (annotations/instances_train.json" in result.output
    assert f"images of train: {cvat / 'images'} (CVAT layout" in result.output
    report = json.loads((tmp_path / "c1/check.json").read_text())
    assert report["split_names"] == {"train": "train", "val": "val"}
    assert report["splits"]["train"]["per_class"] == {"car": 2, "bus": 2}
    assert report["splits"]["val"]["objects"] == 1
    roboflow = write_roboflow_coco(tmp_path / "rf")
    result = invoke("check", roboflow, "--out", tmp_path / "c2")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "c2/check.json").read_text())
    assert report["split_names"] == {"train": "train", "val": "valid"}
    assert report["class_names"] == ["car", "bus"]
    assert report["splits"]["train"]["objects"] == 3
    assert "Roboflow layout" in result.output
    # --image-dir for a folder the search cannot find
    (cvat / "images").rename(cvat / "frames")
    result = invoke("check", cvat, "--out", tmp_path / "c3")
    assert result.exit_code == 2 and "--image-dir" in result.output
    assert "Traceback" not in result.output
    result = invoke("check", cvat, "--image-dir", cvat / "frames", "--out", tmp_path / "c3")
    assert result.exit_code == 0, result.output


def test_detect_format_explains_what_is_there(tmp_path):
    shapes = make_shapes_detection(tmp_path / "shapes", num_train=2, num_val=1,
                                   image_size=(40, 48))
    with pytest.raises(FileNotFoundError) as info:
        detect_format(shapes)
    message = str(info.value)
    assert "COCO/" in message and "VOC/" in message
    assert f"{shapes / 'VOC'} (voc)" in message and f"{shapes / 'COCO'} (coco)" in message
    assert detect_format(shapes / "COCO")[0] == "coco"
    city = tmp_path / "city"
    (city / "gtFine/train").mkdir(parents=True)
    (city / "leftImg8bit/train").mkdir(parents=True)
    assert detect_format(city)[0] == "cityscapes"
    assert available_splits("cityscapes", city) == ["train"]
    result = invoke("check", shapes)
    assert result.exit_code == 2 and "cannot tell the dataset format" in result.output


# ----------------------------------------------------------------------- round trips

def test_voc_to_yolo_to_voc_through_the_cli(voc_custom, tmp_path):
    yolo = tmp_path / "yolo"
    for split in ("train", "val"):
        result = invoke("convert", voc_custom, "--to", "yolo", "--split", split, "--out", yolo)
        assert result.exit_code == 0, result.output
        assert "format: voc" in result.output
    assert detect_format(yolo)[0] == "yolo"
    assert (yolo / "images/train/frame_000.jpg").is_file()
    assert (yolo / "labels/train/frame_004.txt").read_text() == ""  # background image
    back = tmp_path / "voc_back"
    result = invoke("convert", yolo, "--to", "voc", "--split", "train", "--out", back)
    assert result.exit_code == 0, result.output
    assert "format: yolo" in result.output and "5 images, 6 objects" in result.output
    names = infer_voc_class_names(voc_custom, ["train", "val"])  # what data.yaml holds
    assert "names:\n  0: dent\n  1: rust\n  2: scratch" in (yolo / "data.yaml").read_text()
    before = read_voc(voc_custom, "train", class_names=names)
    after = read_voc(back, "train", class_names=names)
    assert [r.image_id.split("/")[1] for r in after.records] == \
        [r.image_id.split("/")[1] for r in before.records]
    for a, b in zip(before.records, after.records, strict=True):
        assert a.labels.tolist() == b.labels.tolist()
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
        assert (a.width, a.height) == (b.width, b.height)


def test_coco_to_yolo_to_coco_keeps_boxes(tmp_path):
    root = write_cvat_coco(tmp_path / "cvat")
    original = read_coco(root, "train")
    data_yaml = write_yolo(original, tmp_path / "yolo", "train")
    assert data_yaml.name == "data.yaml"
    yolo = read_yolo(tmp_path / "yolo", "train")
    assert yolo.class_names == original.class_names and yolo.class_names_source == "file"
    out = write_coco(yolo, tmp_path / "back.json", yolo.image_dir)
    back = read_coco(annotation_file=out, image_dir=yolo.image_dir)
    assert len(back) == len(original)
    for a, b in zip(original.records, back.records, strict=True):
        assert a.labels.tolist() == b.labels.tolist()
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
        assert (a.width, a.height) == (b.width, b.height)
    assert [back.class_names[k] for r in back.records for k in r.labels] == \
        [original.class_names[k] for r in original.records for k in r.labels]
