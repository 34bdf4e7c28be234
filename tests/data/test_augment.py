"""D4 augmentation layers: geometry, probabilities, seeding, graph mode, config round-trip."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kft.data.augment import (
    ClassificationAugment,
    RandomBlur,
    RandomFlip,
    RandomGaussianNoise,
    RandomRotate90,
    RandomTranspose,
    box_blur3,
    median_blur3,
    motion_kernels,
)

SEED = tf.constant([1, 2], tf.int32)


def _images(batch=64, size=8, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (batch, size, size, channels)).astype("float32")


def _d4(image):
    """The 8 elements of the dihedral group applied to one [H,W,C] image."""
    rots = [np.rot90(image, k, axes=(0, 1)) for k in range(4)]
    return rots + [np.transpose(r, (1, 0, 2)) for r in rots]


def _match(out, candidates):
    return [i for i, c in enumerate(candidates) if np.array_equal(out, c)]


def test_rotate90_gives_each_rotation_and_identity_with_expected_frequency():
    x = _images(batch=400)
    y = RandomRotate90(p=0.5)(x, seed=SEED).numpy()
    ks = []
    for xi, yi in zip(x, y, strict=True):
        rots = [np.rot90(xi, k, axes=(0, 1)) for k in range(4)]
        found = _match(yi, rots)
        assert len(found) == 1
        ks.append(found[0])
    counts = np.bincount(ks, minlength=4)
    # p=0.5: identity 0.5 + 0.5/4, each other rotation 0.125 (of 400 images).
    assert 200 < counts[0] < 300 and all(25 < c < 80 for c in counts[1:]), counts
    # Counter-clockwise like tf.image.rot90 for k=1: the layer with p=1 only gives rotations.
    assert np.array_equal(tf.image.rot90(x[:1], 1).numpy()[0], np.rot90(x[0], 1, axes=(0, 1)))


def test_flip_and_transpose_are_per_image_and_respect_p():
    x = _images(batch=300)
    flipped = RandomFlip(p=1.0)(x, seed=SEED).numpy()
    kinds = []
    for xi, yi in zip(x, flipped, strict=True):
        options = [xi[:, ::-1], xi[::-1], xi[::-1, ::-1]]
        found = _match(yi, options)
        assert len(found) == 1
        kinds.append(found[0])
    assert set(kinds) == {0, 1, 2}
    transposed = RandomTranspose(p=0.5)(x, seed=SEED).numpy()
    same = [np.array_equal(a, b) for a, b in zip(x, transposed, strict=True)]
    swapped = [np.array_equal(np.transpose(a, (1, 0, 2)), b)
               for a, b in zip(x, transposed, strict=True)]
    assert all(s or t for s, t in zip(same, swapped, strict=True))
    assert 100 < sum(swapped) < 200
    np.testing.assert_array_equal(RandomFlip(p=0.0)(x, seed=SEED), x)


def test_composite_output_is_a_d4_element_without_noise_or_blur():
    x = _images(batch=64)
    aug = ClassificationAugment(noise=0.0, blur=0.0)
    y = aug(x, seed=SEED).numpy()
    elements = []
    for xi, yi in zip(x, y, strict=True):
        found = _match(yi, _d4(xi))
        assert len(found) == 1
        elements.append(found[0])
    assert len(set(elements)) >= 6


def test_fused_composite_equals_the_layers_applied_in_turn():
    x = _images(batch=32, size=10)
    aug = ClassificationAugment(noise=0.5, blur=0.5)
    seeds = tf.unstack(tf.random.experimental.stateless_split(tf.cast(SEED, tf.int64), 5))
    y = tf.constant(x)
    for layer, seed in zip([RandomRotate90(0.5), RandomFlip(0.5), RandomTranspose(0.5),
                            RandomGaussianNoise(0.5), RandomBlur(0.5)], seeds, strict=True):
        y = layer.augment(y, seed)
    np.testing.assert_array_equal(aug(x, seed=SEED).numpy(), y.numpy())


def test_seeded_calls_are_pure_functions_of_images_and_seed():
    x = _images(batch=16, size=12)
    aug = ClassificationAugment(noise=0.5, blur=0.5)
    a = aug(x, seed=SEED).numpy()
    b = ClassificationAugment(noise=0.5, blur=0.5, seed=123)(x, seed=SEED).numpy()
    np.testing.assert_array_equal(a, b)
    c = aug(x, seed=tf.constant([1, 3])).numpy()
    assert not np.array_equal(a, c)
    assert a.dtype == np.float32 and a.shape == x.shape
    assert a.min() >= 0 and a.max() <= 255


def test_unseeded_calls_use_the_seed_generator():
    x = _images(batch=16)
    aug = ClassificationAugment(seed=5)
    a, b = aug(x).numpy(), aug(x).numpy()
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(ClassificationAugment(seed=5)(x).numpy(), a)


def test_same_results_in_tf_data_graph_mode_and_eagerly():
    x = _images(batch=8, size=10)
    aug = ClassificationAugment(noise=0.5, blur=0.5)
    eager = aug(x, seed=SEED).numpy()
    ds = tf.data.Dataset.from_tensors(x).map(lambda b: aug(b, seed=SEED))
    graph = next(iter(ds)).numpy()
    np.testing.assert_allclose(graph, eager, atol=1e-4)
    # Unknown batch and spatial sizes inside a tf.function work too.
    fn = tf.function(lambda b: aug(b, seed=SEED),
                     input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    np.testing.assert_allclose(fn(x).numpy(), eager, atol=1e-4)


def test_noise_changes_pixels_only_for_chosen_images():
    x = np.full((200, 8, 8, 3), 128.0, "float32")
    y = RandomGaussianNoise(p=0.3)(x, seed=SEED).numpy()
    changed = np.array([not np.array_equal(a, b) for a, b in zip(x, y, strict=True)])
    assert 30 < changed.sum() < 90
    std = y[changed].std(axis=(1, 2, 3))
    assert std.min() > 1.5 and std.max() < 15


def test_blur_filters():
    x = _images(batch=2, size=6)
    # 3x3 box and median against a direct numpy computation with reflect padding.
    pad = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    windows = np.stack([pad[:, i:i + 6, j:j + 6] for i in range(3) for j in range(3)], -1)
    np.testing.assert_allclose(box_blur3(tf.constant(x)).numpy(), windows.mean(-1), rtol=1e-5)
    np.testing.assert_allclose(median_blur3(tf.constant(x)).numpy(), np.median(windows, -1))
    kernels = motion_kernels(tf.constant([3, 4], tf.int64), 50).numpy()
    assert kernels.shape == (50, 7, 7)
    np.testing.assert_allclose(kernels.sum(axis=(1, 2)), 1.0, rtol=1e-5)
    assert (kernels[:, 3, 3] > 0).all() and ((kernels > 0).sum(axis=(1, 2)) >= 2).all()
    y = RandomBlur(p=1.0)(x, seed=SEED).numpy()
    assert not np.array_equal(y, x)
    assert y.std() < x.std()
    # p=0.5 of a larger batch: some images untouched, some blurred.
    z = RandomBlur(p=0.5)(_images(batch=40), seed=SEED).numpy()
    untouched = [np.array_equal(a, b) for a, b in zip(_images(batch=40), z, strict=True)]
    assert 0 < sum(untouched) < 40


def test_non_square_images_raise_a_clear_error_and_flip_accepts_them():
    x = np.zeros((2, 8, 6, 3), "float32")
    with pytest.raises(ValueError, match="square"):
        RandomRotate90()(x, seed=SEED)
    with pytest.raises(ValueError, match="square"):
        ClassificationAugment()(x, seed=SEED)
    assert RandomFlip(p=1.0)(x, seed=SEED).shape == (2, 8, 6, 3)
    transpose = RandomTranspose(p=1.0)
    fn = tf.function(lambda b: transpose(b, seed=SEED),
                     input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    with pytest.raises(tf.errors.InvalidArgumentError, match="square"):
        fn(x)


def test_get_config_round_trip_and_inference_passthrough(tmp_path):
    aug = ClassificationAugment(rotate90=0.3, flip=0.4, transpose=0.1, noise=0.6, blur=0.7,
                                seed=9)
    clone = ClassificationAugment.from_config(aug.get_config())
    assert clone.get_config() == aug.get_config()
    assert [s.p for s in clone.stages] == [0.3, 0.4, 0.1, 0.6, 0.7]
    blur = RandomBlur(p=0.2, motion=1.0, median=0.0, box=0.5, motion_max_size=5)
    assert RandomBlur.from_config(blur.get_config()).get_config() == blur.get_config()
    noise = RandomGaussianNoise(std_range=(1.0, 2.0))
    assert RandomGaussianNoise.from_config(noise.get_config()).std_range == (1.0, 2.0)
    # Inside a model: active in training, identity at inference; survives save/load.
    model = keras.Sequential([keras.Input((8, 8, 3)), aug])
    x = _images(batch=4)
    np.testing.assert_array_equal(model.predict(x, verbose=0), x)
    assert not np.array_equal(model(x, training=True).numpy(), x)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.layers[0].get_config()["blur"] == 0.7


def test_invalid_arguments():
    with pytest.raises(ValueError, match="p=1.5"):
        RandomFlip(p=1.5)
    with pytest.raises(ValueError, match="motion_max_size"):
        RandomBlur(motion_max_size=4)
    with pytest.raises(ValueError, match="expects images"):
        RandomFlip()(np.zeros((2, 2), "float32"))


def test_presets_by_kind_of_image():
    """natural flips left-right only, orientation never flips; both are seed-pure; guide is D4."""
    from kft.data.augment import (
        AUGMENT_PRESETS,
        AugmentChain,
        RandomHorizontalFlip,
        classification_augment,
    )

    assert AUGMENT_PRESETS == ("natural", "orientation", "guide", "none")
    assert classification_augment("none") is None and classification_augment(False) is None
    assert isinstance(classification_augment(True), ClassificationAugment)
    assert isinstance(classification_augment("guide"), ClassificationAugment)
    with pytest.raises(ValueError, match="natural, orientation"):
        classification_augment("d4")
    # a left-right gradient: a horizontal flip reverses it, a vertical one would not change it
    ramp = np.tile(np.linspace(0, 255, 40, dtype=np.float32)[None, :, None], (30, 1, 3))
    images = tf.constant(np.stack([ramp] * 16))
    seed = tf.constant([7, 8], tf.int64)
    natural = classification_augment("natural", seed=0)
    a, b = natural(images, seed=seed).numpy(), natural(images, seed=seed).numpy()
    np.testing.assert_array_equal(a, b)
    assert a.shape == images.shape and a.min() >= 0 and a.max() <= 255
    flips = RandomHorizontalFlip(1.0)(images, seed=seed).numpy()
    np.testing.assert_allclose(flips[:, :, ::-1], images.numpy())
    orientation = classification_augment("orientation", seed=0)
    assert isinstance(orientation, AugmentChain)
    assert not any("flip" in type(s).__name__.lower() for s in orientation.stages)
    out = orientation(images, seed=seed).numpy()
    # brightness/contrast shift the ramp, a mild crop stretches it, but left stays darker
    assert (out[:, :, :5].mean(axis=(1, 2, 3)) < out[:, :, -5:].mean(axis=(1, 2, 3))).all()
    flipped = natural(images, seed=seed).numpy()
    left, right = flipped[:, :, :5].mean(axis=(1, 2, 3)), flipped[:, :, -5:].mean(axis=(1, 2, 3))
    assert (left > right).any() and (left < right).any()  # some images mirrored, some not
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(natural))
    assert [type(s).__name__ for s in restored.stages] == [type(s).__name__
                                                           for s in natural.stages]
    assert [s.p for s in restored.stages] == [s.p for s in natural.stages]
    np.testing.assert_array_equal(restored(images, seed=seed).numpy(), a)  # same pixels
    # natural photos keep their colours (classes are often told apart by them): brightness
    # and contrast only, as fastai's lighting
    colour = natural.stages[-1]
    assert (colour.brightness, colour.contrast, colour.saturation) == (0.2, 0.2, 0.0)
