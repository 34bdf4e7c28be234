"""Detection: VOC / COCO / Cityscapes -> box-aware pipeline -> SSD / SSDLite -> COCO (and VOC07)
box AP in original image pixels, per-class AP, prediction gallery, TFLite export with the
post-processing inside (:class:`DetectionTask`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kft import config as cfg
from kft.data import DataReport, detection_batches
from kft.data.detection_augment import batch_augment_by_name, detection_augment_by_name
from kft.data.readers.detection import align_classes
from kft.data.readers.formats import DETECTION_FORMATS, read_detection
from kft.data.shapes import SHAPE_CLASSES, make_shapes_detection
from kft.eval.detection import COCOEvalCallback, evaluate_detector
from kft.models.ssd import SSD, ArchError
from kft.tasks import Task, TaskData

HOLDOUT = "holdout"  # data.val_split: a seeded data.val_fraction of the training split


def _roots(root: str) -> list[str]:
    """``"VOC2007,VOC2012"`` -> both folders (VOC 07+12); any other root is one folder."""
    return [r.strip() for r in root.split(",") if r.strip()]


def ensure_root(data: cfg.Data, root: str | None = None, seed: int = 0) -> str:
    """``root`` (default ``data.root``) after checking that it exists; with
    ``data.generate="shapes"`` a missing root is generated first (:func:`generate_shapes`)."""
    root = root or data.root
    if not root:
        raise cfg.ConfigError("data.root is empty: set --set data.root=<dataset folder>")
    if data.generate and not Path(_roots(root)[0]).exists():
        generate_shapes(data, root, seed)
    elif data.generate:
        _warn_if_generated_differently(data, root, seed)
    missing = [r for r in _roots(root) if not Path(r).exists()]
    if missing:
        raise cfg.ConfigError(f"data.root={root!r}: {missing[0]} does not exist")
    return root


def resolve_layout(data: cfg.Data, seed: int = 0) -> list:
    """What reading settles about the data (a list of :class:`kft.train.plan.Change`):
    ``data.format`` when it is "" / "auto" (detected from the folder,
    :func:`kft.data.readers.layout.detect_format`) and VOC ``data.class_names`` when empty
    (the 20 VOC classes when every annotated name is one of them, else the sorted names found
    in the train and val split files, :func:`kft.data.readers.voc.infer_voc_class_names`)."""
    from kft.data.readers.layout import detect_format
    from kft.data.readers.voc import infer_voc_class_names
    from kft.train.plan import Change

    changes = []
    ensure_root(data, seed=seed)
    fmt = data.format
    if fmt in ("", "auto"):
        try:
            fmt, reason = detect_format(_roots(data.root)[0])
        except FileNotFoundError as e:
            raise cfg.ConfigError(f"data.root={data.root!r}: {e} (data.format)") from None
        changes.append(Change("data.format", data.format, fmt, f"detected: {reason}"))
    if fmt not in DETECTION_FORMATS:
        raise cfg.ConfigError(f"data.format={fmt!r} must be one of {list(DETECTION_FORMATS)}")
    if fmt == "voc" and not data.class_names:
        roots = _roots(data.root) + (_roots(data.val_root) if data.val_root else [])
        splits = [data.train_split] + ([data.val_split] if data.val_split != HOLDOUT else [])
        names = infer_voc_class_names(list(dict.fromkeys(roots)), splits)
        if names:
            from kft.data.readers.voc import VOC_CLASSES

            why = ("the 20 VOC classes: every annotated name is one" if tuple(names) ==
                   tuple(VOC_CLASSES) else f"inferred: the {len(names)} names in the "
                   f"annotations of {' and '.join(repr(s) for s in splits)}")
            changes.append(Change("data.class_names", (), tuple(names), why))
    return changes


def read_split(data: cfg.Data, split: str, run_dir: Path, root: str | None = None,
               seed: int = 0, verbose: bool = True, *, key: str):
    """A :class:`DetectionSplit` of ``root`` (default ``data.root``) in ``data.format``
    (resolved: see :func:`resolve_layout`).

    With ``data.generate="shapes"`` and a missing root, kft's generated shapes dataset is
    written first (see :func:`generate_shapes`). A split that loses every annotation (e.g. class
    names that match none of the files') is a ConfigError naming the root and split; a
    split the folder lacks, one naming ``key`` (the recipe key that gave ``split``).
    """
    from kft.data.readers.detection import AnnotationsLostError
    from kft.data.readers.layout import SplitNotFoundError

    fmt = data.format
    root = ensure_root(data, root, seed)
    if fmt not in DETECTION_FORMATS:
        raise cfg.ConfigError(f"data.format={fmt!r} must be one of {list(DETECTION_FORMATS)}")
    where = _roots(root) if fmt == "voc" else _roots(root)[0]
    try:
        split_data = read_detection(fmt, where, split,
                                    class_names=list(data.class_names) or None,
                                    cache_dir=run_dir / "cache" / "converted",
                                    image_dir=(data.image_dir or None) if fmt == "coco"
                                    else None)
    except SplitNotFoundError as e:
        also = (f", or data.val_split={HOLDOUT} to hold out data.val_fraction of the training "
                "split" if key == "data.val_split" else "")
        fix = (f"data.splits={data.splits!r} names it: set data.splits=TRAIN,VAL with one of "
               "them" if data.splits else f"set {key} to one of them, or both splits at "
               "once with data.splits=TRAIN,VAL")
        raise cfg.ConfigError(f"{key}={split!r}: {e}; {fix}{also}") from None
    except AnnotationsLostError as e:
        raise cfg.ConfigError(f"data.root={root!r} split {split!r}: no usable objects: "
                              f"{' '.join(str(e).split())} (data.class_names: empty = "
                              "inferred)") from None
    note = getattr(split_data, "layout_note", None)
    if verbose and note:
        print(f"[kft] {note}")
    return split_data


def _generation_line(data: cfg.Data, seed: int) -> str:
    classes = list(data.class_names) or list(SHAPE_CLASSES[:5])
    return (f"classes={classes} num_train={data.generate_num_train} "
            f"num_val={data.generate_num_val} image_size={[data.image_size] * 2}")


def _warn_if_generated_differently(data: cfg.Data, root: str, seed: int) -> None:
    """An existing generated dataset is reused as it is; says so when the recipe asks for
    another one (other classes, counts or size), since it is not regenerated silently."""
    marker = Path(root).parent / "GENERATED.txt"
    if not marker.is_file():
        return
    wanted = _generation_line(data, seed)
    if wanted not in marker.read_text():
        print(f"[kft] WARNING: {marker.parent} was generated with other settings than the "
              f"recipe asks for ({wanted}); it is used as it is: delete it to regenerate")


def generate_shapes(data: cfg.Data, root: str, seed: int = 0) -> Path:
    """Writes kft's generated shapes dataset for a missing ``root`` (``data.generate="shapes"``).

    ``root`` names the VOC or COCO layout folder inside the generated dataset
    (``.../shapes/VOC`` or ``.../shapes/COCO``); both layouts are written to its parent.
    Classes are ``data.class_names`` (default: the first five shapes), images
    ``data.image_size`` pixels, ``data.generate_num_train`` / ``generate_num_val`` images.
    """
    if data.generate != "shapes":
        raise cfg.ConfigError(f"data.generate={data.generate!r}: only 'shapes' exists")
    layout = Path(root)
    expected = {"voc": "VOC", "coco": "COCO"}.get(data.format)
    if expected is None or layout.name != expected:
        raise cfg.ConfigError(
            f"data.generate=shapes writes VOC/ and COCO/ layouts: data.root={root!r} must end "
            f"in /VOC (format voc) or /COCO (format coco)")
    classes = tuple(data.class_names) or SHAPE_CLASSES[:5]
    unknown = [c for c in classes if c not in SHAPE_CLASSES]
    if unknown:
        raise cfg.ConfigError(f"data.class_names: {unknown} are not generated shapes "
                              f"{list(SHAPE_CLASSES)}")
    print(f"[kft] data.root {root} is missing: GENERATING kft's synthetic shapes detection "
          f"dataset in {layout.parent} (generated images, not real data)")
    return make_shapes_detection(layout.parent, classes=classes,
                                 num_train=data.generate_num_train,
                                 num_val=data.generate_num_val, image_size=data.image_size,
                                 seed=seed)


def is_frcnn(arch: str) -> bool:
    return arch.startswith("fasterrcnn_")


def image_args(d: cfg.Data, arch: str) -> dict:
    """How the pipeline sizes images for ``arch`` (``detection_batches`` keywords).

    SSD: ``data.resize`` to ``data.image_size``. Faster R-CNN with ``keep_aspect``: short side
    ``data.image_size``, long side at most ``data.max_size`` (0: ``image_size``), padded to the
    square canvas of the long side rounded up to 32 (the model's static input); ``fixed``:
    stretched to ``image_size`` (a multiple of 32).
    """
    if not is_frcnn(arch) or d.resize == "fixed":
        return {"image_size": d.image_size, "resize": d.resize}
    longest = d.max_size or d.image_size
    side = -(-longest // 32) * 32
    return {"image_size": (d.image_size, longest), "resize": "keep_aspect",
            "pad_size": (side, side)}


def pyramid_shapes(arch: str, canvas) -> list[tuple[int, int]]:
    """The FPN level sizes of a ResNet / ResNeXt Faster R-CNN on a ``canvas`` input: strides 4,
    8, ... up to the last stage (16 for resnet_tiny, 32 otherwise), then the max-pool level."""
    height, width = (canvas, canvas) if isinstance(canvas, int) else canvas
    last = 16 if arch == "fasterrcnn_resnet_tiny_fpn" else 32
    shapes, stride = [], 4
    while stride <= last:
        shapes.append((-(-height // stride), -(-width // stride)))
        stride *= 2
    shapes.append((-(-shapes[-1][0] // 2), -(-shapes[-1][1] // 2)))
    return shapes


def fit_anchor_sizes(split, recipe: cfg.Recipe):
    """``model.frcnn.fit_anchors``: one anchor size per pyramid level fitted to the training
    boxes as the pipeline sizes them (:func:`kft.ops.anchors.fit_rcnn_anchor_sizes`); returns
    the :class:`~kft.train.plan.Change` of ``model.frcnn.anchor_sizes``. Crowd boxes are left
    out (they are not trained as positives)."""
    from kft.ops.anchors import fit_rcnn_anchor_sizes
    from kft.train.plan import Change

    d, f = recipe.data, recipe.model.frcnn
    args = image_args(d, recipe.model.arch)
    canvas = args.get("pad_size") or (d.image_size, d.image_size)
    from kft.data.detection_pipeline import _resized_hw, resize_spec

    spec = resize_spec(args["image_size"], args["resize"], args.get("pad_size"))
    boxes = []
    for record in split.records:
        keep = record.iscrowd == 0 if len(record.iscrowd) else slice(None)
        b = np.asarray(record.boxes, np.float64).reshape(-1, 4)[keep]
        # the pipeline's own resize (rounding, the canvas cap), per axis
        h, w = np.asarray(_resized_hw((record.height, record.width), spec), np.float64)
        boxes.append(b * np.array([w / record.width, h / record.height] * 2))
    boxes = np.concatenate(boxes) if boxes else np.zeros((0, 4))
    if not len(boxes):
        raise cfg.ConfigError("model.frcnn.fit_anchors=True: the training split has no boxes "
                              "to fit anchor sizes to")
    from kft.models.faster_rcnn import ARCHS

    shapes = pyramid_shapes(recipe.model.arch, canvas)
    baseline = ARCHS[recipe.model.arch].get("anchor_sizes") or tuple(
        (32.0 * 2 ** k,) for k in range(len(shapes)))
    fit = fit_rcnn_anchor_sizes(boxes, canvas, shapes, tuple(f.aspect_ratios) or (2.0, 1.0, 0.5),
                                baseline_sizes=baseline, seed=recipe.train.seed)
    r = fit["report"]
    why = (f"fitted to {r['num_boxes']} training boxes (median side "
           f"{r['box_size_percentiles'][1]:.0f} px at the input): IoU >= 0.5 coverage "
           f"{r['coverage_before']:.1%} -> {r['coverage_after']:.1%}, >= 0.7 "
           f"{r['coverage_at_0.7_before']:.1%} -> {r['coverage_at_0.7_after']:.1%}, mean best "
           f"IoU {r['mean_best_iou_before']:.3f} -> {r['mean_best_iou_after']:.3f}")
    sizes = tuple(tuple(float(v) for v in level) for level in fit["anchor_sizes"])
    return Change("model.frcnn.anchor_sizes", tuple(f.anchor_sizes), sizes, why)


def build_faster_rcnn(m: cfg.Model, t: cfg.Train, e: cfg.Eval, num_classes: int,
                      d: cfg.Data):
    """A Faster R-CNN from recipe fields (:meth:`FasterRCNN.from_arch`, ``model.frcnn.*``)."""
    from kft.models.convert_torchvision import ConvertError
    from kft.models.faster_rcnn import ArchError as FRCNNArchError
    from kft.models.faster_rcnn import FasterRCNN
    from kft.models.weights import WeightsError

    args = image_args(d, m.arch)
    canvas = args.get("pad_size") or (d.image_size, d.image_size)
    f = m.frcnn
    kwargs = {"rpn_nms_threshold": f.rpn_nms_threshold,
              "rpn_pre_nms_top_n": tuple(f.rpn_pre_nms_top_n),
              "rpn_post_nms_top_n": tuple(f.rpn_post_nms_top_n),
              "rpn_batch_size_per_image": f.rpn_batch_size_per_image,
              "box_batch_size_per_image": f.box_batch_size_per_image,
              "box_positive_fraction": f.box_positive_fraction,
              "ohem_fraction": f.ohem_fraction or None, "cls_loss": t.cls_loss,
              "box_loss": t.box_loss, "cls_weight": t.cls_weight, "loc_weight": t.loc_weight,
              "box_score_threshold": e.score_threshold, "box_nms_threshold": e.nms_iou_threshold,
              "max_detections": e.max_detections, "seed": t.seed}
    if args["resize"] == "keep_aspect":
        kwargs.update(min_size=args["image_size"][0], max_size=args["image_size"][1])
    if f.anchor_sizes:
        kwargs["anchor_sizes"] = tuple(tuple(a) for a in f.anchor_sizes)
    if f.aspect_ratios:
        kwargs["aspect_ratios"] = tuple(f.aspect_ratios)
    if f.representation_size:
        kwargs["representation_size"] = f.representation_size
    try:
        model = FasterRCNN.from_arch(
            m.arch, num_classes, image_size=canvas,
            preset=m.preset if m.arch != "fasterrcnn_mobilenet_v3_large_fpn" else "",
            backbone_weights=m.backbone_weights or None, se_stages=tuple(m.se_stages),
            se_reduction=m.se_reduction, separable_stages=tuple(m.separable_stages), **kwargs)
    except (WeightsError, ConvertError) as err:
        raise cfg.ConfigError(f"model.backbone_weights={m.backbone_weights!r}: {err}") from None
    except (FRCNNArchError, ValueError) as err:
        raise cfg.ConfigError(f"model.{err}") from None
    surgery = getattr(model.backbone, "surgery", None)
    if surgery and (surgery["se_stages"] or surgery["separable_stages"]):
        print(f"backbone surgery (M6): SE after {surgery['se_stages'] or 'no stage'}, "
              f"depthwise-separable 3x3 in {surgery['separable_stages'] or 'no stage'}: "
              f"{surgery['params_before']:,} -> {surgery['params_after']:,} backbone "
              f"parameters ({surgery['change']:+.1%})")
    return model


def build_detector(m: cfg.Model, t: cfg.Train, e: cfg.Eval, num_classes: int,
                   image_size: int, data: cfg.Data | None = None):
    """An SSD / SSDLite (:meth:`SSD.from_arch`) or a Faster R-CNN (:func:`build_faster_rcnn`)
    from recipe fields."""
    if is_frcnn(m.arch):
        return build_faster_rcnn(m, t, e, num_classes, data or cfg.Data(image_size=image_size))
    try:
        model = SSD.from_arch(
            m.arch, num_classes, image_size=image_size, width_multiplier=m.width_multiplier,
            backbone_weights=m.backbone_weights or None, sizes=m.ssd.sizes or None,
            aspect_ratios=m.ssd.aspect_ratios or None, steps=m.ssd.steps or None,
            iou_threshold=m.ssd.iou_threshold, neg_pos_ratio=m.ssd.neg_pos_ratio, cls_loss=t.cls_loss, box_loss=t.box_loss,
            cls_weight=t.cls_weight, loc_weight=t.loc_weight,
            label_smoothing=t.label_smoothing, score_threshold=e.score_threshold,
            nms_iou_threshold=e.nms_iou_threshold, max_detections=e.max_detections)
    except ArchError as err:
        raise cfg.ConfigError(f"model.{err}") from None
    return model


def _generated(root: str) -> bool:
    """Whether ``root`` (or its parent, for kft's VOC/ + COCO/ layout) is kft-generated data."""
    first = Path(root.split(",")[0])
    return any((p / "GENERATED.txt").is_file() for p in (first, first.parent))


def _augment(name: str, seed: int):
    try:
        return detection_augment_by_name(name, seed=seed)
    except ValueError as e:
        raise cfg.ConfigError(f"data.{e}") from None


def _batch_augment(name: str, seed: int):
    try:
        return batch_augment_by_name(name, seed=seed)
    except ValueError as e:
        raise cfg.ConfigError(f"data.{e}") from None


DRY_RUN_IMAGES = 3  # batches of 2: one full, one partial (the shapes a real split gives)


def held_out(d: cfg.Data, train_split, seed: int, verbose: bool = True):
    """``(rest, val)`` for ``data.val_split="holdout"``: ``data.val_fraction`` of the
    training split's images, drawn with ``seed`` (train.seed), so ``kft eval`` and
    ``--resume`` draw the same images again."""
    try:
        rest, val = train_split.holdout(d.val_fraction, seed)
    except ValueError as e:
        raise cfg.ConfigError(f"data.val_split={HOLDOUT!r}: split {d.train_split!r}: "
                              f"{e}") from None
    if verbose:
        print(f"[kft] data.val_split={HOLDOUT!r}: {len(val)} of the {len(train_split)} images "
              f"of {d.train_split!r} held out for validation (data.val_fraction="
              f"{d.val_fraction:g}, train.seed={seed}); {len(rest)} train")
    return rest, val


def read_splits(d: cfg.Data, run_dir: Path, seed: int = 0):
    """``(train, val)`` splits with val's labels in train's class order (checked by name);
    ``d`` resolved (:func:`resolve_layout`); ``data.val_split="holdout"``: see
    :func:`held_out`."""
    train_split = read_split(d, d.train_split, run_dir, key="data.train_split")
    if d.val_split == HOLDOUT:
        from kft.data.readers.layout import available_splits

        for root in _roots(d.root):
            try:
                named = HOLDOUT in available_splits(d.format, root)
            except (OSError, ValueError):
                named = False
            if named:
                raise cfg.ConfigError(
                    f"data.val_split={HOLDOUT!r} means a share of {d.train_split!r} held out, "
                    f"but {root} has a split named {HOLDOUT!r}: rename that split to use it "
                    "as the val split")
        return held_out(d, train_split, seed)
    val_root = d.val_root or d.root
    val_split = read_split(d, d.val_split, run_dir, val_root, key="data.val_split")
    try:
        val_split = align_classes(train_split, val_split, f"{d.root} split {d.train_split!r}",
                                  f"{val_root} split {d.val_split!r}")
    except ValueError as e:
        raise cfg.ConfigError(str(e)) from None
    return train_split, val_split


def trace_predict_for_any_batch(model) -> None:
    """Traces ``model.predict_on_batch``'s function once for image batches of any size, so
    that the dry run's full and partial batches and every later evaluation batch size share
    one graph (tracing a detector with its NMS takes seconds; a function traced for one batch
    size would be traced again for the next)."""
    import tensorflow as tf

    if model.run_eagerly or len(model.input_shape) != 4:
        return
    model.make_predict_function()
    spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)
    model.predict_function.get_concrete_function([(spec,)])


def dry_run_evaluation(model, split, d: cfg.Data, seed: int) -> None:
    """Evaluates the freshly built model on the first images of ``split`` in a full and a
    partial batch, so that a broken evaluation path fails in seconds, not after an epoch (with
    the predict function traced for any batch size, :func:`trace_predict_for_any_batch`)."""
    trace_predict_for_any_batch(model)
    few = split.subset(range(min(DRY_RUN_IMAGES, len(split))))
    batches = detection_batches(few, **model_image_args(model), batch_size=2,
                                max_instances=d.max_instances, training=False, seed=seed,
                                with_meta=True)
    evaluate_detector(model.predict_on_batch, few, batches.dataset, voc=d.format == "voc")


def model_image_args(model) -> dict:
    """The ``detection_batches`` resize keywords a built detector was made for."""
    return model.resize_args() if hasattr(model, "resize_args") else {
        "image_size": tuple(model.input_shape[1:3]), "resize": getattr(model, "resize", "fixed")}


def _batches(split, recipe, batch_size=None, training=False, with_meta=True, **kwargs):
    d = recipe.data
    return detection_batches(split, **image_args(d, recipe.model.arch),
                             batch_size=batch_size or recipe.eval.batch_size,
                             max_instances=d.max_instances, training=training,
                             seed=recipe.train.seed, with_meta=with_meta, **kwargs)


def _is_voc(data: TaskData, recipe: cfg.Recipe) -> bool:
    """VOC07 metrics too: the format the data was read in (detected when data.format is
    auto)."""
    return data.report.get("format", recipe.data.format) == "voc"


class DetectionTask(Task):
    name = "detection"
    default_monitor = "val_bbox_AP50"

    def read(self, recipe, run_dir, purpose="train") -> TaskData:
        from kft.train.runs import apply_changes

        resolved = resolve_layout(recipe.data, seed=recipe.train.seed)
        recipe = apply_changes(recipe, resolved)
        d, t, e = recipe.data, recipe.train, recipe.eval
        run_dir = Path(run_dir)
        val_root = d.val_root or d.root
        if purpose == "eval" and d.val_split != HOLDOUT:  # the val split alone
            train_split = None
            val_split = read_split(d, d.val_split, run_dir, val_root, seed=t.seed,
                                   key="data.val_split")
        else:  # a holdout's val images are drawn from the training split
            train_split, val_split = read_splits(d, run_dir, t.seed)
            if purpose == "eval":
                train_split = None
        select_split = None
        if purpose == "train" and t.early_stopping_patience > 0:
            if e.every == 0:
                raise cfg.ConfigError(
                    "train.early_stopping_patience needs in-training evaluation: set "
                    "eval.every >= 1 (or early_stopping_patience=0)")
            # D9: model selection on a held-out slice of train, never on the val split
            train_split, select_split = train_split.holdout(d.val_fraction, t.seed)
        if purpose == "train" and recipe.model.frcnn.fit_anchors:
            resolved = [*resolved, fit_anchor_sizes(train_split, recipe)]
        report = DataReport()
        for split in (train_split, val_split):
            if split is not None:
                report.merge(split.report)
        report = report.to_dict()
        names = (train_split or val_split).class_names
        report.update({"class_names": names,
                       "num_train": len(train_split) if train_split is not None else 0,
                       "num_val": len(val_split), "root": d.root, "format": d.format,
                       "generated": _generated(d.root),
                       "num_selection": len(select_split) if select_split else 0})
        if purpose == "train":
            if report["num_skipped"]:
                print(f"[kft] data: {report['num_skipped']} entries skipped, "
                      f"{report['num_converted']} corrected or converted (see "
                      "data_report.json)")
            if train_split.num_objects == 0:
                raise cfg.ConfigError(
                    f"data.root={d.root!r} split {d.train_split!r}: no usable objects in "
                    f"{len(train_split)} images ({report['num_skipped']} entries skipped, e.g. "
                    "unknown class names: set data.class_names; see data_report.json)")
            if select_split is not None:
                print(f"[kft] model selection (early stopping): val_* in history.csv are on "
                      f"{len(select_split)} images held out of the training split "
                      f"(data.val_fraction={d.val_fraction}); metrics.json is on "
                      f"{d.val_split!r}")
        return TaskData(
            train=train_split, val=val_split, class_names=list(names), report=report,
            generated=report["generated"], num_train=report["num_train"],
            num_val=len(val_split), selection=select_split,
            num_selection=report["num_selection"],
            val_description=(f"{d.root} split {d.train_split!r}, the {len(val_split)} images "
                             f"held out (data.val_split={HOLDOUT!r}, data.val_fraction="
                             f"{d.val_fraction:g})" if d.val_split == HOLDOUT else
                             f"{val_root} split {d.val_split!r} ({len(val_split)} images)"),
            selection_description=(
                f"{len(select_split)} images held out of {d.root} split {d.train_split!r}"
                if select_split is not None else None),
            resolved=resolved)

    def build_model(self, recipe, data):
        m = recipe.model
        num_classes = m.num_classes or len(data.class_names)
        if not m.backbone_weights and not m.load_from and not (is_frcnn(m.arch) and m.preset):
            print(f"[kft] note: {m.arch} starts from a RANDOM backbone (model.backbone_weights "
                  "and model.load_from are empty); fine-tuning needs pretrained weights: see "
                  "README 'Pretrained weights offline'")
        return build_detector(m, recipe.train, recipe.eval, num_classes, recipe.data.image_size,
                              recipe.data)

    def before_training(self, model, data, recipe):
        dry_run_evaluation(model, data.val, recipe.data, recipe.train.seed)

    def _val(self, data, recipe):
        if "val" not in data.batches:
            data.batches["val"] = _batches(data.val, recipe)
        return data.batches["val"]

    def monitoring(self, model, data, recipe):
        e = recipe.eval
        if e.every == 0:
            return None, []
        if data.selection is None:
            split, batches = data.val, self._val(data, recipe)
        else:
            split, batches = data.selection, _batches(data.selection, recipe)
        callback = COCOEvalCallback(split, batches.dataset, every=e.every,
                                    voc=_is_voc(data, recipe))
        # scoring the val split itself (no selection split), its last evaluation is the
        # final one when the weights did not change after it
        data.val_monitor = callback if data.selection is None else None
        return None, [callback]

    def stalled_hint(self, data, recipe):
        from kft.train.callbacks import StalledMetricHint

        if recipe.eval.every == 0:
            return None
        return StalledMetricHint("val_bbox_AP50", 0.02, what="val bbox AP50",
                                 every=recipe.eval.every)

    def train_batches(self, data, recipe, initial_epoch):
        d, t = recipe.data, recipe.train
        return _batches(data.train, recipe, batch_size=t.batch_size, training=True,
                        with_meta=False, augment=_augment(d.detection_augment, t.seed),
                        batch_augment=_batch_augment(d.batch_augment, t.seed),
                        cache=d.cache, epochs=t.epochs,
                        initial_epoch=min(initial_epoch, t.epochs - 1))

    def evaluate(self, model, data, recipe):
        # the in-training evaluation of the last epoch, when it scored these very weights on
        # the same val batches (early stopping's restore changes them)
        scored = data.val_monitor.current_metrics() if data.val_monitor is not None else None
        if scored is not None:
            return scored
        return evaluate_detector(model.predict_on_batch, data.val,
                                 self._val(data, recipe).dataset,
                                 voc=_is_voc(data, recipe))

    def plots(self, model, data, metrics, run_dir, recipe):
        from kft.eval.detection_plots import plot_per_class_ap
        from kft.eval.plots import plot_history
        from kft.train.runs import read_history

        plots = {}
        history = read_history(run_dir / "history.csv")
        if history:
            plots["curves"] = plot_history(history, run_dir / "plots" / "training_curves.png")
        if metrics.get("bbox_per_class_AP"):
            plots["per_class_ap"] = plot_per_class_ap(
                metrics["bbox_per_class_AP"], run_dir / "plots" / "per_class_ap.png",
                title="bbox AP@[.5:.95] per class")
        plots["predictions"] = plot_predictions(model, data.val, self._val(data, recipe).dataset,
                                                run_dir / "plots" / "predictions.png")
        return plots

    def export(self, model, data, recipe, out_dir, formats, samples, keras_metrics=None):
        from kft.export.detection import export_detector_and_report

        rep = _batches(data.train, recipe, with_meta=False)  # calibration: train, no augment
        return export_detector_and_report(
            model, out_dir, rep.dataset, data.val, self._val(data, recipe).dataset,
            formats=tuple(formats), voc=_is_voc(data, recipe), num_calibration=samples,
            keras_metrics=keras_metrics)

    def headline_metrics(self, metrics):
        return {k: metrics.get(k) for k in ("bbox_AP", "bbox_AP50", "bbox_AP75")}

    def metrics_line(self, metrics):
        m = {k: "n/a" if v is None else f"{v:.4f}"
             for k, v in self.headline_metrics(metrics).items()}
        return (f"bbox AP {m['bbox_AP']}  AP50 {m['bbox_AP50']}  AP75 {m['bbox_AP75']}  "
                f"({metrics['num_images']} images)")

    def export_lines(self, export_report):
        return [f"tflite {fmt:8s} AP {r['bbox_AP']:.4f} AP50 {r['bbox_AP50']:.4f} "
                f"(AP50 {-r.get('bbox_AP50_drop_vs_keras', 0.0):+.4f} vs Keras), "
                f"{r['size_mb']:.2f} MiB, {r['latency_ms']:.1f} ms/image"
                for fmt, r in (export_report or {}).items()
                if fmt != "keras" and isinstance(r, dict) and "path" in r]

    def predict(self, model, pixels, class_names, top_k=3, score_threshold=0.3):
        """Detections of one image, resized as the pipeline resizes for this model, boxes
        (xyxy) in the image's own pixels."""
        from kft.data.detection_pipeline import resize_image, to_original
        from kft.export.detection import detection_list

        image, scale, _ = resize_image(pixels, **model_image_args(model))
        det = model.predict_on_batch(np.asarray(image)[None])
        boxes = np.asarray(to_original(det["boxes"][0], scale, pixels.shape[:2]))
        return detection_list(boxes, np.asarray(det["scores"][0]), np.asarray(det["labels"][0]),
                              int(det["num_detections"][0]), class_names, score_threshold)


def plot_predictions(model, split, batches, path, max_images: int = 16,
                     score_threshold: float = 0.3) -> str:
    """Draws the first val images with predictions (solid, class + score) and ground truth
    (dashed) into a gallery PNG; returns its path."""
    images, detections, truths = [], [], []
    for x, y, _meta in batches:
        det = model.predict_on_batch(x)
        for i in range(int(x.shape[0])):
            if len(images) >= max_images:
                break
            images.append(np.asarray(x[i]))
            detections.append({k: np.asarray(det[k][i]) for k in
                               ("boxes", "scores", "labels")})
            truths.append({"boxes": np.asarray(y["boxes"][i]),
                           "labels": np.asarray(y["labels"][i])})
        if len(images) >= max_images:
            break
    from kft.eval.detection_plots import plot_detection_gallery

    return str(plot_detection_gallery(images, detections, split.class_names, path,
                                      ground_truth=truths, score_threshold=score_threshold))
