"""Writes tests/fixtures/faster_rcnn_<arch>_torchvision.npz: torchvision Faster R-CNN outputs.

Run with a Python that has torch and torchvision (not kft, not TensorFlow)::

    ~/tv/bin/python tools/make_faster_rcnn_fixture.py --arch fasterrcnn_resnet50_fpn
    ~/tv/bin/python tools/make_faster_rcnn_fixture.py --arch fasterrcnn_resnet50_fpn \
        --finetune 120          # the committed *_finetuned_* fixture

torchvision's model is built without pretrained weights, loaded with weights drawn by
``tools/seeded_state_dict.py`` from its state dict's key names and shapes (the fixture stores
that spec and the gains, not the weights) and run in eval mode on two photos (crops of
matplotlib's ``grace_hopper.jpg`` and of a second sample image, at the square size ``S``, so
torchvision's transform neither resizes nor pads: ``min_size = max_size = S``, S a multiple of
32). kft's test draws the same weights, converts them with ``kft convert``'s code and compares.

``--finetune STEPS`` (R50-FPN v1) then fine-tunes the model a little before recording: Adam
(``--lr``) on both photos with a few hand-placed boxes (:data:`FINETUNE_BOXES`), training only the last
layer of each stage (the RPN's objectness and box-delta convs, the box predictor; backbone,
FPN, RPN conv and box head stay at the drawn values, in eval mode), so the fixture can store
the ~25k trained values instead of 41 M, and the outputs are those of a model that has learnt
something: confident detections on the boxes, low scores elsewhere. Written to
``<arch>_finetuned_torchvision.npz`` with ``trained_keys`` / ``trained_values`` (flattened,
float32, in key order) and ``finetune_steps`` / ``finetune_boxes`` / ``finetune_labels`` /
``finetune_losses``.

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


# --finetune: boxes (x1, y1, x2, y2, torchvision label) on the two S x S photos, as fractions
# of S; and the state-dict prefixes that train.
FINETUNE_BOXES = (((0.25, 0.12, 0.75, 0.70, 1), (0.05, 0.62, 0.38, 0.97, 2)),
                  ((0.12, 0.18, 0.56, 0.62, 3), (0.56, 0.50, 0.94, 0.94, 1)))
FINETUNE_PREFIXES = ("rpn.head.cls_logits.", "rpn.head.bbox_pred.",
                     "roi_heads.box_predictor.")


def finetune(model, tensors, size: int, steps: int, lr: float):
    """Trains :data:`FINETUNE_PREFIXES` for ``steps`` Adam steps on ``tensors`` with
    :data:`FINETUNE_BOXES`; returns (trained keys, the losses per step, boxes, labels)."""
    torch.manual_seed(0)  # the RPN / RoI samplers draw with torch's generator
    trained = [k for k, _ in model.named_parameters() if k.startswith(FINETUNE_PREFIXES)]
    params = dict(model.named_parameters())
    for k, p in params.items():
        p.requires_grad_(k in trained)
    boxes = [torch.tensor([b[:4] for b in image], dtype=torch.float32) * size
             for image in FINETUNE_BOXES]
    labels = [torch.tensor([b[4] for b in image], dtype=torch.int64) for image in FINETUNE_BOXES]
    targets = [{"boxes": b, "labels": c} for b, c in zip(boxes, labels, strict=True)]
    optimizer = torch.optim.Adam([params[k] for k in trained], lr=lr)
    losses = []
    model.train()
    model.backbone.eval()  # BatchNorm statistics stay the drawn ones
    for _ in range(steps):
        loss = sum(model(tensors, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    model.eval()
    return trained, losses, np.stack([b.numpy() for b in boxes]), np.stack(
        [c.numpy() for c in labels])


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
    parser.add_argument("--finetune", type=int, default=0, metavar="STEPS",
                        help="fine-tune the last layer of each stage this many steps first")
    parser.add_argument("--lr", type=float, default=3e-3, help="--finetune's Adam rate")
    args = parser.parse_args()
    if args.finetune and args.arch != "fasterrcnn_resnet50_fpn":
        parser.error("--finetune: only for fasterrcnn_resnet50_fpn")
    size = SIZE[args.arch]
    model = build(args.arch, size)
    spec = seeded.spec_of(model.state_dict())
    gains = GAINS[args.arch]
    weights = seeded.draw(spec, args.seed, gains)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=False)
    images = photos(size)
    tensors = [torch.from_numpy(im).permute(2, 0, 1).float() / 255.0 for im in images]
    tuned = {}
    if args.finetune:
        keys, losses, boxes, labels = finetune(model, tensors, size, args.finetune, args.lr)
        state = model.state_dict()
        tuned = {"trained_keys": np.array(keys),
                 "trained_values": np.concatenate([state[k].detach().numpy().ravel()
                                                   for k in keys]).astype("float32"),
                 "finetune_steps": np.int32(args.finetune), "finetune_boxes": boxes,
                 "finetune_labels": labels.astype("int32"),
                 "finetune_losses": np.array(losses, "float32")}
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
           **seeded.pack_spec(spec), **tuned}
    for i, (p, o) in enumerate(zip(proposals, outputs, strict=True)):
        out["proposals"][i, :len(p)] = p
        n = len(o["boxes"])
        out["boxes"][i, :n] = o["boxes"].numpy()
        out["scores"][i, :n] = o["scores"].numpy()
        out["labels"][i, :n] = o["labels"].numpy()
    name = f"{args.arch}_finetuned" if args.finetune else args.arch
    path = args.output or ROOT / "tests" / "fixtures" / f"{name}_torchvision.npz"
    np.savez_compressed(path, **out)
    print(json.dumps({"arch": args.arch, "path": str(path), "kib": path.stat().st_size // 1024,
                      "num_proposals": out["num_proposals"].tolist(),
                      "num_detections": out["num_detections"].tolist(),
                      **({"finetune_loss_first_last": [round(losses[0], 4),
                                                       round(losses[-1], 4)],
                          "trained_values": int(tuned["trained_values"].size)}
                         if tuned else {}),
                      "top_scores": [o["scores"][:5].numpy().round(3).tolist()
                                     for o in outputs]}))


if __name__ == "__main__":
    main()
