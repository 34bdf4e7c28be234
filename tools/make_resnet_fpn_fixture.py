"""Writes tests/fixtures/resnet_fpn_torchvision.npz: torchvision's ResNet-50-FPN backbones.

Run with a Python that has torch and torchvision (not kft, not TensorFlow)::

    ~/tv/bin/python tools/make_resnet_fpn_fixture.py

Two backbones, as torchvision's Faster R-CNN builders make them (``_resnet_fpn_extractor``:
``IntermediateLayerGetter`` over layer1..layer4 + ``FeaturePyramidNetwork`` 256 +
``LastLevelMaxPool``), both in eval mode:

* ``v1``: ``fasterrcnn_resnet50_fpn``'s, ``resnet50(norm_layer=FrozenBatchNorm2d)``, FPN
  convolutions with biases;
* ``v2``: ``fasterrcnn_resnet50_fpn_v2``'s, ``resnet50()`` (BatchNorm2d, running statistics
  in eval), FPN with ``norm_layer=BatchNorm2d`` (bias-free convs + BatchNorm).

Weights are not stored: both sides draw them with ``tools/seeded_state_dict.py`` from the spec
(keys prefixed ``backbone.`` as in a detector's state dict), the seed and the gains stored
here. Gains: every conv 1.0 except each bottleneck's last 1x1 (``conv3``) at 0.5, which keeps
the residual sums from growing: the stage outputs' std stays about 0.9 - 1.4 from layer1 to
layer4, 17 - 27 % zeros (all convs at 1.0: 4 -> 60; at sqrt(2): 7 -> 550), the FPN levels
about 1 - 3.

``--resnext`` writes tests/fixtures/resnext_fpn_torchvision.npz instead, with one backbone,
``x101``: ``resnext101_32x8d(norm_layer=FrozenBatchNorm2d)`` (grouped 3x3 convolutions, 32
groups of 8 per 64 planes) with the v1 FPN, as ``resnet_fpn_backbone("resnext101_32x8d")``
builds it for a Faster R-CNN; same gains, same images.

Inputs: ``images`` uint8 ``[2, 88, 136, 3]`` (0..255 RGB; odd stage sizes 22x34 ... 3x5),
normalised the way GeneralizedRCNNTransform does (``(x / 255 - mean) / std``) before the body.
Outputs channels-last, a channel slice to stay small (full spatial size): ``{v}_body_P{l}``
the body's stage outputs ``[2, h, w, 4]`` (first 4 channels, l = 2..5), ``{v}_fpn_P{l}`` the
FPN's ``[2, h, w, 8]`` (first 8 channels, l = 2..6; P6 is torchvision's "pool").
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.models import resnet50, resnext101_32x8d
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops.misc import FrozenBatchNorm2d

ROOT = Path(__file__).resolve().parents[1]
IMAGE_SIZE = (88, 136)
BATCH = 2
SEEDS = {"v1": 1, "v2": 2, "x101": 3}
CONV3_GAIN = 0.5
BODY_CHANNELS, FPN_CHANNELS = 4, 8
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def seeded_state_dict():
    spec = importlib.util.spec_from_file_location("seeded_state_dict",
                                                  ROOT / "tools" / "seeded_state_dict.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def backbone(version: str) -> nn.Module:
    if version == "v1":
        return _resnet_fpn_extractor(resnet50(norm_layer=FrozenBatchNorm2d), 3)
    if version == "x101":
        return _resnet_fpn_extractor(resnext101_32x8d(norm_layer=FrozenBatchNorm2d), 3)
    return _resnet_fpn_extractor(resnet50(), 3, norm_layer=nn.BatchNorm2d)


def gains_of(spec) -> dict:
    """Key -> gain for the bottlenecks' last convolutions (every other weight: 1.0)."""
    return {k: CONV3_GAIN for k, _ in spec if k.endswith(".conv3.weight")}


def nhwc(t, channels):
    return np.ascontiguousarray(np.transpose(t.detach().numpy()[:, :channels], (0, 2, 3, 1)))


def run(version, images, seeded, out):
    model = backbone(version).eval()
    state = {f"backbone.{k}": v for k, v in model.state_dict().items()}
    spec = seeded.spec_of(state)
    gains = gains_of(spec)
    weights = seeded.draw(spec, SEEDS[version], gains)
    missing, unexpected = model.load_state_dict(
        {k.removeprefix("backbone."): torch.from_numpy(v) for k, v in weights.items()},
        strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), missing
    x = torch.from_numpy(np.transpose(images, (0, 3, 1, 2)).astype(np.float32) / 255.0)
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        body = model.body(x)
        pyramid = model.fpn(body)
    for (name, value), level in zip(body.items(), range(2, 6), strict=True):
        out[f"{version}_body_P{level}"] = nhwc(value, BODY_CHANNELS)
        print(f"{version} body {name} -> P{level} {tuple(value.shape)} std "
              f"{value.std():.3g} max {value.abs().max():.3g} zeros "
              f"{(value == 0).float().mean():.2f}")
    for (name, value), level in zip(pyramid.items(), range(2, 7), strict=True):
        out[f"{version}_fpn_P{level}"] = nhwc(value, FPN_CHANNELS)
        print(f"{version} fpn {name} -> P{level} {tuple(value.shape)} std {value.std():.3g}")
    packed = seeded.pack_spec(spec)
    out[f"{version}_spec_keys"], out[f"{version}_spec_shapes"] = (packed["spec_keys"],
                                                                  packed["spec_shapes"])
    out[f"{version}_seed"] = np.asarray(SEEDS[version], np.int64)
    out[f"{version}_gain_keys"] = np.array(sorted(gains))
    out[f"{version}_gain_values"] = np.asarray([gains[k] for k in sorted(gains)], np.float64)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--resnext", action="store_true",
                        help="the ResNeXt-101 32x8d body (resnext_fpn_torchvision.npz)")
    args = parser.parse_args()
    versions = ["x101"] if args.resnext else ["v1", "v2"]
    args.out = args.out or ROOT / "tests" / "fixtures" / (
        "resnext_fpn_torchvision.npz" if args.resnext else "resnet_fpn_torchvision.npz")
    torch.manual_seed(0)
    rng = np.random.default_rng(20240611)
    images = rng.integers(0, 256, (BATCH, *IMAGE_SIZE, 3)).astype(np.uint8)
    images[1] = np.sort(images[1], axis=1)           # a smoother second image: gradients
    out = {"images": images}
    seeded = seeded_state_dict()
    for version in versions:
        run(version, images, seeded, out)
    np.savez_compressed(args.out, **out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
