import math

import numpy as np
import pytest
from keras import ops

from kft.ops import box_coder as C


def _np(x):
    return ops.convert_to_numpy(x)


def _random_boxes(rng, shape):
    xy = rng.uniform(0, 200, shape + (2,))
    wh = rng.uniform(1, 120, shape + (2,))
    return np.concatenate([xy, xy + wh], axis=-1).astype("float32")


@pytest.mark.parametrize("variances", [C.SSD_VARIANCES, C.RPN_VARIANCES])
def test_round_trip_broadcast(variances):
    rng = np.random.default_rng(0)
    anchors = _random_boxes(rng, (7,))
    boxes = _random_boxes(rng, (3, 7))
    deltas = C.encode(boxes, anchors, variances)
    assert tuple(deltas.shape) == (3, 7, 4)
    np.testing.assert_allclose(_np(C.decode(deltas, anchors, variances)), boxes,
                               rtol=1e-5, atol=1e-3)


def test_hand_computed_encoding():
    anchor = np.array([[0.0, 0.0, 10.0, 20.0]], "float32")    # cx 5, cy 10, w 10, h 20
    box = np.array([[2.0, 4.0, 22.0, 24.0]], "float32")       # cx 12, cy 14, w 20, h 20
    expected = [7 / 10 / 0.1, 4 / 20 / 0.1, math.log(2.0) / 0.2, 0.0]
    np.testing.assert_allclose(_np(C.encode(box, anchor))[0], expected, rtol=1e-6, atol=1e-6)
    weights = C.variances_from_weights((10, 10, 5, 5))
    np.testing.assert_allclose(weights, C.SSD_VARIANCES)
    np.testing.assert_allclose(_np(C.encode(box, anchor, weights)), _np(C.encode(box, anchor)))


def test_extreme_deltas_are_clamped():
    anchor = np.array([[0.0, 0.0, 16.0, 16.0]], "float32")
    deltas = np.array([[0.0, 0.0, 100.0, -100.0], [1e3, -1e3, 1e4, 1e4]], "float32")
    boxes = _np(C.decode(deltas, anchor))
    assert np.isfinite(boxes).all()
    np.testing.assert_allclose(boxes[0, 2] - boxes[0, 0], 1000.0, rtol=1e-4)   # 16 * e^clip
    assert boxes[0, 3] - boxes[0, 1] < 1e-6
    np.testing.assert_allclose(boxes[1, 3] - boxes[1, 1], 1000.0, rtol=1e-4)


def test_degenerate_boxes_encode_finite_and_bad_variances_fail():
    anchors = np.array([[0.0, 0.0, 10.0, 10.0]], "float32")
    assert np.isfinite(_np(C.encode(np.zeros((2, 4), "float32"), anchors))).all()
    with pytest.raises(ValueError):
        C.encode(anchors, anchors, (0.1, 0.1, 0.2))
    with pytest.raises(ValueError):
        C.variances_from_weights((10, 10, 0, 5))
