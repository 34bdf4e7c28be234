import keras
import numpy as np
import pytest

from kft.models.heads.ssd import SSDHead


@pytest.mark.parametrize("kind", ["conv", "depthwise"])
def test_shapes_order_and_prior(kind):
    head = SSDHead(num_classes=3, boxes_per_location=[4, 6], kind=kind, prior_probability=0.01)
    feats = [np.random.default_rng(0).normal(size=(2, 4, 4, 8)).astype("float32"),
             np.zeros((2, 2, 2, 16), "float32")]
    cls, box = head(feats)
    assert tuple(cls.shape) == (2, 4 * 4 * 4 + 2 * 2 * 6, 4)
    assert tuple(box.shape) == (2, 4 * 4 * 4 + 2 * 2 * 6, 4)
    # Zero features on the second level: the logits are the bias alone — background 0,
    # foreground log(0.01 / 0.99), for every default box.
    tail = keras.ops.convert_to_numpy(cls)[:, 64:]
    if kind == "conv":
        np.testing.assert_allclose(tail[..., 0], 0.0, atol=1e-6)
        np.testing.assert_allclose(tail[..., 1:], np.log(0.01 / 0.99), atol=1e-5)
    assert head.compute_output_shape([(None, 4, 4, 8), (None, 2, 2, 16)])[0] == (None, 88, 4)


def test_config_round_trip_and_level_check():
    head = SSDHead(num_classes=2, boxes_per_location=[4], kind="depthwise")
    clone = SSDHead.from_config(head.get_config())
    assert clone.boxes_per_location == [4] and clone.kind == "depthwise"
    with pytest.raises(ValueError, match="feature levels"):
        SSDHead(num_classes=2, boxes_per_location=[4, 4])([np.zeros((1, 2, 2, 3), "float32")])
    with pytest.raises(ValueError, match="kind"):
        SSDHead(num_classes=2, boxes_per_location=[4], kind="dense")
