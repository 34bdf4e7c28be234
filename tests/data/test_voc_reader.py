"""read_voc on the VOC layout: kft's shapes dataset and small hand-written annotations."""

import shutil
from xml.etree import ElementTree as ET

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kft.data.readers.detection import DetectionSplit, load_image, to_example
from kft.data.readers.voc import VOC_CLASSES, read_voc
from kft.data.shapes import SHAPE_CLASSES, make_shapes_detection

CLASSES = list(SHAPE_CLASSES[:5])


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    return make_shapes_detection(root / "data", num_train=6, num_val=3, image_size=(40, 48))


def _xml_objects(path):
    """(name, [xmin, ymin, xmax, ymax] ints, difficult) for every <object>, read directly."""
    out = []
    for obj in ET.parse(path).getroot().iter("object"):
        box = [int(obj.find(f"bndbox/{t}").text) for t in ("xmin", "ymin", "xmax", "ymax")]
        out.append((obj.find("name").text, box, obj.findtext("difficult") == "1"))
    return out


def test_counts_and_boxes_match_the_xml_files(shapes):
    voc = shapes / "VOC"
    split = read_voc(voc, "trainval", class_names=CLASSES)
    stems = (voc / "ImageSets/Main/trainval.txt").read_text().split()
    expected = {s: _xml_objects(voc / "Annotations" / f"{s}.xml") for s in stems}
    assert len(split) == len(stems) == 9
    assert split.num_objects == sum(len(v) for v in expected.values())
    assert split.report.counts["objects"] == split.num_objects
    for record in split.records:
        objs = expected[record.image_id.split("/")[1]]
        assert record.image_id.startswith("VOC/")
        assert [CLASSES[k] for k in record.labels] == [o[0] for o in objs]
        one_based = np.array([o[1] for o in objs], np.float32)
        np.testing.assert_array_equal(record.boxes[:, :2], one_based[:, :2] - 1)
        np.testing.assert_array_equal(record.boxes[:, 2:], one_based[:, 2:])
        assert record.boxes.dtype == np.float32 and record.labels.dtype == np.int32
        assert (record.height, record.width) == (40, 48)
    assert split.report.to_dict()["num_skipped"] == 0


def test_roots_combine_with_unique_ids(shapes, tmp_path):
    for year in ("VOC2007", "VOC2012"):
        shutil.copytree(shapes / "VOC", tmp_path / "VOCdevkit" / year)
    roots = [tmp_path / "VOCdevkit" / "VOC2007", tmp_path / "VOCdevkit" / "VOC2012"]
    one = read_voc(roots[0], "train", class_names=CLASSES, check_images="header")
    both = read_voc(roots, "train", class_names=CLASSES, check_images="header")
    ids = [r.image_id for r in both.records]
    assert len(ids) == len(set(ids)) == 2 * len(one)
    assert ids[0] == "VOC2007/000001" and ids[len(one)] == "VOC2012/000001"
    assert both.num_objects == 2 * one.num_objects
    with pytest.raises(FileNotFoundError, match="VOC2007"):
        read_voc(tmp_path / "VOCdevkit", "train")


def _write(root, stem, objects, size=(24, 32), xml_size=None):
    """A one-image VOC folder: objects are (name, (xmin, ymin, xmax, ymax), difficult)."""
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / d).mkdir(parents=True, exist_ok=True)
    h, w = size
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(root / "JPEGImages" / f"{stem}.jpg")
    xh, xw = xml_size or size
    objs = "".join(
        f"<object><name>{n}</name><difficult>{int(d)}</difficult><bndbox><xmin>{b[0]}</xmin>"
        f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b, d in objects)
    (root / "Annotations" / f"{stem}.xml").write_text(
        f"<annotation><filename>{stem}.jpg</filename><size><width>{xw}</width>"
        f"<height>{xh}</height><depth>3</depth></size>{objs}</annotation>")
    with open(root / "ImageSets/Main/trainval.txt", "a") as f:
        f.write(f"{stem}\n")
    return root


def test_voc_classes_difficult_and_one_based_boxes(tmp_path):
    assert len(VOC_CLASSES) == 20 and VOC_CLASSES[0] == "aeroplane"
    assert VOC_CLASSES[14] == "person" and VOC_CLASSES[-1] == "tvmonitor"
    root = _write(tmp_path / "VOC2007", "000005",
                  [("dog", (1, 1, 10, 5), False), ("person", (3, 4, 32, 24), True)])
    split = read_voc(root)
    record = split.records[0]
    assert split.class_names == list(VOC_CLASSES) and split.label_to_category is None
    np.testing.assert_array_equal(record.boxes, [[0, 0, 10, 5], [2, 3, 32, 24]])
    assert record.labels.tolist() == [VOC_CLASSES.index("dog"), VOC_CLASSES.index("person")]
    assert record.difficult.tolist() == [False, True]
    assert record.iscrowd.tolist() == [False, False]
    easy = read_voc(root, exclude_difficult=True)
    assert easy.records[0].labels.tolist() == [VOC_CLASSES.index("dog")]
    assert easy.report.counts["difficult_excluded"] == 1


def test_image_size_comes_from_the_image(tmp_path):
    root = _write(tmp_path / "VOC", "a", [("cat", (1, 1, 30, 20), False)], size=(24, 32),
                  xml_size=(100, 200))
    split = read_voc(root, check_images="header")
    record = split.records[0]
    assert (record.height, record.width) == (24, 32)
    reasons = split.report.reasons_for(root / "Annotations" / "a.xml")
    assert any("200x100" in r and "32x24" in r for r in reasons)
    assert split.report.counts["image_size_mismatch"] == 1


def test_example_follows_the_design_and_decodes_in_tf(shapes):
    split = read_voc(shapes / "VOC", "val", class_names=CLASSES)
    assert isinstance(split, DetectionSplit)
    example = to_example(split.records[0])
    assert set(example) == {"image", "image_id", "boxes", "labels", "difficult", "iscrowd"}
    assert example["image"].dtype == np.uint8 and example["image"].shape == (40, 48, 3)
    tf_image = tf.io.decode_image(tf.io.read_file(split.records[0].image_path), channels=3)
    assert tf_image.shape == example["image"].shape


def test_exif_rotated_image_is_read_upright(tmp_path):
    root = _write(tmp_path / "VOC", "r", [("cat", (1, 1, 10, 30), False)], size=(24, 32),
                  xml_size=(32, 24))
    stored = np.zeros((24, 32, 3), np.uint8)
    stored[:, :4] = 255  # a white left edge: after orientation 6 (90 degrees clockwise), top
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(root / "JPEGImages" / "r.jpg", exif=exif.tobytes(), quality=95)
    split = read_voc(root)
    record = split.records[0]
    assert (record.height, record.width) == (32, 24)
    assert record.source_path.endswith("r.jpg") and record.image_path != record.source_path
    upright = load_image(record)
    assert upright[:3].mean() > 200 and upright[-3:].mean() < 50
    tf_image = tf.io.decode_image(tf.io.read_file(record.image_path), channels=3).numpy()
    assert tf_image.shape == (32, 24, 3) and tf_image[:3].mean() > 200
    assert split.report.to_dict()["num_converted"] == 1
    assert split.report.counts.get("image_size_mismatch", 0) == 0
