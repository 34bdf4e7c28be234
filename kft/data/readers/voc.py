"""Pascal VOC detection as it ships: ``VOCdevkit/VOC2007``, ``VOC2012`` or any folder with
``Annotations/``, ``JPEGImages/`` and ``ImageSets/Main/<split>.txt``.

``read_voc(["VOCdevkit/VOC2007", "VOCdevkit/VOC2012"], split="trainval")`` combines roots (the
usual 07+12 training set); image ids are ``"<root folder name>/<image stem>"``
(``"VOC2007/000005"``), unique across roots.

Conventions (see :mod:`kft.data.readers.detection`): VOC's 1-based inclusive pixel box
``xmin..xmax`` becomes the half-open ``[xmin - 1, xmax)``; boxes describe the image as displayed
(EXIF orientation applied); the image size comes from the image file (its header), and an XML
``<size>`` that disagrees is reported. ``difficult`` objects are kept with a flag unless
``exclude_difficult=True``. Unknown class names skip the object (reported with file and name),
or raise with ``strict=True``.

Class names: ``class_names=None`` infers them (:func:`infer_voc_class_names`): the 20
:data:`VOC_CLASSES` when every annotated object name is one of them, else the sorted set of
names found in the split's annotations (a custom-class folder exported by CVAT, LabelImg or
Roboflow). A call that keeps no object although the files had some raises
:class:`~kft.data.readers.detection.AnnotationsLostError`; one that drops most of them warns.
"""

from __future__ import annotations

import os
from pathlib import Path
from xml.etree import ElementTree as ET

from kft.data.readers.detection import (
    DetectionRecord,
    DetectionSplit,
    LossCheck,
    ObjectList,
    check_box,
    describe_value,
    finish_split,
    image_header,
    to_number,
    unknown_class,
    verified_size,
)
from kft.data.readers.layout import SplitNotFoundError
from kft.data.report import DataReport

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
VOC_LAYOUT = ("Annotations", "JPEGImages", "ImageSets/Main")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")
_BOX_TAGS = ("xmin", "ymin", "xmax", "ymax")


def check_voc_root(root) -> Path:
    """``root`` as a Path after checking the VOC layout; the error lists what is missing and,
    for a ``VOCdevkit`` folder, the year folders to pass instead."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"VOC root {root} does not exist or is not a folder")
    missing = [d for d in VOC_LAYOUT if not (root / d).is_dir()]
    if not missing:
        return root
    years = sorted(p.name for p in root.iterdir()
                   if p.is_dir() and all((p / d).is_dir() for d in VOC_LAYOUT))
    hint = (f"; it holds VOC folders {years}: pass roots=[{', '.join(str(root / y) for y in years)}]"
            if years else f"; it contains {sorted(p.name for p in root.iterdir())[:20]}")
    raise FileNotFoundError(f"{root} is not a VOC folder: missing {missing}{hint}")


def available_splits(root) -> list[str]:
    """Split names in ``root/ImageSets/Main`` (``train``, ``val``, ...; per-class files like
    ``aeroplane_train.txt`` left out)."""
    main = Path(root) / "ImageSets" / "Main"
    names = [p.stem for p in main.glob("*.txt")] if main.is_dir() else []
    return sorted(n for n in names if "_" not in n) or sorted(names)


def read_split_ids(root, split: str, report: DataReport) -> list[str]:
    """Image stems listed in ``root/ImageSets/Main/<split>.txt`` (first column, blank lines
    ignored, repeated ids reported once and dropped)."""
    path = Path(root) / "ImageSets" / "Main" / f"{split}.txt"
    if not path.is_file():
        raise SplitNotFoundError(f"VOC split file {path} does not exist; splits in "
                                f"{path.parent}: {available_splits(root)}")
    ids, seen = [], set()
    for line_no, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if parts[0] in seen:
            report.skip(path, f"image id {parts[0]!r} listed again on line {line_no}",
                        field=f"line {line_no}")
            continue
        seen.add(parts[0])
        ids.append(parts[0])
    return ids


def _object_names(xml: Path) -> set[str]:
    """The non-empty ``<object><name>`` texts of one annotation file (empty when it cannot be
    read: the reader reports that)."""
    try:
        tree = ET.parse(xml).getroot()
    except (ET.ParseError, OSError, UnicodeDecodeError):
        return set()
    return {(o.findtext("name") or "").strip() for o in tree.iter("object")} - {""}


def infer_voc_class_names(roots, splits) -> list[str]:
    """Class names for VOC folders: :data:`VOC_CLASSES` (in their usual order) when every
    object name in the annotations of ``splits`` (``ImageSets/Main/<split>.txt``) of every root
    is a VOC class, else the sorted set of names found.

    ``roots``: a folder or a list; ``splits``: a name or a list (pass train and val together so
    both get the same labels). Missing split files and unreadable annotations are left for
    :func:`read_voc` to report.
    """
    roots = [roots] if isinstance(roots, str | os.PathLike) else list(roots)
    splits = [splits] if isinstance(splits, str) else list(splits)
    found: set[str] = set()
    for root in map(Path, roots):
        for split in splits:
            ids_file = root / "ImageSets" / "Main" / f"{split}.txt"
            if not ids_file.is_file():
                continue
            for line in ids_file.read_text(errors="replace").splitlines():
                parts = line.split()
                if parts:
                    found |= _object_names(root / "Annotations" / f"{parts[0]}.xml")
    return list(VOC_CLASSES) if found <= set(VOC_CLASSES) else sorted(found)


def find_image(root: Path, stem: str, xml_filename: str | None) -> Path:
    """``JPEGImages/<stem>.jpg``, else the XML's ``<filename>``, else ``<stem>`` with another
    image suffix; the ``.jpg`` path when none exists (so the report names the expected file)."""
    folder = root / "JPEGImages"
    candidates = [folder / f"{stem}.jpg"]
    if xml_filename:
        candidates.append(folder / os.path.basename(xml_filename.strip()))
    candidates += [folder / f"{stem}{s}" for s in IMAGE_SUFFIXES]
    return next((p for p in candidates if p.is_file()), candidates[0])


def parse_difficult(obj: ET.Element, *, path, field_name: str, report: DataReport) -> bool:
    """``<difficult>``: missing -> False; ``0``/``1`` (``true``/``false``); anything else is
    reported and read as False."""
    text = obj.findtext("difficult")
    if text is None:
        return False
    value = text.strip().lower()
    if value in ("1", "true"):
        return True
    if value not in ("0", "false", ""):
        report.convert(path, f"{field_name}: difficult={describe_value(text)} is not 0 or 1: "
                       "read as 0")
    return False


def parse_bndbox(obj: ET.Element, *, path, field_name: str,
                 report: DataReport) -> list[float] | None:
    """The object's box as half-open ``xyxy`` (VOC 1-based inclusive -> ``[xmin-1, ymin-1,
    xmax, ymax]``), or ``None`` when ``<bndbox>`` or one of its fields is missing or not a
    finite number (reported)."""
    bndbox = obj.find("bndbox")
    if bndbox is None:
        report.skip(path, "object has no <bndbox>", field=f"{field_name}.bndbox")
        report.count("objects_invalid")
        return None
    values = []
    for tag in _BOX_TAGS:
        text = bndbox.findtext(tag)
        number = to_number(text)
        if number is None:
            what = "missing" if text is None else f"not a finite number: {describe_value(text)}"
            report.skip(path, f"<{tag}> is {what}", field=f"{field_name}.bndbox.{tag}")
            report.count("objects_invalid")
            return None
        values.append(number)
    xmin, ymin, xmax, ymax = values
    return [xmin - 1.0, ymin - 1.0, xmax, ymax]


def parse_objects(tree: ET.Element, height: int, width: int, class_index: dict[str, int], *,
                  path, report: DataReport, strict: bool, exclude_difficult: bool,
                  loss: LossCheck | None = None) -> ObjectList:
    """Every usable ``<object>`` of one annotation; the others are reported and skipped
    (unknown names also noted in ``loss``)."""
    objects = ObjectList()
    for i, obj in enumerate(tree.findall("object")):
        where = f"object[{i}]"
        name = (obj.findtext("name") or "").strip()
        if not name:
            report.skip(path, "object has no <name>", field=f"{where}.name")
            report.count("objects_invalid")
            continue
        if name not in class_index:
            message = f"unknown class name {name!r} (not in class_names)"
            unknown_class(message, class_index, path=path, field_name=f"{where}.name",
                          report=report, strict=strict, loss=loss, name=name)
            continue
        difficult = parse_difficult(obj, path=path, field_name=f"{where}.difficult",
                                    report=report)
        raw = parse_bndbox(obj, path=path, field_name=where, report=report)
        if raw is None:
            continue
        box = check_box(raw, height, width, path=path, field_name=f"{where}.bndbox",
                        report=report)
        if box is None:
            continue
        if difficult and exclude_difficult:
            report.count("difficult_excluded")
            continue
        objects.add(box, class_index[name], difficult=difficult)
    return objects


def read_voc_image(root: Path, stem: str, image_id: str, class_index: dict[str, int], *,
                   report: DataReport, strict: bool, exclude_difficult: bool,
                   loss: LossCheck | None = None) -> tuple[DetectionRecord | None, bool]:
    """One image's record and its ``needs_scan`` flag, or ``(None, False)`` when the
    annotation or the image cannot be used (reported)."""
    xml = root / "Annotations" / f"{stem}.xml"
    if not xml.is_file():
        report.skip(xml, "annotation file not found (the image is listed in the split file)",
                    field="annotation")
        report.count("annotation_files_missing")
        return None, False
    try:
        tree = ET.parse(xml).getroot()
    except (ET.ParseError, OSError, UnicodeDecodeError) as e:
        report.skip(xml, f"malformed XML: {e}", field="xml")
        report.count("annotation_files_malformed")
        return None, False
    image = find_image(root, stem, tree.findtext("filename"))
    header = image_header(str(image), report)
    if header is None:
        report.count("objects_dropped_with_image", len(tree.findall("object")))
        return None, False
    height, width = verified_size(
        header, tree.findtext("size/height"), tree.findtext("size/width"),
        image_path=image, annotation_path=xml, field_name="size", report=report)
    objects = parse_objects(tree, height, width, class_index, path=xml, report=report,
                            strict=strict, exclude_difficult=exclude_difficult, loss=loss)
    record = objects.record(image, image_id, height, width, annotation_path=xml)
    return record, header.needs_scan


def _root_prefixes(roots: list[Path]) -> list[str]:
    """Image id prefixes: the root folder names, made unique with ``#k`` when they repeat."""
    names = [r.name or str(r) for r in roots]
    return [n if names.count(n) == 1 else f"{n}#{k}" for k, n in enumerate(names)]


def read_voc(roots, split: str = "trainval", *, class_names=None,
             exclude_difficult: bool = False, strict: bool = False,
             report: DataReport | None = None, check_images: str = "full",
             cache_dir=None) -> DetectionSplit:
    """Reads one VOC split from one or more roots.

    Args:
        roots: a VOC folder (``VOCdevkit/VOC2007``) or a list of them, combined in order.
        split: ``ImageSets/Main/<split>.txt`` in every root (``train``, ``val``, ``trainval``,
            ``test``); missing -> ``FileNotFoundError`` listing the splits that exist.
        class_names: label order; ``None`` infers it with :func:`infer_voc_class_names` over
            this split (``split.class_names_source`` says ``"voc"`` or ``"inferred"``).
        exclude_difficult: drop ``difficult`` objects (counted as ``difficult_excluded``).
        strict: an unknown class name raises :class:`AnnotationError` instead of being skipped.
        report: receives every skip/correction (a new one when ``None``).
        check_images: ``"full"`` decodes every image once (see
            :func:`kft.data.readers.detection.finish_split`), ``"header"`` only reads headers.
        cache_dir: where converted image copies go.

    Returns:
        A :class:`DetectionSplit` with ``label_to_category=None``.

    Raises:
        AnnotationsLostError: no object kept although the annotations had some (e.g. every
            name unknown to ``class_names``); most objects dropped only warns.
    """
    report = DataReport() if report is None else report
    roots = [roots] if isinstance(roots, str | os.PathLike) else list(roots)
    if not roots:
        raise ValueError("read_voc needs at least one VOC root")
    roots = [check_voc_root(r) for r in roots]
    split_files = [r / "ImageSets" / "Main" / f"{split}.txt" for r in roots]
    ids = [read_split_ids(root, split, report) for root in roots]
    if class_names is None:
        class_names = infer_voc_class_names(roots, [split])
        source = "voc" if class_names == list(VOC_CLASSES) else "inferred"
    else:
        class_names, source = list(class_names), "given"
    if len(set(class_names)) != len(class_names):
        raise ValueError(f"class_names has repeated names: {class_names}")
    class_index = {name: i for i, name in enumerate(class_names)}
    hint = ("pass class_names=None to infer them" if source == "given"
            else "")
    loss = LossCheck(report, ", ".join(map(str, split_files)), unknown_hint=hint)
    records, needs_scan = [], []
    for root, prefix, stems in zip(roots, _root_prefixes(roots), ids, strict=True):
        for stem in stems:
            record, scan = read_voc_image(root, stem, f"{prefix}/{stem}", class_index,
                                          report=report, strict=strict,
                                          exclude_difficult=exclude_difficult, loss=loss)
            if record is not None:
                records.append(record)
                needs_scan.append(scan)
    note = f"classes of {split}: {class_names} (inferred from the annotations)" \
        if source == "inferred" else None
    return finish_split(records, needs_scan, class_names, None, report, check_images,
                        cache_dir, loss=loss, class_names_source=source,
                        image_dir=roots[0] / "JPEGImages" if len(roots) == 1 else None,
                        layout_note=note)
