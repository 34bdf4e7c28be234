"""Anchors: SSD default boxes, fitting them to a data set, and R-CNN / FPN grid anchors.

Anchors depend only on the configuration (image size, feature-map sizes, sizes, ratios), so
they are computed once in NumPy and returned as constant ``np.float32 [A, 4]`` arrays, which
every Keras backend and ``tf.data`` accept as they are.

Conventions (shared/DESIGN.md): ``xyxy`` absolute pixels of the network input image.
``image_size`` is an int (square) or ``(height, width)``; a feature shape is an int (square) or
``(height, width)``. An aspect ratio ``r`` is **width / height** everywhere in kft: a box of
size ``s`` and ratio ``r`` is ``s * sqrt(r)`` wide and ``s / sqrt(r)`` high (area ``s**2``).
torchvision's ``AnchorGenerator`` and detectron2 use height / width, so their ``(0.5, 1, 2)``
lists are ours reversed.

Ordering (what a conv head reshaped from ``[B, H, W, n * 4]`` to ``[B, H * W * n, 4]`` and
concatenated over levels produces): level by level, then row-major over the feature map
(``y`` then ``x``), then the ``n`` boxes of one location.

* SSD (:func:`ssd_default_boxes`), per location of level ``k``: ratio 1 size ``s_k``, ratio 1
  size ``sqrt(s_k * s_{k+1})``, then for each ``r`` in ``aspect_ratios[k]``: ``r`` and ``1/r``
  (torchvision's ``DefaultBoxGenerator`` order). Sizes are fractions of the shorter image
  side; the box of cell ``(i, j)`` is centred at ``((j + 0.5) * step_x, (i + 0.5) * step_y)``.
* Grid anchors (:func:`grid_anchors`), per location: for each size, for each ratio.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

# SSD300 / SSD512 on VGG16 (Liu et al. 2016). Sizes are torchvision's ssd300_vgg16 scales (its
# COCO setting) and the original Caffe SSD512 ones (min / max sizes divided by 512); steps are
# the Caffe / torchvision strides. Pass ``steps=`` to reproduce their centres exactly; without
# it the step is image size / feature size (7.89 instead of 8 for the 38x38 map).
SSD300_FEATURE_SHAPES = (38, 19, 10, 5, 3, 1)
SSD300_SIZES = (0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05)
# The paper's Pascal VOC setting for SSD300 (Caffe min_sizes 30, 60, 111, 162, 213, 264 and
# max size 315 px, i.e. s_min = 0.2 with a first level of 0.1); SSD512_SIZES already are the
# Caffe VOC ones (35.84 ... 537.6 px / 512).
SSD300_VOC_SIZES = (0.1, 0.2, 0.37, 0.54, 0.71, 0.88, 1.05)
SSD300_ASPECT_RATIOS = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))
SSD300_STEPS = (8, 16, 32, 64, 100, 300)
SSD512_FEATURE_SHAPES = (64, 32, 16, 8, 4, 2, 1)
SSD512_SIZES = (0.07, 0.15, 0.3, 0.45, 0.6, 0.75, 0.9, 1.05)
SSD512_ASPECT_RATIOS = ((2,), (2, 3), (2, 3), (2, 3), (2, 3), (2,), (2,))
SSD512_STEPS = (8, 16, 32, 64, 128, 256, 512)
# SSDLite 320 (torchvision ssdlite320_mobilenet_v3_large: min 0.2, max 0.95, extra size 1.0).
SSDLITE320_FEATURE_SHAPES = (20, 10, 5, 3, 2, 1)
SSDLITE320_SIZES = (0.2, 0.35, 0.5, 0.65, 0.8, 0.95, 1.0)
SSDLITE_ASPECT_RATIOS = ((2, 3),) * 6

# Multiplicative steps of the size search in fit_default_box_sizes, coarse then fine.
_FIT_SIZE_STEPS = (1.25, 1.1)
_FIT_MAX_SWEEPS = 3
_IOU_CHUNK = 512
RPN_POSITIVE_IOU = 0.7  # torchvision's RPN fg_iou_thresh, reported by fit_rcnn_anchor_sizes


def num_boxes_per_location(aspect_ratios: Sequence[Sequence[float]]) -> list[int]:
    """Default boxes per feature-map location of each SSD level: ``2 + 2 * len(ratios)``."""
    return [2 + 2 * len(ratios) for ratios in aspect_ratios]


def linear_sizes(num_levels: int, min_ratio: float = 0.2, max_ratio: float = 0.9) -> tuple:
    """The SSD paper's scale rule: ``num_levels + 1`` sizes (fractions of the shorter side).

    ``s_k`` runs linearly from ``min_ratio`` to ``max_ratio`` over the levels; the extra
    ``s_{K+1}`` (used only for the last level's second square box) continues the line, as in
    the Caffe SSD300 sizes (torchvision's SSDLite uses 1.0 instead: pass ``sizes=`` for it).
    """
    if num_levels < 1 or not 0 < min_ratio <= max_ratio:
        raise ValueError(f"need num_levels >= 1 and 0 < min_ratio <= max_ratio, got "
                         f"{num_levels}, {min_ratio}, {max_ratio}")
    if num_levels == 1:
        return (float(min_ratio), float(max_ratio))
    step = (max_ratio - min_ratio) / (num_levels - 1)
    return tuple(float(min_ratio + step * k) for k in range(num_levels + 1))


def ssd_default_boxes(image_size, feature_shapes, *, sizes: Sequence[float] | None = None,
                      min_ratio: float = 0.2, max_ratio: float = 0.9,
                      aspect_ratios: Sequence[Sequence[float]] = SSD300_ASPECT_RATIOS,
                      steps: Sequence | None = None, clip: bool = True) -> np.ndarray:
    """SSD default boxes of all levels.

    Args:
        image_size: network input size, int or ``(height, width)`` pixels.
        feature_shapes: ``K`` feature-map sizes, ints or ``(height, width)``, finest first.
        sizes: ``K + 1`` sizes as fractions of ``min(height, width)``; ``None`` uses
            :func:`linear_sizes` with ``min_ratio`` / ``max_ratio``.
        min_ratio, max_ratio: the scale rule's ends when ``sizes`` is ``None``.
        aspect_ratios: ``K`` tuples of width / height ratios ``r``; each adds ``r`` and ``1/r``.
        steps: optional ``K`` strides in pixels (int or ``(step_y, step_x)``); default
            ``image size / feature size`` per axis.
        clip: clip the boxes to the image.

    Returns:
        ``np.float32 [A, 4]`` ``xyxy`` pixels, ``A = sum(h_k * w_k * n_k)`` with
        ``n_k = num_boxes_per_location(aspect_ratios)[k]``, in the module's order.
    """
    height, width = _pair(image_size)
    shapes = [_pair(s) for s in feature_shapes]
    num_levels = len(shapes)
    sizes = linear_sizes(num_levels, min_ratio, max_ratio) if sizes is None else tuple(sizes)
    if len(sizes) != num_levels + 1 or len(aspect_ratios) != num_levels:
        raise ValueError(f"{num_levels} feature maps need {num_levels + 1} sizes and "
                         f"{num_levels} aspect-ratio tuples, got {len(sizes)} and "
                         f"{len(aspect_ratios)}")
    if steps is not None and len(steps) != num_levels:
        raise ValueError(f"need {num_levels} steps, got {len(steps)}")
    side = min(height, width)
    levels = []
    for k, (fh, fw) in enumerate(shapes):
        wh = np.asarray(_ssd_level_shapes(sizes[k], sizes[k + 1], aspect_ratios[k])) * side
        step = (height / fh, width / fw) if steps is None else _pair(steps[k])
        levels.append(_grid(fh, fw, step, 0.5, wh))
    boxes = np.concatenate(levels, axis=0)
    if clip:
        boxes = np.clip(boxes, 0.0, [width, height, width, height])
    return boxes.astype(np.float32)


def grid_anchors(image_size, strides: Sequence, sizes: Sequence,
                 aspect_ratios: Sequence = (0.5, 1.0, 2.0), *, offset: float = 0.5
                 ) -> np.ndarray:
    """R-CNN / RPN anchors on feature maps of the given strides (FPN: one size per level).

    The feature map of stride ``t`` is ``ceil(height / t) x ceil(width / t)`` (what
    ``padding="same"`` stride-2 convolutions give); the anchors of cell ``(i, j)`` are centred at
    ``((j + offset) * t_x, (i + offset) * t_y)`` (torchvision and detectron2 use ``offset=0``).
    Nothing is clipped or rounded.

    Args:
        image_size: int or ``(height, width)`` pixels.
        strides: ``L`` strides in pixels, int or ``(stride_y, stride_x)``.
        sizes: ``L`` entries, each a size in pixels (``sqrt`` of the anchor area) or a tuple
            of sizes. FPN: ``(32, 64, 128, 256, 512)`` for strides ``(4, 8, ..., 64)``. Scales
            relative to the stride (the guide's ``[2, 4, 8]``): :func:`sizes_from_scales`.
        aspect_ratios: width / height ratios shared by all levels, or ``L`` tuples of them.
        offset: centre offset in units of the stride.

    Returns:
        ``np.float32 [A, 4]`` ``xyxy`` pixels: level, row-major location, then size, then
        ratio; :func:`num_anchors_per_location` gives the per-location counts.
    """
    height, width = _pair(image_size)
    if len(sizes) != len(strides):
        raise ValueError(f"need one sizes entry per stride, got {len(sizes)} for "
                         f"{len(strides)} strides")
    ratios = _per_level_ratios(aspect_ratios, len(strides))
    levels = []
    for stride, level_sizes, level_ratios in zip(strides, sizes, ratios, strict=True):
        sy, sx = _pair(stride)
        wh = np.asarray([(s * math.sqrt(r), s / math.sqrt(r))
                         for s in _as_tuple(level_sizes) for r in level_ratios], np.float64)
        levels.append(_grid(math.ceil(height / sy), math.ceil(width / sx), (sy, sx),
                            offset, wh))
    return np.concatenate(levels, axis=0).astype(np.float32)


def rcnn_anchors(image_size, feature_shapes: Sequence, sizes: Sequence,
                 aspect_ratios: Sequence = (2.0, 1.0, 0.5)) -> np.ndarray:
    """Faster / Mask R-CNN anchors exactly as torchvision's ``AnchorGenerator`` makes them.

    What a converted torchvision RPN needs, channel for channel; it differs from
    :func:`grid_anchors` in three ways:

    * the stride of a level is ``image // feature`` per axis, integer division (an 800 px image
      with a 13-cell P6 gets stride 61, not 64);
    * the base anchors, centred at 0, are rounded to whole pixels (half to even, like
      ``torch.round``), then shifted by ``(j * stride_x, i * stride_y)`` (offset 0);
    * per location the anchors run ratio-major: for each ratio, for each size.

    Args:
        image_size: int or ``(height, width)`` of the network input.
        feature_shapes: ``L`` feature-map sizes, int or ``(height, width)``, finest first.
        sizes: ``L`` entries, each a size (``sqrt`` of the area) or a tuple of sizes.
        aspect_ratios: **width / height** ratios shared by all levels, or ``L`` tuples
            (torchvision's height / width ``(0.5, 1.0, 2.0)`` is ``(2.0, 1.0, 0.5)`` here, in
            the same order).

    Returns:
        ``np.float32 [A, 4]`` ``xyxy`` pixels: level, row-major location, ratio, size.
    """
    height, width = _pair(image_size)
    if len(sizes) != len(feature_shapes):
        raise ValueError(f"need one sizes entry per feature map, got {len(sizes)} for "
                         f"{len(feature_shapes)} maps")
    ratios = _per_level_ratios(aspect_ratios, len(feature_shapes))
    levels = []
    for shape, level_sizes, level_ratios in zip(feature_shapes, sizes, ratios, strict=True):
        fh, fw = (int(v) for v in _pair(shape))
        sy, sx = int(height) // fh, int(width) // fw
        # torchvision: h_ratio = sqrt(h / w), w_ratio = 1 / h_ratio, in float32
        r = np.asarray(level_ratios, np.float32)
        h_ratio = np.sqrt(np.float32(1.0) / r)
        w_ratio = np.float32(1.0) / h_ratio
        scales = np.asarray(_as_tuple(level_sizes), np.float32)
        ws = (w_ratio[:, None] * scales[None, :]).reshape(-1)
        hs = (h_ratio[:, None] * scales[None, :]).reshape(-1)
        base = np.round(np.stack([-ws, -hs, ws, hs], axis=1) / np.float32(2.0))
        ys = np.arange(fh, dtype=np.float32) * sy
        xs = np.arange(fw, dtype=np.float32) * sx
        cy, cx = np.meshgrid(ys, xs, indexing="ij")
        shifts = np.stack([cx, cy, cx, cy], axis=-1).reshape(-1, 1, 4)
        levels.append((shifts + base[None]).reshape(-1, 4))
    return np.concatenate(levels, axis=0).astype(np.float32)


def num_anchors_per_location(sizes: Sequence, aspect_ratios: Sequence = (0.5, 1.0, 2.0)
                             ) -> list[int]:
    """Anchors per location of each :func:`grid_anchors` level: ``len(sizes) * len(ratios)``."""
    ratios = _per_level_ratios(aspect_ratios, len(sizes))
    return [len(_as_tuple(s)) * len(r) for s, r in zip(sizes, ratios, strict=True)]


def sizes_from_scales(strides: Sequence[int], scales: Sequence[float]) -> tuple:
    """Per-level anchor sizes ``scale * stride`` (e.g. scales ``(2, 4, 8)`` on stride 16)."""
    return tuple(tuple(float(s) * _pair(t)[0] for s in scales) for t in strides)


def fit_default_box_sizes(boxes, image_size, num_levels: int,
                          aspect_ratio_choices: Sequence[float] = (1, 2, 3), *,
                          feature_shapes: Sequence | None = None,
                          iou_threshold: float = 0.5, max_ratios_per_level: int = 2,
                          baseline_sizes: Sequence[float] | None = None,
                          baseline_aspect_ratios: Sequence[Sequence[float]] | None = None,
                          min_ratio_gain: float = 0.005, max_boxes: int = 1000,
                          seed: int = 0) -> dict:
    """Fits SSD default-box sizes and aspect ratios to a data set's boxes.

    Coverage is the share of ground-truth boxes whose best default box has IoU at least
    ``iou_threshold`` (those get a regular SSD match rather than a forced one). The fit:

    1. starts from the best (by coverage) of the baseline and quantile initialisations (the
       ``K`` sizes at the ``(2k-1)/2K`` quantiles of ``sqrt(w*h)``, each raised to at least
       1 or 2 strides of its level so coarse maps get boxes they can localise);
    2. picks each level's ratios among the subsets of ``aspect_ratio_choices`` (ratio 1 is
       always there; ``r`` adds ``r`` and ``1/r``) with at most ``max_ratios_per_level``,
       adding a ratio only for ``min_ratio_gain`` more coverage;
    3. moves the sizes one at a time by factors 1.25 then 1.1 while coverage rises (ties:
       higher mean best IoU), keeping them non-decreasing, then repeats 2.

    Every step keeps the better configuration, so coverage after >= coverage before. Both are
    measured on the sample the fit saw (optimistic for the fitted one), with centres at
    ``image size / feature size`` steps (no ``steps=`` override).

    Args:
        boxes: ``f32[N, 2]`` box widths / heights in pixels of the network input (placed at
            seeded random positions inside the image to measure coverage), or ``f32[N, 4]``
            ``xyxy`` boxes in those pixels (used where they are). Boxes without area are
            dropped; at most ``max_boxes`` (a seeded sample) are used.
        image_size: network input, int or ``(height, width)``.
        num_levels: ``K``, the number of SSD feature maps.
        aspect_ratio_choices: candidate width / height ratios (1 is implied).
        feature_shapes: the model's ``K`` feature-map sizes; default strides 8, 16, 32, ...
            (``ceil(size / stride)``).
        iou_threshold: the matching threshold coverage is measured at.
        max_ratios_per_level: most ratios (besides 1) a level may get.
        min_ratio_gain: coverage a level's extra ratio must add to be kept (extra boxes cost
            compute); dropping ratios is free when coverage does not fall.
        baseline_sizes, baseline_aspect_ratios: the "before" configuration; default the
            :func:`ssd_default_boxes` defaults (the paper's rule with ratios
            ``SSD300_ASPECT_RATIOS`` for 6 levels, ``(2, 3)`` at every level otherwise).
        max_boxes: sample size for the fit.
        seed: seeds the sample and the random placement.

    Returns:
        ``{"sizes": (K + 1 floats), "aspect_ratios": (K tuples), "report": {...}}``; pass
        ``sizes=`` / ``aspect_ratios=`` to :func:`ssd_default_boxes`. The report holds
        ``coverage_before`` / ``coverage_after`` (0-1), ``mean_best_iou_before`` / ``_after``,
        ``num_boxes`` used, ``num_default_boxes_before`` / ``_after``,
        ``boxes_per_location_before`` / ``_after``, ``feature_shapes``, ``iou_threshold``.
    """
    height, width = _pair(image_size)
    if feature_shapes is None:
        feature_shapes = [(math.ceil(height / 2 ** (3 + k)), math.ceil(width / 2 ** (3 + k)))
                          for k in range(num_levels)]
    shapes = tuple(_pair(s) for s in feature_shapes)
    if len(shapes) != num_levels:
        raise ValueError(f"got {len(shapes)} feature shapes for {num_levels} levels")
    if max_ratios_per_level < 0:
        raise ValueError(f"max_ratios_per_level must be >= 0, got {max_ratios_per_level}")
    rng = np.random.default_rng(seed)
    gt = _fit_boxes(np.asarray(boxes, np.float64), height, width, max_boxes, rng)
    fit = _CoverageFit(gt, (height, width), shapes, iou_threshold)

    base_ratios = tuple(tuple(float(x) for x in r) for r in (
        baseline_aspect_ratios or (SSD300_ASPECT_RATIOS if num_levels == 6
                                   else ((2, 3),) * num_levels)))
    base_sizes = tuple(baseline_sizes or linear_sizes(num_levels))
    before = fit.score(base_sizes, base_ratios)

    side = min(height, width)
    size = np.sqrt((gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])) / side
    steps = [math.sqrt(height / fh * width / fw) / side for fh, fw in shapes]
    candidates = [(base_sizes, base_ratios)]
    candidates += [(_quantile_sizes(size, steps, f), base_ratios) for f in (1.0, 2.0)]
    sizes, ratios = max(candidates, key=lambda c: fit.score(*c))
    choices = sorted({max(float(r), 1.0 / float(r)) for r in aspect_ratio_choices} - {1.0})
    subsets = [s for n in range(max_ratios_per_level + 1)
               for s in itertools.combinations(choices, n)]
    ratios = fit.fit_ratios(sizes, ratios, subsets, min_ratio_gain)
    sizes = fit.fit_sizes(sizes, ratios)
    ratios = fit.fit_ratios(sizes, ratios, subsets, min_ratio_gain)
    after = fit.score(sizes, ratios)

    def count(r):
        return int(sum(fh * fw * n for (fh, fw), n in zip(shapes, num_boxes_per_location(r),
                                                          strict=True)))

    report = {
        "coverage_before": before[0], "coverage_after": after[0],
        "mean_best_iou_before": before[1], "mean_best_iou_after": after[1],
        "num_boxes": int(len(gt)), "iou_threshold": float(iou_threshold),
        "num_default_boxes_before": count(base_ratios),
        "num_default_boxes_after": count(ratios),
        "boxes_per_location_before": num_boxes_per_location(base_ratios),
        "boxes_per_location_after": num_boxes_per_location(ratios),
        "feature_shapes": [list(s) for s in shapes],
    }
    return {"sizes": tuple(float(s) for s in sizes), "aspect_ratios": ratios, "report": report}


def fit_rcnn_anchor_sizes(boxes, image_size, feature_shapes: Sequence,
                          aspect_ratios: Sequence[float] = (2.0, 1.0, 0.5), *,
                          iou_threshold: float = 0.5, baseline_sizes: Sequence | None = None,
                          max_boxes: int = 5000, seed: int = 0) -> dict:
    """Fits one anchor size per FPN level (Faster / Mask R-CNN, :func:`rcnn_anchors`) to a
    data set's boxes: M7's "anchor sizes from the data" (e.g. traffic signs, defects).

    Coverage is the share of ground-truth boxes whose best anchor has IoU at least
    ``iou_threshold`` (0.5; the report adds the share at 0.7, the RPN's positive threshold,
    below which a box trains only through its best, "low-quality" match). Maximising the
    share at 0.7 itself crowds the levels onto the mid-sized boxes: a 10 px box on a stride-4
    grid reaches 0.7 only when centred, so small boxes count for little however well their
    anchors fit. The best anchor of a box on a level is computed exactly, not by
    scanning the grid: the anchors of one size and ratio differ only by their centre, IoU
    falls as the centre moves away on either axis, so the best is the grid centre nearest to
    the box's centre (torchvision's centres ``j * stride``, rounded base anchors). The fit:

    1. starts from the better of ``baseline_sizes`` (default 32, 64, ... one per level,
       torchvision's) and the ``L`` quantiles ``(2k + 1) / 2L`` of the boxes'
       ``sqrt(w * h)``, each at least its level's stride;
    2. moves one size at a time by factors 1.25 then 1.1 while (coverage, mean best IoU)
       rises, sizes non-decreasing and at least their stride;
    3. rounds the sizes to whole pixels (the reported "after" is the rounded one).

    Args:
        boxes: ``f32[N, 4]`` ``xyxy`` boxes in network-input pixels (after the pipeline's
            resize), or ``f32[N, 2]`` widths / heights (placed at seeded random positions).
        image_size: the network input, int or ``(height, width)``.
        feature_shapes: the ``L`` pyramid sizes, finest first (ResNet-FPN on 800 x 800:
            200, 100, 50, 25, 13).
        aspect_ratios: width / height ratios at every level (torchvision's 0.5, 1, 2).
        max_boxes: sample size (seeded).

    Returns:
        ``{"anchor_sizes": ((s_1,), ..., (s_L,)), "report": {...}}``: pass ``anchor_sizes`` to
        :class:`~kft.models.faster_rcnn.FasterRCNN` (``model.frcnn.anchor_sizes``). The
        report holds ``coverage_before`` / ``_after``, ``coverage_at_0.7_before`` / ``_after``,
        ``mean_best_iou_before`` / ``_after``,
        ``baseline_sizes``, ``num_boxes``, ``iou_threshold``, ``box_size_percentiles``
        (5 / 50 / 95 of ``sqrt(w * h)``, pixels) and ``feature_shapes``.
    """
    height, width = _pair(image_size)
    shapes = [tuple(int(v) for v in _pair(s)) for s in feature_shapes]
    strides = [(int(height) // fh, int(width) // fw) for fh, fw in shapes]
    rng = np.random.default_rng(seed)
    gt = _fit_boxes(np.asarray(boxes, np.float64), height, width, max_boxes, rng)
    ratios = np.asarray([float(r) for r in aspect_ratios], np.float32)
    cache: dict = {}

    def level_best(k: int, size: float) -> np.ndarray:
        key = (k, round(float(size), 6))
        if key not in cache:
            (fh, fw), (sy, sx) = shapes[k], strides[k]
            h_ratio = np.sqrt(np.float32(1.0) / ratios)           # as rcnn_anchors
            half_w = np.round(h_ratio ** -1 * np.float32(size) / 2.0)
            half_h = np.round(h_ratio * np.float32(size) / 2.0)
            cx = (gt[:, 0] + gt[:, 2]) / 2
            cy = (gt[:, 1] + gt[:, 3]) / 2
            ax = np.clip(np.round(cx / sx), 0, fw - 1) * sx
            ay = np.clip(np.round(cy / sy), 0, fh - 1) * sy
            anchors = np.stack([ax[:, None] - half_w, ay[:, None] - half_h,
                                ax[:, None] + half_w, ay[:, None] + half_h], axis=-1)
            cache[key] = np.max([_paired_iou(gt, anchors[:, j]) for j in range(len(ratios))],
                                axis=0)
        return cache[key]

    def score(sizes) -> tuple[float, float]:
        best = np.max([level_best(k, s) for k, s in enumerate(sizes)], axis=0)
        return float(np.mean(best >= iou_threshold)), float(np.mean(best))

    floor = [float(min(s)) for s in strides]
    baseline = tuple(float(_as_tuple(b)[0]) for b in (
        baseline_sizes or [32 * 2 ** k for k in range(len(shapes))]))
    if len(baseline) != len(shapes):
        raise ValueError(f"baseline_sizes has {len(baseline)} entries for {len(shapes)} levels")
    side = np.sqrt((gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1]))
    quantiles = np.quantile(side, [(2 * k + 1) / (2 * len(shapes)) for k in range(len(shapes))])
    start = []
    for k, q in enumerate(quantiles):
        value = max(float(q), floor[k])
        start.append(max(value, start[-1] * 1.05) if start else value)
    # also torchvision's doubling ladder started at each size the boxes have (the guide's
    # M7 "smallest anchor 8 px" is one of them): the coordinate search below moves one size
    # at a time, so the start decides which levels the small boxes go to
    ladders = [tuple(max(float(s0) * 2 ** k, floor[k]) for k in range(len(shapes)))
               for s0 in np.quantile(side, [0.05, 0.15, 0.3, 0.5])]
    sizes = search_sizes(max([baseline, tuple(start), *ladders], key=score), score,
                         floor=floor)
    rounded = []
    for s in sizes:
        rounded.append(max(float(round(s)), rounded[-1] if rounded else 1.0))
    before, after = score(baseline), score(rounded)

    def share(sizes, threshold=RPN_POSITIVE_IOU):
        best = np.max([level_best(k, s) for k, s in enumerate(sizes)], axis=0)
        return float(np.mean(best >= threshold))

    report = {
        "coverage_before": before[0], "coverage_after": after[0],
        "coverage_at_0.7_before": share(baseline), "coverage_at_0.7_after": share(rounded),
        "mean_best_iou_before": before[1], "mean_best_iou_after": after[1],
        "baseline_sizes": list(baseline), "num_boxes": int(len(gt)),
        "iou_threshold": float(iou_threshold),
        "box_size_percentiles": [float(v) for v in np.percentile(side, [5, 50, 95])],
        "feature_shapes": [list(s) for s in shapes],
    }
    return {"anchor_sizes": tuple((s,) for s in rounded), "report": report}


def _paired_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of row ``i`` of ``a`` with row ``i`` of ``b`` (``[N, 4]`` each) -> ``[N]``."""
    lt = np.maximum(a[:, :2], b[:, :2])
    rb = np.minimum(a[:, 2:], b[:, 2:])
    wh = np.maximum(rb - lt, 0.0)
    inter = wh[:, 0] * wh[:, 1]
    union = ((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
             + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter)
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


class _CoverageFit:
    """Coverage of ground truth by SSD default boxes, cached per level for the size search."""

    def __init__(self, gt: np.ndarray, image_size: tuple, shapes: tuple, iou_threshold: float):
        self.gt = gt.astype(np.float32)
        self.image_size = image_size
        self.shapes = shapes
        self.iou_threshold = iou_threshold
        self.cache: dict = {}

    def level_best_iou(self, k: int, s0: float, s1: float, ratios: tuple) -> np.ndarray:
        """Best IoU ``[N]`` of each ground-truth box with the default boxes of level ``k``."""
        key = (k, s0, s1, ratios)
        if key not in self.cache:
            boxes = ssd_default_boxes(self.image_size, [self.shapes[k]], sizes=(s0, s1),
                                      aspect_ratios=(ratios,))
            best = [np.max(_np_iou(self.gt[i:i + _IOU_CHUNK], boxes), axis=1)
                    for i in range(0, len(self.gt), _IOU_CHUNK)]
            self.cache[key] = np.concatenate(best) if best else np.zeros(0, np.float32)
        return self.cache[key]

    def score(self, sizes, ratios) -> tuple[float, float]:
        """``(coverage, mean best IoU)`` of a configuration; compared lexicographically."""
        best = np.max([self.level_best_iou(k, sizes[k], sizes[k + 1], tuple(ratios[k]))
                       for k in range(len(self.shapes))], axis=0)
        return float(np.mean(best >= self.iou_threshold)), float(np.mean(best))

    def fit_ratios(self, sizes, ratios, subsets, min_gain: float) -> tuple:
        """Per level, the best ratio subset: more ratios need ``min_gain`` more coverage,
        fewer ratios are taken when coverage does not drop, same count by score."""
        ratios = [tuple(r) for r in ratios]
        for k in range(len(ratios)):
            def score(option, k=k):
                return self.score(sizes, ratios[:k] + [option] + ratios[k + 1:])

            best = score(ratios[k])
            for option in subsets:
                if option == ratios[k]:
                    continue
                trial = score(option)
                if len(option) > len(ratios[k]):
                    better = trial[0] >= best[0] + min_gain
                elif len(option) < len(ratios[k]):
                    better = trial[0] >= best[0]
                else:
                    better = trial > best
                if better:
                    ratios[k], best = option, trial
        return tuple(ratios)

    def fit_sizes(self, sizes, ratios) -> tuple:
        """Coordinate search over the ``K + 1`` sizes, keeping them non-decreasing."""
        return search_sizes(sizes, lambda trial: self.score(trial, ratios))


def search_sizes(sizes, score, floor=None) -> tuple:
    """Coordinate search: each size in turn is multiplied or divided by 1.25, then 1.1
    (:data:`_FIT_SIZE_STEPS`, up to :data:`_FIT_MAX_SWEEPS` sweeps each) while ``score(sizes)``
    (compared as a tuple) rises; sizes stay non-decreasing and at least ``floor[i]``."""
    sizes = [float(v) for v in sizes]
    floor = floor or [0.0] * len(sizes)
    best = score(sizes)
    for factor in _FIT_SIZE_STEPS:
        for _ in range(_FIT_MAX_SWEEPS):
            improved = False
            for i in range(len(sizes)):
                for f in (factor, 1.0 / factor):
                    trial = sizes[:i] + [sizes[i] * f] + sizes[i + 1:]
                    if trial[i] < floor[i] or any(a > b for a, b in itertools.pairwise(trial)):
                        continue
                    trial_score = score(trial)
                    if trial_score > best:
                        sizes, best, improved = trial, trial_score, True
            if not improved:
                break
    return tuple(sizes)


def _np_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """NumPy twin of :func:`kft.ops.boxes.pairwise_iou` (``[N, 4] x [M, 4] -> [N, M]``) for the
    offline fit, where it is about 3x faster than eager TensorFlow."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.maximum(rb - lt, 0.0)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = np.maximum(b[:, 2] - b[:, 0], 0.0) * np.maximum(b[:, 3] - b[:, 1], 0.0)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def _quantile_sizes(size: np.ndarray, steps: Sequence[float], min_steps: float) -> tuple:
    """``K + 1`` sizes from quantiles of ``size`` (fractions), level ``k`` >= ``min_steps``
    strides (capped at 0.9), non-decreasing; the last so ``sqrt(s_K s_{K+1})`` is the 99th
    percentile."""
    num_levels = len(steps)
    q = np.quantile(size, [(2 * k + 1) / (2 * num_levels) for k in range(num_levels)])
    sizes = []
    for k in range(num_levels):
        s = max(float(q[k]), min(min_steps * steps[k], 0.9))
        sizes.append(max(s, sizes[-1] * 1.05) if sizes else s)
    top = float(np.quantile(size, 0.99))
    sizes.append(max(sizes[-1] * 1.05, top * top / sizes[-1]))
    return tuple(sizes)


def _fit_boxes(boxes: np.ndarray, height: int, width: int, max_boxes: int,
               rng: np.random.Generator) -> np.ndarray:
    """``[N, 2]`` sizes or ``[N, 4]`` boxes -> ``[n, 4]`` ``xyxy`` boxes with area, sampled."""
    if boxes.ndim != 2 or boxes.shape[1] not in (2, 4):
        raise ValueError(f"boxes must be [N, 2] (w, h) or [N, 4] xyxy, got {boxes.shape}")
    if boxes.shape[1] == 4:
        boxes = boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]
    else:
        boxes = boxes[(boxes[:, 0] > 0) & (boxes[:, 1] > 0)]
    if len(boxes) == 0:
        raise ValueError("fit_default_box_sizes needs at least one box with a positive area")
    if len(boxes) > max_boxes:
        boxes = boxes[np.sort(rng.choice(len(boxes), max_boxes, replace=False))]
    if boxes.shape[1] == 4:
        return boxes
    w, h = boxes[:, 0], boxes[:, 1]
    cx = np.where(w < width, rng.uniform(0, 1, len(w)) * np.maximum(width - w, 0) + w / 2,
                  width / 2)
    cy = np.where(h < height, rng.uniform(0, 1, len(h)) * np.maximum(height - h, 0) + h / 2,
                  height / 2)
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


def _ssd_level_shapes(s0: float, s1: float, ratios: Sequence[float]) -> list[tuple]:
    """``(w, h)`` of one SSD location (fractions): ``s0``, ``sqrt(s0 s1)``, then ``r, 1/r``."""
    shapes = [(s0, s0), (math.sqrt(s0 * s1),) * 2]
    for r in ratios:
        root = math.sqrt(float(r))
        shapes += [(s0 * root, s0 / root), (s0 / root, s0 * root)]
    return shapes


def _grid(fh: int, fw: int, step: tuple, offset: float, wh: np.ndarray) -> np.ndarray:
    """``[fh * fw * n, 4]`` boxes of sizes ``wh [n, 2]`` centred on a ``fh x fw`` grid."""
    ys = (np.arange(fh, dtype=np.float64) + offset) * step[0]
    xs = (np.arange(fw, dtype=np.float64) + offset) * step[1]
    cy, cx = np.meshgrid(ys, xs, indexing="ij")
    centres = np.stack([cx, cy], axis=-1).reshape(-1, 1, 2)
    half = np.asarray(wh, np.float64).reshape(1, -1, 2) / 2
    return np.concatenate([centres - half, centres + half], axis=-1).reshape(-1, 4)


def _pair(value) -> tuple:
    """``int`` or ``(a, b)`` -> ``(a, b)``."""
    if isinstance(value, (int, float, np.integer, np.floating)):
        return value, value
    a, b = value
    return a, b


def _as_tuple(value) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _per_level_ratios(aspect_ratios: Sequence, num_levels: int) -> list[tuple]:
    """Flat ratios shared by all levels, or one tuple per level -> one tuple per level."""
    if all(isinstance(r, (tuple, list)) for r in aspect_ratios):
        if len(aspect_ratios) != num_levels:
            raise ValueError(f"need {num_levels} aspect-ratio tuples, got {len(aspect_ratios)}")
        return [tuple(r) for r in aspect_ratios]
    return [tuple(aspect_ratios)] * num_levels
