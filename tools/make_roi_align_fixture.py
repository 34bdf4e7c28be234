"""Writes tests/fixtures/roi_align_torchvision.npz: torchvision RoIAlign outputs for kft's tests.

Run with a Python that has torch and torchvision (not kft, not TensorFlow)::

    ~/tv/bin/python tools/make_roi_align_fixture.py

Inputs come from a seeded NumPy generator: a 4-level pyramid (strides 4..32, non-square maps of
a 118 x 173 image, so the last cells are partial), and per image boxes of many sizes and shapes,
some partly or wholly outside the image, some smaller than a pixel, and zero padding rows.
Everything is stored channels-last (``[B, H, W, C]``, outputs ``[B, R, out_h, out_w, C]``) as
kft uses it; torchvision itself runs on the NCHW transposes.

Keys: ``p2``..``p5``, ``boxes`` ``[B, R, 4]``, ``image_size`` ``(h, w)``, ``strides``;
``single{i}_output`` with ``single{i}_level`` (which of p2..p5), ``_scale``, ``_sampling_ratio``,
``_aligned``, ``_output_size`` for ``torchvision.ops.roi_align``; ``multi{i}_output`` with
``_sampling_ratio`` and ``_output_size`` for ``MultiScaleRoIAlign``; ``levels`` ``[B, R]``, the
level index torchvision's LevelMapper gives each box.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
import torchvision
from torchvision.ops import MultiScaleRoIAlign, roi_align

IMAGE_SIZE = (118, 173)                  # (height, width)
STRIDES = (4, 8, 16, 32)
CHANNELS = 2
BOXES_PER_IMAGE = 48
BATCH = 2
# (level, spatial_scale, sampling_ratio, aligned, output_size) for the single-level cases.
SINGLE = [(0, 1 / 4, 2, False, (7, 7)), (0, 1 / 4, 2, True, (7, 7)),
          (1, 0.3, 1, False, (5, 3)), (2, 1 / 16, 3, True, (4, 6))]
MULTI = [(2, (7, 7)), (1, (5, 4))]        # (sampling_ratio, output_size)


def make_boxes(rng, height, width, count):
    """``count`` xyxy boxes: random sizes and shapes, tiny, outside and zero padding rows."""
    sides = np.exp(rng.uniform(math.log(6.0), math.log(900.0), count))
    ratios = np.exp(rng.uniform(math.log(0.3), math.log(3.0), count))
    w, h = sides * np.sqrt(ratios), sides / np.sqrt(ratios)
    cx = rng.uniform(-40, width + 40, count)
    cy = rng.uniform(-40, height + 40, count)
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    boxes[0] = [10.3, 20.7, 10.9, 21.1]                   # smaller than a pixel
    boxes[1] = [width - 0.6, height - 0.4, width - 0.1, height - 0.05]
    boxes[2] = [width + 12.0, 30.0, width + 60.0, 70.0]    # wholly right of the image
    boxes[3] = [-80.0, -50.0, -20.0, -9.0]                 # wholly above-left
    boxes[4] = [-3.0, -2.0, width + 2.5, height + 4.0]     # the whole image, a bit more
    boxes[-3:] = 0.0                                        # padding
    return boxes.astype(np.float32)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="tests/fixtures/roi_align_torchvision.npz")
    args = parser.parse_args()

    rng = np.random.default_rng(20240610)
    height, width = IMAGE_SIZE
    levels = {}
    for i, stride in enumerate(STRIDES):
        shape = (BATCH, math.ceil(height / stride), math.ceil(width / stride), CHANNELS)
        levels[f"p{i + 2}"] = rng.normal(size=shape).astype(np.float32)
    boxes = np.stack([make_boxes(rng, height, width, BOXES_PER_IMAGE) for _ in range(BATCH)])

    nchw = {k: torch.from_numpy(v).permute(0, 3, 1, 2).contiguous() for k, v in levels.items()}
    box_list = [torch.from_numpy(b) for b in boxes]
    names = list(levels)

    def to_nhwc(pooled, out_size):        # [B * R, C, h, w] -> [B, R, h, w, C]
        pooled = pooled.permute(0, 2, 3, 1).numpy()
        return pooled.reshape(BATCH, BOXES_PER_IMAGE, *out_size, CHANNELS)

    result = dict(levels, boxes=boxes, image_size=np.array(IMAGE_SIZE, np.int32),
                  strides=np.array(STRIDES, np.int32))
    with torch.no_grad():
        for i, (level, scale, ratio, aligned, out_size) in enumerate(SINGLE):
            pooled = roi_align(nchw[names[level]], box_list, output_size=out_size,
                               spatial_scale=scale, sampling_ratio=ratio, aligned=aligned)
            result.update({f"single{i}_output": to_nhwc(pooled, out_size),
                           f"single{i}_level": np.int32(level),
                           f"single{i}_scale": np.float32(scale),
                           f"single{i}_sampling_ratio": np.int32(ratio),
                           f"single{i}_aligned": np.bool_(aligned),
                           f"single{i}_output_size": np.array(out_size, np.int32)})
        for i, (ratio, out_size) in enumerate(MULTI):
            pooler = MultiScaleRoIAlign(names, output_size=out_size, sampling_ratio=ratio)
            pooled = pooler(nchw, box_list, [IMAGE_SIZE] * BATCH)
            result.update({f"multi{i}_output": to_nhwc(pooled, out_size),
                           f"multi{i}_sampling_ratio": np.int32(ratio),
                           f"multi{i}_output_size": np.array(out_size, np.int32)})
        assert [1 / s for s in STRIDES] == pooler.scales, pooler.scales
        mapped = pooler.map_levels(box_list).numpy().reshape(BATCH, BOXES_PER_IMAGE)
    result["levels"] = mapped.astype(np.int32)
    print("torchvision", torchvision.__version__, "boxes per level:",
          np.bincount(mapped.ravel(), minlength=len(STRIDES)).tolist())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **result)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB, {len(result)} arrays)")


if __name__ == "__main__":
    main()
