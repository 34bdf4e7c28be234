"""tf.data input pipelines for classification, reproducible epoch by epoch.

Training::

    Dataset.range(initial_epoch, epochs).flat_map(epoch e ->
        permutation of the examples from stateless_shuffle(seed, e), the last batch filled
        from a second permutation (kft.data.sampling: every example once per epoch)
        -> parallel decode + resize (deterministic order) -> batch(batch_size)
        -> augment(batch, seed=f(seed, e, batch index)) -> (float32 images, one-hot labels))
    -> prefetch

Epoch ``e``'s order and augmentation depend only on ``(seed, e)`` (stateless ops throughout, no
TF global seed involved), so a run resumed at ``initial_epoch`` sees exactly the batches the
uninterrupted run saw. ``tf.data``'s ``shuffle`` is not used: inside ``flat_map`` it ignores a
per-epoch tensor seed (TF 2.21 repeats the same order every epoch) and it crashes when the
global seed is 0.

Shuffling is an exact permutation over an in-memory table:

* image-folder sources: the table is the list of paths (decoding happens after the shuffle);
* ``cache=True``: every image is decoded and resized once, at build time, into a uint8 array
  held in host memory (``N * H * W * 3`` bytes), and batches gather from it;
* ``(tf.data.Dataset, n)`` sources (TFDS) with a fixed image shape and at most
  :data:`MAX_TABLE_BYTES` of pixels (CIFAR-100 train: 150 MB): the raw images are read into
  memory once. Larger ones or ones with varying image sizes are shuffled within consecutive
  windows of ``shuffle_buffer`` examples (an approximation; TFDS shuffles its files when it
  prepares a dataset).

Images are resized with bilinear interpolation (``tf.image.resize``, no antialiasing) and
rounded to uint8, then batches are cast to float32 0..255.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from kft.data.readers.folder import ClassificationSplit
from kft.data.sampling import epoch_order, steps_per_epoch

AUTOTUNE = tf.data.AUTOTUNE
MAX_TABLE_BYTES = 2 << 30  # raw images read into memory for an exact shuffle, above: windows
DEFAULT_WINDOW = 10_000
_TAG_SHUFFLE, _TAG_AUGMENT, _TAG_WINDOW = 1, 2, 3


@dataclass
class Batches:
    """A batched dataset yielding ``(images float32 [B,H,W,3] 0..255, labels float32 [B,C])``.

    ``steps``: batches per epoch. ``num_examples``: examples in the split.
    """

    dataset: tf.data.Dataset
    steps: int
    num_examples: int


def image_hw(image_size) -> tuple[int, int]:
    """``224`` or ``(h, w)`` -> ``(h, w)``."""
    if isinstance(image_size, int | np.integer):
        hw = (int(image_size), int(image_size))
    else:
        hw = tuple(int(v) for v in image_size)
    if len(hw) != 2 or min(hw) < 1:
        raise ValueError(f"image_size={image_size!r} must be a positive int or (height, width) "
                         "(data.image_size)")
    return hw


def decode_file(path: tf.Tensor) -> tf.Tensor:
    """File path (string scalar) -> uint8 [H,W,3]; GIF: first frame."""
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def resize_uint8(image: tf.Tensor, hw: tuple[int, int]) -> tf.Tensor:
    """uint8/float [H,W,3] -> uint8 [h,w,3] (bilinear, rounded)."""
    resized = tf.image.resize(tf.cast(image, tf.float32), hw, method="bilinear")
    out = tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)
    out.set_shape([hw[0], hw[1], 3])
    return out


def load_image(path, image_size) -> tf.Tensor:
    """One image file -> float32 [h,w,3] 0..255, preprocessed exactly as training/eval batches
    are (use files checked by :func:`kft.data.images.scan_images`)."""
    return tf.cast(resize_uint8(decode_file(tf.constant(str(path))), image_hw(image_size)),
                   tf.float32)


def _base_seed(seed: int) -> tf.Tensor:
    seed = int(seed)
    return tf.constant([seed & 0x7FFFFFFF, (seed >> 31) & 0x7FFFFFFF], tf.int64)


def _fold(seed: tf.Tensor, *values) -> tf.Tensor:
    """A new int64 [2] seed: ``seed`` folded with each value in turn."""
    for v in values:
        seed = tf.cast(tf.random.experimental.stateless_fold_in(
            seed, tf.cast(v, tf.int64)), tf.int64)
    return seed


def _to_rgb(image: tf.Tensor) -> tf.Tensor:
    """uint8 [H,W,C] with C = 1, 3 or 4 (static) -> uint8 [H,W,3]."""
    channels = image.shape[-1]
    if channels == 1:
        return tf.image.grayscale_to_rgb(image)
    if channels == 4:
        return image[..., :3]
    return image


@dataclass
class _Source:
    """A training split ready for per-epoch shuffling: ``load(i)`` gives ``(uint8 [h,w,3],
    int32 label)`` for ``i`` in ``[0, n)`` (exact permutations), or, when ``load`` is None,
    ``stream`` yields them in a fixed order (windowed permutations). ``keep`` holds the
    in-memory tables the closures read."""

    n: int
    load: Callable | None = None
    stream: tf.data.Dataset | None = None
    keep: tuple = ()


def _host_variable(array: np.ndarray) -> tf.Variable:
    with tf.device("/CPU:0"):
        return tf.Variable(array, trainable=False)


def _materialize(ds: tf.data.Dataset, n: int, hw) -> _Source:
    """Reads ``ds`` of (uint8 [H,W,3], int32) once into host-memory tables (exact shuffling)."""
    images, labels = [], []
    for x, y in ds.batch(256).as_numpy_iterator():
        images.append(x)
        labels.append(y)
    if not images:
        raise ValueError("the split is empty")
    images, labels = np.concatenate(images), np.concatenate(labels).astype(np.int32)
    if len(images) != n:
        raise ValueError(f"the dataset yielded {len(images)} examples but num_examples={n}")
    table = (_host_variable(images), _host_variable(labels))

    def load(i):
        x = tf.gather(table[0], i)
        return (resize_uint8(x, hw) if tuple(x.shape[:2]) != hw else x), tf.gather(table[1], i)

    return _Source(n, load=load, keep=table)


def _paths_source(split: ClassificationSplit, hw, cache: bool) -> _Source:
    paths = tf.constant(list(split.paths), tf.string)
    labels = tf.constant(list(split.labels), tf.int32)

    def load(i):
        return resize_uint8(decode_file(tf.gather(paths, i)), hw), tf.gather(labels, i)

    if cache:
        ds = tf.data.Dataset.range(len(split)).map(load, AUTOTUNE, deterministic=True)
        return _materialize(ds, len(split), hw)
    return _Source(len(split), load=load)


def _dataset_source(ds: tf.data.Dataset, n: int, hw, cache: bool) -> _Source:
    image_spec = ds.element_spec[0]
    ds = ds.map(lambda x, y: (_to_rgb(tf.cast(x, tf.uint8)), tf.cast(y, tf.int32)),
                AUTOTUNE, deterministic=True)
    if cache:
        ds = ds.map(lambda x, y: (resize_uint8(x, hw), y), AUTOTUNE, deterministic=True)
        return _materialize(ds, n, hw)
    shape = image_spec.shape
    if shape.is_fully_defined() and n * shape.num_elements() <= MAX_TABLE_BYTES:
        return _materialize(ds, n, hw)
    return _Source(n, stream=ds.map(lambda x, y: (resize_uint8(x, hw), y), AUTOTUNE,
                                    deterministic=True))


def _source(source, hw, cache: bool) -> _Source:
    if isinstance(source, ClassificationSplit):
        return _paths_source(source, hw, cache)
    return _dataset_source(source[0], int(source[1]), hw, cache)


def _check_labels(source, num_classes: int) -> None:
    if num_classes < 1:
        raise ValueError(f"num_classes={num_classes} must be >= 1")
    if isinstance(source, ClassificationSplit) and source.labels:
        lo, hi = min(source.labels), max(source.labels)
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"labels span {lo}..{hi} but num_classes={num_classes} "
                             "(model.num_classes)")


def _window_shuffle(ds: tf.data.Dataset, window: int, seed: tf.Tensor) -> tf.data.Dataset:
    """Exact permutation inside consecutive windows of ``window`` elements."""
    def permute(w, batch):
        x, y = batch
        perm = tf.random.experimental.stateless_shuffle(tf.range(tf.shape(y)[0]),
                                                        _fold(seed, w))
        return tf.data.Dataset.from_tensor_slices((tf.gather(x, perm), tf.gather(y, perm)))

    return ds.batch(window).enumerate().flat_map(permute)


def _finish(ds: tf.data.Dataset, num_classes: int) -> tf.data.Dataset:
    return ds.map(lambda x, y: (tf.cast(x, tf.float32), tf.one_hot(y, num_classes)),
                  AUTOTUNE, deterministic=True)


def _training(src: _Source, batch_size, num_classes, seed, augment, epochs, initial_epoch,
              shuffle_buffer) -> tf.data.Dataset:
    steps = steps_per_epoch(src.n, batch_size)
    base = _base_seed(seed)
    window = int(shuffle_buffer or DEFAULT_WINDOW)

    def epoch(e):
        if src.load is not None:
            order = epoch_order(src.n, batch_size, _fold(base, _TAG_SHUFFLE, e))
            ds = tf.data.Dataset.from_tensor_slices(order).map(src.load, AUTOTUNE,
                                                               deterministic=True)
        else:
            ds = _window_shuffle(src.stream, window, _fold(base, _TAG_WINDOW, e))
            # the last batch is filled from the start of the next shuffled pass
            ds = ds.concatenate(_window_shuffle(src.stream, window,
                                                _fold(base, _TAG_WINDOW, e, 1)))
            ds = ds.take(steps * batch_size)
        ds = _finish(ds.batch(batch_size, drop_remainder=True), num_classes)
        if augment is None:
            return ds
        aug_seed = _fold(base, _TAG_AUGMENT, e)
        return ds.enumerate().map(
            lambda b, xy: (augment(xy[0], seed=_fold(aug_seed, b)), xy[1]),
            AUTOTUNE, deterministic=True)

    return tf.data.Dataset.range(initial_epoch, epochs).flat_map(epoch)


def _evaluation(source, hw, batch_size, num_classes, cache) -> tf.data.Dataset:
    """One pass in order: decode/resize -> (cache) -> batch, remainder kept."""
    if isinstance(source, ClassificationSplit):
        ds = tf.data.Dataset.from_tensor_slices(
            (tf.constant(list(source.paths), tf.string), tf.constant(list(source.labels),
                                                                     tf.int32)))
        ds = ds.map(lambda p, y: (resize_uint8(decode_file(p), hw), y), AUTOTUNE,
                    deterministic=True)
    else:
        ds = source[0].map(lambda x, y: (resize_uint8(_to_rgb(tf.cast(x, tf.uint8)), hw),
                                         tf.cast(y, tf.int32)), AUTOTUNE, deterministic=True)
    if cache:
        ds = ds.cache()
    return _finish(ds.batch(batch_size), num_classes)


def _num_examples(source) -> int:
    if isinstance(source, ClassificationSplit):
        return len(source)
    if (isinstance(source, tuple) and len(source) == 2
            and isinstance(source[0], tf.data.Dataset)):
        spec = source[0].element_spec
        if not (isinstance(spec, tuple) and len(spec) == 2):
            raise TypeError(f"the source dataset must yield (image, label) pairs, got {spec}")
        return int(source[1])
    raise TypeError("source must be a ClassificationSplit or (tf.data.Dataset of (uint8 image, "
                    f"int label), num_examples), got {type(source).__name__}")


def classification_batches(source, *, image_size, batch_size: int, num_classes: int,
                           training: bool, seed: int, augment=None, cache: bool = False,
                           epochs: int = 1, initial_epoch: int = 0,
                           shuffle_buffer: int | None = None) -> Batches:
    """Batched classification data; see the module docstring for the design.

    Args:
        source: a :class:`~kft.data.readers.folder.ClassificationSplit`, or ``(dataset, n)``
            with ``dataset`` yielding ``(uint8 [H,W,C], int label)`` (as ``load_tfds``).
        image_size: ``int`` (square) or ``(height, width)``.
        batch_size: examples per batch.
        num_classes: one-hot depth.
        training: True: shuffled, augmented, ``epochs - initial_epoch`` epochs of
            ``ceil(n / batch_size)`` full batches, every example at least once per epoch (the
            last batch is filled with examples drawn again, :mod:`kft.data.sampling`). False: one pass in order, last batch partial,
            no augmentation.
        seed: seeds the per-epoch order and the augmentation.
        augment: a layer called as ``augment(images, seed=int64 [2])`` (e.g.
            :class:`~kft.data.augment.ClassificationAugment`), training only.
        cache: keep decoded, resized images in memory (training: read once at build time;
            evaluation: ``Dataset.cache()`` filled by the first pass).
        epochs, initial_epoch: the training dataset covers epochs ``initial_epoch..epochs-1``.
        shuffle_buffer: window size for sources too large to shuffle exactly (default 10000).

    Returns:
        :class:`Batches` yielding ``(float32 [B,h,w,3] 0..255, float32 [B,num_classes])``;
        ``steps`` is ``ceil(n / batch_size)`` in both modes.
    """
    hw = image_hw(image_size)
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1 (train.batch_size)")
    n = _num_examples(source)
    _check_labels(source, num_classes)
    if not training:
        ds = _evaluation(source, hw, batch_size, num_classes, cache)
        return Batches(ds.prefetch(AUTOTUNE), -(-n // batch_size), n)
    if not 0 <= initial_epoch <= epochs:
        raise ValueError(f"initial_epoch={initial_epoch} must be in [0, epochs={epochs}]")
    src = _source(source, hw, cache)
    ds = _training(src, batch_size, num_classes, seed, augment, epochs, initial_epoch,
                   shuffle_buffer)
    return Batches(ds.prefetch(AUTOTUNE), steps_per_epoch(n, batch_size), n)
