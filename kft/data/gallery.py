"""Pictures of a detection dataset: a gallery of annotated images, and the check plots.

* :func:`draw_example`: one image with its instance masks (semi-transparent), boxes and class
  names, fitted into a square tile (PIL).
* :func:`make_gallery` / :func:`browse`: tiles on a grid (:func:`gallery_grid`,
  :func:`gallery_size`), optionally after a detection augmentation (:func:`augment_example`).
* :func:`plot_class_histogram`, :func:`plot_box_sizes`, :func:`plot_class_distributions`: the
  PNGs of ``kft data check``, drawn like :mod:`kft.eval.plots` (matplotlib ``Figure`` on the
  Agg canvas, no ``pyplot``).

Boxes are float32 ``xyxy`` in pixels of the image they are drawn on (half-open); masks are
``[N, H, W]`` 0/1, one per instance.
"""

from __future__ import annotations

import colorsys
import math
import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from kft.data.readers.detection import DetectionSplit, decode_masks, load_image
from kft.plotting import save_figure

TILE = 256
PAD = 4
MASK_ALPHA = 0.45
BACKGROUND = (32, 32, 32)


def class_colours(num_classes: int) -> list[tuple[int, int, int]]:
    """``num_classes`` distinct, saturated RGB colours (golden-ratio hues), fixed per label."""
    colours = []
    for k in range(max(num_classes, 1)):
        hue = (k * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
        colours.append((int(r * 255), int(g * 255), int(b * 255)))
    return colours


def overlay_masks(image: np.ndarray, masks: np.ndarray, colours: Sequence[tuple],
                  alpha: float = MASK_ALPHA) -> np.ndarray:
    """``image`` uint8 ``[H, W, 3]`` with each mask ``masks[k]`` (``[N, H, W]``) blended in
    ``colours[k]`` at opacity ``alpha``; returns a new uint8 array."""
    out = image.astype(np.float32)
    for mask, colour in zip(masks, colours, strict=True):
        on = np.asarray(mask).astype(bool)
        if on.shape != out.shape[:2]:
            raise ValueError(f"mask shape {on.shape} differs from the image's {out.shape[:2]}")
        out[on] = (1 - alpha) * out[on] + alpha * np.asarray(colour, np.float32)
    return np.clip(out, 0, 255).astype(np.uint8)


def _font(size: int):
    """PIL's default font at ``size`` (a bitmap font on old Pillow)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def draw_example(image, boxes, labels, class_names: Sequence[str], masks=None, *,
                 title: str | None = None, tile: int = TILE,
                 mask_labels=None) -> Image.Image:
    """One annotated image fitted (aspect kept, letterboxed) into a ``tile x tile`` RGB tile.

    Args:
        image: ``[H, W, 3]`` RGB, uint8 or float in 0..255.
        boxes: float ``[N, 4]`` ``xyxy`` pixels of ``image``; labels: int ``[N]``; a label < 0
            (padding) is not drawn.
        class_names: names by label (a label beyond them is drawn as its number).
        masks: optional ``[K, H, W]`` instance masks, coloured by ``mask_labels`` (default:
            ``labels`` when ``K == N``, else a colour per mask index).
        title: text in the tile's top-left corner (e.g. the image id).
    """
    image = np.clip(np.asarray(image, np.float32), 0, 255).astype(np.uint8)
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    colours = class_colours(len(class_names))
    if masks is not None and len(masks):
        if mask_labels is None:
            mask_labels = labels if len(labels) == len(masks) else np.arange(len(masks))
        mask_colours = [colours[int(k) % len(colours)] for k in mask_labels]
        image = overlay_masks(image, np.asarray(masks), mask_colours)
    h, w = image.shape[:2]
    scale = tile / max(h, w, 1)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    canvas = Image.new("RGB", (tile, tile), BACKGROUND)
    offset = ((tile - size[0]) // 2, (tile - size[1]) // 2)
    canvas.paste(Image.fromarray(image).resize(size, Image.BILINEAR), offset)
    draw = ImageDraw.Draw(canvas)
    font = _font(max(9, tile // 22))
    for box, label in zip(boxes, labels, strict=True):
        if label < 0:
            continue
        x1, y1, x2, y2 = (float(v) * scale for v in box)
        xy = [x1 + offset[0], y1 + offset[1], x2 + offset[0] - 1, y2 + offset[1] - 1]
        if xy[2] < xy[0] or xy[3] < xy[1]:
            continue
        colour = colours[int(label) % len(colours)]
        draw.rectangle(xy, outline=colour, width=2)
        name = class_names[label] if label < len(class_names) else str(int(label))
        _label(draw, (xy[0], xy[1]), name, colour, font)
    if title:
        _label(draw, (2, 2), str(title), (255, 255, 255), font)
    return canvas


def _label(draw: ImageDraw.ImageDraw, xy, text: str, colour, font) -> None:
    """``text`` on a dark box at ``xy`` (its top-left corner, pulled inside the tile)."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x, y = max(xy[0], 0), max(xy[1] - (bottom - top) - 3, 0)
    draw.rectangle([x, y, x + right - left + 3, y + bottom - top + 3], fill=(0, 0, 0))
    draw.text((x + 2 - left, y + 2 - top), text, fill=colour, font=font)


def gallery_grid(n: int, cols: int | None = None) -> tuple[int, int]:
    """``(rows, cols)`` of a gallery of ``n`` tiles: ``cols`` default ``ceil(sqrt(n))``."""
    if n < 1:
        raise ValueError(f"a gallery needs at least one image, got {n}")
    cols = min(cols or math.ceil(math.sqrt(n)), n)
    return math.ceil(n / cols), cols


def gallery_size(n: int, tile: int = TILE, cols: int | None = None,
                 pad: int = PAD) -> tuple[int, int]:
    """``(width, height)`` in pixels of the gallery of ``n`` tiles: ``pad`` around and
    between ``tile``-sized tiles."""
    rows, cols = gallery_grid(n, cols)
    return cols * tile + (cols + 1) * pad, rows * tile + (rows + 1) * pad


def make_gallery(tiles: Sequence[Image.Image], cols: int | None = None,
                 pad: int = PAD) -> Image.Image:
    """Pastes equal-sized square tiles row by row; size :func:`gallery_size`."""
    tile = tiles[0].width if tiles else 0
    width, height = gallery_size(len(tiles), tile, cols, pad)
    cols = gallery_grid(len(tiles), cols)[1]
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    for k, im in enumerate(tiles):
        row, col = divmod(k, cols)
        sheet.paste(im, (pad + col * (tile + pad), pad + row * (tile + pad)))
    return sheet


def pick_records(split: DetectionSplit, n: int, seed: int = 0) -> list[int]:
    """Indices of ``min(n, len(split))`` records drawn without replacement with ``seed``,
    in record order."""
    if len(split) == 0:
        raise ValueError("the split has no images to show")
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(len(split), size=min(n, len(split)), replace=False).tolist())


def augment_example(augment: Callable, image: np.ndarray, boxes, labels, masks=None,
                    seed=None) -> tuple:
    """Runs a detection augmentation on one example; returns ``(image, boxes, labels, masks)``
    as NumPy (masks ``[K, H, W]`` or None; padded boxes, label < 0, are left for the drawer
    to skip).

    ``augment(data, seed=seed)`` (the :mod:`kft.data.detection_augment` convention) gets
    ``{"images": f32[H, W, 3], "bounding_boxes": {"boxes": f32[N, 4] xyxy pixels, "labels":
    i32[N]}, "segmentation_masks": f32[H, W, N]}`` (masks only when given) and returns the
    same structure, mask channels following the boxes that survive. ``seed``: ``None``, an
    int (used as ``[seed, 0]``) or an int ``[2]`` pair for the stateless random ops.
    """
    if seed is not None and np.ndim(seed) == 0:
        seed = (int(seed), 0)
    seed = None if seed is None else np.asarray(seed, np.int64)
    data = {"images": np.asarray(image, np.float32),
            "bounding_boxes": {"boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
                               "labels": np.asarray(labels, np.int32)}}
    if masks is not None:
        data["segmentation_masks"] = np.transpose(np.asarray(masks, np.float32), (1, 2, 0))
    out = augment(data, seed=seed)
    new_masks = out.get("segmentation_masks") if masks is not None else None
    if new_masks is not None:
        new_masks = np.transpose(np.asarray(new_masks) > 0.5, (2, 0, 1))
    return (np.asarray(out["images"]), np.asarray(out["bounding_boxes"]["boxes"]),
            np.asarray(out["bounding_boxes"]["labels"]), new_masks)


def browse(split: DetectionSplit, n: int = 16, *, seed: int = 0, augment: Callable | None = None,
           tile: int = TILE, cols: int | None = None, masks: bool = True) -> Image.Image:
    """A gallery of ``n`` records of ``split`` (picked with ``seed``), each with its masks
    (when the records have segmentations and ``masks``), boxes and class names; with
    ``augment`` (see :func:`augment_example`), the ``k``-th image is shown after augmentation
    with seed ``[seed, k]``."""
    tiles = []
    for k, index in enumerate(pick_records(split, n, seed)):
        record = split.records[index]
        image = load_image(record)
        inst = decode_masks(record) if masks and record.segmentation is not None else None
        boxes, labels = record.boxes, record.labels
        if augment is not None:
            image, boxes, labels, inst = augment_example(augment, image, boxes, labels, inst,
                                                         seed=(seed, k))
        tiles.append(draw_example(image, boxes, labels, split.class_names, inst,
                                  title=str(record.image_id), tile=tile))
    return make_gallery(tiles, cols)


def save_png(image: Image.Image, path) -> str:
    """Saves ``image`` as PNG (parent folders created); returns ``str(path)``."""
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    image.save(path, format="PNG")
    return path


def _figure(width: float, height: float):
    """A matplotlib Figure on the Agg canvas (no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _grouped_bars(ax, class_names: Sequence[str], series: Mapping[str, Sequence[float]]):
    """One group of bars per class, one bar per series."""
    x = np.arange(len(class_names))
    width = 0.8 / max(len(series), 1)
    for k, (name, values) in enumerate(series.items()):
        ax.bar(x + (k - (len(series) - 1) / 2) * width, values, width, label=name)
    ax.set_xticks(x, labels=[str(n) for n in class_names], rotation=60 if len(x) > 8 else 0,
                  ha="right" if len(x) > 8 else "center")
    ax.grid(True, axis="y", alpha=0.3)
    if len(series) > 1:
        ax.legend()


def plot_class_histogram(per_split: Mapping[str, Mapping[str, int]], path) -> str:
    """Objects per class, one bar per split: ``{split: {class: count}}`` -> PNG at ``path``."""
    names = list(next(iter(per_split.values())))
    fig = _figure(max(6.0, 0.5 * len(names) * len(per_split) + 2), 4.0)
    ax = fig.add_subplot()
    _grouped_bars(ax, names, {k: [v[n] for n in names] for k, v in per_split.items()})
    ax.set_ylabel("objects")
    ax.set_title("Objects per class")
    return save_figure(fig, path)


def plot_class_distributions(distribution: Mapping, path) -> str:
    """Train vs val class shares (smoothed, from :func:`kft.data.stats.compare_splits`) with
    ``KL(train || val)`` in the title -> PNG at ``path``."""
    train, val = distribution["train_distribution"], distribution["val_distribution"]
    names = list(train)
    fig = _figure(max(6.0, 0.9 * len(names) + 2), 4.0)
    ax = fig.add_subplot()
    _grouped_bars(ax, names, {"train": [train[n] for n in names],
                              "val": [val[n] for n in names]})
    kl = distribution["kl_train_val"]
    flag = " > threshold" if distribution["kl_warning"] else ""
    ax.set_ylabel("share of objects (smoothed)")
    ax.set_title(f"Class distribution: KL(train || val) = "
                 f"{'inf' if kl is None else f'{kl:.3f}'}{flag} "
                 f"(threshold {distribution['kl_threshold']:g})")
    return save_figure(fig, path)


def plot_box_sizes(geometry: Mapping[str, Mapping[str, np.ndarray]], path) -> str:
    """Histograms of sqrt(box area) (COCO 32/96 px bounds marked) and of log2(aspect ratio
    w/h), one series per split: ``{split: kft.data.stats.box_geometry(split)}`` -> PNG."""
    from kft.data.stats import COCO_LARGE, COCO_SMALL

    fig = _figure(11.0, 4.0)
    ax_size, ax_aspect = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    sizes = {k: g["sqrt_area"] for k, g in geometry.items()}
    aspects = {k: np.log2(np.maximum(g["aspect"], 1e-6)) for k, g in geometry.items()}
    for ax, values in ((ax_size, sizes), (ax_aspect, aspects)):
        every = np.concatenate(list(values.values()))
        bins = np.histogram_bin_edges(every, bins=40) if every.size else 40
        for name, v in values.items():
            ax.hist(v, bins=bins, alpha=0.6, label=name)
    for bound, text in ((math.sqrt(COCO_SMALL), "small|medium"),
                        (math.sqrt(COCO_LARGE), "medium|large")):
        ax_size.axvline(bound, color="k", linestyle="--", linewidth=1)
        ax_size.text(bound, 1.0, f" {text}", transform=ax_size.get_xaxis_transform(),
                     va="top", fontsize=8)
    ax_size.set_xlabel("sqrt(box area) [pixels]")
    ax_size.set_title("Box size")
    ax_aspect.set_xlabel("log2(width / height)")
    ax_aspect.set_title("Aspect ratio")
    for ax in (ax_size, ax_aspect):
        ax.set_ylabel("boxes")
        ax.grid(True, alpha=0.3)
        if len(geometry) > 1:
            ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)
