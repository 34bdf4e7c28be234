"""COCO detection / instance segmentation as COCO, CVAT and Roboflow export it.

The annotation file of a split is found at ``annotations/instances_<split>.json``, else
``annotations/<split>.json``, else Roboflow's ``<split>/_annotations.coco.json``; its images in
the first of ``<split>/``, ``images/<split>/``, ``images/`` (CVAT), the JSON's folder or the
dataset folder that holds the JSON's first ``file_name`` (:mod:`kft.data.readers.layout`; the
choice is ``split.image_dir`` / ``split.layout_note``).

Category ids are mapped to contiguous 0-based labels in increasing id order (COCO's 80 classes
with ids 1..90 become labels 0..79); ``DetectionSplit.label_to_category`` maps back. A Roboflow
export's extra category ``0`` (the dataset name, supercategory of every other category, with
no annotation) is left out and reported. ``bbox`` ``[x, y, w, h]`` becomes half-open ``xyxy``;
``iscrowd`` is kept as a flag; segmentations (polygons, compressed or uncompressed RLE) are
checked here and decoded on request by :func:`kft.data.readers.detection.decode_masks`. An
optional non-standard ``"difficult": 1`` on an annotation (written by
:func:`kft.data.convert.voc_to_coco`) is read too.

A JSON file that cannot be parsed raises ``ValueError`` naming the file and the position; a
missing ``images`` or ``categories`` list or a repeated category id raises
:class:`~kft.data.readers.detection.AnnotationError`. Everything else (bad image entries,
duplicate image ids, annotations pointing to unknown images or categories, bad boxes and
segmentations, missing image files) is skipped and reported, with ``field`` naming the JSON
element (``"annotations[17].bbox"``); a call that keeps no object although the file has some
raises :class:`~kft.data.readers.detection.AnnotationsLostError`.
"""

from __future__ import annotations

import json
from pathlib import Path

from kft.data.readers.detection import (
    AnnotationError,
    DetectionSplit,
    LossCheck,
    ObjectList,
    check_box,
    check_polygons,
    check_rle,
    describe_value,
    finish_split,
    image_header,
    to_number,
    unknown_class,
    verified_size,
)
from kft.data.readers.layout import (
    ROBOFLOW_COCO_JSON,
    find_coco_annotation,
    find_coco_image_dir,
    first_file_names,
)
from kft.data.report import DataReport


def load_json(path) -> object:
    """Parses a JSON file; ``FileNotFoundError`` lists the JSON files beside it, ``ValueError``
    names the file and the line/column of a syntax error."""
    path = Path(path)
    if not path.is_file():
        near = sorted(p.name for p in path.parent.glob("*.json")) if path.parent.is_dir() else []
        raise FileNotFoundError(f"annotation file {path} does not exist; JSON files in "
                                f"{path.parent}: {near}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: malformed JSON at line {e.lineno}, column {e.colno} "
                         f"(character {e.pos}): {e.msg}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text at byte {e.start}: {e.reason}") from None


def _int_id(value) -> int | None:
    """A JSON id: an int (not a bool), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def parse_categories(data: dict, path) -> tuple[list[str], dict[int, int], dict[int, int]]:
    """``(class_names, category_to_label, label_to_category)``, labels in increasing id order.

    Raises :class:`AnnotationError` for a missing list, an entry without an integer ``id`` or a
    string ``name``, or a repeated id or name.
    """
    cats = data.get("categories")
    if not isinstance(cats, list):
        raise AnnotationError(path, "categories", "missing or not a list")
    by_id: dict[int, str] = {}
    for i, cat in enumerate(cats):
        cid = _int_id(cat.get("id")) if isinstance(cat, dict) else None
        name = cat.get("name") if isinstance(cat, dict) else None
        if cid is None or not isinstance(name, str):
            raise AnnotationError(path, f"categories[{i}]",
                                  f"needs an integer 'id' and a string 'name', got "
                                  f"{describe_value(cat)}")
        if cid in by_id:
            raise AnnotationError(path, f"categories[{i}].id", f"category id {cid} repeats")
        if name in by_id.values():
            raise AnnotationError(path, f"categories[{i}].name", f"category name {name!r} "
                                  "repeats")
        by_id[cid] = name
    ids = sorted(by_id)
    return ([by_id[c] for c in ids], {c: k for k, c in enumerate(ids)},
            dict(enumerate(ids)))


def drop_roboflow_dataset_category(data: dict, path, report: DataReport) -> dict:
    """``data`` without Roboflow's dataset-name category: in a ``_annotations.coco.json``, a
    category that is the ``supercategory`` of every other one and that no annotation uses
    (reported, counted as ``categories_dropped``). Other files come back unchanged."""
    cats = data.get("categories")
    if Path(path).name != ROBOFLOW_COCO_JSON or not isinstance(cats, list) or len(cats) < 2 \
            or not all(isinstance(c, dict) for c in cats):
        return data
    used = {a.get("category_id") for a in data.get("annotations") or [] if isinstance(a, dict)}
    for i, cat in enumerate(cats):
        others = [c for c in cats if c is not cat]
        if cat.get("id") not in used and isinstance(cat.get("name"), str) and \
                all(c.get("supercategory") == cat["name"] for c in others):
            report.convert(path, f"categories[{i}]: {cat['name']!r} (id {cat.get('id')}) is "
                           "Roboflow's dataset name, the supercategory of every other category "
                           "with no annotation: left out of class_names")
            report.count("categories_dropped")
            return {**data, "categories": others}
    return data


def parse_images(data: dict, path, report: DataReport) -> dict[int | str, dict]:
    """``{image id: image entry}`` in file order. Entries without an id or a ``file_name`` and
    repeated ids (the later entry) are skipped and reported."""
    images = data.get("images")
    if not isinstance(images, list):
        raise AnnotationError(path, "images", "missing or not a list")
    out: dict = {}
    first: dict = {}
    for i, entry in enumerate(images):
        where = f"images[{i}]"
        image_id = entry.get("id") if isinstance(entry, dict) else None
        if _int_id(image_id) is None and not isinstance(image_id, str):
            report.skip(path, f"image entry has no integer or string 'id': "
                        f"{describe_value(entry)}", field=f"{where}.id")
            continue
        if not isinstance(entry.get("file_name"), str) or not entry["file_name"].strip():
            report.skip(path, f"image id {image_id} has no 'file_name'",
                        field=f"{where}.file_name")
            continue
        if image_id in out:
            report.skip(path, f"duplicate image id {image_id} (first at images[{first[image_id]}]"
                        "): this entry is ignored and the annotations go to the first",
                        field=f"{where}.id")
            continue
        out[image_id], first[image_id] = entry, i
    return out


def group_annotations(data: dict, images: dict, category_to_label: dict[int, int], path, *,
                      report: DataReport, strict: bool, loss: LossCheck | None = None) -> dict:
    """``{image id: [(index, annotation), ...]}`` for annotations whose image and category
    are known; the others are reported (unknown category: :class:`AnnotationError` when
    ``strict``). A file without ``annotations`` (COCO test-dev) has none."""
    anns = data.get("annotations", [])
    if not isinstance(anns, list):
        raise AnnotationError(path, "annotations", "not a list")
    grouped: dict = {image_id: [] for image_id in images}
    for i, ann in enumerate(anns):
        where = f"annotations[{i}]"
        if not isinstance(ann, dict):
            report.skip(path, f"annotation is a {type(ann).__name__}, not an object",
                        field=where)
            report.count("objects_invalid")
            continue
        image_id, cid = ann.get("image_id"), ann.get("category_id")
        if not isinstance(image_id, int | str) or image_id not in grouped:
            report.skip(path, f"annotation id {ann.get('id')} points to unknown image id "
                        f"{describe_value(image_id)}", field=f"{where}.image_id")
            report.count("objects_invalid")
            continue
        if _int_id(cid) not in category_to_label:
            message = (f"annotation id {ann.get('id')} has unknown category id "
                       f"{describe_value(cid)}")
            unknown_class(message, category_to_label, path=path,
                          field_name=f"{where}.category_id", report=report, strict=strict,
                          loss=loss, name=cid)
            continue
        grouped[image_id].append((i, ann))
    return grouped


def parse_flag(ann: dict, key: str, *, path, field_name: str, report: DataReport) -> bool:
    """A 0/1 (or true/false) flag; a missing one is False, anything else is reported and read
    as False."""
    value = ann.get(key, 0)
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    report.convert(path, f"{field_name}: {key}={describe_value(value)} is not 0 or 1: read as 0")
    return False


def parse_segmentation(ann: dict, height: int, width: int, *, path, field_name: str,
                       report: DataReport):
    """The annotation's usable segmentation (polygon list or RLE dict), ``None`` when it has
    none; an empty, malformed or wrongly sized one is reported and left out (the box stays)."""
    if "segmentation" not in ann:
        return None
    seg = ann["segmentation"]
    if isinstance(seg, dict):
        reason = check_rle(seg, height, width)
        if reason is None:
            return seg
    elif isinstance(seg, list) and seg:
        return check_polygons(seg, path=path, field_name=field_name, report=report)
    elif isinstance(seg, list):
        reason = "empty segmentation (no polygon)"
    else:
        reason = f"segmentation is a {type(seg).__name__}, not a polygon list or an RLE dict"
    report.skip(path, f"{reason}: the box is kept without a mask", field=field_name)
    report.count("segmentations_invalid")
    return None


def parse_bbox(ann: dict, height: int, width: int, *, path, field_name: str,
               report: DataReport):
    """COCO ``[x, y, w, h]`` -> checked half-open ``xyxy`` float32 ``[4]``, or ``None``
    (reported) when missing, not four finite numbers, of negative/zero size or outside."""
    bbox = ann.get("bbox")
    if not isinstance(bbox, list | tuple) or len(bbox) != 4:
        report.skip(path, f"bbox must be [x, y, width, height], got {describe_value(bbox)}",
                    field=field_name)
        report.count("objects_invalid")
        return None
    values = [to_number(v) for v in bbox]
    if any(v is None for v in values):
        report.skip(path, f"bbox {describe_value(bbox)} has a value that is not a finite "
                    "number", field=field_name)
        report.count("objects_invalid")
        return None
    x, y, w, h = values
    return check_box([x, y, x + w, y + h], height, width, path=path, field_name=field_name,
                     report=report)


def read_coco_image(entry: dict, anns: list, image_dir: Path, category_to_label, *, path,
                    report: DataReport, empty_segmentations: list | None = None):
    """One image's record and its ``needs_scan`` flag, or ``(None, False)`` when its image
    file is missing or unreadable (reported, with its annotations counted).

    With ``empty_segmentations`` (a list), an annotation whose ``segmentation`` is ``[]`` (what
    CVAT and Roboflow write for a plain box) is taken as one without a segmentation and its
    field appended there, for the caller to report once per file."""
    image = image_dir / entry["file_name"]
    header = image_header(str(image), report)
    if header is None:
        report.count("objects_dropped_with_image", len(anns))
        return None, False
    height, width = verified_size(
        header, entry.get("height"), entry.get("width"), image_path=image,
        annotation_path=path, field_name=f"images[id={entry['id']}]", report=report)
    objects, any_segmentation = ObjectList(), False
    for i, ann in anns:
        where = f"annotations[{i}]"
        box = parse_bbox(ann, height, width, path=path, field_name=f"{where}.bbox",
                         report=report)
        if box is None:
            continue
        if empty_segmentations is not None and ann.get("segmentation") == []:
            empty_segmentations.append(f"{where}.segmentation")
            seg = None
        else:
            seg = parse_segmentation(ann, height, width, path=path,
                                     field_name=f"{where}.segmentation", report=report)
            any_segmentation |= "segmentation" in ann
        objects.add(box, category_to_label[ann["category_id"]],
                    difficult=parse_flag(ann, "difficult", path=path,
                                         field_name=f"{where}.difficult", report=report),
                    iscrowd=parse_flag(ann, "iscrowd", path=path,
                                       field_name=f"{where}.iscrowd", report=report),
                    segmentation=seg)
    record = objects.record(image, entry["id"], height, width,
                            with_segmentation=any_segmentation, annotation_path=path)
    return record, header.needs_scan


def read_coco(root=None, split: str = "train2017", *, annotation_file=None, image_dir=None,
              strict: bool = False, report: DataReport | None = None,
              check_images: str = "full", cache_dir=None) -> DetectionSplit:
    """Reads one COCO-format split (COCO, CVAT or Roboflow layout, see the module docstring).

    Args:
        root: dataset folder (``annotations/``, ``<split>/``, ``images/``, ...); may be
            ``None`` with ``annotation_file`` (then the JSON's folder, or the folder above an
            ``annotations/`` folder).
        split: the split name used to find both (``"train2017"``, ``"train"``, ``"valid"``,
            ``"default"`` for CVAT's ``instances_default.json``).
        annotation_file: the JSON file (default: found by
            :func:`~kft.data.readers.layout.find_coco_annotation`).
        image_dir: folder the images' ``file_name`` are relative to (default: found by
            :func:`~kft.data.readers.layout.find_coco_image_dir`).
        strict: an unknown category id raises :class:`AnnotationError` instead of skipping.
        report, check_images, cache_dir: as in :func:`kft.data.readers.voc.read_voc`.

    Returns:
        A :class:`DetectionSplit`; records follow the order of ``images`` in the file, image
        ids are the JSON ids, ``label_to_category`` maps labels back to category ids. Records
        have ``segmentation`` when at least one of their annotations has the key.
        ``image_dir`` and ``layout_note`` say where the files were found.
    """
    report = DataReport() if report is None else report
    if annotation_file is None:
        if root is None:
            raise ValueError("read_coco needs root, or annotation_file")
        root = Path(root).expanduser()
        path = find_coco_annotation(root, split)
    else:
        path = Path(annotation_file).expanduser()
        if root is None:
            root = path.parent.parent if path.parent.name == "annotations" else path.parent
        root = Path(root).expanduser()
    data = load_json(path)
    if not isinstance(data, dict):
        raise AnnotationError(path, None, f"top level is a {type(data).__name__}, expected an "
                              "object with 'images', 'annotations' and 'categories'")
    data = drop_roboflow_dataset_category(data, path, report)
    class_names, category_to_label, label_to_category = parse_categories(data, path)
    images = parse_images(data, path, report)
    image_dir, note = find_coco_image_dir(root, split, path, first_file_names(data), image_dir)
    loss = LossCheck(report, path, class_word="category ids",
                     unknown_hint=f"the file's categories have ids "
                                  f"{sorted(category_to_label)[:20]}")
    grouped = group_annotations(data, images, category_to_label, path, report=report,
                                strict=strict, loss=loss)
    records, needs_scan, empty = [], [], []
    for image_id, entry in images.items():
        record, scan = read_coco_image(entry, grouped[image_id], image_dir, category_to_label,
                                       path=path, report=report, empty_segmentations=empty)
        if record is not None:
            records.append(record)
            needs_scan.append(scan)
    if empty:
        report.skip(path, f"{len(empty)} annotation(s) have an empty segmentation [] (CVAT and "
                    "Roboflow write it for plain boxes): their boxes are kept without a mask",
                    field=empty[0])
    return finish_split(records, needs_scan, class_names, label_to_category, report,
                        check_images, cache_dir, loss=loss, class_names_source="file",
                        image_dir=image_dir, layout_note=note)
