"""Writes tests/fixtures/mobilenet_v3_fpn_torchvision.npz: torchvision's
fasterrcnn_mobilenet_v3_large_fpn backbone (MobileNetV3-Large body + FPN) on seeded weights.

Run with a Python that has torch and torchvision (not kft, not TensorFlow)::

    ~/tv/bin/python tools/make_mobilenet_v3_fpn_fixture.py [--report]

The model is ``fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None,
num_classes=3).eval().backbone``. Its weights are ``tools/seeded_state_dict.draw(spec, SEED,
GAINS)`` over the state-dict spec of ``model.backbone`` with keys prefixed ``backbone.`` (as in
the detector's state dict: ``backbone.body.{i}...``, ``backbone.fpn...``); the fixture stores
the spec, seed and gains, not the weights, and the test redraws them. ``GAINS`` scale the conv
std (``gain / sqrt(fan_in)``); the BatchNorms' drawn running statistics do not normalise, so
the body's gain sets the growth per block: 1.0 decays to std ~0.1 by ``features[16]``, 1.3 grows
to ~50, 1.2 keeps every ``features[i]`` output's std within 1.1 .. 5.8 (2.3 at C5: hardswish and
the SE gates see both their linear and saturated parts). The FPN convs use 1.0. ``--report``
prints every ``features[i]`` output's std to retune them.

With ``weights=None`` the detector's norm layer is ``nn.BatchNorm2d`` (eval mode here), with
pretrained weights ``FrozenBatchNorm2d``; both have eps 1e-5. The tool also runs the
FrozenBatchNorm2d build (``mobilenet_v3_large(norm_layer=FrozenBatchNorm2d)`` +
``_mobilenet_extractor(..., True, 3)``, torchvision's pretrained path) on the same weights and
stores the largest difference as ``frozen_vs_eval_bn_max_diff``.

Keys: ``images`` uint8 ``[2, H, W, 3]`` (non-square, odd: every stride-2 pad matters), fed as
``GeneralizedRCNNTransform`` normalises them, ``(x / 255 - mean) / std`` (no resize);
``body_C5a [2, h, w, 160]`` and ``body_C5 [2, h, w, 960]`` (``backbone.body`` outputs "0" and
"1", channels-last); ``fpn_C5a``, ``fpn_C5``, ``fpn_pool`` (``[2, h, w, 256]``, pool
``[2, ceil(h/2), ceil(w/2), 256]``); ``spec_keys`` / ``spec_shapes``, ``seed``, ``gain_keys`` /
``gain_values``; ``trainable_params [7]``: trainable parameter elements of the body for
``trainable_backbone_layers`` k = 0 .. 6 (torchvision's freezing on the FrozenBatchNorm2d path).
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np
import torch
from torchvision.models import mobilenet_v3_large
from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn
from torchvision.models.detection.backbone_utils import _mobilenet_extractor
from torchvision.ops.misc import FrozenBatchNorm2d

ROOT = Path(__file__).resolve().parents[1]
IMAGE_SIZE = (81, 113)
BATCH = 2
SEED = 3
GAINS = {"backbone.body.": 1.2, "backbone.fpn.": 1.0}
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _seeded():
    spec = importlib.util.spec_from_file_location("seeded_state_dict",
                                                  ROOT / "tools" / "seeded_state_dict.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def nhwc(t):
    return np.ascontiguousarray(np.transpose(t.detach().numpy(), (0, 2, 3, 1)), np.float32)


def load(module, weights, prefix="backbone."):
    """Loads ``weights`` (``{prefix + key: array}``) into ``module``; only BatchNorm's
    ``num_batches_tracked`` may be missing."""
    own = {k[len(prefix):]: torch.from_numpy(v) for k, v in weights.items()
           if k.startswith(prefix)}
    missing, unexpected = module.load_state_dict(own, strict=False)
    assert not unexpected, unexpected
    assert all(k.endswith("num_batches_tracked") for k in missing), missing


def report(backbone, x):
    def hook(name):
        return lambda _m, _i, out: print(f"{name:12s} std {out.std().item():.3f}")
    handles = [m.register_forward_hook(hook(n)) for n, m in backbone.body.items()]
    with torch.no_grad():
        backbone.body(x)
    for h in handles:
        h.remove()


def trainable_params() -> np.ndarray:
    """``[7]``: parameter elements with ``requires_grad`` in the pretrained-path body (frozen
    BN, so convs and SE biases only) for ``trainable_layers`` k = 0 .. 6."""
    counts = []
    for k in range(7):
        body = _mobilenet_extractor(mobilenet_v3_large(norm_layer=FrozenBatchNorm2d), True,
                                    k).body
        counts.append(sum(p.numel() for p in body.parameters() if p.requires_grad))
    return np.array(counts, "int64")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(ROOT / "tests" / "fixtures" /
                                             "mobilenet_v3_fpn_torchvision.npz"))
    parser.add_argument("--report", action="store_true", help="print activation stds only")
    args = parser.parse_args()
    seeded = _seeded()
    torch.manual_seed(0)

    backbone = fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None,
                                                 num_classes=3).eval().backbone
    bn = backbone.body["0"][1]
    assert isinstance(bn, torch.nn.BatchNorm2d) and bn.eps == 1e-5, bn
    spec = [("backbone." + k, s) for k, s in seeded.spec_of(backbone.state_dict())]
    weights = seeded.draw(spec, SEED, GAINS)
    load(backbone, weights)

    rng = np.random.default_rng(SEED)
    images = rng.integers(0, 256, (BATCH, *IMAGE_SIZE, 3), dtype=np.uint8)
    x = torch.from_numpy(np.transpose(images, (0, 3, 1, 2)).astype(np.float32)) / 255.0
    x = (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    if args.report:
        report(backbone, x)
        return

    frozen = _mobilenet_extractor(mobilenet_v3_large(norm_layer=FrozenBatchNorm2d), True, 3)
    assert frozen.body["0"][1].eps == 1e-5
    load(frozen.eval(), weights)
    with torch.no_grad():
        body = backbone.body(x)
        fpn = backbone(x)
        frozen_out = frozen(x)
    frozen_diff = max(float((fpn[k] - frozen_out[k]).abs().max()) for k in fpn)
    assert frozen_diff < 1e-4, frozen_diff

    out = {
        "trainable_params": trainable_params(),
        "images": images, "seed": np.int32(SEED),
        "gain_keys": np.array(list(GAINS)), "gain_values": np.array(list(GAINS.values()),
                                                                    "float32"),
        "body_C5a": nhwc(body["0"]), "body_C5": nhwc(body["1"]),
        "fpn_C5a": nhwc(fpn["0"]), "fpn_C5": nhwc(fpn["1"]), "fpn_pool": nhwc(fpn["pool"]),
        "frozen_vs_eval_bn_max_diff": np.float32(frozen_diff),
        **seeded.pack_spec(spec),
    }
    np.savez_compressed(args.out, **out)
    for k in ("body_C5a", "body_C5", "fpn_C5a", "fpn_pool"):
        print(k, out[k].shape, f"std {out[k].std():.3f}")
    print("frozen vs eval BN", frozen_diff, "->", args.out, Path(args.out).stat().st_size, "bytes")


if __name__ == "__main__":
    main()
