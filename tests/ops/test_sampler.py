import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from kft.ops.sampler import balanced_sample


def _sample(labels, num, fraction, seed=0):
    out = balanced_sample(np.asarray(labels, "int32"), num, fraction, seed=seed)
    return {k: ops.convert_to_numpy(v) for k, v in out.items()}


def _labels(num_pos, num_neg, num_ignore, seed=0):
    labels = np.array([1] * num_pos + [0] * num_neg + [-1] * num_ignore, "int32")
    return np.random.default_rng(seed).permutation(labels)


def _check_sample(labels, out, expected_pos, expected_neg):
    for b in range(labels.shape[0]):
        valid, index, positive = out["valid"][b], out["indices"][b], out["positive"][b]
        picked = index[valid]
        assert len(set(picked.tolist())) == len(picked), "an example was sampled twice"
        assert int(positive.sum()) == expected_pos[b]
        assert int((valid & ~positive).sum()) == expected_neg[b]
        assert (labels[b][index[positive]] >= 1).all()
        assert (labels[b][index[valid & ~positive]] == 0).all()
        # positives first, then negatives, then padding
        kinds = np.where(positive, 0, np.where(valid, 1, 2))
        assert (np.diff(kinds) >= 0).all()
        assert (index[~valid] == 0).all()


def test_counts_cap_and_ignore():
    labels = np.stack([_labels(10, 100, 30), _labels(2, 108, 30, seed=1),
                       _labels(2, 3, 135, seed=2), _labels(0, 0, 140)])
    out = _sample(labels, 16, 0.5)
    assert out["indices"].shape == (4, 16) and out["indices"].dtype == np.int32
    # capped at 8 positives; few positives filled with negatives; too few -> padding; none.
    _check_sample(labels, out, expected_pos=[8, 2, 2, 0], expected_neg=[8, 14, 3, 0])


def test_class_id_labels_and_fractions():
    labels = np.array([[3, 1, 2, 0, 0, 0, 0, 0, 0, 0, 5, -1]], "int32")
    out = _sample(labels, 8, 0.25)                 # int(8 * 0.25) = 2 positives
    _check_sample(labels, out, [2], [6])
    out = _sample(labels, 8, 0.0)
    _check_sample(labels, out, [0], [7])           # only 7 negatives exist
    out = _sample(labels, 30, 1.0)                 # S > N: every example, padded
    _check_sample(labels, out, [4], [7])
    assert out["valid"].shape == (1, 30) and out["valid"].sum() == 11


def test_random_among_candidates():
    labels = _labels(6, 20, 10)[None]
    counts = np.zeros(labels.shape[1])
    firsts = set()
    for seed in range(200):
        out = _sample(labels, 6, 0.5, seed=seed)
        picked = out["indices"][0][out["valid"][0]]
        counts[picked] += 1
        firsts.add(tuple(sorted(picked.tolist())))
    positives, negatives = labels[0] == 1, labels[0] == 0
    assert (counts[labels[0] < 0] == 0).all()
    # 3 of 6 positives per draw -> each about 100 of 200; 3 of 20 negatives -> about 30.
    assert counts[positives].min() > 60 and counts[positives].max() < 140
    assert counts[negatives].min() > 10 and counts[negatives].max() < 55
    assert len(firsts) > 150
    same = [_sample(labels, 6, 0.5, seed=7)["indices"] for _ in range(2)]
    np.testing.assert_array_equal(*same)


def test_seed_generator_varies_between_calls():
    labels = _labels(20, 200, 0)[None]
    gen = keras.random.SeedGenerator(3)
    a = ops.convert_to_numpy(balanced_sample(labels, 16, 0.5, seed=gen)["indices"])
    b = ops.convert_to_numpy(balanced_sample(labels, 16, 0.5, seed=gen)["indices"])
    assert not np.array_equal(a, b)


def test_static_shapes_in_graph_with_unknown_batch():
    @tf.function(input_signature=[tf.TensorSpec((None, 50), tf.int32)], jit_compile=True)
    def sample(labels):
        out = balanced_sample(labels, 12, 0.5, seed=1)
        assert out["indices"].shape[1:] == (12,) and out["valid"].shape[1:] == (12,)
        return out

    labels = np.stack([_labels(5, 40, 5), _labels(30, 10, 10)])
    out = {k: v.numpy() for k, v in sample(tf.constant(labels)).items()}
    _check_sample(labels, out, [5, 6], [7, 6])


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_samples"):
        balanced_sample(np.zeros((1, 4), "int32"), 0, 0.5)
    with pytest.raises(ValueError, match="positive_fraction"):
        balanced_sample(np.zeros((1, 4), "int32"), 4, 1.5)
    with pytest.raises(ValueError, match=r"\[B, N\]"):
        balanced_sample(np.zeros((4,), "int32"), 4, 0.5)
