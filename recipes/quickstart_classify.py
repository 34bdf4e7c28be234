"""R10 (classification): a laptop-CPU quick start on data kft generates itself.

Writes kft's synthetic shapes dataset (six shape classes; GENERATED.txt says so) to
data/generated/shapes_cls if it is missing, trains a tiny 3-stage ResNet with the foundation's
controls (cosine restarts, clipping, label smoothing, the guide's D4 augmentation, early stopping on val
macro-F1), evaluates it and exports float32 and full-integer INT8 TFLite models. A few minutes on
2 CPU cores, offline.
"""

from kft.config import Data, Export, Model, Recipe, Train

RECIPE = Recipe(
    name="quickstart_classify",
    description="tiny ResNet on generated shapes, ending in an INT8 .tflite",
    data=Data(root="data/generated/shapes_cls", generate="shapes", image_size=64, augment="guide"),
    model=Model(arch="resnet_tiny", head="linear"),
    train=Train(
        epochs=28,  # three cosine cycles: 4 + 8 + 16 epochs
        batch_size=32,
        optimizer="adamw",
        learning_rate=3e-3,
        weight_decay=1e-4,
        label_smoothing=0.1,
        schedule="cosine_restarts",
        restart_epochs=4,
        restart_mult=2.0,
        min_lr=1e-5,
        warmup_epochs=1,
        clipnorm=5.0,
        # no early stopping: the run ends at the bottom of the third cosine cycle (epoch 28),
        # and selecting on a hold-out would take 10% of the few training images away
        early_stopping_patience=0,
    ),
    export=Export(quantize=("float32", "int8"), representative_samples=100),
)
