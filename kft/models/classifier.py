"""ResNet image classifier: normalisation + keras-hub ResNet backbone (+ SE) + head (M1, M2, M6)."""

from __future__ import annotations

import keras
from keras import layers

from kft.models.backbones.resnet import build_resnet_backbone, stage_names, stage_output
from kft.models.heads.classification import SqueezeExcite, classification_head

# ImageNet statistics in 0..255 pixel units, the normalisation every keras-hub ResNet preset uses.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


@keras.saving.register_keras_serializable(package="kft")
class ResNetClassifier(keras.Model):
    """Image classifier taking float32 pixels ``[B, H, W, 3]`` in 0..255, returning logits.

    Composition: ImageNet normalisation -> ``backbone`` -> optional SE blocks after the stages in
    ``se_stages`` -> head (``"linear"`` or ``"mlp"``). Outputs float32 logits ``[B, num_classes]``.

    Args:
        backbone: a keras-hub ``ResNetBackbone`` (see ``kft.models.backbones.resnet``).
        num_classes: number of output classes.
        head: ``"linear"`` or ``"mlp"`` (Dense(head_units)-BN-ReLU-Dropout-Dense).
        se_stages: stage names (``"layer3"``) after which a squeeze-excitation block is inserted.
        se_reduction: SE bottleneck reduction (16 in the guide).

    Use :meth:`from_arch` to build from a depth name and an optional keras-hub preset.
    """

    def __init__(self, backbone, num_classes, head="linear", head_units=512, dropout=0.5,
                 se_stages=(), se_reduction=16, **kwargs):
        se_stages = tuple(se_stages)
        unknown = set(se_stages) - set(stage_names(backbone)[1:])
        if unknown:
            raise ValueError(f"model.se_stages {sorted(unknown)} not in "
                             f"{stage_names(backbone)[1:]}")
        # === Layers ===
        self.backbone = backbone
        self.normalize = layers.Normalization(
            mean=IMAGENET_MEAN, variance=[s * s for s in IMAGENET_STD], name="normalize")

        # === Functional model ===
        images = keras.Input(shape=backbone.input_shape[1:], name="images")
        x = self.normalize(images)
        features = _apply_backbone(backbone, x, se_stages, se_reduction)
        logits = classification_head(features, num_classes, head, head_units, dropout)
        super().__init__(inputs=images, outputs=logits, **kwargs)

        # === Config ===
        self.num_classes = num_classes
        self.head = head
        self.head_units = head_units
        self.dropout = dropout
        self.se_stages = se_stages
        self.se_reduction = se_reduction

    @classmethod
    def from_arch(cls, arch="resnet50", num_classes=1000, image_size=224, preset="", **kwargs):
        """Builds the backbone by depth name (or keras-hub preset) and the classifier on it."""
        backbone = build_resnet_backbone(arch, image_size, preset)
        return cls(backbone, num_classes, **kwargs)

    def get_config(self):
        return {
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "num_classes": self.num_classes,
            "head": self.head,
            "head_units": self.head_units,
            "dropout": self.dropout,
            "se_stages": list(self.se_stages),
            "se_reduction": self.se_reduction,
            "name": self.name,
            "trainable": self.trainable,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)


def _apply_backbone(backbone, x, se_stages, se_reduction):
    """Runs ``backbone`` on ``x``, inserting an SE block after each stage in ``se_stages``.

    Without SE the backbone is called whole. With SE it is cut at the chosen stage outputs into
    consecutive sub-models that share the backbone's layers (and so its weights), and an SE
    block sits between the pieces.
    """
    if not se_stages:
        return backbone(x)
    order = stage_names(backbone)[1:]
    cuts = [stage_output(backbone, s) for s in order if s in se_stages]
    start = backbone.inputs[0]
    for stage, cut in zip([s for s in order if s in se_stages], cuts, strict=True):
        piece = keras.Model(start, cut, name=f"backbone_to_{stage}")
        x = piece(x)
        x = SqueezeExcite(se_reduction, name=f"se_{stage}")(x)
        start = cut
    if start is not backbone.outputs[0]:
        x = keras.Model(start, backbone.outputs[0], name="backbone_rest")(x)
    return x
