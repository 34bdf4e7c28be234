"""R1 (mobile): SSDLite320-MobileNetV3-Large on Pascal VOC 07+12, shipped as TFLite INT8.

SSDLite (Sandler et al., 2018; Howard et al., 2019): a MobileNetV3-Large backbone tapped at
stride 16 and 32, four depthwise-separable extra layers, depthwise-separable class / box heads,
default boxes 0.2..0.95 with ratios 2 and 3 at every level. Training follows the torchvision
SSDLite recipe scaled to one batch of 32 (SGD momentum 0.9, lr 0.15 * 32 / 192 = 0.025 with
warm-up and cosine decay, weight decay 4e-5, SSD augmentation, 3:1 hard negative mining),
for 200 epochs of VOC07+12 trainval (one cosine decay over the run: ``restart_epochs=0``,
so ``--set train.epochs=N`` decays over N epochs too). The end of the run exports float32 and full-integer INT8
TFLite models (uint8 image input, int8 network, float32 in-graph decode + NMS) and compares
their VOC07-test AP with the Keras model in export/report.json.
On x86 with the TF 2.21 wheel the INT8 file runs slower than the float32 one (XNNPACK lacks
int8 hard-swish; benchmarks/ssd.py): time it on the target phone, or use
``model.arch=ssdlite_mobilenet_v2``, whose INT8 file is 1.7x faster than float32 here.

    python -m kft.run recipes/ssdlite_mobilenet_voc.py \\
        --set data.root=/data/VOCdevkit/VOC2007,/data/VOCdevkit/VOC2012 \\
        --set data.val_root=/data/VOCdevkit/VOC2007 \\
        --set model.backbone_weights=weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5

``model.backbone_weights`` is a keras.applications MobileNetV3-Large ImageNet weights file
(include_top=False, alpha 1.0), the one ``keras.applications.MobileNetV3Large(weights=
"imagenet", include_top=False)`` downloads into ~/.keras/models.
"""

from kft.config import Data, Eval, Export, Model, Recipe, SSDSettings, Train

RECIPE = Recipe(
    name="ssdlite_mobilenet_voc",
    task="detection",
    description="SSDLite320-MobileNetV3-Large, VOC07+12 trainval, INT8 TFLite",
    data=Data(root="", format="auto", image_size=320, resize="fixed", train_split="trainval",
              val_split="test", max_instances=64, detection_augment="ssd"),
    model=Model(arch="ssdlite_mobilenet_v3", ssd=SSDSettings(neg_pos_ratio=3.0)),
    train=Train(
        epochs=200, batch_size=32, optimizer="sgd", learning_rate=0.025, momentum=0.9,
        weight_decay=4e-5, schedule="cosine_restarts", restart_epochs=0, restart_mult=1.0,
        min_lr=0.0, warmup_epochs=2, cls_loss="ce",
        box_loss="smooth_l1", early_stopping_patience=0),
    eval=Eval(batch_size=16, every=10),
    export=Export(quantize=("float32", "int8"), representative_samples=200),
)
