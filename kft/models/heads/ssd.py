"""SSD prediction heads: one class and one box predictor per feature level (M3).

``SSDHead`` applies, on every level ``l`` with ``k_l`` default boxes per location, a class
predictor with ``k_l * (num_classes + 1)`` outputs (index 0 = background) and a box predictor
with ``k_l * 4`` outputs, then flattens each level row-major over (y, x, box) and concatenates
the levels — the same order as ``kft.ops.anchors.ssd_default_boxes``.

``kind="conv"``: a 3x3 convolution per predictor (SSD300/512).
``kind="depthwise"``: SSDLite's 3x3 depthwise conv + BN + ReLU6 + 1x1 conv per predictor.
"""

from __future__ import annotations

import math

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="kft")
class SSDHead(layers.Layer):
    """Class logits ``[B, A, num_classes + 1]`` and box deltas ``[B, A, 4]`` from feature levels.

    Args:
        num_classes: foreground classes (background is added as index 0).
        boxes_per_location: ``k_l`` for each level.
        kind: ``"conv"`` or ``"depthwise"`` (SSDLite).
        prior_probability: initial foreground probability of every class logit (the bias of the
            class predictor is set so training starts near it; 0.01 as in RetinaNet/SSDLite).
    """

    def __init__(self, num_classes, boxes_per_location, kind="conv", prior_probability=0.01,
                 **kwargs):
        super().__init__(**kwargs)
        if kind not in ("conv", "depthwise"):
            raise ValueError(f"SSD head kind={kind!r} must be 'conv' or 'depthwise'")
        self.num_classes = int(num_classes)
        self.boxes_per_location = [int(k) for k in boxes_per_location]
        self.kind = kind
        self.prior_probability = float(prior_probability)
        self.cls_predictors = [self._predictor(k * (self.num_classes + 1), f"cls_{i}", True)
                               for i, k in enumerate(self.boxes_per_location)]
        self.box_predictors = [self._predictor(k * 4, f"box_{i}", False)
                               for i, k in enumerate(self.boxes_per_location)]

    def _predictor(self, filters, name, is_cls):
        bias = "zeros"
        if is_cls:
            # Background logit 0, foreground logits at log(p / (1 - p)) relative to it.
            bias = _ClassBias(self.num_classes + 1, self.prior_probability)
        if self.kind == "conv":
            return layers.Conv2D(filters, 3, padding="same", bias_initializer=bias, name=name)
        return keras.Sequential([
            layers.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"{name}_dw"),
            layers.BatchNormalization(name=f"{name}_dw_bn"),
            layers.ReLU(6.0, name=f"{name}_dw_relu"),
            layers.Conv2D(filters, 1, bias_initializer=bias, name=f"{name}_pw"),
        ], name=name)

    def build(self, input_shapes):
        if len(input_shapes) != len(self.boxes_per_location):
            raise ValueError(f"SSDHead got {len(input_shapes)} feature levels but "
                             f"boxes_per_location has {len(self.boxes_per_location)}")
        for shape, cls, box in zip(input_shapes, self.cls_predictors, self.box_predictors,
                                   strict=True):
            cls.build(shape)
            box.build(shape)

    def call(self, features, training=None):
        cls_out, box_out = [], []
        for x, cls, box in zip(features, self.cls_predictors, self.box_predictors, strict=True):
            b = ops.shape(x)[0]
            c = cls(x, training=training)
            r = box(x, training=training)
            cls_out.append(ops.reshape(c, (b, -1, self.num_classes + 1)))
            box_out.append(ops.reshape(r, (b, -1, 4)))
        cls_logits = ops.cast(ops.concatenate(cls_out, axis=1), "float32")
        box_deltas = ops.cast(ops.concatenate(box_out, axis=1), "float32")
        return cls_logits, box_deltas

    def compute_output_shape(self, input_shapes):
        anchors = sum(
            (None if s[1] is None or s[2] is None else s[1] * s[2] * k)
            for s, k in zip(input_shapes, self.boxes_per_location, strict=True))
        b = input_shapes[0][0]
        return (b, anchors, self.num_classes + 1), (b, anchors, 4)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes,
                "boxes_per_location": self.boxes_per_location, "kind": self.kind,
                "prior_probability": self.prior_probability}


@keras.saving.register_keras_serializable(package="kft")
class _ClassBias(keras.initializers.Initializer):
    """Bias for a class predictor laid out as ``[k, num_classes + 1]`` per location: 0 for the
    background column, ``log(p / (1 - p))`` for the foreground columns."""

    def __init__(self, channels_per_box, prior_probability):
        self.channels_per_box = int(channels_per_box)
        self.prior_probability = float(prior_probability)

    def __call__(self, shape, dtype=None):
        fg = math.log(self.prior_probability / (1.0 - self.prior_probability))
        per_box = ops.concatenate([ops.zeros((1,)), ops.full((self.channels_per_box - 1,), fg)])
        return ops.cast(ops.tile(per_box, (shape[0] // self.channels_per_box,)), dtype or
                        "float32")

    def get_config(self):
        return {"channels_per_box": self.channels_per_box,
                "prior_probability": self.prior_probability}
