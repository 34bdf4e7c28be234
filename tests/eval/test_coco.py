"""COCOEvaluator against pycocotools run directly on hand-built COCO JSON files."""

import contextlib
import copy
import io
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from kft.eval.coco import (
    STAT_NAMES,
    COCOEvaluator,
    coco_metrics_from_arrays,
    evaluate_coco_json,
)

# ----------------------------------------------------------------------------- reference side


def _ann(ann_id, image_id, cat, xywh, crowd=0):
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": cat,
        "bbox": [float(v) for v in xywh],
        "area": float(xywh[2] * xywh[3]),
        "iscrowd": crowd,
    }


def _det(image_id, cat, xywh, score):
    return {
        "image_id": image_id,
        "category_id": cat,
        "bbox": [float(v) for v in xywh],
        "score": score,
    }


# Images 1, 2, 7 have objects, 3 is a background image. Category ids are non-contiguous.
# Areas: small < 32^2 = 1024 <= medium < 96^2 = 9216 <= large.
MIXED_CATEGORIES = [(1, "person"), (3, "car"), (90, "toothbrush")]
MIXED_GT = {
    "images": [
        {"id": 1, "height": 480, "width": 640},
        {"id": 2, "height": 200, "width": 300},
        {"id": 3, "height": 100, "width": 100},
        {"id": 7, "height": 400, "width": 500},
    ],
    "annotations": [
        _ann(1, 1, 1, [10, 20, 200, 150]),  # large
        _ann(2, 1, 1, [300, 300, 20, 15]),  # small
        _ann(3, 1, 3, [400, 100, 50, 40]),  # medium
        _ann(4, 1, 1, [0, 300, 250, 150], crowd=1),  # crowd region
        _ann(5, 2, 3, [50, 50, 60, 60]),  # medium
        _ann(6, 2, 3, [120, 40, 10, 10]),  # small
        _ann(7, 2, 90, [200, 100, 90, 90]),  # medium
        _ann(8, 7, 1, [100, 100, 150, 120]),  # large
        _ann(9, 7, 90, [20, 20, 30, 25]),  # small
    ],
    "categories": [{"id": c, "name": n} for c, n in MIXED_CATEGORIES],
}
MIXED_DETS = [
    _det(1, 1, [12, 22, 196, 146], 0.95),  # TP, IoU ~0.94
    _det(1, 1, [10, 20, 200, 150], 0.60),  # duplicate -> FP
    _det(1, 1, [302, 301, 18, 15], 0.70),  # small TP, IoU ~0.8
    _det(1, 3, [405, 104, 50, 40], 0.80),  # medium TP, IoU ~0.7
    _det(1, 1, [10, 310, 40, 40], 0.50),  # inside the crowd region -> ignored
    _det(1, 3, [0, 0, 30, 30], 0.30),  # FP
    _det(1, 90, [400, 100, 50, 40], 0.40),  # wrong class -> FP
    _det(2, 3, [55, 45, 60, 60], 0.90),
    _det(2, 3, [118, 42, 12, 9], 0.65),
    _det(2, 90, [190, 110, 90, 80], 0.85),
    _det(2, 1, [50, 50, 60, 60], 0.20),  # wrong class -> FP
    _det(3, 1, [10, 10, 50, 50], 0.99),  # background image -> FP
    _det(3, 3, [0, 0, 20, 20], 0.45),  # background image, small FP
    _det(7, 1, [100, 100, 150, 120], 0.50),
    _det(7, 90, [25, 22, 30, 25], 0.55),
    _det(7, 1, [0, 0, 500, 400], 0.10),  # large FP
]


def _random_case(seed, cat_ids=(5, 17, 90), num_images=6):
    """Integer boxes of all sizes, jittered detections, false positives and some crowds."""
    rng = np.random.default_rng(seed)
    images, anns, dets = [], [], []
    for image_id in range(1, num_images + 1):
        h, w = int(rng.integers(200, 400)), int(rng.integers(200, 400))
        images.append({"id": image_id * 10, "height": h, "width": w})
        for _ in range(int(rng.integers(0, 6))):
            side = int(rng.choice([12, 40, 120]))
            bw, bh = int(rng.integers(side // 2, side + 1)), int(rng.integers(side // 2, side + 1))
            x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            cat = int(rng.choice(cat_ids))
            crowd = int(rng.random() < 0.1)
            anns.append(_ann(len(anns) + 1, image_id * 10, cat, [x, y, bw, bh], crowd))
            if rng.random() < 0.8:
                dx, dy = rng.integers(-side // 6, side // 6 + 1, size=2)
                score = round(float(rng.random()), 3)
                dets.append(_det(image_id * 10, cat, [x + dx, y + dy, bw, bh], score))
        for _ in range(int(rng.integers(0, 3))):
            bw, bh = int(rng.integers(5, 80)), int(rng.integers(5, 80))
            x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            cat = int(rng.choice(cat_ids))
            dets.append(_det(image_id * 10, cat, [x, y, bw, bh], round(float(rng.random()), 3)))
    categories = [{"id": c, "name": f"class_{c}"} for c in cat_ids]
    return {"images": images, "annotations": anns, "categories": categories}, dets


def _reference_eval(tmp_path, dataset, dets, iou_type="bbox", cat_ids=None):
    """pycocotools straight from a JSON file -> the COCOeval object after summarize()."""
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(dataset))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(path))
        coco_dt = coco_gt.loadRes(copy.deepcopy(dets))
        coco_eval = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        if cat_ids is not None:
            coco_eval.params.catIds = cat_ids
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval


# ----------------------------------------------------------------------------- our side


def _to_examples(dataset, cat_ids, with_masks=False):
    """COCO dict -> kft GT examples (xywh -> xyxy, category id -> label index)."""
    coco = COCO()
    coco.dataset = copy.deepcopy(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    examples = []
    for image in dataset["images"]:
        anns = coco.imgToAnns[image["id"]]
        xywh = np.array([a["bbox"] for a in anns], np.float32).reshape(-1, 4)
        example = {
            "image_id": image["id"],
            "height": image["height"],
            "width": image["width"],
            "boxes": np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1),
            "labels": np.array([cat_ids.index(a["category_id"]) for a in anns], np.int32),
            "iscrowd": np.array([bool(a["iscrowd"]) for a in anns], bool),
        }
        if with_masks:
            masks = [coco.annToMask(a) for a in anns]
            example["masks"] = np.array(masks, np.uint8).reshape(
                -1, image["height"], image["width"]
            )
        examples.append(example)
    return examples


def _to_predictions(dets, image_ids, cat_ids, masks=None):
    """COCO result list -> one kft prediction dict per image (every image, maybe empty)."""
    predictions = []
    for image_id in image_ids:
        index = [i for i, d in enumerate(dets) if d["image_id"] == image_id]
        xywh = np.array([dets[i]["bbox"] for i in index], np.float32).reshape(-1, 4)
        prediction = {
            "image_id": image_id,
            "boxes": np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1),
            "scores": np.array([dets[i]["score"] for i in index], np.float32),
            "labels": np.array([cat_ids.index(dets[i]["category_id"]) for i in index], np.int32),
        }
        if masks is not None:
            prediction["masks"] = masks[image_id]
        predictions.append(prediction)
    return predictions


def _assert_stats_equal(ours, reference_stats, prefix="bbox"):
    for name, ref in zip(STAT_NAMES, reference_stats, strict=True):
        value = ours[f"{prefix}_{name}"]
        if ref == -1:
            assert value is None, (name, value)
        else:
            assert value == pytest.approx(float(ref), abs=1e-9), (name, value, ref)


def _dets_float32(dets):
    """The detections as our pipeline sees them: scores rounded to float32."""
    return [dict(d, score=float(np.float32(d["score"]))) for d in dets]


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize(
    "case",
    ["mixed", "random0", "random1", "random2"],
)
def test_bbox_matches_pycocotools(tmp_path, case):
    if case == "mixed":
        dataset, dets = MIXED_GT, MIXED_DETS
    else:
        dataset, dets = _random_case(int(case[-1]))
    cat_ids = [c["id"] for c in dataset["categories"]]
    names = [c["name"] for c in dataset["categories"]]
    dets = _dets_float32(dets)
    reference = _reference_eval(tmp_path, dataset, dets)
    image_ids = [im["id"] for im in dataset["images"]]
    ours = coco_metrics_from_arrays(
        _to_examples(dataset, cat_ids),
        _to_predictions(dets, image_ids, cat_ids),
        names,
        label_to_category=cat_ids,
    )
    _assert_stats_equal(ours, reference.stats)
    json.dumps(ours, allow_nan=False)


def test_mixed_case_exercises_every_area_range(tmp_path):
    reference = _reference_eval(tmp_path, MIXED_GT, _dets_float32(MIXED_DETS))
    assert np.all(reference.stats > 0) and np.all(reference.stats[:6] < 1)


def test_per_class_ap_matches_single_category_runs(tmp_path):
    """Labels in a non-monotonic order: label 0 -> id 90, 1 -> 1, 2 -> 3."""
    dets = _dets_float32(MIXED_DETS)
    order = [90, 1, 3]
    names = {1: "person", 3: "car", 90: "toothbrush"}
    evaluator = COCOEvaluator([names[c] for c in order], label_to_category=dict(enumerate(order)))
    for example in _to_examples(MIXED_GT, order):
        evaluator.add_ground_truth(example)
    for prediction in _to_predictions(dets, [1, 2, 3, 7], order):
        evaluator.add_predictions(prediction)
    ours = evaluator.evaluate()
    _assert_stats_equal(ours, _reference_eval(tmp_path, MIXED_GT, dets).stats)
    for cat_id in order:
        single = _reference_eval(tmp_path, MIXED_GT, dets, cat_ids=[cat_id])
        assert ours["bbox_per_class_AP"][names[cat_id]] == pytest.approx(single.stats[0], abs=1e-9)
        assert ours["bbox_per_class_AP50"][names[cat_id]] == pytest.approx(
            single.stats[1], abs=1e-9
        )
    per_class = list(ours["bbox_per_class_AP"].values())
    assert np.mean(per_class) == pytest.approx(ours["bbox_AP"], abs=1e-12)
    lines = evaluator.summary_lines()
    assert any("Average Precision" in line for line in lines)
    assert any(line.strip().startswith("toothbrush") for line in lines)


def test_evaluate_coco_json_matches_pycocotools(tmp_path):
    dets = _dets_float32(MIXED_DETS)
    reference = _reference_eval(tmp_path, MIXED_GT, dets)
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(MIXED_GT))
    cat_ids = [1, 3, 90]
    ours = evaluate_coco_json(path, _to_predictions(dets, [1, 2, 3, 7], cat_ids), cat_ids)
    _assert_stats_equal(ours, reference.stats)
    assert set(ours["bbox_per_class_AP"]) == {"person", "car", "toothbrush"}
    with pytest.raises(ValueError, match="12345"):
        evaluate_coco_json(path, [{"image_id": 12345, **_empty_prediction()}], cat_ids)


def _segm_case():
    """Three images (one background), rectangle/ellipse masks of all sizes, one crowd."""
    yy, xx = np.mgrid[0:300, 0:300]
    # Ellipse: mask area ~8480 is "medium" but its box (121 x 91) is "large": GT area must be
    # the mask area, as in COCO files.
    ellipse = (((xx - 150) / 60.0) ** 2 + ((yy - 150) / 45.0) ** 2 <= 1).astype(np.uint8)
    big = np.zeros((300, 300), np.uint8)
    big[20:130, 30:200] = 1  # large, 18700 px
    small = np.zeros((300, 300), np.uint8)
    small[250:270, 250:275] = 1  # small, 500 px
    m1 = np.zeros((120, 160), np.uint8)
    m1[10:70, 20:100] = 1  # medium, 4800 px
    crowd = np.zeros((120, 160), np.uint8)
    crowd[80:115, 0:150] = 1
    gt_masks = {1: ([m1, crowd], [1, 1], [0, 1]), 2: ([ellipse, big, small], [2, 1, 2], [0, 0, 0])}
    images = [
        {"id": 1, "height": 120, "width": 160},
        {"id": 2, "height": 300, "width": 300},
        {"id": 3, "height": 50, "width": 50},
    ]
    anns = []
    for image_id, (masks, cats, crowds) in gt_masks.items():
        for mask, cat, is_crowd in zip(masks, cats, crowds, strict=True):
            rle = mask_utils.encode(np.asfortranarray(mask))
            rle["counts"] = rle["counts"].decode("ascii")
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": cat,
                    "segmentation": rle,
                    "area": float(mask.sum()),
                    "bbox": mask_utils.toBbox(rle).tolist(),
                    "iscrowd": is_crowd,
                }
            )
    dataset = {"images": images, "annotations": anns, "categories": [
        {"id": 1, "name": "box"}, {"id": 2, "name": "blob"}]}  # fmt: skip

    # Probability masks: a shifted core at 0.8 and a halo at 0.3 (below the threshold).
    def prob(mask, dy, dx):
        core = np.roll(mask, (dy, dx), axis=(0, 1)).astype(np.float32) * 0.8
        halo = np.roll(mask, (dy + 3, dx + 3), axis=(0, 1)).astype(np.float32) * 0.3
        return np.maximum(core, halo)

    pred = {
        1: [(prob(m1, 3, 4), 1, 0.9), (prob(crowd, 0, 5) * (xx[:120, :160] < 40), 1, 0.7),
            (prob(m1, 40, 60), 2, 0.6)],
        2: [(prob(ellipse, 5, -4), 2, 0.8), (prob(big, 0, 0), 1, 0.95), (prob(big, 2, 2), 1, 0.5),
            (prob(small, 4, 2), 2, 0.4)],
        3: [(np.full((50, 50), 0.9, np.float32), 1, 0.3)],
    }  # fmt: skip
    return dataset, pred


def test_segm_and_bbox_with_masks_match_pycocotools(tmp_path):
    dataset, pred = _segm_case()
    cat_ids = [1, 2]
    segm_dets, bbox_dets, pred_masks = [], [], {}
    for image_id, items in pred.items():
        pred_masks[image_id] = np.array([p for p, _, _ in items])
        for probability, cat, score in items:
            rle = mask_utils.encode(np.asfortranarray((probability >= 0.5).astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            segm_dets.append({"image_id": image_id, "category_id": cat, "segmentation": rle,
                              "score": score})  # fmt: skip
            bbox_dets.append(_det(image_id, cat, mask_utils.toBbox(rle).tolist(), score))
    segm_dets, bbox_dets = _dets_float32(segm_dets), _dets_float32(bbox_dets)
    ours = coco_metrics_from_arrays(
        _to_examples(dataset, cat_ids, with_masks=True),
        _to_predictions(bbox_dets, [1, 2, 3], cat_ids, masks=pred_masks),
        ["box", "blob"],
        iou_types=("bbox", "segm"),
        label_to_category={0: 1, 1: 2},
    )
    segm_ref = _reference_eval(tmp_path, dataset, segm_dets, "segm")
    bbox_ref = _reference_eval(tmp_path, dataset, bbox_dets, "bbox")
    assert 0 < segm_ref.stats[0] < 1 and 0 < bbox_ref.stats[0] < 1
    _assert_stats_equal(ours, segm_ref.stats, "segm")
    _assert_stats_equal(ours, bbox_ref.stats, "bbox")
    json.dumps(ours, allow_nan=False)


def _perfect_examples():
    rng = np.random.default_rng(3)
    examples = []
    for image_id in range(4):
        boxes, masks = [], []
        for _ in range(3):
            w, h = rng.integers(5, 60, size=2)
            x, y = rng.integers(0, 60, size=2)
            boxes.append([x, y, x + w, y + h])
            mask = np.zeros((128, 128), np.uint8)
            mask[y : y + h, x : x + w] = 1
            masks.append(mask)
        examples.append(
            {
                "image_id": f"img_{image_id}",
                "height": 128,
                "width": 128,
                "boxes": np.array(boxes, np.float32),
                "labels": rng.integers(0, 2, size=3).astype(np.int32),
                "masks": np.array(masks),
            }
        )
    return examples


def test_perfect_predictions_score_one():
    examples = _perfect_examples()
    predictions = [
        {
            "image_id": e["image_id"],
            "boxes": e["boxes"],
            "labels": e["labels"],
            "scores": np.linspace(0.9, 0.5, len(e["labels"])).astype(np.float32),
            "masks": e["masks"].astype(np.float32) * 0.9,  # probabilities
        }
        for e in examples
    ]
    metrics = coco_metrics_from_arrays(examples, predictions, ["a", "b"], ("bbox", "segm"))
    for key in ("bbox_AP", "bbox_AP50", "bbox_AP75", "segm_AP", "segm_AP50", "segm_AP75"):
        assert metrics[key] == pytest.approx(1.0, abs=1e-9), key


def _empty_prediction():
    return {"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0), "labels": np.zeros(0)}


def test_no_predictions_gives_zero_and_null_for_classes_without_gt():
    examples = _perfect_examples()
    evaluator = COCOEvaluator(["a", "b", "never_seen"])
    for example in examples:
        evaluator.add_ground_truth(example)
    metrics = evaluator.evaluate()
    assert metrics["bbox_AP"] == 0.0 and metrics["bbox_AR100"] == 0.0
    assert metrics["bbox_per_class_AP"]["a"] == 0.0
    assert metrics["bbox_per_class_AP"]["never_seen"] is None
    json.dumps(metrics, allow_nan=False)
    evaluator.add_predictions({"image_id": "img_0", **_empty_prediction()})
    assert evaluator.evaluate()["bbox_AP"] == 0.0


def test_background_only_ground_truth_gives_undefined_metrics():
    evaluator = COCOEvaluator(["a"])
    evaluator.add_ground_truth(
        {"image_id": 1, "height": 10, "width": 10, "boxes": np.zeros((0, 4)), "labels": []}
    )
    evaluator.add_predictions(
        {"image_id": 1, "boxes": [[0, 0, 5, 5]], "scores": [0.9], "labels": [0]}
    )
    metrics = evaluator.evaluate()
    assert metrics["bbox_AP"] is None and metrics["bbox_per_class_AP"] == {"a": None}


def test_string_image_ids_give_the_same_numbers(tmp_path):
    dets = _dets_float32(MIXED_DETS)
    cat_ids = [1, 3, 90]
    examples = _to_examples(MIXED_GT, cat_ids)
    predictions = _to_predictions(dets, [1, 2, 3, 7], cat_ids)
    # GT ids as bytes and prediction ids as 0-d arrays (as tf.data gives them): both -> str.
    for record in examples:
        record["image_id"] = f"COCO_{record['image_id']:06d}.jpg".encode()
    for record in predictions:
        record["image_id"] = np.array(f"COCO_{record['image_id']:06d}.jpg")
    ours = coco_metrics_from_arrays(
        examples, predictions, ["p", "c", "t"], label_to_category=cat_ids
    )
    _assert_stats_equal(ours, _reference_eval(tmp_path, MIXED_GT, dets).stats)


def test_clear_errors():
    example = _perfect_examples()[0]
    evaluator = COCOEvaluator(["a", "b"], iou_types=("bbox", "segm"))
    evaluator.add_ground_truth(example)
    with pytest.raises(ValueError, match="already added"):
        evaluator.add_ground_truth(example)
    evaluator.add_predictions(
        {"image_id": "missing_one", **_empty_prediction(), "masks": np.zeros((0, 128, 128))}
    )
    with pytest.raises(ValueError, match="missing_one"):
        evaluator.evaluate()
    with pytest.raises(ValueError, match="masks"):
        COCOEvaluator(["a", "b"], ("segm",)).add_ground_truth({**example, "masks": None})
    with pytest.raises(ValueError, match="outside"):
        COCOEvaluator(["a"]).add_ground_truth({**example, "labels": [0, 1, 1]})
    with pytest.raises(ValueError, match="iou_types"):
        COCOEvaluator(["a"], iou_types=("keypoints",))
    with pytest.raises(RuntimeError, match="evaluate"):
        COCOEvaluator(["a"]).summary_lines()
    wrong_size = {**example, "image_id": "w", "masks": np.zeros((3, 64, 64), np.uint8)}
    with pytest.raises(ValueError, match="masks are"):
        COCOEvaluator(["a", "b"], ("segm",)).add_ground_truth(wrong_size)
