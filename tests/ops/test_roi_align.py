import tempfile
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import ops

from kft.ops import roi_align as ra

FIXTURE = np.load(Path(__file__).parents[1] / "fixtures" / "roi_align_torchvision.npz")
NAMES = ("p2", "p3", "p4", "p5")
STRIDES = tuple(int(s) for s in FIXTURE["strides"])
TF_ONLY = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                             reason="TensorFlow graph / TFLite path")
IMPLS = [pytest.param("gather"), pytest.param("crop_and_resize", marks=TF_ONLY)]
SINGLE = sorted({int(k[6:].split("_")[0]) for k in FIXTURE.files if k.startswith("single")})
MULTI = sorted({int(k[5:].split("_")[0]) for k in FIXTURE.files if k.startswith("multi")})


def _single_args(i):
    key = f"single{i}_"
    return FIXTURE[NAMES[int(FIXTURE[key + "level"])]], dict(
        output_size=tuple(int(v) for v in FIXTURE[key + "output_size"]),
        spatial_scale=float(FIXTURE[key + "scale"]),
        sampling_ratio=int(FIXTURE[key + "sampling_ratio"]),
        aligned=bool(FIXTURE[key + "aligned"]))


def _multi_args(i):
    return dict(strides=STRIDES, sampling_ratio=int(FIXTURE[f"multi{i}_sampling_ratio"]),
                output_size=tuple(int(v) for v in FIXTURE[f"multi{i}_output_size"]))


def test_fixture_covers_the_hard_cases():
    boxes = FIXTURE["boxes"]
    height, width = FIXTURE["image_size"]
    assert (boxes == 0).all(axis=-1).any(axis=1).all()                      # padding rows
    assert ((boxes[..., 2] - boxes[..., 0]) < 1).any()                      # sub-pixel boxes
    assert ((boxes[..., 0] < 0) | (boxes[..., 2] > width) | (boxes[..., 3] > height)).sum() > 10
    assert set(np.unique(FIXTURE["levels"])) == {0, 1, 2, 3}
    assert {bool(FIXTURE[f"single{i}_aligned"]) for i in SINGLE} == {False, True}
    assert {int(FIXTURE[f"single{i}_sampling_ratio"]) for i in SINGLE} >= {1, 2, 3}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", SINGLE)
def test_roi_align_matches_torchvision(case, impl):
    features, kwargs = _single_args(case)
    got = ops.convert_to_numpy(ra.roi_align(features, FIXTURE["boxes"], implementation=impl,
                                            **kwargs))
    expected = FIXTURE[f"single{case}_output"]
    assert got.shape == expected.shape and got.dtype == np.float32
    assert np.abs(expected).max() > 0.5
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_map_levels():
    np.testing.assert_array_equal(ops.convert_to_numpy(ra.map_levels(FIXTURE["boxes"],
                                                                     strides=STRIDES)),
                                  FIXTURE["levels"])
    # sqrt(area) 224 -> P4; 112 -> P3 (the eps); just under 112 -> P2; huge -> P5; empty -> P2.
    boxes = np.array([[0, 0, 224, 224], [10, 10, 122, 122], [0, 0, 111, 112],
                      [0, 0, 2000, 900], [0, 0, 0, 0], [5, 5, 1, 1]], np.float32)
    levels = ops.convert_to_numpy(ra.map_levels(boxes, strides=STRIDES))
    assert levels.tolist() == [2, 1, 0, 3, 0, 0]
    levels = ops.convert_to_numpy(ra.map_levels(boxes, strides=(8, 16)))
    assert levels.tolist() == [1, 0, 0, 1, 0, 0]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", MULTI)
def test_multilevel_roi_align_matches_torchvision(case, impl):
    features = {name: FIXTURE[name] for name in NAMES}
    got = ops.convert_to_numpy(ra.multilevel_roi_align(features, FIXTURE["boxes"],
                                                       implementation=impl, **_multi_args(case)))
    np.testing.assert_allclose(got, FIXTURE[f"multi{case}_output"], atol=1e-4, rtol=0)
    as_list = ra.multilevel_roi_align([features[n] for n in NAMES], FIXTURE["boxes"],
                                      implementation=impl, **_multi_args(case))
    np.testing.assert_array_equal(ops.convert_to_numpy(as_list), got)


def test_bins_of_a_linear_map_are_its_values_at_bin_centres():
    # Bilinear sampling of f(y, x) = 3y + x is exact, so each bin's mean is f at its centre.
    height, width = 9, 13
    ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    features = np.stack([3.0 * ys + xs, -ys], axis=-1)[None].astype(np.float32)
    boxes = np.array([[[2.0, 3.0, 22.0, 15.0], [5.0, 1.0, 17.0, 14.0]]], np.float32)
    got = ops.convert_to_numpy(ra.roi_align(features, boxes, output_size=(2, 4),
                                            spatial_scale=0.5, sampling_ratio=3, aligned=True))
    for r, (x1, y1, x2, y2) in enumerate(boxes[0] * 0.5 - 0.5 * np.array([1, 1, 1, 1])):
        cy = y1 + (np.arange(2) + 0.5) * (y2 - y1) / 2
        cx = x1 + (np.arange(4) + 0.5) * (x2 - x1) / 4
        np.testing.assert_allclose(got[0, r, ..., 0], 3 * cy[:, None] + cx[None, :], atol=1e-5)
        np.testing.assert_allclose(got[0, r, ..., 1], -cy[:, None] + 0 * cx, atol=1e-5)


@TF_ONLY
@pytest.mark.parametrize("aligned", [False, True])
def test_plain_crop_and_resize_agrees_inside_the_map(aligned):
    """Where every sample lies in [0, H - 1] x [0, W - 1], RoIAlign is crop_and_resize on the
    sample grid (normalised coordinates: sample / (H - 1)) followed by the bin means."""
    import tensorflow as tf

    features = FIXTURE["p2"]                                 # [2, 30, 44, 2]
    height, width = features.shape[1:3]
    rng = np.random.default_rng(3)
    xy = rng.uniform(4, 60, (2, 10, 2))
    wh = rng.uniform(4, 100, (2, 10, 2))
    boxes = np.concatenate([xy, xy + wh], -1).astype(np.float32)
    boxes[..., 2:] = np.minimum(boxes[..., 2:], [4 * (width - 1), 4 * (height - 1)])
    grid, out = 2, 7
    offset = 0.5 if aligned else 0.0
    start = boxes * 0.25 - offset
    size = np.maximum(start[..., 2:] - start[..., :2], 0 if aligned else 1)    # (w, h)
    first = start[..., :2] + 0.5 * size / (out * grid)
    last = start[..., :2] + (out * grid - 0.5) * size / (out * grid)
    assert first.min() >= 0 and last[..., 0].max() <= width - 1 and last[..., 1].max() <= height - 1
    normalised = np.stack([first[..., 1] / (height - 1), first[..., 0] / (width - 1),
                           last[..., 1] / (height - 1), last[..., 0] / (width - 1)], -1)
    crops = tf.image.crop_and_resize(features, normalised.reshape(-1, 4),
                                     np.repeat([0, 1], 10), (out * grid, out * grid))
    expected = crops.numpy().reshape(2, 10, out, grid, out, grid, 2).mean(axis=(3, 5))
    got = ops.convert_to_numpy(ra.roi_align(features, boxes, output_size=out,
                                            spatial_scale=0.25, aligned=aligned))
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("impl", IMPLS)
def test_float16_features_and_padding(impl):
    features = {name: FIXTURE[name].astype(np.float16) for name in NAMES}
    got = ra.multilevel_roi_align(features, FIXTURE["boxes"], implementation=impl,
                                  **_multi_args(0))
    assert ops.convert_to_numpy(got).dtype == np.float16
    got = ops.convert_to_numpy(got).astype(np.float32)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, FIXTURE["multi0_output"], atol=1e-2, rtol=0)
    zeros = np.zeros((2, 5, 4), np.float32)
    padded = ops.convert_to_numpy(ra.roi_align(FIXTURE["p3"], zeros, output_size=3,
                                               spatial_scale=0.125, aligned=True))
    np.testing.assert_allclose(padded, np.broadcast_to(FIXTURE["p3"][:, None, :1, :1],
                                                       padded.shape), atol=1e-6)


def test_invalid_arguments():
    features, boxes = FIXTURE["p2"], FIXTURE["boxes"]
    with pytest.raises(ValueError, match="adaptive"):
        ra.roi_align(features, boxes, output_size=7, spatial_scale=0.25, sampling_ratio=0)
    with pytest.raises(ValueError, match="powers of two"):
        ra.multilevel_roi_align([features, FIXTURE["p4"]], boxes, strides=(4, 16))
    with pytest.raises(ValueError, match="levels"):
        ra.multilevel_roi_align([features], boxes, strides=(4, 8))
    with pytest.raises(ValueError, match="implementation"):
        ra.roi_align(features, boxes, output_size=7, spatial_scale=0.25, implementation="x")
    with pytest.raises(ValueError, match="boxes"):
        ra.roi_align(features, boxes[0], output_size=7, spatial_scale=0.25)


@TF_ONLY
def test_unknown_batch_and_map_size():
    import tensorflow as tf

    features, kwargs = _single_args(0)
    run = tf.function(lambda f, b: ra.roi_align(f, b, **kwargs), input_signature=[
        tf.TensorSpec((None, None, None, 2), tf.float32), tf.TensorSpec((None, None, 4))])
    assert run.get_concrete_function().structured_outputs.shape.as_list() == [None, None, 7,
                                                                               7, 2]
    np.testing.assert_allclose(run(features, FIXTURE["boxes"]).numpy(),
                               FIXTURE["single0_output"], atol=1e-4, rtol=0)


class _Pooler(keras.layers.Layer):
    def call(self, boxes, *levels):
        return ra.multilevel_roi_align(list(levels), boxes, strides=STRIDES)


@TF_ONLY
def test_tflite_builtins_round_trip():
    import tensorflow as tf

    from kft.export.core import interpreter_class

    features = [FIXTURE[name] for name in NAMES]
    boxes = FIXTURE["boxes"]
    inputs = [keras.Input(boxes.shape[1:], batch_size=2)]
    inputs += [keras.Input(f.shape[1:], batch_size=2) for f in features]
    model = keras.Model(inputs, _Pooler()(*inputs))
    names = ("boxes",) + NAMES
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", lambda *x: model(list(x)), input_signature=[
        tf.TensorSpec(x.shape, tf.float32, name=n) for x, n in zip([boxes] + features, names, strict=True)])
    with tempfile.TemporaryDirectory() as directory:
        archive.write_out(directory, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(directory)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        flatbuffer = converter.convert()
    interpreter = interpreter_class()(model_content=flatbuffer)
    op_names = {op["op_name"] for op in interpreter._get_ops_details()}
    assert "GATHER" in op_names and "CROP_AND_RESIZE" not in op_names
    runner = interpreter.get_signature_runner(next(iter(interpreter.get_signature_list())))
    got = next(iter(runner(**dict(zip(names, [boxes] + features, strict=True))).values()))
    expected = ops.convert_to_numpy(model([boxes] + features))
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(got, FIXTURE["multi0_output"], atol=1e-4, rtol=0)
