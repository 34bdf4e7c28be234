"""Classification heads (M2) and the squeeze-excitation block (M6)."""

from __future__ import annotations

import keras
from keras import layers, ops


def classification_head(features, num_classes: int, kind: str = "linear", units: int = 512,
                        dropout: float = 0.5):
    """Pools a feature map ``[B, h, w, C]`` and returns class logits ``[B, num_classes]`` (float32).

    ``kind="linear"``: global average pool -> Dense.
    ``kind="mlp"``: global average pool -> Dense(units) -> BatchNorm -> ReLU -> Dropout -> Dense,
    the guide's head for imbalanced data.
    """
    x = layers.GlobalAveragePooling2D(name="avg_pool")(features)
    if kind == "mlp":
        x = layers.Dense(units, name="head_dense")(x)
        x = layers.BatchNormalization(name="head_bn")(x)
        x = layers.Activation("relu", name="head_relu")(x)
        x = layers.Dropout(dropout, name="head_dropout")(x)
    elif kind != "linear":
        raise ValueError(f"model.head={kind!r} must be 'linear' or 'mlp'")
    # Logits stay float32 under mixed precision so the loss and softmax are stable.
    return layers.Dense(num_classes, dtype="float32", name="predictions")(x)


@keras.saving.register_keras_serializable(package="kft")
class SqueezeExcite(layers.Layer):
    """Channel attention of Hu et al.: ``x * sigmoid(W2 relu(W1 avgpool(x)))``.

    Input and output ``[B, H, W, C]``; the bottleneck has ``max(1, C // reduction)`` units. The
    gate is ``2 * sigmoid(.)`` and the excite projection starts at zero, so a block inserted
    into a pretrained network is exactly the identity at first and the pretrained features are
    kept until training moves the gate.
    """

    def __init__(self, reduction: int = 16, **kwargs):
        super().__init__(**kwargs)
        self.reduction = reduction

    def build(self, input_shape):
        channels = input_shape[-1]
        self.squeeze = layers.Dense(max(1, channels // self.reduction), activation="relu",
                                    name="squeeze")
        self.excite = layers.Dense(channels, kernel_initializer="zeros", name="excite")
        self.squeeze.build((input_shape[0], channels))
        self.excite.build((input_shape[0], max(1, channels // self.reduction)))

    def call(self, x):
        s = ops.mean(x, axis=(1, 2))
        gate = 2.0 * ops.sigmoid(self.excite(self.squeeze(s)))
        return x * ops.cast(gate[:, None, None, :], x.dtype)

    def get_config(self):
        return {**super().get_config(), "reduction": self.reduction}
