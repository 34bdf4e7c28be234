"""Writes tests/fixtures/box_head_torchvision.npz: torchvision RoI-heads numbers for kft's tests.

Run with a Python that has torch and torchvision (not kft, not TensorFlow)::

    ~/tv/bin/python tools/make_box_head_fixture.py

Weights are seeded stand-ins from ``tools/seeded_state_dict.py`` (the fixture stores their
key / shape spec, the test redraws them); inputs come from a seeded NumPy generator, stored
channels-last as kft uses them (RoI features ``[N, 7, 7, C]``). torchvision labels are kft
labels + 1 (0 = background). Keys by prefix:

* ``v1_`` / ``v2_``: ``TwoMLPHead`` + ``FastRCNNPredictor`` and ``FastRCNNConvFCHead`` (4 convs
  with BatchNorm in eval mode, 2 FC layers) + predictor: ``{v}_spec_keys`` / ``_spec_shapes``
  (state-dict spec with prefix ``roi_heads.``), ``{v}_features [N, rep]``, ``{v}_logits``,
  ``{v}_deltas``; ``rois_in [N, 7, 7, C]`` is the shared input.
* ``sample_``: kft-layout inputs (``sample_proposals [B, R, 4]``, ``sample_proposal_valid``,
  ``sample_gt_boxes [B, M, 4]``, ``sample_gt_labels`` 0-based, -1 padding; image 1 has no
  ground truth) and ``select_training_samples`` with ``batch_size_per_image`` larger than
  every image's candidates (everything sampled, no randomness), concatenated over images in
  torchvision's candidate order: ``sample_rois``, ``sample_labels`` (torchvision's),
  ``sample_targets`` (regression targets, garbage for background rows as torchvision has
  them), ``sample_matched`` (index among the image's real boxes), ``sample_count [B]``.
* ``loss_``: random ``loss_logits [n, C + 1]`` / ``loss_deltas [n, 4 (C + 1)]`` on those
  samples and ``fastrcnn_loss``'s ``loss_cls`` / ``loss_box``.
* ``post{c}_``: ``postprocess_detections`` per case ``c``: settings (score_thresh,
  nms_thresh, detections_per_img), kft-layout inputs ``post_logits [B, R, C + 1]``,
  ``post_deltas``, ``post_proposals``, ``post_valid`` (invalid rows carry confident logits
  and are dropped before torchvision sees them) and outputs padded to ``D``:
  ``post{c}_boxes``, ``post{c}_scores``, ``post{c}_labels`` (torchvision's, 0 padding),
  ``post{c}_count``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import seeded_state_dict as ssd
import torch
from torch import nn
from torchvision.models.detection.faster_rcnn import (
    FastRCNNConvFCHead,
    FastRCNNPredictor,
    TwoMLPHead,
)
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss

IMAGE_SIZE = (64, 96)                                  # (height, width)
NUM_CLASSES = 3                                        # kft foreground classes
CHANNELS, POOL, REP, NUM_ROIS = 8, 7, 32, 10
V2_CONVS, V2_FCS = (6, 6, 6, 5), (16, 12)
SEED = 7
POST_CASES = ((0.05, 0.5, 100), (0.2, 0.3, 7))


def nchw(x):
    return torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))


def load(module, prefix):
    """Loads seeded weights into ``module`` (keys ``prefix + name``) and returns their spec."""
    spec = [(prefix + k, s) for k, s in ssd.spec_of(module.state_dict())]
    weights = ssd.draw(spec, seed=SEED)
    module.load_state_dict({k[len(prefix):]: torch.from_numpy(v) for k, v in weights.items()},
                           strict=False)
    return spec


def heads_part(rng, out):
    rois = rng.normal(0, 1, (NUM_ROIS, POOL, POOL, CHANNELS)).astype(np.float32)
    out["rois_in"] = rois
    k = NUM_CLASSES + 1
    v1_head = TwoMLPHead(CHANNELS * POOL * POOL, REP)
    v2_head = FastRCNNConvFCHead((CHANNELS, POOL, POOL), list(V2_CONVS), list(V2_FCS),
                                 norm_layer=nn.BatchNorm2d)
    for name, head, width in (("v1", v1_head, REP), ("v2", v2_head, V2_FCS[-1])):
        predictor = FastRCNNPredictor(width, k)
        spec = load(head, "roi_heads.box_head.")
        spec += load(predictor, "roi_heads.box_predictor.")
        for key, value in ssd.pack_spec(spec).items():
            out[f"{name}_{key}"] = value
        head.eval()
        with torch.no_grad():
            features = head(nchw(rois))
            logits, deltas = predictor(features)
        out[f"{name}_features"] = features.numpy()
        out[f"{name}_logits"], out[f"{name}_deltas"] = logits.numpy(), deltas.numpy()


def random_boxes(rng, count, height, width, low=6.0, high=50.0):
    sides = np.exp(rng.uniform(np.log(low), np.log(high), count))
    ratios = np.exp(rng.uniform(np.log(0.4), np.log(2.5), count))
    w, h = sides * np.sqrt(ratios), sides / np.sqrt(ratios)
    cx, cy = rng.uniform(0, width, count), rng.uniform(0, height, count)
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    return np.clip(boxes, 0, [width, height, width, height]).astype(np.float32)


def jitter(rng, boxes, scale):
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    noise = rng.normal(0, scale, boxes.shape) * np.stack([w, h, w, h], axis=1)
    return (boxes + noise).astype(np.float32)


def scatter(rng, rows, total, filler):
    """Places ``rows`` at random sorted positions of ``total`` slots; the rest from ``filler``.
    Returns (array, valid mask)."""
    slots = np.sort(rng.choice(total, len(rows), replace=False))
    out = filler(total).astype(np.float32)
    out[slots] = rows
    valid = np.zeros(total, bool)
    valid[slots] = True
    return out, valid


def sample_part(rng, out):
    height, width = IMAGE_SIZE
    R, M = 36, 6
    gt0 = random_boxes(rng, 4, height, width, 12.0, 40.0)
    labels0 = np.array([0, 2, 1, 2], np.int32)
    props0 = np.concatenate([jitter(rng, np.repeat(gt0, 4, axis=0), 0.12),
                             random_boxes(rng, 14, height, width)])
    props0 = np.clip(props0, 0, [width, height, width, height])
    props1 = random_boxes(rng, 20, height, width)
    per_image = [(props0, gt0, labels0), (props1, np.zeros((0, 4), np.float32),
                                          np.zeros(0, np.int32))]
    proposals = np.zeros((2, R, 4), np.float32)
    valid = np.zeros((2, R), bool)
    gt_boxes = np.zeros((2, M, 4), np.float32)
    gt_labels = np.full((2, M), -1, np.int32)
    garbage = lambda n: random_boxes(rng, n, height, width)          # noqa: E731
    for b, (props, gt, labels) in enumerate(per_image):
        proposals[b], valid[b] = scatter(rng, props, R, garbage)
        if len(gt):
            gt_boxes[b], real = scatter(rng, gt, M, garbage)
            gt_labels[b, real] = labels
    out["sample_proposals"], out["sample_proposal_valid"] = proposals, valid
    out["sample_gt_boxes"], out["sample_gt_labels"] = gt_boxes, gt_labels

    heads = RoIHeads(None, None, None, 0.5, 0.5, 10000, 0.25, None, 0.05, 0.5, 100)
    targets = [{"boxes": torch.from_numpy(gt), "labels": torch.from_numpy(labels + 1).long()}
               for _, gt, labels in per_image]
    rois, matched, labels, regression = heads.select_training_samples(
        [torch.from_numpy(p) for p, _, _ in per_image], targets)
    out["sample_rois"] = torch.cat(rois).numpy()
    out["sample_labels"] = torch.cat(labels).numpy().astype(np.int32)
    out["sample_targets"] = torch.cat(regression).numpy().astype(np.float32)
    out["sample_matched"] = torch.cat(matched).numpy().astype(np.int32)
    out["sample_count"] = np.array([len(r) for r in rois], np.int32)

    n, k = len(out["sample_labels"]), NUM_CLASSES + 1
    logits = rng.normal(0, 1.5, (n, k)).astype(np.float32)
    deltas = rng.normal(0, 0.5, (n, 4 * k)).astype(np.float32)
    cls, box = fastrcnn_loss(torch.from_numpy(logits), torch.from_numpy(deltas), labels,
                             regression)
    out["loss_logits"], out["loss_deltas"] = logits, deltas
    out["loss_cls"], out["loss_box"] = np.float32(cls.item()), np.float32(box.item())
    return heads


def post_part(rng, out):
    height, width = IMAGE_SIZE
    R, k = 48, NUM_CLASSES + 1
    counts = (40, 25)
    logits = rng.normal(0, 2.0, (2, R, k)).astype(np.float32)
    deltas = rng.normal(0, 0.6, (2, R, 4 * k)).astype(np.float32)
    deltas[:, :, 6] = np.where(rng.random((2, R)) < 0.3, 25.0, deltas[:, :, 6])   # dw * 0.2 > clamp
    proposals = np.zeros((2, R, 4), np.float32)
    valid = np.zeros((2, R), bool)
    garbage = lambda n: random_boxes(rng, n, height, width)          # noqa: E731
    for b, count in enumerate(counts):
        boxes = random_boxes(rng, count, height, width)
        boxes[:2, 2] = boxes[:2, 0] + 0.004                          # collapse below min_size
        proposals[b], valid[b] = scatter(rng, boxes, R, garbage)
        logits[b, ~valid[b], 1] = 12.0                               # confident, but invalid
    out["post_logits"], out["post_deltas"] = logits, deltas
    out["post_proposals"], out["post_valid"] = proposals, valid
    for c, (score, nms, per_img) in enumerate(POST_CASES):
        heads = RoIHeads(None, None, None, 0.5, 0.5, 512, 0.25, None, score, nms, per_img)
        rows = [np.flatnonzero(valid[b]) for b in range(2)]
        boxes, scores, labels = heads.postprocess_detections(
            torch.from_numpy(np.concatenate([logits[b, r] for b, r in enumerate(rows)])),
            torch.from_numpy(np.concatenate([deltas[b, r] for b, r in enumerate(rows)])),
            [torch.from_numpy(proposals[b, r]) for b, r in enumerate(rows)],
            [IMAGE_SIZE, IMAGE_SIZE])
        padded = (np.zeros((2, per_img, 4), np.float32), np.zeros((2, per_img), np.float32),
                  np.zeros((2, per_img), np.int32))
        for b in range(2):
            n = len(scores[b])
            padded[0][b, :n], padded[1][b, :n] = boxes[b].numpy(), scores[b].numpy()
            padded[2][b, :n] = labels[b].numpy()
        out[f"post{c}_settings"] = np.array([score, nms, per_img], np.float64)
        out[f"post{c}_boxes"], out[f"post{c}_scores"], out[f"post{c}_labels"] = padded
        out[f"post{c}_count"] = np.array([len(s) for s in scores], np.int32)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1]
                        / "tests" / "fixtures" / "box_head_torchvision.npz")
    args = parser.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(20240611)
    out = {"image_size": np.array(IMAGE_SIZE, np.int32),
           "num_classes": np.int32(NUM_CLASSES),
           "v2_conv_dims": np.array(V2_CONVS, np.int32), "v2_fc_dims": np.array(V2_FCS, np.int32),
           "representation_size": np.int32(REP)}
    heads_part(rng, out)
    sample_part(rng, out)
    post_part(rng, out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **out)
    labels = out["sample_labels"]
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB); sampled "
          f"{out['sample_count'].tolist()}, positives {(labels > 0).sum()}; losses "
          f"{out['loss_cls']:.5f} {out['loss_box']:.5f}; detections "
          f"{[out[f'post{c}_count'].tolist() for c in range(len(POST_CASES))]}")


if __name__ == "__main__":
    main()
