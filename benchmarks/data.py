"""Detection input-pipeline benchmark; prints one JSON object.

Images/s of ``kft.data.detection_pipeline.detection_batches`` (decode + augment + resize + pad +
batch, training mode) on a VOC-layout folder it GENERATES with
``kft.data.shapes.make_shapes_detection`` (procedurally drawn shapes, JPEG, 500x375 like a typical
VOC image) in a temporary directory:

* SSD: 300x300 fixed resize;
* R-CNN: keep-aspect, short side 800, long side at most 1333, padded to 1344x1344;

each without augmentation, with a simple horizontal flip (tf ops, written here), and with
``kft.data.detection_augment``'s ``ssd_augment()`` (SSD) / ``default_detection_augment()``
(R-CNN) when that module imports (otherwise a note says why not).

    python benchmarks/data.py [--images 200] [--batch 8] [--epochs 1]

Every configuration runs one untimed warm-up epoch (tracing, start-up), then ``--epochs`` timed
ones. The machine may be shared with other work: compare numbers from one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402

from kft.data.detection_pipeline import detection_batches  # noqa: E402
from kft.data.readers.voc import read_voc  # noqa: E402
from kft.data.shapes import SHAPE_CLASSES, make_shapes_detection  # noqa: E402

IMAGE_SIZE = (375, 500)  # (height, width) of the generated images
CONFIGS = {
    "ssd300_fixed": dict(image_size=300, resize="fixed"),
    "rcnn800_keep_aspect": dict(image_size=(800, 1333), resize="keep_aspect"),
}


def flip(data, seed):
    """Horizontal flip with probability 1/2 (stateless, from ``seed``). ``tf.cond``, not
    ``tf.where``: a broadcast select over the whole image costs 4x the decode here."""
    do = tf.random.stateless_uniform([], seed) < 0.5
    image, boxes = data["images"], data["bounding_boxes"]["boxes"]
    w = tf.cast(tf.shape(image)[1], tf.float32)
    mirrored = tf.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], axis=1)
    out = dict(data)
    out["images"] = tf.cond(do, lambda: tf.reverse(image, [1]), lambda: image)
    out["bounding_boxes"] = {**data["bounding_boxes"],
                             "boxes": tf.cond(do, lambda: mirrored, lambda: boxes)}
    return out


def library_augments() -> tuple[dict, str | None]:
    """``{config: augment}`` from kft.data.detection_augment, or ``({}, why not)``."""
    try:
        from kft.data import detection_augment as da

        return {"ssd300_fixed": ("ssd_augment", da.ssd_augment(seed=0)),
                "rcnn800_keep_aspect": ("default_detection_augment",
                                        da.default_detection_augment(seed=0))}, None
    except Exception as e:  # the module is optional here: report and go on
        return {}, f"kft.data.detection_augment not measured: {type(e).__name__}: {e}"


def measure(split, batch: int, epochs: int, augment, **resize) -> dict:
    """Runs ``epochs + 1`` training epochs; the first one (tracing, start-up, read-ahead)
    is not timed."""
    batches = detection_batches(split, batch_size=batch, training=True, seed=0,
                                augment=augment, epochs=epochs + 1, **resize)
    it = iter(batches.dataset)
    for _ in range(batches.steps):
        x, _ = next(it)
    count, t = 0, time.perf_counter()
    for x, _ in it:
        count += int(x.shape[0])
    seconds = time.perf_counter() - t
    return {"images_per_s": round(count / seconds, 2), "timed_images": count,
            "seconds": round(seconds, 2), "batch_shape": list(x.shape)}


def machine() -> dict:
    return {"platform": platform.platform(), "python": platform.python_version(),
            "tensorflow": tf.__version__, "cpu_count": os.cpu_count(),
            "gpus": [d.name for d in tf.config.list_physical_devices("GPU")]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs")
    args = parser.parse_args()
    extra, note = library_augments()
    results = {"benchmark": "detection input pipeline (decode + augment + resize + batch)",
               "data": f"GENERATED: {args.images} procedurally drawn shapes images, "
                       f"{IMAGE_SIZE[1]}x{IMAGE_SIZE[0]} JPEG, VOC layout "
                       "(kft.data.shapes.make_shapes_detection), not real photographs",
               "batch_size": args.batch, "timed_epochs": args.epochs, "machine": machine(),
               "results": {}}
    if note:
        results["note"] = note
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        root = make_shapes_detection(os.path.join(tmp, "shapes"), classes=SHAPE_CLASSES,
                                     num_train=args.images, num_val=1, image_size=IMAGE_SIZE,
                                     max_objects=6, seed=0)
        split = read_voc(root / "VOC", "train", class_names=list(SHAPE_CLASSES),
                         check_images="header")
        results["generate_and_read_s"] = round(time.perf_counter() - t, 1)
        for name, resize in CONFIGS.items():
            runs = {"none": None, "flip": flip}
            if name in extra:
                runs[extra[name][0]] = extra[name][1]
            results["results"][name] = {
                label: measure(split, args.batch, args.epochs, aug, **resize)
                for label, aug in runs.items()}
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
