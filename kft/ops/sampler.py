"""Fixed-size balanced sampling of positive / negative training examples (R-CNN style).

The RPN trains on 256 anchors per image with at most half positives, the Faster R-CNN box head
on 512 proposals per image with at most a quarter positives (torchvision's
``BalancedPositiveNegativeSampler``). Here the sample has a static size: each candidate draws a
uniform random key, ``top_k`` over the keys of the eligible candidates picks a uniformly random
subset of them, and slots that cannot be filled (too few candidates) are padding marked invalid.
Every shape is fixed, so the function runs inside ``train_step`` / ``tf.function`` / XLA.

Randomness: pass a ``keras.random.SeedGenerator`` owned by the calling layer or model, so every
training step draws new keys. An ``int`` seed gives the same keys on every call (good for
tests, bad for training: the same labels would always give the same sample).
"""

from __future__ import annotations

import keras
from keras import ops


def balanced_sample(labels, num_samples: int, positive_fraction: float, *, seed=None):
    """Samples ``num_samples`` examples per image, at most ``positive_fraction`` positive.

    torchvision semantics: ``num_pos = min(#positives, int(num_samples * positive_fraction))``
    random positives, then ``num_neg = min(#negatives, num_samples - num_pos)`` random
    negatives; ignored examples are never taken.

    Args:
        labels: int ``[B, N]`` with ``N`` static: ``>= 1`` positive (a class id may be used,
            as in the RoI sampler), ``0`` negative, ``< 0`` ignored.
        num_samples: ``S``, examples per image (RPN 256, RoI heads 512).
        positive_fraction: largest share of positives (RPN 0.5, RoI heads 0.25).
        seed: ``None``, an ``int`` or a ``keras.random.SeedGenerator`` (see the module
            docstring).

    Returns:
        ``{"indices": int32 [B, S], "valid": bool [B, S], "positive": bool [B, S]}``:
        ``indices`` index the ``N`` examples; the sampled positives come first, then the
        negatives, then padding slots (``valid`` False, ``indices`` 0, ``positive`` False).
        The number of valid slots of an image is ``num_pos + num_neg <= S``.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if not 0.0 <= positive_fraction <= 1.0:
        raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
    labels = ops.convert_to_tensor(labels, "int32")
    if len(labels.shape) != 2 or labels.shape[1] is None:
        raise ValueError(f"labels must be [B, N] with a static N, got {labels.shape}")
    num = labels.shape[1]
    max_pos = int(num_samples * positive_fraction)
    positive = labels >= 1
    negative = labels == 0

    keys = keras.random.uniform(ops.shape(labels), 0.0, 1.0, seed=seed)   # [B, N] in [0, 1)
    pos_keys, pos_index = ops.top_k(ops.where(positive, keys, -1.0), min(max_pos, num))
    neg_keys, neg_index = ops.top_k(ops.where(negative, keys, -1.0), min(num_samples, num))
    pos_valid = pos_keys >= 0.0                                         # [B, min(max_pos, N)]
    num_pos = ops.sum(ops.cast(pos_valid, "int32"), axis=1, keepdims=True)
    neg_rank = ops.arange(neg_keys.shape[1], dtype="int32")[None, :]
    neg_valid = ops.logical_and(neg_keys >= 0.0, neg_rank < num_samples - num_pos)

    # Compact [positives | negatives] into S slots, valid ones first in their current order.
    index = ops.cast(ops.concatenate([pos_index, neg_index], axis=1), "int32")
    valid = ops.concatenate([pos_valid, neg_valid], axis=1)
    is_pos = ops.concatenate([pos_valid, ops.zeros_like(neg_valid)], axis=1)
    width = index.shape[1]
    priority = ops.where(valid, width - ops.arange(width, dtype="int32")[None, :], -1)
    order = ops.top_k(priority, min(num_samples, width))[1]
    index = ops.take_along_axis(index, order, axis=1)
    valid = ops.take_along_axis(valid, order, axis=1)
    is_pos = ops.take_along_axis(is_pos, order, axis=1)
    pad = num_samples - order.shape[1]
    if pad:
        index = ops.pad(index, ((0, 0), (0, pad)))
        valid = ops.pad(valid, ((0, 0), (0, pad)), constant_values=False)
        is_pos = ops.pad(is_pos, ((0, 0), (0, pad)), constant_values=False)
    return {"indices": ops.where(valid, index, 0), "valid": valid,
            "positive": ops.logical_and(is_pos, valid)}
