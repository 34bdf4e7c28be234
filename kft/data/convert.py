"""Converting detection datasets between layouts: any split -> COCO, VOC or YOLO.

Everything goes through the readers, so whatever they skip or correct is in the returned
report and never silently changes the output. Box conventions on the way out:

* COCO: ``bbox = [x1, y1, x2 - x1, y2 - y1]`` from the half-open ``xyxy`` boxes.
* VOC: ``xmin = x1 + 1, ymin = y1 + 1, xmax = x2, ymax = y2`` (1-based inclusive), so integer
  pixel boxes survive VOC -> COCO -> VOC exactly.
* YOLO: ``class cx cy w h`` as fractions of the displayed image size, 10 decimals (a pixel
  coordinate comes back within ``1e-6`` px on images up to 10,000 px).

COCO and VOC coordinates are written as integers when integral, else rounded to 1/1000 pixel.
VOC has no crowd flag: crowd objects become ``<difficult>1</difficult>`` (counted as
``crowd_as_difficult``). COCO has no difficult flag: a difficult object is written with the
extra key ``"difficult": 1``, which :func:`kft.data.readers.coco.read_coco` reads back. YOLO
has neither: difficult objects are written as ordinary ones (``difficult_as_plain``) and crowd
regions are left out (``crowd_skipped``, each one reported), as Ultralytics' own COCO converter
does.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np

from kft.data.readers.coco import read_coco
from kft.data.readers.detection import DetectionRecord, DetectionSplit
from kft.data.readers.voc import read_voc
from kft.data.readers.yolo import load_data_yaml, yaml_class_names
from kft.data.report import DataReport

SEGMENTATION_FORMATS = ("polygon", "rle", None)


def number(value) -> int | float:
    """A JSON/XML-friendly coordinate: ``int`` when integral, else rounded to 3 decimals."""
    value = float(value)
    return int(round(value)) if abs(value - round(value)) < 1e-6 else round(value, 3)


def _relative_name(record: DetectionRecord, image_root: Path) -> str:
    source = record.source_path or record.image_path
    return Path(os.path.relpath(source, image_root)).as_posix()


def _rle(seg, height: int, width: int) -> dict:
    """Any record segmentation -> compressed COCO RLE with a string ``counts``."""
    from pycocotools import mask as mask_utils

    if isinstance(seg, dict):
        rle = dict(seg)
        if isinstance(rle["counts"], list):
            rle = mask_utils.frPyObjects(rle, height, width)
    else:
        rle = mask_utils.merge(mask_utils.frPyObjects([list(p) for p in seg], height, width))
    counts = rle["counts"]
    return {"size": [int(v) for v in rle["size"]],
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def _area(seg, box, height: int, width: int) -> float:
    from pycocotools import mask as mask_utils

    if seg is None:
        return number((box[2] - box[0]) * (box[3] - box[1]))
    rle = _rle(seg, height, width)
    return float(mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode()}))


def _segmentation_out(seg, fmt: str, height: int, width: int):
    if fmt == "rle":
        return _rle(seg, height, width)
    return [[number(v) for v in poly] for poly in seg] if isinstance(seg, list) else seg


def split_to_coco(split: DetectionSplit, image_root, segmentation: str | None = "polygon") -> dict:
    """A COCO instances dict for ``split``.

    ``file_name`` is each image's path relative to ``image_root`` (the user's file, not a
    converted copy); image ids are the records' ids when they are all integers, else 1..N in
    record order; category ids come from ``label_to_category`` or are ``label + 1``.
    ``segmentation``: ``"polygon"`` writes segmentations as the records hold them (polygons or
    RLE), ``"rle"`` converts all to compressed RLE, ``None`` writes none.
    """
    if segmentation not in SEGMENTATION_FORMATS:
        raise ValueError(f"segmentation={segmentation!r}: expected one of "
                         f"{SEGMENTATION_FORMATS}")
    image_root = Path(image_root)
    to_category = split.label_to_category or {k: k + 1 for k in range(len(split.class_names))}
    int_ids = all(isinstance(r.image_id, int) for r in split.records)
    images, annotations = [], []
    for index, record in enumerate(split.records, 1):
        image_id = record.image_id if int_ids else index
        images.append({"id": image_id, "file_name": _relative_name(record, image_root),
                       "height": record.height, "width": record.width})
        segs = record.segmentation or [None] * record.num_objects
        for box, label, difficult, crowd, seg in zip(record.boxes, record.labels,
                                                     record.difficult, record.iscrowd, segs,
                                                     strict=True):
            x1, y1, x2, y2 = (float(v) for v in box)
            ann = {"id": len(annotations) + 1, "image_id": image_id,
                   "category_id": int(to_category[int(label)]),
                   "bbox": [number(x1), number(y1), number(x2 - x1), number(y2 - y1)],
                   "area": _area(seg, box, record.height, record.width),
                   "iscrowd": int(crowd)}
            if seg is not None and segmentation is not None:
                ann["segmentation"] = _segmentation_out(seg, segmentation, record.height,
                                                        record.width)
            if difficult:
                ann["difficult"] = 1
            annotations.append(ann)
    categories = [{"id": int(to_category[k]), "name": name, "supercategory": "none"}
                  for k, name in enumerate(split.class_names)]
    return {"info": {"description": "written by kft.data.convert"}, "licenses": [],
            "images": images, "annotations": annotations, "categories": categories}


def write_coco(split: DetectionSplit, out_json, image_root,
               segmentation: str | None = "polygon") -> Path:
    """Writes :func:`split_to_coco` to ``out_json`` (parents created); returns the path."""
    out_json = Path(out_json)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(split_to_coco(split, image_root, segmentation)))
    return out_json


def _voc_image_root(roots: list[Path]) -> Path:
    if len(roots) == 1:
        return roots[0] / "JPEGImages"
    return Path(os.path.commonpath([str(r.resolve()) for r in roots]))


def voc_to_coco(voc_root, split: str, out_json, class_names=None, *,
                report: DataReport | None = None, image_root=None) -> Path:
    """Writes a VOC split (one root or a list, see :func:`~kft.data.readers.voc.read_voc`) as
    COCO JSON; returns ``out_json``.

    ``file_name`` is relative to ``image_root``: by default ``<voc_root>/JPEGImages`` for one
    root (so ``image_dir=<voc_root>/JPEGImages``), the roots' common folder for several.
    Category ids are ``label + 1``. Skips and corrections go to ``report``.
    """
    roots = [voc_root] if isinstance(voc_root, str | os.PathLike) else list(voc_root)
    split_data = read_voc(roots, split, class_names=class_names, report=report,
                          check_images="header")
    root = Path(image_root) if image_root else _voc_image_root([Path(r) for r in roots])
    return write_coco(split_data, out_json, root, segmentation=None)


def _sub(parent: ET.Element, tag: str, text) -> ET.Element:
    element = ET.SubElement(parent, tag)
    element.text = str(text)
    return element


def voc_xml(record: DetectionRecord, class_names, filename: str, folder: str = "VOC") -> ET.Element:
    """The VOC ``<annotation>`` element of one record (crowd objects marked difficult)."""
    ann = ET.Element("annotation")
    _sub(ann, "folder", folder)
    _sub(ann, "filename", filename)
    size = ET.SubElement(ann, "size")
    for tag, value in (("width", record.width), ("height", record.height), ("depth", 3)):
        _sub(size, tag, value)
    _sub(ann, "segmented", 0)
    for box, label, difficult, crowd in zip(record.boxes, record.labels, record.difficult,
                                            record.iscrowd, strict=True):
        obj = ET.SubElement(ann, "object")
        _sub(obj, "name", class_names[int(label)])
        _sub(obj, "pose", "Unspecified")
        _sub(obj, "truncated", 0)
        _sub(obj, "difficult", int(bool(difficult) or bool(crowd)))
        bndbox = ET.SubElement(obj, "bndbox")
        x1, y1, x2, y2 = (float(v) for v in box)
        for tag, value in (("xmin", x1 + 1), ("ymin", y1 + 1), ("xmax", x2), ("ymax", y2)):
            _sub(bndbox, tag, number(value))
    ET.indent(ann)
    return ann


def _voc_stem(file_name: str) -> str:
    """``"a/b/c.jpg"`` -> ``"a_b_c"``: a flat, unique VOC image id."""
    return Path(file_name).with_suffix("").as_posix().replace("/", "_")


def image_root_of(split: DetectionSplit) -> Path:
    """The folder written file names are relative to: ``split.image_dir`` when the reader set
    it, else the images' common folder."""
    if split.image_dir is not None:
        return Path(split.image_dir)
    sources = [str(Path(r.source_path or r.image_path).resolve().parent) for r in split.records]
    return Path(os.path.commonpath(sources)) if sources else Path(".")


def write_voc(split: DetectionSplit, out_root, split_name: str, image_root=None, *,
              report: DataReport | None = None) -> Path:
    """Writes ``split`` (its images copied) as a VOC folder; returns ``out_root``.

    ``out_root`` gets ``Annotations/<id>.xml``, ``JPEGImages/<id><suffix>`` (the user's image
    copied as is, suffix kept) and ``ImageSets/Main/<split_name>.txt``. ``<id>`` is the image's
    path relative to ``image_root`` (default :func:`image_root_of`) without suffix, ``/``
    replaced by ``_``. Crowd objects are written difficult (``crowd_as_difficult``).
    """
    out_root = Path(out_root)
    report = split.report if report is None else report
    image_root = image_root_of(split) if image_root is None else Path(image_root)
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (out_root / sub).mkdir(parents=True, exist_ok=True)
    stems: dict[str, str] = {}
    for record in split.records:
        source = Path(record.source_path or record.image_path)
        name = _relative_name(record, image_root)
        stem = _voc_stem(name) if not name.startswith("../") else \
            str(record.image_id).replace("/", "_")
        if stem in stems:
            raise ValueError(f"images {stems[stem]!r} and {name!r} both map to the VOC id "
                             f"{stem!r}")
        stems[stem] = name
        filename = stem + source.suffix
        shutil.copyfile(source, out_root / "JPEGImages" / filename)
        tree = ET.ElementTree(voc_xml(record, split.class_names, filename))
        tree.write(out_root / "Annotations" / f"{stem}.xml", encoding="utf-8")
        report.count("crowd_as_difficult", int(np.sum(record.iscrowd & ~record.difficult)))
    (out_root / "ImageSets" / "Main" / f"{split_name}.txt").write_text(
        "".join(f"{s}\n" for s in stems))
    return out_root


def coco_to_voc(coco_json, image_dir, out_root, *, split: str | None = None,
                report: DataReport | None = None) -> Path:
    """Writes a COCO JSON (and its images, copied) as a VOC folder; returns ``out_root``.

    As :func:`write_voc`; ``split`` defaults to the JSON name without ``instances_``, and
    ``<id>`` is the image's ``file_name`` without suffix. Class names are the COCO category
    names in id order (pass them to ``read_voc(class_names=...)``). Segmentations are not
    written.
    """
    coco_json = Path(coco_json)
    report = DataReport() if report is None else report
    data = read_coco(annotation_file=coco_json, image_dir=image_dir, report=report,
                     check_images="header")
    split = split or coco_json.stem.removeprefix("instances_")
    return write_voc(data, out_root, split, Path(image_dir), report=report)


def _fraction(value: float) -> str:
    """A YOLO coordinate: 10 decimals, trailing zeros dropped (``0.5``, ``0.1234567891``)."""
    text = f"{value:.10f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def _yolo_file_stems(split: DetectionSplit, image_root: Path) -> list[str]:
    """Unique relative stems for the written images/labels: the image's path relative to
    ``image_root`` (``sub/a``), ``/`` kept; a repeated one gets ``_<k>`` appended."""
    stems, seen = [], set()
    for record in split.records:
        rel = _relative_name(record, image_root)
        stem = Path(rel).with_suffix("").as_posix()
        if stem.startswith("../") or Path(stem).is_absolute():
            stem = str(record.image_id).replace("/", "_").replace(":", "_")
        base, k = stem, 1
        while stem in seen:
            stem, k = f"{base}_{k}", k + 1
        seen.add(stem)
        stems.append(stem)
    return stems


def yolo_lines(record: DetectionRecord, *, path=None,
               report: DataReport | None = None) -> list[str]:
    """The label lines ``class cx cy w h`` (fractions of ``record.width x height``) of one
    record; crowd regions left out (reported when ``report`` is given)."""
    lines = []
    for k, (box, label, crowd) in enumerate(zip(record.boxes, record.labels, record.iscrowd,
                                                strict=True)):
        if crowd:
            if report is not None:
                report.skip(path or record.image_path, "crowd region not written: YOLO has no "
                            "crowd flag", field=f"object[{k}]")
                report.count("crowd_skipped")
            continue
        x1, y1, x2, y2 = (float(v) for v in box)
        w, h = float(record.width), float(record.height)
        values = ((x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h)
        lines.append(" ".join([str(int(label)), *map(_fraction, values)]))
    return lines


def write_yolo(split: DetectionSplit, out_dir, split_name: str, *,
               report: DataReport | None = None) -> Path:
    """Writes ``split`` in the Ultralytics YOLO layout; returns ``out_dir/data.yaml``.

    ``out_dir`` gets ``images/<split_name>/<rel>`` (the user's images copied as they are),
    ``labels/<split_name>/<rel stem>.txt`` (one line per object, see :func:`yolo_lines`; an
    empty file for a background image) and ``data.yaml`` with ``names`` (``{index: name}``)
    and a ``<split_name>: images/<split_name>`` entry (``train``/``val``/``test`` keys are what
    Ultralytics reads; ``valid`` is written as ``val``). Writing several splits into one
    ``out_dir`` adds their entries; ``ValueError`` when an existing ``data.yaml`` has other
    class names. ``<rel>`` is the image's path relative to :func:`image_root_of`.
    Skips and counts go to ``report`` (default ``split.report``).
    """
    import yaml

    out_dir = Path(out_dir)
    report = split.report if report is None else report
    yaml_path = out_dir / "data.yaml"
    names = list(split.class_names)
    existing = load_data_yaml(yaml_path) if yaml_path.is_file() else {}
    old_names = yaml_class_names(existing, yaml_path) if existing else None
    if old_names is not None and old_names != names:
        raise ValueError(f"{yaml_path} [names]: {old_names} differ from the split's class "
                         f"names {names}; write into another folder")
    image_root = image_root_of(split)
    images, labels = out_dir / "images" / split_name, out_dir / "labels" / split_name
    for record, stem in zip(split.records, _yolo_file_stems(split, image_root), strict=True):
        source = Path(record.source_path or record.image_path)
        image_out = images / (stem + source.suffix)
        label_out = labels / f"{stem}.txt"
        image_out.parent.mkdir(parents=True, exist_ok=True)
        label_out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, image_out)
        lines = yolo_lines(record, path=record.annotation_path or source, report=report)
        label_out.write_text("".join(f"{line}\n" for line in lines))
        report.count("difficult_as_plain", int(np.sum(record.difficult & ~record.iscrowd)))
    key = "val" if split_name == "valid" else split_name
    data = {k: v for k, v in existing.items() if k not in ("names", "nc")}
    data[key] = f"images/{split_name}"
    data["nc"] = len(names)
    data["names"] = dict(enumerate(names))
    images.mkdir(parents=True, exist_ok=True)
    yaml_path.write_text("# written by kft.data.convert.write_yolo (Ultralytics layout)\n"
                         + yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return yaml_path
