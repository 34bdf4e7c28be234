"""Freezing, progressive unfreezing and layer-wise learning rates for ResNet classifiers (T1, T2).

Stages are named as in the guides: ``stem``, ``layer1`` ... ``layerN`` (bottom-up); the head and
any inserted SE blocks always train. A frozen layer has ``trainable=False``, which in Keras 3 also
keeps its BatchNormalization in inference mode (moving statistics neither used from the batch nor
updated).
"""

from __future__ import annotations

import keras

from kft.models.backbones.resnet import stage_names, stage_of


def resolve_stages(model, stages) -> list[str]:
    """Expands ``("all",)`` / ``("none",)`` / stage names into a validated list of stages."""
    names = stage_names(model.backbone)
    stages = tuple(stages)
    if stages in ((), ("none",)):
        return []
    if stages == ("all",):
        return list(names)
    unknown = [s for s in stages if s not in names]
    if unknown:
        raise ValueError(f"train.trainable_stages: unknown stages {unknown}; valid: "
                         f"{names} or 'all' / 'none'")
    return list(stages)


def set_trainable_stages(model, stages) -> list[str]:
    """Makes exactly ``stages`` of ``model.backbone`` trainable; returns the resolved list."""
    stages = resolve_stages(model, stages)
    backbone = model.backbone
    last = stage_names(backbone)[-1]
    backbone.trainable = True
    for layer in backbone.layers:  # set one by one: the container's setter does not recurse
        if layer.weights:
            layer.trainable = stage_of(layer.name, last) in stages
    return stages


def trainable_stages(model) -> list[str]:
    """The backbone stages whose layers are all trainable now, bottom-up."""
    last = stage_names(model.backbone)[-1]
    frozen = {stage_of(layer.name, last) for layer in model.backbone.layers
              if layer.weights and not (layer.trainable and model.backbone.trainable)}
    present = {stage_of(layer.name, last) for layer in model.backbone.layers if layer.weights}
    return [s for s in stage_names(model.backbone) if s in present and s not in frozen]


def top_down_stages(model, count: int) -> list[str]:
    """The ``count`` highest stages, e.g. count=2 on a ResNet-50 -> [layer3, layer4]."""
    names = stage_names(model.backbone)
    count = max(0, min(count, len(names)))
    return names[len(names) - count:]


def candidate_trainable_variables(model) -> list:
    """Every variable that is trainable when all stages are, in a stable order.

    The optimiser is built on this list up front so that stages unfrozen later find their slot
    variables, and so that checkpoints always hold the same optimiser variables.
    """
    layers = model.backbone.layers
    saved = [(layer, layer.trainable) for layer in layers]
    backbone_trainable = model.backbone.trainable
    model.backbone.trainable = True
    for layer in layers:  # a functional model's setter does not reach its layers
        layer.trainable = True
    variables = list(model.trainable_variables)
    model.backbone.trainable = backbone_trainable
    for layer, trainable in saved:
        layer.trainable = trainable
    return variables


def stage_lr_multipliers(model, layer_lrs: dict, base_lr: float) -> dict:
    """Turns ``{"layer4": 1e-4, "stem": 0}`` into ``{regex: lr / base_lr}`` for the optimiser.

    The head (and SE blocks) keep ``base_lr``; the key ``"head"`` sets it explicitly.
    """
    names = stage_names(model.backbone) + ["head"]
    patterns = {}
    for stage, lr in layer_lrs.items():
        if stage not in names:
            raise ValueError(f"train.layer_lrs: unknown stage {stage!r}; valid: {names}")
        mult = float(lr) / base_lr if base_lr else 0.0
        if stage == "stem":
            patterns[r"(?:^|/)(conv\d+_|pool1_)"] = mult
        elif stage == "head":
            patterns[r"(?:^|/)(head_|predictions/|se_layer)"] = mult
        else:
            patterns[rf"(?:^|/)stack{int(stage[5:]) - 1}_"] = mult
    return patterns


class ProgressiveUnfreeze(keras.callbacks.Callback):
    """Unfreezes the backbone top down: ``initial`` stages first, ``per_round`` more every
    ``every`` epochs (the guide: 1-2 residual stages per round).

    The trainable set is a pure function of the epoch, so a resumed run unfreezes exactly as
    an uninterrupted one. The model's optimiser must have been built on
    :func:`candidate_trainable_variables`.
    """

    def __init__(self, initial: int, every: int, per_round: int = 1, verbose: bool = True):
        super().__init__()
        self.initial, self.every, self.per_round = initial, every, per_round
        self.verbose = verbose

    def stages_at(self, epoch: int) -> list[str]:
        rounds = epoch // self.every if self.every > 0 else 0
        return top_down_stages(self.model, self.initial + rounds * self.per_round)

    def on_epoch_begin(self, epoch, logs=None):
        stages = self.stages_at(epoch)
        if stages == trainable_stages(self.model):
            return
        set_trainable_stages(self.model, stages or ("none",))
        # The traced train step closes over the trainable variable list: retrace it.
        self.model.make_train_function(force=True)
        if self.verbose:
            print(f"\n[kft] epoch {epoch + 1}: trainable backbone stages -> {stages}")
