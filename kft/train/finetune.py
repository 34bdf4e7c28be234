"""Freezing, progressive unfreezing and layer-wise learning rates by backbone stage (T1, T2).

Any model with a ``backbone`` attribute: ResNet classifiers name stages as in the guides
(``stem``, ``layer1`` ... ``layerN``, bottom-up); SSD's VGG16 ``block1`` ... ``block5``, ``fc``;
SSDLite's MobileNets ``stem``, ``stride4`` ... ``stride32``. The heads, any inserted SE blocks
and SSD's extra layers always train. A frozen layer has ``trainable=False``, which in Keras 3 also
keeps its BatchNormalization in inference mode (moving statistics neither used from the batch nor
updated).
"""

from __future__ import annotations

import re

import keras

from kft.models.backbones import resnet


def _stage_api(backbone):
    """``(stage names bottom-up, layer name -> stage or None)`` of a backbone.

    kft's detector backbones (SSD VGG16, SSDLite MobileNet) define ``stage_names()`` and
    ``stage_of(name)``; keras-hub's ResNet uses torchvision's names (``stem``, ``layer1``...).
    A layer of no stage (SSD extra layers) always trains, like the heads.
    """
    if callable(getattr(backbone, "stage_of", None)):
        return list(backbone.stage_names()), backbone.stage_of
    names = resnet.stage_names(backbone)
    return names, lambda name: resnet.stage_of(name, names[-1])


def _leaf_layers(backbone) -> list:
    """The backbone's layers that own weights, nested sub-models opened."""
    return [layer for layer in backbone._flatten_layers(include_self=False, recursive=True)
            if layer.weights and not isinstance(layer, keras.Model)]


def resolve_stages(model, stages) -> list[str]:
    """Expands ``("all",)`` / ``("none",)`` / stage names into a validated list of stages."""
    names, _ = _stage_api(model.backbone)
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
    """Makes exactly ``stages`` of ``model.backbone`` trainable (layers of no stage always
    train); returns the resolved list."""
    stages = resolve_stages(model, stages)
    backbone = model.backbone
    _, stage_of = _stage_api(backbone)
    backbone.trainable = True
    for layer in backbone._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.Model):
            layer.trainable = True  # containers: their own setter would recurse or not
    for layer in _leaf_layers(backbone):  # set one by one: a container's setter may not recurse
        stage = stage_of(layer.name)
        layer.trainable = stage is None or stage in stages
    return stages


def trainable_stages(model) -> list[str]:
    """The backbone stages whose layers are all trainable now, bottom-up."""
    names, stage_of = _stage_api(model.backbone)
    leaves = [(layer, stage_of(layer.name)) for layer in _leaf_layers(model.backbone)]
    frozen = {stage for layer, stage in leaves
              if not (layer.trainable and model.backbone.trainable)}
    present = {stage for _, stage in leaves}
    return [s for s in names if s in present and s not in frozen]


def top_down_stages(model, count: int) -> list[str]:
    """The ``count`` highest stages, e.g. count=2 on a ResNet-50 -> [layer3, layer4]."""
    names, _ = _stage_api(model.backbone)
    count = max(0, min(count, len(names)))
    return names[len(names) - count:]


def candidate_trainable_variables(model) -> list:
    """Every variable that is trainable when all stages are, in a stable order.

    The optimiser is built on this list up front so that stages unfrozen later find their slot
    variables, and so that checkpoints always hold the same optimiser variables.
    """
    layers = model.backbone._flatten_layers(include_self=False, recursive=True)
    saved = [(layer, layer.trainable) for layer in layers]
    backbone_trainable = model.backbone.trainable
    model.backbone.trainable = True
    for layer, _ in saved:  # a functional model's setter does not reach its layers
        layer.trainable = True
    variables = list(model.trainable_variables)
    model.backbone.trainable = backbone_trainable
    for layer, trainable in saved:
        layer.trainable = trainable
    return variables


def stage_lr_multipliers(model, layer_lrs: dict, base_lr: float) -> dict:
    """Turns ``{"layer4": 1e-4, "stem": 0}`` into ``{regex: lr / base_lr}`` for the optimiser.

    Each stage's pattern names its layers (variable paths start with the layer name). The head
    (everything outside the backbone stages) keeps ``base_lr``; the key ``"head"`` sets it.
    """
    names, stage_of = _stage_api(model.backbone)
    unknown = [s for s in layer_lrs if s not in names + ["head"]]
    if unknown:
        raise ValueError(f"train.layer_lrs: unknown stage {unknown[0]!r}; valid: "
                         f"{names + ['head']}")
    members: dict[str, list[str]] = {}
    for layer in _leaf_layers(model.backbone):
        stage = stage_of(layer.name)
        if stage is not None:
            members.setdefault(stage, []).append(layer.name)

    def mult(lr):
        return float(lr) / base_lr if base_lr else 0.0

    patterns = {}
    for stage in names:  # stages first (first match wins), the head's catch-all last
        if stage in layer_lrs or "head" in layer_lrs:
            alternatives = "|".join(re.escape(n) for n in sorted(members.get(stage, ())))
            if alternatives:
                patterns[rf"^(?:{alternatives})/"] = mult(layer_lrs.get(stage, base_lr))
    if "head" in layer_lrs:
        patterns[".*"] = mult(layer_lrs["head"])
    return patterns


class FreezeSchedule(keras.callbacks.Callback):
    """Base of the freezing schedules: the trainable backbone stages are a pure function of
    the epoch (:meth:`stages_at`), so a resumed run freezes exactly as an uninterrupted one.
    The model's optimiser must have been built on :func:`candidate_trainable_variables`."""

    def __init__(self, verbose: bool = True):
        super().__init__()
        self.verbose = verbose

    def stages_at(self, epoch: int) -> list[str]:
        raise TypeError(f"{type(self).__name__} must define stages_at(epoch)")

    def on_epoch_begin(self, epoch, logs=None):
        stages = self.stages_at(epoch)
        if stages == trainable_stages(self.model):
            return
        set_trainable_stages(self.model, stages or ("none",))
        # The traced train step closes over the trainable variable list: retrace it.
        self.model.make_train_function(force=True)
        if self.verbose:
            what = ("only the head trains (backbone frozen)" if not stages else
                    f"trainable backbone stages -> {stages}")
            print(f"\n[kft] epoch {epoch + 1}: {what}")


class ProgressiveUnfreeze(FreezeSchedule):
    """Unfreezes the backbone top down: ``initial`` stages first, ``per_round`` more every
    ``every`` epochs (the guide: 1-2 residual stages per round)."""

    def __init__(self, initial: int, every: int, per_round: int = 1, verbose: bool = True):
        super().__init__(verbose)
        self.initial, self.every, self.per_round = initial, every, per_round

    def stages_at(self, epoch: int) -> list[str]:
        rounds = epoch // self.every if self.every > 0 else 0
        return top_down_stages(self.model, self.initial + rounds * self.per_round)


def scaled_backbone_lrs(model, scale: float, base_lr: float, layer_lrs: dict) -> dict:
    """``train.layer_lrs`` with every backbone stage not named there at ``base_lr * scale``
    (``train.backbone_lr_scale``; 1 leaves ``layer_lrs`` as it is)."""
    if scale == 1.0:
        return dict(layer_lrs)
    names, _ = _stage_api(model.backbone)
    return {**{stage: base_lr * scale for stage in names}, **layer_lrs}


class HeadFirst(FreezeSchedule):
    """The fine-tuning policy of fastai's ``fine_tune`` and the guide's T1: the backbone is
    frozen for the first ``head_epochs`` epochs (only the new head and layers outside the
    backbone train), then ``stages`` train (``train.trainable_stages``)."""

    def __init__(self, head_epochs: int, stages, verbose: bool = True):
        super().__init__(verbose)
        self.head_epochs, self.stages = int(head_epochs), tuple(stages)

    def stages_at(self, epoch: int) -> list[str]:
        return [] if epoch < self.head_epochs else resolve_stages(self.model, self.stages)
