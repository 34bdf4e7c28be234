"""TFDS detection datasets by name (``voc/2007``, ``coco/2017``), offline once prepared.

``read_tfds_detection("voc/2007", "train", data_dir=DIR)`` returns a ``tf.data.Dataset`` of
decoded examples in the kft convention::

    {"image": uint8[H, W, 3], "image_id": string or int64 scalar, "boxes": float32[N, 4]
     (xyxy, absolute pixels, half-open), "labels": int32[N] (0-based), "difficult": bool[N],
     "iscrowd": bool[N]}

TFDS stores boxes normalised as ``[ymin, xmin, ymax, xmax]``; they are scaled by the image size
and reordered. TFDS's ``voc`` builder divides VOC's 1-based ``xmin``/``ymin`` as they are, so
for ``voc`` datasets 1 is subtracted from ``x1``/``y1`` (``one_based``) to match
:func:`kft.data.readers.voc.read_voc` exactly. Boxes are clipped to the image; none is dropped
(TFDS prepared the data; there is no report at this stage).

The objects feature is the first ``Sequence`` holding a ``BBoxFeature`` (``objects``); labels
come from its ``ClassLabel`` (``label``), flags from ``is_difficult`` / ``is_crowd`` when
present (else all False), the id from ``image/id`` or ``image/filename`` when present (else the
example's index).
"""

from __future__ import annotations

import os

import tensorflow as tf

from kft.data.readers.tfds import TFDSNotPreparedError

_ID_KEYS = ("image/id", "image/filename")


def _builder(name: str, data_dir):
    import tensorflow_datasets as tfds

    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise ValueError(f"TFDS has no dataset named '{name}': "
                         f"{str(e).splitlines()[0]}") from None


def detection_keys(features, name: str) -> dict:
    """Feature keys of a TFDS detection dataset: ``{"image", "objects", "bbox", "label",
    "difficult" | None, "crowd" | None, "id" | None}``; ``ValueError`` when there is no Image
    feature or no Sequence with a BBoxFeature and a ClassLabel."""
    import tensorflow_datasets as tfds

    images = [k for k, f in features.items() if isinstance(f, tfds.features.Image)]
    for key, feature in features.items():
        inner = getattr(feature, "feature", None)
        if not isinstance(feature, tfds.features.Sequence) or not hasattr(inner, "items"):
            continue
        boxes = [k for k, f in inner.items() if isinstance(f, tfds.features.BBoxFeature)]
        labels = [k for k, f in inner.items() if isinstance(f, tfds.features.ClassLabel)]
        if images and boxes and labels:
            return {"image": images[0], "objects": key, "bbox": boxes[0], "label": labels[0],
                    "difficult": "is_difficult" if "is_difficult" in inner else None,
                    "crowd": "is_crowd" if "is_crowd" in inner else None,
                    "id": next((k for k in _ID_KEYS if k in features), None)}
    raise ValueError(f"TFDS dataset '{name}' has no Image feature and objects Sequence with a "
                     f"BBoxFeature and a ClassLabel; its features are {list(features.keys())}")


def tfds_boxes_to_xyxy(bbox, height, width, one_based: bool = False):
    """Normalised ``[ymin, xmin, ymax, xmax]`` ``[N, 4]`` -> absolute half-open ``xyxy``
    float32 ``[N, 4]`` clipped to ``[0, width] x [0, height]``; ``one_based`` subtracts 1 from
    ``x1``/``y1`` first (VOC's 1-based inclusive coordinates)."""
    bbox = tf.cast(tf.reshape(bbox, [-1, 4]), tf.float32)
    h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    shift = 1.0 if one_based else 0.0
    x1 = bbox[:, 1] * w - shift
    y1 = bbox[:, 0] * h - shift
    x2, y2 = bbox[:, 3] * w, bbox[:, 2] * h
    boxes = tf.stack([x1, y1, x2, y2], axis=-1)
    return tf.clip_by_value(boxes, 0.0, tf.stack([w, h, w, h]))


def _rgb(image):
    """uint8 ``[H, W, C]`` (C 1..4) -> uint8 ``[H, W, 3]``."""
    channels = tf.shape(image)[-1]
    image = tf.cond(channels < 3, lambda: tf.tile(image[..., :1], [1, 1, 3]),
                    lambda: image[..., :3])
    return tf.ensure_shape(image, [None, None, 3])


def to_kft_example(example: dict, index, keys: dict, one_based: bool) -> dict:
    """One TFDS example -> the kft decoded-example dict (see the module docstring)."""
    image = _rgb(example[keys["image"]])
    objects = example[keys["objects"]]
    shape = tf.shape(image)
    boxes = tfds_boxes_to_xyxy(objects[keys["bbox"]], shape[0], shape[1], one_based)
    n = tf.shape(boxes)[0]

    def flag(key):
        return tf.cast(objects[key], tf.bool) if key else tf.zeros([n], tf.bool)

    return {"image": image,
            "image_id": example[keys["id"]] if keys["id"] else index,
            "boxes": boxes,
            "labels": tf.cast(objects[keys["label"]], tf.int32),
            "difficult": flag(keys["difficult"]),
            "iscrowd": flag(keys["crowd"])}


def read_tfds_detection(name: str, split: str = "train", data_dir=None, download: bool = False,
                        *, one_based: bool | None = None):
    """Loads a TFDS detection split as kft examples.

    Args:
        name: TFDS name with optional config/version (``"voc/2007"``, ``"coco/2017"``).
        split: TFDS split, slicing allowed (``"train"``, ``"validation[:10%]"``).
        data_dir: where prepared datasets live; ``None``: TFDS's default.
        download: prepare the dataset when missing (needs the network once).
        one_based: subtract 1 from ``x1``/``y1``; default True for ``voc`` datasets only.

    Returns:
        ``(dataset, class_names, num_examples)``; the dataset keeps the prepared order.

    Raises:
        TFDSNotPreparedError: not prepared and ``download`` is False.
        ValueError: unknown dataset or split, or not a detection dataset.
    """
    data_dir = os.path.expanduser(str(data_dir)) if data_dir else None
    builder = _builder(name, data_dir)
    if not builder.is_prepared():
        if not download:
            raise TFDSNotPreparedError(
                f"TFDS dataset '{name}' is not prepared in {builder.data_dir} (data_dir="
                f"{data_dir}); prepare it once with network access (`tfds build {name} "
                f"--data_dir {builder.data_dir_root}`) or pass download=True")
        builder.download_and_prepare()
    features = builder.info.features
    keys = detection_keys(features, name)
    try:
        num_examples = int(builder.info.splits[split].num_examples)
    except (KeyError, ValueError, TypeError) as e:
        raise ValueError(f"TFDS dataset '{name}' has no split '{split}' ({e}); available: "
                         f"{sorted(builder.info.splits.keys())}") from None
    one_based = name.split("/")[0].split(":")[0] == "voc" if one_based is None else one_based
    class_names = list(features[keys["objects"]].feature[keys["label"]].names)
    ds = builder.as_dataset(split=split, shuffle_files=False).enumerate()
    ds = ds.map(lambda i, ex: to_kft_example(ex, i, keys, one_based),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds, class_names, num_examples
