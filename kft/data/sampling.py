"""Which examples an epoch visits: every one at least once, in full static batches.

A training epoch of ``n`` examples in batches of ``B`` has ``ceil(n / B)`` steps. The epoch's
order is a seeded permutation of all ``n`` examples; when ``B`` does not divide ``n``, the last
batch is filled with the first examples of a second permutation (drawn for the same epoch), so
no example is left out of an epoch and every batch keeps the static size ``B`` (which XLA,
tf.distribute, BatchNormalization and the detectors' static target shapes rely on). The
``steps * B - n`` repeated examples differ from epoch to epoch.

:func:`fitted_batch_size` is the runner's rule for a batch size that leaves the least to fill:
the same number of steps, batches as even as possible (40 images, batch 32 -> 2 steps of 20,
nothing repeated; 1000 images, batch 32 -> 32 steps of 32, 24 repeated; 5 images, batch 32 ->
1 step of 5).
"""

from __future__ import annotations

import math

import tensorflow as tf


def steps_per_epoch(n: int, batch_size: int) -> int:
    """``ceil(n / batch_size)``: the batches of an epoch that visits every example."""
    if n < 1 or batch_size < 1:
        raise ValueError(f"need n >= 1 and batch_size >= 1, got n={n}, batch_size={batch_size}")
    return -(-int(n) // int(batch_size))


def repeated_per_epoch(n: int, batch_size: int) -> int:
    """Examples drawn a second time to fill the last batch of an epoch."""
    return steps_per_epoch(n, batch_size) * int(batch_size) - int(n)


def fitted_batch_size(n: int, batch_size: int) -> int:
    """The batch size (at most ``batch_size``) with the same number of steps per epoch and the
    fewest repeated examples: ``ceil(n / ceil(n / batch_size))``."""
    return -(-int(n) // steps_per_epoch(n, batch_size))


def epoch_order(n: int, batch_size: int, seed: tf.Tensor) -> tf.Tensor:
    """int32 ``[steps * batch_size]``: the example indices of one epoch in visiting order.

    ``seed`` is an int64/int32 ``[2]`` stateless seed (one per epoch). The first ``n`` entries
    are a permutation of ``range(n)``; the rest come from further permutations (as many as
    needed; more than one only when ``batch_size > n``).
    """
    total = steps_per_epoch(n, batch_size) * int(batch_size)
    copies = math.ceil(total / n)
    seed = tf.cast(seed, tf.int64)
    extra = tf.random.experimental.stateless_split(seed, copies)
    perms = [tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int32),
                                                      seed if k == 0 else extra[k])
             for k in range(copies)]
    return tf.concat(perms, axis=0)[:total]
