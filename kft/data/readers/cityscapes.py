"""Cityscapes instance annotations as they ship: ``leftImg8bit/<split>/<city>/*_leftImg8bit.png``
with ``gtFine/<split>/<city>/*_gtFine_polygons.json``.

The 8 classes with instances (:data:`CITYSCAPES_CLASSES`) become labels 0..7; their ``...group``
labels (``"cargroup"``, ``"persongroup"``) are kept as crowd objects (``iscrowd=True``); every
other label (road, sky, ...) is ignored and counted (``objects_ignored_label``), as are objects
marked ``deleted``.

Cityscapes polygons use 0-based pixel coordinates and their tools paint every pixel a polygon
touches, vertices included, so a polygon spanning vertices ``xmin..xmax`` covers the half-open
box ``[xmin, xmax + 1)`` (detectron2's converter gives the same boxes). The polygon itself is
kept in COCO form (``[[x0, y0, x1, y1, ...]]``) shifted by +0.5 to pixel centres, so the
pycocotools mask matches the box to within half a pixel along the edges. Polygons reaching
outside the image are clipped (the box clip is reported). Occlusion is not resolved: a mask is
the whole annotated polygon, including parts hidden by objects drawn later in the file.
"""

from __future__ import annotations

import json
from pathlib import Path

from kft.data.readers.detection import (
    DetectionSplit,
    ObjectList,
    check_box,
    describe_value,
    finish_split,
    image_header,
    to_number,
    verified_size,
)
from kft.data.readers.layout import SplitNotFoundError
from kft.data.report import DataReport

CITYSCAPES_CLASSES = ("person", "rider", "car", "truck", "bus", "train", "motorcycle",
                      "bicycle")
JSON_SUFFIX = "_gtFine_polygons.json"
IMAGE_SUFFIX = "_leftImg8bit.png"
CROWD_SUFFIX = "group"


def split_folders(root: Path, split: str) -> tuple[Path, Path]:
    """``(gtFine/<split>, leftImg8bit/<split>)``; ``FileNotFoundError`` lists the splits that
    exist when either is missing."""
    gt, images = root / "gtFine" / split, root / "leftImg8bit" / split
    for folder in (gt, images):
        if not folder.is_dir():
            parent = folder.parent
            have = sorted(p.name for p in parent.iterdir() if p.is_dir()) if parent.is_dir() \
                else []
            raise SplitNotFoundError(f"Cityscapes folder {folder} does not exist; splits in "
                                    f"{parent}: {have}")
    return gt, images


def class_of(label) -> tuple[int, bool] | None:
    """``(label index, iscrowd)`` for an instance label or its ``group`` form, else None."""
    if not isinstance(label, str):
        return None
    crowd = label.endswith(CROWD_SUFFIX)
    name = label[: -len(CROWD_SUFFIX)] if crowd else label
    if name not in CITYSCAPES_CLASSES:
        return None
    return CITYSCAPES_CLASSES.index(name), crowd


def parse_polygon(polygon, *, path, field_name: str, report: DataReport) -> list | None:
    """``[[x, y], ...]`` -> flat float list ``[x0, y0, x1, y1, ...]``, or ``None`` (reported)
    when it is not a list of at least 3 finite points."""
    if not isinstance(polygon, list):
        reason = f"polygon is missing or not a list: {describe_value(polygon)}"
    elif not all(isinstance(p, list | tuple) and len(p) == 2 for p in polygon):
        reason = "polygon points must be [x, y] pairs"
    elif any(to_number(v) is None for p in polygon for v in p):
        reason = "polygon has a coordinate that is not a finite number"
    elif len(polygon) < 3:
        reason = f"polygon has {len(polygon)} points (at least 3 needed)"
    else:
        return [to_number(v) for p in polygon for v in p]
    report.skip(path, reason, field=field_name)
    report.count("objects_invalid")
    return None


def parse_objects(objects, height: int, width: int, *, path, report: DataReport) -> ObjectList:
    """The instance objects of one polygons JSON; see the module docstring."""
    out = ObjectList()
    if not isinstance(objects, list):
        report.skip(path, f"'objects' is missing or not a list: {describe_value(objects)}",
                    field="objects")
        return out
    for i, obj in enumerate(objects):
        where = f"objects[{i}]"
        if not isinstance(obj, dict):
            report.skip(path, "object is not a JSON object", field=where)
            report.count("objects_invalid")
            continue
        if obj.get("deleted"):
            report.count("objects_deleted")
            continue
        cls = class_of(obj.get("label"))
        if cls is None:
            report.count("objects_ignored_label")
            continue
        flat = parse_polygon(obj.get("polygon"), path=path, field_name=f"{where}.polygon",
                             report=report)
        if flat is None:
            continue
        xs, ys = flat[0::2], flat[1::2]
        box = check_box([min(xs), min(ys), max(xs) + 1.0, max(ys) + 1.0], height, width,
                        path=path, field_name=f"{where}.polygon", report=report)
        if box is None:
            continue
        out.add(box, cls[0], iscrowd=cls[1], segmentation=[[v + 0.5 for v in flat]])
    return out


def read_cityscapes_file(json_path: Path, image_path: Path, *, report: DataReport):
    """One image's record and ``needs_scan`` flag, or ``(None, False)`` (reported)."""
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        report.skip(json_path, f"malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}",
                    field="json")
        report.count("annotation_files_malformed")
        return None, False
    except (OSError, UnicodeDecodeError) as e:
        report.skip(json_path, f"cannot read ({e})", field="json")
        report.count("annotation_files_malformed")
        return None, False
    if not isinstance(data, dict):
        report.skip(json_path, f"top level is a {type(data).__name__}, not an object",
                    field="json")
        report.count("annotation_files_malformed")
        return None, False
    header = image_header(str(image_path), report)
    if header is None:
        return None, False
    height, width = verified_size(header, data.get("imgHeight"), data.get("imgWidth"),
                                  image_path=image_path, annotation_path=json_path,
                                  field_name="imgHeight/imgWidth", report=report)
    objects = parse_objects(data.get("objects"), height, width, path=json_path,
                            report=report)
    image_id = image_path.name[: -len(IMAGE_SUFFIX)]
    record = objects.record(image_path, image_id, height, width, with_segmentation=True,
                            annotation_path=json_path)
    return record, header.needs_scan


def pair_files(gt_dir: Path, image_dir: Path, report: DataReport) -> list[tuple[Path, Path]]:
    """``(json, image)`` pairs, sorted by city and name. A JSON without its image and an image
    without its JSON are reported and left out."""
    jsons = sorted(gt_dir.glob(f"*/*{JSON_SUFFIX}"))
    images = {p.relative_to(image_dir).as_posix() for p in image_dir.glob(f"*/*{IMAGE_SUFFIX}")}
    pairs = []
    for js in jsons:
        rel = js.relative_to(gt_dir).as_posix()[: -len(JSON_SUFFIX)] + IMAGE_SUFFIX
        if rel not in images:
            report.skip(js, f"no image {image_dir / rel} for this annotation file",
                        field="image")
            report.count("images_missing")
            continue
        images.discard(rel)
        pairs.append((js, image_dir / rel))
    for rel in sorted(images):
        report.skip(image_dir / rel, f"no {JSON_SUFFIX} annotation file in {gt_dir}",
                    field="annotation")
        report.count("annotation_files_missing")
    return pairs


def read_cityscapes(root, split: str = "train", *, report: DataReport | None = None,
                    check_images: str = "full", cache_dir=None) -> DetectionSplit:
    """Reads Cityscapes ``gtFine`` instance polygons for one split.

    Args:
        root: the Cityscapes folder holding ``leftImg8bit/`` and ``gtFine/``.
        split: ``"train"``, ``"val"`` or ``"test"`` (a folder name under both).
        report, check_images, cache_dir: as in :func:`kft.data.readers.voc.read_voc`.

    Returns:
        A :class:`DetectionSplit` over :data:`CITYSCAPES_CLASSES`, ``label_to_category=None``,
        image ids like ``"aachen_000000_000019"``, every record with polygon segmentations.
    """
    report = DataReport() if report is None else report
    root = Path(root).expanduser()
    gt_dir, image_dir = split_folders(root, split)
    records, needs_scan = [], []
    for json_path, image_path in pair_files(gt_dir, image_dir, report):
        record, scan = read_cityscapes_file(json_path, image_path, report=report)
        if record is not None:
            records.append(record)
            needs_scan.append(scan)
    return finish_split(records, needs_scan, CITYSCAPES_CLASSES, None, report, check_images,
                        cache_dir)
