import tempfile

import keras
import numpy as np
import pytest
from keras import ops

from kft.ops import nms

IMPLEMENTATIONS = {
    "auto": lambda b, s, **kw: nms.batched_nms(b, s, **kw),
    "ops": lambda b, s, **kw: nms._ops_batched_nms(b, s, *_args(**kw)),
}


def _args(iou_threshold=0.45, score_threshold=0.01, max_per_class=100, max_detections=100):
    return iou_threshold, score_threshold, max_per_class, max_detections


def _np(result):
    return {key: ops.convert_to_numpy(value) for key, value in result.items()}


def _random_inputs(seed, batch=2, num_boxes=40, num_classes=3, class_specific=False):
    rng = np.random.default_rng(seed)
    shape = (batch, num_boxes, num_classes) if class_specific else (batch, num_boxes)
    xy = rng.uniform(0, 60, shape + (2,))
    wh = rng.uniform(4, 40, shape + (2,))
    boxes = np.concatenate([xy, xy + wh], axis=-1).astype("float32")
    return boxes, rng.uniform(0, 1, (batch, num_boxes, num_classes)).astype("float32")


BOXES = np.array([[[0, 0, 10, 10], [1, 0, 11, 10], [30, 30, 40, 40]]], "float32")


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_same_class_overlap_suppressed_other_class_kept(impl):
    scores = np.array([[[0.9, 0.0], [0.8, 0.7], [0.005, 0.0]]], "float32")
    out = _np(IMPLEMENTATIONS[impl](BOXES, scores, max_detections=4))
    # Box 1 loses class 0 to box 0 (IoU 0.82) but keeps class 1; box 2 is under the threshold.
    assert out["num_detections"].tolist() == [2]
    assert out["labels"].tolist() == [[0, 1, -1, -1]]
    np.testing.assert_allclose(out["scores"], [[0.9, 0.7, 0, 0]], rtol=1e-6)
    np.testing.assert_allclose(out["boxes"][0], [BOXES[0, 0], BOXES[0, 1], [0] * 4, [0] * 4])


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_thresholds_and_caps(impl):
    scores = np.array([[[0.9], [0.8], [0.7]]], "float32")
    run = IMPLEMENTATIONS[impl]
    out = _np(run(BOXES, scores, iou_threshold=0.9, max_detections=5))
    assert out["num_detections"].tolist() == [3]           # IoU 0.82 is not above 0.9
    out = _np(run(BOXES, scores, max_per_class=1, max_detections=5))
    assert out["num_detections"].tolist() == [1] and out["labels"][0, 0] == 0
    out = _np(run(BOXES, scores, score_threshold=0.85, max_detections=2))
    assert out["num_detections"].tolist() == [1]
    out = _np(run(BOXES, np.zeros_like(scores), max_detections=2))
    assert out["num_detections"].tolist() == [0] and out["labels"].tolist() == [[-1, -1]]


@pytest.mark.parametrize("class_specific", [False, True])
@pytest.mark.parametrize("max_per_class,max_detections", [(100, 25), (3, 10), (200, 130)])
def test_tensorflow_path_matches_keras_ops(class_specific, max_per_class, max_detections):
    boxes, scores = _random_inputs(1, class_specific=class_specific)
    kwargs = dict(iou_threshold=0.5, score_threshold=0.2, max_per_class=max_per_class,
                  max_detections=max_detections)
    fast = _np(nms.batched_nms(boxes, scores, **kwargs))
    slow = _np(nms._ops_batched_nms(boxes, scores, *_args(**kwargs)))
    assert fast["boxes"].shape == (2, max_detections, 4)
    assert fast["num_detections"].min() > 0
    for key in fast:
        np.testing.assert_allclose(fast[key], slow[key], rtol=1e-6, err_msg=key)


TF_ONLY = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                             reason="TensorFlow graph / TFLite path")


@TF_ONLY
def test_unknown_batch_size():
    import tensorflow as tf

    boxes, scores = _random_inputs(2, batch=3)
    run = tf.function(lambda b, s: nms.batched_nms(b, s, max_detections=7), input_signature=[
        tf.TensorSpec((None, 40, 4), tf.float32), tf.TensorSpec((None, 40, 3), tf.float32)])
    outputs = run.get_concrete_function().structured_outputs
    assert outputs["boxes"].shape.as_list() == [None, 7, 4]
    assert outputs["num_detections"].shape.as_list() == [None]
    expected = _np(nms.batched_nms(boxes, scores, max_detections=7))
    for key, value in _np(run(boxes, scores)).items():
        np.testing.assert_allclose(value, expected[key], err_msg=key)


class _Detections(keras.layers.Layer):
    def __init__(self, max_per_class, **kwargs):
        super().__init__(**kwargs)
        self.max_per_class = max_per_class

    def call(self, boxes, scores):
        return nms.batched_nms(boxes, scores, iou_threshold=0.5, score_threshold=0.2,
                               max_per_class=self.max_per_class, max_detections=10)


@TF_ONLY
@pytest.mark.parametrize("max_per_class", [10, 3])
def test_tflite_round_trip(max_per_class):
    import tensorflow as tf

    from kft.export.core import interpreter_class

    boxes, scores = _random_inputs(3, batch=1, num_boxes=30)
    box_input, score_input = keras.Input((30, 4), batch_size=1), keras.Input((30, 3), batch_size=1)
    model = keras.Model([box_input, score_input],
                        _Detections(max_per_class)(box_input, score_input))
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", lambda b, s: model([b, s]), input_signature=[
        tf.TensorSpec((1, 30, 4), tf.float32, name="boxes"),
        tf.TensorSpec((1, 30, 3), tf.float32, name="scores")])
    with tempfile.TemporaryDirectory() as directory:
        archive.write_out(directory, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(directory)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        flatbuffer = converter.convert()
    interpreter = interpreter_class()(model_content=flatbuffer)
    op_names = {op["op_name"] for op in interpreter._get_ops_details()}
    assert "NON_MAX_SUPPRESSION_V5" in op_names
    runner = interpreter.get_signature_runner(next(iter(interpreter.get_signature_list())))
    got = runner(boxes=boxes, scores=scores)
    expected = _np(model([boxes, scores]))
    assert expected["num_detections"][0] > 0
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-6, err_msg=key)
