"""D3 detection augmentation: hand-checked boxes, masks follow boxes, seeds, tf.data, batch ops."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kft.data import detection_augment as da
from kft.ops.boxes import pairwise_iou

SEED = tf.constant([1, 2], tf.int32)
H, W = 40, 60


def _example(boxes, height=H, width=W, labels=None, masks=True, seed=0):
    """Random pixels; each box's pixels set to 255 in channel 0 of its own mask."""
    rng = np.random.default_rng(seed)
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    n = len(boxes)
    out = {"images": rng.uniform(0, 255, (height, width, 3)).astype("float32"),
           "bounding_boxes": {"boxes": boxes,
                              "labels": np.arange(n, dtype=np.int32) if labels is None
                              else np.asarray(labels, np.int32)}}
    if masks:
        m = np.zeros((height, width, n), np.uint8)
        for i, (x1, y1, x2, y2) in enumerate(boxes.astype(int)):
            m[y1:y2, x1:x2, i] = 1
        out["segmentation_masks"] = m
    return out


def _np(data):
    return tf.nest.map_structure(lambda t: np.asarray(t), data)


def _mask_boxes(masks):
    """xyxy bounding box of each channel of [H, W, N] masks (half-open)."""
    out = []
    for i in range(masks.shape[-1]):
        ys, xs = np.nonzero(masks[..., i])
        out.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return np.asarray(out, np.float32).reshape(-1, 4)


def _assert_consistent(out, tol=1.5):
    """Boxes inside the image, >= 1 px, labels int32 aligned with boxes and mask channels, and
    each mask's bounding box matching its box within ``tol`` px."""
    out = _np(out)
    boxes, labels = out["bounding_boxes"]["boxes"], out["bounding_boxes"]["labels"]
    h, w = out["images"].shape[:2]
    assert labels.dtype == np.int32 and boxes.shape == (len(labels), 4)
    assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= w).all() and (boxes[:, [1, 3]] <= h).all()
    assert (boxes[:, 2:] - boxes[:, :2] >= 1).all()
    if "segmentation_masks" in out:
        masks = out["segmentation_masks"]
        assert masks.shape == (h, w, len(labels))
        np.testing.assert_allclose(_mask_boxes(masks), boxes, atol=tol)


def test_flip_hand_checked_and_masks_follow():
    data = _example([[30, 10, 50, 20], [0, 0, 5, 40]])
    out = _np(da.RandomHorizontalFlip(p=1.0)(data, seed=SEED))
    np.testing.assert_array_equal(out["bounding_boxes"]["boxes"],
                                  [[10, 10, 30, 20], [55, 0, 60, 40]])  # x1' = W - x2
    np.testing.assert_array_equal(out["images"], data["images"][:, ::-1])
    assert out["segmentation_masks"].dtype == np.uint8
    _assert_consistent(out, tol=0)
    same = _np(da.RandomHorizontalFlip(p=0.0)(data, seed=SEED))
    np.testing.assert_array_equal(same["images"], data["images"])
    off = _np(da.RandomHorizontalFlip(p=1.0)(data, seed=SEED, training=False))
    np.testing.assert_array_equal(off["bounding_boxes"]["boxes"], data["bounding_boxes"]["boxes"])


def test_rotation_boxes_are_the_bounds_of_the_rotated_corners():
    data = _example([[30, 10, 50, 20]])
    data["images"][:] = 0.0
    data["images"][10:20, 30:50] = 255.0
    layer = da.RandomRotate(20, p=1.0, fill=0.0)
    out = _np(layer.rotate(da.standardize(data), tf.constant(20.0)))
    # Counter-clockwise 20 degrees about (30, 20): corners (30,10),(50,10),(50,20),(30,20) map to
    # (26.58,10.60),(45.37,3.76),(48.79,13.16),(30,20).
    np.testing.assert_allclose(out["bounding_boxes"]["boxes"], [[26.58, 3.763, 48.794, 20.0]],
                               atol=0.01)
    bright = (out["images"][..., 0] > 127)[..., None]
    np.testing.assert_allclose(_mask_boxes(bright), out["bounding_boxes"]["boxes"], atol=1.0)
    _assert_consistent(out, tol=1.0)
    # Keras' own box affine agrees up to its half-pixel centre offset.
    keras_boxes = keras.utils.bounding_boxes.affine_transform(
        data["bounding_boxes"]["boxes"][None], *np.float32([[20], [0], [0], [1], [0], [0]]),
        H, W)
    np.testing.assert_allclose(out["bounding_boxes"]["boxes"], np.asarray(keras_boxes)[0],
                               atol=0.5)


def test_rotation_by_90_degrees_matches_rot90_and_drops_boxes_rotated_out():
    data = _example([[2, 4, 6, 10], [0, 0, 3, 3]], height=16, width=16)
    sq = _np(da.RandomRotate(90, p=1.0).rotate(da.standardize(data), 90.0))
    np.testing.assert_allclose(sq["images"], np.rot90(data["images"]), atol=0.05)
    # (x, y) -> (8 + (y - 8), 8 - (x - 8)) for x in [2, 6], y in [4, 10]
    np.testing.assert_allclose(sq["bounding_boxes"]["boxes"][0], [4, 10, 10, 14], atol=1e-4)
    tilted = _np(da.RandomRotate(45, p=1.0).rotate(da.standardize(data), 45.0))
    np.testing.assert_array_equal(tilted["bounding_boxes"]["labels"], [0])  # corner box gone
    assert tilted["segmentation_masks"].shape[-1] == 1
    _assert_consistent(tilted, tol=1.5)
    # 16 x 40, about (20, 8): (x, y) -> (20 + (y - 8), 28 - x). Box 0 keeps 2 of its 13 rows.
    wide = da.standardize(_example([[1, 4, 14, 12], [16, 4, 24, 12]], height=16, width=40))
    strict = _np(da.RandomRotate(90, min_visible=0.3).rotate(wide, 90.0))
    np.testing.assert_array_equal(strict["bounding_boxes"]["labels"], [1])
    np.testing.assert_allclose(strict["bounding_boxes"]["boxes"], [[16, 4, 24, 12]], atol=1e-4)
    loose = _np(da.RandomRotate(90, min_visible=0.0).rotate(wide, 90.0))
    np.testing.assert_allclose(loose["bounding_boxes"]["boxes"][0], [16, 14, 24, 16], atol=1e-4)
    _assert_consistent(loose, tol=0.01)


def test_expand_shifts_boxes_and_places_the_image_on_a_mean_canvas():
    data = _example([[30, 10, 50, 20]])
    layer = da.RandomExpand(p=1.0, fill=(1.0, 2.0, 3.0))
    out = _np(layer.expand(da.standardize(data), 3, 5, 2, 4))
    assert out["images"].shape == (H + 5, W + 9, 3)
    np.testing.assert_array_equal(out["bounding_boxes"]["boxes"], [[35, 13, 55, 23]])
    np.testing.assert_array_equal(out["images"][3:3 + H, 5:5 + W], data["images"])
    np.testing.assert_array_equal(out["images"][0, 0], [1, 2, 3])
    for i in range(3):
        out = _np(da.RandomExpand(max_ratio=3.0, p=1.0)(data, seed=tf.constant([i, 7])))
        h, w = out["images"].shape[:2]
        assert H <= h <= 3 * H and W <= w <= 3 * W
        dx, dy = out["bounding_boxes"]["boxes"][0, :2] - [30, 10]
        np.testing.assert_array_equal(out["images"][int(dy):int(dy) + H, int(dx):int(dx) + W],
                                      data["images"])
        _assert_consistent(out, tol=0)


def test_crop_keeps_boxes_with_centres_inside_and_clips_them():
    data = _example([[5, 5, 25, 15], [0, 0, 12, 10], [20, 22, 30, 30]])
    out = _np(da.crop_example(da.standardize(data), tf.constant([10, 4, 40, 34])))
    # Box 1's centre (6, 5) is outside, so it goes although it overlaps the crop.
    np.testing.assert_array_equal(out["bounding_boxes"]["labels"], [0, 2])
    np.testing.assert_array_equal(out["bounding_boxes"]["boxes"], [[0, 1, 15, 11], [10, 18, 20, 26]])
    np.testing.assert_array_equal(out["images"], data["images"][4:34, 10:40])
    _assert_consistent(out, tol=0)


def _coordinate_image(height=H, width=W):
    """Channel 0 = column, channel 1 = row: any crop reveals its offset."""
    ys, xs = np.mgrid[0:height, 0:width].astype("float32")
    return np.stack([xs, ys, np.zeros_like(xs)], -1)


def test_iou_crop_satisfies_its_min_iou_and_falls_back_to_the_original():
    boxes = np.float32([[5, 5, 45, 35], [40, 2, 58, 12]])
    data = _example(boxes)
    data["images"] = _coordinate_image()
    layer = da.RandomIoUCrop(min_ious=[0.5])
    cropped = 0
    for i in range(6):
        out = _np(layer(data, seed=tf.constant([i, 3])))
        h, w = out["images"].shape[:2]
        x0, y0 = out["images"][0, 0, :2].astype(int)
        crop = np.float32([x0, y0, x0 + w, y0 + h])
        cropped += (h, w) != (H, W)
        best = np.asarray(pairwise_iou(crop[None], boxes)).max()
        assert best >= 0.5 or (h, w) == (H, W)
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        inside = ((centres >= crop[:2]) & (centres < crop[2:])).all(1)
        expected = np.clip(boxes[inside] - np.tile(crop[:2], 2), 0, [w, h, w, h])
        np.testing.assert_allclose(out["bounding_boxes"]["boxes"], expected)
        _assert_consistent(out, tol=0)
    assert cropped >= 3
    keep = _np(da.RandomIoUCrop(min_ious=[None])(data, seed=SEED))
    np.testing.assert_array_equal(keep["images"], data["images"])
    empty = _np(da.RandomIoUCrop(min_ious=[0.0])(_example([]), seed=SEED))
    assert empty["images"].shape == (H, W, 3)  # no box: no valid patch, image kept


def test_scale_jitter_scales_boxes_with_the_image():
    data = _example([[30, 10, 50, 20]])
    out = _np(da.RandomScaleJitter((0.5, 0.5))(data, seed=SEED))
    assert out["images"].shape == (20, 30, 3)
    np.testing.assert_allclose(out["bounding_boxes"]["boxes"], [[15, 5, 25, 10]])
    _assert_consistent(out, tol=0)
    for i in range(3):
        out = _np(da.RandomScaleJitter((0.8, 1.25))(data, seed=tf.constant([i, 1])))
        h, w = out["images"].shape[:2]
        assert 32 <= h <= 50 and 48 <= w <= 75
        np.testing.assert_allclose(out["bounding_boxes"]["boxes"],
                                   [[30 * w / W, 10 * h / H, 50 * w / W, 20 * h / H]], rtol=1e-5)
        _assert_consistent(out, tol=1.0)


def test_colour_layers_leave_boxes_and_masks_and_keep_the_pixel_range():
    data = _example([[30, 10, 50, 20]])
    layers = [da.SSDPhotometricDistort(p=1.0), da.RandomHueSaturation(p=1.0),
              da.RandomGaussianBlur(p=1.0)]
    for layer in layers:
        changed = 0
        for i in range(4):
            out = _np(layer(data, seed=tf.constant([i, 9])))
            np.testing.assert_array_equal(out["bounding_boxes"]["boxes"],
                                          data["bounding_boxes"]["boxes"])
            np.testing.assert_array_equal(out["segmentation_masks"], data["segmentation_masks"])
            assert out["images"].min() >= 0 and out["images"].max() <= 255
            changed += not np.allclose(out["images"], data["images"], atol=1.0)
        assert changed >= 3, type(layer).__name__
    bright = _example([], height=4, width=4, masks=False)
    bright["images"][:] = 250.0
    for i in range(24):  # any subset of the steps may run
        out = _np(da.SSDPhotometricDistort(p=0.5)(bright, seed=tf.constant([i, 2])))["images"]
        assert out.min() >= 0 and out.max() <= 255
    red = np.float32([[[255, 0, 0], [128, 64, 64]]])
    np.testing.assert_allclose(da.shift_hue(red, 120.0)[0, 0], [0, 255, 0], atol=0.01)
    np.testing.assert_allclose(da.scale_saturation(red, 0.0)[0], [[255] * 3, [128] * 3],
                               atol=0.01)
    same = _np(da.RandomHueSaturation(0.0, 0.0, p=1.0)(data, seed=SEED))
    np.testing.assert_allclose(same["images"], data["images"], atol=0.05)
    no_blur = _np(da.RandomGaussianBlur((0.0, 0.0), p=1.0)(data, seed=SEED))
    np.testing.assert_allclose(no_blur["images"], data["images"], atol=1e-3)


def test_gaussian_blur_kernel_has_the_requested_sigma():
    impulse = np.zeros((15, 15, 1), np.float32)
    impulse[7, 7] = 1.0
    out = np.asarray(da.gaussian_blur(impulse, tf.constant(1.0), 4))[..., 0]
    assert abs(out.sum() - 1.0) < 1e-5
    offsets = np.arange(15) - 7
    assert abs(np.sqrt((out.sum(0) * offsets ** 2).sum()) - 1.0) < 0.01
    data = _example([[1, 2, 5, 6]], height=8, width=8)
    layer_out = _np(da.RandomGaussianBlur((1.0, 1.0), p=1.0)(data, seed=SEED))["images"]
    np.testing.assert_allclose(layer_out, da.gaussian_blur(data["images"], 1.0, 3), atol=1e-4)


def test_every_per_example_layer_accepts_zero_boxes():
    data = _example([])
    layers = [da.RandomHorizontalFlip(1.0), da.RandomRotate(15, 1.0), da.RandomExpand(p=1.0),
              da.RandomIoUCrop(), da.RandomScaleJitter(), da.SSDPhotometricDistort(),
              da.RandomHueSaturation(), da.RandomGaussianBlur(),
              da.DetectionAugment(photometric=True, expand=True, iou_crop=True,
                                  scale_jitter=(0.8, 1.2))]
    for layer in layers:
        out = _np(layer(data, seed=SEED))
        assert out["bounding_boxes"]["boxes"].shape == (0, 4), type(layer).__name__
        assert out["segmentation_masks"].shape[-1] == 0


def _full_augment():
    return da.DetectionAugment(photometric=True, expand=2.0, iou_crop=True,
                               scale_jitter=(0.8, 1.2), rotate_p=1.0, color_p=1.0, blur_p=1.0)


def test_seeded_calls_are_pure_functions_of_data_and_seed():
    data = _example([[30, 10, 50, 20], [5, 5, 20, 30]])
    aug = _full_augment()
    outs = [_np(aug(data, seed=tf.constant([s, 0]))) for s in (4, 4, 5)]
    tf.nest.map_structure(np.testing.assert_array_equal, outs[0], outs[1])
    a, c = outs[0], outs[2]
    assert a["images"].shape != c["images"].shape or not np.array_equal(a["images"], c["images"])
    unseeded = [_np(aug(data))["images"] for _ in range(2)]
    assert unseeded[0].shape != unseeded[1].shape or not np.array_equal(*unseeded)


def test_presets_in_tf_data_graph_mode_with_masks_and_empty_examples():
    examples = [_example([[30, 10, 50, 20], [5, 5, 20, 30]], seed=1), _example([], seed=2)]

    def gen():
        yield from examples

    spec = {"images": tf.TensorSpec([H, W, 3], tf.float32),
            "bounding_boxes": {"boxes": tf.TensorSpec([None, 4], tf.float32),
                               "labels": tf.TensorSpec([None], tf.int32)},
            "segmentation_masks": tf.TensorSpec([H, W, None], tf.uint8)}
    for aug in (da.default_detection_augment(), da.ssd_augment(max_ratio=2.0)):
        ds = tf.data.Dataset.from_generator(gen, output_signature=spec).repeat(3).enumerate()
        ds = ds.map(lambda i, d, aug=aug: aug(d, seed=tf.stack([tf.constant(7, tf.int64), i])),
                    num_parallel_calls=2, deterministic=True)
        first, second = list(ds.as_numpy_iterator()), list(ds.as_numpy_iterator())
        changed = [not np.array_equal(out["images"], examples[i % 2]["images"])
                   for i, out in enumerate(first)]
        assert sum(changed) >= 4, changed
        for a, b in zip(first, second, strict=True):
            tf.nest.map_structure(np.testing.assert_array_equal, a, b)
            _assert_consistent(a, tol=2.0)  # rotations may grow a box past its mask


def test_pack_boxes_keeps_order_and_the_largest_on_overflow():
    boxes = np.float32([[[0, 0, 2, 2], [0, 0, 5, 5], [0, 0, 1, 1], [0, 0, 4, 4]]])
    keep = np.array([[True, True, True, False]])
    out_boxes, out_labels = da.pack_boxes(boxes, np.int32([[1, 2, 3, 4]]), keep, 2)
    np.testing.assert_array_equal(out_labels, [[1, 2]])  # 4 dropped, 3 is the smallest kept
    np.testing.assert_array_equal(out_boxes, boxes[:, :2])
    out_boxes, out_labels = da.pack_boxes(boxes, np.int32([[1, 2, 3, 4]]), ~keep, 2)
    np.testing.assert_array_equal(out_labels, [[4, -1]])
    np.testing.assert_array_equal(out_boxes[0, 1], [0, 0, 0, 0])


def _padded_batch(batch=4, max_instances=4):
    """Image b: background 10 * (b + 1), two boxes of colour 200 + b and label b."""
    images = np.stack([np.full((H, W, 3), 10.0 * (b + 1), np.float32) for b in range(batch)])
    boxes = np.zeros((batch, max_instances, 4), np.float32)
    labels = -np.ones((batch, max_instances), np.int32)
    for b in range(batch):
        for j, (x1, y1, x2, y2) in enumerate([(5, 5, 25, 30), (30 + b, 8, 55, 35 - b)]):
            boxes[b, j] = [x1, y1, x2, y2]
            labels[b, j] = b
            images[b, y1:y2, x1:x2] = 200.0 + b
    return {"images": images, "bounding_boxes": {"boxes": boxes, "labels": labels}}


def _box_pixels(image, box, margin=0):
    x1, y1, x2, y2 = np.round(box).astype(int) + [margin, margin, -margin, -margin]
    return image[y1:y2, x1:x2, 0]


def _assert_padded(out, max_instances):
    boxes, labels = out["bounding_boxes"]["boxes"], out["bounding_boxes"]["labels"]
    assert boxes.shape[1:] == (max_instances, 4) and labels.dtype == np.int32
    real = labels >= 0
    np.testing.assert_array_equal(boxes[~real], 0.0)
    assert all((~real[b, np.argmax(~real[b]):]).all() for b in range(len(labels)) if
               (~real[b]).any())  # padding last
    b = boxes[real]
    assert (b >= 0).all() and (b[:, [0, 2]] <= W).all() and (b[:, [1, 3]] <= H).all()
    assert (b[:, 2:] - b[:, :2] >= 1).all()


def test_cutmix_boxes_lie_over_pixels_of_their_source_image():
    data = _padded_batch()
    layer = da.DetectionCutMix(p=1.0, area_range=(0.2, 0.6), min_visible=0.3)
    pasted_any = 0
    for s in range(3):
        out = _np(layer(data, seed=tf.constant([s, 1])))
        _assert_padded(out, 4)
        for i, image in enumerate(out["images"]):
            boxes, labels = out["bounding_boxes"]["boxes"][i], out["bounding_boxes"]["labels"][i]
            for box, label in zip(boxes[labels >= 0], labels[labels >= 0], strict=True):
                pixels = _box_pixels(image, box)
                if label == i:  # a base box: at least min_visible of it still shows
                    assert (pixels == 200 + i).mean() >= 0.3
                else:  # pasted from image `label`, clipped to the rectangle
                    pasted_any += 1
                    np.testing.assert_array_equal(pixels, 200 + label)
    assert pasted_any > 0
    same = _np(da.DetectionCutMix(p=0.0)(data, seed=SEED))
    np.testing.assert_array_equal(same["images"], data["images"])
    one = {"images": data["images"][:1], "bounding_boxes": {
        k: v[:1] for k, v in data["bounding_boxes"].items()}}
    np.testing.assert_array_equal(_np(layer(one, seed=SEED))["images"], one["images"])


def test_mosaic_hand_checked_with_a_fixed_centre():
    sources = [tf.constant([0, 1, 2, 3]), tf.constant([1, 2, 3, 0]), tf.constant([2, 3, 0, 1]),
               tf.constant([3, 0, 1, 2])]
    centre = tf.fill([4], 30.0), tf.fill([4], 20.0)  # quadrants 30 x 20: every source at 0.5

    def run(max_instances):
        data = _padded_batch(max_instances=max_instances)
        return (np.asarray(t) for t in da.mosaic(
            data["images"], data["bounding_boxes"]["boxes"], data["bounding_boxes"]["labels"],
            *centre, sources))

    images, boxes, labels = run(8)
    # Image 0: TL from 0 placed at (0, 0), TR from 1 at (30, 0), BL from 2 at (0, 20), BR from 3
    # at (30, 20), each halved: (5, 5, 25, 30) -> (2.5, 2.5, 12.5, 15) + offset.
    np.testing.assert_array_equal(labels[0], [0, 0, 1, 1, 2, 2, 3, 3])
    np.testing.assert_allclose(boxes[0], [
        [2.5, 2.5, 12.5, 15], [15, 4, 27.5, 17.5], [32.5, 2.5, 42.5, 15], [45.5, 4, 57.5, 17],
        [2.5, 22.5, 12.5, 35], [16, 24, 27.5, 36.5], [32.5, 22.5, 42.5, 35], [46.5, 24, 57.5, 36]])
    for (y, x), b in zip([(0, 0), (0, 59), (39, 0), (39, 59)], [0, 1, 2, 3], strict=True):
        assert images[0, y, x, 0] == pytest.approx(10 * (b + 1))
    _, small_boxes, small_labels = run(4)  # 8 survive, the 4 largest (the second boxes) stay
    np.testing.assert_array_equal(small_labels[0], [0, 1, 2, 3])
    np.testing.assert_allclose(small_boxes[0], boxes[0, 1::2])


def test_mosaic_boxes_lie_over_pixels_of_their_source_image():
    data = _padded_batch(max_instances=6)
    layer = da.DetectionMosaic(min_visible=0.3)
    out = _np(tf.function(lambda d: layer(d, seed=SEED))(data))
    assert out["images"].shape == data["images"].shape
    _assert_padded(out, 6)
    for i, image in enumerate(out["images"]):
        boxes, labels = out["bounding_boxes"]["boxes"][i], out["bounding_boxes"]["labels"][i]
        assert (labels >= 0).sum() >= 2 and len(set(labels[labels >= 0])) >= 2
        for box, label in zip(boxes[labels >= 0], labels[labels >= 0], strict=True):
            np.testing.assert_allclose(_box_pixels(image, box, margin=1), 200 + label, atol=1e-3)


def test_batch_layers_reject_masks_and_per_example_layers_reject_batches():
    batch = _padded_batch()
    with pytest.raises(ValueError, match="padded batch"):
        da.DetectionMosaic()({"images": batch["images"][0],
                              "bounding_boxes": {"boxes": np.zeros((0, 4)),
                                                 "labels": np.zeros(0)}})
    with pytest.raises(ValueError, match="masks"):
        da.DetectionCutMix()({**batch, "segmentation_masks": np.zeros((4, H, W, 4))})
    with pytest.raises(ValueError, match="before batching"):
        da.RandomHorizontalFlip()(batch)
    with pytest.raises(ValueError, match="bounding_boxes"):
        da.RandomRotate()({"images": batch["images"][0]})
    with pytest.raises(ValueError, match="probability"):
        da.RandomExpand(p=2.0)
    with pytest.raises(ValueError, match="min_ious"):
        da.RandomIoUCrop(min_ious=[1.5])


def test_get_config_round_trips_and_serialization():
    layers = [da.RandomHorizontalFlip(0.3, seed=1), da.RandomRotate(10, 0.4, fill=5.0),
              da.RandomExpand(3.0, 0.2), da.RandomIoUCrop(min_ious=[None, 0.5], trials=10),
              da.RandomScaleJitter((0.9, 1.1)), da.RandomHueSaturation(10, 0.1),
              da.RandomGaussianBlur((0.1, 0.5)), da.SSDPhotometricDistort(hue=9.0),
              da.DetectionCutMix(area_range=(0.1, 0.3)), da.DetectionMosaic(p=0.5),
              _full_augment(), da.ssd_augment(), da.default_detection_augment(seed=3)]
    for layer in layers:
        config = layer.get_config()
        assert type(layer).from_config(config).get_config() == config
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layers[-3]))
    assert isinstance(clone, da.DetectionAugment) and clone.get_config() == layers[-3].get_config()
    data = _example([[30, 10, 50, 20]])
    tf.nest.map_structure(np.testing.assert_array_equal, _np(clone(data, seed=SEED)),
                          _np(layers[-3](data, seed=SEED)))
