"""kft.data.sampling: every example once per epoch, full static batches, the fitted batch size."""

import numpy as np
import pytest
import tensorflow as tf

from kft.data.sampling import (
    epoch_order,
    fitted_batch_size,
    repeated_per_epoch,
    steps_per_epoch,
)


@pytest.mark.parametrize("n,batch", [(40, 32), (5, 32), (1000, 32), (7, 2), (6, 3), (1, 4),
                                     (150, 16), (4952, 32)])
def test_epoch_order_visits_every_example_in_full_batches(n, batch):
    order = epoch_order(n, batch, tf.constant([3, 4], tf.int64)).numpy()
    assert len(order) == steps_per_epoch(n, batch) * batch
    assert len(order) % batch == 0
    assert sorted(order[:n].tolist()) == list(range(n))  # the first n: a permutation
    assert order.min() >= 0 and order.max() < n
    counts = np.bincount(order, minlength=n)
    assert counts.min() >= 1 and counts.max() - counts.min() <= -(-batch // n)


def test_orders_depend_on_the_seed_only():
    a = epoch_order(50, 16, tf.constant([1, 2], tf.int64)).numpy()
    b = epoch_order(50, 16, tf.constant([1, 2], tf.int64)).numpy()
    c = epoch_order(50, 16, tf.constant([1, 3], tf.int64)).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("n,batch,fitted,repeated", [
    (40, 32, 20, 0),     # the few-shot case: 2 batches of 20, none dropped
    (5, 32, 5, 0),       # smaller than a batch: one batch of all of them
    (1000, 32, 32, 24),  # 32 steps either way
    (150, 16, 15, 0),
    (16, 16, 16, 0),
])
def test_fitted_batch_size_keeps_the_steps_and_repeats_least(n, batch, fitted, repeated):
    assert fitted_batch_size(n, batch) == fitted
    assert steps_per_epoch(n, fitted) == steps_per_epoch(n, batch)
    assert repeated_per_epoch(n, fitted) == repeated
    assert fitted_batch_size(n, fitted) == fitted  # idempotent: a resumed run plans the same


def test_bad_sizes():
    with pytest.raises(ValueError, match="n >= 1"):
        steps_per_epoch(0, 4)
