"""Writes tests/fixtures/rpn_torchvision.npz: torchvision FPN / RPN numbers for kft's tests.

Run with a Python that has torch and torchvision (not kft, not TensorFlow)::

    ~/tv/bin/python tools/make_rpn_fixture.py

Everything comes from a seeded NumPy generator and is stored channels-last as kft uses it
(feature maps ``[B, H, W, C]``, conv kernels ``[kh, kw, in, out]``); torchvision runs on the
NCHW transposes. Keys by prefix:

* ``fpn_``: ``FeaturePyramidNetwork`` + ``LastLevelMaxPool`` on four odd-sized levels
  (``fpn_in{i}``), its weights (``fpn_lateral{i}_kernel`` / ``_bias``, ``fpn_output{i}_...``)
  and outputs ``fpn_out{i}`` (the last is the pooled level).
* ``head_``: ``RPNHead`` weights (``head_conv_*``, ``head_cls_*``, ``head_bbox_*``), five
  levels ``head_in{i}`` and the flattened outputs of ``concat_box_prediction_layers``
  (``head_objectness [B, N]``, ``head_deltas [B, N, 4]``).
* ``anchors [N, 4]``: ``AnchorGenerator`` (sizes 32..512, ratios 0.5, 1, 2) on a 64 x 128
  image with P2..P6 maps; ``image_size``.
* ``prop_``: random logits ``prop_objectness [B, N]`` and deltas ``prop_deltas``; per case
  ``c`` the settings ``prop{c}_settings`` (pre_nms_top_n, post_nms_top_n, nms_thresh,
  min_size, score_thresh), ``prop{c}_image_sizes [B, 2]`` and ``filter_proposals``'s results
  padded with zeros: ``prop{c}_boxes [B, post, 4]``, ``prop{c}_scores``, ``prop{c}_count``.
* ``loss_``: padded ground truth ``loss_gt_boxes [B, M, 4]`` / ``loss_gt_labels`` (-1 pad;
  the second image has none), torchvision's anchor labels ``loss_labels [B, N]`` (1 / 0 /
  -1), regression targets ``loss_targets [B, N, 4]`` (objects only, 0 elsewhere), and
  ``compute_loss`` with ``batch_size_per_image = N`` (every non-ignored anchor is sampled, so
  no randomness): ``loss_objectness``, ``loss_box``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import (
    RegionProposalNetwork,
    RPNHead,
    concat_box_prediction_layers,
)
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

IMAGE_SIZE = (64, 128)                       # (height, width), divisible by the P6 stride
STRIDES = (4, 8, 16, 32, 64)
BATCH = 2
HEAD_CHANNELS = 4
FPN_SHAPES = ((15, 22, 3), (8, 11, 4), (4, 6, 5), (2, 3, 6))   # odd sizes: partial cells
FPN_CHANNELS = 4
PROPOSAL_CASES = ((60, 50, 0.7, 1e-3, 0.0), (25, 40, 0.5, 6.0, 0.3), (10, 40, 0.3, 2.0, 0.5))


def nchw(x):
    return torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))


def nhwc(t):
    return np.transpose(t.detach().numpy(), (0, 2, 3, 1)).astype(np.float32)


def conv_weights(conv):
    """torch ``Conv2d`` -> (kernel ``[kh, kw, in, out]``, bias ``[out]``) float32."""
    return (np.transpose(conv.weight.detach().numpy(), (2, 3, 1, 0)).astype(np.float32),
            conv.bias.detach().numpy().astype(np.float32))


def randomise(module, rng, std):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.from_numpy(rng.normal(0.0, std, p.shape).astype(np.float32)))


def fpn_part(rng, out):
    inputs = [rng.normal(0, 1, (1, *s)).astype(np.float32) for s in FPN_SHAPES]
    fpn = FeaturePyramidNetwork([s[-1] for s in FPN_SHAPES], FPN_CHANNELS,
                                extra_blocks=LastLevelMaxPool())
    randomise(fpn, rng, 0.3)
    with torch.no_grad():
        result = fpn({str(i): nchw(x) for i, x in enumerate(inputs)})
    for i, x in enumerate(inputs):
        out[f"fpn_in{i}"] = x
        for kind, blocks in (("lateral", fpn.inner_blocks), ("output", fpn.layer_blocks)):
            kernel, bias = conv_weights(blocks[i][0])
            out[f"fpn_{kind}{i}_kernel"], out[f"fpn_{kind}{i}_bias"] = kernel, bias
    for i, value in enumerate(result.values()):
        out[f"fpn_out{i}"] = nhwc(value)


def head_part(rng, out, shapes):
    head = RPNHead(HEAD_CHANNELS, 3)
    randomise(head, rng, 0.2)
    levels = [rng.normal(0, 1, (BATCH, h, w, HEAD_CHANNELS)).astype(np.float32)
              for h, w in shapes]
    with torch.no_grad():
        logits, deltas = head([nchw(x) for x in levels])
        objectness, box = concat_box_prediction_layers(logits, deltas)
    out["head_conv_kernel"], out["head_conv_bias"] = conv_weights(head.conv[0][0])
    out["head_cls_kernel"], out["head_cls_bias"] = conv_weights(head.cls_logits)
    out["head_bbox_kernel"], out["head_bbox_bias"] = conv_weights(head.bbox_pred)
    for i, x in enumerate(levels):
        out[f"head_in{i}"] = x
    out["head_objectness"] = objectness.reshape(BATCH, -1).numpy()
    out["head_deltas"] = box.reshape(BATCH, -1, 4).numpy()


def make_boxes(rng, count, height, width):
    sides = np.exp(rng.uniform(np.log(8.0), np.log(70.0), count))
    ratios = np.exp(rng.uniform(np.log(0.4), np.log(2.5), count))
    w, h = sides * np.sqrt(ratios), sides / np.sqrt(ratios)
    cx, cy = rng.uniform(0, width, count), rng.uniform(0, height, count)
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    return np.clip(boxes, 0, [width, height, width, height]).astype(np.float32)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1]
                        / "tests" / "fixtures" / "rpn_torchvision.npz")
    args = parser.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(20240610)
    out = {}
    fpn_part(rng, out)

    height, width = IMAGE_SIZE
    shapes = [(-(-height // s), -(-width // s)) for s in STRIDES]
    head_part(rng, out, shapes)

    generator = AnchorGenerator(tuple((s,) for s in (32, 64, 128, 256, 512)),
                                ((0.5, 1.0, 2.0),) * len(STRIDES))
    head = RPNHead(HEAD_CHANNELS, 3)
    features = [torch.zeros(BATCH, HEAD_CHANNELS, h, w) for h, w in shapes]
    images = ImageList(torch.zeros(BATCH, 3, height, width), [IMAGE_SIZE] * BATCH)
    anchors = generator(images, features)
    num_per_level = [h * w * 3 for h, w in shapes]
    n = sum(num_per_level)
    out["anchors"] = anchors[0].numpy().astype(np.float32)
    out["image_size"] = np.asarray(IMAGE_SIZE, np.int32)
    out["num_anchors_per_level"] = np.asarray(num_per_level, np.int32)

    objectness = rng.normal(0, 2, (BATCH, n)).astype(np.float32)
    deltas = rng.normal(0, 0.4, (BATCH, n, 4)).astype(np.float32)
    out["prop_objectness"], out["prop_deltas"] = objectness, deltas
    for c, (pre, post, nms, min_size, score) in enumerate(PROPOSAL_CASES):
        sizes = [IMAGE_SIZE, (50, 111)] if c == 0 else [IMAGE_SIZE] * BATCH
        rpn = RegionProposalNetwork(generator, head, 0.7, 0.3, 256, 0.5,
                                    {"training": pre, "testing": pre},
                                    {"training": post, "testing": post}, nms, score).eval()
        rpn.min_size = min_size
        proposals = rpn.box_coder.decode(torch.from_numpy(deltas).reshape(-1, 4), anchors)
        boxes, scores = rpn.filter_proposals(proposals.view(BATCH, -1, 4),
                                             torch.from_numpy(objectness), sizes,
                                             num_per_level)
        padded_boxes = np.zeros((BATCH, post, 4), np.float32)
        padded_scores = np.zeros((BATCH, post), np.float32)
        for b in range(BATCH):
            padded_boxes[b, :len(boxes[b])] = boxes[b].numpy()
            padded_scores[b, :len(scores[b])] = scores[b].numpy()
        out[f"prop{c}_settings"] = np.asarray([pre, post, nms, min_size, score], np.float64)
        out[f"prop{c}_image_sizes"] = np.asarray(sizes, np.int32)
        out[f"prop{c}_boxes"], out[f"prop{c}_scores"] = padded_boxes, padded_scores
        out[f"prop{c}_count"] = np.asarray([len(s) for s in scores], np.int32)

    gt = make_boxes(rng, 5, height, width)
    gt_boxes = np.zeros((BATCH, 7, 4), np.float32)
    gt_labels = np.full((BATCH, 7), -1, np.int32)
    gt_boxes[0, :5], gt_labels[0, :5] = gt, rng.integers(0, 3, 5)
    gt_boxes[0, 6] = [10, 10, 40, 40]                 # padding rows carry any coordinates
    rpn = RegionProposalNetwork(generator, head, 0.7, 0.3, n, 0.5, {"training": 10,
                                "testing": 10}, {"training": 10, "testing": 10}, 0.7).train()
    targets = [{"boxes": torch.from_numpy(gt)}, {"boxes": torch.zeros(0, 4)}]
    labels, matched = rpn.assign_targets_to_anchors(anchors, targets)
    regression = rpn.box_coder.encode(matched, anchors)
    loss_obj, loss_box = rpn.compute_loss(torch.from_numpy(objectness).reshape(-1, 1),
                                          torch.from_numpy(deltas).reshape(-1, 4), labels,
                                          regression)
    labels = torch.stack(labels).numpy().astype(np.int8)
    reg = torch.stack(regression).numpy().astype(np.float32)
    out["loss_gt_boxes"], out["loss_gt_labels"] = gt_boxes, gt_labels
    out["loss_labels"] = labels
    out["loss_targets"] = np.where((labels == 1)[..., None], reg, 0.0).astype(np.float32)
    out["loss_objectness"] = np.float32(loss_obj.item())
    out["loss_box"] = np.float32(loss_box.item())

    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB); positives per image "
          f"{(labels == 1).sum(axis=1).tolist()}, ignored {(labels == -1).sum(axis=1).tolist()}; "
          f"proposal counts {[out[f'prop{c}_count'].tolist() for c in range(len(PROPOSAL_CASES))]}; losses "
          f"{out['loss_objectness']:.5f} {out['loss_box']:.5f}")


if __name__ == "__main__":
    main()
