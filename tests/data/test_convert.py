"""VOC <-> COCO conversion: exact round trips on kft's shapes dataset."""

import json

import numpy as np
import pytest
from pycocotools.coco import COCO

from kft.data.convert import coco_to_voc, voc_to_coco
from kft.data.readers.coco import read_coco
from kft.data.readers.voc import read_voc
from kft.data.report import DataReport
from kft.data.shapes import SHAPE_CLASSES, make_shapes_detection

CLASSES = list(SHAPE_CLASSES[:5])


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = make_shapes_detection(tmp_path_factory.mktemp("shapes") / "data", num_train=5,
                                 num_val=2, image_size=(36, 44))
    # One difficult object, to check the flag survives.
    xml = root / "VOC" / "Annotations" / "000002.xml"
    xml.write_text(xml.read_text().replace("<difficult>0</difficult>",
                                           "<difficult>1</difficult>", 1))
    return root


def _same(a, b):
    assert len(a.records) == len(b.records)
    for ra, rb in zip(a.records, b.records, strict=True):
        np.testing.assert_array_equal(ra.boxes, rb.boxes)
        assert ra.labels.tolist() == rb.labels.tolist()
        assert ra.difficult.tolist() == rb.difficult.tolist()
        assert (ra.height, ra.width) == (rb.height, rb.width)


def test_voc_to_coco_to_voc_is_exact(shapes, tmp_path):
    voc = shapes / "VOC"
    original = read_voc(voc, "trainval", class_names=CLASSES)
    assert original.records[1].difficult.any()
    out = voc_to_coco(voc, "trainval", tmp_path / "instances_trainval.json",
                      class_names=CLASSES)
    coco = COCO(str(out))  # pycocotools accepts it
    assert len(coco.getImgIds()) == 7 and len(coco.getAnnIds()) == original.num_objects
    data = json.loads(out.read_text())
    assert [c["name"] for c in data["categories"]] == CLASSES
    assert data["images"][0]["file_name"] == "000001.jpg"
    as_coco = read_coco(annotation_file=out, image_dir=voc / "JPEGImages")
    _same(original, as_coco)
    back = coco_to_voc(out, voc / "JPEGImages", tmp_path / "back")
    assert (back / "ImageSets/Main/trainval.txt").read_text().split()[0] == "000001"
    again = read_voc(back, "trainval", class_names=CLASSES)
    _same(original, again)
    assert [r.image_id.split("/")[1] for r in again.records] == \
        [r.image_id.split("/")[1] for r in original.records]


def test_coco_to_voc_to_coco_keeps_boxes_and_crowd(shapes, tmp_path):
    coco_root = shapes / "COCO"
    path = tmp_path / "instances_train.json"
    data = json.loads((coco_root / "annotations/instances_train.json").read_text())
    data["annotations"][0]["iscrowd"] = 1
    path.write_text(json.dumps(data))
    original = read_coco(annotation_file=path, image_dir=coco_root / "train")
    report = DataReport()
    voc_root = coco_to_voc(path, coco_root / "train", tmp_path / "voc", report=report)
    assert report.counts["crowd_as_difficult"] == 1
    voc = read_voc(voc_root, "train", class_names=CLASSES)
    assert len(voc) == len(original)
    for a, b in zip(original.records, voc.records, strict=True):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        assert a.labels.tolist() == b.labels.tolist()
        # VOC has no crowd flag: crowd objects come back as difficult.
        assert (a.iscrowd | a.difficult).tolist() == b.difficult.tolist()
    assert voc.records[0].difficult[0]
