"""D3 detection augmentation: box-aware Keras layers, seedable per call.

Data (the Keras 3 bounding-box dict). Per-example layers take one unbatched example::

    {"images": float32 [H, W, 3] 0..255,
     "bounding_boxes": {"boxes": float32 [N, 4] xyxy absolute pixels (half-open),
                        "labels": int32 [N], optional other [N, ...] entries},
     optional "segmentation_masks": [H, W, N] instance masks (any dtype), one channel per box,
     any other keys (passed through)}

and return the same structure: boxes clipped to the new image; an instance whose box becomes
narrower or shorter than 1 px, or keeps less than ``min_visible`` of its area, is dropped with
its label, its other ``bounding_boxes`` entries and its mask channel. ``N`` may be 0. Expand,
IoU crop and scale jitter change the image size (the pipeline resizes afterwards).

Batch layers (:class:`DetectionCutMix`, :class:`DetectionMosaic`) take a padded batch
``{"images": [B, H, W, 3], "bounding_boxes": {"boxes": [B, M, 4], "labels": [B, M]}}`` (padding
rows have label -1) and return the same format, same ``M``; when more than ``M`` boxes survive
the largest are kept. Boxes stay in their original order, new boxes after them, padding last.

Randomness: ``layer(data, seed=s)`` with ``s`` an int32/int64 ``[2]`` tensor uses stateless ops
only, so the result is a pure function of ``(data, s)``; without ``seed`` each call draws one from
the layer's ``keras.random.SeedGenerator``. In a ``tf.data`` pipeline give every example its own
seed, e.g. ``ds.enumerate().map(lambda i, d: aug(d, seed=tf.stack([epoch_seed, i])))``.
``training=False`` returns the input unchanged.

Why not keras.layers.RandomFlip / RandomRotation / RandomHue / RandomSaturation /
RandomGaussianBlur (Keras 3.15)? Their flip and rotation boxes are right to within a pixel on
unbatched examples inside ``tf.data``, but (1) they cannot be seeded per call: ``call`` has no
seed argument and their random ops accept only an int or a ``SeedGenerator``, so results in a
parallel ``tf.data`` map depend on scheduling; (2) they return the labels as float32 and mark
clipped-away boxes with label -1 instead of dropping them and their mask channels; (3) the
rotation's boxes use the pixel-index centre ``(W-1)/2`` in pixel-edge coordinates (half a
pixel off the image's rotation centre); (4) RandomHue draws its sign and magnitude from the same
seed, and RandomGaussianBlur's ``factor``/``sigma`` pair does not express "sigma uniform in
0-1". The layers here reuse ``keras.ops.image.affine_transform`` for the pixel warps.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from kft.data.augment import SeededAugmentation
from kft.ops.boxes import box_area, clip_boxes, pairwise_iou

_PACKAGE = "kft"

#: ImageNet mean in RGB 0..255, the default fill of expanded and rotated canvases.
IMAGENET_MEAN_RGB = (123.675, 116.28, 103.53)

#: The SSD paper's crop choices: ``None`` keeps the whole image, ``0.0`` any patch, otherwise
#: the patch's best IoU with a ground-truth box must reach the value.
SSD_MIN_IOUS = (None, 0.0, 0.1, 0.3, 0.5, 0.7, 0.9)

_MIN_SIDE = 1.0  # boxes narrower or shorter than this (pixels) are dropped


# --------------------------------------------------------------------------- helpers


def _seeds(seed: tf.Tensor, n: int) -> list[tf.Tensor]:
    """``n`` independent ``[2]`` seeds derived from one."""
    return tf.unstack(tf.random.experimental.stateless_split(seed, n))


def _uniform(seed, low, high, shape=()) -> tf.Tensor:
    """float32 uniform in ``[low, high)`` of ``shape``."""
    return tf.random.stateless_uniform(shape, seed, low, high)


def _offset(seed, room, shape=()) -> tf.Tensor:
    """int32 of ``shape`` uniform in ``{0, ..., room}`` (``room`` an int32 tensor >= 0)."""
    u = tf.random.stateless_uniform(shape, seed) * tf.cast(room + 1, tf.float32)
    return tf.minimum(tf.cast(u, tf.int32), room)


def _coin(seed, p: float, shape=()) -> tf.Tensor:
    """bool of ``shape``: True with probability ``p``."""
    return tf.random.stateless_uniform(shape, seed) < p


def _maybe(pred, fn, value):
    """``fn(value)`` where the scalar bool ``pred`` holds, else ``value`` (one branch runs)."""
    return tf.cond(pred, lambda: fn(value), lambda: value)


def _size(images) -> tuple[tf.Tensor, tf.Tensor]:
    """(height, width) int32 scalars of ``[..., H, W, C]`` images."""
    shape = tf.shape(images)
    return shape[-3], shape[-2]


def _check_range(name, low, high, lo_bound, hi_bound=math.inf) -> tuple[float, float]:
    """``(low, high)`` as floats; raises unless ``lo_bound <= low <= high <= hi_bound``."""
    low, high = float(low), float(high)
    if not lo_bound <= low <= high <= hi_bound:
        raise ValueError(f"{name}=({low}, {high}) must satisfy {lo_bound} <= low <= high "
                         f"<= {hi_bound}")
    return low, high


def standardize(data, batched: bool = False, layer: str = "kft") -> dict:
    """Shallow copy of an example (or padded batch) with float32 images, float32 boxes
    ``[..., 4]``, int32 labels and tensor masks; raises ``ValueError`` naming ``layer`` when
    the structure is wrong."""
    if not isinstance(data, dict) or "images" not in data or "bounding_boxes" not in data:
        raise ValueError(f"{layer} expects a dict with 'images' and 'bounding_boxes' "
                         "({'boxes', 'labels'}), got "
                         f"{list(data) if isinstance(data, dict) else type(data)}")
    boxes = data["bounding_boxes"]
    if not isinstance(boxes, dict) or not {"boxes", "labels"} <= set(boxes):
        raise ValueError(f"{layer}: data['bounding_boxes'] must be a dict with 'boxes' and "
                         f"'labels', got {boxes!r}")
    images = tf.cast(data["images"], tf.float32)
    rank = 4 if batched else 3
    if images.shape.rank != rank:
        kind = "a padded batch [B,H,W,3]" if batched else "one example [H,W,3] (map it before batching)"
        raise ValueError(f"{layer} expects {kind}, got images of shape {images.shape}")
    out = dict(data)
    out["images"] = images
    lead = [tf.shape(images)[0], -1] if batched else [-1]
    out["bounding_boxes"] = {**boxes,
                             "boxes": tf.reshape(tf.cast(boxes["boxes"], tf.float32), lead + [4]),
                             "labels": tf.cast(boxes["labels"], tf.int32)}
    if "segmentation_masks" in data:
        masks = tf.convert_to_tensor(data["segmentation_masks"])
        if batched or masks.shape.rank != 3:
            raise ValueError(f"{layer}: segmentation_masks must be one example's [H, W, N] "
                             "instance masks (batch layers do not take masks)")
        out["segmentation_masks"] = masks
    return out


def _with_boxes(data, boxes) -> dict:
    """Copy of ``data`` whose ``bounding_boxes['boxes']`` is ``boxes``."""
    return {**data, "bounding_boxes": {**data["bounding_boxes"], "boxes": boxes}}


def _keep_instances(data, keep) -> dict:
    """Copy of one example keeping the instances where bool ``[N]`` ``keep`` holds: every entry
    of ``bounding_boxes`` (each ``[N, ...]``) and the channels of ``segmentation_masks``."""
    out = dict(data)
    out["bounding_boxes"] = {k: tf.boolean_mask(v, keep)
                             for k, v in data["bounding_boxes"].items()}
    if "segmentation_masks" in data:
        out["segmentation_masks"] = tf.boolean_mask(data["segmentation_masks"], keep, axis=2)
    return out


def _big_enough(boxes) -> tf.Tensor:
    """bool ``[...]``: ``xyxy`` boxes at least ``_MIN_SIDE`` wide and high."""
    return tf.logical_and(boxes[..., 2] - boxes[..., 0] >= _MIN_SIDE,
                          boxes[..., 3] - boxes[..., 1] >= _MIN_SIDE)


def _place_boxes(data, boxes, height, width, min_visible: float = 0.0) -> dict:
    """Sets one example's boxes to ``boxes`` f32 ``[N, 4]`` (xyxy in the new
    ``height x width`` image), clipped to it, dropping instances that end up under 1 px wide or
    high or keep less than ``min_visible`` of their area."""
    clipped = clip_boxes(boxes, height, width)
    keep = _big_enough(clipped)
    if min_visible > 0.0:
        keep = tf.logical_and(keep, box_area(clipped) >= min_visible * box_area(boxes))
    return _keep_instances(_with_boxes(data, clipped), keep)


def _map_masks(data, fn) -> dict:
    """Applies ``fn`` (float32 ``[H, W, N]`` -> float32) to the masks, keeping their dtype."""
    if "segmentation_masks" not in data:
        return data
    masks = tf.convert_to_tensor(data["segmentation_masks"])
    return {**data, "segmentation_masks": tf.cast(fn(tf.cast(masks, tf.float32)), masks.dtype)}


def _fill(fill) -> tuple[float, float, float]:
    """A fill colour as three floats (a scalar repeats)."""
    values = [float(fill)] * 3 if isinstance(fill, (int, float)) else [float(v) for v in fill]
    if len(values) != 3:
        raise ValueError(f"fill={fill!r} must be a number or three numbers (RGB 0..255)")
    return tuple(values)


# --------------------------------------------------------------------------- base layer


class _DetectionLayer(SeededAugmentation):
    """Base: probability ``p``, optional ``seed``; ``call(data, seed=None, training=True)``.

    Per-example subclasses define ``transform(data, seed)``, applied with probability ``p``;
    others override ``augment(data, seed)``.
    """

    batched = False

    def __init__(self, p: float = 1.0, seed: int | None = None, **kwargs):
        super().__init__(p=p, seed=seed, **kwargs)
        self._convert_input_args = False
        self._allow_non_tensor_positional_args = True

    def call(self, data, seed=None, training=True):
        if not training or self.p == 0.0:
            return data
        data = standardize(data, self.batched, type(self).__name__)
        return self.augment(data, self.next_seed(seed))

    def augment(self, data: dict, seed: tf.Tensor) -> dict:
        """Standardized example (see module docstring), int64 ``[2]`` seed -> example."""
        s_apply, s_transform = _seeds(seed, 2)
        if self.p == 1.0:
            return self.transform(data, s_transform)
        return _maybe(_coin(s_apply, self.p), lambda d: self.transform(d, s_transform), data)

    def transform(self, data: dict, seed: tf.Tensor) -> dict:
        """The transform itself (always applied)."""
        raise TypeError(f"{type(self).__name__} must define transform() or augment()")


# --------------------------------------------------------------------------- geometry


# Registered under its own name: kft.data.augment.RandomHorizontalFlip (images only) is
# "kft>RandomHorizontalFlip", and one registry name for two classes made deserialisation
# depend on which module was imported last.
@keras.saving.register_keras_serializable(package=_PACKAGE, name="DetectionHorizontalFlip")
class RandomHorizontalFlip(_DetectionLayer):
    """With probability ``p`` mirrors left-right: ``x1' = W - x2``, ``x2' = W - x1``."""

    def __init__(self, p: float = 0.5, seed=None, **kwargs):
        super().__init__(p=p, seed=seed, **kwargs)

    def transform(self, data, seed):
        width = tf.cast(_size(data["images"])[1], tf.float32)
        x1, y1, x2, y2 = tf.unstack(data["bounding_boxes"]["boxes"], 4, axis=-1)
        out = _with_boxes(data, tf.stack([width - x2, y1, width - x1, y2], axis=-1))
        out["images"] = tf.reverse(data["images"], [1])
        return _map_masks(out, lambda m: tf.reverse(m, [1]))


def rotation_matrix(degrees, height, width) -> tf.Tensor:
    """float32 [2, 3] forward map of a rotation by ``degrees`` counter-clockwise (as seen on
    screen, y down) about the image centre ``(W/2, H/2)``, in pixel-edge coordinates:
    ``[x', y'] = A @ [x, y, 1]``."""
    theta = tf.cast(degrees, tf.float32) * (math.pi / 180.0)
    c, s = tf.cos(theta), tf.sin(theta)
    cx, cy = tf.cast(width, tf.float32) / 2.0, tf.cast(height, tf.float32) / 2.0
    return tf.stack([tf.stack([c, s, cx - c * cx - s * cy]),
                     tf.stack([-s, c, cy + s * cx - c * cy])])


def _inverse_pixel_transform(matrix) -> tf.Tensor:
    """The float32 [8] ``ImageProjectiveTransform`` vector (output pixel index -> input pixel
    index) of the forward affine ``matrix`` [2, 3] given in pixel-edge coordinates."""
    inv = tf.linalg.inv(matrix[:, :2])
    t = matrix[:, 2]
    # index i is the pixel centre i + 0.5: x_in = inv @ (x_out + 0.5 - t) - 0.5
    offset = tf.linalg.matvec(inv, 0.5 - t) - 0.5
    return tf.concat([inv[0], offset[:1], inv[1], offset[1:], [0.0, 0.0]], 0)


def transform_corners(boxes, matrix) -> tf.Tensor:
    """Boxes ``[N, 4]`` xyxy -> ``[N, 4]`` xyxy bounding the four corners mapped by the forward
    affine ``matrix`` [2, 3] (pixel-edge coordinates)."""
    x1, y1, x2, y2 = tf.unstack(boxes, 4, axis=-1)
    xs = tf.stack([x1, x2, x2, x1], -1)
    ys = tf.stack([y1, y1, y2, y2], -1)
    tx = matrix[0, 0] * xs + matrix[0, 1] * ys + matrix[0, 2]
    ty = matrix[1, 0] * xs + matrix[1, 1] * ys + matrix[1, 2]
    return tf.stack([tf.reduce_min(tx, -1), tf.reduce_min(ty, -1),
                     tf.reduce_max(tx, -1), tf.reduce_max(ty, -1)], -1)


def warp_image(image, matrix, fill=0.0, interpolation="bilinear") -> tf.Tensor:
    """Warps float32 ``[H, W, C]`` by the forward affine ``matrix`` [2, 3] (pixel-edge
    coordinates) into a ``[H, W, C]`` canvas; uncovered pixels get ``fill`` (scalar or [C])."""
    fill = tf.constant(fill, tf.float32)
    warped = keras.ops.image.affine_transform(
        image - fill, _inverse_pixel_transform(matrix), interpolation=interpolation,
        fill_mode="constant", fill_value=0.0)
    return warped + fill


@keras.saving.register_keras_serializable(package=_PACKAGE)
class RandomRotate(_DetectionLayer):
    """With probability ``p`` rotates by an angle uniform in ``[-degrees, degrees]``
    (positive = counter-clockwise on screen) about the image centre; the image keeps its size,
    uncovered pixels get ``fill``. A box becomes the bounding box of its rotated corners, clipped;
    it is dropped when under 1 px or less than ``min_visible`` of it stays inside the image.
    Masks rotate with nearest-neighbour sampling."""

    def __init__(self, degrees: float = 15.0, p: float = 0.5, fill=IMAGENET_MEAN_RGB,
                 min_visible: float = 0.3, seed=None, **kwargs):
        super().__init__(p=p, seed=seed, **kwargs)
        self.degrees = _check_range("degrees", 0.0, degrees, 0.0, 180.0)[1]
        self.fill = _fill(fill)
        self.min_visible = _check_range("min_visible", 0.0, min_visible, 0.0, 1.0)[1]

    def transform(self, data, seed):
        angle = _uniform(seed, -self.degrees, self.degrees)
        return self.rotate(data, angle)

    def rotate(self, data, degrees) -> dict:
        """``data`` rotated by the scalar ``degrees`` (see class docstring)."""
        height, width = _size(data["images"])
        matrix = rotation_matrix(degrees, height, width)
        out = {**data, "images": warp_image(data["images"], matrix, self.fill)}
        out = _map_masks(out, lambda m: warp_image(m, matrix, 0.0, "nearest"))
        boxes = transform_corners(data["bounding_boxes"]["boxes"], matrix)
        return _place_boxes(out, boxes, height, width, self.min_visible)

    def get_config(self):
        return {**super().get_config(), "degrees": self.degrees, "fill": list(self.fill),
                "min_visible": self.min_visible}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class RandomExpand(_DetectionLayer):
    """SSD zoom-out: with probability ``p`` places the image at a random position on a canvas
    ``ratio`` times larger (``ratio`` uniform in ``[1, max_ratio]``, size floored) filled with
    ``fill``; boxes and masks shift with it. The output is the larger canvas."""

    def __init__(self, max_ratio: float = 4.0, p: float = 0.5, fill=IMAGENET_MEAN_RGB,
                 seed=None, **kwargs):
        super().__init__(p=p, seed=seed, **kwargs)
        self.max_ratio = _check_range("max_ratio", 1.0, max_ratio, 1.0)[1]
        self.fill = _fill(fill)

    def transform(self, data, seed):
        s_ratio, s_x, s_y = _seeds(seed, 3)
        height, width = _size(data["images"])
        ratio = _uniform(s_ratio, 1.0, self.max_ratio)
        pad_h = tf.cast(tf.cast(height, tf.float32) * ratio, tf.int32) - height
        pad_w = tf.cast(tf.cast(width, tf.float32) * ratio, tf.int32) - width
        top, left = _offset(s_y, pad_h), _offset(s_x, pad_w)
        return self.expand(data, top, left, pad_h - top, pad_w - left)

    def expand(self, data, top, left, bottom, right) -> dict:
        """``data`` padded by the given int32 pixel counts (fill colour; masks get 0)."""
        paddings = [[top, bottom], [left, right], [0, 0]]
        height, width = _size(data["images"])
        inside = tf.pad(tf.ones([height, width, 1], tf.bool), paddings)
        images = tf.where(inside, tf.pad(data["images"], paddings),
                          tf.constant(self.fill, tf.float32))
        out = {**data, "images": images}
        out = _map_masks(out, lambda m: tf.pad(m, paddings))
        shift = tf.cast(tf.stack([left, top, left, top]), tf.float32)
        return _with_boxes(out, data["bounding_boxes"]["boxes"] + shift)

    def get_config(self):
        return {**super().get_config(), "max_ratio": self.max_ratio, "fill": list(self.fill)}


def crop_example(data, crop) -> dict:
    """Crops one example to int32 ``crop = [x1, y1, x2, y2]``; keeps the instances whose box
    centre lies inside the crop (half-open), shifted and clipped, dropping those under 1 px."""
    x1, y1, x2, y2 = tf.unstack(crop)
    out = {**data, "images": data["images"][y1:y2, x1:x2]}
    if "segmentation_masks" in data:
        out["segmentation_masks"] = data["segmentation_masks"][y1:y2, x1:x2]
    boxes = data["bounding_boxes"]["boxes"]
    fcrop = tf.cast(crop, tf.float32)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2.0
    inside = tf.reduce_all((centre >= fcrop[:2]) & (centre < fcrop[2:]), axis=-1)
    out = _keep_instances(out, inside)
    shifted = out["bounding_boxes"]["boxes"] - tf.tile(fcrop[:2], [2])
    return _place_boxes(out, shifted, y2 - y1, x2 - x1)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class RandomIoUCrop(_DetectionLayer):
    """SSD random crop. Picks one of ``min_ious`` uniformly: ``None`` keeps the image; a number
    asks for a patch whose best IoU with a ground-truth box is at least that. ``trials``
    candidate patches are drawn at once (width and height each ``scale`` of the image's,
    ``aspect_ratio`` = w / h in range, at least one box centre inside) and the first valid one
    is used; if none is valid (always when N = 0) the example is returned unchanged. Boxes whose
    centre is inside the patch are kept, shifted and clipped (:func:`crop_example`)."""

    def __init__(self, min_ious=SSD_MIN_IOUS, scale=(0.3, 1.0), aspect_ratio=(0.5, 2.0),
                 trials: int = 50, p: float = 1.0, seed=None, **kwargs):
        super().__init__(p=p, seed=seed, **kwargs)
        if not min_ious or any(v is not None and not 0.0 <= float(v) <= 1.0 for v in min_ious):
            raise ValueError(f"min_ious={min_ious!r} must be a non-empty list of None or "
                             "numbers in [0, 1]")
        self.min_ious = [None if v is None else float(v) for v in min_ious]
        self.scale = _check_range("scale", *scale, 0.0, 1.0)
        self.aspect_ratio = _check_range("aspect_ratio", *aspect_ratio, 0.0)
        if int(trials) < 1:
            raise ValueError(f"trials={trials} must be >= 1")
        self.trials = int(trials)

    def candidates(self, seed, height, width) -> tf.Tensor:
        """int32 ``[trials, 4]`` xyxy patches inside the ``height x width`` image."""
        s_w, s_h, s_x, s_y = _seeds(seed, 4)
        def side(s, n):
            size = _uniform(s, *self.scale, [self.trials]) * tf.cast(n, tf.float32)
            return tf.clip_by_value(tf.cast(size, tf.int32), 1, n)

        cw, ch = side(s_w, width), side(s_h, height)
        x1 = _offset(s_x, width - cw, [self.trials])
        y1 = _offset(s_y, height - ch, [self.trials])
        return tf.stack([x1, y1, x1 + cw, y1 + ch], -1)

    def valid(self, crops, boxes, min_iou) -> tf.Tensor:
        """bool ``[trials]``: aspect ratio in range, a box centre inside, best IoU >= min_iou."""
        fcrops = tf.cast(crops, tf.float32)
        ratio = (fcrops[:, 2] - fcrops[:, 0]) / (fcrops[:, 3] - fcrops[:, 1])
        ok = (ratio >= self.aspect_ratio[0]) & (ratio <= self.aspect_ratio[1])
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2.0  # [N, 2]
        inside = tf.reduce_all((centre[None] >= fcrops[:, None, :2])
                               & (centre[None] < fcrops[:, None, 2:]), -1)  # [T, N]
        iou = tf.concat([pairwise_iou(fcrops, boxes), -tf.ones_like(fcrops[:, :1])], 1)
        best = tf.reduce_max(iou, -1)  # -1 when there are no boxes
        return ok & tf.reduce_any(inside, -1) & (best >= min_iou)

    def transform(self, data, seed):
        s_mode, s_crop = _seeds(seed, 2)
        height, width = _size(data["images"])
        table = tf.constant([-1.0 if v is None else v for v in self.min_ious])
        index = tf.random.stateless_uniform([], s_mode, 0, len(self.min_ious), tf.int32)
        min_iou = table[index]
        crops = self.candidates(s_crop, height, width)
        valid = self.valid(crops, data["bounding_boxes"]["boxes"], min_iou)
        found = tf.reduce_any(valid) & (min_iou >= 0.0)
        first = tf.argmax(tf.cast(valid, tf.int32), output_type=tf.int32)
        return _maybe(found, lambda d: crop_example(d, crops[first]), data)

    def get_config(self):
        return {**super().get_config(), "min_ious": list(self.min_ious),
                "scale": list(self.scale), "aspect_ratio": list(self.aspect_ratio),
                "trials": self.trials}


def resize_nearest(x, height, width) -> tf.Tensor:
    """``[H, W, C]`` (any C, also 0) resized to ``height x width`` by nearest neighbour with
    half-pixel centres (as ``tf.image.resize(..., "nearest")``, which rejects C = 0)."""
    def index(new, old):
        scale = tf.cast(old, tf.float32) / tf.cast(new, tf.float32)
        src = tf.floor((tf.range(new, dtype=tf.float32) + 0.5) * scale)
        return tf.minimum(tf.cast(src, tf.int32), old - 1)

    old_h, old_w = _size(x)
    return tf.gather(tf.gather(x, index(height, old_h), axis=0), index(width, old_w), axis=1)


def resize_example(data, height, width) -> dict:
    """Resizes one example to int32 ``height x width`` (bilinear image, nearest masks); boxes
    scale per axis, instances under 1 px are dropped."""
    old_h, old_w = _size(data["images"])
    size = tf.stack([height, width])
    out = {**data, "images": tf.image.resize(data["images"], size)}
    out = _map_masks(out, lambda m: resize_nearest(m, height, width))
    sx = tf.cast(width, tf.float32) / tf.cast(old_w, tf.float32)
    sy = tf.cast(height, tf.float32) / tf.cast(old_h, tf.float32)
    boxes = data["bounding_boxes"]["boxes"] * tf.stack([sx, sy, sx, sy])
    return _place_boxes(out, boxes, height, width)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class RandomScaleJitter(_DetectionLayer):
    """With probability ``p`` resizes by a factor uniform in ``scale_range`` (both sides,
    rounded, at least 1 px); boxes scale with the exact per-axis size ratio."""

    def __init__(self, scale_range=(0.8, 1.25), p: float = 1.0, seed=None, **kwargs):
        super().__init__(p=p, seed=seed, **kwargs)
        self.scale_range = _check_range("scale_range", *scale_range, 1e-3)

    def transform(self, data, seed):
        factor = _uniform(seed, *self.scale_range)
        height, width = _size(data["images"])

        def scaled(n):
            return tf.maximum(tf.cast(tf.round(tf.cast(n, tf.float32) * factor), tf.int32), 1)

        return resize_example(data, scaled(height), scaled(width))

    def get_config(self):
        return {**super().get_config(), "scale_range": list(self.scale_range)}


# --------------------------------------------------------------------------- colour


def shift_hue(image, degrees) -> tf.Tensor:
    """float32 ``[H, W, 3]`` 0..255 with the hue rotated by ``degrees`` (saturation and value
    kept), clipped to 0..255."""
    return tf.clip_by_value(tf.image.adjust_hue(image / 255.0, degrees / 360.0) * 255.0,
                            0.0, 255.0)


def scale_saturation(image, factor) -> tf.Tensor:
    """float32 ``[H, W, 3]`` 0..255 with the HSV saturation multiplied by ``factor`` (clamped
    to 1; hue and value kept), clipped to 0..255."""
    return tf.clip_by_value(tf.image.adjust_saturation(image / 255.0, factor) * 255.0,
                            0.0, 255.0)


def adjust_contrast(image, factor) -> tf.Tensor:
    """float32 ``[H, W, 3]`` 0..255 with each channel's deviation from its mean scaled by
    ``factor``, clipped to 0..255."""
    return tf.clip_by_value(tf.image.adjust_contrast(image, factor), 0.0, 255.0)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class RandomHueSaturation(_DetectionLayer):
    """With probability ``p`` shifts the hue by ``U(-hue, hue)`` degrees and scales the
    saturation by ``U(1 - saturation, 1 + saturation)`` (the guide's "hue/saturation +-20":
    ``hue=20`` degrees, ``saturation=0.2``). Boxes and masks pass through."""

    def __init__(self, hue: float = 20.0, saturation: float = 0.2, p: float = 0.5, seed=None,
                 **kwargs):
        super().__init__(p=p, seed=seed, **kwargs)
        self.hue = _check_range("hue", 0.0, hue, 0.0, 180.0)[1]
        self.saturation = _check_range("saturation", 0.0, saturation, 0.0, 1.0)[1]

    def transform(self, data, seed):
        s_hue, s_sat = _seeds(seed, 2)
        hue = _uniform(s_hue, -self.hue, self.hue)
        sat = _uniform(s_sat, 1.0 - self.saturation, 1.0 + self.saturation)
        return {**data, "images": scale_saturation(shift_hue(data["images"], hue), sat)}

    def get_config(self):
        return {**super().get_config(), "hue": self.hue, "saturation": self.saturation}


def gaussian_blur(image, sigma, radius: int) -> tf.Tensor:
    """float32 ``[H, W, C]`` blurred by a separable Gaussian of standard deviation ``sigma``
    (pixels, scalar tensor; 0 leaves the image unchanged) truncated at ``radius``, with
    symmetric padding (needs H, W >= radius)."""
    if radius == 0:
        return image
    offsets = tf.range(-radius, radius + 1, dtype=tf.float32)
    sigma = tf.maximum(tf.cast(sigma, tf.float32), 1e-3)
    kernel = tf.exp(-0.5 * tf.square(offsets / sigma))
    kernel /= tf.reduce_sum(kernel)
    channels = tf.shape(image)[-1]
    x = tf.pad(image[None], [[0, 0], [radius, radius], [radius, radius], [0, 0]], "SYMMETRIC")
    rows = tf.tile(kernel[:, None, None, None], [1, 1, channels, 1])
    cols = tf.tile(kernel[None, :, None, None], [1, 1, channels, 1])
    x = tf.nn.depthwise_conv2d(x, rows, [1, 1, 1, 1], "VALID")
    x = tf.nn.depthwise_conv2d(x, cols, [1, 1, 1, 1], "VALID")
    return x[0]


@keras.saving.register_keras_serializable(package=_PACKAGE)
class RandomGaussianBlur(_DetectionLayer):
    """With probability ``p`` blurs with a Gaussian whose sigma is uniform in ``sigma``
    (pixels; the guide's 0-1), kernel radius ``ceil(3 * max sigma)``. Boxes pass through."""

    def __init__(self, sigma=(0.0, 1.0), p: float = 0.5, seed=None, **kwargs):
        super().__init__(p=p, seed=seed, **kwargs)
        self.sigma = _check_range("sigma", *sigma, 0.0)

    def transform(self, data, seed):
        sigma = _uniform(seed, *self.sigma)
        radius = math.ceil(3.0 * self.sigma[1])
        return {**data, "images": gaussian_blur(data["images"], sigma, radius)}

    def get_config(self):
        return {**super().get_config(), "sigma": list(self.sigma)}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SSDPhotometricDistort(_DetectionLayer):
    """The SSD paper's photometric distortions, each with probability ``p``: brightness
    ``+U(-brightness, brightness)``; then, in random order (contrast first or last, 50/50),
    contrast ``x U(contrast)`` about each channel's mean, saturation ``x U(saturation)`` and hue
    ``+U(-hue, hue)`` degrees. Pixels stay in 0..255; boxes and masks pass through.

    Contrast follows torchvision's reference (a blend with the mean) rather than the original
    Caffe code's plain multiplication, which duplicates brightness."""

    def __init__(self, brightness: float = 32.0, contrast=(0.5, 1.5), saturation=(0.5, 1.5),
                 hue: float = 18.0, p: float = 0.5, seed=None, **kwargs):
        super().__init__(p=p, seed=seed, **kwargs)
        self.brightness = _check_range("brightness", 0.0, brightness, 0.0, 255.0)[1]
        self.contrast = _check_range("contrast", *contrast, 0.0)
        self.saturation = _check_range("saturation", *saturation, 0.0)
        self.hue = _check_range("hue", 0.0, hue, 0.0, 180.0)[1]

    def augment(self, data, seed):
        s = _seeds(seed, 9)
        on = [_coin(s[i], self.p) for i in range(4)]  # brightness, contrast, saturation, hue
        contrast_first = _coin(s[4], 0.5)
        delta = _uniform(s[5], -self.brightness, self.brightness)
        contrast = _uniform(s[6], *self.contrast)
        sat = _uniform(s[7], *self.saturation)
        hue = _uniform(s[8], -self.hue, self.hue)
        x = _maybe(on[0], lambda v: tf.clip_by_value(v + delta, 0.0, 255.0), data["images"])
        x = _maybe(on[1] & contrast_first, lambda v: adjust_contrast(v, contrast), x)
        x = _maybe(on[2], lambda v: scale_saturation(v, sat), x)
        x = _maybe(on[3], lambda v: shift_hue(v, hue), x)
        x = _maybe(on[1] & ~contrast_first, lambda v: adjust_contrast(v, contrast), x)
        return {**data, "images": x}

    def get_config(self):
        return {**super().get_config(), "brightness": self.brightness,
                "contrast": list(self.contrast), "saturation": list(self.saturation),
                "hue": self.hue}


# --------------------------------------------------------------------------- batch ops


def cyclic_partners(seed, batch, k: int) -> list[tf.Tensor]:
    """``k`` int32 ``[batch]`` partner indices: the batch is shuffled into a cycle and image
    ``i``'s ``j``-th partner is the ``j``-th next one along it, so every image is used equally
    often and partners differ from ``i`` (and from each other) when ``batch > k``."""
    order = tf.argsort(tf.random.stateless_uniform([batch], seed))
    position = tf.argsort(order)
    return [tf.gather(order, (position + j) % batch) for j in range(1, k + 1)]


def pack_boxes(boxes, labels, keep, max_instances) -> tuple[tf.Tensor, tf.Tensor]:
    """Compacts candidates ``boxes`` f32 ``[B, K, 4]`` / ``labels`` i32 ``[B, K]`` where bool
    ``keep`` holds into ``[B, max_instances]`` (K >= max_instances), in their original order,
    padding with zero boxes and label -1; when more survive, the largest boxes are kept."""
    area = tf.where(keep, box_area(boxes), -1.0)
    rank = tf.argsort(tf.argsort(area, axis=-1, direction="DESCENDING", stable=True), axis=-1)
    chosen = keep & (rank < max_instances)
    k = tf.shape(boxes)[1]
    order_score = tf.where(chosen, -tf.range(k)[None], -k - 1)
    _, index = tf.math.top_k(order_score, max_instances)
    chosen = tf.gather(chosen, index, batch_dims=1)
    out_boxes = tf.where(chosen[..., None], tf.gather(boxes, index, batch_dims=1), 0.0)
    out_labels = tf.where(chosen, tf.gather(labels, index, batch_dims=1), -1)
    return out_boxes, out_labels


def _pixel_inside(rects, height, width) -> tf.Tensor:
    """bool ``[B, H, W, 1]``: pixel centres inside the float ``[B, 4]`` xyxy rectangles."""
    xs = tf.range(width, dtype=tf.float32) + 0.5
    ys = tf.range(height, dtype=tf.float32) + 0.5
    in_x = (xs[None] >= rects[:, 0:1]) & (xs[None] < rects[:, 2:3])  # [B, W]
    in_y = (ys[None] >= rects[:, 1:2]) & (ys[None] < rects[:, 3:4])  # [B, H]
    return (in_y[:, :, None] & in_x[:, None, :])[..., None]


def _clip_to_rects(boxes, rects) -> tf.Tensor:
    """Boxes ``[B, K, 4]`` clipped to the per-image rectangles ``[B, 4]`` (all xyxy)."""
    low = tf.tile(rects[:, None, :2], [1, 1, 2])
    high = tf.tile(rects[:, None, 2:], [1, 1, 2])
    return tf.minimum(tf.maximum(boxes, low), high)


def _visible(original, clipped, labels, min_visible) -> tf.Tensor:
    """bool ``[B, K]``: real (label >= 0), clipped box >= 1 px, >= min_visible of its area."""
    enough = box_area(clipped) >= min_visible * box_area(original)
    return (labels >= 0) & _big_enough(clipped) & enough


def _check_batch(data, layer: str):
    """Raises when a padded batch carries per-box entries the batch ops cannot follow."""
    extra = set(data["bounding_boxes"]) - {"boxes", "labels"}
    if extra:
        raise ValueError(f"{layer} mixes boxes between images and only carries 'boxes' and "
                         f"'labels'; drop {sorted(extra)} from bounding_boxes first")


@keras.saving.register_keras_serializable(package=_PACKAGE)
class DetectionCutMix(_DetectionLayer):
    """CutMix for detection on a padded batch (see module docstring).

    With probability ``p`` per image, a rectangle of the same aspect as the image, covering a
    fraction of it uniform in ``area_range`` (before clipping at the border), centred uniformly,
    is pasted from a partner image of the batch at the same place (partners from
    :func:`cyclic_partners`; a batch of one is left unchanged). Pasted boxes are clipped to the
    rectangle and kept if that keeps at least ``min_visible`` of their area. The base image's
    boxes keep their full extent (so a box stays the object's box even if partly covered) and
    are dropped when less than ``min_visible`` of their area stays uncovered.
    """

    batched = True

    def __init__(self, p: float = 0.5, area_range=(0.0, 1.0), min_visible: float = 0.3,
                 seed=None, **kwargs):
        super().__init__(p=p, seed=seed, **kwargs)
        self.area_range = _check_range("area_range", *area_range, 0.0, 1.0)
        self.min_visible = _check_range("min_visible", 0.0, min_visible, 0.0, 1.0)[1]

    def rectangles(self, seed, batch, height, width) -> tf.Tensor:
        """float32 ``[B, 4]`` integer-valued xyxy rectangles inside the image."""
        s_area, s_x, s_y = _seeds(seed, 3)
        side = tf.sqrt(_uniform(s_area, *self.area_range, [batch]))
        h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
        cx, cy = _uniform(s_x, 0.0, 1.0, [batch]) * w, _uniform(s_y, 0.0, 1.0, [batch]) * h
        half_w, half_h = side * w / 2.0, side * h / 2.0
        rect = tf.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], -1)
        return tf.round(clip_boxes(rect, h, w))

    def augment(self, data, seed):
        _check_batch(data, type(self).__name__)
        images = data["images"]
        boxes, labels = data["bounding_boxes"]["boxes"], data["bounding_boxes"]["labels"]
        batch, height, width = tf.shape(images)[0], *_size(images)
        s_partner, s_rect, s_apply = _seeds(seed, 3)
        partner = cyclic_partners(s_partner, batch, 1)[0]
        apply = _coin(s_apply, self.p, [batch]) & (partner != tf.range(batch))
        rects = tf.where(apply[:, None], self.rectangles(s_rect, batch, height, width), 0.0)
        inside = _pixel_inside(rects, height, width)
        out_images = tf.where(inside, tf.gather(images, partner), images)
        covered = box_area(_clip_to_rects(boxes, rects))
        base_keep = (labels >= 0) & (box_area(boxes) - covered
                                     >= self.min_visible * box_area(boxes))
        p_boxes, p_labels = tf.gather(boxes, partner), tf.gather(labels, partner)
        pasted = _clip_to_rects(p_boxes, rects)
        paste_keep = _visible(p_boxes, pasted, p_labels, self.min_visible)
        out_boxes, out_labels = pack_boxes(
            tf.concat([boxes, pasted], 1), tf.concat([labels, p_labels], 1),
            tf.concat([base_keep, paste_keep], 1), tf.shape(boxes)[1])
        return {**data, "images": out_images,
                "bounding_boxes": {"boxes": out_boxes, "labels": out_labels}}

    def get_config(self):
        return {**super().get_config(), "area_range": list(self.area_range),
                "min_visible": self.min_visible}


def _quadrant_layout(xc, yc, height, width):
    """Per quadrant (top-left, top-right, bottom-left, bottom-right): its float ``[B, 4]``
    rectangle and the source corner (fractions of W and H) that touches the centre."""
    zeros = tf.zeros_like(xc)
    w, h = zeros + tf.cast(width, tf.float32), zeros + tf.cast(height, tf.float32)
    rects = [tf.stack(r, -1) for r in ([zeros, zeros, xc, yc], [xc, zeros, w, yc],
                                       [zeros, yc, xc, h], [xc, yc, w, h])]
    corners = [(1.0, 1.0), (0.0, 1.0), (1.0, 0.0), (0.0, 0.0)]
    return list(zip(rects, corners, strict=True))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class DetectionMosaic(_DetectionLayer):
    """YOLO-style mosaic on a padded batch (see module docstring); output size = input size.

    For each image ``i`` (with probability ``p``, else unchanged) a centre is drawn uniformly in
    the middle half of the image (integer pixels); the four quadrants around it are filled from
    ``i`` (top-left) and its three :func:`cyclic_partners` (so the output batch has the input's
    size; with fewer than 4 images some repeat). Each source is scaled, keeping its aspect
    ratio, by the smallest factor that covers its quadrant, and placed with its inner corner at
    the centre; the part outside the quadrant is cut. Boxes are mapped, clipped to the quadrant
    and kept when at least ``min_visible`` of their area and 1 px per side remain.
    """

    batched = True

    def __init__(self, p: float = 1.0, min_visible: float = 0.3, seed=None, **kwargs):
        super().__init__(p=p, seed=seed, **kwargs)
        self.min_visible = _check_range("min_visible", 0.0, min_visible, 0.0, 1.0)[1]

    def augment(self, data, seed):
        _check_batch(data, type(self).__name__)
        images = data["images"]
        boxes, labels = data["bounding_boxes"]["boxes"], data["bounding_boxes"]["labels"]
        batch, height, width = tf.shape(images)[0], *_size(images)
        s_partner, s_x, s_y, s_apply = _seeds(seed, 4)
        sources = [tf.range(batch), *cyclic_partners(s_partner, batch, 3)]
        xc = tf.floor(_uniform(s_x, 0.25, 0.75, [batch]) * tf.cast(width, tf.float32))
        yc = tf.floor(_uniform(s_y, 0.25, 0.75, [batch]) * tf.cast(height, tf.float32))
        new_images, new_boxes, new_labels = mosaic(images, boxes, labels, xc, yc, sources,
                                                   self.min_visible)
        apply = _coin(s_apply, self.p, [batch])
        return {**data,
                "images": tf.where(apply[:, None, None, None], new_images, images),
                "bounding_boxes": {"boxes": tf.where(apply[:, None, None], new_boxes, boxes),
                                   "labels": tf.where(apply[:, None], new_labels, labels)}}

    def get_config(self):
        return {**super().get_config(), "min_visible": self.min_visible}


def mosaic(images, boxes, labels, xc, yc, sources, min_visible: float = 0.3):
    """Deterministic mosaic of a padded batch (see :class:`DetectionMosaic`).

    Args:
        images: float32 ``[B, H, W, C]``; boxes f32 ``[B, M, 4]`` xyxy; labels i32 ``[B, M]``.
        xc, yc: float32 ``[B]`` integer-valued mosaic centres (0 < xc < W, 0 < yc < H).
        sources: four int32 ``[B]`` image indices for the top-left, top-right, bottom-left and
            bottom-right quadrants.

    Returns:
        ``(images [B, H, W, C], boxes [B, M, 4], labels [B, M])`` in the padded format.
    """
    height, width = _size(images)
    h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    out_images = images
    all_boxes, all_labels, all_keep = [], [], []
    for source, (rect, (fx, fy)) in zip(sources, _quadrant_layout(xc, yc, height, width),
                                        strict=True):
        scale = tf.maximum((rect[:, 2] - rect[:, 0]) / w, (rect[:, 3] - rect[:, 1]) / h)
        tx, ty = xc - fx * scale * w, yc - fy * scale * h
        warped = _scale_shift_images(tf.gather(images, source), scale, tx, ty)
        out_images = tf.where(_pixel_inside(rect, height, width), warped, out_images)
        src_boxes = (tf.gather(boxes, source) * scale[:, None, None]
                     + tf.stack([tx, ty, tx, ty], -1)[:, None, :])
        clipped = _clip_to_rects(src_boxes, rect)
        src_labels = tf.gather(labels, source)
        all_boxes.append(clipped)
        all_labels.append(src_labels)
        all_keep.append(_visible(src_boxes, clipped, src_labels, min_visible))
    new_boxes, new_labels = pack_boxes(tf.concat(all_boxes, 1), tf.concat(all_labels, 1),
                                       tf.concat(all_keep, 1), tf.shape(boxes)[1])
    return out_images, new_boxes, new_labels


def _scale_shift_images(images, scale, tx, ty) -> tf.Tensor:
    """float32 ``[B, H, W, C]`` mapped by ``x' = scale * x + t`` (pixel-edge coordinates, per
    image ``[B]`` parameters) into same-size canvases; edges extend by the nearest pixel."""
    inv = 1.0 / scale
    zeros = tf.zeros_like(scale)
    transforms = tf.stack([inv, zeros, (0.5 - tx) * inv - 0.5,
                           zeros, inv, (0.5 - ty) * inv - 0.5, zeros, zeros], -1)
    return keras.ops.image.affine_transform(images, transforms, interpolation="bilinear",
                                            fill_mode="nearest")


# --------------------------------------------------------------------------- composites


@keras.saving.register_keras_serializable(package=_PACKAGE)
class DetectionAugment(_DetectionLayer):
    """Per-example detection augmentation from recipe-friendly arguments, applied in the order
    photometric -> expand -> IoU crop -> scale jitter -> flip -> rotate -> hue/saturation ->
    blur, each step with its own seed split from one. A step is left out when its argument
    disables it (0, False or None).

    Args:
        flip: probability of a horizontal flip.
        rotate_degrees: rotation range +-degrees (applied with probability ``rotate_p``).
        hue: hue shift range +-degrees; ``saturation``: saturation factor range 1 +- value
            (both applied together with probability ``color_p``).
        blur_sigma: (low, high) Gaussian sigma in pixels, or None (probability ``blur_p``).
        photometric: SSD photometric distortions (:class:`SSDPhotometricDistort`).
        expand: False, True (max ratio 4) or the max ratio of :class:`RandomExpand` (p 0.5).
        iou_crop: SSD :class:`RandomIoUCrop`.
        scale_jitter: None or the (low, high) factor range of :class:`RandomScaleJitter`.
        fill: canvas colour for expand and rotate (RGB 0..255).
        min_visible: share of a rotated box that must stay inside the image.
    """

    def __init__(self, flip: float = 0.5, rotate_degrees: float = 15.0, rotate_p: float = 0.5,
                 hue: float = 20.0, saturation: float = 0.2, color_p: float = 0.5,
                 blur_sigma=(0.0, 1.0), blur_p: float = 0.5, photometric: bool = False,
                 expand=False, iou_crop: bool = False, scale_jitter=None,
                 fill=IMAGENET_MEAN_RGB, min_visible: float = 0.3, seed=None, **kwargs):
        kwargs.pop("p", None)
        super().__init__(p=1.0, seed=seed, **kwargs)
        self.flip, self.rotate_degrees, self.rotate_p = float(flip), float(rotate_degrees), \
            float(rotate_p)
        self.hue, self.saturation, self.color_p = float(hue), float(saturation), float(color_p)
        self.blur_sigma = None if blur_sigma is None else [float(v) for v in blur_sigma]
        self.blur_p = float(blur_p)
        self.photometric, self.iou_crop = bool(photometric), bool(iou_crop)
        self.expand = 4.0 if expand is True else (float(expand) if expand else False)
        self.scale_jitter = None if scale_jitter is None else [float(v) for v in scale_jitter]
        self.fill, self.min_visible = _fill(fill), float(min_visible)
        self.stages = self._build_stages()

    def _build_stages(self) -> list[_DetectionLayer]:
        """The enabled steps, in order."""
        stages = []
        if self.photometric:
            stages.append(SSDPhotometricDistort(name="photometric"))
        if self.expand:
            stages.append(RandomExpand(self.expand, fill=self.fill, name="expand"))
        if self.iou_crop:
            stages.append(RandomIoUCrop(name="iou_crop"))
        if self.scale_jitter:
            stages.append(RandomScaleJitter(self.scale_jitter, name="scale_jitter"))
        if self.flip > 0:
            stages.append(RandomHorizontalFlip(self.flip, name="flip"))
        if self.rotate_degrees > 0 and self.rotate_p > 0:
            stages.append(RandomRotate(self.rotate_degrees, self.rotate_p, self.fill,
                                       self.min_visible, name="rotate"))
        if (self.hue > 0 or self.saturation > 0) and self.color_p > 0:
            stages.append(RandomHueSaturation(self.hue, self.saturation, self.color_p,
                                              name="hue_saturation"))
        if self.blur_sigma is not None and self.blur_sigma[1] > 0 and self.blur_p > 0:
            stages.append(RandomGaussianBlur(self.blur_sigma, self.blur_p, name="blur"))
        return stages

    def augment(self, data, seed):
        if not self.stages:
            return data
        for stage, stage_seed in zip(self.stages, _seeds(seed, len(self.stages)), strict=True):
            data = stage.augment(data, stage_seed)
        return data

    def get_config(self):
        config = super().get_config()
        config.pop("p")
        return {**config, "flip": self.flip, "rotate_degrees": self.rotate_degrees,
                "rotate_p": self.rotate_p, "hue": self.hue, "saturation": self.saturation,
                "color_p": self.color_p, "blur_sigma": self.blur_sigma, "blur_p": self.blur_p,
                "photometric": self.photometric, "expand": self.expand,
                "iou_crop": self.iou_crop, "scale_jitter": self.scale_jitter,
                "fill": list(self.fill), "min_visible": self.min_visible}


def ssd_augment(max_ratio: float = 4.0, fill=IMAGENET_MEAN_RGB, seed=None) -> DetectionAugment:
    """The SSD paper's recipe: photometric distortions -> expand (zoom out up to ``max_ratio``,
    p 0.5) -> IoU crop -> horizontal flip (p 0.5). Resize to the model's input size afterwards."""
    return DetectionAugment(flip=0.5, rotate_degrees=0.0, hue=0.0, saturation=0.0,
                            blur_sigma=None, photometric=True, expand=max_ratio, iou_crop=True,
                            fill=fill, seed=seed, name="ssd_augment")


def default_detection_augment(seed=None) -> DetectionAugment:
    """The guide's D3 recipe: h-flip p 0.5, rotate +-15 degrees, hue +-20 degrees / saturation
    +-20 %, Gaussian blur sigma 0-1 (rotate, colour and blur each with p 0.5)."""
    return DetectionAugment(seed=seed, name="detection_augment")


def orientation_detection_augment(seed=None) -> DetectionAugment:
    """D3 without the horizontal flip, for objects a mirror changes (traffic signs with
    arrows, text, left / right parts): rotate +-15 degrees, hue / saturation, blur."""
    return DetectionAugment(flip=0.0, seed=seed, name="detection_augment_orientation")


# The augmentation presets by name (``data.detection_augment``, ``kft data browse --augment``).
DETECTION_AUGMENTS = {"none": None, "ssd": ssd_augment, "default": default_detection_augment,
                      "orientation": orientation_detection_augment}


# Batch presets by name (``data.batch_augment``): applied to each padded training batch.
BATCH_AUGMENTS = {
    "none": None,
    "cutmix": lambda seed=None: DetectionCutMix(p=0.5, seed=seed, name="cutmix"),
    "mosaic": lambda seed=None: DetectionMosaic(p=0.5, seed=seed, name="mosaic"),
}


def batch_augment_by_name(name: str, seed=None) -> _DetectionLayer | None:
    """The batch preset ``name`` of ``BATCH_AUGMENTS`` (``"none"``: None)."""
    if name not in BATCH_AUGMENTS:
        raise ValueError(f"batch_augment={name!r} must be one of {list(BATCH_AUGMENTS)}")
    build = BATCH_AUGMENTS[name]
    return None if build is None else build(seed=seed)


def detection_augment_by_name(name: str, seed=None) -> DetectionAugment | None:
    """The preset ``name`` of ``DETECTION_AUGMENTS`` (``""`` = ``"none"``: no augmentation)."""
    if (name or "none") not in DETECTION_AUGMENTS:
        raise ValueError(f"detection_augment={name!r} must be one of "
                         f"{list(DETECTION_AUGMENTS)}")
    build = DETECTION_AUGMENTS[name or "none"]
    return None if build is None else build(seed=seed)
