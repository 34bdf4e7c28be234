import numpy as np
import pytest
from keras import ops

from kft.ops import boxes as B


def _np(x):
    return ops.convert_to_numpy(x)


def test_format_round_trips():
    xyxy = np.array([[10.0, 20.0, 50.0, 80.0], [0.0, 0.0, 1.0, 1.0]], "float32")
    np.testing.assert_allclose(_np(B.xyxy_to_xywh(xyxy)), [[10, 20, 40, 60], [0, 0, 1, 1]])
    np.testing.assert_allclose(_np(B.xywh_to_xyxy(B.xyxy_to_xywh(xyxy))), xyxy)
    np.testing.assert_allclose(_np(B.xyxy_to_cxcywh(xyxy))[0], [30, 50, 40, 60])
    np.testing.assert_allclose(_np(B.cxcywh_to_xyxy(B.xyxy_to_cxcywh(xyxy))), xyxy)


def test_hand_computed_iou():
    a = np.array([[0.0, 0.0, 10.0, 10.0]], "float32")
    b = np.array([[5.0, 5.0, 15.0, 15.0], [0.0, 0.0, 10.0, 10.0], [20, 20, 30, 30],
                  [0.0, 0.0, 10.0, 5.0]], "float32")
    # overlap 5x5=25, union 100+100-25=175; identical; disjoint; half contained.
    np.testing.assert_allclose(_np(B.pairwise_iou(a, b)), [[25 / 175, 1.0, 0.0, 0.5]], rtol=1e-6)


def test_iou_batched_and_empty():
    a = np.zeros((2, 3, 4), "float32")
    b = np.zeros((2, 0, 4), "float32")
    assert _np(B.pairwise_iou(a, b)).shape == (2, 3, 0)
    degenerate = np.array([[3.0, 3.0, 3.0, 3.0]], "float32")
    assert _np(B.pairwise_iou(degenerate, degenerate))[0, 0] == 0.0


def test_clip_area_valid():
    boxes = np.array([[-5.0, 2.0, 30.0, 50.0], [8.0, 8.0, 8.0, 20.0]], "float32")
    clipped = _np(B.clip_boxes(boxes, 40, 20))
    np.testing.assert_allclose(clipped, [[0, 2, 20, 40], [8, 8, 8, 20]])
    np.testing.assert_allclose(_np(B.box_area(clipped)), [20 * 38, 0])
    assert _np(B.valid_boxes(clipped)).tolist() == [True, False]


@pytest.mark.parametrize("n", [0, 1, 7])
def test_area_shapes(n):
    assert _np(B.box_area(np.zeros((n, 4), "float32"))).shape == (n,)
