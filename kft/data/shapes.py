"""kft's built-in detection + instance-segmentation dataset: procedurally drawn shapes.

``make_shapes_detection(root)`` writes a seeded dataset in both standard layouts, so quick starts
and tests go through the same readers as real data::

    root/GENERATED.txt                       says the data is generated, and how
    root/VOC/JPEGImages/000001.jpg ...       Pascal VOC layout
    root/VOC/Annotations/000001.xml          1-based inclusive pixel boxes, as VOC ships
    root/VOC/ImageSets/Main/{train,val,trainval,test}.txt   (test = val)
    root/VOC/SegmentationObject/000001.png   instance index per pixel (0 background)
    root/COCO/annotations/instances_{train,val}.json        boxes + RLE masks
    root/COCO/{train,val}/000001.jpg         the same images

Each image has a textured background (gradient, noise, stripes or checks) and 1..max_objects
shapes of random class, size, colour and rotation. Later shapes may occlude earlier ones; boxes
and masks describe the visible part, and objects left with too few visible pixels are dropped.
"""

from __future__ import annotations

import json
import math
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
from PIL import Image, ImageDraw

SHAPE_CLASSES = ("circle", "square", "triangle", "star", "ring", "cross", "hexagon", "diamond")


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple]:
    def regular(n, radius, phase=0.0):
        return [(cx + radius * math.cos(phase + angle + 2 * math.pi * i / n),
                 cy + radius * math.sin(phase + angle + 2 * math.pi * i / n)) for i in range(n)]

    if kind == "square":
        return regular(4, r, math.pi / 4)
    if kind == "diamond":
        pts = regular(4, r)
        return [(cx + (x - cx) * 0.6, y) if i % 2 == 0 else (x, y) for i, (x, y) in
                enumerate(pts)]
    if kind == "triangle":
        return regular(3, r, -math.pi / 2)
    if kind == "hexagon":
        return regular(6, r)
    if kind == "star":
        outer, inner = regular(5, r, -math.pi / 2), regular(5, r * 0.45, -math.pi / 2 + math.pi / 5)
        return [p for pair in zip(outer, inner, strict=True) for p in pair]
    if kind == "cross":
        a, b = r, r * 0.35
        base = [(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a), (-b, b),
                (-a, b), (-a, -b), (-b, -b)]
        c, s = math.cos(angle), math.sin(angle)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in base]
    raise ValueError(f"unknown shape {kind!r}")


def shape_coverage(kind: str, size: tuple[int, int], cx: float, cy: float, r: float,
                   angle: float, supersample: int = 1) -> np.ndarray:
    """float32 ``[H, W]`` in 0..1: how much of each pixel the shape covers.

    ``supersample`` > 1 draws at that many times the resolution and box-filters down, which
    antialiases the edges (the classification images use 4).
    """
    h, w = size
    k = max(int(supersample), 1)
    img = Image.new("L", (w * k, h * k), 0)
    draw = ImageDraw.Draw(img)
    cx, cy, r = cx * k, cy * k, r * k
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif kind == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        draw.ellipse([cx - r * 0.55, cy - r * 0.55, cx + r * 0.55, cy + r * 0.55], fill=0)
    elif kind in SHAPE_CLASSES:
        draw.polygon(_polygon(kind, cx, cy, r, angle), fill=255)
    else:
        raise ValueError(f"unknown shape {kind!r}: choose from {SHAPE_CLASSES}")
    if k > 1:
        img = img.resize((w, h), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.float32) / 255.0


def _shape_mask(kind: str, size: tuple[int, int], cx, cy, r, angle) -> np.ndarray:
    """Boolean ``[H, W]`` mask of one shape."""
    return shape_coverage(kind, size, cx, cy, r, angle) > 0.5


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A textured float32 ``[H, W, 3]`` background in 0..255."""
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = np.linspace(0, 1, w)[None, :, None] if rng.random() < 0.5 else \
        np.linspace(0, 1, h)[:, None, None]
    bg = c0 * (1 - t) + c1 * t + np.zeros((h, w, 3))
    kind = rng.integers(0, 3)
    yy, xx = np.mgrid[0:h, 0:w]
    if kind == 1:  # stripes
        period = rng.uniform(6, 20)
        bg += 25 * np.sin(2 * np.pi * (xx * rng.uniform(-1, 1) + yy) / period)[..., None]
    elif kind == 2:  # checks
        cell = int(rng.integers(6, 16))
        bg += 20 * (((xx // cell) + (yy // cell)) % 2 * 2 - 1)[..., None]
    bg += rng.normal(0, rng.uniform(3, 12), (h, w, 3))
    return np.clip(bg, 0, 255).astype(np.float32)


def draw_scene(rng: np.random.Generator, classes, image_size=(128, 128), max_objects=4,
               min_visible=0.35, min_pixels=30):
    """Draws one image and its visible instances.

    Returns ``(image uint8[H, W, 3], boxes f32[N, 4] xyxy half-open pixels, labels i32[N],
    masks bool[N, H, W])``.
    """
    h, w = image_size
    image = _background(rng, h, w)
    shapes = []  # (label, full mask, colour), bottom to top
    for _ in range(int(rng.integers(1, max_objects + 1))):
        label = int(rng.integers(0, len(classes)))
        r = rng.uniform(0.08, 0.3) * min(h, w)
        cx, cy = rng.uniform(r * 0.6, w - r * 0.6), rng.uniform(r * 0.6, h - r * 0.6)
        mask = _shape_mask(classes[label], (h, w), cx, cy, r, rng.uniform(0, 2 * math.pi))
        if mask.sum() >= min_pixels:
            shapes.append((label, mask, rng.uniform(0, 255, 3)))
    # Drop shapes that would be mostly hidden *before* drawing, so that every drawn shape is
    # annotated (removing a shape only uncovers the others, so one pass from the top suffices).
    kept = []
    for label, mask, colour in reversed(shapes):
        visible = mask.copy()
        for _, above, _ in kept:
            visible &= ~above
        if visible.sum() >= max(min_pixels, min_visible * mask.sum()):
            kept.append((label, mask, colour))
    kept.reverse()
    boxes, labels, masks = [], [], []
    for i, (label, mask, colour) in enumerate(kept):
        if np.abs(image[mask].mean(axis=0) - colour).sum() < 120:  # keep contrast
            colour = 255 - colour
        shade = 1 + 0.15 * rng.normal(size=(h, w, 1))
        image = np.where(mask[..., None], np.clip(colour * shade, 0, 255), image)
        visible = mask.copy()
        for _, above, _ in kept[i + 1:]:
            visible &= ~above
        ys, xs = np.nonzero(visible)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        labels.append(label)
        masks.append(visible)
    boxes = np.array(boxes, np.float32).reshape(-1, 4)
    masks = np.array(masks, bool).reshape(-1, h, w)
    return image.astype(np.uint8), boxes, np.array(labels, np.int32), masks


def make_shapes_detection(root, *, classes=SHAPE_CLASSES[:5], num_train=200, num_val=50,
                          image_size=(128, 128), max_objects=4, seed=0, overwrite=False) -> Path:
    """Writes the shapes dataset to ``root`` in VOC and COCO layouts; returns ``root``.

    ``image_size`` is a side, an ``(H, W)`` pair, or a list of ``(H, W)`` pairs used in turn
    (image ``i`` gets ``sizes[i % len(sizes)]``), so that a dataset holds several sizes and
    aspect ratios as real ones do. Deterministic for ``(classes, num_train, num_val,
    image_size, max_objects, seed)``.
    """
    root = Path(root)
    sizes = _image_sizes(image_size)
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{root} exists and is not empty (pass overwrite=True)")
        shutil.rmtree(root)
    voc, coco = root / "VOC", root / "COCO"
    for d in (voc / "JPEGImages", voc / "Annotations", voc / "ImageSets" / "Main",
              voc / "SegmentationObject", coco / "annotations", coco / "train", coco / "val"):
        d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    splits = {"train": [], "val": []}
    coco_json = {s: _coco_skeleton(classes) for s in splits}
    ann_id = 1
    # The scenes are drawn in order from one generator (the dataset depends on the seed only);
    # a second thread encodes and writes the files of the previous ones meanwhile (PIL's
    # encoders release the GIL).
    with ThreadPoolExecutor(max_workers=1) as writer:
        pending = []
        for index in range(num_train + num_val):
            split = "train" if index < num_train else "val"
            name = f"{index + 1:06d}"
            image, boxes, labels, masks = draw_scene(rng, classes, sizes[index % len(sizes)],
                                                     max_objects)
            pending.append(writer.submit(_write_image_files, voc, coco / split, name, image,
                                         boxes, labels, masks, classes))
            if len(pending) > 16:  # a bounded queue: memory stays a few scenes
                pending.pop(0).result()
            ann_id = _add_coco_image(coco_json[split], index + 1, f"{name}.jpg", image.shape,
                                     boxes, labels, masks, ann_id)
            splits[split].append(name)
        for job in pending:
            job.result()  # re-raises a failed write
    main = voc / "ImageSets" / "Main"
    (main / "train.txt").write_text("\n".join(splits["train"]) + "\n")
    (main / "val.txt").write_text("\n".join(splits["val"]) + "\n")
    (main / "test.txt").write_text("\n".join(splits["val"]) + "\n")
    (main / "trainval.txt").write_text("\n".join(splits["train"] + splits["val"]) + "\n")
    for split, data in coco_json.items():
        (coco / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    (root / "GENERATED.txt").write_text(
        "This dataset was GENERATED by kft (kft.data.shapes.make_shapes_detection); the images "
        "are procedurally drawn shapes, not real photographs.\n"
        f"classes={list(classes)} num_train={num_train} num_val={num_val} "
        f"image_size={_size_text(sizes)} max_objects={max_objects} seed={seed}\n")
    return root


def _write_image_files(voc: Path, coco_split: Path, name: str, image, boxes, labels, masks,
                       classes) -> None:
    """One scene's files: the JPEG (VOC, and a copy in the COCO split folder), the VOC XML and
    the instance PNG."""
    Image.fromarray(image).save(voc / "JPEGImages" / f"{name}.jpg", quality=95)
    shutil.copyfile(voc / "JPEGImages" / f"{name}.jpg", coco_split / f"{name}.jpg")
    _write_voc_xml(voc / "Annotations" / f"{name}.xml", name, image.shape, boxes, labels,
                   classes)
    instance = np.zeros(image.shape[:2], np.uint8)
    for k, m in enumerate(masks):
        instance[m] = k + 1
    Image.fromarray(instance).save(voc / "SegmentationObject" / f"{name}.png")


def _image_sizes(image_size) -> list[tuple[int, int]]:
    """A side, an ``(H, W)`` pair or a list of pairs -> a list of ``(H, W)`` pairs."""
    if isinstance(image_size, int):
        return [(image_size, image_size)]
    items = list(image_size)
    if len(items) == 2 and all(isinstance(v, int) for v in items):
        return [(int(items[0]), int(items[1]))]
    sizes = [(int(h), int(w)) for h, w in items]
    if not sizes:
        raise ValueError("image_size: an empty list of sizes")
    return sizes


def _size_text(sizes) -> str:
    """The GENERATED.txt spelling: ``[H, W]`` for one size (as before), else the list."""
    return str(list(sizes[0])) if len(sizes) == 1 else str([list(s) for s in sizes])


def _coco_skeleton(classes) -> dict:
    return {
        "info": {"description": "kft generated shapes", "version": "1.0"},
        "licenses": [],
        "images": [],
        "annotations": [],
        # Category ids start at 1 as in COCO; readers map them to contiguous 0-based labels.
        "categories": [{"id": i + 1, "name": n, "supercategory": "shape"}
                       for i, n in enumerate(classes)],
    }


def _add_coco_image(data, image_id, file_name, shape, boxes, labels, masks, ann_id) -> int:
    from pycocotools import mask as mask_utils

    h, w = shape[:2]
    data["images"].append({"id": image_id, "file_name": file_name, "height": h, "width": w})
    for box, label, m in zip(boxes, labels, masks, strict=True):
        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        x1, y1, x2, y2 = (float(v) for v in box)
        data["annotations"].append({
            "id": ann_id, "image_id": image_id, "category_id": int(label) + 1,
            "bbox": [x1, y1, x2 - x1, y2 - y1], "area": float(m.sum()), "iscrowd": 0,
            "segmentation": rle})
        ann_id += 1
    return ann_id


def _write_voc_xml(path, name, shape, boxes, labels, classes):
    h, w = shape[:2]
    ann = ET.Element("annotation")
    ET.SubElement(ann, "folder").text = "VOC"
    ET.SubElement(ann, "filename").text = f"{name}.jpg"
    size = ET.SubElement(ann, "size")
    for tag, value in (("width", w), ("height", h), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(ann, "segmented").text = "1"
    for box, label in zip(boxes, labels, strict=True):
        obj = ET.SubElement(ann, "object")
        ET.SubElement(obj, "name").text = classes[int(label)]
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = "0"
        bb = ET.SubElement(obj, "bndbox")
        x1, y1, x2, y2 = (int(v) for v in box)
        # VOC is 1-based and inclusive: half-open [x1, x2) becomes x1+1 .. x2.
        for tag, value in (("xmin", x1 + 1), ("ymin", y1 + 1), ("xmax", x2), ("ymax", y2)):
            ET.SubElement(bb, tag).text = str(value)
    ET.indent(ann)
    ET.ElementTree(ann).write(path, encoding="utf-8", xml_declaration=False)
