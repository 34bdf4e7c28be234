"""The record every detection reader returns, and the checks the readers share.

A :class:`DetectionRecord` describes one image on the Python side, before tf.data:

* ``boxes``: float32 ``[N, 4]`` ``xyxy`` in absolute pixels of the image *as displayed* (EXIF
  orientation applied), half-open: a box ``[x1, y1, x2, y2]`` covers ``x1 <= x < x2``. VOC's
  1-based inclusive ``xmin..xmax`` becomes ``xmin - 1 .. xmax``; COCO's ``[x, y, w, h]`` becomes
  ``[x, y, x + w, y + h]``.
* ``labels``: int32 ``[N]``, 0-based, contiguous, indexing ``DetectionSplit.class_names``.
* ``difficult``, ``iscrowd``: bool ``[N]``.
* ``segmentation``: ``None`` (boxes only) or one entry per object: a COCO polygon list
  (``[[x0, y0, x1, y1, ...], ...]``), a COCO RLE dict (compressed or not) or ``None`` for an
  object without one. Decoded by :func:`decode_masks` on request.
* ``image_path``: a file ``tf.io.decode_image(channels=3)`` decodes upright: the user's file, or
  a converted copy made by :func:`kft.data.images.scan_images` (EXIF rotation, CMYK, alpha, ...);
  ``source_path`` is then the user's file.

Problems found while reading go into a :class:`~kft.data.report.DataReport`:

* ``report.skip(path, reason, field)``: something left out. ``path`` is the annotation file (or
  the image file), ``field`` says where inside it, e.g. ``"object[2].bndbox.xmax"`` or
  ``"annotations[17].bbox"``.
* ``report.convert(path, reason)`` (``to=None``): something used after a correction, e.g. a box
  clipped to the image, or an image size taken from the image instead of the annotation. The
  reason starts with the field.
* ``report.count(key)``: totals; see :data:`COUNT_KEYS`.

Lost objects are never silent in the Python API either: a reader hands a :class:`LossCheck`
to :func:`finish_split`, which raises :class:`AnnotationsLostError` when the call kept no
object although the files had some (all with unknown class names, say) and warns when more
than half were dropped.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from kft.data.images import scan_images, to_rgb
from kft.data.report import DataReport

CHECK_IMAGES = ("full", "header")
CLASS_NAMES_SOURCES = ("given", "voc", "inferred", "file", "fixed")
# Counters of objects a reader found in the files but did not keep (difficult_excluded is the
# caller's choice and Cityscapes' ignored labels are by design, so neither counts as lost).
LOST_KEYS = {
    "objects_unknown_class": "with a class not in class_names",
    "objects_invalid": "with a missing or unusable field",
    "boxes_degenerate": "with a zero or negative width/height",
    "boxes_outside": "with a box outside the image",
    "objects_dropped_with_image": "with their image or annotation file (missing/unreadable)",
}
WARN_LOST_SHARE = 0.5
COUNT_KEYS = {
    "images": "records returned",
    "objects": "objects returned",
    "images_without_objects": "records kept with no objects (background images)",
    "images_missing": "image files that do not exist (record skipped)",
    "images_unreadable": "image files whose header PIL cannot read (record skipped)",
    "images_skipped": "records dropped because scan_images skipped their image",
    "objects_dropped_with_image": "objects lost with a skipped image or annotation file",
    "image_size_mismatch": "annotation size differs from the image: the image size is used",
    "image_size_missing": "annotation without a usable size: the image size is used",
    "annotation_files_missing": "annotation files that do not exist",
    "annotation_files_malformed": "annotation files that cannot be parsed (skipped)",
    "objects_unknown_class": "objects whose class is not in class_names (skipped)",
    "objects_invalid": "objects with a missing or unusable field (skipped)",
    "boxes_clipped": "boxes partly outside the image, clipped",
    "boxes_degenerate": "boxes with zero or negative width/height (skipped)",
    "boxes_outside": "boxes entirely outside the image (skipped)",
    "segmentations_invalid": "segmentations (or polygons) left out as unusable",
    "difficult_excluded": "difficult objects dropped by exclude_difficult=True",
    "objects_ignored_label": "Cityscapes objects of a label without instances (road, ...)",
    "objects_deleted": "Cityscapes objects marked 'deleted'",
    "crowd_as_difficult": "coco_to_voc: crowd objects written as difficult",
    "images_without_label_file": "YOLO images without a label file (background images)",
    "label_files_without_image": "YOLO label files whose image does not exist (skipped)",
    "files_not_images": "YOLO: files in an image folder that are not images (skipped)",
    "categories_dropped": "COCO categories left out of class_names (Roboflow's dataset name)",
    "crowd_skipped": "write_yolo: crowd regions not written (YOLO has no crowd flag)",
    "difficult_as_plain": "write_yolo: difficult objects written as ordinary ones",
}  # plus scan_images' own "scanned", "usable", "converted", "skipped"
_EXIF_ORIENTATION = 0x0112
_AS_IS_MODES = ("L", "RGB")
_AS_IS_FORMATS = ("JPEG", "PNG")


class AnnotationError(ValueError):
    """An annotation problem that stops reading: the message names the file and the field."""

    def __init__(self, path, field_name: str | None, message: str):
        self.path, self.field = str(path), field_name
        where = f"{path}" + (f" [{field_name}]" if field_name else "")
        super().__init__(f"{where}: {message}")


@dataclass
class DetectionRecord:
    """One image and its objects; see the module docstring for the conventions.

    ``image_id`` is unique within a split (COCO: the JSON id; VOC: ``"VOC2007/000005"``;
    Cityscapes: ``"aachen_000000_000019"``). ``height``/``width`` are the displayed image size.
    """

    image_path: str
    image_id: int | str
    height: int
    width: int
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    iscrowd: np.ndarray
    segmentation: list | None = None
    source_path: str | None = None
    annotation_path: str | None = None

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4)
        n = len(self.boxes)
        self.labels = np.asarray(self.labels, np.int32).reshape(n)
        self.difficult = np.asarray(self.difficult, bool).reshape(n)
        self.iscrowd = np.asarray(self.iscrowd, bool).reshape(n)
        if self.segmentation is not None and len(self.segmentation) != n:
            raise ValueError(f"{self.image_path}: {len(self.segmentation)} segmentations for "
                             f"{n} boxes")

    @property
    def num_objects(self) -> int:
        return len(self.boxes)


@dataclass
class DetectionSplit:
    """What a reader returns: records, class names (index = label) and the report.

    ``label_to_category`` maps a 0-based label back to the dataset's own category id (COCO),
    ``None`` when the dataset has none (VOC, Cityscapes, YOLO).

    ``class_names_source`` says where ``class_names`` come from: ``"given"`` (the caller's),
    ``"voc"`` (the 20 VOC classes, because every annotated name is one), ``"inferred"`` (the
    sorted names found in the annotations), ``"file"`` (the dataset's own list: COCO
    ``categories``, YOLO ``data.yaml``) or ``"fixed"`` (the reader's list: Cityscapes).
    ``image_dir`` is the folder the images were found in (``None`` when the reader has no one
    folder) and ``layout_note`` one line saying how the reader found its files, for a caller to
    print (``"images of train: data/x/images (CVAT layout)"``), or ``None``.
    """

    records: list[DetectionRecord]
    class_names: list[str]
    label_to_category: dict[int, int] | None
    report: DataReport
    class_names_source: str = "given"
    image_dir: str | None = None
    layout_note: str | None = None

    def __len__(self) -> int:
        return len(self.records)

    @property
    def num_objects(self) -> int:
        return sum(r.num_objects for r in self.records)

    def subset(self, indices) -> DetectionSplit:
        """The split restricted to ``records[i]`` for ``i`` in ``indices`` (same classes; the
        report stays with the whole split)."""
        return dataclasses.replace(self, records=[self.records[int(i)] for i in indices],
                                   class_names=list(self.class_names), report=DataReport())

    def holdout(self, fraction: float, seed: int) -> tuple[DetectionSplit, DetectionSplit]:
        """``(rest, held out)``: a seeded random ``fraction`` of the images (at least one,
        and at least one left), e.g. the model-selection slice of a training split (D9)."""
        n = len(self.records)
        if n < 2:
            raise ValueError(f"cannot hold out images from a split of {n} image(s)")
        k = min(max(1, int(round(n * float(fraction)))), n - 1)
        order = np.random.default_rng(seed).permutation(n)
        return self.subset(np.sort(order[k:])), self.subset(np.sort(order[:k]))


def align_classes(train: DetectionSplit, other: DetectionSplit, train_source: str,
                  other_source: str) -> DetectionSplit:
    """``other`` with labels in ``train``'s class order (a by-name remap), so that the model's
    label ``i`` means the same class in both; its ``label_to_category`` keeps ``other``'s own
    category ids for evaluation.

    Raises ``ValueError`` naming both sources when ``other`` has classes ``train`` lacks (a
    model cannot be scored on a class it never learnt). Classes of ``train`` absent from
    ``other`` are allowed (they have no ground truth there)."""
    if list(other.class_names) == list(train.class_names):
        return other
    extra = [c for c in other.class_names if c not in train.class_names]
    if extra:
        raise ValueError(
            f"class mismatch: {other_source} has classes {extra} that {train_source} lacks "
            f"(train classes: {list(train.class_names)}; {other_source}: "
            f"{list(other.class_names)}). Use category lists that agree, or drop those "
            "classes from the validation annotations")
    index = np.array([train.class_names.index(c) for c in other.class_names], np.int32)
    records = [dataclasses.replace(r, labels=index[r.labels] if len(r.labels) else r.labels)
               for r in other.records]
    own = other.label_to_category
    categories = None
    if own is not None:
        by_name = {c: own[i] for i, c in enumerate(other.class_names)}
        # classes only in train get ids after every real one (they have no ground truth)
        spare = iter(range(max(by_name.values(), default=0) + 1, 1 << 30))
        categories = {i: int(by_name[c]) if c in by_name else next(spare)
                      for i, c in enumerate(train.class_names)}
    return dataclasses.replace(other, records=records, class_names=list(train.class_names),
                               label_to_category=categories,
                               class_names_source=train.class_names_source)


@dataclass
class ObjectList:
    """Objects of one image, gathered while an annotation file is read."""

    boxes: list = field(default_factory=list)
    labels: list = field(default_factory=list)
    difficult: list = field(default_factory=list)
    iscrowd: list = field(default_factory=list)
    segmentation: list = field(default_factory=list)

    def add(self, box, label: int, difficult=False, iscrowd=False, segmentation=None) -> None:
        self.boxes.append(box)
        self.labels.append(label)
        self.difficult.append(bool(difficult))
        self.iscrowd.append(bool(iscrowd))
        self.segmentation.append(segmentation)

    def record(self, image_path, image_id, height, width, *, with_segmentation=False,
               annotation_path=None) -> DetectionRecord:
        """The :class:`DetectionRecord`; ``segmentation`` is ``None`` unless
        ``with_segmentation`` (then one entry per object, ``None`` where an object has none)."""
        return DetectionRecord(
            image_path=str(image_path), image_id=image_id, height=int(height),
            width=int(width), boxes=np.array(self.boxes, np.float32).reshape(-1, 4),
            labels=np.array(self.labels, np.int32), difficult=np.array(self.difficult, bool),
            iscrowd=np.array(self.iscrowd, bool),
            segmentation=list(self.segmentation) if with_segmentation else None,
            annotation_path=None if annotation_path is None else str(annotation_path))


def to_number(value) -> float | None:
    """A finite float from an annotation value (number or numeric text), else ``None``.

    ``bool`` is refused (``True`` is not a coordinate); ``"12"``, ``" 12.5 "``, ``7`` pass.
    """
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def describe_value(value) -> str:
    """Short text for a bad value in a report line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def unknown_class(message: str, known, *, path, field_name: str, report: DataReport,
                  strict: bool, loss: LossCheck | None = None, name=None) -> None:
    """An object whose class is not among the split's classes: raises :class:`AnnotationError`
    when ``strict``, otherwise reports the skip (counted as ``objects_unknown_class``) and
    notes the unknown ``name`` (class name, category id or class index) in ``loss``."""
    if strict:
        raise AnnotationError(path, field_name, f"{message}; known: {sorted(known)}")
    report.skip(path, message, field=field_name)
    report.count("objects_unknown_class")
    if loss is not None:
        loss.unknown(name)


class AnnotationsLostError(ValueError):
    """A reader call kept no object although its files had some; ``report`` holds every
    skipped object with its file and field."""

    def __init__(self, message: str, report: DataReport):
        super().__init__(message)
        self.report = report


class LossCheck:
    """Counts what one reader call lost, as differences of the report's counters (so a report
    shared by several calls is fine), and refuses or warns when it is too much.

    ``source`` names what was read in the messages (a split file, a JSON file, a folder);
    ``unknown_hint`` is appended when every lost object had an unknown class
    (``"pass class_names=None to infer them"``); ``class_word`` names the unknown values
    (``"class names"``, ``"category ids"``, ``"class indices"``).
    """

    def __init__(self, report: DataReport, source, *, unknown_hint: str = "",
                 class_word: str = "class names"):
        self.report, self.source = report, str(source)
        self.unknown_hint, self.class_word = unknown_hint, class_word
        self._counts = dict(report.counts)
        self._first_skip = len(report.skipped)
        self.unknown_names: Counter = Counter()

    def unknown(self, name) -> None:
        """Notes one object whose class ``name`` is unknown (shown as an example)."""
        self.unknown_names[name] += 1

    def delta(self, key: str) -> int:
        """How much counter ``key`` grew since this check was made."""
        return self.report.counts.get(key, 0) - self._counts.get(key, 0)

    def lost(self) -> dict[str, int]:
        """``{counter: objects lost}`` for the :data:`LOST_KEYS` that grew."""
        return {k: n for k in LOST_KEYS if (n := self.delta(k)) > 0}

    def _examples(self, limit: int = 3) -> str:
        entries = self.report.skipped[self._first_skip:][:limit]
        return "; ".join(f"{e['path']}" + (f" [{e['field']}]" if e["field"] else "")
                         + f": {e['reason']}" for e in entries)

    def _names(self, limit: int = 5) -> str:
        names = [repr(n) for n, _ in self.unknown_names.most_common(limit)]
        more = len(self.unknown_names) - len(names)
        return ", ".join(names) + (f" and {more} more" if more > 0 else "")

    def message(self, kept: int) -> str | None:
        """Why this call lost objects (``None`` when it lost none)."""
        lost = self.lost()
        dropped = sum(lost.values())
        if not dropped:
            return None
        found = kept + dropped
        head = f"all {found}" if kept == 0 else f"{dropped} of {found}"
        if set(lost) == {"objects_unknown_class"} and self.unknown_names:
            text = (f"{head} objects of {self.source} have {self.class_word} not in "
                    f"class_names: {self._names()}")
            return text + (f"; {self.unknown_hint}" if self.unknown_hint else "")
        parts = [f"{n} {LOST_KEYS[k]}" + (f" ({self._names()})"
                                          if k == "objects_unknown_class" and
                                          self.unknown_names else "")
                 for k, n in lost.items()]
        text = f"{head} objects of {self.source} were dropped: " + ", ".join(parts)
        if "objects_unknown_class" in lost and self.unknown_hint:
            text += f"; {self.unknown_hint}"
        examples = self._examples()
        return text + (f"; e.g. {examples}" if examples else "")

    def check(self, kept: int) -> None:
        """Raises :class:`AnnotationsLostError` when ``kept == 0`` and objects were lost;
        ``warnings.warn`` when more than :data:`WARN_LOST_SHARE` of them were."""
        text = self.message(kept)
        if text is None:
            return
        dropped = sum(self.lost().values())
        if kept == 0:
            raise AnnotationsLostError(text + " (every skip is in the split's report: "
                                       "DataReport.skipped)", self.report)
        if dropped > WARN_LOST_SHARE * (kept + dropped):
            warnings.warn(text, UserWarning, stacklevel=4)


def check_box(box, height: int, width: int, *, path, field_name: str,
              report: DataReport) -> np.ndarray | None:
    """Validates one ``xyxy`` half-open pixel box against a ``height x width`` image.

    Returns the box as float32 ``[4]``, clipped to ``[0, width] x [0, height]`` (reported), or
    ``None`` when it is dropped (reported): any coordinate not finite, ``x2 <= x1`` or
    ``y2 <= y1`` (degenerate or negative), or nothing left inside the image.
    """
    values = [to_number(v) for v in box]
    if any(v is None for v in values):
        report.skip(path, f"box {describe_value(list(box))} has a coordinate that is not a "
                    "finite number", field=field_name)
        report.count("objects_invalid")
        return None
    x1, y1, x2, y2 = values
    if x2 <= x1 or y2 <= y1:
        report.skip(path, f"degenerate or negative box xyxy={_fmt_box(values)} (width "
                    f"{x2 - x1:g}, height {y2 - y1:g})", field=field_name)
        report.count("boxes_degenerate")
        return None
    clipped = [min(max(x1, 0.0), width), min(max(y1, 0.0), height),
               min(max(x2, 0.0), width), min(max(y2, 0.0), height)]
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        report.skip(path, f"box xyxy={_fmt_box(values)} lies outside the {width}x{height} "
                    "image", field=field_name)
        report.count("boxes_outside")
        return None
    if clipped != values:
        report.convert(path, f"{field_name}: box xyxy={_fmt_box(values)} extends outside the "
                       f"{width}x{height} image, clipped to {_fmt_box(clipped)}")
        report.count("boxes_clipped")
    return np.array(clipped, np.float32)


def _fmt_box(values) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


@dataclass(frozen=True)
class ImageHeader:
    """What PIL reads from an image header without decoding pixels.

    ``width``/``height``: the displayed size (swapped for EXIF orientations 5-8).
    ``needs_scan``: the file may need a converted copy (not a plain RGB/grayscale JPEG or PNG,
    or EXIF-rotated, or with a transparency entry).
    """

    width: int
    height: int
    orientation: int
    needs_scan: bool


def read_image_header(path) -> ImageHeader:
    """Opens ``path`` lazily with PIL (no pixel decoding). Raises ``OSError`` /
    ``UnidentifiedImageError`` for files PIL cannot identify."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(path) as im:
            width, height = im.size
            try:
                orientation = int(im.getexif().get(_EXIF_ORIENTATION, 1) or 1)
            except Exception:  # a corrupt EXIF block: scan_images has the last word
                orientation = 1
            needs_scan = (im.format not in _AS_IS_FORMATS or im.mode not in _AS_IS_MODES
                          or orientation != 1 or "transparency" in im.info)
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return ImageHeader(width, height, orientation, needs_scan)


def image_header(path, report: DataReport) -> ImageHeader | None:
    """:func:`read_image_header`, or ``None`` with the reason in ``report`` (missing file, not
    an image)."""
    if not os.path.isfile(path):
        report.skip(path, "image file not found", field="image")
        report.count("images_missing")
        return None
    try:
        if os.path.getsize(path) == 0:
            raise OSError("empty file (0 bytes)")
        return read_image_header(path)
    except UnidentifiedImageError:
        reason = "not an image PIL can identify"
    except Exception as e:  # any header failure skips this image, never the whole read
        reason = f"cannot read the image header ({type(e).__name__}: {e})"
    report.skip(path, reason, field="decode")
    report.count("images_unreadable")
    return None


def verified_size(header: ImageHeader, height, width, *, image_path, annotation_path,
                  field_name: str, report: DataReport) -> tuple[int, int]:
    """``(height, width)`` to use: the image's own. An annotated size that is missing or
    differs is reported (the image wins)."""
    h, w = to_number(height), to_number(width)
    if h is None or w is None or h <= 0 or w <= 0:
        report.convert(annotation_path, f"{field_name}: no usable image size "
                       f"(height={describe_value(height)}, width={describe_value(width)}): "
                       f"the size of {image_path} is used ({header.width}x{header.height})")
        report.count("image_size_missing")
    elif (int(h), int(w)) != (header.height, header.width):
        note = (f"; the image has EXIF orientation {header.orientation}, so the annotation "
                "may describe the stored (unrotated) pixels" if header.orientation != 1 else "")
        report.convert(annotation_path, f"{field_name}: annotation says {int(w)}x{int(h)} "
                       f"but {image_path} is {header.width}x{header.height} (width x height, "
                       f"as displayed): the image size is used and boxes are clipped to it"
                       f"{note}")
        report.count("image_size_mismatch")
    return header.height, header.width


def finish_split(records: list[DetectionRecord], needs_scan: list[bool], class_names,
                 label_to_category, report: DataReport, check_images: str = "full",
                 cache_dir=None, *, loss: LossCheck | None = None,
                 class_names_source: str = "fixed", image_dir=None,
                 layout_note: str | None = None) -> DetectionSplit:
    """Runs :func:`kft.data.images.scan_images` over the records' images and returns the split.

    With ``loss`` (made when the reader started), :meth:`LossCheck.check` runs on the kept
    objects: :class:`AnnotationsLostError` when none is left although the files had some, a
    warning when most were dropped. ``class_names_source``, ``image_dir`` and ``layout_note``
    go to the :class:`DetectionSplit`.

    ``check_images="full"``: every image is decoded once with PIL (finds truncated files;
    slow on COCO-sized sets). ``"header"``: only images whose header asks for it (``needs_scan``)
    are decoded and converted; the others were checked by their header only. Records whose
    image is skipped are dropped (``images_skipped``, ``objects_dropped_with_image``); converted
    ones point ``image_path`` at the converted copy and keep ``source_path``.
    """
    if check_images not in CHECK_IMAGES:
        raise ValueError(f"check_images={check_images!r}: expected one of {CHECK_IMAGES}")
    todo = [i for i, r in enumerate(records) if check_images == "full" or needs_scan[i]]
    paths = scan_images([records[i].image_path for i in todo], cache_dir=cache_dir,
                        report=report, min_side=1)
    dropped = set()
    for i, path in zip(todo, paths, strict=True):
        record = records[i]
        if path is None:
            dropped.add(i)
            report.count("images_skipped")
            report.count("objects_dropped_with_image", record.num_objects)
        elif path != record.image_path:
            record.source_path, record.image_path = record.image_path, path
    kept = [r for i, r in enumerate(records) if i not in dropped]
    num_objects = sum(r.num_objects for r in kept)
    report.count("images", len(kept))
    report.count("objects", num_objects)
    report.count("images_without_objects", sum(r.num_objects == 0 for r in kept))
    if class_names_source not in CLASS_NAMES_SOURCES:
        raise ValueError(f"class_names_source={class_names_source!r}: expected one of "
                         f"{CLASS_NAMES_SOURCES}")
    if loss is not None:
        loss.check(num_objects)
    return DetectionSplit(kept, list(class_names), label_to_category, report,
                          class_names_source=class_names_source,
                          image_dir=None if image_dir is None else str(image_dir),
                          layout_note=layout_note)


def load_image(record: DetectionRecord) -> np.ndarray:
    """The record's image as uint8 ``[H, W, 3]`` RGB, upright (EXIF applied), via PIL.

    Raises ``ValueError`` naming the file when its size differs from the record's.
    """
    with Image.open(record.image_path) as im:
        im.load()
        image = np.asarray(to_rgb(ImageOps.exif_transpose(im)))
    if image.shape[:2] != (record.height, record.width):
        raise ValueError(f"{record.image_path}: decoded size {image.shape[1]}x{image.shape[0]} "
                         f"differs from the record's {record.width}x{record.height}")
    return image


def decode_masks(record: DetectionRecord) -> np.ndarray:
    """Instance masks uint8 ``[N, H, W]`` (0/1) at the record's size, via pycocotools.

    Polygons are rasterised at ``(height, width)``; RLE dicts (compressed or uncompressed)
    are decoded. An object without a segmentation (or a record with ``segmentation=None``) gets
    an all-zero mask.
    """
    from pycocotools import mask as mask_utils

    h, w = record.height, record.width
    masks = np.zeros((record.num_objects, h, w), np.uint8)
    for i, seg in enumerate(record.segmentation or []):
        if seg is None:
            continue
        if isinstance(seg, dict):
            rle = dict(seg)
            if isinstance(rle["counts"], list):
                rle = mask_utils.frPyObjects(rle, h, w)
            elif isinstance(rle["counts"], str):
                rle["counts"] = rle["counts"].encode("ascii")
        else:
            rle = mask_utils.merge(mask_utils.frPyObjects([list(p) for p in seg], h, w))
        masks[i] = mask_utils.decode(rle)
    return masks


def to_example(record: DetectionRecord, with_masks: bool = False) -> dict:
    """A decoded example (DESIGN.md): ``{"image": uint8[H,W,3], "image_id", "boxes":
    f32[N,4], "labels": i32[N], "difficult": bool[N], "iscrowd": bool[N]}`` plus ``"masks":
    uint8[N,H,W]`` when ``with_masks``."""
    example = {"image": load_image(record), "image_id": record.image_id,
               "boxes": record.boxes, "labels": record.labels,
               "difficult": record.difficult, "iscrowd": record.iscrowd}
    if with_masks:
        example["masks"] = decode_masks(record)
    return example


def rle_string_counts(counts: str) -> list[int] | None:
    """Run lengths of a compressed COCO RLE string, or ``None`` when the string is malformed.

    The format (pycocotools' ``rleToString``): each run is a little-endian sequence of 5-bit
    groups written as ``chr(48 + group)``, bit 0x20 meaning "more groups follow", the last
    group's bit 0x10 the sign; from the third run on, runs are stored as the difference to the
    run two places earlier.
    """
    runs: list[int] = []
    pos = 0
    while pos < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if pos >= len(counts):
                return None
            group = ord(counts[pos]) - 48
            if not 0 <= group < 64:
                return None
            value |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            pos += 1
            shift += 5
            if not more and group & 0x10:
                value |= -1 << shift
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def check_rle(seg: dict, height: int, width: int) -> str | None:
    """Why a COCO RLE dict cannot be decoded at ``height x width``, or ``None`` when it can."""
    size, counts = seg.get("size"), seg.get("counts")
    if (not isinstance(size, list | tuple) or len(size) != 2
            or [to_number(v) for v in size] != [height, width]):
        return f"RLE size {describe_value(size)} is not the image's [height, width] " \
               f"[{height}, {width}]"
    if isinstance(counts, str):
        runs = rle_string_counts(counts)
    elif isinstance(counts, list) and all(isinstance(c, int) and not isinstance(c, bool)
                                          for c in counts):
        runs = counts
    else:
        return f"RLE counts must be a string or a list of integers, got " \
               f"{type(counts).__name__}"
    if runs is None:
        return "RLE counts string is malformed"
    if any(r < 0 for r in runs) or sum(runs) != height * width:
        return f"RLE run lengths sum to {sum(runs)} (or are negative), expected " \
               f"{height} * {width} = {height * width}"
    return None


def check_polygons(seg: list, *, path, field_name: str, report: DataReport) -> list | None:
    """Keeps the usable polygons of a COCO polygon list (each a flat ``[x0, y0, x1, y1, ...]``
    with at least 3 points, all finite numbers); every dropped polygon is reported. ``None``
    when none is left."""
    kept = []
    for j, poly in enumerate(seg):
        where = f"{field_name}[{j}]"
        if not isinstance(poly, list | tuple):
            reason = f"polygon is a {type(poly).__name__}, not a list of coordinates"
        elif any(to_number(v) is None for v in poly):
            reason = "polygon has a coordinate that is not a finite number"
        elif len(poly) % 2:
            reason = f"polygon has an odd number of coordinates ({len(poly)})"
        elif len(poly) < 6:
            reason = f"polygon has {len(poly) // 2} points (at least 3 needed)"
        else:
            kept.append([float(v) for v in poly])
            continue
        report.skip(path, reason, field=where)
        report.count("segmentations_invalid")
    return kept or None
