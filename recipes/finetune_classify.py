"""Fine-tune a pretrained classifier on any image folder, with settings chosen from the data.

    python -m kft.run recipes/finetune_classify.py --set data.root=my_images \\
        --set model.load_from=runs/my_source_model [--set data.augment=orientation]

``data.root`` is an image folder (``root/train/<class>/*`` and ``root/val/<class>/*``, or
``root/<class>/*`` with ``data.val_fraction`` held out); ``model.load_from`` a kft run, its
``model.keras``, a keras-hub preset folder or a keras.applications ``.h5`` (or set
``model.preset``). What the recipe leaves at 0 / "" is settled from the data and the source
model when the run starts, printed, and recorded in ``config.json`` (``"resolved"``):

* the architecture and image size of the ``load_from`` run (else ResNet-50 at 224 px);
* batch size: the largest power of two <= images / 5, within [4, 32], fitted so that no
  image is dropped from an epoch; epochs: about 300 optimiser steps, within [10, 60];
  learning rate: 1e-3 for AdamW (kft.train.plan documents the rules);
* the fine-tuning policy (fastai's ``fine_tune``, the guide's T1/T2): the first 2 epochs train
  only the new head with the backbone frozen, then the whole network trains with the backbone
  at 0.3 x the head's learning rate, on one cosine decay over the run (0.3, not fastai's
  ~0.1: chosen on the dev splits of benchmarks/fewshot.py, README "Few-shot fine-tuning");
* BatchNorm momentum from the run length (model.bn_momentum=0).

``data.augment``: ``natural`` for photos (default), ``orientation`` for digits, documents or
scans where flips change the meaning, ``guide`` for the guide's full D4 set, ``none``.
No early stopping: with a handful of images per class a held-out slice would take too many
of them; the reported figures are on the val split, which chooses nothing.
"""

from kft.config import Data, Eval, Export, Model, Recipe, Train

RECIPE = Recipe(
    name="finetune_classify",
    task="classification",
    description="any image folder fine-tuned from model.load_from; batch, epochs, lr and "
                "architecture chosen from the data and the source model",
    data=Data(root="", image_size=0, augment="natural", val_split="val"),
    model=Model(arch="", head="linear"),
    train=Train(epochs=0, batch_size=0, optimizer="adamw", learning_rate=0.0,
                weight_decay=1e-4, label_smoothing=0.1, schedule="cosine_restarts",
                restart_epochs=0.0, restart_mult=1.0, min_lr=1e-6, head_epochs=2,
                backbone_lr_scale=0.3, early_stopping_patience=0),
    eval=Eval(batch_size=64),
    export=Export(quantize=("float32", "int8"), representative_samples=100),
)
