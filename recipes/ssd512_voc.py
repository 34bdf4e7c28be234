"""R1: SSD512-VGG16 on Pascal VOC 07+12 trainval, evaluated on VOC07 test (Liu et al., 2016).

The paper's SSD512 settings are SSD300's (SGD momentum 0.9, weight decay 5e-4 coupled as in Caffe, lr 1e-3 with
warm-up, x0.1 at 80k and 100k of 120k iterations, batch 32, photometric + expand + IoU crop +
flip, 3:1 hard negative mining, smooth L1 + CE) at 512 px with a seventh feature level (conv12,
1x1) and default-box sizes 0.07..0.9 (``kft.ops.anchors.SSD512_SIZES``): 24,564 default boxes.
About 3x the compute of SSD300 per image; lower ``train.batch_size`` (and the learning rate with
it) if 32 images of 512 px do not fit your GPU.

    python -m kft.run recipes/ssd512_voc.py \\
        --set data.root=/data/VOCdevkit/VOC2007,/data/VOCdevkit/VOC2012 \\
        --set data.val_root=/data/VOCdevkit/VOC2007 \\
        --set model.backbone_weights=vgg16_weights_tf_dim_ordering_tf_kernels.h5

Exports float32 and full-integer INT8 TFLite models after training (export/report.json compares
their VOC07-test AP with the Keras model).
"""

from kft.config import Data, Eval, Export, Model, Recipe, SSDSettings, Train
from kft.ops.anchors import SSD512_STEPS

RECIPE = Recipe(
    name="ssd512_voc",
    task="detection",
    description="SSD512-VGG16, VOC07+12 trainval",
    data=Data(root="", format="auto", image_size=512, resize="fixed", train_split="trainval",
              val_split="test", max_instances=64, detection_augment="ssd"),
    # the paper's VOC default boxes (Caffe SSD512 sizes) and strides
    model=Model(arch="ssd512_vgg16", ssd=SSDSettings(steps=SSD512_STEPS, neg_pos_ratio=3.0)),
    train=Train(
        epochs=232, batch_size=32, optimizer="sgd", learning_rate=1e-3, momentum=0.9,
        weight_decay=5e-4, weight_decay_mode="coupled", schedule="warmup_multistep", warmup_epochs=1,
        warmup_factor=0.001, milestones=(155, 193), gamma=0.1,
        cls_loss="ce", box_loss="smooth_l1", early_stopping_patience=0),
    eval=Eval(batch_size=8, every=10),
    export=Export(quantize=("float32", "int8"), representative_samples=200),
)
