import keras
import numpy as np
import pytest
from keras import ops

from kft.ops import box_coder, matcher
from kft.ops.matcher import BACKGROUND, IGNORE, match, targets

ANCHORS = np.array([[0, 0, 10, 10], [10, 0, 20, 10], [0, 10, 10, 20], [20, 20, 40, 40]],
                   "float32")


def _match(boxes, labels, **kwargs):
    index, iou = matcher.match(np.asarray(boxes, "float32")[None],
                               np.asarray(labels, "int32")[None], ANCHORS, **kwargs)
    return ops.convert_to_numpy(index)[0], ops.convert_to_numpy(iou)[0]


def test_threshold_and_padding():
    # GT 0 == anchor 0 (IoU 1); GT 1 overlaps anchor 1 with IoU 0.9; the padded row equals
    # anchor 3 but must not match it.
    boxes = [[0, 0, 10, 10], [11, 0, 20, 10], [20, 20, 40, 40]]
    index, iou = _match(boxes, [4, 2, -1])
    assert index.tolist() == [0, 1, -1, -1]
    np.testing.assert_allclose(iou, [1.0, 0.9, 0.0, 0.0], atol=1e-6)
    index, _ = _match(boxes, [4, 2, -1], iou_threshold=0.95)
    assert index.tolist() == [0, 1, -1, -1]      # GT 1 still claims its best anchor
    index, _ = _match(boxes, [4, 2, -1], iou_threshold=0.95, allow_low_quality=False)
    assert index.tolist() == [0, -1, -1, -1]


def test_forced_match_and_ignore_band():
    small = [[0, 0, 4, 4]]          # IoU 0.16 with anchor 0, 0 elsewhere
    index, iou = _match(small, [0])
    assert index.tolist() == [0, -1, -1, -1]
    np.testing.assert_allclose(iou[0], 0.16, rtol=1e-6)
    index, _ = _match(small, [0], allow_low_quality=False)
    assert index.tolist() == [-1, -1, -1, -1]
    index, _ = _match(small, [0], negative_threshold=0.1, allow_low_quality=False)
    assert index.tolist() == [matcher.IGNORE, -1, -1, -1]
    with pytest.raises(ValueError):
        _match(small, [0], negative_threshold=0.6)


def test_competing_claims_go_to_the_higher_iou():
    # Both GTs have anchor 0 as best anchor; GT 1 overlaps it more, GT 0 loses it.
    index, iou = _match([[0, 0, 3, 3], [0, 0, 5, 5]], [0, 1])
    assert index.tolist() == [1, -1, -1, -1]
    np.testing.assert_allclose(iou[0], 0.25, rtol=1e-6)


def test_empty_images():
    index, iou = _match([[0, 0, 10, 10], [1, 1, 5, 5]], [-1, -1])
    assert index.tolist() == [-1] * 4 and iou.tolist() == [0.0] * 4
    empty_index, _ = matcher.match(np.zeros((2, 0, 4), "float32"), np.zeros((2, 0), "int32"),
                                   ANCHORS)
    assert ops.convert_to_numpy(empty_index).tolist() == [[-1] * 4] * 2
    cls, box, positive = matcher.targets(np.zeros((2, 0, 4), "float32"),
                                         np.zeros((2, 0), "int32"), ANCHORS, empty_index)
    assert ops.convert_to_numpy(cls).tolist() == [[0] * 4] * 2
    assert tuple(box.shape) == (2, 4, 4) and not ops.convert_to_numpy(positive).any()


def test_targets():
    boxes = np.array([[[0, 0, 10, 10], [11, 0, 20, 10], [0, 0, 0, 0]]], "float32")
    labels = np.array([[4, 2, -1]], "int32")
    index = np.array([[0, 1, matcher.IGNORE, -1]], "int32")
    cls, box, positive = matcher.targets(boxes, labels, ANCHORS, index)
    assert ops.convert_to_numpy(cls).tolist() == [[5, 3, -1, 0]]
    assert ops.convert_to_numpy(positive).tolist() == [[True, True, False, False]]
    expected = ops.convert_to_numpy(box_coder.encode(boxes[0, :2], ANCHORS[:2]))
    box = ops.convert_to_numpy(box)
    np.testing.assert_allclose(box[0, :2], expected, atol=1e-6)
    assert (box[0, 2:] == 0).all()


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.function shapes")
def test_static_shapes_with_unknown_batch():
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec((None, 3, 4), tf.float32),
                                  tf.TensorSpec((None, 3), tf.int32)])
    def run(boxes, labels):
        index, iou = matcher.match(boxes, labels, ANCHORS)
        cls, box, positive = matcher.targets(boxes, labels, ANCHORS, index)
        return index, iou, cls, box, positive

    shapes = [out.shape.as_list() for out in run.get_concrete_function().structured_outputs]
    assert shapes == [[None, 4], [None, 4], [None, 4], [None, 4, 4], [None, 4]]
    boxes = np.array([[[0, 0, 10, 10], [0, 0, 0, 0], [0, 0, 0, 0]]] * 2, "float32")
    labels = np.array([[1, -1, -1], [-1, -1, -1]], "int32")
    index, _, cls, _, _ = run(boxes, labels)
    assert index.numpy().tolist() == [[0, -1, -1, -1], [-1, -1, -1, -1]]
    assert cls.numpy().tolist() == [[2, 0, 0, 0], [0, 0, 0, 0]]


def test_crowd_boxes_never_match_and_ignore_the_anchors_on_them():
    anchors = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60],
                        [40, 40, 60, 60]], np.float32)
    # row 0 an object; row 1 a crowd region holding anchor 1 whole (IoU 100/900, so without the
    # crowd flag rule 3 would make anchor 1 a positive of class 1); row 2 padding
    gt = np.array([[[0, 0, 10, 10], [15, 15, 45, 45], [0, 0, 0, 0]]], np.float32)
    labels = np.array([[0, 1, -1]], np.int32)
    crowd = np.array([[False, True, False]])
    plain, _ = match(gt, labels, anchors)
    assert plain.numpy().tolist()[0][1] == 1  # today's behaviour without the flag
    index, _ = match(gt, labels, anchors, gt_crowd=crowd)
    # anchor 3 overlaps the crowd box by 25/400 of its area: background, not ignored
    assert index.numpy().tolist() == [[0, IGNORE, BACKGROUND, BACKGROUND]]
    cls_t, _, positive = targets(gt, labels, anchors, index)
    assert cls_t.numpy().tolist() == [[1, -1, 0, 0]]
    assert positive.numpy().tolist() == [[True, False, False, False]]


def test_an_image_of_only_crowd_boxes_has_no_positive():
    anchors = np.array([[0, 0, 10, 10], [0, 0, 40, 40]], np.float32)
    gt = np.array([[[0, 0, 40, 40]]], np.float32)
    index, _ = match(gt, np.array([[2]], np.int32), anchors, gt_crowd=np.array([[True]]))
    assert index.numpy().tolist() == [[IGNORE, IGNORE]]
