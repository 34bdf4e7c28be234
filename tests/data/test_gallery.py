"""kft.data.gallery: tiles, grids, the shapes gallery and the check plots."""

import numpy as np
import pytest
from PIL import Image

from kft.data import gallery
from kft.data.readers.coco import read_coco
from kft.data.shapes import make_shapes_detection
from kft.data.stats import box_geometry, compare_splits


@pytest.fixture(scope="module")
def shapes_coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("gallery") / "shapes"
    make_shapes_detection(root, num_train=6, num_val=3, image_size=48, seed=1)
    train = read_coco(root / "COCO", "train", check_images="header")
    val = read_coco(root / "COCO", "val", check_images="header")
    return train, val


def test_gallery_grid_and_size():
    assert gallery.gallery_grid(16) == (4, 4)
    assert gallery.gallery_grid(5) == (2, 3)
    assert gallery.gallery_grid(5, cols=5) == (1, 5)
    assert gallery.gallery_grid(2, cols=8) == (1, 2)
    assert gallery.gallery_size(5, tile=10, pad=2) == (3 * 10 + 4 * 2, 2 * 10 + 3 * 2)
    with pytest.raises(ValueError, match="at least one"):
        gallery.gallery_grid(0)


def test_draw_example_box_mask_and_letterbox():
    image = np.zeros((50, 100, 3), np.uint8)
    masks = np.zeros((1, 50, 100), np.uint8)
    masks[0, 30:40, 60:80] = 1
    tile = np.asarray(gallery.draw_example(image, [[10, 10, 40, 40]], [0], ["thing"], masks,
                                           tile=100))
    assert tile.shape == (100, 100, 3)
    colour = gallery.class_colours(1)[0]
    # image scaled by 1.0 and centred vertically: offset (0, 25); box outline at x=10
    np.testing.assert_array_equal(tile[25 + 25, 10], colour)
    blended = tile[25 + 35, 70].astype(float)
    np.testing.assert_allclose(blended, np.asarray(colour) * gallery.MASK_ALPHA, atol=2)
    np.testing.assert_array_equal(tile[5, 50], gallery.BACKGROUND)  # letterbox band
    np.testing.assert_array_equal(tile[25 + 45, 95], [0, 0, 0])  # untouched image


def test_padded_boxes_are_not_drawn():
    image = np.zeros((20, 20, 3), np.uint8)
    tile = gallery.draw_example(image, [[2, 2, 18, 18]], [-1], ["a"], tile=20)
    assert np.asarray(tile).max() == 0


def test_browse_shapes_size_and_content(shapes_coco, tmp_path):
    train, _ = shapes_coco
    sheet = gallery.browse(train, 5, seed=0, tile=64)
    assert sheet.size == gallery.gallery_size(5, 64)
    path = gallery.save_png(sheet, tmp_path / "g" / "gallery.png")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == sheet.size
    assert len(np.unique(np.asarray(sheet).reshape(-1, 3), axis=0)) > 100
    assert gallery.browse(train, 100, tile=32).size == gallery.gallery_size(len(train), 32)
    assert gallery.pick_records(train, 3, seed=0) == gallery.pick_records(train, 3, seed=0)


def test_augment_example_calls_with_the_documented_dict():
    seen = {}

    def flip(data, seed=None):
        seen.update(data=data, seed=seed)
        image = data["images"][:, ::-1]
        boxes = data["bounding_boxes"]["boxes"].copy()
        boxes[:, [0, 2]] = image.shape[1] - boxes[:, [2, 0]]
        return {"images": image, "segmentation_masks": data["segmentation_masks"][:, ::-1],
                "bounding_boxes": {"boxes": boxes, "labels": data["bounding_boxes"]["labels"]}}

    image = np.zeros((10, 20, 3), np.uint8)
    masks = np.zeros((1, 10, 20), np.uint8)
    masks[0, :, :5] = 1
    out_image, boxes, labels, out_masks = gallery.augment_example(
        flip, image, [[0, 0, 5, 10]], [3], masks, seed=7)
    assert seen["seed"].tolist() == [7, 0] and seen["data"]["images"].dtype == np.float32
    assert seen["data"]["segmentation_masks"].shape == (10, 20, 1)
    np.testing.assert_array_equal(boxes, [[15, 0, 20, 10]])
    assert out_masks.shape == (1, 10, 20) and out_masks[0, :, 15:].all()
    assert labels.tolist() == [3] and out_image.shape == (10, 20, 3)


def test_check_plots_are_pngs(shapes_coco, tmp_path):
    train, val = shapes_coco
    per_class = {"train": {n: 3 for n in train.class_names},
                 "val": {n: 1 for n in train.class_names}}
    paths = [gallery.plot_class_histogram(per_class, tmp_path / "h.png"),
             gallery.plot_box_sizes({"train": box_geometry(train), "val": box_geometry(val)},
                                    tmp_path / "s.png"),
             gallery.plot_class_distributions(compare_splits(train, val), tmp_path / "d.png")]
    for path in paths:
        with Image.open(path) as im:
            assert im.format == "PNG" and im.width > 200 and im.height > 100
