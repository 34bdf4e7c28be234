"""classification_batches: shapes, exact per-epoch permutations, resume-identical epochs."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kft.data import ClassificationAugment, ClassificationSplit, classification_batches

N, C = 22, 3


@pytest.fixture
def split(tmp_path):
    """22 constant-colour 12x12 PNGs: pixel value 10 * i identifies example i, label i % 3."""
    paths = []
    for i in range(N):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.full((12, 12, 3), 10 * i, np.uint8)).save(path)
        paths.append(str(path))
    return ClassificationSplit(paths, [i % C for i in range(N)], ["a", "b", "c"])


def _ids(x):
    """Example ids of a batch of constant images."""
    return (np.asarray(x)[:, 0, 0, 0] / 10).round().astype(int).tolist()


def _batches(source, **kw):
    args = dict(image_size=8, batch_size=4, num_classes=C, training=True, seed=0, epochs=4)
    args.update(kw)
    return classification_batches(source, **args)


def _collect(batches):
    return [(x.numpy(), y.numpy()) for x, y in batches.dataset]


def test_training_batches_are_exact_epoch_permutations(split):
    batches = _batches(split)
    assert batches.steps == 6 and batches.num_examples == N  # ceil(22 / 4)
    out = _collect(batches)
    assert len(out) == 4 * batches.steps
    for x, y in out:
        assert x.dtype == np.float32 and x.shape == (4, 8, 8, 3)
        assert y.dtype == np.float32 and y.shape == (4, C)
        np.testing.assert_array_equal(y.argmax(1), [i % C for i in _ids(x)])
        np.testing.assert_array_equal(y.sum(1), 1.0)
    epochs = [sum((_ids(x) for x, _ in out[e * 6:(e + 1) * 6]), []) for e in range(4)]
    for ids in epochs:
        # every example once in the first 22 places; the last batch filled with 2 drawn again
        assert sorted(ids[:N]) == list(range(N)) and len(ids) == 24
    assert len({tuple(ids) for ids in epochs}) == 4  # a new order every epoch
    assert len({tuple(ids[N:]) for ids in epochs}) > 1  # not always the same two repeated


def test_a_split_smaller_than_the_batch_still_trains(split):
    """5 examples, batch 8: one full batch per epoch holding all 5 (3 drawn again)."""
    small = ClassificationSplit(split.paths[:5], split.labels[:5], split.class_names)
    batches = _batches(small, batch_size=8, epochs=2)
    out = _collect(batches)
    assert batches.steps == 1 and len(out) == 2
    for x, _ in out:
        assert x.shape[0] == 8 and set(_ids(x)) == set(range(5))


def test_epochs_are_identical_across_builds_and_resumes(split):
    aug = dict(augment=ClassificationAugment(noise=0.5, blur=0.5))
    tf.random.set_seed(0)  # the TF global seed plays no part
    full = _collect(_batches(split, **aug))
    tf.random.set_seed(5)
    again = _collect(_batches(split, augment=ClassificationAugment(noise=0.5, blur=0.5)))
    for (xa, ya), (xb, yb) in zip(full[12:18], again[12:18], strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    resumed = _collect(_batches(split, initial_epoch=2, **aug))
    assert len(resumed) == 2 * 6
    for (xa, ya), (xb, yb) in zip(full[12:], resumed, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(full[6][0], full[12][0])  # epochs differ
    other_seed = _collect(_batches(split, seed=1, **aug))
    assert not np.array_equal(other_seed[12][0], full[12][0])
    # Augmentation is applied (the noise/blur layers change constant images).
    plain = _collect(_batches(split, initial_epoch=2))
    for (_, ya), (_, yb) in zip(plain, resumed, strict=True):
        np.testing.assert_array_equal(ya, yb)  # same order, augmentation on top
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(plain, resumed, strict=True))


def test_cache_gives_the_same_batches(split):
    plain = _collect(_batches(split, epochs=2))
    cached = _collect(_batches(split, epochs=2, cache=True))
    for (xa, ya), (xb, yb) in zip(plain, cached, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    val = classification_batches(split, image_size=8, batch_size=4, num_classes=C,
                                 training=False, seed=0, cache=True)
    assert [_ids(x) for x, _ in val.dataset] == [_ids(x) for x, _ in val.dataset]


def _dataset_source(fixed_shape: bool):
    images = np.stack([np.full((6, 6, 3), 10 * i, np.uint8) for i in range(N)])
    labels = np.arange(N) % C
    if fixed_shape:
        return tf.data.Dataset.from_tensor_slices((images, labels)), N
    spec = (tf.TensorSpec([None, None, 3], tf.uint8), tf.TensorSpec([], tf.int64))
    ds = tf.data.Dataset.from_generator(lambda: zip(images, labels, strict=True),
                                        output_signature=spec)
    return ds, N


@pytest.mark.parametrize("fixed_shape", [True, False])
def test_dataset_sources_are_reproducible(fixed_shape):
    kw = dict(epochs=3, shuffle_buffer=8)
    a = _collect(_batches(_dataset_source(fixed_shape), **kw))
    b = _collect(_batches(_dataset_source(fixed_shape), initial_epoch=1, **kw))
    assert len(a) == 18 and len(b) == 12
    for (xa, ya), (xb, yb) in zip(a[6:], b, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_array_equal(ya.argmax(1), [i % C for i in _ids(xa)])
    orders = [sum((_ids(x) for x, _ in a[e * 6:(e + 1) * 6]), []) for e in range(3)]
    assert all(sorted(o[:N]) == list(range(N)) for o in orders) and orders[0] != orders[1]
    if not fixed_shape:  # windows of 8: the first 8 examples stay within the first 8
        assert set(orders[0][:8]) == set(range(8))


def test_validation_keeps_order_and_remainder(split):
    val = classification_batches(split, image_size=(8, 6), batch_size=5, num_classes=C,
                                 training=False, seed=0, augment=ClassificationAugment())
    out = _collect(val)
    assert val.steps == 5 and [len(x) for x, _ in out] == [5, 5, 5, 5, 2]
    assert sum((_ids(x) for x, _ in out), []) == list(range(N))
    assert out[0][0].shape == (5, 8, 6, 3)
    src = _dataset_source(True)
    tfds_like = classification_batches(src, image_size=4, batch_size=8, num_classes=C,
                                       training=False, seed=0)
    assert sum((_ids(x) for x, _ in tfds_like.dataset), []) == list(range(N))


def test_clear_errors(split):
    with pytest.raises(ValueError, match="square"):
        _batches(split, image_size=(8, 6), augment=ClassificationAugment())
    with pytest.raises(ValueError, match="num_classes=2"):
        _batches(split, num_classes=2)
    with pytest.raises(ValueError, match="initial_epoch"):
        _batches(split, initial_epoch=5)
    with pytest.raises(TypeError, match="ClassificationSplit"):
        _batches(["a.png"])
