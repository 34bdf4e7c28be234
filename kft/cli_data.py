"""``kft data``: check, browse, convert and generate detection datasets.

::

    kft data check ROOT --format voc [--split trainval --val-split test] [--reference ROOT2]
    kft data browse ROOT --format coco --split val2017 [--n 16 --augment default --out g.png]
    kft data convert VOC_ROOT --from voc --to coco --out train.json [--split trainval]
    kft data convert FILE.json --from coco --to voc --image-dir IMAGES --out VOC_DIR
    kft data make-shapes DIR [--num-train 200 --num-val 50 --image-size 128]

ROOT is what the readers take: a VOC folder (``Annotations/``, ``JPEGImages/``,
``ImageSets/Main/``), a COCO dataset folder (``annotations/instances_<split>.json`` and
``<split>/``), or a Cityscapes folder (``leftImg8bit/``, ``gtFine/``). VOC class names default
to the 20 VOC classes when every annotated name is one of them, else to the sorted names found
in the split files' annotations; ``--classes a,b,c`` sets them. Errors print
``kft data: error: ...`` naming the file and exit with code 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

import click

FORMATS = ("voc", "coco", "cityscapes")
DEFAULT_SPLITS = {"voc": ("trainval", "test"), "coco": ("train2017", "val2017"),
                  "cityscapes": ("train", "val")}
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


def voc_class_names(root, splits) -> list[str]:
    """Class names for a VOC folder: :data:`~kft.data.readers.voc.VOC_CLASSES` when every
    object name in the ``splits``' annotations is a VOC class, else the sorted names found.
    Unreadable files are left for the reader to report."""
    from kft.data.readers.voc import VOC_CLASSES

    root, found = Path(root), set()
    for split in splits:
        ids_file = root / "ImageSets" / "Main" / f"{split}.txt"
        if not ids_file.is_file():
            continue
        for line in ids_file.read_text(errors="replace").split("\n"):
            xml = root / "Annotations" / f"{line.split()[0]}.xml" if line.split() else None
            if xml is None or not xml.is_file():
                continue
            try:
                tree = ET.parse(xml).getroot()
            except (ET.ParseError, OSError, UnicodeDecodeError):
                continue
            found.update((o.findtext("name") or "").strip() for o in tree.iter("object"))
    found.discard("")
    return list(VOC_CLASSES) if found <= set(VOC_CLASSES) else sorted(found)


def read_split(fmt: str, root, split: str, class_names=None, check_images: str = "full"):
    """One split of a dataset in ``fmt`` (``voc``/``coco``/``cityscapes``) as a
    :class:`~kft.data.readers.detection.DetectionSplit`."""
    from kft.data.readers.formats import read_detection

    if fmt == "voc":
        class_names = class_names or voc_class_names(root, [split])
    return read_detection(fmt, root, split, class_names=class_names, check_images=check_images)


def _split_names(fmt: str, split: str | None, val_split: str | None) -> dict[str, str]:
    """``{"train": name, "val": name}`` with the format's defaults; ``--val-split none``
    leaves val out."""
    train_default, val_default = DEFAULT_SPLITS[fmt]
    names = {"train": split or train_default}
    val = val_default if val_split is None else val_split
    if val.lower() not in NO_SPLIT:
        names["val"] = val
    return names


def _read_all(fmt, root, names: dict[str, str], classes, check_images) -> dict:
    """Reads every split in ``names``; VOC class names are shared (inferred over all)."""
    if fmt == "voc" and classes is None:
        classes = voc_class_names(root, list(names.values()))
    splits = {}
    for key, split in names.items():
        try:
            splits[key] = read_split(fmt, root, split, classes, check_images)
        except FileNotFoundError as e:
            hint = " (--val-split none checks the training split alone)" if key == "val" else ""
            raise FileNotFoundError(f"{e}{hint}") from None
    return splits


def _read_references(fmt, root, names: dict[str, str], class_names, check_images) -> dict:
    """The reference's splits of the same names (a missing one is left out with a note);
    ``ValueError`` when none exists or the classes differ."""
    references, missing = {}, []
    for key, split in names.items():
        try:
            ref = read_split(fmt, root, split, class_names if fmt == "voc" else None,
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
_format_opt = click.option("--format", "fmt", type=click.Choice(FORMATS), required=True,
                           help="Dataset layout of ROOT.")
_classes_opt = click.option("--classes", default=None,
                            help="VOC class names, comma-separated (default: inferred).")


@data.command("check", short_help="Counts, histograms, KL(train||val), duplicates.")
@_root_arg
@_format_opt
@click.option("--split", "--train-split", "split", default=None,
              help="Training split [voc: trainval, coco: train2017, cityscapes: train].")
@click.option("--val-split", default=None,
              help="Validation split [voc: test, coco: val2017, cityscapes: val]; 'none' to "
                   "skip it.")
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
def check_cmd(root, fmt, split, val_split, reference, out_dir, classes, iou_threshold,
              kl_smoothing, check_images):
    """Counts, class and box-size histograms, bad files, KL(train || val) and duplicate boxes
    (plus agreement with --reference); writes OUT/check.json and PNG plots."""
    from kft.data.stats import check_dataset

    try:
        names = _split_names(fmt, split, val_split)
        splits = _read_all(fmt, root, names, _classes_option(classes), check_images)
        class_names = splits["train"].class_names
        refs = _read_references(fmt, reference, names, class_names, check_images) \
            if reference else None
        result = check_dataset(splits, refs, iou_threshold=iou_threshold,
                               kl_smoothing=kl_smoothing)
    except USER_ERRORS as e:
        _fail(e)
    result.update({"root": str(root), "format": fmt, "split_names": names,
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
              help="Split to show [voc: trainval, coco: train2017, cityscapes: train].")
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
def browse_cmd(root, fmt, split, num, augment, seed, out, tile, cols, classes):
    """A gallery PNG of images with boxes, class names and instance masks overlaid."""
    from kft.data.gallery import browse, save_png

    augment_fn = _augmenter(augment)
    try:
        data_split = read_split(fmt, root, split or DEFAULT_SPLITS[fmt][0],
                                _classes_option(classes), check_images="header")
        sheet = browse(data_split, num, seed=seed, augment=augment_fn, tile=tile, cols=cols)
    except USER_ERRORS as e:
        _fail(e)
    save_png(sheet, out)
    shown = min(num, len(data_split))
    click.echo(f"wrote {out}: {shown} images ({sheet.width}x{sheet.height} px), augment "
               f"{augment}, seed {seed}")


@data.command("convert", short_help="Convert voc/cityscapes -> coco, coco -> voc.")
@click.argument("src", type=click.Path(exists=True))
@click.option("--from", "src_fmt", type=click.Choice(FORMATS), required=True)
@click.option("--to", "dst_fmt", type=click.Choice(["coco", "voc"]), required=True)
@click.option("--out", required=True, help="COCO: the JSON file; VOC: the output folder.")
@click.option("--split", default=None,
              help="voc/cityscapes -> coco: the split to read [trainval / train]; coco -> "
                   "voc: the ImageSets/Main name [the JSON's name without instances_].")
@click.option("--image-dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="coco -> voc: the folder the JSON's file_name are relative to.")
@_classes_opt
def convert_cmd(src, src_fmt, dst_fmt, out, split, image_dir, classes):
    """Converts voc -> coco, cityscapes -> coco or coco -> voc (SRC: a VOC or Cityscapes
    folder, or a COCO JSON file)."""
    from kft.data.report import DataReport

    report = DataReport()
    try:
        if (src_fmt, dst_fmt) == ("coco", "voc"):
            written = _coco_to_voc(src, image_dir, out, split, report)
        elif dst_fmt == "coco" and src_fmt in ("voc", "cityscapes"):
            written = _to_coco(src, src_fmt, out, split, _classes_option(classes), report)
        else:
            raise ValueError(f"cannot convert {src_fmt} -> {dst_fmt}: supported are voc -> "
                             "coco, cityscapes -> coco and coco -> voc")
    except USER_ERRORS as e:
        _fail(e)
    counts = report.counts
    click.echo(f"wrote {written}: {counts.get('images', 0)} images, "
               f"{counts.get('objects', 0)} objects ({src_fmt} -> {dst_fmt})")
    for entry in report.skipped[:10]:
        click.echo(f"  skipped {entry['path']} [{entry['field']}]: {entry['reason']}")
    if len(report.skipped) > 10:
        click.echo(f"  ... {len(report.skipped) - 10} more skipped")


def _coco_to_voc(src, image_dir, out, split, report) -> Path:
    from kft.data.convert import coco_to_voc

    if image_dir is None:
        raise ValueError("coco -> voc needs --image-dir (the folder the JSON's file_name "
                         "are relative to)")
    if not Path(src).is_file():
        raise ValueError(f"coco -> voc: SRC {src} must be the COCO JSON file")
    return coco_to_voc(src, image_dir, out, split=split, report=report)


def _to_coco(src, src_fmt, out, split, classes, report) -> Path:
    from kft.data.convert import voc_to_coco, write_coco
    from kft.data.readers.cityscapes import read_cityscapes

    split = split or DEFAULT_SPLITS[src_fmt][0]
    if src_fmt == "voc":
        classes = classes or voc_class_names(src, [split])
        return voc_to_coco(src, split, out, class_names=classes, report=report)
    data_split = read_cityscapes(src, split, report=report, check_images="header")
    return write_coco(data_split, out, Path(src) / "leftImg8bit" / split)


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
    click.echo(f"  try: kft data check {root / 'COCO'} --format coco --split train "
               "--val-split val")
