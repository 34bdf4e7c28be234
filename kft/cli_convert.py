"""``kft convert torchvision CHECKPOINT --output model.keras``: torchvision detection weights
(COCO-pretrained Faster R-CNN) as a kft model (:mod:`kft.models.convert_torchvision`).

``--arch`` defaults to the architecture the checkpoint's keys show, ``--num-classes`` (foreground
classes) to the checkpoint's (91 - 1 = 90 for torchvision's COCO weights; another count leaves
the class-dependent predictor layers new), ``--image-size`` (the square static input, a
multiple of 32) to 1344, the canvas of torchvision's 800 / 1333 keep-aspect resize. The load
report (loaded / shape mismatch / new / unused checkpoint keys) is printed and written beside
the model as ``<output>.convert.json``. ``--class-names`` (a JSON list or a file with one name
per line) writes ``class_names.json`` beside the model so ``kft predict`` prints names.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from kft.run import reporting_errors

ARCH_CHOICES = ("fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2",
                "fasterrcnn_mobilenet_v3_large_fpn",
                "fasterrcnn_resnext101_32x8d_fpn")  # kft.models.convert_torchvision.ARCHS


@click.group("convert", context_settings={"help_option_names": ["-h", "--help"]})
def convert():
    """Convert other frameworks' checkpoints to kft models."""


@convert.command("torchvision", epilog="Errors print one line; set KFT_TRACEBACK=1 to see "
                                       "the traceback.")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--arch", type=click.Choice(ARCH_CHOICES), default=None,
              help="Architecture (default: read from the checkpoint's keys).")
@click.option("--num-classes", type=click.IntRange(min=1), default=None,
              help="Foreground classes (default: the checkpoint's).")
@click.option("--image-size", type=click.IntRange(min=32), default=1344, show_default=True,
              help="Square static input side, a multiple of 32.")
@click.option("--class-names", default=None,
              help="JSON list or text file (one per line) of the class names, in label order.")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False),
              help="The .keras file to write.")
def torchvision_cmd(checkpoint, arch, num_classes, image_size, class_names, output):
    """Convert a torchvision Faster R-CNN state dict (.pth, or .npz without torch)."""
    with reporting_errors():
        output = Path(output)
        if output.suffix != ".keras":
            raise ValueError(f"--output {output}: must end in .keras")
        if image_size % 32:
            raise ValueError(f"--image-size {image_size}: must be a multiple of 32")
        names = _class_names(class_names)
        from kft.models.convert_torchvision import convert_checkpoint
        from kft.models.weights import summarize

        model, report = convert_checkpoint(checkpoint, arch=arch, num_classes=num_classes,
                                           image_size=image_size)
        if names is not None and len(names) != model.num_classes:
            raise ValueError(f"--class-names has {len(names)} names for "
                             f"{model.num_classes} classes")
        output.parent.mkdir(parents=True, exist_ok=True)
        model.save(output)
        if names is not None:
            (output.parent / "class_names.json").write_text(json.dumps(names))
        record = {k: report[k] for k in ("arch", "source", "source_num_classes")}
        record.update(num_classes=model.num_classes, image_size=image_size,
                      loaded=len(report["loaded"]), shape_mismatch=report["shape_mismatch"],
                      new=report["new"], unused_keys=report["unused_keys"])
        Path(f"{output}.convert.json").write_text(json.dumps(record, indent=2))
        click.echo(summarize(report))
        click.echo(f"{report['arch']} -> {output} ({model.num_classes} classes, "
                   f"{image_size} x {image_size} input)")


def _class_names(value):
    if value is None:
        return None
    path = Path(value)
    if path.is_file():
        text = path.read_text()
        try:
            names = json.loads(text)
        except json.JSONDecodeError:
            names = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        try:
            names = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(f"--class-names {value!r}: neither a file nor a JSON list") from None
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise ValueError(f"--class-names {value!r}: expected a list of names")
    return names
