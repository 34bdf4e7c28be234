"""Writes tests/fixtures/faster_rcnn_<arch>_torchvision.npz: torchvision Faster R-CNN outputs.

Run with a Python that has torch and torchvision (not kft, not TensorFlow)::

    ~/tv/bin/python tools/make_faster_rcnn_fixture.py --arch fasterrcnn_resnet50_fpn

torchvision's model is built without pretrained weights, loaded with weights drawn by
``tools/seeded_state_dict.py`` from its state dict's key names and shapes (the fixture stores
that spec and the gains, not the weights) and run in eval mode on two photos (crops of
matplotlib's ``grace_hopper.jpg`` and of a second sample image, at the square size ``S``, so
torchvision's transform neither resizes nor pads: ``min_size = max_size = S``, S a multiple of
32). kft's test draws the same weights, converts them with ``kft convert``'s code and compares.

Keys: ``spec_keys`` / ``spec_shapes`` (:func:`seeded_state_dict.pack_spec`), ``gain_prefixes``
/ ``gain_values``, ``seed``, ``images`` uint8 ``[2, S, S, 3]``, ``num_classes`` (torchvision's,
with background), ``proposals [2, P, 4]`` (the RPN's proposals in its order, zero padded),
``num_proposals [2]``, ``boxes [2, D, 4]`` / ``scores [2, D]`` / ``labels [2, D]`` (torchvision
labels, 1-based; padding 0) and ``num_detections [2]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.models import detection

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("seeded_state_dict",
                                               ROOT / "tools" / "seeded_state_dict.py")
seeded = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(seeded)

ARCHS = ("fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2",
         "fasterrcnn_mobilenet_v3_large_fpn", "fasterrcnn_resnext101_32x8d_fpn")
NUM_CLASSES = 4                          # torchvision's count: background + 3 classes
SIZE = {"fasterrcnn_resnet50_fpn": 160, "fasterrcnn_resnet50_fpn_v2": 160,
        "fasterrcnn_mobilenet_v3_large_fpn": 256, "fasterrcnn_resnext101_32x8d_fpn": 160}
# std of each weight = gain / sqrt(fan_in) (seeded_state_dict). With gain 1 the ResNet-50 FPN
# features stay O(1) on the photos (std 1.2 after layer1, 2.7 after layer4, 5.5 after the FPN)
# and the top class scores spread over 0.8 .. 0.9. MobileNetV3's activations decay with gain 1
# (body output std 0.13, every image alike): its body gets 1.2 and its classifier and RPN
# objectness 4. On ResNet-50's larger features the objectness gain is 0.5: with 4 the logits
# reach 20+, sigmoid rounds hundreds of them to 1.0 and their order (the proposals' order) is
# decided by ties. Small box-delta gains keep the decoded boxes near their anchors / proposals.
COMMON_GAINS = {
    "roi_heads.box_predictor.cls_score": 1.0,
    "roi_heads.box_predictor.bbox_pred": 0.5,
    "rpn.head.cls_logits": 0.5,
    "rpn.head.bbox_pred": 0.5,
}
GAINS = {
    "fasterrcnn_resnet50_fpn": COMMON_GAINS,
    "fasterrcnn_resnet50_fpn_v2": COMMON_GAINS,
    # ResNeXt-101's 33 blocks grow the residual sums (gain 1: objectness logits saturate,
    # 64 proposals survive NMS, top scores 1.0): each block's last 1x1 conv at 0.5, as in
    # tools/make_resnet_fpn_fixture.py
    "fasterrcnn_resnext101_32x8d_fpn": {
        **COMMON_GAINS, **{f"backbone.body.layer{s + 1}.{b}.conv3.": 0.5
                           for s, n in enumerate((3, 4, 23, 3)) for b in range(n)}},
    "fasterrcnn_mobilenet_v3_large_fpn": {**COMMON_GAINS, "backbone.body.": 1.2,
                                          "roi_heads.box_predictor.cls_score": 4.0,
                                          "rpn.head.cls_logits": 4.0},
}


def photos(size: int) -> np.ndarray:
    """Two ``size x size`` RGB crops of photos that ship with matplotlib (uint8)."""
    import glob

    found = glob.glob(str(ROOT / ".venv/lib/python3*/site-packages/matplotlib/mpl-data/"
                          "sample_data/grace_hopper.jpg"))
    if not found:
        raise SystemExit("grace_hopper.jpg not found: create kft's .venv first")
    image = Image.open(found[0]).convert("RGB")                 # 512 x 600
    w, h = image.size
    crops = [image.crop((0, 0, w, w)), image.crop((w // 4, h - w // 2, w, h))]
    return np.stack([np.asarray(c.resize((size, size), Image.BILINEAR)) for c in crops])


def build(arch: str, size: int):
    if arch == "fasterrcnn_resnext101_32x8d_fpn":
        # torchvision has no builder for it: the FPN backbone its detection module makes for
        # any ResNet name (FrozenBatchNorm2d, layer1-4, LastLevelMaxPool) in a FasterRCNN
        from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

        backbone = resnet_fpn_backbone(backbone_name="resnext101_32x8d", weights=None,
                                       trainable_layers=3)
        model = detection.FasterRCNN(backbone, num_classes=NUM_CLASSES, min_size=size,
                                     max_size=size)
    else:
        model = getattr(detection, arch)(weights=None, weights_backbone=None,
                                         num_classes=NUM_CLASSES, min_size=size,
                                         max_size=size)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", choices=ARCHS, default=ARCHS[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    size = SIZE[args.arch]
    model = build(args.arch, size)
    spec = seeded.spec_of(model.state_dict())
    gains = GAINS[args.arch]
    weights = seeded.draw(spec, args.seed, gains)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=False)
    images = photos(size)
    tensors = [torch.from_numpy(im).permute(2, 0, 1).float() / 255.0 for im in images]
    captured = {}
    model.rpn.register_forward_hook(lambda m, i, o: captured.update(proposals=o[0]))
    with torch.no_grad():
        outputs = model(tensors)
    proposals = [p.numpy() for p in captured["proposals"]]
    p_max = max(len(p) for p in proposals)
    d_max = max(max(len(o["boxes"]) for o in outputs), 1)
    out = {"images": images, "num_classes": np.int32(NUM_CLASSES), "seed": np.int32(args.seed),
           "gain_prefixes": np.array(list(gains)), "gain_values": np.array(list(gains.values())),
           "proposals": np.zeros((2, p_max, 4), "float32"),
           "num_proposals": np.array([len(p) for p in proposals], "int32"),
           "boxes": np.zeros((2, d_max, 4), "float32"), "scores": np.zeros((2, d_max), "float32"),
           "labels": np.zeros((2, d_max), "int32"),
           "num_detections": np.array([len(o["boxes"]) for o in outputs], "int32"),
           **seeded.pack_spec(spec)}
    for i, (p, o) in enumerate(zip(proposals, outputs, strict=True)):
        out["proposals"][i, :len(p)] = p
        n = len(o["boxes"])
        out["boxes"][i, :n] = o["boxes"].numpy()
        out["scores"][i, :n] = o["scores"].numpy()
        out["labels"][i, :n] = o["labels"].numpy()
    path = args.output or ROOT / "tests" / "fixtures" / f"{args.arch}_torchvision.npz"
    np.savez_compressed(path, **out)
    print(json.dumps({"arch": args.arch, "path": str(path), "kib": path.stat().st_size // 1024,
                      "num_proposals": out["num_proposals"].tolist(),
                      "num_detections": out["num_detections"].tolist(),
                      "top_scores": [o["scores"][:5].numpy().round(3).tolist()
                                     for o in outputs]}))


if __name__ == "__main__":
    main()
