"""Real-image few-shot classification tasks for kft issue 9; writes image folders and says what.

Every image comes from a real image that a PyPI package ships; nothing is generated or drawn:

* ``digits`` (orientation-sensitive): scikit-learn's ``load_digits`` (1797 real 8x8 handwritten
  digits, 16 grey levels). SOURCE = digits 0-4, TARGET = digits 5-9 (a 6 turned upside down is
  a 9: flips and 90-degree rotations change the label). Written as 8x8 RGB PNGs, grey levels
  0..16 scaled to 0..255, at their own resolution.
* ``photos``: ten real photographs. SOURCE classes: scikit-image's ``astronaut``, ``coffee``,
  ``rocket``, ``brick``, ``grass``; TARGET classes: scikit-image's ``chelsea``, ``camera``,
  ``gravel`` and scikit-learn's ``china.jpg``, ``flower.jpg`` (greyscale ones are stored as
  RGB). A class is one photograph; a sample is a random crop of it. Each photograph is cut into
  a grid of tiles of about :data:`TILE` pixels, every tile is given to exactly one split
  (seeded shuffle), and each crop lies inside one tile of its split, so crops of different
  splits never share a pixel. Crops are 50-100 % of the tile's height and width,
  independently, so they come in many sizes and aspect ratios, and are written at their own
  resolution (kft resizes them).
* ``photos_holdout``: built as ``photos`` from other images, to check the recipe's rules
  on a task that chose none of them: SOURCE is all ten photographs of ``photos``; TARGET
  scikit-image's ``hubble_deep_field``, ``immunohistochemistry``, ``retina``, ``coins`` and
  ``moon``.

For each task, under ``OUT/<task>/``::

    source/train/<class>/*.png  source/val/<class>/*.png   the model kft pre-trains
    target/train/<class>/*.png  (TARGET_SHOTS per class)   the few-shot fine-tuning set
    target/val/<class>/*.png    (>= 30 per class)          the TEST split: report only
    target_dev/train/<class>/*  (copies of target/train)    kft's folder reader needs a train/
    target_dev/val/<class>/*    (DEV per class)            for choosing sweep settings
    manifest.json               every file: split, class, where it came from (index or crop box)

kft's folder reader (:mod:`kft.data.readers.folder`) reads ``root/train/<class>/*`` and
``root/val/<class>/*``; ``val/`` is the split every ``metrics.json`` reports (``data.val_split``
is the TFDS split name and does not apply to folders). ``target_dev`` is never part of
``target``: the dev images are disjoint from the train and test images (digits: other
samples; photos: other tiles).

    python benchmarks/fewshot_data.py [--out /work/fewshot/data] [--seed 0]
                                      [--tasks digits,photos]

Needs numpy, Pillow, scikit-learn and scikit-image (the photos); install them into a separate
environment (``python -m venv /tmp/fewshot-venv && /tmp/fewshot-venv/bin/pip install
scikit-learn scikit-image``), not into kft's own.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

TARGET_SHOTS = 8  # training images per target class
DEV = 20  # dev images per target class (choosing the sweep's settings)
TEST = 40  # photos: test crops per target class (digits: every remaining sample, >= 30)
MIN_TEST = 30
SOURCE_TRAIN, SOURCE_VAL = 200, 50  # photos: crops per source class
TILE = 120  # photos: tile side in pixels (about)
TASKS = ("digits", "photos", "photos_holdout")

# (class name, loader name): where each photograph comes from.
SOURCE_PHOTOS = (("astronaut", "skimage:astronaut"), ("coffee", "skimage:coffee"),
                 ("rocket", "skimage:rocket"), ("brick", "skimage:brick"),
                 ("grass", "skimage:grass"))
TARGET_PHOTOS = (("chelsea", "skimage:chelsea"), ("camera", "skimage:camera"),
                 ("gravel", "skimage:gravel"), ("china", "sklearn:china.jpg"),
                 ("flower", "sklearn:flower.jpg"))
# photos_holdout: a task kept out of every choice of the recipe's rules (README "Few-shot"):
# its source model learns all ten photos above; its targets are five other real images.
HOLDOUT_PHOTOS = (("hubble", "skimage:hubble_deep_field"),
                  ("ihc", "skimage:immunohistochemistry"), ("retina", "skimage:retina"),
                  ("coins", "skimage:coins"), ("moon", "skimage:moon"))


class DataError(RuntimeError):
    """A source that cannot be read (a missing package); the message says what to install."""


def _require(module: str, package: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as e:
        raise DataError(f"{module} is not importable ({e}): install {package} into a separate "
                        f"environment, e.g. /tmp/fewshot-venv/bin/pip install {package}, and "
                        "run this script with that environment's python") from e


def load_photo(spec: str) -> np.ndarray:
    """The photograph ``spec`` (``skimage:<name>`` or ``sklearn:<file>``) as uint8 [H, W, 3]."""
    kind, _, name = spec.partition(":")
    if kind == "skimage":
        image = getattr(_require("skimage.data", "scikit-image"), name)()
    elif kind == "sklearn":
        image = _require("sklearn.datasets", "scikit-learn").load_sample_image(name)
    else:
        raise DataError(f"photo source {spec!r}: expected skimage:<name> or sklearn:<file>")
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise DataError(f"photo source {spec}: expected uint8 [H, W, 3], got {image.dtype} "
                        f"{image.shape}")
    return image


def tile_grid(height: int, width: int, tile: int = TILE,
              min_cells: int = 2) -> list[tuple[int, int, int, int]]:
    """Non-overlapping tiles covering a ``height`` x ``width`` image, about ``tile`` pixels a
    side (at least ``min_cells`` rows and columns), as ``(y0, x0, y1, x1)`` half-open pixel
    boxes, row by row. ``fewshot_detect_data.py`` uses it too."""
    rows = max(min_cells, round(height / tile))
    cols = max(min_cells, round(width / tile))
    ys = np.linspace(0, height, rows + 1).round().astype(int)
    xs = np.linspace(0, width, cols + 1).round().astype(int)
    return [(int(ys[r]), int(xs[c]), int(ys[r + 1]), int(xs[c + 1]))
            for r in range(rows) for c in range(cols)]


def assign_tiles(num_tiles: int, fractions: dict[str, float], rng) -> dict[str, list[int]]:
    """Shuffles tile indices and deals them to splits in ``fractions``' order; every split gets
    at least one tile, the last split takes the rest. Returns ``{split: sorted tile indices}``."""
    names = list(fractions)
    if num_tiles < len(names):
        raise DataError(f"{num_tiles} tiles cannot be dealt to {len(names)} splits")
    order = rng.permutation(num_tiles)
    out, start = {}, 0
    for i, name in enumerate(names):
        left = len(names) - i - 1
        n = num_tiles - start if left == 0 else min(
            num_tiles - start - left, max(1, round(num_tiles * fractions[name])))
        out[name] = sorted(int(t) for t in order[start:start + n])
        start += n
    return out


def random_crop_box(tile: tuple[int, int, int, int], rng, min_height: int | None = None,
                    min_width: int | None = None) -> tuple[int, int, int, int]:
    """A crop ``(y0, x0, y1, x1)`` inside ``tile``, its height and width drawn independently
    between ``min_height`` / ``min_width`` (default: half the tile's, rounded up) and the
    tile's. ``fewshot_detect_data.py`` uses it too."""
    y0, x0, y1, x1 = tile
    low_h = (y1 - y0 + 1) // 2 if min_height is None else min_height
    low_w = (x1 - x0 + 1) // 2 if min_width is None else min_width
    h = int(rng.integers(low_h, y1 - y0 + 1))
    w = int(rng.integers(low_w, x1 - x0 + 1))
    top = y0 + int(rng.integers(0, y1 - y0 - h + 1))
    left = x0 + int(rng.integers(0, x1 - x0 - w + 1))
    return top, left, top + h, left + w


def _save(image: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image, "RGB").save(path)


def _fresh(folder: Path) -> Path:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def _copy_train_to_dev(task_dir: Path, files: list[dict]) -> None:
    """target_dev/train: the same images as target/train (kft's reader needs a train/)."""
    for entry in [e for e in files if e["root"] == "target" and e["split"] == "train"]:
        dst = task_dir / "target_dev" / "train" / entry["class"] / Path(entry["file"]).name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(task_dir / entry["file"], dst)


def build_digits(out: Path, seed: int = 0) -> dict:
    """Writes the ``digits`` task under ``out/digits``; returns its manifest.

    SOURCE: digits 0-4, 80 % of each class in train, 20 % in val. TARGET: digits 5-9,
    :data:`TARGET_SHOTS` train and :data:`DEV` dev images per class, every other sample of the
    class in test (about 150 per class).
    """
    datasets = _require("sklearn.datasets", "scikit-learn")
    digits = datasets.load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    labels = digits.target.astype(int)
    rng = np.random.default_rng([seed, 1])
    task_dir = _fresh(out / "digits")
    files = []
    for digit in range(10):
        idx = rng.permutation(np.flatnonzero(labels == digit))
        if digit < 5:
            n_val = round(len(idx) * 0.2)
            parts = {("source", "val"): idx[:n_val], ("source", "train"): idx[n_val:]}
        else:
            parts = {("target", "train"): idx[:TARGET_SHOTS],
                     ("target_dev", "val"): idx[TARGET_SHOTS:TARGET_SHOTS + DEV],
                     ("target", "val"): idx[TARGET_SHOTS + DEV:]}
            if len(parts[("target", "val")]) < MIN_TEST:
                raise DataError(f"digit {digit}: only {len(parts[('target', 'val')])} test "
                                f"samples left (need {MIN_TEST})")
        for (root, split), members in parts.items():
            for i in sorted(int(j) for j in members):
                rel = f"{root}/{split}/{digit}/digit_{i:04d}.png"
                _save(np.repeat(images[i][:, :, None], 3, axis=2), task_dir / rel)
                files.append({"file": rel, "root": root, "split": split, "class": str(digit),
                              "origin": f"sklearn.datasets.load_digits()[{i}]"})
    _copy_train_to_dev(task_dir, files)
    return _finish(task_dir, "digits", seed, files, {
        "source": "scikit-learn load_digits: 1797 real 8x8 handwritten digits (UCI optdigits)",
        "source_classes": [str(d) for d in range(5)],
        "target_classes": [str(d) for d in range(5, 10)],
        "orientation_sensitive": True,
        "how": "source = digits 0-4 (80/20 train/val per class); target = digits 5-9: "
               f"{TARGET_SHOTS} train, {DEV} dev, the rest test per class; images 8x8, "
               "grey levels 0..16 scaled to 0..255, stored as RGB PNG"})


def _photo_classes(task_dir: Path, photos, splits: dict[str, tuple[str, str, int]],
                   fractions: dict[str, float], rng, files: list[dict]) -> dict:
    """Writes crops of each photograph into ``splits`` (``{part: (root, split, count)}``) from
    tiles dealt by ``fractions`` (same keys); returns ``{class: {shape, tiles per part}}``."""
    info = {}
    for name, spec in photos:
        image = load_photo(spec)
        tiles = tile_grid(*image.shape[:2])
        dealt = assign_tiles(len(tiles), fractions, rng)
        info[name] = {"origin": spec, "shape": list(image.shape),
                      "tiles": {part: [list(tiles[t]) for t in dealt[part]] for part in dealt}}
        for part, (root, split, count) in splits.items():
            for k in range(count):
                tile = tiles[dealt[part][k % len(dealt[part])]]  # round robin over the tiles
                y0, x0, y1, x1 = random_crop_box(tile, rng)
                rel = f"{root}/{split}/{name}/{name}_{part}_{k:04d}.png"
                _save(np.ascontiguousarray(image[y0:y1, x0:x1]), task_dir / rel)
                files.append({"file": rel, "root": root, "split": split, "class": name,
                              "origin": spec, "box_yxyx": [y0, x0, y1, x1],
                              "tile_yxyx": list(tile)})
    return info


def build_photos(out: Path, seed: int = 0) -> dict:
    """Writes the ``photos`` task under ``out/photos``; returns its manifest.

    SOURCE: :data:`SOURCE_PHOTOS`, tiles dealt 75 % train / 25 % val, :data:`SOURCE_TRAIN` /
    :data:`SOURCE_VAL` crops per class. TARGET: :data:`TARGET_PHOTOS`, tiles dealt 25 % train,
    25 % dev, 50 % test; :data:`TARGET_SHOTS` / :data:`DEV` / :data:`TEST` crops per class.
    """
    return _photo_task(out, "photos", [seed, 2], SOURCE_PHOTOS, TARGET_PHOTOS, seed, {
        "source": "real photographs shipped by scikit-image (skimage.data) and scikit-learn "
                  "(load_sample_image)",
        "how": "a class is one photograph, a sample a random crop (50-100 % of a tile's height "
               f"and width) inside one tile of a ~{TILE}px grid; each tile belongs to one split, "
               "so crops of different splits never overlap; greyscale photos stored as RGB"})


def _photo_task(out: Path, task: str, rng_seed, source_photos, target_photos, seed: int,
                about: dict) -> dict:
    """A photo task under ``out/<task>``: SOURCE tiles dealt 75 % train / 25 % val,
    :data:`SOURCE_TRAIN` / :data:`SOURCE_VAL` crops per class; TARGET tiles dealt 25 % train,
    25 % dev, 50 % test, :data:`TARGET_SHOTS` / :data:`DEV` / :data:`TEST` crops per class.
    Returns the manifest (``about`` added)."""
    rng = np.random.default_rng(rng_seed)
    task_dir = _fresh(out / task)
    files: list[dict] = []
    source = _photo_classes(task_dir, source_photos,
                            {"train": ("source", "train", SOURCE_TRAIN),
                             "val": ("source", "val", SOURCE_VAL)},
                            {"train": 0.75, "val": 0.25}, rng, files)
    target = _photo_classes(task_dir, target_photos,
                            {"train": ("target", "train", TARGET_SHOTS),
                             "dev": ("target_dev", "val", DEV),
                             "test": ("target", "val", TEST)},
                            {"train": 0.25, "dev": 0.25, "test": 0.5}, rng, files)
    _copy_train_to_dev(task_dir, files)
    return _finish(task_dir, task, seed, files, {
        **about, "source_classes": [n for n, _ in source_photos],
        "target_classes": [n for n, _ in target_photos], "orientation_sensitive": False,
        "photos": {"source": source, "target": target}})


def build_photos_holdout(out: Path, seed: int = 0) -> dict:
    """Writes the ``photos_holdout`` task under ``out/photos_holdout``; returns its manifest.

    Built like ``photos``, with other classes: SOURCE is all ten photographs of ``photos``
    (:data:`SOURCE_PHOTOS` + :data:`TARGET_PHOTOS`), TARGET the five images of
    :data:`HOLDOUT_PHOTOS` (a galaxy field, a stained tissue slide, a retina scan, coins and
    the moon; two of them greyscale). It was defined before the recipe's rules were last
    changed and is only run to check them, never to choose them.
    """
    return _photo_task(out, "photos_holdout", [seed, 3], SOURCE_PHOTOS + TARGET_PHOTOS,
                       HOLDOUT_PHOTOS, seed, {
        "source": "real images shipped by scikit-image (skimage.data) and scikit-learn "
                  "(load_sample_image)",
        "held_out": True,
        "how": "as photos: a class is one image, a sample a random crop inside one tile of a "
               f"~{TILE}px grid, tiles dealt to one split each; source = the ten photos of "
               "the photos task, target = five other images (not used to choose any rule)"})


def _finish(task_dir: Path, task: str, seed: int, files: list[dict], about: dict) -> dict:
    counts: dict[str, dict[str, dict[str, int]]] = {}
    for e in files:
        split = counts.setdefault(e["root"], {}).setdefault(e["split"], {})
        split[e["class"]] = split.get(e["class"], 0) + 1
    for e in [e for e in files if e["root"] == "target" and e["split"] == "train"]:
        split = counts.setdefault("target_dev", {}).setdefault("train", {})
        split[e["class"]] = split.get(e["class"], 0) + 1
    manifest = {"task": task, "seed": seed, **about, "counts": counts,
                "roots": {r: str(task_dir / r) for r in ("source", "target", "target_dev")},
                "files": files}
    (task_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


BUILDERS = {"digits": build_digits, "photos": build_photos,
            "photos_holdout": build_photos_holdout}


def describe(manifest: dict) -> str:
    """Lines saying what a task's folders hold."""
    lines = [f"{manifest['task']}: {manifest['how']}"]
    for root, splits in manifest["counts"].items():
        for split, per_class in splits.items():
            lines.append(f"  {manifest['roots'][root]}/{split}: {sum(per_class.values())} images"
                         f", {len(per_class)} classes ("
                         + ", ".join(f"{c}={n}" for c, n in per_class.items()) + ")")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="/work/fewshot/data", help="Output folder.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", default=",".join(TASKS),
                        help=f"Comma-separated tasks, of {', '.join(TASKS)}.")
    args = parser.parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in BUILDERS]
    if unknown or not tasks:
        print(f"fewshot_data: error: --tasks {args.tasks!r}: unknown {unknown}; valid: "
              f"{', '.join(TASKS)}", file=sys.stderr)
        return 2
    try:
        for task in tasks:
            print(describe(BUILDERS[task](Path(args.out), args.seed)), flush=True)
    except DataError as e:
        print(f"fewshot_data: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
