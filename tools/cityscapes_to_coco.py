"""Cityscapes gtFine polygons -> COCO ``instances_<split>.json``.

    python tools/cityscapes_to_coco.py /data/cityscapes --split train --split val \\
        [--out-dir /data/cityscapes/annotations] [--segmentation rle|polygon]

Reads each split with :func:`kft.data.readers.cityscapes.read_cityscapes` (8 instance classes,
``...group`` labels as crowd) and writes it with :func:`kft.data.convert.write_coco`;
``file_name`` is relative to ``leftImg8bit/<split>`` (pass that folder as ``image_dir`` to
``read_coco``). What was skipped or corrected is saved beside each JSON as
``instances_<split>.report.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kft.data.convert import write_coco
from kft.data.readers.cityscapes import read_cityscapes


def convert_split(root: Path, split: str, out_dir: Path, segmentation: str) -> Path:
    """Writes ``out_dir/instances_<split>.json`` and its report; returns the JSON path."""
    data = read_cityscapes(root, split, check_images="header")
    out = write_coco(data, out_dir / f"instances_{split}.json", root / "leftImg8bit" / split,
                     segmentation=segmentation)
    data.report.save(out_dir / f"instances_{split}.report.json")
    print(f"{out}: {len(data.records)} images, {data.num_objects} objects, "
          f"{data.report.to_dict()['num_skipped']} skipped entries (see the report)")
    return out


def main(argv=None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="Cityscapes folder (leftImg8bit/, gtFine/)")
    parser.add_argument("--split", action="append", help="train, val or test (repeatable; "
                        "default: train and val)")
    parser.add_argument("--out-dir", type=Path, help="default: <root>/annotations")
    parser.add_argument("--segmentation", choices=("rle", "polygon"), default="polygon")
    args = parser.parse_args(argv)
    out_dir = args.out_dir or args.root / "annotations"
    return [convert_split(args.root, split, out_dir, args.segmentation)
            for split in args.split or ["train", "val"]]


if __name__ == "__main__":
    main()
