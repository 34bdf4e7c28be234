"""read_cityscapes on the Cityscapes layout, and tools/cityscapes_to_coco.py."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from kft.data.readers.cityscapes import CITYSCAPES_CLASSES, read_cityscapes
from kft.data.readers.coco import read_coco
from kft.data.readers.detection import decode_masks

TOOL = Path(__file__).resolve().parents[2] / "tools" / "cityscapes_to_coco.py"
H, W = 24, 40


def write_cityscapes(root, split="train", frames=None):
    """Writes ``{city/frame: objects}`` (Cityscapes JSON objects) with 40x24 images."""
    frames = frames or {
        "aachen/aachen_000000_000019": [
            {"label": "road", "polygon": [[0, 12], [39, 12], [39, 23], [0, 23]]},
            {"label": "car", "polygon": [[2, 3], [9, 3], [9, 7], [2, 7]]},
            {"label": "persongroup", "polygon": [[20, 10], [25, 10], [25, 20]]},
            {"label": "bicycle", "polygon": [[30, 5], [45, 5], [45, 15], [30, 15]]},
            {"label": "car", "deleted": 1, "polygon": [[1, 1], [2, 1], [2, 2]]},
        ],
        "bonn/bonn_000001_000002": [{"label": "sky", "polygon": [[0, 0], [5, 0], [5, 5]]}],
    }
    for name, objects in frames.items():
        image = root / "leftImg8bit" / split / f"{name}_leftImg8bit.png"
        ann = root / "gtFine" / split / f"{name}_gtFine_polygons.json"
        image.parent.mkdir(parents=True, exist_ok=True)
        ann.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((H, W, 3), 60, np.uint8)).save(image)
        ann.write_text(json.dumps({"imgHeight": H, "imgWidth": W, "objects": objects}))
    return root


@pytest.fixture
def cityscapes(tmp_path):
    return write_cityscapes(tmp_path / "cityscapes")


def test_instance_classes_crowd_and_clipping(cityscapes):
    split = read_cityscapes(cityscapes, "train")
    assert split.class_names == list(CITYSCAPES_CLASSES) and len(CITYSCAPES_CLASSES) == 8
    assert [r.image_id for r in split.records] == ["aachen_000000_000019",
                                                   "bonn_000001_000002"]
    record, background = split.records
    assert [split.class_names[k] for k in record.labels] == ["car", "person", "bicycle"]
    assert record.iscrowd.tolist() == [False, True, False]
    # Vertices are inclusive pixel coordinates: x 2..9 covers the half-open [2, 10).
    np.testing.assert_array_equal(record.boxes, [[2, 3, 10, 8], [20, 10, 26, 21],
                                                 [30, 5, 40, 16]])
    assert background.num_objects == 0
    counts = split.report.counts
    assert counts["objects_ignored_label"] == 2 and counts["objects_deleted"] == 1
    assert counts["boxes_clipped"] == 1 and counts["images_without_objects"] == 1
    masks = decode_masks(record)
    assert masks.shape == (3, H, W)
    ys, xs = np.nonzero(masks[0])
    # Mask within half a pixel of the box on each side.
    assert 2 <= xs.min() <= 3 and 8 <= xs.max() <= 9 and 3 <= ys.min() <= 4 and 6 <= ys.max() <= 7
    assert masks[2][:, 30:].any() and masks[2].shape[1] == W


def _tool():
    spec = importlib.util.spec_from_file_location("cityscapes_to_coco", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("fmt", ["rle", "polygon"])
def test_tool_writes_coco_that_reads_back(cityscapes, tmp_path, fmt):
    out = tmp_path / "out"
    paths = _tool().main([str(cityscapes), "--split", "train", "--out-dir", str(out),
                          "--segmentation", fmt])
    assert paths == [out / "instances_train.json"]
    assert (out / "instances_train.report.json").is_file()
    coco = COCO(str(paths[0]))
    assert len(coco.getImgIds()) == 2 and len(coco.getAnnIds()) == 3
    original = read_cityscapes(cityscapes, "train")
    back = read_coco(annotation_file=paths[0],
                     image_dir=cityscapes / "leftImg8bit" / "train")
    assert back.class_names == original.class_names
    for a, b in zip(original.records, back.records, strict=True):
        np.testing.assert_allclose(a.boxes, b.boxes)
        assert a.labels.tolist() == b.labels.tolist()
        assert a.iscrowd.tolist() == b.iscrowd.tolist()
        np.testing.assert_array_equal(decode_masks(a), decode_masks(b))
    kind = dict if fmt == "rle" else list
    assert all(isinstance(ann["segmentation"], kind) for ann in coco.anns.values())
