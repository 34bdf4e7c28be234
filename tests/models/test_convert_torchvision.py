"""torchvision Faster R-CNN checkpoints -> kft: output equality on committed fixtures.

``tools/make_faster_rcnn_fixture.py`` (run where torchvision is installed) loads weights drawn
from a seeded generator into torchvision's model and stores its proposals and detections on two
photos; here the same weights are drawn, converted with ``kft convert``'s code and run in kft.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import seeded_state_dict as seeded  # tools/, on pytest's pythonpath

from kft.models.convert_torchvision import (
    ConvertError,
    convert_faster_rcnn,
    detect_arch,
    num_classes_of,
    read_state_dict,
)
from kft.models.faster_rcnn import FasterRCNN

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
ARCHS = ("fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2",
         "fasterrcnn_mobilenet_v3_large_fpn", "fasterrcnn_resnext101_32x8d_fpn")


def fixture_state_dict(arch, name=None):
    """The fixture ``<name or arch>_torchvision.npz`` and its state dict: the seeded weights,
    with the fine-tuned values of ``trained_keys`` put in where the fixture has them."""
    f = np.load(FIXTURES / f"{name or arch}_torchvision.npz")
    spec = seeded.unpack_spec(f["spec_keys"], f["spec_shapes"])
    gains = {str(k): float(v) for k, v in zip(f["gain_prefixes"], f["gain_values"], strict=True)}
    state_dict = seeded.draw(spec, int(f["seed"]), gains)
    if "trained_keys" in f:
        flat, start = f["trained_values"], 0
        for key in (str(k) for k in f["trained_keys"]):
            size = state_dict[key].size
            state_dict[key] = flat[start:start + size].reshape(state_dict[key].shape)
            start += size
        assert start == flat.size
    return f, state_dict


def box_iou(a, b):
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    area = lambda x: np.prod(x[:, 2:] - x[:, :2], axis=-1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter + 1e-9)


@pytest.mark.parametrize("arch", ARCHS)
def test_converted_model_gives_torchvisions_proposals_and_detections(arch):
    f, state_dict = fixture_state_dict(arch)
    det = assert_same_outputs_as_torchvision(arch, f, state_dict)
    assert min(det["num_detections"]) > 10


def test_a_fine_tuned_checkpoint_gives_torchvisions_detections():
    """The R50-FPN fixture fine-tuned a little in torchvision (the last layer of each stage,
    tools/make_faster_rcnn_fixture.py --finetune): its detections are confident ones on the
    boxes it was trained on, and kft's converted model gives the same."""
    arch = "fasterrcnn_resnet50_fpn"
    f, state_dict = fixture_state_dict(arch, f"{arch}_finetuned")
    seeded_only = fixture_state_dict(arch)[1]
    for key in (str(k) for k in f["trained_keys"]):   # the fine-tune really moved them
        assert np.abs(state_dict[key] - seeded_only[key]).max() > 1e-3, key
    assert f["finetune_losses"][-1] < 0.5 * f["finetune_losses"][0]
    det = assert_same_outputs_as_torchvision(arch, f, state_dict)
    for i in range(len(f["images"])):   # torchvision's top detections are the trained boxes
        d = int(f["num_detections"][i])
        for box, label in zip(f["finetune_boxes"][i], f["finetune_labels"][i], strict=True):
            hit = (box_iou(box[None], f["boxes"][i, :d])[0] >= 0.5) & (
                f["labels"][i, :d] == label) & (f["scores"][i, :d] >= 0.5)
            assert hit.any(), (i, box, label)
        assert int(det["num_detections"][i]) >= 2


def assert_same_outputs_as_torchvision(arch, f, state_dict):
    """Converts ``state_dict`` into kft's ``arch`` and checks its proposals and detections on
    the fixture's photos against torchvision's; returns kft's detections."""
    assert detect_arch(state_dict) == arch
    images = f["images"].astype("float32")
    model = FasterRCNN.from_arch(arch, num_classes_of(state_dict), image_size=images.shape[1])
    report = convert_faster_rcnn(state_dict, model)
    assert not report["shape_mismatch"] and not report["unused_keys"]
    raw = model(images)
    det = {k: np.asarray(v) for k, v in model.detect(images).items()}
    for i in range(len(images)):
        # proposals: the same boxes in the same (score) order, each at most 3 places from
        # torchvision's: a near-tie at NMS's 0.7 can keep one box on one side only and shift
        # the rest by one (ResNeXt-101, image 0: from place 95 on, every box one place off)
        n = int(f["num_proposals"][i])
        valid = np.asarray(raw["proposal_valid"][i])
        assert int(valid.sum()) == n
        ours = np.asarray(raw["proposals"][i])[:n]
        theirs = f["proposals"][i, :n]
        near = np.zeros(n, bool)
        for shift in range(-3, 4):
            lo, hi = max(0, shift), min(n, n + shift)
            near[lo - shift:hi - shift] |= np.abs(ours[lo - shift:hi - shift]
                                                  - theirs[lo:hi]).max(axis=1) <= 1.0
        assert near.mean() >= 0.99, (i, near.mean())
        # detections: every torchvision detection clear of the last kept score (ties at the
        # cut of 100 may go either way) is a kft detection with the same label, box within
        # 1 px, score within 1e-3; and the counts agree
        d = int(f["num_detections"][i])
        k = int(det["num_detections"][i])
        assert abs(k - d) <= 1, (k, d)
        cut = f["scores"][i, d - 1] + 1e-3 if d == model.max_detections else -1.0
        theirs = [j for j in range(d) if f["scores"][i, j] > cut]
        assert theirs
        iou = box_iou(f["boxes"][i, theirs], det["boxes"][i, :k])
        for row, j in enumerate(theirs):
            same = np.where(det["labels"][i, :k] == f["labels"][i, j] - 1, iou[row], -1.0)
            m = int(np.argmax(same))
            assert np.abs(det["boxes"][i, m] - f["boxes"][i, j]).max() <= 1.0, (i, j)
            assert abs(det["scores"][i, m] - f["scores"][i, j]) <= 1e-3, (i, j)
    return det


def test_reading_checkpoints(tmp_path):
    _, state_dict = fixture_state_dict("fasterrcnn_resnet50_fpn")
    npz = tmp_path / "sd.npz"
    np.savez(npz, **state_dict)
    back = read_state_dict(npz)
    assert set(back) == set(state_dict) and num_classes_of(back) == 3
    with pytest.raises(ConvertError, match="no such checkpoint"):
        read_state_dict(tmp_path / "missing.pth")
    pth = tmp_path / "model.pth"
    pth.write_bytes(b"not a checkpoint")
    try:
        import torch  # noqa: F401
    except ModuleNotFoundError:
        with pytest.raises(ConvertError, match="needs torch.*pip install torch"):
            read_state_dict(pth)
    else:
        with pytest.raises(ConvertError, match="not a readable PyTorch checkpoint"):
            read_state_dict(pth)
    with pytest.raises(ConvertError, match="not a torchvision Faster R-CNN"):
        detect_arch({"fc.weight": np.zeros((2, 2))})


def test_kft_convert_command_writes_a_model_and_its_report(tmp_path):
    from click.testing import CliRunner

    from kft.cli import main
    from kft.saving import load_model

    _, state_dict = fixture_state_dict("fasterrcnn_mobilenet_v3_large_fpn")
    npz = tmp_path / "coco.npz"
    np.savez(npz, **state_dict)
    out = tmp_path / "converted" / "model.keras"
    result = CliRunner().invoke(main, ["convert", "torchvision", str(npz), "--image-size", "128",
                                       "--num-classes", "2", "--class-names", '["cat", "dog"]',
                                       "-o", str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads(Path(f"{out}.convert.json").read_text())
    assert record["arch"] == "fasterrcnn_mobilenet_v3_large_fpn"
    assert record["source_num_classes"] == 3 and record["num_classes"] == 2
    # another class count: only the predictor's layers are left new
    assert {m["path"].split("/")[0] for m in record["shape_mismatch"]} == {"box_predictor"}
    assert json.loads((out.parent / "class_names.json").read_text()) == ["cat", "dog"]
    model = load_model(out)
    assert model.num_classes == 2 and model.image_size == (128, 128)
    bad = CliRunner().invoke(main, ["convert", "torchvision", str(npz), "--image-size", "100",
                                    "-o", str(out)])
    assert bad.exit_code == 2 and "multiple of 32" in bad.output


def test_kft_predict_on_a_converted_checkpoint_gives_torchvisions_detections(tmp_path):
    """The acceptance check: convert, save, ``kft predict model.keras photo.png`` on a photo at
    the model's square input size (neither side resizes or pads)."""
    from click.testing import CliRunner
    from PIL import Image

    from kft.cli import main

    f, state_dict = fixture_state_dict("fasterrcnn_resnet50_fpn")
    npz = tmp_path / "frcnn.npz"
    np.savez(npz, **state_dict)
    size = f["images"].shape[1]
    model_path = tmp_path / "model.keras"
    runner = CliRunner()
    done = runner.invoke(main, ["convert", "torchvision", str(npz), "--image-size", str(size),
                                "--class-names", '["a", "b", "c"]', "-o", str(model_path)])
    assert done.exit_code == 0, done.output
    photo = tmp_path / "photo.png"
    Image.fromarray(f["images"][0]).save(photo)
    out = runner.invoke(main, ["predict", str(model_path), str(photo), "--threshold", "0.5"])
    assert out.exit_code == 0, out.output
    found = json.loads(out.output[out.output.index("["):])[0]["detections"]
    keep = f["scores"][0] >= 0.5
    theirs = f["boxes"][0][keep]
    assert len(found) == int(keep.sum()) > 0
    for det in found:
        j = int(np.argmax(box_iou(np.array([det["box"]], "float32"), theirs)[0]))
        assert np.abs(np.array(det["box"]) - theirs[j]).max() <= 1.0
        assert abs(det["score"] - f["scores"][0][keep][j]) <= 1e-3
        assert det["class"] == "abc"[f["labels"][0][keep][j] - 1]


def test_detect_arch_tells_resnext101_from_resnet50_and_refuses_other_depths():
    def body(blocks, conv2_shape):
        keys = {"roi_heads.box_predictor.cls_score.weight": np.zeros((4, 1)),
                "backbone.body.layer1.0.conv2.weight": np.zeros(conv2_shape, "float32")}
        keys.update({f"backbone.body.layer3.{b}.conv1.weight": np.zeros(1) for b in
                     range(blocks)})
        return keys

    assert detect_arch(body(6, (64, 64, 3, 3))) == "fasterrcnn_resnet50_fpn"
    assert detect_arch(body(23, (256, 8, 3, 3))) == "fasterrcnn_resnext101_32x8d_fpn"
    with pytest.raises(ConvertError, match=r"23 blocks in layer3 and 1 groups.*ResNet-50"):
        detect_arch(body(23, (64, 64, 3, 3)))                  # a ResNet-101 FPN
