"""tf.data input pipelines for detection and instance segmentation, reproducible epoch by epoch.

Training::

    Dataset.range(initial_epoch, epochs).flat_map(epoch e ->
        permutation of the records from stateless_shuffle(seed, e), the last batch filled
        from a second permutation (kft.data.sampling: every record once per epoch)
        -> per example (parallel, deterministic order):
             decode image (+ masks) -> drop difficult (optional)
             -> augment(data, seed=f(seed, e, record index))      original pixels
             -> resize (+ pad) -> scale/clip boxes -> drop boxes < 1 px -> cap -> pad to M
        -> batch(batch_size)  (always full: static B)
        -> batch_augment(batch, seed=f(seed, e, batch index))   (optional: CutMix, Mosaic...)
        -> (x, y) or (x, y, meta))
    -> prefetch

Epoch ``e`` depends only on ``(seed, e)`` (stateless ops, no TF global seed), so a run resumed at
``initial_epoch`` sees exactly the batches the uninterrupted run saw. Evaluation is one pass in
record order, last batch partial, no augmentation and no difficult-dropping.

Boxes follow shared/DESIGN.md: float32 ``xyxy`` absolute pixels, half-open.

Resize modes (``resize=``):

* ``"fixed"`` (SSD): ``image_size=300`` or ``(h, w)``; the image is stretched to ``h x w`` and
  boxes are scaled per axis. Batches are ``[B, h, w, 3]``.
* ``"keep_aspect"`` (Faster/Mask R-CNN): ``image_size=(short_side, max_long_side)``; the scale
  is ``min(short / min(H, W), max_long / max(H, W))`` (Detectron2 / torchvision), further capped
  so the image fits ``pad_size``; the resized image is padded with zeros at the bottom and right
  to the static ``pad_size`` (default ``(L, L)``, ``L`` = ``max_long_side`` rounded up to a
  multiple of :data:`PAD_MULTIPLE`, so FPN strides divide it). A smaller ``pad_size`` such as
  ``(832, 1344)`` halves the padding for landscape datasets; taller images then shrink to fit.

Each example keeps ``scale`` (float32 ``[2]``, ``(y, x)`` = resized size / size before resize,
per axis, exact for the rounded pixel size) so :func:`to_original` maps boxes back to the
original pixels.

Ground truth is padded to ``max_instances`` (M) rows with label -1 (and zero boxes / masks).
Boxes whose width or height is below :data:`MIN_BOX_SIZE` pixels after resizing (or whose label
an augmentation set to -1) are dropped first. When more than M objects remain, the M largest
(by area) are kept, in their original order; :class:`DetectionBatches` counts the images and
objects over the cap in the records (before augmentation) and a warning is issued at build time.

``cache=True`` holds the *decoded original* images (and masks) in host memory (``sum(H * W * 3)``
bytes, plus ``H * W`` per object with masks), read once at build time; augmentation and resizing
still run every epoch, since augmentation happens before the resize. Use it for small datasets.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
from keras import layers, ops

from kft.data.pipeline import decode_file, image_hw
from kft.data.readers.detection import DetectionSplit, decode_masks
from kft.data.sampling import epoch_order, steps_per_epoch

AUTOTUNE = tf.data.AUTOTUNE
RESIZE_MODES = ("fixed", "keep_aspect")
PAD_MULTIPLE = 32  # keep_aspect default pad size: max_long_side rounded up to this multiple
MIN_BOX_SIZE = 1.0  # pixels, after resizing: narrower or shorter boxes are dropped
_TAG_SHUFFLE, _TAG_AUGMENT, _TAG_BATCH = 1, 2, 3


@dataclass
class DetectionBatches:
    """A batched detection dataset; see :func:`detection_batches` for what it yields.

    ``steps``: batches per epoch. ``num_examples``: records in the split. ``image_size``: the
    static ``(height, width)`` of the batched images. ``capped_images`` / ``capped_objects``:
    records with more than ``max_instances`` objects and the objects beyond the cap (counted on
    the records before augmentation; the smallest ones are dropped).
    """

    dataset: tf.data.Dataset
    steps: int
    num_examples: int
    image_size: tuple[int, int]
    capped_images: int = 0
    capped_objects: int = 0


@dataclass(frozen=True)
class ResizeSpec:
    """How images are resized: ``mode`` in :data:`RESIZE_MODES`; ``target``: ``(h, w)``
    (fixed) or ``(short_side, max_long_side)`` (keep_aspect); ``out_hw``: the static output
    ``(height, width)`` (fixed: ``target``; keep_aspect: the pad size)."""

    mode: str
    target: tuple[int, int]
    out_hw: tuple[int, int]


def resize_spec(image_size, resize: str = "fixed", pad_size=None) -> ResizeSpec:
    """Checks ``image_size``/``resize``/``pad_size`` (see the module docstring) -> a spec."""
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize={resize!r}: expected one of {RESIZE_MODES}")
    if resize == "fixed":
        if pad_size is not None:
            raise ValueError("pad_size only applies to resize='keep_aspect'")
        hw = image_hw(image_size)
        return ResizeSpec("fixed", hw, hw)
    if isinstance(image_size, int | np.integer) or len(tuple(image_size)) != 2:
        raise ValueError(f"resize='keep_aspect' needs image_size=(short_side, max_long_side), "
                         f"e.g. (800, 1333); got {image_size!r}")
    short, long = (int(v) for v in image_size)
    if not 1 <= short <= long:
        raise ValueError(f"image_size={image_size!r}: need 1 <= short_side <= max_long_side")
    if pad_size is None:
        side = math.ceil(long / PAD_MULTIPLE) * PAD_MULTIPLE
        pad_size = (side, side)
    return ResizeSpec("keep_aspect", (short, long), image_hw(pad_size))


def _resized_hw(hw: tf.Tensor, spec: ResizeSpec) -> tf.Tensor:
    """int32 ``[2]`` size before resizing -> int32 ``[2]`` size after (before padding)."""
    if spec.mode == "fixed":
        return tf.constant(spec.out_hw, tf.int32)
    hw = tf.cast(hw, tf.float32)
    out = tf.constant(spec.out_hw, tf.float32)
    short, long = (float(v) for v in spec.target)
    s = tf.minimum(short / tf.reduce_min(hw), long / tf.reduce_max(hw))
    s = tf.minimum(s, tf.reduce_min(out / hw))
    return tf.cast(tf.clip_by_value(tf.round(hw * s), 1.0, out), tf.int32)


def _pad_image(x: tf.Tensor, out_hw) -> tf.Tensor:
    """``[h, w, C]`` -> ``[H, W, C]`` zero-padded at the bottom/right (``h <= H``, ``w <= W``)."""
    shape = tf.shape(x)
    return tf.pad(x, [[0, out_hw[0] - shape[0]], [0, out_hw[1] - shape[1]], [0, 0]])


def resize_image(image, *, image_size=None, resize: str = "fixed", pad_size=None,
                 spec: ResizeSpec | None = None):
    """Resizes one image as the detection pipeline does (use it at prediction time).

    Args:
        image: ``[H, W, 3]`` uint8 or float 0..255.
        image_size, resize, pad_size: as in :func:`detection_batches` (or pass ``spec``).

    Returns:
        ``(image float32 [h, w, 3] 0..255, scale float32 [2] (y, x), resized_hw int32 [2])``:
        ``h, w`` is the static output size; pixels beyond ``resized_hw`` are zero padding.
    """
    if spec is None:
        if image_size is None:
            raise ValueError("resize_image needs image_size (or spec)")
        spec = resize_spec(image_size, resize, pad_size)
    image = tf.convert_to_tensor(image)
    hw = tf.shape(image)[:2]
    new_hw = _resized_hw(hw, spec)
    out = tf.image.resize(tf.cast(image, tf.float32), new_hw, method="bilinear")
    out = _pad_image(tf.clip_by_value(out, 0.0, 255.0), spec.out_hw)
    out.set_shape([*spec.out_hw, 3])
    scale = tf.cast(new_hw, tf.float32) / tf.cast(hw, tf.float32)
    return out, scale, new_hw


def _box_factors(scale, boxes_ndim: int):
    """``scale [..., 2] (y, x)`` -> ``[..., 4]`` (x, y, x, y) factors broadcastable to boxes."""
    factors = ops.stack([scale[..., 1], scale[..., 0], scale[..., 1], scale[..., 0]], axis=-1)
    if boxes_ndim == len(scale.shape) + 1:
        factors = ops.expand_dims(factors, -2)
    return factors


def to_original(boxes, scale, image_shape=None):
    """Maps boxes of a resized image back to the original pixels.

    Args:
        boxes: float32 ``xyxy`` in resized-image pixels, ``[K, 4]`` with ``scale [2]`` or
            ``[B, K, 4]`` with ``scale [B, 2]`` (the meta's ``"scale"``, ``(y, x)``).
        image_shape: optional ``(height, width)`` (``[2]`` or ``[B, 2]``, the meta's
            ``"image_shape"``): the result is clipped to the original image.

    Returns:
        float32 ``xyxy`` boxes in original-image pixels, same shape as ``boxes``.
    """
    boxes = ops.convert_to_tensor(boxes, "float32")
    scale = ops.convert_to_tensor(scale, "float32")
    out = boxes / _box_factors(scale, len(boxes.shape))
    if image_shape is None:
        return out
    limits = _box_factors(ops.cast(ops.convert_to_tensor(image_shape), "float32"),
                          len(boxes.shape))
    return ops.minimum(ops.maximum(out, 0.0), limits)


def _scale_boxes(boxes: tf.Tensor, scale: tf.Tensor, resized_hw: tf.Tensor) -> tf.Tensor:
    """``[N, 4]`` boxes times ``scale`` (y, x), clipped to ``resized_hw``."""
    boxes = boxes * _box_factors(scale, 2)
    hw = tf.cast(resized_hw, tf.float32)
    return tf.minimum(tf.maximum(boxes, 0.0), tf.stack([hw[1], hw[0], hw[1], hw[0]]))


# ---------------------------------------------------------------------------------------------
# Records -> in-memory tables and a load(i) function


def _host_variable(array: np.ndarray) -> tf.Variable:
    with tf.device("/CPU:0"):
        return tf.Variable(array, trainable=False)


def _offsets(sizes) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(np.asarray(sizes, np.int64))]).astype(np.int64)


def _image_ids(split: DetectionSplit) -> tf.Tensor:
    """int64 ``[n]`` when every id is an int (COCO), else string ``[n]`` (VOC)."""
    ids = [r.image_id for r in split.records]
    if all(isinstance(i, int | np.integer) and not isinstance(i, bool) for i in ids):
        return tf.constant(np.asarray(ids, np.int64))
    return tf.constant([str(i) for i in ids], tf.string)


def _masks_hwk(record) -> np.ndarray:
    """uint8 ``[H, W, N]`` instance masks of one record (channel k = object k)."""
    return np.ascontiguousarray(np.transpose(decode_masks(record), (1, 2, 0)))


@dataclass
class _Source:
    """``load(i)`` -> the example dict of record ``i`` (see :func:`_make_source`); ``keep``
    holds the host-memory tables the closures read."""

    n: int
    load: Callable
    keep: tuple = ()


def _object_tables(split: DetectionSplit):
    """Row splits int64 ``[n+1]`` and the concatenated boxes, labels, difficult, iscrowd."""
    records = split.records
    splits = _offsets([r.num_objects for r in records])

    def cat(key, dtype, shape):
        return np.concatenate([np.asarray(getattr(r, key), dtype).reshape(shape)
                               for r in records])

    return (tf.constant(splits), tf.constant(cat("boxes", np.float32, (-1, 4))),
            tf.constant(cat("labels", np.int32, (-1,))),
            tf.constant(cat("difficult", bool, (-1,))), tf.constant(cat("iscrowd", bool, (-1,))))


def _decoded_table(split: DetectionSplit) -> tuple[tf.Variable, tf.Variable]:
    """Every image decoded by TF (as the uncached path does) into one flat uint8 table."""
    paths = tf.constant([r.image_path for r in split.records])
    ds = tf.data.Dataset.from_tensor_slices(paths).map(decode_file, AUTOTUNE, deterministic=True)
    flat = [img.reshape(-1) for img in ds.as_numpy_iterator()]
    return _host_variable(np.concatenate(flat)), _host_variable(_offsets([len(f) for f in flat]))


def _mask_table(split: DetectionSplit) -> tuple[tf.Variable, tf.Variable]:
    flat = [_masks_hwk(r).reshape(-1) for r in split.records]
    return _host_variable(np.concatenate(flat)), _host_variable(_offsets([len(f) for f in flat]))


def _make_source(split: DetectionSplit, with_masks: bool, cache: bool) -> _Source:
    """``load(i)`` -> ``{"image": uint8 [H,W,3], "boxes": f32 [N,4], "labels": i32 [N],
    "difficult", "iscrowd": bool [N], "image_id", "index": int32, "masks": uint8 [H,W,N]}``
    ("masks" only when ``with_masks``)."""
    paths = tf.constant([r.image_path for r in split.records])
    shapes = tf.constant([[r.height, r.width] for r in split.records], tf.int32)
    ids = _image_ids(split)
    obj_splits, boxes, labels, difficult, iscrowd = _object_tables(split)
    images = _decoded_table(split) if cache else None
    masks = _mask_table(split) if cache and with_masks else None
    records = split.records

    def slice_flat(table, i, shape):
        return tf.reshape(table[0][table[1][i]:table[1][i + 1]], shape)

    def decode_mask(i):
        return _masks_hwk(records[int(i)])

    def load(i):
        lo, hi = obj_splits[i], obj_splits[i + 1]
        hw = shapes[i]
        image = (slice_flat(images, i, tf.concat([hw, [3]], 0)) if cache
                 else decode_file(paths[i]))
        ex = {"image": image, "boxes": boxes[lo:hi], "labels": labels[lo:hi],
              "difficult": difficult[lo:hi], "iscrowd": iscrowd[lo:hi],
              "image_id": ids[i], "index": tf.cast(i, tf.int32)}
        if with_masks:
            m = (slice_flat(masks, i, tf.concat([hw, [hi - lo]], 0)) if cache
                 else tf.numpy_function(decode_mask, [i], tf.uint8, stateful=False))
            ex["masks"] = tf.ensure_shape(m, [None, None, None])
        return ex

    return _Source(len(records), load, keep=tuple(t for t in (images, masks) if t))


# ---------------------------------------------------------------------------------------------
# Per example: augment, resize, select, pad


def _base_seed(seed: int) -> tf.Tensor:
    seed = int(seed)
    return tf.constant([seed & 0x7FFFFFFF, (seed >> 31) & 0x7FFFFFFF], tf.int64)


def _fold(seed: tf.Tensor, *values) -> tf.Tensor:
    """A new int64 ``[2]`` seed: ``seed`` folded with each value in turn."""
    for v in values:
        seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(v, tf.int64))
    return seed


def _int32_seed(seed: tf.Tensor) -> tf.Tensor:
    """int64 ``[2]`` -> int32 ``[2]`` (non-negative), the seed handed to augmentations."""
    return tf.cast(tf.bitwise.bitwise_and(seed, 0x7FFFFFFF), tf.int32)


def _accepts_seed(fn) -> bool:
    """Whether ``fn`` (a function or a Keras layer) takes a ``seed`` keyword."""
    target = fn.call if isinstance(fn, layers.Layer) else fn
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "seed" or p.kind is p.VAR_KEYWORD for p in params)


def _keep_rows(ex: dict, keep: tf.Tensor) -> dict:
    """``ex`` with only the objects where ``keep`` (bool ``[N]``) is True."""
    idx = tf.where(keep)[:, 0]
    out = dict(ex)
    for key in ("boxes", "labels", "difficult", "iscrowd"):
        out[key] = tf.gather(ex[key], idx)
    if "masks" in ex:
        out["masks"] = tf.gather(ex["masks"], idx, axis=2)
    return out


def _flag_after(out_boxes: dict, key: str, before: tf.Tensor, n: tf.Tensor) -> tf.Tensor:
    """A difficult/iscrowd flag ``[n]`` after augmentation: the one the augmentation returned
    (any dtype, nonzero = True) when it has ``n`` entries, else the input's when the object
    count is unchanged, else all False."""
    flag = tf.reshape(tf.cast(out_boxes.get(key, before), tf.bool), [-1])
    return tf.cond(tf.equal(tf.size(flag), n), lambda: flag, lambda: tf.zeros([n], tf.bool))


def _augment(ex: dict, augment, seed, pass_seed: bool) -> dict:
    """Applies ``augment`` to one example in the Keras bounding-box dict convention."""
    data = {"images": tf.cast(ex["image"], tf.float32),
            "bounding_boxes": {"boxes": ex["boxes"], "labels": ex["labels"],
                               "difficult": ex["difficult"], "iscrowd": ex["iscrowd"]}}
    if "masks" in ex:
        data["segmentation_masks"] = ex["masks"]
    out = augment(data, seed=seed) if pass_seed else augment(data)
    boxes = tf.reshape(tf.cast(out["bounding_boxes"]["boxes"], tf.float32), [-1, 4])
    labels = tf.reshape(tf.cast(out["bounding_boxes"]["labels"], tf.int32), [-1])
    n = tf.shape(labels)[0]
    result = dict(ex, image=tf.ensure_shape(tf.cast(out["images"], tf.float32), [None, None, 3]),
                  boxes=boxes, labels=labels,
                  difficult=_flag_after(out["bounding_boxes"], "difficult", ex["difficult"], n),
                  iscrowd=_flag_after(out["bounding_boxes"], "iscrowd", ex["iscrowd"], n))
    if "masks" in ex:
        if "segmentation_masks" not in out:
            raise ValueError("with_masks=True but augment returned no 'segmentation_masks': "
                             "it must transform and return the masks it is given")
        masks = out["segmentation_masks"]
        check = tf.debugging.assert_equal(
            tf.shape(masks)[2], n, message="augment returned a different number of "
            "segmentation_masks channels than boxes: masks must stay aligned with boxes")
        with tf.control_dependencies([check]):
            result["masks"] = tf.identity(masks)
    return result


def _select(boxes: tf.Tensor, labels: tf.Tensor, max_instances: int):
    """Indices (int32 ``[k]``, ``k <= max_instances``, increasing) of the objects kept: label
    >= 0 and both sides >= MIN_BOX_SIZE, the largest by area when more remain; and the count
    of usable objects before the cap (int32)."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    usable = (labels >= 0) & (w >= MIN_BOX_SIZE) & (h >= MIN_BOX_SIZE)
    idx = tf.cast(tf.where(usable)[:, 0], tf.int32)
    count = tf.size(idx)
    top = tf.math.top_k(tf.gather(w * h, idx), tf.minimum(count, max_instances)).indices
    return tf.sort(tf.gather(idx, top)), count


def _pad_rows(x: tf.Tensor, rows: int, value=0) -> tf.Tensor:
    """Pads axis 0 of ``x`` to ``rows`` with ``value`` and fixes the static shape."""
    pad = [[0, rows - tf.shape(x)[0]]] + [[0, 0]] * (len(x.shape) - 1)
    out = tf.pad(x, pad, constant_values=tf.cast(value, x.dtype))
    out.set_shape([rows, *x.shape[1:]])
    return out


def _full_masks(masks: tf.Tensor, resized_hw: tf.Tensor, out_hw) -> tf.Tensor:
    """``[H, W, k]`` 0/1 -> uint8 ``[k, h, w]``: resized like the image, zero-padded."""
    k = tf.shape(masks)[2]
    blank = tf.zeros(tf.concat([tf.shape(masks)[:2], [1]], 0), tf.float32)
    m = tf.concat([tf.cast(masks, tf.float32), blank], -1)
    m = tf.image.resize(m, resized_hw, method="bilinear")[..., :k]  # extra channel: k may be 0
    m = _pad_image(tf.cast(m >= 0.5, tf.uint8), out_hw)
    return tf.transpose(m, [2, 0, 1])


def _cropped_masks(masks: tf.Tensor, boxes: tf.Tensor, mask_size) -> tf.Tensor:
    """``[H, W, k]`` 0/1 and their ``[k, 4]`` boxes (same pixels) -> uint8 ``[k, mh, mw]``:
    each mask cropped to its box and resized, one bilinear sample per output cell centre."""
    hw = tf.cast(tf.shape(masks)[:2], tf.float32)
    mh, mw = (float(v) for v in mask_size)
    x1, y1, x2, y2 = tf.unstack(boxes, axis=1)
    dy, dx = 0.5 * (y2 - y1) / mh, 0.5 * (x2 - x1) / mw
    ny, nx = tf.maximum(hw[0] - 1.0, 1.0), tf.maximum(hw[1] - 1.0, 1.0)
    crop = tf.stack([(y1 + dy - 0.5) / ny, (x1 + dx - 0.5) / nx,
                     (y2 - dy - 0.5) / ny, (x2 - dx - 0.5) / nx], axis=1)
    images = tf.cast(tf.transpose(masks, [2, 0, 1])[..., None], tf.float32)
    out = tf.image.crop_and_resize(images, crop, tf.range(tf.shape(boxes)[0]),
                                   tuple(mask_size))
    return tf.cast(out[..., 0] >= 0.5, tf.uint8)


@dataclass(frozen=True)
class _Layout:
    """Static per-example output layout."""

    spec: ResizeSpec
    max_instances: int
    with_masks: bool
    mask_size: tuple[int, int] | None
    with_crowd: bool = False  # y carries "iscrowd" (the split has crowd boxes)


# Crowd flags ride in the label channel through a batch augmentation (which moves boxes and
# labels only): label + CROWD_TAG while mixing, split apart again afterwards.
CROWD_TAG = 1 << 20


def _finish(ex: dict, layout: _Layout) -> dict:
    """Resizes one example and pads its objects -> ``{"images", "boxes", "labels",
    ("masks"), "meta"}`` with static shapes."""
    m = layout.max_instances
    image = ex["image"]
    out_image, scale, resized_hw = resize_image(image, spec=layout.spec)
    boxes = _scale_boxes(ex["boxes"], scale, resized_hw)
    keep, count = _select(boxes, ex["labels"], m)
    kept = tf.gather(boxes, keep)
    result = {"images": out_image, "boxes": _pad_rows(kept, m),
              "labels": _pad_rows(tf.gather(ex["labels"], keep), m, -1)}
    if layout.with_masks:
        masks = tf.gather(ex["masks"], keep, axis=2)
        if layout.mask_size is None:
            masks = _full_masks(masks, resized_hw, layout.spec.out_hw)
        else:
            masks = _cropped_masks(masks, to_original(kept, scale), layout.mask_size)
        result["masks"] = _pad_rows(masks, m)
    if layout.with_crowd:
        result["iscrowd"] = _pad_rows(tf.gather(ex["iscrowd"], keep), m, False)
    result["meta"] = {
        "image_id": ex["image_id"], "index": ex["index"], "scale": scale,
        "image_shape": tf.shape(image)[:2], "resized_shape": resized_hw,
        "difficult": _pad_rows(tf.gather(ex["difficult"], keep), m, False),
        "iscrowd": _pad_rows(tf.gather(ex["iscrowd"], keep), m, False),
        "num_objects": count,
    }
    return result


# ---------------------------------------------------------------------------------------------
# Batches


def _apply_batch_augment(batch: dict, batch_augment, seed, pass_seed: bool,
                         layout: _Layout) -> dict:
    """Runs ``batch_augment`` on a padded batch (Keras bounding-box dict convention)."""
    labels = batch["labels"]
    if layout.with_crowd:
        labels = tf.where(batch["iscrowd"] & (labels >= 0), labels + CROWD_TAG, labels)
    data = {"images": batch["images"],
            "bounding_boxes": {"boxes": batch["boxes"], "labels": labels}}
    if layout.with_masks:
        data["segmentation_masks"] = tf.transpose(batch["masks"], [0, 2, 3, 1])
    out = batch_augment(data, seed=seed) if pass_seed else batch_augment(data)
    result = dict(batch)
    result["images"] = tf.ensure_shape(tf.cast(out["images"], tf.float32),
                                       batch["images"].shape)
    result["boxes"] = tf.ensure_shape(tf.cast(out["bounding_boxes"]["boxes"], tf.float32),
                                      batch["boxes"].shape)
    labels = tf.ensure_shape(tf.cast(out["bounding_boxes"]["labels"], tf.int32),
                             batch["labels"].shape)
    if layout.with_crowd:
        result["iscrowd"] = labels >= CROWD_TAG
        labels = tf.where(result["iscrowd"], labels - CROWD_TAG, labels)
    result["labels"] = labels
    if layout.with_masks:
        masks = tf.cast(tf.cast(out["segmentation_masks"], tf.float32) >= 0.5, tf.uint8)
        result["masks"] = tf.ensure_shape(tf.transpose(masks, [0, 3, 1, 2]),
                                          batch["masks"].shape)
    return result


def _to_keras(batch: dict, with_meta: bool):
    y = {"boxes": batch["boxes"], "labels": batch["labels"]}
    if "iscrowd" in batch:
        y["iscrowd"] = batch["iscrowd"]
    if "masks" in batch:
        y["masks"] = batch["masks"]
    return (batch["images"], y, batch["meta"]) if with_meta else (batch["images"], y)


@dataclass(frozen=True)
class _Options:
    """Everything the per-epoch dataset builder needs besides the source."""

    layout: _Layout
    batch_size: int
    seed: int
    augment: Callable | None
    batch_augment: Callable | None
    drop_difficult: bool
    with_meta: bool


def _example_fn(src: _Source, opts: _Options, training: bool, epoch_seed=None):
    augment = opts.augment if training else None
    pass_seed = augment is not None and _accepts_seed(augment)

    def example(i):
        ex = src.load(i)
        if training and opts.drop_difficult:
            ex = _keep_rows(ex, tf.logical_not(ex["difficult"]))
        if augment is not None:
            ex = _augment(ex, augment, _int32_seed(_fold(epoch_seed, _TAG_AUGMENT, i)),
                          pass_seed)
        return _finish(ex, opts.layout)

    return example


def _training(src: _Source, opts: _Options, epochs: int, initial_epoch: int):
    base = _base_seed(opts.seed)
    batch_augment = opts.batch_augment
    pass_seed = batch_augment is not None and _accepts_seed(batch_augment)

    def epoch(e):
        epoch_seed = _fold(base, e)
        order = epoch_order(src.n, opts.batch_size, _fold(epoch_seed, _TAG_SHUFFLE))
        ds = tf.data.Dataset.from_tensor_slices(order).map(
            _example_fn(src, opts, True, epoch_seed), AUTOTUNE, deterministic=True)
        ds = ds.batch(opts.batch_size, drop_remainder=True)
        if batch_augment is not None:
            ds = ds.enumerate().map(lambda b, batch: _apply_batch_augment(
                batch, batch_augment, _int32_seed(_fold(epoch_seed, _TAG_BATCH, b)),
                pass_seed, opts.layout), AUTOTUNE, deterministic=True)
        return ds.map(lambda batch: _to_keras(batch, opts.with_meta), AUTOTUNE,
                      deterministic=True)

    return tf.data.Dataset.range(initial_epoch, epochs).flat_map(epoch)


def _evaluation(src: _Source, opts: _Options) -> tf.data.Dataset:
    ds = tf.data.Dataset.range(src.n).map(_example_fn(src, opts, False), AUTOTUNE,
                                          deterministic=True)
    return ds.batch(opts.batch_size).map(lambda b: _to_keras(b, opts.with_meta), AUTOTUNE,
                                         deterministic=True)


def _check_masks(split: DetectionSplit, with_masks: bool, mask_size, batch_augment):
    if mask_size is not None:
        mask_size = image_hw(mask_size)
        if not with_masks:
            raise ValueError("mask_size is set but with_masks=False")
        if batch_augment is not None:
            raise ValueError("batch_augment cannot be combined with mask_size: box-cropped "
                             "masks cannot follow a batch-level mix (Mosaic, CutMix); use "
                             "mask_size=None (full-image masks)")
    if with_masks and not any(r.segmentation for r in split.records):
        raise ValueError("with_masks=True but no record of the split has a segmentation "
                         "(the VOC reader reads boxes only; use a COCO-format split)")
    return mask_size


def _count_capped(split: DetectionSplit, max_instances: int) -> tuple[int, int]:
    over = [r.num_objects - max_instances for r in split.records
            if r.num_objects > max_instances]
    if over:
        warnings.warn(f"{len(over)} images have more than max_instances={max_instances} "
                      f"objects: the {sum(over)} smallest beyond the cap are dropped "
                      "(data.max_instances)", stacklevel=3)
    return len(over), sum(over)


def _check_args(split, batch_size, max_instances, training, epochs, initial_epoch):
    if not isinstance(split, DetectionSplit):
        raise TypeError(f"split must be a DetectionSplit (read_voc / read_coco), got "
                        f"{type(split).__name__}")
    if len(split) == 0:
        raise ValueError("the split has no records")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1 (train.batch_size)")
    if max_instances < 1:
        raise ValueError(f"max_instances={max_instances} must be >= 1")
    if training and not 0 <= initial_epoch <= epochs:
        raise ValueError(f"initial_epoch={initial_epoch} must be in [0, epochs={epochs}]")


def detection_batches(split: DetectionSplit, *, image_size, resize: str = "fixed",
                      batch_size: int, max_instances: int = 100, training: bool, seed: int,
                      augment=None, batch_augment=None, with_masks: bool = False,
                      mask_size=None, cache: bool = False, epochs: int = 1,
                      initial_epoch: int = 0, drop_difficult_in_training: bool = False,
                      pad_size=None, with_meta: bool = False) -> DetectionBatches:
    """Batched detection data; see the module docstring for the design.

    Args:
        split: a :class:`~kft.data.readers.detection.DetectionSplit` (``read_voc``,
            ``read_coco``, ...); records with no objects are background images.
        image_size, resize, pad_size: ``"fixed"``: ``int`` or ``(h, w)``; ``"keep_aspect"``:
            ``(short_side, max_long_side)``, batches padded to ``pad_size`` (module docstring).
        batch_size: examples per batch.
        max_instances: M, ground-truth rows per image (padding label -1).
        training: True: per-epoch permutation, ``augment``/``batch_augment`` and difficult
            dropping, ``epochs - initial_epoch`` epochs of ``ceil(n / batch_size)`` full
            batches, every record at least once per epoch (:mod:`kft.data.sampling`).
            False: one pass in record order, last batch partial, none of those.
        seed: seeds the order and every augmentation seed.
        augment: per example, *before* resizing, called as ``augment(data, seed=int32 [2])``
            (or ``augment(data)`` when it takes no ``seed``) with ``data = {"images": f32
            [H,W,3] 0..255, "bounding_boxes": {"boxes": f32 [N,4] xyxy pixels, "labels": i32
            [N], "difficult": bool [N], "iscrowd": bool [N]}, "segmentation_masks": uint8
            [H,W,N] (with masks)}``; returns the same dict (the image size may change; Keras 3
            layers pass the extra ``bounding_boxes`` entries through, kft's detection_augment
            layers keep them aligned when they drop boxes). The seed depends on ``(seed,
            epoch, record index)``. Boxes it labels -1 are dropped. When it returns flags of
            another length than its boxes (it dropped boxes but not flags) the flags become
            False.
        batch_augment: per padded batch (Mosaic, CutMix), ``batch_augment(data, seed=int32
            [2])`` with ``data = {"images": f32 [B,h,w,3], "bounding_boxes": {"boxes": [B,M,4],
            "labels": [B,M]}, "segmentation_masks": uint8 [B,h,w,M] (full masks)}``; shapes
            must be kept. The seed depends on ``(seed, epoch, batch index)``. Meta flags are not
            updated by it.
        with_masks: add instance masks (needs segmentations: COCO-format splits).
        mask_size: ``None``: masks at the batch image size, ``[B,M,h,w]`` (memory: B*M*h*w
            bytes; keep M small at R-CNN sizes). ``(mh, mw)``: each mask cropped to its own box
            and resized to ``mh x mw`` (the Mask R-CNN "mini mask"), ``[B,M,mh,mw]``.
        cache: keep the decoded original images (and masks) in host memory, read at build time.
        epochs, initial_epoch: training covers epochs ``initial_epoch..epochs-1``.
        drop_difficult_in_training: remove ``difficult`` objects before augmenting (training).
        with_meta: also yield ``meta`` (for evaluation; not for ``fit``).

    Returns:
        :class:`DetectionBatches` yielding ``(x, y)`` or ``(x, y, meta)``:

        * ``x``: float32 ``[B,h,w,3]`` 0..255 (zero padding beyond ``meta["resized_shape"]``);
        * ``y``: ``{"boxes": f32 [B,M,4] xyxy resized pixels, "labels": i32 [B,M] (-1 =
          padding), "iscrowd": bool [B,M] (only when the split has crowd boxes: COCO
          ``iscrowd``, Cityscapes ``*group``; detectors ignore anchors on them),
          "masks": uint8 [B,M,mh,mw] 0/1 (with_masks)}``;
        * ``meta``: ``{"image_id": int64 (all ids ints) or string [B], "index": i32 [B]
          (record index), "scale": f32 [B,2] (y, x), "image_shape": i32 [B,2] (H, W before
          resizing = the original when not augmented), "resized_shape": i32 [B,2],
          "difficult", "iscrowd": bool [B,M], "num_objects": i32 [B] (usable objects before
          the max_instances cap)}``.

        ``B`` is static in training (the last batch filled, :mod:`kft.data.sampling`).
        ``steps`` is ``ceil(n / batch_size)`` in both modes.
    """
    _check_args(split, batch_size, max_instances, training, epochs, initial_epoch)
    spec = resize_spec(image_size, resize, pad_size)
    mask_size = _check_masks(split, with_masks, mask_size, batch_augment)
    with_crowd = any(bool(np.any(r.iscrowd)) for r in split.records)
    layout = _Layout(spec, int(max_instances), bool(with_masks), mask_size, with_crowd)
    opts = _Options(layout, int(batch_size), int(seed), augment, batch_augment,
                    bool(drop_difficult_in_training), bool(with_meta))
    capped = _count_capped(split, max_instances)
    src = _make_source(split, with_masks, cache)
    n = src.n
    if training:
        ds, steps = _training(src, opts, epochs, initial_epoch), steps_per_epoch(n, batch_size)
    else:
        ds, steps = _evaluation(src, opts), -(-n // batch_size)
    return DetectionBatches(ds.prefetch(AUTOTUNE), steps, n, spec.out_hw, *capped)
