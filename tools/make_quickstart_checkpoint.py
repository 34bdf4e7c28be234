"""Makes the pretrained checkpoints that the detection quick starts fine-tune from.

    python tools/make_quickstart_checkpoint.py                 # pretrained/ssdlite_shapes11.*
    python tools/make_quickstart_checkpoint.py --model frcnn   # pretrained/frcnn_shapes11.*

The quick starts (``recipes/quickstart.py``, SSDLite; ``recipes/quickstart_frcnn.py``, Faster
R-CNN) fine-tune on five shape classes (circle, square, triangle, star, ring). Their starting
points are trained here, from random weights, on OTHER
classes: the three further shapes kft's generated dataset has (cross, hexagon, diamond) and
eight more that this tool draws (:data:`EXTRA_SHAPES`: pentagon, arrow, heart, crescent,
semicircle, tee, ell, trapezoid), so the quick start is real transfer: the backbone, the extra
layers and the box regressor carry over; the class head does not (its class count differs, so
``load_from`` re-initialises it and reports so in load_report.json). More pretraining classes
make the features more general than three shapes would (the role ImageNet's 1000 classes play
for photographs), so a short fine-tuning run on the five new ones suffices.

The pretraining images are generated here with their own seed (:data:`PRETRAIN_SEED`), not the
seed the quick start generates its data with (0), so the checkpoint has seen neither the quick
start's images nor their backgrounds and object layouts (the generator draws the same layouts
for the same seed whatever the classes). It is trained longer and on more images than the
quick start could afford (:data:`RECIPE`, :data:`FRCNN_RECIPE`), so that a short fine-tuning
run suffices.

Reproducible: fixed seeds and the recipes below; the script records the command, the data, the
metrics on its own held-out images and the file's SHA-256 in ``pretrained/<checkpoint>.json``
(the quick start checks that hash before loading). Floating-point reduction order differs
across CPUs and TensorFlow builds, so a re-run on another machine gives an equivalent checkpoint
(same AP within noise), not a bit-identical file. On 2 CPU cores it takes one to two hours.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from kft import config as cfg
from kft.config import Data, Eval, Export, Model, Recipe, Train

ROOT = Path(__file__).resolve().parents[1]


def _within_unit_disc(points) -> list[tuple[float, float]]:
    """An outline scaled so that its farthest vertex is at distance 1 from the centre."""
    far = max(math.hypot(x, y) for x, y in points)
    return [(x / far, y / far) for x, y in points]


# Shapes kft.data.shapes does not draw, none a variant of a quick start class: outlines in
# units of the shape's radius r (within the disc of radius r, as kft's own shapes), x right and
# y down, rotated about the centre when drawn (the crescent, a disc minus an offset disc, is
# drawn apart).
EXTRA_OUTLINES = {name: _within_unit_disc(points) for name, points in {
    "pentagon": [(math.cos(a), math.sin(a)) for a in
                 (-math.pi / 2 + 2 * math.pi * i / 5 for i in range(5))],
    "arrow": [(-1.0, -0.22), (0.15, -0.22), (0.15, -0.6), (1.0, 0.0), (0.15, 0.6),
              (0.15, 0.22), (-1.0, 0.22)],
    "heart": [(16 * math.sin(t) ** 3 / 17,
               -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t)
                 - math.cos(4 * t)) / 17 - 0.1) for t in np.linspace(0, 2 * math.pi, 48)],
    "semicircle": [(math.cos(a), 0.42 - math.sin(a)) for a in np.linspace(0, math.pi, 32)],
    "tee": [(-1.0, -1.0), (1.0, -1.0), (1.0, -0.45), (0.28, -0.45), (0.28, 1.0),
            (-0.28, 1.0), (-0.28, -0.45), (-1.0, -0.45)],
    "ell": [(-0.7, -1.0), (-0.15, -1.0), (-0.15, 0.45), (0.7, 0.45), (0.7, 1.0), (-0.7, 1.0)],
    "trapezoid": [(-1.0, 0.55), (1.0, 0.55), (0.45, -0.55), (-0.45, -0.55)],
}.items()}
EXTRA_SHAPES = (*EXTRA_OUTLINES, "crescent")
PRETRAIN_CLASSES = ("cross", "hexagon", "diamond", *EXTRA_SHAPES)
# --model: the checkpoint's file stem (.keras, and .json: its record) and the quick start that
# fine-tunes from it
CHECKPOINTS = {"ssdlite": f"ssdlite_shapes{len(PRETRAIN_CLASSES)}",
               "frcnn": f"frcnn_shapes{len(PRETRAIN_CLASSES)}"}
QUICKSTARTS = {"ssdlite": "quickstart.py", "frcnn": "quickstart_frcnn.py"}
PRETRAIN_SEED = 2  # the quick start generates with seed 0, tools/tune_quickstart.py with 1
NUM_TRAIN, NUM_VAL = 6000, 200
DATA_DIR = "data/generated/shapes_pretrain"

RECIPE = Recipe(
    name="quickstart_pretrain",
    task="detection",
    description=f"SSDLite-MobileNetV2 (alpha 0.35, 128 px) on {len(PRETRAIN_CLASSES)} "
                "generated shape classes",
    data=Data(root=f"{DATA_DIR}/VOC", format="voc", class_names=PRETRAIN_CLASSES,
              image_size=128, train_split="train", val_split="val", max_instances=8,
              detection_augment="default"),
    model=Model(arch="ssdlite_mobilenet_v2", width_multiplier=0.35,
                # from random weights: keras.applications' 0.999 would leave the moving
                # statistics near their initial values for the first thousand steps
                bn_momentum=0.9),
    train=Train(epochs=30, batch_size=32, optimizer="adamw", learning_rate=4e-3,
                weight_decay=1e-4, schedule="cosine_restarts", restart_epochs=30,
                restart_mult=1.0, min_lr=1e-5, warmup_steps=100, clipnorm=10.0, seed=0),
    eval=Eval(batch_size=50, every=5),
    export=Export(enabled=False),
)

# The Faster R-CNN quick start's own network (kft's three-stage ResNet + FPN, the CPU-sized
# second stage) from random weights, on the same images in the quick start's keep-aspect
# 128 px canvas
FRCNN_RECIPE = Recipe(
    name="quickstart_frcnn_pretrain",
    task="detection",
    description=f"Faster R-CNN (tiny ResNet-FPN, 128 px) on {len(PRETRAIN_CLASSES)} generated "
                "shape classes",
    data=dataclasses.replace(RECIPE.data, resize="keep_aspect"),
    model=dataclasses.replace(cfg.load_recipe(ROOT / "recipes" / "quickstart_frcnn.py").model,
                              load_from="", load_from_hash=""),
    # 8 epochs (3000 steps): about 25 min on 2 quiet CPU cores
    train=Train(epochs=8, batch_size=16, optimizer="adamw", learning_rate=2e-3,
                weight_decay=1e-4, schedule="cosine_restarts", restart_epochs=8,
                restart_mult=1.0, min_lr=1e-5, warmup_steps=200, clipnorm=5.0, seed=0),
    eval=Eval(batch_size=50, every=4, score_threshold=0.05, nms_iou_threshold=0.5),
    export=Export(enabled=False),
)
RECIPES = {"ssdlite": RECIPE, "frcnn": FRCNN_RECIPE}


def extra_shape_mask(kind: str, size: tuple[int, int], cx: float, cy: float, r: float,
                     angle: float) -> np.ndarray:
    """Boolean ``[H, W]`` mask of one :data:`EXTRA_SHAPES` shape of radius ``r`` at
    ``(cx, cy)`` pixels, rotated by ``angle`` radians."""
    h, w = size
    image = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(image)
    if kind == "crescent":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        ox, oy = cx + 0.45 * r * math.cos(angle), cy + 0.45 * r * math.sin(angle)
        draw.ellipse([ox - 0.8 * r, oy - 0.8 * r, ox + 0.8 * r, oy + 0.8 * r], fill=0)
    elif kind in EXTRA_OUTLINES:
        c, s = math.cos(angle), math.sin(angle)
        draw.polygon([(cx + r * (x * c - y * s), cy + r * (x * s + y * c))
                      for x, y in EXTRA_OUTLINES[kind]], fill=255)
    else:
        raise ValueError(f"unknown shape {kind!r}: not one of {EXTRA_SHAPES}")
    return np.asarray(image) > 127


@contextlib.contextmanager
def extra_shapes_drawn():
    """While open, kft's shapes generator (:func:`kft.data.make_shapes_detection`) also draws
    :data:`EXTRA_SHAPES`, with its own scenes, occlusion rules and VOC + COCO writers.

    It swaps the generator's one-shape mask function for one that knows the extra shapes too
    and restores it on exit (moving the extra shapes into ``kft.data.shapes`` would make this
    unnecessary)."""
    from kft.data import shapes

    kft_mask = shapes._shape_mask

    def mask(kind, size, cx, cy, r, angle):
        if kind in EXTRA_SHAPES:
            return extra_shape_mask(kind, size, cx, cy, r, angle)
        return kft_mask(kind, size, cx, cy, r, angle)

    shapes._shape_mask = mask
    try:
        yield
    finally:
        shapes._shape_mask = kft_mask


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def strip_optimizer(source: Path, target: Path) -> None:
    """Saves the model of ``source`` without its optimizer state (a third of the size)."""
    from kft.saving import load_model

    load_model(source, compile=False).save(target)


def check_other_classes(recipe: Recipe, quickstart: str = "quickstart.py") -> None:
    """Refuses to pretrain on any class the quick start fine-tunes on (it is a transfer demo)."""
    quickstart = cfg.load_recipe(ROOT / "recipes" / quickstart)
    shared = sorted(set(recipe.data.class_names) & set(quickstart.data.class_names))
    if shared:
        raise cfg.ConfigError(f"data.class_names: {shared} are also quick start classes "
                              f"({list(quickstart.data.class_names)}); pretrain on others")


def generate(root: Path, recipe: Recipe, num_train: int, num_val: int, seed: int) -> None:
    """Writes the pretraining images (VOC + COCO layouts) to ``root`` unless they are there."""
    from kft.data import make_shapes_detection

    marker = root / "GENERATED.txt"
    wanted = f"num_train={num_train} num_val={num_val}"
    if marker.is_file() and wanted in marker.read_text() and f"seed={seed}" in marker.read_text():
        print(f"[tool] reusing {root} ({wanted}, seed={seed})")
        return
    print(f"[tool] generating {num_train} + {num_val} images of {list(recipe.data.class_names)} "
          f"(seed {seed}) in {root}")
    with extra_shapes_drawn():
        make_shapes_detection(root, classes=recipe.data.class_names, num_train=num_train,
                              num_val=num_val, image_size=recipe.data.image_size, seed=seed,
                              overwrite=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(ROOT / "pretrained"), help="output folder")
    parser.add_argument("--model", choices=sorted(RECIPES), default="ssdlite",
                        help="ssdlite: recipes/quickstart.py's SSDLite (pretrained/"
                             f"{CHECKPOINTS['ssdlite']}.keras); frcnn: recipes/quickstart_frcnn.py's "
                             f"Faster R-CNN (pretrained/{CHECKPOINTS['frcnn']}.keras)")
    parser.add_argument("--run-dir", default="", help="default runs/<the recipe's name>")
    parser.add_argument("--data-dir", default=DATA_DIR, help="where the images are generated")
    parser.add_argument("--num-train", type=int, default=NUM_TRAIN)
    parser.add_argument("--num-val", type=int, default=NUM_VAL)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="recipe override key=value (as kft.run --set)")
    args = parser.parse_args(argv)

    from kft.run import run_recipe

    data_dir = Path(args.data_dir)
    recipe = cfg.apply_overrides(RECIPES[args.model],
                                 [f"data.root={data_dir / 'VOC'}", *args.overrides])
    run_dir = Path(args.run_dir or f"runs/{recipe.name}")
    check_other_classes(recipe, QUICKSTARTS[args.model])
    generate(data_dir, recipe, args.num_train, args.num_val, PRETRAIN_SEED)
    start = time.time()
    summary = run_recipe(recipe, run_dir, verbose=2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{CHECKPOINTS[args.model]}.keras"
    strip_optimizer(run_dir / "model.keras", target)
    options = [f"--model {args.model}"] if args.model != "ssdlite" else []
    options += [f"--num-train {args.num_train}"] if args.num_train != NUM_TRAIN else []
    options += [f"--num-val {args.num_val}"] if args.num_val != NUM_VAL else []
    record = {
        "file": target.name,
        "sha256": sha256(target),
        "made_by": " ".join(["python tools/make_quickstart_checkpoint.py", *options,
                             *(f"--set {o}" for o in args.overrides)]),
        "arch": recipe.model.arch,
        **({"width_multiplier": recipe.model.width_multiplier}
           if recipe.model.arch.startswith("ssd") else {}),
        "image_size": recipe.data.image_size,
        "classes": list(recipe.data.class_names),
        "data": f"kft generated shapes (GENERATED; {len(EXTRA_SHAPES)} of the classes drawn "
                f"by this tool), {args.num_train} train / {args.num_val} val images",
        "data_seed": PRETRAIN_SEED,
        "val_metrics": summary["metrics"],
        "epochs": recipe.train.epochs,
        "train_seconds": round(time.time() - start),
    }
    (out / f"{CHECKPOINTS[args.model]}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
