"""Image-folder classification datasets: ``root/{train,val}/<class>/<image>``.

Layouts, in order of preference:

1. ``root/train/<class>/*`` and ``root/val/<class>/*`` (or ``valid/``, Roboflow's export, or
   ``validation/``): used as given.
2. ``root/train/<class>/*`` alone: a seeded, stratified ``val_fraction`` of it is held out.
3. ``root/<class>/*``: the whole set, split the same way.

Class names are the sorted class-folder names of the training folder (a ``val`` class without a
``train`` folder is an error). Files are listed recursively inside each class folder; files
without an image extension, files outside any class folder and hidden folders are reported as
skipped. Every image is checked by :func:`kft.data.images.scan_images` before training.

A classifier needs at least two classes with usable training images: an empty folder, one
without class folders or with a single class is a :class:`FolderError` naming the folder,
raised before any image is read where it can be.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kft.data.images import IMAGE_EXTENSIONS, has_image_extension, scan_images
from kft.data.report import DataReport


class FolderError(ValueError):
    """A folder that cannot be read as a classification dataset; the message names it."""


@dataclass
class ClassificationSplit:
    """One split of a classification dataset.

    ``paths[i]`` is a file ``tf.io.decode_image`` reads (possibly a converted copy of
    ``sources[i]``), ``labels[i]`` an index into ``class_names``.
    """

    paths: list[str]
    labels: list[int]
    class_names: list[str]
    sources: list[str] = field(default_factory=list)

    def __post_init__(self):
        if len(self.paths) != len(self.labels):
            raise ValueError(f"ClassificationSplit: {len(self.paths)} paths but "
                             f"{len(self.labels)} labels")
        if not self.sources:
            self.sources = list(self.paths)

    def __len__(self) -> int:
        return len(self.paths)


def stratified_split(labels, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded per-class hold-out; returns sorted (train indices, val indices).

    Each class with ``n >= 2`` images gives ``max(1, round(n * val_fraction))`` images to
    validation, at most ``n - 1``, so every class keeps a training image and every class with
    two or more images is seen by validation. Classes with one image stay in training. A class's
    split depends only on ``(seed, class label, its file list)``.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction} must be in [0, 1) (data.val_fraction)")
    labels = np.asarray(labels, dtype=np.int64)
    train, val = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n = len(idx)
        k = 0 if n < 2 or val_fraction == 0 else min(n - 1, max(1, math.floor(
            n * val_fraction + 0.5)))
        perm = np.random.default_rng([int(seed), int(c)]).permutation(n)
        val.extend(idx[perm[:k]].tolist())
        train.extend(idx[perm[k:]].tolist())
    return sorted(train), sorted(val)


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name.startswith("__")


def _class_dirs(split_dir: Path, report: DataReport) -> list[str]:
    """Sorted class-folder names of ``split_dir``; stray files and hidden folders reported."""
    names = []
    for entry in sorted(os.scandir(split_dir), key=lambda e: e.name):
        if entry.is_dir():
            if _is_hidden(entry.name):
                report.skip(entry.path, "hidden folder ignored", field="layout")
            else:
                names.append(entry.name)
        else:
            report.skip(entry.path, f"file outside any class folder (expected "
                        f"{split_dir}/<class>/<image>)", field="layout")
    return names


def _class_files(class_dir: Path, report: DataReport) -> list[str]:
    """Image files under ``class_dir`` (recursive, sorted); others reported as skipped."""
    files = []
    for dirpath, dirnames, filenames in os.walk(class_dir):
        for d in [d for d in dirnames if _is_hidden(d)]:
            report.skip(os.path.join(dirpath, d), "hidden folder ignored", field="layout")
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if has_image_extension(name):
                files.append(path)
            else:
                report.skip(path, f"not an image file: extension "
                            f"'{os.path.splitext(name)[1] or name}' is not one of "
                            f"{' '.join(IMAGE_EXTENSIONS)}", field="extension")
    return sorted(files)


def _list_split(split_dir: Path, class_names: list[str], report: DataReport):
    """(files, labels) of ``split_dir`` for the given class folders."""
    files, labels = [], []
    for label, name in enumerate(class_names):
        class_dir = split_dir / name
        if not class_dir.is_dir():
            continue
        found = _class_files(class_dir, report)
        files += found
        labels += [label] * len(found)
    return files, labels


# the validation folder beside train/, first found: kft's and ImageNet's val/, Roboflow's
# valid/, TFDS-style validation/
VAL_FOLDERS = ("val", "valid", "validation")


def folder_layout(root) -> tuple[Path, Path | None]:
    """``(training folder, validation folder or None)`` that :func:`read_image_folder`
    reads for ``root`` (layouts 1-3 of the module docstring)."""
    return _layout(Path(root))


def _layout(root: Path) -> tuple[Path, Path | None]:
    """(training folder, validation folder or None)."""
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a directory "
                                "(data.root)")
    train = root / "train"
    if train.is_dir():  # valid/ and validation/ count only beside train/: alone they may be
        # class folders of a root/<class>/* set (classes "valid" and "invalid")
        return train, next((root / n for n in VAL_FOLDERS if (root / n).is_dir()), None)
    if (root / "val").is_dir():
        raise FolderError(f"{root} has a val/ folder but no train/ folder: expected "
                          f"{root}/train/<class>/<image> (data.root)")
    return root, None


def _no_classes_message(train_dir: Path) -> str:
    loose = sum(1 for e in os.scandir(train_dir) if e.is_file() and has_image_extension(e.name))
    if loose:
        what = (f"has no class folders ({loose} image files lie directly in it: put each "
                f"class's images in a folder of its own)")
    elif not any(os.scandir(train_dir)):
        what = "is empty"
    else:
        what = "has no class folders"
    return f"{train_dir} {what}: expected {train_dir}/<class>/<image files> (data.root)"


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def folder_class_names(root) -> list[str]:
    """The class names :func:`read_image_folder` would give ``root``, from the folder names
    alone (no image is read)."""
    train_dir, _ = _layout(Path(root))
    return _class_dirs(train_dir, DataReport())


def read_image_folder(root, *, val_fraction: float = 0.1, seed: int = 0,
                      report: DataReport | None = None, cache_dir=None, min_side: int = 8,
                      workers: int = 2, min_classes: int = 2
                      ) -> tuple[ClassificationSplit, ClassificationSplit]:
    """Reads an image-folder dataset into (train, val) splits (see the module docstring).

    Args:
        root: dataset folder.
        val_fraction: share held out per class when there is no ``val/`` (``valid/``,
            ``validation/``) folder.
        seed: seed of that hold-out.
        report: receives skipped/converted files and counters (``train_images``,
            ``val_images``, ``classes``); a fresh one when None.
        cache_dir: folder for converted copies (see :func:`kft.data.images.scan_images`).
        min_side: smaller images are skipped.
        workers: threads used to check the images.
        min_classes: fewer class folders, or fewer classes with a usable training image, is
            a :class:`FolderError` (a one-class "classifier" learns nothing).

    Returns:
        (train, val) :class:`ClassificationSplit` with the same ``class_names``.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        FolderError: the layout or the usable images cannot make a classification dataset.
    """
    root = Path(root)
    report = report if report is not None else DataReport()
    train_dir, val_dir = _layout(root)
    class_names = _class_dirs(train_dir, report)
    if not class_names:
        raise FolderError(_no_classes_message(train_dir))
    if len(class_names) < min_classes:
        raise FolderError(f"{train_dir} has {_count(len(class_names), 'class folder')} "
                          f"({', '.join(class_names)}): a classifier needs at least "
                          f"{min_classes} classes, {train_dir}/<class>/<image files> (data.root)")
    if val_dir is not None:
        extra = sorted(set(_class_dirs(val_dir, report)) - set(class_names))
        if extra:
            raise FolderError(f"{val_dir} has class folders {extra} that {train_dir} lacks: "
                              "every validation class needs training images")
    train_files, train_labels = _list_split(train_dir, class_names, report)
    val_files, val_labels = ([], []) if val_dir is None else _list_split(
        val_dir, class_names, report)

    usable = scan_images(train_files + val_files, cache_dir, report, min_side, workers)
    train = _keep(train_files, train_labels, usable[:len(train_files)], class_names)
    val = _keep(val_files, val_labels, usable[len(train_files):], class_names)
    if val_dir is None:
        tr_idx, va_idx = stratified_split(train.labels, val_fraction, seed)
        train, val = _subset(train, tr_idx), _subset(train, va_idx)
    if not train.paths:
        raise FolderError(f"{train_dir} has no usable training images "
                          f"({report.to_dict()['num_skipped']} files skipped, see the data report)")
    present = set(train.labels)
    if len(present) < min_classes:
        names = [class_names[i] for i in sorted(present)]
        raise FolderError(f"{train_dir}: usable training images in only "
                          f"{_count(len(present), 'class', 'classes')} "
                          f"({', '.join(names)}; {report.to_dict()['num_skipped']} files "
                          f"skipped, see the data report): a classifier needs at least "
                          f"{min_classes}")
    for label, name in enumerate(class_names):
        if label not in present:
            report.skip(train_dir / name, f"class '{name}' has no usable training image: it "
                        "stays in class_names but cannot be learned", field="class")
    report.count("classes", len(class_names))
    report.count("train_images", len(train))
    report.count("val_images", len(val))
    return train, val


def _keep(files, labels, usable, class_names) -> ClassificationSplit:
    keep = [i for i, p in enumerate(usable) if p is not None]
    return ClassificationSplit([usable[i] for i in keep], [labels[i] for i in keep],
                               list(class_names), [files[i] for i in keep])


def _subset(split: ClassificationSplit, idx) -> ClassificationSplit:
    return ClassificationSplit([split.paths[i] for i in idx], [split.labels[i] for i in idx],
                               list(split.class_names), [split.sources[i] for i in idx])
