"""Makes the pretrained checkpoint that the detection quick start fine-tunes from.

    python tools/make_quickstart_checkpoint.py            # writes pretrained/ssdlite_shapes3.*

The quick start (``recipes/quickstart.py``) fine-tunes on five shape classes (circle, square,
triangle, star, ring). Its starting point is trained here on a DIFFERENT set of classes (cross,
hexagon, diamond) of kft's generated shapes dataset, from random weights, so the quick start is
real transfer: the backbone, the box regressor and the "is there an object" evidence carry over;
the class head does not (its class count differs, so ``load_from`` re-initialises it and reports
so in load_report.json).

Reproducible: the data is generated from a fixed seed, the run uses fixed seeds and its own
recipe below, and the script records the command, the metrics and the file's SHA-256 in
``pretrained/ssdlite_shapes3.json`` (the quick start checks that hash before loading). Floating-
point reduction order differs across CPUs and TensorFlow builds, so a re-run on another machine
gives an equivalent checkpoint (same AP within noise), not a bit-identical file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from kft import config as cfg
from kft.config import Data, Eval, Export, Model, Recipe, Train

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN_CLASSES = ("cross", "hexagon", "diamond")

RECIPE = Recipe(
    name="quickstart_pretrain",
    task="detection",
    description="SSDLite-MobileNetV2 (alpha 0.35, 128 px) on 3 generated shape classes",
    data=Data(root="data/generated/shapes_pretrain/VOC", format="voc", generate="shapes",
              class_names=PRETRAIN_CLASSES, image_size=128, generate_num_train=1500,
              generate_num_val=100, train_split="train", val_split="val", max_instances=8,
              detection_augment="default"),
    model=Model(arch="ssdlite_mobilenet_v2", width_multiplier=0.35,
                # from random weights: keras.applications' 0.999 would leave the moving
                # statistics near their initial values after a few hundred steps
                bn_momentum=0.9),
    train=Train(epochs=50, batch_size=32, optimizer="adamw", learning_rate=4e-3,
                weight_decay=1e-4, schedule="cosine_restarts", restart_epochs=50,
                restart_mult=1.0, min_lr=1e-5, warmup_steps=50, clipnorm=10.0, seed=0),
    eval=Eval(batch_size=50, every=10),
    export=Export(enabled=False),
)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def strip_optimizer(source: Path, target: Path) -> None:
    """Saves the model of ``source`` without its optimizer state (a third of the size)."""
    import keras

    import kft.models  # noqa: F401  (registers kft's classes for loading)

    model = keras.saving.load_model(source, compile=False)
    model.save(target)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(ROOT / "pretrained"), help="output folder")
    parser.add_argument("--run-dir", default="runs/quickstart_pretrain")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="recipe override key=value (as kft.run --set)")
    args = parser.parse_args(argv)

    from kft.train.detect import run_detection

    recipe = cfg.apply_overrides(RECIPE, args.overrides)
    summary = run_detection(recipe, args.run_dir, verbose=2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    target = out / "ssdlite_shapes3.keras"
    strip_optimizer(Path(args.run_dir) / "model.keras", target)
    record = {
        "file": target.name,
        "sha256": sha256(target),
        "made_by": "python tools/make_quickstart_checkpoint.py "
                   + " ".join(f"--set {o}" for o in args.overrides),
        "arch": recipe.model.arch,
        "width_multiplier": recipe.model.width_multiplier,
        "image_size": recipe.data.image_size,
        "classes": list(recipe.data.class_names),
        "data": "kft generated shapes (GENERATED), "
                f"{recipe.data.generate_num_train} train / {recipe.data.generate_num_val} val",
        "val_metrics": summary["metrics"],
        "epochs": recipe.train.epochs,
    }
    (out / "ssdlite_shapes3.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
