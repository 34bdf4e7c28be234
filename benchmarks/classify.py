"""Classification speed benchmark; prints one JSON object.

* ResNet-50 (kft.models.ResNetClassifier, 1000 classes) train-step images/s at 224x224, batch 16:
  SGD momentum, the compiled Keras train function, after warm-up.
* Inference images/s, same model and batch.
* The tf.data pipeline alone (decode + resize + D4 augmentation + batch) on a folder of JPEGs it
  writes itself, images/s.

    python benchmarks/classify.py [--steps 10] [--batch 16] [--size 224] [--arch resnet50]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kft.models.classifier import ResNetClassifier  # noqa: E402


def bench_model(arch: str, size: int, batch: int, steps: int) -> dict:
    model = ResNetClassifier.from_arch(arch, num_classes=1000, image_size=size)
    model.compile(keras.optimizers.SGD(0.01, momentum=0.9),
                  keras.losses.CategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, 1000, batch), 1000).astype("float32")
    ds = tf.data.Dataset.from_tensors((x, y)).repeat()
    model.fit(ds, steps_per_epoch=2, epochs=1, verbose=0)  # trace + warm up
    t = time.perf_counter()
    model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
    train = batch * steps / (time.perf_counter() - t)
    model.predict_on_batch(x)
    t = time.perf_counter()
    for _ in range(steps):
        model.predict_on_batch(x)
    infer = batch * steps / (time.perf_counter() - t)
    return {"train_images_per_s": round(train, 2), "inference_images_per_s": round(infer, 2),
            "params": model.count_params()}


def bench_pipeline(size: int, batch: int, n_images: int = 256) -> dict:
    from PIL import Image

    from kft.data import ClassificationAugment, classification_batches
    from kft.data.readers.folder import ClassificationSplit

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as root:
        paths, labels = [], []
        for i in range(n_images):
            path = os.path.join(root, f"{i}.jpg")
            Image.fromarray(rng.integers(0, 255, (375, 500, 3), dtype=np.uint8)).save(path)
            paths.append(path)
            labels.append(i % 10)
        split = ClassificationSplit(paths, labels, [str(c) for c in range(10)])
        batches = classification_batches(split, image_size=size, batch_size=batch,
                                         num_classes=10, training=True, seed=0,
                                         augment=ClassificationAugment(seed=0), epochs=3)
        it = iter(batches.dataset)
        next(it)  # warm up
        t = time.perf_counter()
        count = 0
        for _ in range(batches.steps * 2 - 1):
            x, _ = next(it)
            count += int(x.shape[0])
        return {"pipeline_images_per_s": round(count / (time.perf_counter() - t), 2),
                "source": "500x375 JPEG, decode+resize+D4 augment+batch"}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args()
    result = {
        "benchmark": "classify",
        "arch": args.arch, "image_size": args.size, "batch": args.batch, "steps": args.steps,
        "device": "GPU" if tf.config.list_physical_devices("GPU") else "CPU",
        "cpu_count": os.cpu_count(), "machine": platform.machine(),
        "tensorflow": tf.__version__, "keras": keras.__version__,
    }
    result.update(bench_model(args.arch, args.size, args.batch, args.steps))
    result.update(bench_pipeline(args.size, args.batch))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
