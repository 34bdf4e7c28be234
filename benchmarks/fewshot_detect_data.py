"""A real-photo few-shot detection task for kft issue 9: aerial tree crowns that a PyPI package ships.

DeepForest (``pip download --no-deps deepforest``; MIT licence) ships RGB aerial photographs
from the NEON airborne observation platform with hand-drawn tree-crown boxes in Pascal VOC XML
(``deepforest/data/*.xml``). Nothing here is generated or drawn: every image is a crop of one
of those photographs, and every box is one of their annotators' boxes, clipped to the crop.

* SOURCE (the model kft pre-trains): the two Yellowstone crops (``2019_YELL_2_*``, 2299x2472
  and 1249x1035 pixels, 574 + 279 crowns, conifers on grass). Each photograph is cut into a
  grid of :data:`SOURCE_TILE`-pixel tiles, every tile goes to train or val (seeded shuffle),
  and each image is a random crop inside one tile, so train and val never share a pixel.
* TARGET (the few-shot set): two photographs of *other sites*, ``OSBS_029`` (Florida, 61
  crowns, longleaf pine and bare sand) and ``SOAP_061`` (California, 37 crowns annotated as
  ``Alive``/``Dead``, merged here into one class). Each is 400x400; fold ``a`` trains on the
  left halves and tests on the right halves, fold ``b`` the other way round. A fold's train
  split is :data:`TARGET_TRAIN` random crops of its training halves (many sizes and aspect
  ratios); its test split is the two other halves cut into 200x200 tiles (4 images).

The class is the same (``tree``) in source and target: no annotated real-photo set with
*different* classes ships in a package this machine can install, so this measures transfer
to new sites and species with 40 images, not to new classes (README "Few-shot").

A box is kept when at least :data:`MIN_VISIBLE` of its area lies inside the crop (and it is
clipped); a crown cut more than that is dropped, as tiling tools do. The counts of kept and
dropped boxes are in ``manifest.json``.

    python benchmarks/fewshot_detect_data.py --wheel deepforest-2.1.0-py3-none-any.whl \\
        [--out /work/fewshot/detect] [--seed 0]

Writes ``OUT/source/VOC``, ``OUT/target_a/VOC`` and ``OUT/target_b/VOC`` (JPEGImages,
Annotations, ImageSets/Main/{train,val}.txt; ``val`` is the split a run reports) and
``OUT/manifest.json``. Needs numpy and Pillow (kft's own environment has both).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling, however it is loaded
from fewshot_data import random_crop_box, tile_grid  # noqa: E402

SOURCE_PHOTOS = ("2019_YELL_2_528000_4978000_image_crop2", "2019_YELL_2_541000_4977000_image_crop")
TARGET_PHOTOS = ("OSBS_029", "SOAP_061")
SOURCE_TILE = 200  # source tile side, pixels (about): crowns at the scale of the target crops
SOURCE_VAL_FRACTION = 0.2
SOURCE_TRAIN, SOURCE_VAL = 300, 40  # source crops
TARGET_TRAIN = 40  # target training crops per fold (20 per photograph)
MIN_VISIBLE = 0.6
CLASS = "tree"


class DataError(RuntimeError):
    """The wheel or one of its files cannot be read; the message names it."""


def read_photos(wheel: Path, names) -> dict[str, tuple[np.ndarray, np.ndarray, list[str]]]:
    """``{name: (uint8 image [H, W, 3], boxes [N, 4] xyxy float, original labels)}`` from the
    DeepForest wheel's ``deepforest/data/<name>.png`` and ``<name>.xml``."""
    from PIL import Image

    out = {}
    try:
        archive = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as e:
        raise DataError(f"--wheel {wheel}: not a readable wheel ({e}); get it with "
                        "`pip download --no-deps deepforest`") from e
    with archive:
        for name in names:
            try:
                with archive.open(f"deepforest/data/{name}.png") as f:
                    image = np.asarray(Image.open(f).convert("RGB"))
                root = ET.fromstring(archive.read(f"deepforest/data/{name}.xml"))
            except KeyError as e:
                raise DataError(f"--wheel {wheel}: no deepforest/data/{name}.png/.xml in it "
                                "(a DeepForest release that ships its sample data is needed)") from e
            boxes, labels = [], []
            for obj in root.iter("object"):
                bb = obj.find("bndbox")
                boxes.append([float(bb.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")])
                labels.append(obj.findtext("name", ""))
            out[name] = (image, np.asarray(boxes, np.float64).reshape(-1, 4), labels)
    return out


def crop_boxes(boxes: np.ndarray, crop: tuple[int, int, int, int]) -> tuple[np.ndarray, int]:
    """Boxes of ``crop`` = ``(y0, x0, y1, x1)``, in its pixel frame, keeping those with at
    least :data:`MIN_VISIBLE` of their area inside (clipped); returns ``(kept, dropped)``."""
    y0, x0, y1, x1 = crop
    clipped = np.stack([np.clip(boxes[:, 0], x0, x1), np.clip(boxes[:, 1], y0, y1),
                        np.clip(boxes[:, 2], x0, x1), np.clip(boxes[:, 3], y0, y1)], axis=1)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    inside = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    touching = inside > 0
    keep = inside >= MIN_VISIBLE * np.maximum(area, 1e-9)
    kept = clipped[keep] - np.array([x0, y0, x0, y0], np.float64)
    return kept, int(np.sum(touching & ~keep))


def random_crop(region: tuple[int, int, int, int], rng, low: float = 0.5):
    """A crop inside ``region``, ``low``-100 % of its height and width, independently."""
    y0, x0, y1, x1 = region
    return random_crop_box(region, rng, int((y1 - y0) * low), int((x1 - x0) * low))


class VOCWriter:
    """Writes one VOC folder: JPEGImages, Annotations, ImageSets/Main/<split>.txt."""

    def __init__(self, root: Path):
        self.root = root
        if root.exists():
            shutil.rmtree(root)
        for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
            (root / sub).mkdir(parents=True)
        self.splits: dict[str, list[str]] = {}
        self.files: list[dict] = []

    def add(self, split: str, photo: str, image: np.ndarray, crop, boxes: np.ndarray,
            dropped: int) -> None:
        from PIL import Image

        y0, x0, y1, x1 = crop
        stem = f"{split}_{len(self.splits.get(split, [])):04d}"
        Image.fromarray(image[y0:y1, x0:x1]).save(self.root / "JPEGImages" / f"{stem}.jpg",
                                                  quality=95)
        objects = "".join(
            f"<object><name>{CLASS}</name><difficult>0</difficult><bndbox><xmin>{b[0]:.1f}</xmin>"
            f"<ymin>{b[1]:.1f}</ymin><xmax>{b[2]:.1f}</xmax><ymax>{b[3]:.1f}</ymax></bndbox>"
            "</object>" for b in boxes)
        (self.root / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><filename>{stem}.jpg</filename><size><width>{x1 - x0}</width>"
            f"<height>{y1 - y0}</height><depth>3</depth></size>{objects}</annotation>")
        self.splits.setdefault(split, []).append(stem)
        self.files.append({"file": f"JPEGImages/{stem}.jpg", "split": split, "photo": photo,
                           "crop_yxyx": list(crop), "boxes": len(boxes), "dropped": dropped})

    def close(self) -> dict:
        for split, stems in self.splits.items():
            (self.root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(stems) + "\n")
        return {split: {"images": len(stems),
                        "boxes": sum(f["boxes"] for f in self.files if f["split"] == split),
                        "dropped_at_edges": sum(f["dropped"] for f in self.files
                                                if f["split"] == split)}
                for split, stems in self.splits.items()}


def build(wheel: Path, out: Path, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    photos = read_photos(wheel, SOURCE_PHOTOS + TARGET_PHOTOS)
    manifest: dict = {"how": __doc__.split("\n\n")[0], "wheel": wheel.name, "seed": seed,
                      "class": CLASS, "min_visible": MIN_VISIBLE, "roots": {}, "counts": {},
                      "labels_merged": {n: sorted(set(photos[n][2])) for n in photos}}
    # source: tiles dealt to train / val, crops inside one tile each
    regions: dict[str, list] = {"train": [], "val": []}
    for name in SOURCE_PHOTOS:
        grid = tile_grid(*photos[name][0].shape[:2], SOURCE_TILE, min_cells=1)
        order = rng.permutation(len(grid))
        n_val = max(1, round(len(grid) * SOURCE_VAL_FRACTION))
        regions["val"] += [(name, grid[i]) for i in order[:n_val]]
        regions["train"] += [(name, grid[i]) for i in order[n_val:]]
    writer = VOCWriter(out / "source" / "VOC")
    for split, count in (("train", SOURCE_TRAIN), ("val", SOURCE_VAL)):
        for k in range(count):
            name, tile = regions[split][k % len(regions[split])] if split == "val" else \
                regions[split][int(rng.integers(len(regions[split])))]
            crop = tile if split == "val" and k < len(regions[split]) else random_crop(tile, rng)
            image, boxes, _ = photos[name]
            kept, dropped = crop_boxes(boxes, crop)
            writer.add(split, name, image, crop, kept, dropped)
    manifest["counts"]["source"] = writer.close()
    manifest["roots"]["source"] = str(out / "source" / "VOC")
    manifest["source_files"] = writer.files
    # target folds: train on one half of each photograph, test on the other half's tiles
    for fold, train_side in (("a", "left"), ("b", "right")):
        writer = VOCWriter(out / f"target_{fold}" / "VOC")
        halves = {}
        for name in TARGET_PHOTOS:
            h, w = photos[name][0].shape[:2]
            left, right = (0, 0, h, w // 2), (0, w // 2, h, w)
            halves[name] = (left, right) if train_side == "left" else (right, left)
        for k in range(TARGET_TRAIN):
            name = TARGET_PHOTOS[k % len(TARGET_PHOTOS)]
            image, boxes, _ = photos[name]
            crop = random_crop(halves[name][0], rng, low=0.4)
            kept, dropped = crop_boxes(boxes, crop)
            writer.add("train", name, image, crop, kept, dropped)
        for name in TARGET_PHOTOS:
            image, boxes, _ = photos[name]
            y0, x0, y1, x1 = halves[name][1]
            for tile in tile_grid(y1 - y0, x1 - x0, x1 - x0, min_cells=1):
                crop = (tile[0] + y0, tile[1] + x0, tile[2] + y0, tile[3] + x0)
                kept, dropped = crop_boxes(boxes, crop)
                writer.add("val", name, image, crop, kept, dropped)
        manifest["counts"][f"target_{fold}"] = writer.close()
        manifest["roots"][f"target_{fold}"] = str(out / f"target_{fold}" / "VOC")
        manifest[f"target_{fold}_files"] = writer.files
        manifest[f"target_{fold}_train_side"] = train_side
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheel", required=True, type=Path,
                        help="A DeepForest wheel (pip download --no-deps deepforest).")
    parser.add_argument("--out", default="/work/fewshot/detect", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        manifest = build(args.wheel, args.out, args.seed)
    except DataError as e:
        print(f"fewshot_detect_data: error: {e}", file=sys.stderr)
        return 2
    for root, splits in manifest["counts"].items():
        for split, c in splits.items():
            print(f"{manifest['roots'][root]} {split}: {c['images']} images, {c['boxes']} boxes "
                  f"({c['dropped_at_edges']} cut at crop edges and dropped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
