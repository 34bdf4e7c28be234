"""RoIAlign (He et al. 2017) on channels-last feature maps, one level or an FPN pyramid.

:func:`roi_align` pools one feature level, :func:`multilevel_roi_align` pools each box from
the FPN level that :func:`map_levels` assigns it (Lin et al. 2017, torchvision's
``LevelMapper``). Both reproduce ``torchvision.ops.roi_align`` / ``MultiScaleRoIAlign``
(checked against a committed fixture, ``tools/make_roi_align_fixture.py``).

Semantics, for a box ``[x1, y1, x2, y2]`` (``xyxy`` pixels of the network input image) and a
level with ``spatial_scale`` (1 / stride), ``H x W`` cells and ``offset = 0.5 if aligned else 0``:

* The box in feature coordinates starts at ``x1 * spatial_scale - offset`` and is
  ``(x2 - x1) * spatial_scale`` wide (same for y). Without ``aligned`` its width and height
  are raised to at least 1 cell (torchvision's legacy rule); with ``aligned`` they are not,
  and a feature cell ``i`` is centred at coordinate ``i``, i.e. pixel ``(i + 0.5) * stride``.
* The box is split into ``out_h x out_w`` equal bins; each bin averages a regular
  ``sampling_ratio x sampling_ratio`` grid of bilinear samples placed at the centres of the
  sub-cells (sample ``k`` of bin ``p`` at ``start + (p * g + k + 0.5) * size / (out * g)``).
* Edge rules of one sample ``(y, x)``: it is 0 if ``y < -1``, ``y > H``, ``x < -1`` or
  ``x > W``; otherwise coordinates in ``[-1, 0]`` are clamped to 0 and those in
  ``[H - 1, H]`` (``[W - 1, W]``) to the last row (column), then bilinear interpolation
  between the four neighbouring cells.
* ``sampling_ratio <= 0`` (torchvision's adaptive ``ceil(size / out)`` samples per bin) is
  data dependent and cannot have a static shape, so it is rejected with a ``ValueError``.

Implementations (``implementation=``), with the same results up to float rounding:

* ``"gather"`` (default, any Keras backend, TFLite builtins only): sample coordinates and
  bilinear weights are computed with ``keras.ops``; each bin's ``4 g^2`` taps (the low / high
  neighbour rows and columns of its ``g x g`` samples, g = sampling_ratio) are fetched with one
  ``take`` (``GATHER``) from the feature map flattened to ``[B * H * W, C]`` rows, and the bin
  is their weighted sum, one batched ``matmul`` (``BATCH_MATMUL``) of the weights
  ``[bins, 1, 4 g^2]`` (bilinear weight / g^2) with the taps ``[bins, 4 g^2, C]``. The
  gathered taps take ``4 * B * R * out_h * out_w * g^2 * C`` floats (16x the output for g=2).
* ``"crop_and_resize"`` (TensorFlow only; TFLite has no builtin for it): the same samples
  from ``tf.image.crop_and_resize``. Mapping: the map is edge-padded by one cell on every side
  (so bilinear sampling in ``[-1, 0]`` and ``[H - 1, H]`` reproduces the clamping), a box's
  first and last sample centres ``c`` become normalised coordinates ``(c + 1) / (H + 1)`` of
  the padded ``(H + 2)``-row map, ``crop_size = (out_h * g, out_w * g)`` and
  ``extrapolation_value = 0`` (crop_and_resize's "outside ``[0, H + 1]``" is exactly the
  ``y < -1 or y > H`` rule). Without the padding the two coincide only for samples inside
  ``[0, H - 1] x [0, W - 1]``.

Features may be float16 / bfloat16 (mixed precision): pooling runs in float32 and the result
is cast back to the features' dtype. Padded boxes (all zeros) give finite values (those of a
tiny box at the origin, like torchvision), never NaN.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import keras
from keras import ops

from kft.ops.boxes import box_area

IMPLEMENTATIONS = ("gather", "crop_and_resize")


def roi_align(features, boxes, *, output_size, spatial_scale: float, sampling_ratio: int = 2,
              aligned: bool = False, implementation: str = "gather"):
    """RoIAlign of one feature level (``torchvision.ops.roi_align`` semantics, module docstring).

    Args:
        features: float ``[B, H, W, C]`` channels-last feature map.
        boxes: float32 ``[B, R, 4]`` ``xyxy`` boxes in input-image pixels; box ``r`` of image
            ``b`` is pooled from ``features[b]``.
        output_size: int or ``(out_h, out_w)`` bins per box.
        spatial_scale: feature cells per input pixel (1 / stride).
        sampling_ratio: ``g``, samples per bin along each axis (``g * g`` per bin); must be
            >= 1 (adaptive sampling is data dependent, so rejected).
        aligned: shift boxes by half a cell (pixel-exact alignment) and drop the
            minimum-size-1 rule.
        implementation: ``"gather"`` (builtin TFLite ops, any backend) or
            ``"crop_and_resize"`` (TensorFlow fast path).

    Returns:
        ``[B, R, out_h, out_w, C]`` in the dtype of ``features``.
    """
    out_h, out_w = _output_size(output_size)
    boxes = ops.convert_to_tensor(boxes, "float32")
    _check(features, boxes, sampling_ratio, implementation)
    height, width = features.shape[1], features.shape[2]
    if height is None or width is None:
        height, width = ops.shape(features)[1], ops.shape(features)[2]
    scale = ops.convert_to_tensor(float(spatial_scale), "float32")
    params = [ops.cast(v, "float32") * ops.ones_like(boxes[..., 0])
              for v in (height, width, scale)]
    if implementation == "crop_and_resize":
        return _crop_and_resize_pool([features], boxes, ops.zeros_like(params[0], "int32"),
                                     *params, out_h, out_w, sampling_ratio, aligned,
                                     features.dtype)
    table = ops.reshape(features, (-1, features.shape[-1]))
    cells = ops.cast(height, "int32") * ops.cast(width, "int32")
    base = ops.arange(ops.shape(boxes)[0], dtype="int32")[:, None] * cells
    base = base + ops.zeros_like(boxes[..., 0], "int32")
    return _gather_pool(table, boxes, base, *params, out_h, out_w, sampling_ratio, aligned,
                        features.dtype)


def map_levels(boxes, *, strides: Sequence[int] = (4, 8, 16, 32), canonical_scale: float = 224,
               canonical_level: int = 4, eps: float = 1e-6):
    """FPN level of each box (torchvision's ``LevelMapper``), as an index into ``strides``.

    ``k = floor(canonical_level + log2(sqrt(area) / canonical_scale) + eps)`` (eps outside the
    log, as torchvision computes it), clamped to the levels ``log2(strides[0]) ..
    log2(strides[-1])``; returned as ``k - log2(strides[0])``. A 224 x 224 box maps to P4.

    Args:
        boxes: float32 ``[..., 4]`` ``xyxy`` input-image pixels. Degenerate boxes (area 0,
            e.g. zero padding) map to the finest level; inverted boxes count as area 0
            (torchvision would multiply two negative sides).
        strides: strides of consecutive pyramid levels, powers of two (P2..P5: 4, 8, 16, 32).

    Returns:
        int32 ``[...]`` level indices in ``[0, len(strides))``.
    """
    k_min, k_max = _level_range(strides)
    boxes = ops.convert_to_tensor(boxes, "float32")
    size = ops.sqrt(box_area(boxes))
    # log2(0) = -inf for empty boxes; the clip (in float, before the cast) sends them to k_min.
    level = ops.floor(canonical_level + ops.log2(size / float(canonical_scale)) + eps)
    level = ops.clip(level, float(k_min), float(k_max))
    return ops.cast(level, "int32") - k_min


def multilevel_roi_align(features, boxes, *, strides: Sequence[int], output_size=7,
                         sampling_ratio: int = 2, canonical_scale: float = 224,
                         canonical_level: int = 4, eps: float = 1e-6, aligned: bool = False,
                         implementation: str = "gather"):
    """Pools every box from its FPN level (torchvision's ``MultiScaleRoIAlign``).

    Each box is pooled once, from the level :func:`map_levels` gives it: the levels are
    flattened into one ``[B * sum(H_l * W_l), C]`` table and every box's sample indices use
    its own level's offset, size and scale (gathered from small per-level constants), so the
    cost is that of one :func:`roi_align` over all ``R`` boxes, independent of the number of
    levels (no pooling of every box at every level). ``implementation="crop_and_resize"``
    instead stacks the levels, zero-padded to the largest, as ``L * B`` images of one crop
    (TensorFlow only).

    Args:
        features: list of float ``[B, H_l, W_l, C]`` levels, finest first, or a dict of them
            (its values in order), one per entry of ``strides``; every level has ``C``
            channels.
        boxes: float32 ``[B, R, 4]`` ``xyxy`` input-image pixels.
        strides: the levels' strides, consecutive powers of two (FPN P2..P5: 4, 8, 16, 32);
            level ``l`` is pooled with ``spatial_scale = 1 / strides[l]``. torchvision infers
            the same powers of two from the feature and image sizes.
        output_size, sampling_ratio, aligned, implementation: as in :func:`roi_align`
            (torchvision's Faster R-CNN: 7, 2, False).
        canonical_scale, canonical_level, eps: :func:`map_levels`.

    Returns:
        ``[B, R, out_h, out_w, C]`` in the dtype of the features.
    """
    levels = list(features.values()) if isinstance(features, Mapping) else list(features)
    if len(levels) != len(strides):
        raise ValueError(f"got {len(levels)} feature levels for {len(strides)} strides")
    _level_range(strides)
    out_h, out_w = _output_size(output_size)
    boxes = ops.convert_to_tensor(boxes, "float32")
    for level in levels:
        _check(level, boxes, sampling_ratio, implementation)
        if level.shape[-1] != levels[0].shape[-1]:
            raise ValueError(f"levels differ in channels: {[f.shape for f in levels]}")
    if len(levels) == 1:
        return roi_align(levels[0], boxes, output_size=(out_h, out_w),
                         spatial_scale=1.0 / strides[0], sampling_ratio=sampling_ratio,
                         aligned=aligned, implementation=implementation)
    index = map_levels(boxes, strides=strides, canonical_scale=canonical_scale,
                       canonical_level=canonical_level, eps=eps)               # [B, R]
    sizes = [(_dim(f, 1), _dim(f, 2)) for f in levels]

    def per_box(values, dtype):           # one constant per level -> [B, R] by box level
        return ops.take(ops.stack([ops.cast(v, dtype) for v in values]), index)

    params = (per_box([h for h, _ in sizes], "float32"), per_box([w for _, w in sizes], "float32"),
              per_box([1.0 / s for s in strides], "float32"))
    if implementation == "crop_and_resize":
        return _crop_and_resize_pool(levels, boxes, index, *params, out_h, out_w,
                                     sampling_ratio, aligned, levels[0].dtype)
    cells = [ops.cast(h, "int32") * ops.cast(w, "int32") for h, w in sizes]
    starts = [0]
    for n in cells[:-1]:
        starts.append(starts[-1] + n)
    channels = levels[0].shape[-1]
    table = ops.concatenate([ops.reshape(f, (ops.shape(f)[0], -1, channels)) for f in levels],
                            axis=1)                                           # [B, N, C]
    base = (ops.arange(ops.shape(boxes)[0], dtype="int32")[:, None] * ops.shape(table)[1]
            + per_box(starts, "int32"))
    return _gather_pool(ops.reshape(table, (-1, channels)), boxes, base, *params, out_h, out_w,
                        sampling_ratio, aligned, levels[0].dtype)


def _output_size(output_size):
    if isinstance(output_size, int):
        output_size = (output_size, output_size)
    out_h, out_w = (int(v) for v in output_size)
    if out_h < 1 or out_w < 1:
        raise ValueError(f"output_size must be positive, got {output_size}")
    return out_h, out_w


def _check(features, boxes, sampling_ratio, implementation):
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got "
                         f"{implementation!r}")
    if implementation == "crop_and_resize" and keras.backend.backend() != "tensorflow":
        raise ValueError("implementation='crop_and_resize' needs the TensorFlow backend")
    if int(sampling_ratio) != sampling_ratio or sampling_ratio < 1:
        raise ValueError(f"sampling_ratio must be an int >= 1, got {sampling_ratio}: adaptive "
                         "sampling (<= 0) takes ceil(box size / output size) samples per bin, "
                         "a data-dependent shape")
    if len(features.shape) != 4 or features.shape[-1] is None:
        raise ValueError(f"features must be [B, H, W, C] with static C, got {features.shape}")
    if len(boxes.shape) != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be [B, R, 4], got {boxes.shape}")


def _level_range(strides):
    logs = [math.log2(s) for s in strides]
    k_min = round(logs[0])
    if not strides or any(v != round(v) for v in logs) or \
            [round(v) for v in logs] != list(range(k_min, k_min + len(logs))):
        raise ValueError(f"strides must be consecutive powers of two, got {tuple(strides)}")
    return k_min, k_min + len(logs) - 1


def _dim(x, axis):
    return x.shape[axis] if x.shape[axis] is not None else ops.shape(x)[axis]


def _box_frame(boxes, scale, out_h, out_w, aligned):
    """Start and bin size along y and x in feature coordinates, ``[B, R]`` each."""
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (boxes[..., i] * scale for i in range(4))
    width, height = x2 - x1, y2 - y1
    if not aligned:
        width, height = ops.maximum(width, 1.0), ops.maximum(height, 1.0)
    return y1 - offset, height / out_h, x1 - offset, width / out_w


def _samples(start, bin_size, bins, grid):
    """Sample centres ``[B, R, bins * grid]`` along one axis."""
    steps = ops.cast(ops.arange(bins * grid), "float32") + 0.5
    return start[..., None] + steps * (bin_size[..., None] / grid)


def _neighbours(coords, extent):
    """Bilinear neighbours of samples ``[B, R, S]`` on an axis of ``extent`` ``[B, R]`` cells.

    Returns int32 low / high cell indices and float32 weights (zero for samples beyond
    ``[-1, extent]``), each ``[B, R, S]``.
    """
    extent = extent[..., None]
    inside = ops.logical_and(coords >= -1.0, coords <= extent)
    coords = ops.maximum(coords, 0.0)
    low = ops.floor(coords)
    last = low >= extent - 1.0
    low = ops.where(last, extent - 1.0, low)
    high = ops.where(last, low, low + 1.0)
    frac = ops.where(last, 0.0, coords - low)
    keep = ops.cast(inside, "float32")
    return (ops.cast(low, "int32"), ops.cast(high, "int32"), (1.0 - frac) * keep, frac * keep)


def _gather_pool(table, boxes, base, heights, widths, scales, out_h, out_w, grid, aligned,
                 dtype):
    """RoIAlign from a flat ``[rows, C]`` table; box ``(b, r)`` owns the ``heights x widths``
    rows starting at ``base[b, r]`` (all per-box arguments ``[B, R]``)."""
    table = ops.cast(table, "float32")
    channels = table.shape[-1]
    y0, bin_h, x0, bin_w = _box_frame(boxes, scales, out_h, out_w, aligned)
    y_lo, y_hi, wy_lo, wy_hi = _neighbours(_samples(y0, bin_h, out_h, grid), heights)
    x_lo, x_hi, wx_lo, wx_hi = _neighbours(_samples(x0, bin_w, out_w, grid), widths)
    # Per bin, its 2g rows (low / high neighbour of each of g samples) and 2g columns give
    # 4 g^2 taps; the bin is one weighted sum of them (bilinear weight / g^2), a matmul.
    taps = 4 * grid * grid
    rows, wy = (_per_bin(v, out_h, grid) for v in ((y_lo, y_hi), (wy_lo, wy_hi)))
    cols, wx = (_per_bin(v, out_w, grid) for v in ((x_lo, x_hi), (wx_lo, wx_hi)))
    row_start = base[..., None, None] + rows * ops.cast(widths, "int32")[..., None, None]
    # [B * R, out_h, out_w, 2g, 2g] by broadcasting rank-5 views: the TFLite calibrator of
    # an int8 export rejects the 6-D STRIDED_SLICE that [:, :, :, None, :, None] gives
    by_row, by_col = (-1, out_h, 1, 2 * grid, 1), (-1, 1, out_w, 1, 2 * grid)
    index = ops.reshape(row_start, by_row) + ops.reshape(cols, by_col)
    weight = ops.reshape(wy, by_row) * ops.reshape(wx, by_col) / float(grid * grid)
    values = ops.reshape(ops.take(table, ops.reshape(index, (-1,)), axis=0),
                         (-1, taps, channels))                       # [B * R * bins, taps, C]
    pooled = ops.matmul(ops.reshape(weight, (-1, 1, taps)), values)
    shape = ops.shape(boxes)
    return ops.cast(ops.reshape(pooled, (shape[0], shape[1], out_h, out_w, channels)), dtype)


def _per_bin(pair, bins, grid):
    """(low, high) ``[B, R, bins * g]`` each -> ``[B, R, bins, 2 g]`` (sample-major)."""
    stacked = ops.stack(pair, axis=-1)                               # [B, R, bins * g, 2]
    shape = ops.shape(stacked)
    return ops.reshape(stacked, (shape[0], shape[1], bins, 2 * grid))


def _bin_mean(samples, out_h, out_w, grid, channels):
    """``[B * R * out_h * g * out_w * g, C]`` samples -> ``[B * R * out_h * out_w, C]`` bin
    means, with reshapes of rank <= 3 (TFLite-friendly)."""
    rows = ops.reshape(samples, (-1, grid, out_w * grid * channels))
    rows = ops.mean(rows, axis=1)                                    # [B * R * out_h, ...]
    cells = ops.reshape(rows, (-1, grid, channels))
    return ops.mean(cells, axis=1)


def _crop_and_resize_pool(levels, boxes, index, heights, widths, scales, out_h, out_w, grid,
                          aligned, dtype):
    """TensorFlow fast path: the same samples from ``tf.image.crop_and_resize`` (module
    docstring). ``index`` ``[B, R]`` picks each box's level; per-box arguments ``[B, R]``."""
    import tensorflow as tf

    channels = levels[0].shape[-1]
    padded = [tf.pad(tf.cast(f, tf.float32), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="SYMMETRIC")
              for f in levels]
    if len(padded) > 1:           # L * B images, each zero-padded to the largest level
        top = [tf.reduce_max(tf.stack([tf.shape(p)[i] for p in padded])) for i in (1, 2)]
        padded = [tf.pad(p, ((0, 0), (0, top[0] - tf.shape(p)[1]),
                             (0, top[1] - tf.shape(p)[2]), (0, 0))) for p in padded]
    images = tf.concat(padded, axis=0)                              # image l * B + b
    batch = tf.shape(boxes)[0]
    image_ids = index * batch + tf.range(batch)[:, None]
    y0, bin_h, x0, bin_w = _box_frame(boxes, scales, out_h, out_w, aligned)
    ys = _samples(y0, bin_h, out_h, grid)                           # [B, R, Sh]
    xs = _samples(x0, bin_w, out_w, grid)
    last_row = tf.cast(tf.shape(images)[1] - 1, tf.float32)
    last_col = tf.cast(tf.shape(images)[2] - 1, tf.float32)
    normalised = tf.stack([(ys[..., 0] + 1.0) / last_row, (xs[..., 0] + 1.0) / last_col,
                           (ys[..., -1] + 1.0) / last_row, (xs[..., -1] + 1.0) / last_col],
                          axis=-1)
    crops = tf.image.crop_and_resize(images, tf.reshape(normalised, (-1, 4)),
                                     tf.reshape(image_ids, (-1,)), (out_h * grid, out_w * grid),
                                     extrapolation_value=0.0)       # [B * R, Sh, Sw, C]
    # Samples beyond a smaller level's own [-1, H] x [-1, W] would read its zero padding.
    inside_y = tf.cast((ys >= -1.0) & (ys <= heights[..., None]), tf.float32)
    inside_x = tf.cast((xs >= -1.0) & (xs <= widths[..., None]), tf.float32)
    mask = tf.reshape(inside_y[..., :, None] * inside_x[..., None, :], (-1, 1))
    pooled = _bin_mean(tf.reshape(crops, (-1, channels)) * mask, out_h, out_w, grid, channels)
    shape = tf.shape(boxes)
    return tf.cast(tf.reshape(pooled, (shape[0], shape[1], out_h, out_w, channels)), dtype)
