"""``kft predict MODEL INPUT...``: classify or detect on image files with a saved model.

``MODEL`` is one of

* a run directory (its ``model.keras``; class names from its ``class_names.json``),
* a ``.keras`` file (class names from ``<stem>.json`` beside it, a JSON list or an object with
  a ``"classes"`` list such as ``pretrained/ssdlite_shapes3.json``, else ``class_names.json``
  beside it),
* a ``.tflite`` file exported by kft (class names as for ``.keras``, or from the
  ``class_names.json`` of the run directory above it, e.g. ``runs/x/export/model_int8.tflite``).
  The file says what it does: a detector export has ``boxes / scores / labels /
  num_detections`` outputs, a classifier one logits output; its input gives the image size.

Every image is decoded as the training pipeline decodes it (:func:`read_pixels`) and resized
as the training / evaluation pipeline resizes for that model, by the
Keras task (:meth:`kft.tasks.Task.predict`) or the TFLite runners
(:meth:`kft.export.tflite.TFLiteClassifier.predict_image`,
:meth:`kft.export.detection.TFLiteDetector.predict_image`), so a ``.keras`` file and its float32
``.tflite`` print the same classes and boxes. ``INPUT`` is image files and folders: a folder
stands for every image file under it (sorted; hidden and non-image files are skipped and
counted, like the image-folder reader does). One result per image::

    {"image": path, "top": [{"label", "class", "prob"}]}                      (classifiers)
    {"image": path, "detections": [{"label", "class", "score", "box"}]}       (detectors)
    {"image": path, "error": "cannot read image: ..."}                         (unreadable)

boxes ``xyxy`` in the image's own pixels; with ``--save DIR`` also ``"saved"``: the image
drawn with its boxes and class names (detectors) or its top class (classifiers).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kft import config as cfg
from kft.data.images import IMAGE_EXTENSIONS, has_image_extension
from kft.data.report import DataReport

MODEL_SUFFIXES = (".keras", ".tflite")
OUTPUT_FORMATS = ("json", "jsonl", "table")


def load_keras_model(model_path: str | Path):
    """:func:`kft.saving.load_model`; a file that is not a loadable Keras model is a user error
    naming it."""
    from kft.saving import load_model

    if not Path(model_path).is_file():
        raise cfg.ConfigError(f"{model_path}: no such model file")
    try:
        return load_model(model_path)
    except Exception as e:  # noqa: BLE001 - a zip, a format or a deserialisation error
        first = (str(e).strip().splitlines() or [""])[0]
        raise cfg.ConfigError(f"{model_path}: cannot load the Keras model "
                              f"({type(e).__name__}: {first})") from e


# ---------------------------------------------------------------------------------------------
# Class names


def read_class_names(path: Path, required: bool = True) -> list[str] | None:
    """The class names in ``path``: a JSON list of strings, or an object whose ``"classes"``
    (or ``"class_names"``) is one. An object without either is ``None`` unless ``required``;
    anything else is a ConfigError naming the file."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise cfg.ConfigError(f"{path}: not a JSON list of class names ({e})") from e
    if isinstance(data, dict):
        names = data.get("classes", data.get("class_names"))
        if names is None and not required:
            return None
        data = names
    if not isinstance(data, list) or not all(isinstance(n, str) for n in data):
        raise cfg.ConfigError(f"{path}: expected a JSON list of class names, or an object "
                              'with a "classes" list of them')
    return data


def find_class_names(model_path: Path, run_dir: Path | None = None):
    """``(names, file)`` for a model: ``run_dir/class_names.json`` for a run directory, else
    ``<stem>.json`` or ``class_names.json`` beside the file, or (a ``.tflite`` in a run's
    export folder) the ``class_names.json`` of the run directory above it. ``(None, None)``
    when there is none."""
    if run_dir is not None:
        candidates = [(run_dir / "class_names.json", True)]
    else:
        candidates = [(model_path.with_suffix(".json"), False),
                      (model_path.parent / "class_names.json", True)]
        above = model_path.parent.parent
        if model_path.suffix == ".tflite" and (above / "config.json").is_file():
            candidates.append((above / "class_names.json", True))
    for path, required in candidates:
        if path.is_file():
            names = read_class_names(path, required)
            if names is not None:
                return names, path
    return None, None


# ---------------------------------------------------------------------------------------------
# Models


@dataclass
class Predictor:
    """A loaded model behind one call: ``predict(pixels uint8 [H, W, 3])`` -> result dict.

    ``task``: ``"classification"`` or ``"detection"``; ``kind``: ``"keras"`` or ``"tflite"``;
    ``class_names`` / ``names_file``: the names and where they came from (``None`` when the
    model came without them: labels are printed as numbers).
    """

    path: Path
    task: str
    kind: str
    model: object
    class_names: list | None = None
    names_file: Path | None = None
    resize: str | dict = "fixed"  # see _run_resize
    options: dict = field(default_factory=dict)

    def predict(self, pixels: np.ndarray, top_k: int = 3, score_threshold: float = 0.3) -> dict:
        if self.kind == "keras":
            from kft.tasks import task_named

            return task_named(self.task).predict(self.model, pixels, self.class_names,
                                                 top_k=top_k, score_threshold=score_threshold)
        if self.task == "detection":
            return self.model.predict_image(pixels, self.class_names, score_threshold,
                                            resize=self.resize)
        return self.model.predict_image(pixels, self.class_names, top_k)


def _run_resize(run_dir: Path | None) -> str | dict:
    """How the run's detector resizes (its config.json), else "fixed": ``data.resize``, or for a
    keep-aspect Faster R-CNN ``{"image_size": (data.image_size, data.max_size or image_size),
    "resize": "keep_aspect"}`` (what kft.tasks.detection.image_args gives the pipeline)."""
    if run_dir is None or not (run_dir / "config.json").is_file():
        return "fixed"
    try:
        config = json.loads((run_dir / "config.json").read_text())
        data = config["data"]
        resize = data["resize"] or "fixed"
        if resize == "keep_aspect" and str(config["model"]["arch"]).startswith("fasterrcnn_"):
            side = int(data["image_size"])
            return {"image_size": (side, int(data.get("max_size") or side)),
                    "resize": "keep_aspect"}
        return resize
    except (OSError, ValueError, KeyError, TypeError):
        return "fixed"


def load_predictor(target: str | Path, threads: int | None = None) -> Predictor:
    """The :class:`Predictor` of a run directory, ``.keras`` or ``.tflite`` file (see the
    module docstring); ``threads`` (> 0) sets the TFLite interpreter's threads. Class names
    are checked against the model's class count where the model states it."""
    path = Path(target)
    run_dir = None
    if path.is_dir():
        run_dir, path = path, path / "model.keras"
        if not path.is_file():
            tflites = sorted((run_dir / "export").glob("*.tflite"))
            hint = (f"; pass one of its TFLite files: {', '.join(map(str, tflites))}"
                    if tflites else " (did the run finish?)")
            raise cfg.ConfigError(f"{run_dir}: no model.keras{hint}")
    elif not path.is_file():
        raise cfg.ConfigError(f"{target}: no such run directory or model file")
    elif path.suffix.lower() not in MODEL_SUFFIXES:
        raise cfg.ConfigError(f"{target}: not a model: give a run directory, a .keras or a "
                              ".tflite file")
    names, names_file = find_class_names(path, run_dir)
    if path.suffix.lower() == ".tflite":
        predictor = _tflite_predictor(path, threads)
        above = path.parent.parent if (path.parent.parent / "config.json").is_file() else None
        predictor.resize = _run_resize(above)
    else:
        from kft.tasks import task_for_model

        model = load_keras_model(path)
        predictor = Predictor(path, task_for_model(model).name, "keras", model,
                              resize=getattr(model, "resize", "fixed"))
    count = _num_classes(predictor)
    if names is not None and count is not None and len(names) != count:
        raise cfg.ConfigError(f"{names_file}: {len(names)} class names, but {path} predicts "
                              f"{count} classes")
    predictor.class_names, predictor.names_file = names, names_file
    return predictor


def _tflite_predictor(path: Path, threads: int | None) -> Predictor:
    from kft import quiet_stderr
    from kft.export import core
    from kft.export.detection import DETECTION_KEYS, TFLiteDetector
    from kft.export.tflite import TFLiteClassifier

    num_threads = threads if threads and threads > 0 else None
    try:
        with quiet_stderr():  # the runtime's "INFO: Created TensorFlow Lite XNNPACK delegate"
            outputs = set(core.TimedInterpreter(path, num_threads).outputs)
            if set(DETECTION_KEYS) <= outputs:
                runner = TFLiteDetector(path, num_threads)
                return Predictor(path, "detection", "tflite", runner)
            runner = TFLiteClassifier(path, num_threads)
            return Predictor(path, "classification", "tflite", runner)
    except (ValueError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise cfg.ConfigError(f"{path}: cannot use this TFLite file ({type(e).__name__}: "
                              f"{first}); kft predicts with its own classifier and detector "
                              "exports") from e


def _num_classes(predictor: Predictor) -> int | None:
    """How many classes the model predicts, where it says (``None`` for a TFLite detector)."""
    model = predictor.model
    if predictor.kind == "tflite":
        return model.num_classes if predictor.task == "classification" else None
    if predictor.task == "detection":
        return getattr(model, "num_classes", None)
    return int(model.output_shape[-1])


# ---------------------------------------------------------------------------------------------
# Inputs


def _hidden(name: str) -> bool:
    return name.startswith(".") or name.startswith("__")


def expand_inputs(inputs, report: DataReport | None = None) -> list[tuple[Path, Path]]:
    """``[(image file, name for --save)]`` of files and folders, in the order given.

    A file is taken as it is (its stem is its name). A folder stands for every image file
    (:data:`kft.data.images.IMAGE_EXTENSIONS`) under it, sorted folder by folder (a folder's
    files, then its subfolders), named by its path below the folder's parent; hidden files and folders (``.*``, ``__*``) and other files are skipped
    and recorded in ``report`` (field ``"extension"`` or ``"layout"``). A path that does not
    exist is a ConfigError naming it.
    """
    report = report if report is not None else DataReport()
    out = []
    for item in inputs:
        path = Path(item)
        if path.is_file():
            out.append((path, Path(path.stem)))
            continue
        if not path.is_dir():
            raise cfg.ConfigError(f"{item}: no such image file or folder")
        top = Path(path.resolve().name)
        for dirpath, dirnames, filenames in os.walk(path):
            for d in [d for d in dirnames if _hidden(d)]:
                report.skip(os.path.join(dirpath, d), "hidden folder ignored", field="layout")
            dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
            for name in sorted(filenames):
                file = Path(dirpath) / name
                if _hidden(name):
                    report.skip(file, "hidden file", field="layout")
                elif not has_image_extension(name):
                    report.skip(file, f"not an image file: extension "
                                f"'{file.suffix or name}' is not one of "
                                f"{' '.join(IMAGE_EXTENSIONS)}", field="extension")
                else:
                    out.append((file, top / file.relative_to(path).with_suffix("")))
    return out


def read_pixels(path: Path, cache_dir: Path | None = None) -> np.ndarray:
    """``uint8 [H, W, 3]`` RGB of an image file, decoded exactly as the training pipeline
    decodes it: checked by :func:`kft.data.images.inspect_image` (EXIF-rotated, CMYK, 16-bit,
    transparent ... files converted to a PNG in ``cache_dir``, default
    :func:`~kft.data.images.default_cache_dir`) and decoded by TensorFlow
    (:func:`kft.data.pipeline.decode_file`; its JPEG decoder, not PIL's). Raises ValueError
    with the reason for a file that cannot be used."""
    import tensorflow as tf

    from kft.data.images import default_cache_dir, inspect_image
    from kft.data.pipeline import decode_file

    verdict = inspect_image(path, cache_dir if cache_dir is not None else default_cache_dir(),
                            min_side=1)
    if verdict.path is None:
        raise ValueError(verdict.reason)
    return np.asarray(decode_file(tf.constant(verdict.path)))


# ---------------------------------------------------------------------------------------------
# Drawing


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the bitmap font only
        return ImageFont.load_default()


def draw_result(pixels: np.ndarray, result: dict, class_names=None):
    """``pixels`` (``uint8 [H, W, 3]``) at their own size as a PIL image with the result drawn:
    each detection's box and "class score" (colours by label, as kft's galleries), or the
    top class and its probability in the top-left corner."""
    from PIL import Image, ImageDraw

    from kft.data.gallery import class_colours

    image = Image.fromarray(np.asarray(pixels, np.uint8)).convert("RGB")
    draw = ImageDraw.Draw(image)
    side = min(image.size)
    font = _font(max(10, side // 28))
    width = max(2, side // 200)
    detections = result.get("detections")
    if detections is not None:
        count = max([len(class_names or ())] + [d["label"] + 1 for d in detections])
        colours = class_colours(count)
        for d in detections:
            x1, y1, x2, y2 = d["box"]
            colour = colours[d["label"] % len(colours)]
            draw.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=colour,
                           width=width)
            _text(draw, image.size, (x1, y1), f"{d['class']} {d['score']:.2f}", colour, font,
                  above=True)
    elif result.get("top"):
        best = result["top"][0]
        _text(draw, image.size, (0, 0), f"{best['class']} {best['prob']:.2f}",
              (255, 255, 255), font)
    return image


def _text(draw, size, xy, text: str, colour, font, above: bool = False) -> None:
    """``text`` in ``colour`` on a black box whose top-left is ``xy`` (just above it when
    ``above``), kept inside the image of ``size`` ``(width, height)``."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    w, h = right - left + 4, bottom - top + 4
    x = min(max(xy[0], 0), max(size[0] - w, 0))
    y = max(xy[1] - h, 0) if above else max(xy[1], 0)
    draw.rectangle([x, y, x + w, y + h], fill=(0, 0, 0))
    draw.text((x + 2 - left, y + 2 - top), text, fill=colour, font=font)


def _save_path(save_dir: Path, name: Path, used: set) -> Path:
    """``save_dir/name.png``, with ``-2``, ``-3`` ... added when taken in this call."""
    path, k = save_dir / f"{name}.png", 2
    while path in used:
        path, k = save_dir / f"{name}-{k}.png", k + 1
    used.add(path)
    return path


# ---------------------------------------------------------------------------------------------
# The command


def predict_images(predictor: Predictor, images: list[tuple[Path, Path]], top_k: int = 3,
                   score_threshold: float = 0.3, save_dir: str | Path | None = None):
    """Yields one result dict per ``(file, name)`` of :func:`expand_inputs` (module docstring);
    with ``save_dir``, the drawn image goes to ``save_dir/<name>.png``."""
    used: set = set()
    save_dir = Path(save_dir) if save_dir is not None else None
    for path, name in images:
        try:
            pixels = read_pixels(path)
        except (OSError, ValueError) as e:  # the file's verdict, or an unreadable converted copy
            yield {"image": str(path), "error": f"cannot read image: {e}"}
            continue
        result = {"image": str(path), **predictor.predict(pixels, top_k, score_threshold)}
        if save_dir is not None:
            out = _save_path(save_dir, name, used)
            out.parent.mkdir(parents=True, exist_ok=True)
            draw_result(pixels, result, predictor.class_names).save(out, format="PNG")
            result["saved"] = str(out)
        yield result


def table_line(result: dict) -> str:
    """One readable line of a result: image, then its classes or detections."""
    head = result["image"]
    if "error" in result:
        text = f"error: {result['error']}"
    elif "top" in result:
        text = ", ".join(f"{t['class']} {t['prob']:.3f}" for t in result["top"])
    else:
        dets = result["detections"]
        text = (f"{len(dets)} detection{'s' if len(dets) != 1 else ''}" + (": " if dets else "")
                + ", ".join(f"{d['class']} {d['score']:.2f} "
                            f"[{' '.join(f'{v:g}' for v in d['box'])}]" for d in dets))
    saved = f"  -> {result['saved']}" if "saved" in result else ""
    return f"{head}  {text}{saved}"


def format_lines(results, output_format: str = "json"):
    """Yields the output lines of ``results``, one per image: ``json`` a JSON list (a ``[``
    line, one result a line, a ``]`` line: the whole output parses as JSON), ``jsonl`` one
    JSON object a line, ``table`` :func:`table_line`."""
    if output_format not in OUTPUT_FORMATS:
        raise cfg.ConfigError(f"--format={output_format!r} must be one of {OUTPUT_FORMATS}")
    if output_format == "table":
        yield from (table_line(r) for r in results)
        return
    if output_format == "jsonl":
        yield from (json.dumps(r) for r in results)
        return
    yield "["
    previous = None
    for result in results:
        if previous is not None:
            yield previous + ","
        previous = json.dumps(result)
    if previous is not None:
        yield previous
    yield "]"


def skip_note(report: DataReport) -> str | None:
    """One line counting the files :func:`expand_inputs` skipped (``None`` when none)."""
    skipped = report.to_dict()["skipped"]
    if not skipped:
        return None
    names = ", ".join(Path(s["path"]).name for s in skipped[:3])
    more = f", ... ({len(skipped) - 3} more)" if len(skipped) > 3 else ""
    return (f"[kft] predict: skipped {len(skipped)} file{'s' if len(skipped) != 1 else ''} "
            f"that are not images or are hidden ({names}{more})")
