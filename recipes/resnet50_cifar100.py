"""R7: ResNet-50 fine-tuned on CIFAR-100 with the ResNet guide's settings.

Source: the ResNet fine-tuning guide (shared/seeds, ResNet): unfreeze layer3 + layer4, MLP head
with BatchNorm (Linear(512)-BN-ReLU-Dropout(0.5)-Linear), layer-wise learning rates (layer4 1e-4,
fc 1e-2), SGD momentum 0.9, weight decay 1e-4, label smoothing 0.1, cosine annealing with warm
restarts (T_0=5, T_mult=2, eta_min=1e-6), early stopping on validation F1 with patience 5, 10% of
the target data kept for validation.

Needs the ImageNet preset (downloaded by keras-hub once, or a local preset folder via
--set model.preset=/path) and CIFAR-100 prepared for TFDS (--set data.tfds_download=true once
online, or --set data.tfds_data_dir=/path/to/prepared).
"""

from kft.config import Data, Export, Model, Recipe, Train

RECIPE = Recipe(
    name="resnet50_cifar100",
    description="ResNet-50 ImageNet -> CIFAR-100, layer3+4 unfrozen, layer-wise lr",
    data=Data(
        root="tfds:cifar100",
        image_size=224,  # CIFAR's 32 px upsampled to the pretraining resolution
        train_split="train[:90%]",  # D9: 10% of the target data held out for validation
        val_split="train[90%:]",
        augment="guide",  # the guide's D4 set
    ),
    model=Model(arch="resnet50", preset="resnet_50_imagenet", head="mlp", head_units=512,
                dropout=0.5),
    train=Train(
        epochs=35,  # three full restart cycles: 5 + 10 + 20
        batch_size=32,
        optimizer="sgd",
        learning_rate=1e-2,  # the head's rate (fc 1e-2)
        momentum=0.9,
        weight_decay=1e-4,
        label_smoothing=0.1,
        trainable_stages=("layer3", "layer4"),
        layer_lrs={"layer3": 1e-4, "layer4": 1e-4},
        schedule="cosine_restarts",
        restart_epochs=5,
        restart_mult=2.0,
        min_lr=1e-6,
        clipnorm=5.0,
        early_stopping_patience=5,
        monitor="val_macro_f1",
    ),
    export=Export(quantize=("float32", "int8")),
)
