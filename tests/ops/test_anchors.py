import math

import numpy as np
import pytest
from keras import ops

from kft.ops import anchors as A
from kft.ops.boxes import pairwise_iou


def test_ssd300_and_ssd512_counts():
    assert A.num_boxes_per_location(A.SSD300_ASPECT_RATIOS) == [4, 6, 6, 6, 4, 4]
    boxes = A.ssd_default_boxes(300, A.SSD300_FEATURE_SHAPES, sizes=A.SSD300_SIZES,
                                steps=A.SSD300_STEPS)
    assert boxes.shape == (8732, 4) and boxes.dtype == np.float32
    assert boxes.min() >= 0 and boxes.max() <= 300
    np.testing.assert_allclose(boxes[0], [0, 0, 4 + 10.5, 4 + 10.5], atol=1e-5)  # 21 px at (4, 4)
    boxes = A.ssd_default_boxes(512, A.SSD512_FEATURE_SHAPES, sizes=A.SSD512_SIZES,
                                aspect_ratios=A.SSD512_ASPECT_RATIOS, steps=A.SSD512_STEPS)
    assert boxes.shape == (24564, 4)


def test_linear_sizes_rule():
    np.testing.assert_allclose(A.linear_sizes(6), [0.2, 0.34, 0.48, 0.62, 0.76, 0.9, 1.04])
    with pytest.raises(ValueError):
        A.ssd_default_boxes(300, (38, 19), aspect_ratios=((2,),))


def test_ssd_order_by_hand():
    # 100x100 image, one 2x2 map (step 50), sizes 20 and sqrt(20 * 80) = 40 pixels, ratio 2.
    boxes = A.ssd_default_boxes(100, [2], sizes=(0.2, 0.8), aspect_ratios=((2,),), clip=False)
    assert boxes.shape == (16, 4)
    w, h = 20 * math.sqrt(2), 20 / math.sqrt(2)
    np.testing.assert_allclose(boxes[:4], [
        [15, 15, 35, 35], [5, 5, 45, 45],
        [25 - w / 2, 25 - h / 2, 25 + w / 2, 25 + h / 2],
        [25 - h / 2, 25 - w / 2, 25 + h / 2, 25 + w / 2]], rtol=1e-5)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    np.testing.assert_allclose(centres[::4], [[25, 25], [75, 25], [25, 75], [75, 75]])


def test_non_square_image_and_clip():
    boxes = A.ssd_default_boxes((60, 120), [(3, 6)], sizes=(0.5, 0.5), aspect_ratios=((),))
    assert boxes.shape == (36, 4)
    assert boxes[:, [0, 2]].max() <= 120 and boxes[:, [1, 3]].max() <= 60
    # Sizes are fractions of the shorter side: the centre box is a 30x30 square.
    np.testing.assert_allclose(boxes[2 * 8], [35, 15, 65, 45])     # cell (1, 2), centre (50, 30)


def test_grid_anchors():
    anchors = A.grid_anchors(64, strides=(16, 32), sizes=(32, 64))
    assert anchors.shape == (4 * 4 * 3 + 2 * 2 * 3, 4)
    w, h = 32 * math.sqrt(0.5), 32 / math.sqrt(0.5)          # ratio = width / height
    np.testing.assert_allclose(anchors[0], [8 - w / 2, 8 - h / 2, 8 + w / 2, 8 + h / 2],
                               rtol=1e-5)
    areas = (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])
    np.testing.assert_allclose(areas[:48], 32 * 32, rtol=1e-5)
    np.testing.assert_allclose(areas[48:], 64 * 64, rtol=1e-5)
    sizes = A.sizes_from_scales((16,), (2, 4, 8))
    assert sizes == ((32.0, 64.0, 128.0),)
    assert A.num_anchors_per_location(sizes) == [9]
    anchors = A.grid_anchors((40, 50), (16,), sizes, offset=0.0)
    assert anchors.shape == (3 * 4 * 9, 4)                   # ceil(40/16) x ceil(50/16)
    np.testing.assert_allclose((anchors[9, :2] + anchors[9, 2:]) / 2, [16, 0])


def _small_elongated(n, rng):
    side = rng.uniform(10, 22, n)
    ratio = rng.uniform(2.7, 3.6, n) ** rng.choice([-1, 1], n)
    w, h = side * np.sqrt(ratio), side / np.sqrt(ratio)
    x, y = rng.uniform(0, 160 - w), rng.uniform(0, 160 - h)
    return np.stack([x, y, x + w, y + h], axis=1).astype("float32")


def test_fit_improves_coverage_of_small_elongated_boxes():
    rng = np.random.default_rng(0)
    shapes = (20, 10, 5, 3, 2, 1)
    gt = _small_elongated(200, rng)
    fit = A.fit_default_box_sizes(gt, 160, 6, feature_shapes=shapes)
    report = fit["report"]
    assert report["coverage_after"] > report["coverage_before"] + 0.3
    assert 3 in fit["aspect_ratios"][0]
    boxes = A.ssd_default_boxes(160, shapes, sizes=fit["sizes"],
                                aspect_ratios=fit["aspect_ratios"])
    assert len(boxes) == report["num_default_boxes_after"]
    best = ops.convert_to_numpy(pairwise_iou(gt, boxes)).max(axis=1)
    assert np.mean(best >= 0.5) == pytest.approx(report["coverage_after"])
    assert list(fit["sizes"]) == sorted(fit["sizes"])
    wh = A.fit_default_box_sizes(gt[:, 2:] - gt[:, :2], 160, 6, feature_shapes=shapes)
    assert wh["report"]["coverage_after"] > wh["report"]["coverage_before"]


def test_rcnn_anchors_are_torchvisions_anchor_generator():
    """The RPN fixture's anchors come from torchvision's AnchorGenerator (sizes 32..512, one
    per level, ratios h/w 0.5, 1, 2 on a 64 x 128 image): rcnn_anchors gives them exactly."""
    from pathlib import Path

    from kft.ops.anchors import rcnn_anchors

    fixture = np.load(Path(__file__).parents[1] / "fixtures" / "rpn_torchvision.npz")
    height, width = (int(v) for v in fixture["image_size"])
    shapes = [(-(-height // s), -(-width // s)) for s in (4, 8, 16, 32, 64)]
    anchors = rcnn_anchors((height, width), shapes, (32, 64, 128, 256, 512), (2.0, 1.0, 0.5))
    np.testing.assert_array_equal(anchors, fixture["anchors"])


def test_rcnn_anchors_strides_sizes_and_order():
    from kft.ops.anchors import rcnn_anchors

    # torchvision's integer stride: an 800 px image with a 13-cell level has stride 61
    a = rcnn_anchors((800, 800), [(13, 13)], [(512,)], (1.0,))
    np.testing.assert_array_equal(a[1], [61 - 256, -256, 61 + 256, 256])
    # ratio-major per location: ratio 2 (w/h) for both sizes first, then ratio 0.5
    a = rcnn_anchors((32, 32), [(1, 1)], [(16, 32)], (2.0, 0.5))
    wh = a[:, 2:] - a[:, :2]
    np.testing.assert_array_equal(wh, [[22, 12], [46, 22], [12, 22], [22, 46]])
    with pytest.raises(ValueError, match="one sizes entry per feature map"):
        rcnn_anchors(64, [(16, 16), (8, 8)], (32,))


# --- fit_rcnn_anchor_sizes (Faster R-CNN, M7) --------------------------------------------------


def _small_objects(n=1500, seed=0, side=320):
    """Traffic-sign-like boxes: 5 - 28 px, near square, anywhere in a ``side`` px image."""
    rng = np.random.default_rng(seed)
    w = rng.uniform(5, 28, n)
    h = w * rng.uniform(0.8, 1.25, n)
    x, y = rng.uniform(0, side - 30, n), rng.uniform(0, side - 30, n)
    return np.stack([x, y, x + w, y + h], axis=1)


def test_rcnn_fit_measures_best_iou_exactly_and_moves_anchors_to_small_objects():
    side, shapes = 320, [80, 40, 20, 10, 5]                   # ResNet-FPN P2..P6 on 320
    boxes = _small_objects(side=side)
    fit = A.fit_rcnn_anchor_sizes(boxes, side, shapes)
    report = fit["report"]
    # the analytic nearest-centre best IoU is the brute-force one over rcnn_anchors' grid
    for sizes, key in ((report["baseline_sizes"], "before"),
                       ([s[0] for s in fit["anchor_sizes"]], "after")):
        anchors = A.rcnn_anchors(side, shapes, [(s,) for s in sizes])
        best = np.concatenate([A._np_iou(boxes[i:i + 300], anchors).max(axis=1)
                               for i in range(0, len(boxes), 300)])
        assert report[f"mean_best_iou_{key}"] == pytest.approx(best.mean(), abs=1e-6)
        assert report[f"coverage_{key}"] == pytest.approx(np.mean(best >= 0.5), abs=1e-9)
        assert report[f"coverage_at_0.7_{key}"] == pytest.approx(np.mean(best >= 0.7),
                                                                 abs=1e-9)
    sizes = [s[0] for s in fit["anchor_sizes"]]
    assert sizes == sorted(sizes) and all(s == int(s) for s in sizes)
    assert sizes[0] <= 16 and sizes[1] <= 32           # torchvision's 32 / 64 miss these
    assert report["coverage_before"] < 0.5 < 0.85 < report["coverage_after"]
    assert report["mean_best_iou_after"] > report["mean_best_iou_before"] + 0.15
    assert report["num_boxes"] == len(boxes) and 5 < report["box_size_percentiles"][1] < 28
    # widths / heights alone work too (placed at seeded positions), and give similar sizes
    wh = A.fit_rcnn_anchor_sizes(boxes[:, 2:] - boxes[:, :2], side, shapes)
    assert wh["report"]["coverage_after"] > 0.85
    assert abs(wh["anchor_sizes"][0][0] - sizes[0]) <= 4


def test_rcnn_fit_keeps_torchvisions_sizes_when_they_already_fit():
    rng = np.random.default_rng(1)
    n, side, shapes = 800, 512, [128, 64, 32, 16, 8]
    sizes = rng.choice([32, 64, 128, 256, 512], n).astype(float)
    w = sizes * rng.uniform(0.95, 1.05, n)
    boxes = np.stack([np.zeros(n), np.zeros(n), np.minimum(w, side), np.minimum(w, side)], 1)
    fit = A.fit_rcnn_anchor_sizes(boxes, side, shapes)
    assert fit["report"]["coverage_after"] >= fit["report"]["coverage_before"] > 0.9
    assert [s[0] for s in fit["anchor_sizes"]][:3] == pytest.approx([32, 64, 128], rel=0.15)
    with pytest.raises(ValueError, match="baseline_sizes has 2 entries"):
        A.fit_rcnn_anchor_sizes(boxes, side, shapes, baseline_sizes=(32, 64))
