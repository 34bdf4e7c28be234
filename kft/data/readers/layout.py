"""Where the files of a detection dataset are, as annotation tools export them.

* :func:`detect_format`: which reader a folder is for (``voc``, ``coco``, ``yolo``,
  ``cityscapes``), with the reason, or an error listing what the folder holds.
* :func:`available_splits`: the split names a reader accepts for a folder.
* :func:`find_coco_files`: a COCO split's annotation JSON and image folder, in the layouts of
  COCO itself, CVAT and Roboflow:

  ====================  =====================================  ==============================
  layout                annotation file                        images
  ====================  =====================================  ==============================
  COCO 2017             ``annotations/instances_<split>.json``  ``<split>/``
  CVAT (COCO 1.0)       ``annotations/instances_<split>.json``  ``images/`` (or
                        (``instances_default.json``)            ``images/<split>/``)
  Roboflow (COCO)       ``<split>/_annotations.coco.json``      beside the JSON
  Label Studio (COCO)   ``result.json`` (split ``result``)      ``images/``
  ====================  =====================================  ==============================

The image folder is the first candidate that exists *and* holds one of the first image entries'
``file_name``, so an existing but wrong folder is not taken; every place tried is listed when
none fits.
"""

from __future__ import annotations

from pathlib import Path

ROBOFLOW_COCO_JSON = "_annotations.coco.json"
LABEL_STUDIO_COCO_JSON = "result.json"  # Label Studio's COCO export: result.json + images/
YOLO_YAML_NAMES = ("data.yaml", "data.yml")
# COCO annotation files of other tasks that sit in annotations/ beside instances_*.json
_OTHER_COCO_TASKS = ("captions_", "person_keypoints_", "panoptic_", "stuff_", "image_info_")
_FILE_NAMES_CHECKED = 10


class SplitNotFoundError(FileNotFoundError):
    """A dataset folder has no split of the name asked for; the message lists the splits it
    has. Every reader raises it (a recipe run adds which ``data.*`` key names the split)."""


def _folder(root) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist or is not a folder")
    return root


def _contents(root: Path, limit: int = 20) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f"[{', '.join(names[:limit])}]{more}"


# ----------------------------------------------------------------------------------- COCO

def coco_annotation_candidates(root, split: str) -> list[Path]:
    """The annotation files tried for ``split``, in order: ``annotations/instances_<split>.json``,
    ``annotations/<split>.json``, Roboflow's ``<split>/_annotations.coco.json``, and for
    split ``result`` Label Studio's ``result.json`` in ``root`` itself."""
    root = Path(root)
    return [root / "annotations" / f"instances_{split}.json",
            root / "annotations" / f"{split}.json",
            root / split / ROBOFLOW_COCO_JSON,
            *([root / LABEL_STUDIO_COCO_JSON] if split == Path(LABEL_STUDIO_COCO_JSON).stem
              else [])]


def coco_splits(root) -> list[str]:
    """COCO split names in ``root``: ``instances_<name>.json`` and other ``<name>.json`` of
    ``annotations/`` (captions, keypoints, ... files left out), and Roboflow's
    ``<name>/_annotations.coco.json`` folders."""
    root = Path(root)
    names = set()
    for path in (root / "annotations").glob("*.json") if (root / "annotations").is_dir() else []:
        stem = path.stem
        if stem.startswith("instances_"):
            names.add(stem.removeprefix("instances_"))
        elif not stem.startswith(_OTHER_COCO_TASKS):
            names.add(stem)
    names |= {p.parent.name for p in root.glob(f"*/{ROBOFLOW_COCO_JSON}")}
    if (root / LABEL_STUDIO_COCO_JSON).is_file():
        names.add(Path(LABEL_STUDIO_COCO_JSON).stem)
    return sorted(names)


def find_coco_annotation(root, split: str) -> Path:
    """The first of :func:`coco_annotation_candidates` that exists; ``FileNotFoundError``
    listing every one tried, the JSON files present and the splits found otherwise."""
    root = _folder(root)
    candidates = coco_annotation_candidates(root, split)
    for path in candidates:
        if path.is_file():
            return path
    near = sorted(str(p.relative_to(root)) for p in
                  [*root.glob("annotations/*.json"), *root.glob(f"*/{ROBOFLOW_COCO_JSON}")])
    raise SplitNotFoundError(
        f"no COCO annotation file for split {split!r} in {root}: tried "
        f"{', '.join(str(p) for p in candidates)}; JSON files there: {near}; splits found: "
        f"{coco_splits(root)}")


def first_file_names(data, limit: int = _FILE_NAMES_CHECKED) -> list[str]:
    """The ``file_name`` of the first ``limit`` usable image entries of a COCO dict."""
    images = data.get("images") if isinstance(data, dict) else None
    names = []
    for entry in images if isinstance(images, list) else []:
        name = entry.get("file_name") if isinstance(entry, dict) else None
        if isinstance(name, str) and name.strip():
            names.append(name)
            if len(names) == limit:
                break
    return names


def coco_image_dir_candidates(root, split: str, annotation_path) -> list[tuple[Path, str]]:
    """``(folder, layout)`` tried for the images of ``split``, in order: ``<root>/<split>``,
    ``<root>/images/<split>``, ``<root>/images``, the JSON's folder, ``<root>`` (duplicates
    left out)."""
    root, annotation_path = Path(root), Path(annotation_path)
    roboflow = annotation_path.name == ROBOFLOW_COCO_JSON
    candidates = [
        (root / split, "Roboflow layout" if roboflow else "COCO layout"),
        (root / "images" / split, "CVAT layout, images/<split>"),
        (root / "images", "CVAT layout, one images/ folder"),
        (annotation_path.parent, "images beside the annotation file"),
        (root, "file_name relative to the dataset folder"),
    ]
    out, seen = [], set()
    for folder, label in candidates:
        key = folder.resolve()
        if key not in seen:
            seen.add(key)
            out.append((folder, label))
    return out


def find_coco_image_dir(root, split: str, annotation_path, file_names,
                        image_dir=None) -> tuple[Path, str]:
    """``(image folder, note)`` for a COCO split whose JSON lists ``file_names`` first.

    ``image_dir`` given: used as is (``FileNotFoundError`` when it is not a folder). Otherwise
    the first of :func:`coco_image_dir_candidates` that exists and holds one of
    ``file_names`` (any existing one when the JSON lists no image); ``FileNotFoundError``
    listing every place tried when none does.
    """
    annotation_path = Path(annotation_path)
    if image_dir is not None:
        image_dir = Path(image_dir).expanduser()
        if not image_dir.is_dir():
            raise FileNotFoundError(f"image folder {image_dir} (for {annotation_path}) does "
                                    "not exist")
        return image_dir, f"images of {split}: {image_dir} (given); annotations: " \
                          f"{annotation_path}"
    root = Path(root).expanduser()
    tried = []
    for folder, label in coco_image_dir_candidates(root, split, annotation_path):
        if not folder.is_dir():
            tried.append(f"{folder} (no such folder)")
            continue
        if not file_names or any((folder / name).is_file() for name in file_names):
            return folder, f"images of {split}: {folder} ({label}); annotations: " \
                           f"{annotation_path}"
        tried.append(f"{folder} (has no {file_names[0]!r})")
    raise FileNotFoundError(
        f"no image folder for {annotation_path}: none of these holds its first images "
        f"({', '.join(repr(n) for n in file_names[:3])}): {'; '.join(tried)}; pass image_dir "
        "(kft data: --image-dir) to name the folder the JSON's file_name are relative to")


def find_coco_files(root, split: str, image_dir=None) -> tuple[Path, Path, str]:
    """``(annotation_path, image_dir, note)`` of a COCO split in any layout of the module
    docstring; ``note`` is one line for a caller to print (``"images of train: data/x/images
    (CVAT layout, one images/ folder); annotations: ..."``).

    Parses the JSON to learn its first ``file_name`` (:func:`~kft.data.readers.coco.read_coco`
    does the same search on the JSON it reads anyway, without a second parse).
    """
    from kft.data.readers.coco import load_json

    annotation_path = find_coco_annotation(root, split)
    names = first_file_names(load_json(annotation_path)) if image_dir is None else []
    folder, note = find_coco_image_dir(root, split, annotation_path, names, image_dir)
    return annotation_path, folder, note


# ------------------------------------------------------------------------ format detection

def _format_evidence(root: Path) -> dict[str, str]:
    """``{format: reason}`` for every layout ``root`` matches."""
    found = {}
    if (root / "Annotations").is_dir() and (root / "JPEGImages").is_dir():
        found["voc"] = "Annotations/ and JPEGImages/ (Pascal VOC)"
    if (root / "gtFine").is_dir() and (root / "leftImg8bit").is_dir():
        found["cityscapes"] = "gtFine/ and leftImg8bit/ (Cityscapes)"
    jsons = sorted(root.glob("annotations/*.json"))
    roboflow = sorted(root.glob(f"*/{ROBOFLOW_COCO_JSON}"))
    if jsons:
        found["coco"] = f"annotations/{jsons[0].name} (COCO JSON)"
    elif roboflow:
        found["coco"] = f"{roboflow[0].parent.name}/{ROBOFLOW_COCO_JSON} (Roboflow COCO)"
    elif (root / LABEL_STUDIO_COCO_JSON).is_file():
        found["coco"] = f"{LABEL_STUDIO_COCO_JSON} (Label Studio COCO; split 'result')"
    yaml = next((root / n for n in YOLO_YAML_NAMES if (root / n).is_file()), None)
    if yaml is not None:
        found["yolo"] = f"{yaml.name} (YOLO)"
    elif (root / "labels").is_dir() and (root / "images").is_dir():
        found["yolo"] = "labels/ beside images/ (YOLO)"
    elif any((p / "labels").is_dir() and (p / "images").is_dir() for p in root.iterdir()):
        found["yolo"] = "<split>/images and <split>/labels (Roboflow YOLO)"
    return found


def detect_format(root) -> tuple[str, str]:
    """``(format, reason)`` for a dataset folder: ``voc`` (``Annotations/`` + ``JPEGImages/``),
    ``cityscapes`` (``gtFine/`` + ``leftImg8bit/``), ``coco`` (``annotations/*.json`` or
    ``*/_annotations.coco.json``) or ``yolo`` (``data.yaml``/``data.yml``, ``labels/`` beside
    ``images/``, or ``*/labels``), tried in that order; the reason names what was found (and the
    other layouts the folder also matches).

    Raises ``FileNotFoundError`` listing what the folder contains (and the sub-folders that
    do look like a dataset) when no layout fits.
    """
    root = _folder(root)
    found = _format_evidence(root)
    if found:
        fmt, reason = next(iter(found.items()))
        others = [f"{f}: {r}" for f, r in found.items() if f != fmt]
        return fmt, reason + (f"; it also looks like {', '.join(others)}" if others else "")
    children = [f"{p} ({f})" for p in sorted(root.iterdir()) if p.is_dir()
                for f in list(_format_evidence(p))[:1]]
    hint = f"; these sub-folders do look like datasets: {', '.join(children)}" if children \
        else ""
    raise FileNotFoundError(
        f"cannot tell the dataset format of {root}: it has none of Annotations/+JPEGImages/ "
        "(voc), annotations/*.json, <split>/_annotations.coco.json or result.json (coco), "
        "data.yaml or "
        f"images/+labels/ (yolo), gtFine/+leftImg8bit/ (cityscapes); it contains "
        f"{_contents(root)}{hint}. Pass --format to choose one")


def available_splits(fmt: str, root) -> list[str]:
    """Split names the ``fmt`` reader accepts for ``root``: VOC ``ImageSets/Main/*.txt``, COCO
    :func:`coco_splits`, YOLO :func:`~kft.data.readers.yolo.yolo_splits` (``data.yaml`` entries
    and ``images/<split>`` / ``<split>/images`` folders), Cityscapes ``gtFine/*``."""
    root = Path(root).expanduser()
    if fmt == "voc":
        from kft.data.readers.voc import available_splits as voc_splits

        return voc_splits(root)
    if fmt == "coco":
        return coco_splits(root)
    if fmt == "yolo":
        from kft.data.readers.yolo import yolo_splits

        return yolo_splits(root)
    if fmt == "cityscapes":
        gt = root / "gtFine"
        return sorted(p.name for p in gt.iterdir() if p.is_dir()) if gt.is_dir() else []
    raise ValueError(f"format {fmt!r} must be one of ['voc', 'coco', 'yolo', 'cityscapes']")
