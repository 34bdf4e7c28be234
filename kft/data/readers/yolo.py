"""YOLO txt labels as Ultralytics and Roboflow export them.

Layouts (``root`` is the dataset folder):

* Ultralytics: ``data.yaml`` (or ``data.yml``) with ``names:`` (a list, or an
  ``{index: name}`` dict with indices ``0..n-1``) and ``train:`` / ``val:`` / ``test:`` entries,
  each a folder (or a list of folders, or a ``.txt`` file listing images) relative to
  ``path:`` or to the yaml's folder; images in ``images/<split>/``, labels in
  ``labels/<split>/`` with the same relative path and stem, suffix ``.txt``.
* Roboflow's YOLO export: ``<split>/images`` and ``<split>/labels`` for the splits ``train``,
  ``valid``, ``test``, with ``data.yaml`` beside them (its ``../train/images`` entries point one
  folder too high; they are read as ``train/images``).

A split name is a ``data.yaml`` key or a folder name; ``val`` and ``valid`` stand for each other.
The label file of ``.../images/<rel>.jpg`` is ``.../labels/<rel>.txt`` (the last ``images``
folder of the path replaced by ``labels``, as Ultralytics does), or ``<rel>.txt`` beside the
image when the path has no ``images`` folder.

Label lines are ``class cx cy w h`` with the box centre and size as fractions of the image
width and height, or ``class x1 y1 x2 y2 x3 y3 ...`` (a YOLO-seg polygon, at least 3 points:
the record gets the polygon's bounding box and the polygon as its segmentation). Boxes become
kft's half-open absolute ``xyxy`` of the displayed image: ``[(cx - w/2) W, (cy - h/2) H,
(cx + w/2) W, (cy + h/2) H]``. Coordinates outside ``[0, 1]`` by more than :data:`TOLERANCE`
are clipped and reported (within it, clipped silently: exporters' rounding). An image without a
label file is a background image (counted as ``images_without_label_file``); bad lines (wrong
field count, a value that is not a finite number, a class index that is not an integer or out
of range, a zero or negative size, a box outside the image) are skipped and reported with the
file and ``field="line 3"``.

Class names: ``class_names`` given, else ``data.yaml``'s ``names`` (else ``class_<i>`` for its
``nc``), else a ``classes.txt`` / ``obj.names`` file in ``root`` (one name a line), else
``"0"``, ``"1"``, ... up to the largest index found (``class_names_source="inferred"``).
"""

from __future__ import annotations

from pathlib import Path

from kft.data.images import IMAGE_EXTENSIONS
from kft.data.readers.detection import (
    DetectionSplit,
    LossCheck,
    ObjectList,
    describe_value,
    finish_split,
    image_header,
    to_number,
    unknown_class,
)
from kft.data.readers.layout import YOLO_YAML_NAMES, SplitNotFoundError
from kft.data.report import DataReport

TOLERANCE = 1e-3  # fractions of the image size; beyond it, a clip is reported
SPLIT_KEYS = ("train", "val", "test")
SPLIT_ALIASES = {"val": ("valid",), "valid": ("val",)}
# Label Studio's YOLO export: images/*.jpg and labels/*.txt with no split folders (and
# classes.txt): one split, named "all" (a recipe validates it with data.val_split=holdout)
FLAT_SPLIT = "all"


def _flat_images(root: Path) -> bool:
    """Whether ``root/images`` holds image files itself and no split folders."""
    folder = root / "images"
    if not folder.is_dir():
        return False
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    return not any(p.is_dir() for p in entries) and any(map(_is_image, entries))
CLASS_FILES = ("classes.txt", "obj.names")
BOX_FIELDS = 5


# ---------------------------------------------------------------------------- data.yaml

def find_data_yaml(root) -> Path | None:
    """``root/data.yaml`` or ``root/data.yml``, else ``None``."""
    return next((Path(root) / n for n in YOLO_YAML_NAMES if (Path(root) / n).is_file()), None)


def load_data_yaml(path) -> dict:
    """Parses a ``data.yaml``; ``ValueError`` naming the file and line for bad YAML or a top
    level that is not a mapping."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ValueError(f"{path}: malformed YAML{where}: {problem}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text at byte {e.start}: {e.reason}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: top level is a {type(data).__name__}, expected a mapping "
                         "with names: and train:/val: entries")
    return data


def yaml_class_names(data: dict, path) -> list[str] | None:
    """Class names of a parsed ``data.yaml`` (``names`` list or ``{index: name}`` dict; only
    ``nc``: ``class_0``, ...), ``None`` when it has neither. ``ValueError`` naming the file and
    key for indices that are not ``0..n-1``, repeated names, or an ``nc`` that disagrees."""
    names, nc = data.get("names"), data.get("nc")
    if names is None:
        if nc is None:
            return None
        if isinstance(nc, bool) or not isinstance(nc, int) or nc < 1:
            raise ValueError(f"{path} [nc]: {describe_value(nc)} is not a positive integer")
        return [f"class_{i}" for i in range(nc)]
    if isinstance(names, dict):
        indices = {}
        for key, name in names.items():
            index = to_number(key)
            if index is None or index != int(index):
                raise ValueError(f"{path} [names]: key {key!r} is not a class index (0, 1, ...)")
            indices[int(index)] = name
        if sorted(indices) != list(range(len(indices))):
            raise ValueError(f"{path} [names]: class indices must be 0..{len(indices) - 1}, "
                             f"got {sorted(indices)}")
        names = [indices[i] for i in range(len(indices))]
    elif not isinstance(names, list):
        raise ValueError(f"{path} [names]: expected a list of names or an {{index: name}} "
                         f"mapping, got {describe_value(names)}")
    names = [str(n).strip() for n in names]
    if not names or any(not n for n in names):
        raise ValueError(f"{path} [names]: names must be non-empty, got {names}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{path} [names]: repeated class names {repeated}")
    if nc is not None and nc != len(names):
        raise ValueError(f"{path} [nc]: nc={describe_value(nc)} but names has {len(names)} "
                         "entries")
    return names


def _class_file_names(root: Path) -> tuple[list[str], Path] | None:
    for name in CLASS_FILES:
        path = root / name
        if path.is_file():
            names = [n.strip() for n in path.read_text(errors="replace").splitlines()]
            names = [n for n in names if n]
            if names:
                return names, path
    return None


# ------------------------------------------------------------------------------- splits

def _strip_up(entry: str) -> str:
    while entry.startswith(("../", "..\\")):
        entry = entry[3:]
    return entry


def _entry_candidates(entry: str, data: dict, yaml_dir: Path, root: Path) -> list[Path]:
    """Where a ``train:``/``val:`` entry may point: relative to ``path:``, to the yaml's
    folder, to ``root``, and without leading ``../`` (Roboflow)."""
    entry_path = Path(entry).expanduser()
    if entry_path.is_absolute():
        return [entry_path]
    bases = []
    if isinstance(data.get("path"), str) and data["path"].strip():
        base = Path(data["path"]).expanduser()
        bases.append(base if base.is_absolute() else yaml_dir / base)
    bases += [yaml_dir, root]
    out = [b / entry_path for b in bases]
    if _strip_up(entry) != entry:
        out += [b / _strip_up(entry) for b in (yaml_dir, root)]
    return list(dict.fromkeys(out))


def _layout_label(source: Path) -> str:
    if source.is_file():
        return "data.yaml image list"
    if source.parent.name == "images":
        return "Ultralytics layout"
    if source.name == "images":
        return "Roboflow layout"
    return "data.yaml entry"


def resolve_split(root, split: str) -> tuple[list[Path], str]:
    """``(sources, layout)`` of a split: the image folders (or ``.txt`` image lists) and the
    layout's name, from ``data.yaml`` (``split`` or its alias as a key) or, failing that, the
    folders ``images/<split>`` and ``<split>/images``. ``FileNotFoundError`` listing every
    place tried and the splits found."""
    root = Path(root).expanduser()
    found, tried = _find_split(root, split)
    if found is None:
        raise SplitNotFoundError(f"no YOLO split {split!r} in {root}: tried {', '.join(tried)}; "
                                f"splits found: {yolo_splits(root)}")
    return found


def _find_split(root: Path, split: str) -> tuple[tuple[list[Path], str] | None, list[str]]:
    """:func:`resolve_split`'s search: ``((sources, layout), [])`` or ``(None, places
    tried)``. It never lists the splits found (that calls back into it for data.yaml's
    keys, e.g. Roboflow's ``test: ../test/images`` with no test folder exported)."""
    names = (split, *SPLIT_ALIASES.get(split, ()))
    tried: list[str] = []
    yaml_path = find_data_yaml(root)
    if yaml_path is not None:
        data = load_data_yaml(yaml_path)
        for key in names:
            value = data.get(key)
            if not value:
                continue
            entries = value if isinstance(value, list) else [value]
            sources = []
            for entry in entries:
                candidates = _entry_candidates(str(entry), data, yaml_path.parent, root)
                found = next((c for c in candidates if c.exists()), None)
                if found is None:
                    tried += [f"{c} ({yaml_path.name} {key}: {entry})" for c in candidates]
                    break
                sources.append(found)
            else:
                return (sources, _layout_label(sources[0])), []
    for name in names:
        for folder in (root / "images" / name, root / name / "images"):
            if folder.is_dir():
                return ([folder], _layout_label(folder)), []
            tried.append(str(folder))
    if split == FLAT_SPLIT:
        if _flat_images(root):
            return ([root / "images"], "one folder, no splits: Label Studio layout"), []
        tried.append(f"{root / 'images'} (image files without split folders)")
    return None, tried


def yolo_splits(root) -> list[str]:
    """Split names :func:`read_yolo` accepts for ``root``: the folder names of
    ``images/<split>`` and ``<split>/images`` (``labels`` beside), then the ``data.yaml`` keys
    whose entry points elsewhere."""
    root = Path(root).expanduser()
    folders: dict[Path, str] = {}
    if (root / "images").is_dir():
        folders |= {p.resolve(): p.name for p in sorted((root / "images").iterdir())
                    if p.is_dir()}
    if root.is_dir():
        folders |= {(p / "images").resolve(): p.name for p in sorted(root.iterdir())
                    if (p / "images").is_dir()}
    names = list(folders.values())
    if not names and _flat_images(root):
        names.append(FLAT_SPLIT)
    yaml_path = find_data_yaml(root)
    if yaml_path is not None:
        try:
            data = load_data_yaml(yaml_path)
        except ValueError:
            data = {}
        for key in SPLIT_KEYS:
            if not data.get(key) or key in names:
                continue
            try:
                found, _ = _find_split(root, key)
            except ValueError:
                continue
            if found is not None and any(s.resolve() not in folders for s in found[0]):
                names.append(key)
    return names


# ------------------------------------------------------------------------------- images

def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def list_images(source: Path, report: DataReport) -> list[Path]:
    """The images of one source, sorted: every image file under a folder (recursively; other
    files reported, hidden ones ignored), or the lines of a ``.txt`` list (``./`` and relative
    lines are relative to the list's folder)."""
    if source.is_file():
        lines = [ln.strip() for ln in source.read_text(errors="replace").splitlines()]
        out = []
        for line in filter(None, lines):
            path = Path(line).expanduser()
            out.append(path if path.is_absolute() else source.parent / path)
        return out
    images = []
    for path in sorted(source.rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        if _is_image(path):
            images.append(path)
        else:
            report.skip(path, f"not an image file kft reads (extensions {IMAGE_EXTENSIONS})",
                        field="extension")
            report.count("files_not_images")
    return images


def label_path(image: Path) -> Path:
    """The label file of ``image``: its path with the last ``images`` folder replaced by
    ``labels`` and the suffix by ``.txt``; beside the image when no folder is named
    ``images``."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image.with_suffix(".txt")


# ------------------------------------------------------------------------------- labels

def _clip_fractions(values: list[float]) -> tuple[list[float], bool]:
    """Coordinates clipped to ``[0, 1]`` and whether any lay outside by more than
    :data:`TOLERANCE`."""
    outside = any(v < -TOLERANCE or v > 1 + TOLERANCE for v in values)
    return [min(max(v, 0.0), 1.0) for v in values], outside


def _fmt(values) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def parse_line(fields: list[str], line_no: int, height: int, width: int, num_classes, *,
               path, report: DataReport, loss: LossCheck | None, names_hint: str):
    """``(label, box xyxy pixels [4], polygon or None)`` of one label line, or ``None`` when
    the line is skipped (reported with ``field="line <n>"``)."""
    where = f"line {line_no}"
    n = len(fields)
    if n != BOX_FIELDS and (n < 7 or n % 2 == 0):
        report.skip(path, f"{n} fields: expected {BOX_FIELDS} (class cx cy w h) or a polygon "
                    "(class x1 y1 x2 y2 x3 y3 ..., an odd count of at least 7)", field=where)
        report.count("objects_invalid")
        return None
    index = to_number(fields[0])
    if index is None or index < 0 or index != int(index):
        report.skip(path, f"class index {fields[0]!r} is not a non-negative integer",
                    field=where)
        report.count("objects_invalid")
        return None
    label = int(index)
    if num_classes is not None and label >= num_classes:
        unknown_class(f"class index {label} is out of range: {names_hint}", range(num_classes),
                      path=path, field_name=where, report=report, strict=False, loss=loss,
                      name=label)
        return None
    values = [to_number(v) for v in fields[1:]]
    if any(v is None for v in values):
        bad = next(f for f, v in zip(fields[1:], values, strict=True) if v is None)
        report.skip(path, f"coordinate {bad!r} is not a finite number", field=where)
        report.count("objects_invalid")
        return None
    if n == BOX_FIELDS:
        cx, cy, w, h = values
        if w <= 0 or h <= 0:
            report.skip(path, f"degenerate or negative box: width {w:g}, height {h:g}",
                        field=where)
            report.count("boxes_degenerate")
            return None
        raw = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
        polygon = None
    else:
        raw = values
        xs, ys = values[0::2], values[1::2]
        if max(xs) <= min(xs) or max(ys) <= min(ys):
            report.skip(path, f"degenerate polygon: its points span {max(xs) - min(xs):g} x "
                        f"{max(ys) - min(ys):g}", field=where)
            report.count("boxes_degenerate")
            return None
    clipped, outside = _clip_fractions(raw)
    xs, ys = clipped[0::2], clipped[1::2]
    if max(xs) <= min(xs) or max(ys) <= min(ys):
        report.skip(path, f"box {_fmt(raw)} (fractions of the image) lies outside the image",
                    field=where)
        report.count("boxes_outside")
        return None
    if outside:
        report.convert(path, f"{where}: coordinates {_fmt(raw)} go outside [0, 1] (YOLO "
                       "coordinates are fractions of the image size): clipped to "
                       f"{_fmt(clipped)}")
        report.count("boxes_clipped")
    box = [min(xs) * width, min(ys) * height, max(xs) * width, max(ys) * height]
    if n != BOX_FIELDS:
        polygon = [[v * (width if k % 2 == 0 else height) for k, v in enumerate(clipped)]]
    return label, box, polygon


def read_label_file(path: Path, height: int, width: int, num_classes, *, report: DataReport,
                    loss: LossCheck | None, names_hint: str) -> tuple[ObjectList, bool] | None:
    """``(objects, any polygon)`` of one label file, or ``None`` when it cannot be read
    (reported, counted as ``annotation_files_malformed``)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        report.skip(path, f"cannot read the label file ({type(e).__name__}: {e})", field="file")
        report.count("annotation_files_malformed")
        return None
    objects, any_polygon = ObjectList(), False
    for line_no, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        parsed = parse_line(fields, line_no, height, width, num_classes, path=path,
                            report=report, loss=loss, names_hint=names_hint)
        if parsed is None:
            continue
        label, box, polygon = parsed
        objects.add(box, label, segmentation=polygon)
        any_polygon |= polygon is not None
    return objects, any_polygon


def _count_lines(path: Path) -> int:
    try:
        return sum(1 for line in path.read_text(errors="replace").splitlines() if line.split())
    except OSError:
        return 0


def _image_ids(images: list[Path], sources: list[Path], root: Path) -> list[str]:
    """Unique ids: the path relative to its one source folder without suffix, or relative to
    ``root`` (else absolute) when there are several sources or a list file."""
    if len(sources) == 1 and sources[0].is_dir():
        return [p.relative_to(sources[0]).with_suffix("").as_posix() for p in images]
    out = []
    for p in images:
        try:
            out.append(p.relative_to(root).with_suffix("").as_posix())
        except ValueError:
            out.append(p.with_suffix("").as_posix())
    return out


def _report_orphans(sources: list[Path], used: set[Path], report: DataReport) -> None:
    """Label files in a source's labels folder whose image does not exist."""
    for source in sources:
        if not source.is_dir():
            continue
        labels = label_path(source / "x").parent
        if labels == source or not labels.is_dir():
            continue
        for path in sorted(labels.rglob("*.txt")):
            if path.name in CLASS_FILES or path in used:
                continue
            report.skip(path, f"label file without an image in {source}", field="image")
            report.count("label_files_without_image")


def read_yolo(root, split: str = "train", *, class_names=None, report: DataReport | None = None,
              check_images: str = "full", cache_dir=None) -> DetectionSplit:
    """Reads one split of a YOLO txt dataset (Ultralytics or Roboflow layout, see the module
    docstring).

    Args:
        root: the dataset folder (``data.yaml``, ``images/``, ``labels/`` or ``<split>/``).
        split: a ``data.yaml`` key (``train``, ``val``, ``test``) or a folder name
            (``images/<split>``, ``<split>/images``: Roboflow's ``valid``).
        class_names: label order (index = YOLO class index); default from ``data.yaml``.
        report, check_images, cache_dir: as in :func:`kft.data.readers.voc.read_voc`.

    Returns:
        A :class:`DetectionSplit` with ``label_to_category=None``, image ids the image paths
        relative to the split's folder without suffix, ``segmentation`` on records with
        polygon lines, ``image_dir`` and ``layout_note`` naming the folders read.

    Raises:
        FileNotFoundError: no such split (the message lists what was tried and what exists).
        ValueError: a malformed ``data.yaml``; no object kept although the label files have
            some (:class:`~kft.data.readers.detection.AnnotationsLostError`).
    """
    report = DataReport() if report is None else report
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"YOLO dataset folder {root} does not exist or is not a folder")
    sources, layout = resolve_split(root, split)
    yaml_path = find_data_yaml(root)
    if class_names is not None:
        class_names, source_kind = [str(n) for n in class_names], "given"
        hint = f"class_names has {len(class_names)} names (indices 0..{len(class_names) - 1})"
        if len(set(class_names)) != len(class_names):
            raise ValueError(f"class_names has repeated names: {class_names}")
    else:
        from_yaml = yaml_class_names(load_data_yaml(yaml_path), yaml_path) if yaml_path \
            else None
        from_file = None if from_yaml is not None else _class_file_names(root)
        if from_yaml is not None:
            class_names, source_kind = from_yaml, "file"
            hint = f"{yaml_path} names has {len(class_names)} classes (indices 0.." \
                   f"{len(class_names) - 1})"
        elif from_file is not None:
            class_names, source_kind = from_file[0], "file"
            hint = f"{from_file[1]} has {len(class_names)} names"
        else:
            class_names, source_kind, hint = None, "inferred", ""
    num_classes = None if class_names is None else len(class_names)
    label_dirs = [label_path(s / "x").parent if s.is_dir() else s for s in sources]
    loss = LossCheck(report, ", ".join(map(str, label_dirs)), class_word="class indices",
                     unknown_hint=hint)
    images = [p for s in sources for p in list_images(s, report)]
    records, needs_scan, used = [], [], set()
    for image, image_id in zip(images, _image_ids(images, sources, root), strict=True):
        labels = label_path(image)
        has_labels = labels.is_file()
        used.add(labels)
        header = image_header(str(image), report)
        if header is None:
            if has_labels:
                report.count("objects_dropped_with_image", _count_lines(labels))
            continue
        if has_labels:
            parsed = read_label_file(labels, header.height, header.width, num_classes,
                                     report=report, loss=loss, names_hint=hint)
            if parsed is None:
                continue
            objects, any_polygon = parsed
        else:
            report.count("images_without_label_file")
            objects, any_polygon = ObjectList(), False
        records.append(objects.record(image, image_id, header.height, header.width,
                                      with_segmentation=any_polygon,
                                      annotation_path=labels if has_labels else None))
        needs_scan.append(header.needs_scan)
    _report_orphans(sources, used, report)
    note = f"images of {split}: {', '.join(map(str, sources))}, labels: " \
           f"{', '.join(map(str, label_dirs))} ({layout})"
    if class_names is None:
        top = max((int(r.labels.max()) for r in records if r.num_objects), default=-1)
        class_names = [str(i) for i in range(top + 1)]
        note += f"; no data.yaml names: classes named by index {class_names}"
    return finish_split(records, needs_scan, class_names, None, report, check_images,
                        cache_dir, loss=loss, class_names_source=source_kind,
                        image_dir=sources[0] if sources[0].is_dir() else None,
                        layout_note=note)


