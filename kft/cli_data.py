"""``kft data``: check, browse, convert and generate detection datasets.

::

    kft data check ROOT [--format auto] [--split train --val-split val] [--reference ROOT2]
    kft data browse ROOT [--split val2017 --n 16 --augment default --out g.png]
    kft data convert ROOT --to yolo --out YOLO_DIR [--from auto --split train]
    kft data convert VOC_ROOT --from voc --to coco --out train.json [--split trainval]
    kft data convert FILE.json --from coco --to voc [--image-dir IMAGES] --out VOC_DIR
    kft data make-shapes DIR [--num-train 200 --num-val 50 --image-size 128]

ROOT is a dataset folder as the annotation tools export it; ``--format auto`` (the default)
tells the layout by its files (:func:`kft.data.readers.layout.detect_format`) and says which:
a VOC folder (``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/``), a COCO folder (COCO's
``annotations/instances_<split>.json`` + ``<split>/``, CVAT's ``images/``, Roboflow's
``<split>/_annotations.coco.json``; ``--image-dir`` names the image folder when it cannot be
found), a YOLO folder (Ultralytics' ``data.yaml`` + ``images/<split>``, ``labels/<split>``, or
Roboflow's ``<split>/images``, ``<split>/labels``) or a Cityscapes folder (``leftImg8bit/``,
``gtFine/``). Without ``--split`` / ``--val-split`` the usual pair of the splits that exist is
taken (VOC trainval/test or train/val, COCO train2017/val2017 or train/val(id), ...). VOC class
names default to the 20 VOC classes when every annotated name is one of them, else to the
sorted names found in both splits' annotations (:func:`kft.data.readers.voc.infer_voc_class_names`);
``--classes a,b,c`` sets them. Where the files were found and where class names came from is
printed. Errors print ``kft data: error: ...`` naming the file and exit with code 2.
"""

from __future__ import annotations

import json
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import click

READ_FORMATS = ("voc", "coco", "yolo", "cityscapes")
FORMATS = ("auto", *READ_FORMATS)
WRITE_FORMATS = ("voc", "coco", "yolo")
# (train, val) split pairs tried in order when --split / --val-split are not given
DEFAULT_SPLIT_PAIRS = {
    "voc": (("trainval", "test"), ("train", "val"), ("trainval", None), ("train", None)),
    "coco": (("train2017", "val2017"), ("train", "val"), ("train", "valid"), ("train", "test"),
             ("train2017", None), ("train", None), ("default", None)),
    "yolo": (("train", "val"), ("train", "valid"), ("train", "test"), ("train", None),
             ("all", None)),
    "cityscapes": (("train", "val"), ("train", None)),
}
AUGMENTS = ("none", "default", "ssd")
NO_SPLIT = ("none", "")
USER_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, ValueError)


def _fail(error) -> None:
    """Prints ``kft data: error: ...`` to stderr and exits with code 2."""
    click.echo(f"kft data: error: {error}", err=True)
    sys.exit(2)


def _classes_option(text: str | None) -> list[str] | None:
    """``"a,b,c"`` -> ``["a", "b", "c"]``; ``None`` stays ``None``."""
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ValueError(f"--classes {text!r} names no class")
    return names


@contextmanager
def _echo_warnings():
    """Prints the readers' warnings (most objects dropped, ...) as ``warning: ...`` lines."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        yield
    for w in caught:
        if issubclass(w.category, UserWarning):
            click.echo(f"warning: {w.message}")


def resolve_format(fmt: str, root) -> str:
    """``fmt``, or for ``auto`` the detected format (printed with the reason)."""
    if fmt != "auto":
        return fmt
    from kft.data.readers.layout import detect_format

    if Path(root).is_file():
        if Path(root).suffix.lower() == ".json":
            click.echo(f"format: coco ({Path(root).name} is a JSON file)")
            return "coco"
        raise ValueError(f"{root} is a file: --format auto takes a dataset folder or a COCO "
                         ".json file")
    found, reason = detect_format(root)
    click.echo(f"format: {found} ({reason})")
    return found


def _available(fmt: str, root) -> list[str]:
    from kft.data.readers.layout import available_splits

    try:
        return available_splits(fmt, root)
    except (OSError, ValueError):
        return []


def _check_looks_like(fmt: str, root) -> None:
    """``ValueError`` when ``root`` has no ``fmt`` split but looks like another format."""
    from kft.data.readers.layout import detect_format

    try:
        found, reason = detect_format(root)
    except (OSError, ValueError):
        return
    if found != fmt:
        raise ValueError(f"{root} has no {fmt} split but looks like {found} ({reason}): use "
                         f"--format {found}, or --format auto")


def default_split_names(fmt: str, root, split: str | None,
                        val_split: str | None) -> dict[str, str]:
    """``{"train": name, "val": name}``: the given names, else the first pair of
    :data:`DEFAULT_SPLIT_PAIRS` whose splits exist in ``root``; ``--val-split none`` (or no
    validation split found, which is printed) leaves val out."""
    have = _available(fmt, root)
    if not have:
        _check_looks_like(fmt, root)
    pairs = DEFAULT_SPLIT_PAIRS[fmt]
    if split is None:
        fitting = [p for p in pairs if p[0] in have and (p[1] is None or p[1] in have)]
        split = fitting[0][0] if fitting else (have[0] if have else pairs[0][0])
    names = {"train": split}
    if val_split is None:
        val_split = next((v for t, v in pairs if t == split and v in have), None)
        if val_split is None:
            others = [s for s in have if s != split]
            click.echo(f"note: no validation split found for {split!r} (splits in {root}: "
                       f"{have}); checking {split!r} alone" + (" (--val-split NAME picks one "
                                                                 f"of {others})" if others
                                                                 else ""))
            return names
    if val_split.lower() not in NO_SPLIT:
        names["val"] = val_split
    return names


def read_split(fmt: str, root, split: str, class_names=None, check_images: str = "full", *,
               image_dir=None, report=None):
    """One split of a dataset in ``fmt`` (``voc``/``coco``/``yolo``/``cityscapes``) as a
    :class:`~kft.data.readers.detection.DetectionSplit`; ``root`` may be a COCO JSON file.
    VOC class names are inferred (``class_names=None``) from this split."""
    from kft.data.readers.formats import read_detection

    if image_dir is not None and fmt != "coco":
        raise ValueError(f"--image-dir is for COCO datasets, not {fmt}")
    if fmt == "coco" and Path(root).is_file():
        from kft.data.readers.coco import read_coco

        return read_coco(None, split, annotation_file=root, image_dir=image_dir,
                         check_images=check_images, report=report)
    return read_detection(fmt, root, split, class_names=class_names, check_images=check_images,
                          image_dir=image_dir, report=report)


def _print_layout(splits: dict) -> None:
    """Where each split's files were found and where the class names come from."""
    for split in splits.values():
        if split.layout_note:
            click.echo(split.layout_note)
    train = next(iter(splits.values()))
    source = {"voc": "the 20 VOC classes (every annotated name is one)",
              "inferred": "inferred from the annotations", "file": "from the dataset's files",
              "given": "given", "fixed": "the reader's"}.get(train.class_names_source,
                                                         train.class_names_source)
    click.echo(f"classes ({source}): {list(train.class_names)}")


def _infer_voc(root, splits) -> tuple[list[str], str]:
    """``(class names, "voc" | "inferred")`` shared by VOC ``splits`` of ``root``."""
    from kft.data.readers.voc import VOC_CLASSES, infer_voc_class_names

    classes = infer_voc_class_names(root, splits)
    return classes, "voc" if classes == list(VOC_CLASSES) else "inferred"


def _read_all(fmt, root, names: dict[str, str], classes, check_images, image_dir=None) -> dict:
    """Reads every split in ``names``; VOC class names are shared (inferred over all), and a
    val split with other classes is aligned to train's by name."""
    from kft.data.readers.detection import align_classes

    inferred = None
    if fmt == "voc" and classes is None:
        classes, inferred = _infer_voc(root, list(names.values()))
    splits = {}
    for key, split in names.items():
        try:
            splits[key] = read_split(fmt, root, split, classes, check_images,
                                     image_dir=image_dir)
        except FileNotFoundError as e:
            hint = " (--val-split none checks the training split alone)" if key == "val" else ""
            raise FileNotFoundError(f"{e}{hint}") from None
        if inferred is not None:
            splits[key].class_names_source = inferred
    if "val" in splits and splits["val"].class_names != splits["train"].class_names:
        splits["val"] = align_classes(splits["train"], splits["val"], f"train ({names['train']})",
                                      f"val ({names['val']})")
    return splits


def _read_references(fmt, root, names: dict[str, str], class_names, check_images) -> dict:
    """The reference's splits of the same names (a missing one is left out with a note);
    ``ValueError`` when none exists or the classes differ."""
    references, missing = {}, []
    for key, split in names.items():
        try:
            ref = read_split(fmt, root, split, class_names if fmt in ("voc", "yolo") else None,
                             check_images)
        except FileNotFoundError as e:
            missing.append(f"{split}: {e}")
            continue
        if list(ref.class_names) != list(class_names):
            raise ValueError(f"reference {root} ({split}) has classes {ref.class_names}, "
                             f"the checked data {list(class_names)}")
        references[key] = ref
    if not references:
        raise FileNotFoundError(f"reference {root} has none of the splits "
                                f"{list(names.values())}: " + "; ".join(missing))
    for note in missing:
        click.echo(f"note: reference has no split {note}")
    return references


@click.group("data", context_settings={"help_option_names": ["-h", "--help"]})
def data():
    """Check, browse, convert and generate detection datasets."""


_root_arg = click.argument("root", type=click.Path(exists=True, file_okay=False))
_format_opt = click.option("--format", "fmt", type=click.Choice(FORMATS), default="auto",
                           show_default=True,
                           help="Dataset layout of ROOT (auto: told by its files).")
_classes_opt = click.option("--classes", default=None,
                            help="VOC/YOLO class names, comma-separated (default: VOC inferred "
                                 "from the annotations, YOLO from data.yaml).")
_image_dir_opt = click.option("--image-dir", type=click.Path(exists=True, file_okay=False),
                              default=None,
                              help="COCO: the folder the JSON's file_name are relative to "
                                   "(default: found beside the annotations).")


@data.command("check", short_help="Counts, histograms, KL(train||val), duplicates.")
@_root_arg
@_format_opt
@click.option("--split", "--train-split", "split", default=None,
              help="Training split [the first that exists: voc trainval/train, coco "
                   "train2017/train, yolo/cityscapes train].")
@click.option("--val-split", default=None,
              help="Validation split [voc test/val, coco val2017/val/valid, yolo val/valid, "
                   "cityscapes val, whichever exists]; 'none' to skip it.")
@click.option("--reference", type=click.Path(exists=True, file_okay=False), default=None,
              help="A second annotation of the same images (same format) to compare with (D5).")
@click.option("--out", "out_dir", default="data_check", show_default=True,
              help="Folder for check.json and the plots.")
@_classes_opt
@click.option("--iou", "iou_threshold", default=0.75, show_default=True,
              help="IoU above which boxes duplicate / agree with each other.")
@click.option("--kl-smoothing", default=1.0, show_default=True,
              help="Pseudo-count added to every class before KL(train || val).")
@click.option("--check-images", type=click.Choice(["full", "header"]), default="full",
              show_default=True, help="Decode every image (finds truncated files) or headers.")
@_image_dir_opt
def check_cmd(root, fmt, split, val_split, reference, out_dir, classes, iou_threshold,
              kl_smoothing, check_images, image_dir):
    """Counts, class and box-size histograms, bad files, KL(train || val) and duplicate boxes
    (plus agreement with --reference); writes OUT/check.json and PNG plots."""
    from kft.data.stats import check_dataset

    try:
        with _echo_warnings():
            fmt = resolve_format(fmt, root)
            names = default_split_names(fmt, root, split, val_split)
            splits = _read_all(fmt, root, names, _classes_option(classes), check_images,
                               image_dir)
            _print_layout(splits)
            class_names = splits["train"].class_names
            refs = _read_references(fmt, reference, names, class_names, check_images) \
                if reference else None
        result = check_dataset(splits, refs, iou_threshold=iou_threshold,
                               kl_smoothing=kl_smoothing)
    except USER_ERRORS as e:
        _fail(e)
    result.update({"root": str(root), "format": fmt, "split_names": names,
                   "class_names_source": splits["train"].class_names_source,
                   "layout": {k: s.layout_note for k, s in splits.items()},
                   "reference_root": None if reference is None else str(reference)})
    result["plots"] = _write_plots(splits, result, Path(out_dir))
    out = Path(out_dir) / "check.json"
    out.write_text(json.dumps(result, indent=2, default=str))
    for line in summary_lines(result):
        click.echo(line)
    click.echo(f"wrote {out} and {len(result['plots'])} plots in {out_dir}")


def _write_plots(splits: dict, result: dict, out_dir: Path) -> list[str]:
    """The check PNGs: class histogram, box sizes, train-vs-val distribution (with val)."""
    from kft.data.gallery import plot_box_sizes, plot_class_distributions, plot_class_histogram
    from kft.data.stats import box_geometry

    out_dir.mkdir(parents=True, exist_ok=True)
    per_split = {k: s["per_class"] for k, s in result["splits"].items()}
    paths = [plot_class_histogram(per_split, out_dir / "class_histogram.png"),
             plot_box_sizes({k: box_geometry(s) for k, s in splits.items()},
                            out_dir / "box_sizes.png")]
    if result["distribution"]:
        paths.append(plot_class_distributions(result["distribution"],
                                              out_dir / "class_distribution.png"))
    return paths


def _percent(share) -> str:
    return "n/a" if share is None else f"{100 * share:.1f}%"


def summary_lines(result: dict) -> list[str]:
    """A short human summary of a :func:`kft.data.stats.check_dataset` result."""
    lines = []
    for key, s in result["splits"].items():
        name = result.get("split_names", {}).get(key, key)
        sizes, cons = s["box_sizes"], s["consistency"]
        classes = ", ".join(f"{n} {c}" for n, c in s["per_class"].items())
        lines += [
            f"{key} ({name}): {s['images']} images, {s['objects']} objects, "
            f"{s['background_images']} background images, "
            f"{s['bad_files']['num_skipped']} problems skipped, "
            f"{s['bad_files']['num_converted']} corrected",
            f"  per class: {classes}",
            f"  boxes: small {sizes['coco_sizes']['small']} / medium "
            f"{sizes['coco_sizes']['medium']} / large {sizes['coco_sizes']['large']}, "
            f"median sqrt(area) {sizes['sqrt_area']['median']} px, median w/h "
            f"{sizes['aspect_ratio']['median']}",
            f"  duplicates: {cons['num_duplicate_pairs']} same-class pairs at IoU > "
            f"{cons['iou_threshold']:g}; {_percent(cons['share_consistent'])} of boxes "
            f"consistent (target {_percent(cons['target'])}): "
            f"{'OK' if cons['ok'] else 'BELOW TARGET'}"]
    lines += _kl_lines(result) + _reference_lines(result)
    return lines


def _kl_lines(result: dict) -> list[str]:
    dist = result["distribution"]
    if dist is None:
        return ["KL(train || val): no validation split"]
    kl = "inf" if dist["kl_train_val"] is None else f"{dist['kl_train_val']:.4f}"
    line = f"KL(train || val) = {kl} (smoothing {dist['kl_smoothing']:g}, threshold " \
           f"{dist['kl_threshold']:g})"
    if not dist["kl_warning"]:
        return [line + ": OK"]
    return [line, f"WARNING: KL(train || val) = {kl} exceeds {dist['kl_threshold']:g}: the "
            "validation class distribution differs from training's (see "
            "class_distribution.png)"]


def _reference_lines(result: dict) -> list[str]:
    lines = []
    for key, a in (result["reference"] or {}).items():
        lines.append(f"reference ({key}): {_percent(a['share'])} of {a['boxes']} boxes in "
                     f"{a['images_compared']} images agree at IoU > {a['iou_threshold']:g} "
                     f"(target > {_percent(a['target'])}): "
                     f"{'OK' if a['ok'] else 'BELOW TARGET'}")
    return lines


def _augmenter(name: str):
    """The detection augmentation named ``name`` (``default``/``ssd``), or ``None`` for
    ``none``; ``click.ClickException`` when :mod:`kft.data.detection_augment` is missing."""
    if name == "none":
        return None
    try:
        from kft.data.detection_augment import detection_augment_by_name
    except ImportError as e:
        raise click.UsageError(f"--augment {name} needs kft.data.detection_augment, which "
                               f"cannot be imported ({e}); use --augment none") from None
    return detection_augment_by_name(name)


@data.command("browse", short_help="Gallery PNG of annotated (augmented) images.")
@_root_arg
@_format_opt
@click.option("--split", default=None,
              help="Split to show [the training split that exists, as in check].")
@click.option("--n", "num", default=16, show_default=True, type=click.IntRange(min=1),
              help="Number of images.")
@click.option("--augment", type=click.Choice(AUGMENTS), default="none", show_default=True,
              help="Show the images after this detection augmentation.")
@click.option("--seed", default=0, show_default=True, help="Picks the images (and augments).")
@click.option("--out", default="gallery.png", show_default=True, help="Gallery PNG file.")
@click.option("--tile", default=256, show_default=True, type=click.IntRange(min=32),
              help="Tile side in pixels.")
@click.option("--cols", default=None, type=click.IntRange(min=1),
              help="Tiles per row (default: a square grid).")
@_classes_opt
@_image_dir_opt
def browse_cmd(root, fmt, split, num, augment, seed, out, tile, cols, classes, image_dir):
    """A gallery PNG of images with boxes, class names and instance masks overlaid."""
    from kft.data.gallery import browse, save_png

    augment_fn = _augmenter(augment)
    try:
        with _echo_warnings():
            fmt = resolve_format(fmt, root)
            split = split or default_split_names(fmt, root, None, "none")["train"]
            data_split = read_split(fmt, root, split, _classes_option(classes),
                                    check_images="header", image_dir=image_dir)
            _print_layout({"train": data_split})
        sheet = browse(data_split, num, seed=seed, augment=augment_fn, tile=tile, cols=cols)
    except USER_ERRORS as e:
        _fail(e)
    save_png(sheet, out)
    shown = min(num, len(data_split))
    click.echo(f"wrote {out}: {shown} images ({sheet.width}x{sheet.height} px), augment "
               f"{augment}, seed {seed}")


@data.command("convert", short_help="Convert between voc, coco and yolo (and cityscapes ->).")
@click.argument("src", type=click.Path(exists=True))
@click.option("--from", "src_fmt", type=click.Choice(FORMATS), default="auto", show_default=True,
              help="Layout of SRC (auto: told by its files; a .json file is COCO).")
@click.option("--to", "dst_fmt", type=click.Choice(WRITE_FORMATS), required=True)
@click.option("--out", required=True,
              help="coco: the JSON file; voc / yolo: the output folder (yolo: several splits "
                   "may go into one folder).")
@click.option("--split", default=None,
              help="The split to read [as in check]; also the split name written (VOC "
                   "ImageSets/Main/<split>.txt, YOLO images/<split>). For a COCO JSON SRC: "
                   "[the JSON's name without instances_].")
@_image_dir_opt
@_classes_opt
def convert_cmd(src, src_fmt, dst_fmt, out, split, image_dir, classes):
    """Converts one split of SRC (a dataset folder, or a COCO JSON file) to COCO JSON, a VOC
    folder or a YOLO folder (images copied as they are)."""
    from kft.data.report import DataReport

    report = DataReport()
    try:
        with _echo_warnings():
            src_fmt = resolve_format(src_fmt, src)
            if src_fmt == dst_fmt:
                raise ValueError(f"--from {src_fmt} --to {dst_fmt}: nothing to convert")
            split = split or _source_split(src_fmt, src)
            classes, inferred = _classes_option(classes), None
            if src_fmt == "voc" and classes is None:  # over every split, so that the
                classes, inferred = _infer_voc(src, _available("voc", src) or [split])
            data_split = read_split(src_fmt, src, split, classes, check_images="header",
                                    image_dir=image_dir, report=report)  # splits agree
            data_split.class_names_source = inferred or data_split.class_names_source
            _print_layout({"train": data_split})
            written = _write(data_split, src_fmt, src, dst_fmt, out, split, report)
    except USER_ERRORS as e:
        _fail(e)
    counts = report.counts
    click.echo(f"wrote {written}: {counts.get('images', 0)} images, "
               f"{counts.get('objects', 0)} objects ({src_fmt} -> {dst_fmt})")
    for entry in report.skipped[:10]:
        click.echo(f"  skipped {entry['path']} [{entry['field']}]: {entry['reason']}")
    if len(report.skipped) > 10:
        click.echo(f"  ... {len(report.skipped) - 10} more skipped")


def _source_split(fmt: str, src) -> str:
    """The split converted without ``--split``: a COCO JSON's name (``instances_`` dropped;
    Roboflow's folder name), else the training split :func:`default_split_names` picks."""
    src = Path(src)
    if src.is_file():
        return src.parent.name if src.name == "_annotations.coco.json" \
            else src.stem.removeprefix("instances_")
    return default_split_names(fmt, src, None, "none")["train"]


def _write(data_split, src_fmt, src, dst_fmt, out, split, report) -> Path:
    """Writes ``data_split`` in ``dst_fmt``; returns what was written."""
    from kft.data.convert import write_coco, write_voc, write_yolo

    image_root = None
    if src_fmt == "cityscapes":
        image_root = Path(src) / "leftImg8bit" / split
    if dst_fmt == "coco":
        from kft.data.convert import image_root_of

        segmentation = "polygon" if any(r.segmentation for r in data_split.records) else None
        image_root = image_root or image_root_of(data_split)
        click.echo(f"file_name in {out} are relative to {image_root} (read_coco's image_dir)")
        return write_coco(data_split, out, image_root, segmentation=segmentation)
    if dst_fmt == "voc":
        return write_voc(data_split, out, split, image_root, report=report)
    return write_yolo(data_split, out, split, report=report)


@data.command("make-shapes", short_help="Write the GENERATED shapes dataset.")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--num-train", default=200, show_default=True, type=click.IntRange(min=1))
@click.option("--num-val", default=50, show_default=True, type=click.IntRange(min=1))
@click.option("--image-size", default=128, show_default=True, type=click.IntRange(min=16))
@click.option("--classes", default="circle,square,triangle,star,ring", show_default=True,
              help="Shapes to draw, comma-separated.")
@click.option("--max-objects", default=4, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace DIRECTORY if it is not empty.")
def make_shapes_cmd(directory, num_train, num_val, image_size, classes, max_objects, seed,
                    overwrite):
    """Writes kft's GENERATED shapes detection dataset (VOC and COCO layouts, masks)."""
    from kft.data.shapes import SHAPE_CLASSES, make_shapes_detection

    try:
        names = _classes_option(classes)
        unknown = [n for n in names if n not in SHAPE_CLASSES]
        if unknown:
            raise ValueError(f"unknown shapes {unknown}; available: {list(SHAPE_CLASSES)}")
        root = make_shapes_detection(directory, classes=tuple(names), num_train=num_train,
                                     num_val=num_val, image_size=image_size,
                                     max_objects=max_objects, seed=seed, overwrite=overwrite)
    except USER_ERRORS as e:
        _fail(e)
    click.echo(f"wrote GENERATED data (procedurally drawn shapes, not real photos) to {root}:")
    click.echo(f"  {num_train} train + {num_val} val images, {image_size}x{image_size}, "
               f"classes {names}, seed {seed}")
    click.echo(f"  VOC:  {root / 'VOC'} (splits train, val, trainval, test=val)")
    click.echo(f"  COCO: {root / 'COCO'} (annotations/instances_{{train,val}}.json, masks)")
    click.echo(f"  try: kft data check {root / 'COCO'}")
