"""detection_batches: static shapes, box scaling, padding, resumable epochs, augment hooks, masks."""

import dataclasses
import gc

import keras
import numpy as np
import pytest
import tensorflow as tf

from kft.data.detection_pipeline import (
    DetectionBatches,
    detection_batches,
    resize_image,
    to_original,
)
from kft.data.readers.coco import read_coco
from kft.data.readers.detection import DetectionSplit, decode_masks
from kft.data.readers.voc import read_voc
from kft.data.shapes import make_shapes_detection

CLASSES = ("circle", "square", "triangle")
H, W = 48, 64  # generated image size


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes") / "data"
    return make_shapes_detection(root, classes=CLASSES, num_train=8, num_val=3,
                                 image_size=(H, W), max_objects=4, seed=3)


@pytest.fixture(scope="module")
def voc(shapes_root):
    return read_voc(shapes_root / "VOC", "train", class_names=list(CLASSES),
                    check_images="header")


@pytest.fixture(scope="module")
def coco(shapes_root):
    return read_coco(shapes_root / "COCO", "train", check_images="header")


def _eval(split, **kw):
    args = dict(image_size=(30, 40), batch_size=3, training=False, seed=0, with_meta=True,
                max_instances=6)
    args.update(kw)
    return detection_batches(split, **args)


def _collect(batches):
    """All batches as numpy, concatenated along the batch axis: (x, y, meta)."""
    parts = [tf.nest.map_structure(np.asarray, b) for b in batches.dataset]
    return tf.nest.map_structure(lambda *a: np.concatenate(a), *parts)


def _per_batch(batches):
    return [tf.nest.map_structure(np.asarray, b) for b in batches.dataset]


def _factors(scale):
    return np.array([scale[1], scale[0], scale[1], scale[0]], np.float32)


def _with_records(split, records):
    return DetectionSplit(records, split.class_names, split.label_to_category, split.report)


def test_fixed_resize_shapes_dtypes_and_hand_scaled_boxes(voc):
    batches = _eval(voc)
    x_spec, y_spec, meta_spec = batches.dataset.element_spec
    assert x_spec.shape.as_list() == [None, 30, 40, 3] and x_spec.dtype == tf.float32
    assert y_spec["boxes"].shape.as_list() == [None, 6, 4]
    assert y_spec["labels"].shape.as_list() == [None, 6] and y_spec["labels"].dtype == tf.int32
    assert meta_spec["difficult"].shape.as_list() == [None, 6]
    assert batches.steps == 3 and batches.num_examples == 8 and batches.image_size == (30, 40)
    x, y, meta = _collect(batches)
    assert x.shape == (8, 30, 40, 3) and 0 <= x.min() and x.max() <= 255
    hand = np.array([40 / W, 30 / H, 40 / W, 30 / H], np.float32)
    for i, record in enumerate(voc.records):
        n = record.num_objects
        np.testing.assert_allclose(y["boxes"][i, :n], record.boxes * hand, atol=1e-4)
        np.testing.assert_array_equal(y["labels"][i, :n], record.labels)
        np.testing.assert_array_equal(y["labels"][i, n:], -1)
        np.testing.assert_array_equal(y["boxes"][i, n:], 0)
        assert meta["image_id"][i].decode() == record.image_id
        assert meta["index"][i] == i and meta["num_objects"][i] == n
        np.testing.assert_array_equal(meta["image_shape"][i], [H, W])
        np.testing.assert_array_equal(meta["resized_shape"][i], [30, 40])
        np.testing.assert_allclose(meta["scale"][i], [30 / H, 40 / W], rtol=1e-6)


def test_training_batches_are_static_and_visit_every_record(voc):
    n = len(voc)
    batches = detection_batches(voc, image_size=32, batch_size=3, training=True, seed=0,
                                epochs=2, max_instances=4, with_meta=True)
    x_spec, y_spec, _ = batches.dataset.element_spec
    assert x_spec.shape.as_list() == [3, 32, 32, 3]
    assert y_spec["boxes"].shape.as_list() == [3, 4, 4]
    assert batches.steps == -(-n // 3)
    out = _per_batch(batches)
    assert len(out) == 2 * batches.steps
    for e in range(2):  # every record once per epoch, the last batch filled again
        seen = np.concatenate([m["index"] for _, _, m in out[e * batches.steps:
                                                              (e + 1) * batches.steps]])
        assert sorted(seen[:n].tolist()) == list(range(n))


def test_a_split_smaller_than_the_batch_makes_one_full_batch(voc):
    few = voc.subset(range(2))
    batches = detection_batches(few, image_size=32, batch_size=5, training=True, seed=0,
                                epochs=1, with_meta=True)
    (x, _, meta), = _per_batch(batches)
    assert x.shape[0] == 5 and set(meta["index"].tolist()) == {0, 1}


def test_keep_aspect_scale_and_to_original_round_trip(coco):
    batches = _eval(coco, image_size=(40, 70), resize="keep_aspect")
    assert batches.image_size == (96, 96)  # 70 rounded up to a multiple of 32, square
    x, y, meta = _collect(batches)
    s = min(40 / H, 70 / W)  # short side 48 -> 40 (the long side 53 stays under 70)
    expected_hw = [round(H * s), round(W * s)]
    for i, record in enumerate(coco.records):
        np.testing.assert_array_equal(meta["resized_shape"][i], expected_hw)
        np.testing.assert_allclose(meta["scale"][i], np.divide(expected_hw, [H, W]), rtol=1e-6)
        assert meta["image_id"][i] == record.image_id
        back = to_original(y["boxes"][i], meta["scale"][i], meta["image_shape"][i])
        np.testing.assert_allclose(np.asarray(back)[:record.num_objects], record.boxes,
                                   atol=1e-3)
        assert np.all(x[i, expected_hw[0]:] == 0) and np.all(x[i, :, expected_hw[1]:] == 0)
        assert x[i, :expected_hw[0], :expected_hw[1]].max() > 0
    batched = np.asarray(to_original(y["boxes"], meta["scale"]))
    n0 = coco.records[0].num_objects
    np.testing.assert_allclose(batched[0, :n0], coco.records[0].boxes, atol=1e-3)


def test_keep_aspect_fits_a_small_pad_size(coco):
    batches = _eval(coco, image_size=(40, 70), resize="keep_aspect", pad_size=(30, 64))
    x, y, meta = _collect(batches)
    assert x.shape[1:] == (30, 64, 3)
    np.testing.assert_array_equal(meta["resized_shape"][0], [30, 40])  # capped by pad height
    record = coco.records[0]
    back = np.asarray(to_original(y["boxes"][0], meta["scale"][0]))
    np.testing.assert_allclose(back[:record.num_objects], record.boxes, atol=1e-3)


def test_resize_image_matches_the_pipeline(voc):
    x, _, meta = _collect(_eval(voc, image_size=(40, 70), resize="keep_aspect"))
    image = tf.io.decode_image(tf.io.read_file(voc.records[0].image_path), channels=3)
    out, scale, hw = resize_image(image, image_size=(40, 70), resize="keep_aspect")
    np.testing.assert_allclose(out.numpy(), x[0], atol=1e-4)
    np.testing.assert_allclose(scale.numpy(), meta["scale"][0])
    np.testing.assert_array_equal(hw.numpy(), meta["resized_shape"][0])


def test_max_instances_keeps_the_largest_and_pads_with_minus_one(voc):
    most = max(r.num_objects for r in voc.records)
    assert most >= 3
    with pytest.warns(UserWarning, match="max_instances=2"):
        batches = _eval(voc, max_instances=2)
    over = [r.num_objects - 2 for r in voc.records if r.num_objects > 2]
    assert (batches.capped_images, batches.capped_objects) == (len(over), sum(over))
    _, y, meta = _collect(batches)
    assert y["labels"].shape == (8, 2)
    for i, record in enumerate(voc.records):
        area = (record.boxes[:, 2] - record.boxes[:, 0]) * (record.boxes[:, 3] - record.boxes[:, 1])
        keep = np.sort(np.argsort(-area, kind="stable")[:2])
        n = len(keep)
        np.testing.assert_array_equal(y["labels"][i, :n], record.labels[keep])
        np.testing.assert_allclose(y["boxes"][i, :n] / _factors(meta["scale"][i]),
                                   record.boxes[keep], atol=1e-3)
        np.testing.assert_array_equal(y["labels"][i, n:], -1)
        assert meta["num_objects"][i] == record.num_objects


def _random_flip(data, seed):
    """Horizontal flip (masks too) with probability 1/2 from the stateless seed."""
    flip = tf.random.stateless_uniform([], seed) < 0.5
    image, boxes = data["images"], data["bounding_boxes"]["boxes"]
    w = tf.cast(tf.shape(image)[1], tf.float32)
    flipped = tf.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], axis=1)
    out = {"images": tf.where(flip, image[:, ::-1], image),
           "bounding_boxes": {"boxes": tf.where(flip, flipped, boxes),
                              "labels": data["bounding_boxes"]["labels"]}}
    if "segmentation_masks" in data:
        masks = data["segmentation_masks"]
        out["segmentation_masks"] = tf.where(flip, masks[:, ::-1], masks)
    return out


def _train(split, **kw):
    args = dict(image_size=32, batch_size=4, training=True, seed=7, epochs=3, with_meta=True,
                augment=_random_flip, max_instances=5)
    args.update(kw)
    return detection_batches(split, **args)


def _assert_same(a, b):
    tf.nest.map_structure(np.testing.assert_array_equal, a, b)


def test_epoch_is_identical_when_resumed_and_epochs_differ(voc):
    tf.random.set_seed(1)  # the global seed plays no part
    full = _per_batch(_train(voc))
    assert len(full) == 6
    tf.random.set_seed(2)
    resumed = _per_batch(_train(voc, initial_epoch=2))
    assert len(resumed) == 2
    for a, b in zip(full[4:], resumed, strict=True):
        _assert_same(a, b)
    orders = [np.concatenate([m["index"] for _, _, m in full[2 * e:2 * e + 2]])
              for e in range(3)]
    for order in orders:
        assert sorted(order) == list(range(8))
    assert len({tuple(o) for o in orders}) == 3
    other = _per_batch(_train(voc, seed=8))
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(full, other, strict=True))


def test_augment_gets_a_seed_and_runs_before_resize(voc):
    seen = []

    def flip_and_widen(data, seed):
        """Always flips, then pads 16 black columns on the right: boxes stay in place."""
        seen.append((seed.dtype, tuple(seed.shape)))
        image, boxes = data["images"], data["bounding_boxes"]["boxes"]
        w = tf.cast(tf.shape(image)[1], tf.float32)
        flipped = tf.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], 1)
        image = tf.pad(image[:, ::-1], [[0, 0], [0, 16], [0, 0]])
        return {"images": image, "bounding_boxes": {
            "boxes": flipped, "labels": data["bounding_boxes"]["labels"]}}

    batches = _train(voc, augment=flip_and_widen, epochs=1, image_size=(24, 40))
    assert seen == [(tf.int32, (2,))]
    for _, y, meta in _per_batch(batches):
        np.testing.assert_array_equal(meta["image_shape"], np.tile([H, W + 16], (4, 1)))
        for j, i in enumerate(meta["index"]):
            record = voc.records[i]
            b = record.boxes
            mirrored = np.stack([W - b[:, 2], b[:, 1], W - b[:, 0], b[:, 3]], 1)
            hand = mirrored * np.array([40 / (W + 16), 24 / H] * 2, np.float32)
            np.testing.assert_allclose(y["boxes"][j, :record.num_objects], hand, atol=1e-4)


def test_augment_without_a_seed_argument_is_called_without(voc):
    def identity(data):
        return data

    plain = _per_batch(_train(voc, augment=None, epochs=1))
    same = _per_batch(_train(voc, augment=identity, epochs=1))
    for a, b in zip(plain, same, strict=True):
        _assert_same(a, b)
    flip = keras.layers.RandomFlip("horizontal", bounding_box_format="xyxy", seed=0)
    flipped = 0
    for (_, y, meta), (_, y_flip, _) in zip(plain, _per_batch(_train(voc, augment=flip, epochs=1)),
                                            strict=True):
        for j, i in enumerate(meta["index"]):
            n, b = voc.records[i].num_objects, y["boxes"][j, :voc.records[i].num_objects]
            mirrored = np.stack([32 - b[:, 2], b[:, 1], 32 - b[:, 0], b[:, 3]], 1)
            got = y_flip["boxes"][j, :n]
            assert np.allclose(got, b, atol=1e-3) or np.allclose(got, mirrored, atol=1e-3)
            flipped += not np.allclose(got, b, atol=1e-3)
    assert flipped > 0


def test_batch_augment_gets_a_seed_and_sees_padded_batches(voc):
    seen = []

    def reverse_batch(data, seed):
        seen.append((seed.dtype, data["bounding_boxes"]["labels"].shape.as_list()))
        return {"images": data["images"][::-1], "bounding_boxes": {
            k: v[::-1] for k, v in data["bounding_boxes"].items()}}

    plain = _per_batch(_train(voc, epochs=1))
    mixed = _per_batch(_train(voc, epochs=1, batch_augment=reverse_batch))
    assert seen == [(tf.int32, [4, 5])]
    for (x, y, _), (xr, yr, _) in zip(plain, mixed, strict=True):
        np.testing.assert_array_equal(xr, x[::-1])
        np.testing.assert_array_equal(yr["boxes"], y["boxes"][::-1])


def _mask_bbox(mask):
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def test_full_masks_are_aligned_with_boxes(coco):
    x, y, meta = _collect(_eval(coco, image_size=(72, 80), with_masks=True, max_instances=5))
    assert y["masks"].shape == (8, 5, 72, 80) and y["masks"].dtype == np.uint8
    for i, record in enumerate(coco.records):
        n = record.num_objects
        for k in range(n):
            np.testing.assert_allclose(_mask_bbox(y["masks"][i, k]), y["boxes"][i, k], atol=1.6)
        assert not y["masks"][i, n:].any()


def _area_crop(mask, box, size):
    """Reference mini mask: the fraction of each output cell's area covered, >= 0.5."""
    x1, y1, x2, y2 = (int(v) for v in box)
    crop = mask[y1:y2, x1:x2].astype(np.float32)
    (bh, bw), (mh, mw) = crop.shape, size
    fine = np.repeat(np.repeat(crop, mh, axis=0), mw, axis=1)
    return (fine.reshape(mh, bh, mw, bw).mean(axis=(1, 3)) >= 0.5).astype(np.uint8)


def _iou(a, b):
    return np.logical_and(a, b).sum() / max(np.logical_or(a, b).sum(), 1)


def test_cropped_masks_match_their_boxes_keep_aspect(coco):
    batches = _eval(coco, image_size=(40, 70), resize="keep_aspect", with_masks=True,
                    mask_size=(12, 10), max_instances=5)
    _, y, _ = _collect(batches)
    assert y["masks"].shape == (8, 5, 12, 10)
    ious = []
    for i, record in enumerate(coco.records):
        n = record.num_objects
        full = decode_masks(record)
        for k in range(n):
            reference = _area_crop(full[k], record.boxes[k], (12, 10))
            ious.append(_iou(y["masks"][i, k], reference))
            m = y["masks"][i, k]  # the box is the mask's tight box: (nearly) border to border
            assert _mask_bbox(m)[2] - _mask_bbox(m)[0] >= 8
            assert _mask_bbox(m)[3] - _mask_bbox(m)[1] >= 10
        assert not y["masks"][i, n:].any()
    assert min(ious) > 0.8 and np.mean(ious) > 0.95  # a half-pixel shift gives ~0.86


def test_masks_follow_the_augmentation_and_cache_matches(coco):
    kw = dict(with_masks=True, epochs=2, image_size=(48, 64))
    plain = _per_batch(_train(coco, **kw))
    for _, y, meta in plain:
        for j in range(4):
            for k in range(meta["num_objects"][j]):
                np.testing.assert_allclose(_mask_bbox(y["masks"][j, k]), y["boxes"][j, k],
                                           atol=1.0)
    cached = _train(coco, cache=True, **kw).dataset
    gc.collect()  # the host-memory tables must outlive the DetectionBatches object
    for a, b in zip(plain, cached, strict=True):
        _assert_same(a, tf.nest.map_structure(np.asarray, b))


def test_background_images_flow_with_all_labels_minus_one(coco):
    empty = dataclasses.replace(coco.records[1], boxes=np.zeros((0, 4)), labels=[],
                                difficult=[], iscrowd=[], segmentation=[])
    split = _with_records(coco, [coco.records[0], empty, coco.records[2]])
    x, y, meta = _collect(_eval(split, with_masks=True, mask_size=(8, 8)))
    assert x.shape[0] == 3 and x[1].max() > 0
    np.testing.assert_array_equal(y["labels"][1], -1)
    assert not y["masks"][1].any() and meta["num_objects"][1] == 0
    assert (y["labels"][0] >= 0).sum() == coco.records[0].num_objects
    train = _per_batch(detection_batches(split, image_size=32, batch_size=3, training=True,
                                         seed=0, with_masks=True, augment=_random_flip))
    assert len(train) == 1 and (train[0][1]["labels"] == -1).all(axis=1).sum() == 1


def test_voc_and_coco_splits_give_the_same_boxes(voc, coco):
    _, y_voc, m_voc = _collect(_eval(voc))
    _, y_coco, m_coco = _collect(_eval(coco))
    np.testing.assert_allclose(y_voc["boxes"], y_coco["boxes"], atol=1e-4)
    np.testing.assert_array_equal(y_voc["labels"], y_coco["labels"])
    assert m_voc["image_id"].dtype == object and m_coco["image_id"].dtype == np.int64


def test_meta_flags_and_drop_difficult_in_training(voc):
    records = [dataclasses.replace(r) for r in voc.records]
    t = next(i for i, r in enumerate(records) if 2 <= r.num_objects <= 5)
    n = records[t].num_objects
    records[t] = dataclasses.replace(records[t], difficult=np.eye(n)[0], iscrowd=np.eye(n)[-1])
    split = _with_records(voc, records)
    _, y, meta = _collect(_eval(split))
    np.testing.assert_array_equal(meta["difficult"][t, :n], records[t].difficult)
    np.testing.assert_array_equal(meta["iscrowd"][t, :n], records[t].iscrowd)
    assert meta["difficult"].sum() == 1 and meta["iscrowd"].sum() == 1
    kept = _per_batch(_train(split, epochs=1, augment=None))
    dropped = _per_batch(_train(split, epochs=1, augment=None, drop_difficult_in_training=True))
    for (_, y_a, m_a), (_, y_b, m_b) in zip(kept, dropped, strict=True):
        np.testing.assert_array_equal(m_a["index"], m_b["index"])
        delta = (y_a["labels"] >= 0).sum() - (y_b["labels"] >= 0).sum()
        assert delta == (1 if t in m_b["index"] else 0)
        if t in m_b["index"]:
            j = list(m_b["index"]).index(t)
            np.testing.assert_array_equal(y_b["boxes"][j, :n - 1], y_a["boxes"][j, 1:n])
            assert not m_b["difficult"][j].any() and m_b["iscrowd"][j, n - 2]


def test_flags_follow_an_augmentation_that_drops_boxes(voc):
    records = [dataclasses.replace(r) for r in voc.records]
    for i, r in enumerate(records):
        records[i] = dataclasses.replace(r, difficult=np.arange(r.num_objects) % 2 == 1,
                                         iscrowd=np.arange(r.num_objects) % 2 == 0)
    split = _with_records(voc, records)

    def drop_first(data):
        return {"images": data["images"],
                "bounding_boxes": {k: v[1:] for k, v in data["bounding_boxes"].items()}}

    def drop_first_forget_flags(data):
        boxes = data["bounding_boxes"]
        return {"images": data["images"],
                "bounding_boxes": {"boxes": boxes["boxes"][1:], "labels": boxes["labels"][1:]}}

    for (_, y, meta), (_, _, lost) in zip(
            _per_batch(_train(split, epochs=1, augment=drop_first)),
            _per_batch(_train(split, epochs=1, augment=drop_first_forget_flags)), strict=True):
        for j, i in enumerate(meta["index"]):
            n = records[i].num_objects
            np.testing.assert_array_equal(y["labels"][j, :n - 1], records[i].labels[1:])
            np.testing.assert_array_equal(meta["difficult"][j, :n - 1], records[i].difficult[1:])
            np.testing.assert_array_equal(meta["iscrowd"][j, :n - 1], records[i].iscrowd[1:])
        assert not lost["difficult"].any() and not lost["iscrowd"].any()


def test_clear_errors(voc, coco):
    with pytest.raises(ValueError, match="short_side, max_long_side"):
        _eval(voc, image_size=300, resize="keep_aspect")
    with pytest.raises(ValueError, match="resize="):
        _eval(voc, resize="crop")
    with pytest.raises(ValueError, match="no record of the split has a segmentation"):
        _eval(voc, with_masks=True)
    with pytest.raises(ValueError, match="batch_augment cannot be combined"):
        _eval(coco, with_masks=True, mask_size=8, batch_augment=lambda d: d)
    with pytest.raises(ValueError, match="returned no 'segmentation_masks'"):
        detection_batches(coco, image_size=32, batch_size=2, training=True, seed=0,
                          with_masks=True, augment=lambda d: {k: d[k] for k in
                                                              ("images", "bounding_boxes")})
    with pytest.raises(TypeError, match="DetectionSplit"):
        detection_batches(voc.records, image_size=32, batch_size=2, training=False, seed=0)
    assert isinstance(_eval(voc), DetectionBatches)


def _with_crowd(split):
    """``split`` with every record's last object marked crowd."""
    records = []
    for r in split.records:
        crowd = np.zeros(len(r.labels), bool)
        if len(crowd):
            crowd[-1] = True
        records.append(dataclasses.replace(r, iscrowd=crowd))
    return DetectionSplit(records, split.class_names, split.label_to_category, split.report)


def test_crowd_flags_reach_the_training_targets_aligned(coco):
    from kft.data.detection_augment import DetectionCutMix

    plain = detection_batches(coco, image_size=(48, 64), batch_size=4, training=True, seed=0)
    x, y = next(iter(plain.dataset))
    assert "iscrowd" not in y  # no crowd box in the split: the usual Keras dict
    crowded = _with_crowd(coco)
    for batch_augment in (None, DetectionCutMix(p=1.0)):
        batches = detection_batches(crowded, image_size=(48, 64), batch_size=4,
                                    training=True, seed=0, with_meta=True,
                                    batch_augment=batch_augment)
        x, y, meta = tf.nest.map_structure(np.asarray, next(iter(batches.dataset)))
        real = y["labels"] >= 0
        assert y["iscrowd"].dtype == bool and y["iscrowd"].shape == y["labels"].shape
        assert not np.any(y["iscrowd"] & ~real)
        assert y["labels"].max() < len(CLASSES)  # the tag is removed again
        if batch_augment is None:
            np.testing.assert_array_equal(y["iscrowd"], meta["iscrowd"])
        assert 0 < y["iscrowd"].sum() < real.sum()
