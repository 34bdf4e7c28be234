"""Classification augmentation as Keras layers, seedable per call: the guide's D4 recipe and
the presets by kind of image (:func:`classification_augment`, ``data.augment``).

The guide's albumentations recipe, one layer per transform, each choosing independently for every
image of the batch::

    RandomRotate90 p=0.5   k * 90 degrees, k uniform in {0, 1, 2, 3}
    RandomFlip     p=0.5   horizontal, vertical or both (uniform), as albumentations ``Flip``
    RandomTranspose p=0.5  swap height and width
    RandomGaussianNoise p=0.2   additive N(0, std), std uniform in [2.55, 12.75] (1-5 % of 255)
    RandomBlur     p=0.2   one of: motion blur (weight 0.2), 3x3 median (0.1), 3x3 box (0.1)

:class:`ClassificationAugment` chains them in that order. Inputs are float32 ``[B, H, W, C]``
(or ``[H, W, C]``) with values 0..255; outputs have the same shape, dtype float32, and noise is
clipped to 0..255.

Randomness: ``layer(images, seed=s)`` with ``s`` an int32/int64 ``[2]`` tensor uses stateless
ops only, so the result is a pure function of ``(images, s)`` (this is how
:func:`kft.data.pipeline.classification_batches` makes every epoch reproducible). Without a
seed, each call draws a fresh seed from the layer's ``keras.random.SeedGenerator``. Works
eagerly, inside ``tf.function`` and inside ``tf.data`` maps (TensorFlow backend). With
``training=False`` (e.g. inside a model during ``predict``) the layers return their input.

Rotation by 90 degrees and transposition need square images (``H == W``): the pipeline resizes
to a square ``image_size``; a non-square batch raises a ``ValueError`` (static shapes) or an
``InvalidArgumentError`` (dynamic shapes) saying so.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

_PACKAGE = "kft"


def _seeds(seed: tf.Tensor, n: int) -> list[tf.Tensor]:
    """``n`` independent ``[2]`` seeds derived from one."""
    return tf.unstack(tf.random.experimental.stateless_split(seed, n))


def _coin(seed, batch, p: float) -> tf.Tensor:
    """bool [batch]: True with probability ``p``."""
    return tf.random.stateless_uniform([batch], seed) < p


def _check_square(images: tf.Tensor, layer: str) -> tf.Tensor:
    """``images`` unchanged; raises when they are not square (see module docstring)."""
    h, w = images.shape[1], images.shape[2]
    if h is not None and w is not None:
        if h != w:
            raise ValueError(f"{layer} needs square images (H == W) but got {h}x{w}: resize to "
                             "a square image_size first, or set this transform's p to 0")
        return images
    shape = tf.shape(images)
    check = tf.debugging.assert_equal(
        shape[1], shape[2], message=f"{layer} needs square images (H == W)")
    with tf.control_dependencies([check]):
        return tf.identity(images)


def _apply_to_subset(images, mask, fn, *params):
    """Applies ``fn(images[mask], *[p[mask] for p in params])`` to the masked images only
    (nothing is computed when no image is selected)."""
    idx = tf.where(mask)[:, 0]

    def apply():
        sub = fn(tf.gather(images, idx), *[tf.gather(p, idx) for p in params])
        return tf.tensor_scatter_nd_update(images, idx[:, None], sub)

    return tf.cond(tf.size(idx) > 0, apply, lambda: images)


def apply_d4(images: tf.Tensor, t: tf.Tensor, v: tf.Tensor, h: tf.Tensor) -> tf.Tensor:
    """Per image, transpose (if ``t``), then flip rows (``v``), then flip columns (``h``); all
    bool [B]. One gather pass over the batch. ``t`` needs square images."""
    shape = tf.shape(images)
    batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]
    rows = tf.range(height)[None, :, None]
    cols = tf.range(width)[None, None, :]
    a = tf.where(v[:, None, None], height - 1 - rows, rows)  # [B, H, 1]
    b = tf.where(h[:, None, None], width - 1 - cols, cols)  # [B, 1, W]
    a, b = tf.broadcast_to(a, [batch, height, width]), tf.broadcast_to(b, [batch, height, width])
    t = t[:, None, None]
    src = tf.where(t, b, a) * width + tf.where(t, a, b)
    flat = tf.reshape(images, [batch, height * width, channels])
    out = tf.gather(flat, tf.reshape(src, [batch, height * width]), batch_dims=1)
    return tf.reshape(out, shape)


def compose_d4(first, second):
    """The (t, v, h) of applying element ``first`` then ``second`` (each a (t, v, h) tuple of
    bool [B], meaning transpose, then flip rows, then flip columns)."""
    t1, v1, h1 = first
    t2, v2, h2 = second
    # Conjugating by a transpose swaps row and column flips.
    v1, h1 = tf.where(t2, h1, v1), tf.where(t2, v1, h1)
    return tf.math.logical_xor(t1, t2), tf.math.logical_xor(v1, v2), tf.math.logical_xor(h1, h2)


def _reflect_pad(x: tf.Tensor, r: int, axis: int) -> tf.Tensor:
    """Pads ``r`` pixels on both sides of ``axis`` mirroring without repeating the edge
    (OpenCV's BORDER_REFLECT_101); unlike ``tf.pad`` it accepts an empty batch."""
    if r == 0:
        return x
    n = tf.shape(x)[axis]
    before = tf.reverse(tf.gather(x, tf.range(1, r + 1), axis=axis), [axis])
    after = tf.reverse(tf.gather(x, tf.range(n - r - 1, n - 1), axis=axis), [axis])
    return tf.concat([before, x, after], axis=axis)


def _shifted(x: tf.Tensor, size: int) -> list[list[tf.Tensor]]:
    """``size x size`` shifted views of ``x`` [N,H,W,C] with reflect padding;
    ``out[i][j][n, y, x] = x[n, y + i - r, x + j - r]`` (needs H, W > r = size // 2)."""
    r = size // 2
    padded = _reflect_pad(_reflect_pad(x, r, 1), r, 2)
    h, w = tf.shape(x)[1], tf.shape(x)[2]
    return [[padded[:, i:i + h, j:j + w, :] for j in range(size)] for i in range(size)]


def box_blur3(x: tf.Tensor) -> tf.Tensor:
    """3x3 mean filter of float [N,H,W,C] (H, W >= 2)."""
    views = _shifted(x, 3)
    return tf.add_n([v for row in views for v in row]) / 9.0


# Median of 9 values with 19 compare-exchanges (a classic sorting network).
_MEDIAN9 = ((1, 2), (4, 5), (7, 8), (0, 1), (3, 4), (6, 7), (1, 2), (4, 5), (7, 8), (0, 3),
            (5, 8), (4, 7), (3, 6), (1, 4), (2, 5), (4, 7), (4, 2), (6, 4), (4, 2))


def median_blur3(x: tf.Tensor) -> tf.Tensor:
    """3x3 median filter of float [N,H,W,C] (H, W >= 2)."""
    p = [v for row in _shifted(x, 3) for v in row]
    for i, j in _MEDIAN9:
        p[i], p[j] = tf.minimum(p[i], p[j]), tf.maximum(p[i], p[j])
    return p[4]


def motion_kernels(seed, n, max_size: int = 7) -> tf.Tensor:
    """``n`` random line kernels float32 [n, max_size, max_size], each summing to 1.

    Length uniform over the odd sizes 3..max_size, direction uniform in [0, pi).
    """
    half = max_size // 2
    s_len, s_angle = _seeds(seed, 2)
    lengths = 2 * tf.random.stateless_uniform([n], s_len, 1, half + 1, dtype=tf.int32) + 1
    angle = tf.random.stateless_uniform([n], s_angle, 0.0, math.pi)
    t = tf.range(-half, half + 1, dtype=tf.float32)  # positions along the line
    rows = tf.cast(tf.round(half + t[None, :] * tf.sin(angle)[:, None]), tf.int32)
    cols = tf.cast(tf.round(half + t[None, :] * tf.cos(angle)[:, None]), tf.int32)
    on = tf.cast(tf.abs(t)[None, :] <= tf.cast(lengths[:, None] // 2, tf.float32), tf.float32)
    dots = (tf.one_hot(rows, max_size)[:, :, :, None] * tf.one_hot(cols, max_size)[:, :, None, :])
    kernels = tf.reduce_sum(dots * on[:, :, None, None], axis=1)
    return kernels / tf.reduce_sum(kernels, axis=[1, 2], keepdims=True)


def motion_blur(x: tf.Tensor, kernels: tf.Tensor) -> tf.Tensor:
    """Per-image filter: float [N,H,W,C] (N >= 1) with kernels [N,K,K] (K odd, H, W > K // 2).

    The batch is folded into channels so one depthwise convolution filters every image with
    its own kernel."""
    size = kernels.shape[-1]
    r = size // 2
    shape = tf.shape(x)
    n, h, w, c = shape[0], shape[1], shape[2], shape[3]
    folded = tf.reshape(tf.transpose(x, [1, 2, 0, 3]), [1, h, w, n * c])
    folded = _reflect_pad(_reflect_pad(folded, r, 1), r, 2)
    depthwise = tf.repeat(tf.transpose(kernels, [1, 2, 0]), c, axis=2)[..., None]
    out = tf.nn.depthwise_conv2d(folded, depthwise, [1, 1, 1, 1], "VALID")
    return tf.transpose(tf.reshape(out, [h, w, n, c]), [2, 0, 1, 3])


class SeededAugmentation(keras.layers.Layer):
    """Base of kft's augmentation layers: probability ``p`` and seeding.

    A call may pass an int32/int64 ``[2]`` stateless seed (the result is then a pure function of
    the input and the seed, which makes resumed epochs identical); without one the layer draws
    from its own ``keras.random.SeedGenerator(seed)``. The layers run in float32 whatever the
    global dtype policy.
    """

    def __init__(self, p: float = 0.5, seed: int | None = None, **kwargs):
        kwargs.setdefault("dtype", "float32")  # never autocast to float16 under mixed precision
        super().__init__(**kwargs)
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"{type(self).__name__}: p={p} must be a probability in [0, 1]")
        self.p = float(p)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def build(self, input_shape=None):
        """Nothing to build: the only state is the seed generator."""

    def next_seed(self, seed=None) -> tf.Tensor:
        """int64 ``[2]``: ``seed`` when given, else the next draw of the layer's generator."""
        return tf.cast(self.seed_generator.next() if seed is None else seed, tf.int64)

    def get_config(self):
        return {**super().get_config(), "p": self.p, "seed": self.seed}


class _RandomImageLayer(SeededAugmentation):
    """Base: probability ``p``, optional ``seed``; ``call(images, seed=None, training=True)``."""

    def call(self, images, seed=None, training=True):
        if not training or self.p == 0.0:
            return images
        images = tf.cast(images, tf.float32)
        single = images.shape.rank == 3
        if single:
            images = images[None]
        if images.shape.rank != 4:
            raise ValueError(f"{type(self).__name__} expects images [B,H,W,C] or [H,W,C], got "
                             f"shape {images.shape}")
        out = self.augment(images, self.next_seed(seed))
        return out[0] if single else out

    def augment(self, images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        """float32 [B,H,W,C], int64 [2] seed -> float32 [B,H,W,C]."""
        raise TypeError(f"{type(self).__name__} must define augment()")

    def compute_output_shape(self, input_shape):
        return input_shape


class _Composite(_RandomImageLayer):
    """Base of the layers made of stages (``p`` is always 1: each stage has its own)."""

    def __init__(self, seed: int | None = None, **kwargs):
        kwargs.pop("p", None)
        super().__init__(p=1.0, seed=seed, **kwargs)

    @staticmethod
    def apply_stages(images, stages, seeds):
        """``images`` through every stage with ``p > 0``, each with its own seed."""
        for stage, stage_seed in zip(stages, seeds, strict=False):
            if stage.p > 0.0:
                images = stage.augment(images, stage_seed)
        return images

    def stage_config(self) -> dict:
        raise TypeError(f"{type(self).__name__} must define stage_config()")

    def get_config(self):
        config = super().get_config()
        config.pop("p")
        return {**config, **self.stage_config()}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class RandomRotate90(_RandomImageLayer):
    """With probability ``p`` per image, rotates by k * 90 degrees, k uniform in {0,1,2,3}
    (counter-clockwise, as ``tf.image.rot90``). Square images only."""

    needs_square = True

    def d4(self, batch, seed):
        """(transpose, flip rows, flip columns) bool [batch] for this layer's choices."""
        s_apply, s_k = _seeds(seed, 2)
        k = tf.random.stateless_uniform([batch], s_k, 0, 4, dtype=tf.int32)
        k = tf.where(_coin(s_apply, batch, self.p), k, 0)
        # rot90(k) = flip columns^(k in 2,3) . flip rows^(k in 1,2) . transpose^(k odd)
        return k % 2 == 1, (k == 1) | (k == 2), k >= 2

    def augment(self, images, seed):
        images = _check_square(images, type(self).__name__)
        return apply_d4(images, *self.d4(tf.shape(images)[0], seed))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class RandomFlip(_RandomImageLayer):
    """With probability ``p`` per image, flips horizontally, vertically or both (uniform), as
    albumentations ``Flip``."""

    needs_square = False

    def d4(self, batch, seed):
        """(transpose, flip rows, flip columns) bool [batch] for this layer's choices."""
        s_apply, s_kind = _seeds(seed, 2)
        kind = tf.random.stateless_uniform([batch], s_kind, 0, 3, dtype=tf.int32)
        kind = tf.where(_coin(s_apply, batch, self.p), kind, -1)  # 0 h, 1 v, 2 both
        return tf.zeros([batch], tf.bool), (kind == 1) | (kind == 2), (kind == 0) | (kind == 2)

    def augment(self, images, seed):
        return apply_d4(images, *self.d4(tf.shape(images)[0], seed))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class RandomTranspose(_RandomImageLayer):
    """With probability ``p`` per image, swaps rows and columns. Square images only."""

    needs_square = True

    def d4(self, batch, seed):
        """(transpose, flip rows, flip columns) bool [batch] for this layer's choices."""
        no = tf.zeros([batch], tf.bool)
        return _coin(seed, batch, self.p), no, no

    def augment(self, images, seed):
        images = _check_square(images, type(self).__name__)
        return apply_d4(images, *self.d4(tf.shape(images)[0], seed))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class RandomGaussianNoise(_RandomImageLayer):
    """With probability ``p`` per image, adds N(0, std) noise, std uniform in ``std_range``
    (0..255 scale); the result is clipped to 0..255."""

    def __init__(self, p: float = 0.2, std_range=(2.55, 12.75), seed=None, **kwargs):
        super().__init__(p=p, seed=seed, **kwargs)
        lo, hi = (float(v) for v in std_range)
        if not 0.0 <= lo <= hi:
            raise ValueError(f"RandomGaussianNoise: std_range={std_range} must be (low, high) "
                             "with 0 <= low <= high")
        self.std_range = (lo, hi)

    def augment(self, images, seed):
        s_apply, s_std, s_noise = _seeds(seed, 3)
        batch = tf.shape(images)[0]
        std = tf.random.stateless_uniform([batch], s_std, *self.std_range)

        def add_noise(x, x_std):
            noise = tf.random.stateless_normal(tf.shape(x), s_noise) * x_std[:, None, None, None]
            return tf.clip_by_value(x + noise, 0.0, 255.0)

        return _apply_to_subset(images, _coin(s_apply, batch, self.p), add_noise, std)

    def get_config(self):
        return {**super().get_config(), "std_range": list(self.std_range)}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class RandomBlur(_RandomImageLayer):
    """With probability ``p`` per image, one blur chosen with weights ``motion``, ``median``,
    ``box`` (normalised, as albumentations ``OneOf``): a random line kernel up to
    ``motion_max_size``, a 3x3 median, or a 3x3 mean. Images need H, W > motion_max_size // 2.
    """

    def __init__(self, p: float = 0.2, motion: float = 0.2, median: float = 0.1,
                 box: float = 0.1, motion_max_size: int = 7, seed=None, **kwargs):
        super().__init__(p=p, seed=seed, **kwargs)
        weights = [float(motion), float(median), float(box)]
        if min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"RandomBlur: motion/median/box weights {weights} must be >= 0 "
                             "with a positive sum")
        if motion_max_size < 3 or motion_max_size % 2 == 0:
            raise ValueError(f"RandomBlur: motion_max_size={motion_max_size} must be odd and "
                             ">= 3")
        self.motion, self.median, self.box = weights
        self.motion_max_size = int(motion_max_size)

    def augment(self, images, seed):
        s_apply, s_kind, s_kernel = _seeds(seed, 3)
        batch = tf.shape(images)[0]
        total = self.motion + self.median + self.box
        edges = tf.constant([self.motion / total, (self.motion + self.median) / total])
        u = tf.random.stateless_uniform([batch], s_kind)
        kind = tf.reduce_sum(tf.cast(u[:, None] >= edges[None, :], tf.int32), axis=1)
        kind = tf.where(_coin(s_apply, batch, self.p), kind, -1)  # 0 motion, 1 median, 2 box
        kernels = motion_kernels(s_kernel, batch, self.motion_max_size)
        x = _apply_to_subset(images, kind == 0, motion_blur, kernels)
        x = _apply_to_subset(x, kind == 1, median_blur3)
        return _apply_to_subset(x, kind == 2, box_blur3)

    def get_config(self):
        return {**super().get_config(), "motion": self.motion, "median": self.median,
                "box": self.box, "motion_max_size": self.motion_max_size}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ClassificationAugment(_Composite):
    """The D4 recipe: RandomRotate90 -> RandomFlip -> RandomTranspose -> RandomGaussianNoise ->
    RandomBlur, with the given probabilities (0 disables a transform).

    ``call(images float32 [B,H,W,3] 0..255, seed=None | int [2] tensor)`` -> same shape.
    """

    def __init__(self, rotate90: float = 0.5, flip: float = 0.5, transpose: float = 0.5,
                 noise: float = 0.2, blur: float = 0.2, seed: int | None = None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.rotate90, self.flip, self.transpose = float(rotate90), float(flip), float(transpose)
        self.noise, self.blur = float(noise), float(blur)
        self.stages = [
            RandomRotate90(self.rotate90, name="rotate90"),
            RandomFlip(self.flip, name="flip"),
            RandomTranspose(self.transpose, name="transpose"),
            RandomGaussianNoise(self.noise, name="noise"),
            RandomBlur(self.blur, name="blur"),
        ]

    def augment(self, images, seed):
        """The D4 stages are fused into one gather (same result as applying them in turn)."""
        seeds = _seeds(seed, len(self.stages))
        d4_stages = [(s, sd) for s, sd in zip(self.stages[:3], seeds, strict=False) if s.p > 0]
        if d4_stages:
            if any(s.needs_square for s, _ in d4_stages):
                images = _check_square(images, type(self).__name__)
            batch = tf.shape(images)[0]
            element = d4_stages[0][0].d4(batch, d4_stages[0][1])
            for stage, stage_seed in d4_stages[1:]:
                element = compose_d4(element, stage.d4(batch, stage_seed))
            images = apply_d4(images, *element)
        return self.apply_stages(images, self.stages[3:], seeds[3:])

    def stage_config(self):
        return {"rotate90": self.rotate90, "flip": self.flip, "transpose": self.transpose,
                "noise": self.noise, "blur": self.blur}


# ---------------------------------------------------------------------------------------------
# Presets by kind of image (data.augment)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class RandomHorizontalFlip(_RandomImageLayer):
    """With probability ``p`` per image, mirrors left-right (the one flip natural photos
    tolerate: a mirrored photo is still a plausible photo, an upside-down one rarely)."""

    needs_square = False

    def augment(self, images, seed):
        batch = tf.shape(images)[0]
        no = tf.zeros([batch], tf.bool)
        return apply_d4(images, no, no, _coin(seed, batch, self.p))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class RandomResizedCrop(_RandomImageLayer):
    """With probability ``p`` per image, crops a random box of ``scale`` (a fraction of the
    image area) and aspect ratio ``ratio`` (width / height, log-uniform) and resizes it back to
    the image size (bilinear), as torchvision's ``RandomResizedCrop`` in its crop-and-resize
    form. A box that would not fit is shrunk to fit; unselected images are returned as they
    are."""

    def __init__(self, p: float = 1.0, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3), seed=None,
                 **kwargs):
        super().__init__(p=p, seed=seed, **kwargs)
        lo, hi = (float(v) for v in scale)
        r_lo, r_hi = (float(v) for v in ratio)
        if not 0.0 < lo <= hi <= 1.0 or not 0.0 < r_lo <= r_hi:
            raise ValueError(f"RandomResizedCrop: scale={scale} must be 0 < low <= high <= 1 "
                             f"and ratio={ratio} 0 < low <= high")
        self.scale, self.ratio = (lo, hi), (r_lo, r_hi)

    def augment(self, images, seed):
        s_apply, s_area, s_ratio, s_y, s_x = _seeds(seed, 5)
        shape = tf.shape(images)
        batch = shape[0]
        h, w = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
        area = tf.random.stateless_uniform([batch], s_area, *self.scale)
        log_r = tf.random.stateless_uniform([batch], s_ratio, math.log(self.ratio[0]),
                                            math.log(self.ratio[1]))
        ratio = tf.exp(log_r) * h / w  # width/height in pixels -> in normalised units
        # normalised crop height/width with ch * cw = area and cw / ch = ratio
        ch = tf.minimum(tf.sqrt(area / ratio), 1.0)
        cw = tf.minimum(tf.sqrt(area * ratio), 1.0)
        y0 = tf.random.stateless_uniform([batch], s_y) * (1.0 - ch)
        x0 = tf.random.stateless_uniform([batch], s_x) * (1.0 - cw)
        boxes = tf.stack([y0, x0, y0 + ch, x0 + cw], axis=1)
        full = tf.constant([[0.0, 0.0, 1.0, 1.0]])
        boxes = tf.where(_coin(s_apply, batch, self.p)[:, None], boxes, full)
        out = tf.image.crop_and_resize(images, boxes, tf.range(batch), shape[1:3])
        return tf.clip_by_value(out, 0.0, 255.0)

    def get_config(self):
        return {**super().get_config(), "scale": list(self.scale), "ratio": list(self.ratio)}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class RandomColor(_RandomImageLayer):
    """With probability ``p`` per image, jitters brightness (+/- ``brightness`` x 255),
    contrast (x [1 - c, 1 + c] about the image mean) and saturation (x [1 - s, 1 + s] about
    the grey value), as torchvision's ``ColorJitter`` (fixed order); clipped to 0..255."""

    def __init__(self, p: float = 0.8, brightness: float = 0.2, contrast: float = 0.2,
                 saturation: float = 0.2, seed=None, **kwargs):
        super().__init__(p=p, seed=seed, **kwargs)
        values = [float(brightness), float(contrast), float(saturation)]
        if min(values) < 0 or max(values[1:]) >= 1:
            raise ValueError(f"RandomColor: brightness/contrast/saturation {values} must be "
                             ">= 0, contrast and saturation < 1")
        self.brightness, self.contrast, self.saturation = values

    def augment(self, images, seed):
        s_apply, s_b, s_c, s_s = _seeds(seed, 4)
        batch = tf.shape(images)[0]

        def factor(s, amount):
            return tf.random.stateless_uniform([batch, 1, 1, 1], s, 1.0 - amount, 1.0 + amount)

        on = tf.cast(_coin(s_apply, batch, self.p), tf.float32)[:, None, None, None]
        delta = tf.random.stateless_uniform([batch, 1, 1, 1], s_b, -self.brightness,
                                            self.brightness) * 255.0
        x = images + delta * on
        mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
        x = mean + (x - mean) * (1.0 + (factor(s_c, self.contrast) - 1.0) * on)
        if images.shape[-1] == 3:
            grey = tf.reduce_sum(x * tf.constant([0.299, 0.587, 0.114]), axis=-1, keepdims=True)
            x = grey + (x - grey) * (1.0 + (factor(s_s, self.saturation) - 1.0) * on)
        return tf.clip_by_value(x, 0.0, 255.0)

    def get_config(self):
        return {**super().get_config(), "brightness": self.brightness,
                "contrast": self.contrast, "saturation": self.saturation}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class AugmentChain(_Composite):
    """Applies ``stages`` (kft augmentation layers) in order, each with its own seed derived
    from the call's seed."""

    def __init__(self, stages, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.stages = [s if isinstance(s, keras.layers.Layer)
                       else keras.saving.deserialize_keras_object(s) for s in stages]

    def augment(self, images, seed):
        return self.apply_stages(images, self.stages, _seeds(seed, max(len(self.stages), 1)))

    def stage_config(self):
        return {"stages": [keras.saving.serialize_keras_object(s) for s in self.stages]}


# data.augment: which transforms suit which images (README "Augmentation presets").
AUGMENT_PRESETS = ("natural", "orientation", "guide", "none")
LEGACY_AUGMENT = {True: "guide", False: "none", "true": "guide", "false": "none"}


def classification_augment(preset, seed: int | None = None):
    """The augmentation layer of a preset (``None`` for ``"none"``).

    * ``natural`` (photos): left-right flip, random resized crop (35-100 % of the area),
      brightness / contrast jitter 0.2 (fastai's lighting); no saturation or hue jitter, which
      would blur classes told apart by their colours (README "Few-shot fine-tuning").
    * ``orientation`` (digits, documents, medical scans: where up, down, left and right
      matter): a mild crop (80-100 % of the area, near-square) and brightness/contrast
      jitter; no flip, rotation or transposition.
    * ``guide``: the guide's full D4 recipe (:class:`ClassificationAugment`).
    * ``none``.

    ``True``/``False`` (older recipes' ``data.augment``) mean ``guide``/``none``.
    """
    name = LEGACY_AUGMENT.get(preset, preset) if isinstance(preset, (bool, str)) else preset
    if name == "none":
        return None
    if name == "guide":
        return ClassificationAugment(seed=seed)
    if name == "natural":
        return AugmentChain([RandomHorizontalFlip(0.5, name="hflip"),
                             RandomResizedCrop(1.0, scale=(0.35, 1.0), name="crop"),
                             RandomColor(0.8, 0.2, 0.2, 0.0, name="colour")], seed=seed)
    if name == "orientation":
        return AugmentChain([RandomResizedCrop(1.0, scale=(0.8, 1.0), ratio=(0.9, 1.1),
                                               name="crop"),
                             RandomColor(0.8, 0.2, 0.2, 0.0, name="colour")], seed=seed)
    raise ValueError(f"augment={preset!r} must be one of {', '.join(AUGMENT_PRESETS)} "
                     "(or true/false)")
