"""read_coco on the COCO layout: kft's shapes dataset and a hand-written file with every kind of
segmentation."""

import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from kft.data.readers.coco import read_coco
from kft.data.readers.detection import check_rle, decode_masks, rle_string_counts, to_example
from kft.data.shapes import make_shapes_detection


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    return make_shapes_detection(root / "data", num_train=6, num_val=3, image_size=(40, 48))


def test_counts_boxes_and_masks_match_the_json(shapes):
    coco = shapes / "COCO"
    data = json.loads((coco / "annotations/instances_train.json").read_text())
    split = read_coco(coco, "train")
    assert len(split) == len(data["images"]) == 6
    assert split.num_objects == len(data["annotations"])
    assert split.report.counts["objects"] == len(data["annotations"])
    assert split.class_names == [c["name"] for c in data["categories"]]
    by_image = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    for record in split.records:
        anns = by_image[record.image_id]
        x, y, w, h = np.array([a["bbox"] for a in anns], np.float32).T
        np.testing.assert_array_equal(record.boxes, np.stack([x, y, x + w, y + h], 1))
        assert [split.label_to_category[k] for k in record.labels] == \
            [a["category_id"] for a in anns]
        masks = decode_masks(record)
        assert masks.shape == (len(anns), 40, 48) and masks.dtype == np.uint8
        # The generator's instance PNG holds the same masks (index k + 1 for object k).
        instance = np.asarray(Image.open(shapes / f"VOC/SegmentationObject/{record.image_id:06d}.png"))
        for k, mask in enumerate(masks):
            np.testing.assert_array_equal(mask, instance == k + 1)


def test_image_dir_and_annotation_file_are_configurable(shapes):
    coco = shapes / "COCO"
    split = read_coco(annotation_file=coco / "annotations/instances_val.json",
                      image_dir=coco / "val", check_images="header")
    assert len(split) == 3 and all(r.image_path.startswith(str(coco / "val"))
                                   for r in split.records)


def _square(h, w, x0, y0, x1, y1):
    mask = np.zeros((h, w), np.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


def _uncompressed_rle(mask):
    """COCO's uncompressed RLE counts: run lengths in column-major order, starting with 0s."""
    flat = mask.flatten(order="F")
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    runs = np.diff(bounds).tolist()
    return [0] + runs if flat[0] else runs


def test_sparse_category_ids_crowd_and_all_segmentation_kinds(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "imgs" / "a.png")
    compressed = mask_utils.encode(np.asfortranarray(_square(20, 30, 5, 5, 9, 8)))
    crowd = _square(20, 30, 20, 10, 30, 20)
    data = {
        "images": [{"id": 42, "file_name": "a.png", "height": 20, "width": 30}],
        "categories": [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"},
                       {"id": 7, "name": "train"}],
        "annotations": [
            {"id": 1, "image_id": 42, "category_id": 90, "bbox": [1, 2, 4, 3], "iscrowd": 0,
             "segmentation": [[1, 2, 5, 2, 5, 5, 1, 5]]},
            {"id": 2, "image_id": 42, "category_id": 7, "bbox": [5, 5, 4, 3], "iscrowd": 0,
             "segmentation": {"size": [20, 30], "counts": compressed["counts"].decode()}},
            {"id": 3, "image_id": 42, "category_id": 1, "bbox": [20, 10, 10, 10], "iscrowd": 1,
             "segmentation": {"size": [20, 30], "counts": _uncompressed_rle(crowd)}},
        ],
    }
    path = tmp_path / "annotations" / "instances_x.json"
    path.write_text(json.dumps(data))
    split = read_coco(tmp_path, "x", image_dir=tmp_path / "imgs")
    assert split.class_names == ["person", "train", "toothbrush"]
    assert split.label_to_category == {0: 1, 1: 7, 2: 90}
    record = split.records[0]
    assert record.image_id == 42
    assert record.labels.tolist() == [2, 1, 0]
    assert record.iscrowd.tolist() == [False, False, True]
    np.testing.assert_array_equal(record.boxes, [[1, 2, 5, 5], [5, 5, 9, 8], [20, 10, 30, 20]])
    masks = to_example(record, with_masks=True)["masks"]
    np.testing.assert_array_equal(masks[0], _square(20, 30, 1, 2, 5, 5))
    np.testing.assert_array_equal(masks[1], _square(20, 30, 5, 5, 9, 8))
    np.testing.assert_array_equal(masks[2], crowd)
    assert split.report.to_dict()["num_skipped"] == 0


def test_rle_strings_are_validated_like_pycocotools_reads_them():
    rng = np.random.default_rng(0)
    for _ in range(20):
        h, w = rng.integers(1, 40, 2)
        mask = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        counts = mask_utils.encode(np.asfortranarray(mask))["counts"].decode()
        assert rle_string_counts(counts) == _uncompressed_rle(mask)
        assert check_rle({"size": [int(h), int(w)], "counts": counts}, h, w) is None
        assert check_rle({"size": [int(h), int(w)], "counts": counts}, h + 1, w) is not None
    assert rle_string_counts("!") is None and rle_string_counts("a") is None  # cut short


def test_records_without_segmentation_get_empty_masks(shapes):
    record = read_coco(shapes / "COCO", "val", check_images="header").records[0]
    record.segmentation = None
    masks = decode_masks(record)
    assert masks.shape == (record.num_objects, 40, 48) and not masks.any()
