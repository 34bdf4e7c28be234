"""TensorFlow Datasets by name, offline once prepared.

``load_tfds("cifar100", data_dir=DIR, split="train")`` reads a dataset already prepared under
``DIR`` without any network access. With ``download=True`` it prepares it first (this needs the
network once). Class names come from the dataset's ``ClassLabel`` feature.
"""

from __future__ import annotations

import os

import tensorflow as tf


class TFDSNotPreparedError(FileNotFoundError):
    """The dataset is not prepared in ``data_dir`` and downloading was not allowed."""


def _builder(name: str, data_dir):
    import tensorflow_datasets as tfds

    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        first = str(e).splitlines()[0]
        raise ValueError(f"TFDS has no dataset named '{name}' (data.root=tfds:{name}): "
                         f"{first}") from None


def _not_prepared_message(name: str, builder, data_dir) -> str:
    where = data_dir or "the TFDS default (TFDS_DATA_DIR or ~/tensorflow_datasets)"
    return (f"TFDS dataset '{name}' is not prepared: looked in {builder.data_dir} "
            f"(data_dir={where}). kft reads TFDS datasets offline; prepare it once with network "
            f"access: `tfds build {name} --data_dir {builder.data_dir_root}`, or rerun with "
            f"download=True (--set data.tfds_download=true), or copy an already prepared "
            f"'{name}' folder into {builder.data_dir_root}.")


def _feature_keys(info, name: str) -> tuple[str, str]:
    """(image feature key, ClassLabel feature key) of a TFDS dataset."""
    import tensorflow_datasets as tfds

    features = info.features
    keys = list(features.keys())
    supervised = info.supervised_keys
    if (isinstance(supervised, tuple) and len(supervised) == 2
            and all(isinstance(k, str) for k in supervised)
            and isinstance(features[supervised[0]], tfds.features.Image)
            and isinstance(features[supervised[1]], tfds.features.ClassLabel)):
        return supervised
    images = [k for k in keys if isinstance(features[k], tfds.features.Image)]
    labels = [k for k in keys if isinstance(features[k], tfds.features.ClassLabel)]
    if not images or not labels:
        raise ValueError(f"TFDS dataset '{name}' needs an Image feature and a ClassLabel "
                         f"feature for classification; its features are {keys}")
    return images[0], labels[0]


def _rgb_uint8(image: tf.Tensor) -> tf.Tensor:
    """uint8 [H,W,C] with C in 1/2/3/4 (or uint16) -> uint8 [H,W,3]."""
    if image.dtype != tf.uint8:
        image = tf.image.convert_image_dtype(image, tf.uint8, saturate=True)
    hw = image.shape[:2]
    channels = tf.shape(image)[-1]
    image = tf.cond(channels < 3, lambda: tf.tile(image[..., :1], [1, 1, 3]),
                    lambda: image[..., :3])
    image.set_shape(list(hw) + [3])
    return image


def load_tfds(name: str, *, data_dir=None, split: str = "train", download: bool = False):
    """Loads a TFDS classification split.

    Args:
        name: TFDS dataset name, optionally with config/version (``"cifar100"``).
        data_dir: where prepared datasets live (``~`` expanded); None: TFDS's default.
        split: a TFDS split, slicing allowed (``"train"``, ``"train[:90%]"``).
        download: prepare the dataset when it is missing (needs the network once).

    Returns:
        ``(dataset, class_names, num_examples)``: ``dataset`` yields ``(image uint8 [H,W,3],
        label int32 [])`` in the prepared order (no file shuffling), ``class_names`` comes from
        the ``ClassLabel`` feature.

    Raises:
        TFDSNotPreparedError: not prepared and ``download`` is False (the message says where it
            looked and how to prepare it).
        ValueError: unknown dataset, unknown split, or no Image/ClassLabel feature.
    """
    data_dir = os.path.expanduser(str(data_dir)) if data_dir else None
    builder = _builder(name, data_dir)
    if not builder.is_prepared():
        if not download:
            raise TFDSNotPreparedError(_not_prepared_message(name, builder, data_dir))
        builder.download_and_prepare()
    info = builder.info
    image_key, label_key = _feature_keys(info, name)
    try:
        num_examples = int(info.splits[split].num_examples)
    except (KeyError, ValueError, TypeError) as e:
        raise ValueError(f"TFDS dataset '{name}' has no split '{split}' (data.train_split / "
                         f"data.val_split); available: {sorted(info.splits.keys())} ({e})"
                         ) from None
    ds = builder.as_dataset(split=split, shuffle_files=False)
    ds = ds.map(lambda ex: (_rgb_uint8(ex[image_key]), tf.cast(ex[label_key], tf.int32)),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds, list(info.features[label_key].names), num_examples
