"""R1: SSD300-VGG16 on Pascal VOC 07+12 trainval, evaluated on VOC07 test (Liu et al., 2016).

The paper's settings: SGD momentum 0.9, weight decay 5e-4 (coupled through momentum, as Caffe
applies it), batch 32, default boxes of scales 0.1, 0.2, 0.37 ... 1.05 on Caffe's strides
(8, 16, 32, 64, 100, 300), lr 1e-3 (here with a linear warm-up) divided by 10 at 80k and 100k of 120k iterations (VOC07+12 trainval has 16,551 images:
517 iterations per epoch, so milestones at epochs 155 and 193 of 232), photometric distortion +
zoom-out (expand) + IoU-constrained crop + flip, 3:1 hard negative mining, smooth L1 + CE.

    python -m kft.run recipes/ssd_voc.py \\
        --set data.root=/data/VOCdevkit/VOC2007,/data/VOCdevkit/VOC2012 \\
        --set data.val_root=/data/VOCdevkit/VOC2007 \\
        --set model.backbone_weights=vgg16_weights_tf_dim_ordering_tf_kernels.h5

Validation (COCO AP every 10 epochs, VOC07 11-point mAP at the end) runs on data.val_root
(VOC2007) split "test". The end of the run exports float32 and full-integer INT8 TFLite models
and compares their AP with the Keras model (export/report.json).
"""

from kft.config import Data, Eval, Export, Model, Recipe, SSDSettings, Train
from kft.ops.anchors import SSD300_STEPS, SSD300_VOC_SIZES

RECIPE = Recipe(
    name="ssd300_voc",
    task="detection",
    description="SSD300-VGG16, VOC07+12 trainval",
    data=Data(root="", format="auto", image_size=300, resize="fixed", train_split="trainval",
              val_split="test", max_instances=64, detection_augment="ssd"),
    # the paper's VOC default boxes: scales 0.1, 0.2 ... 1.05 and Caffe's strides
    model=Model(arch="ssd300_vgg16",
                ssd=SSDSettings(sizes=SSD300_VOC_SIZES, steps=SSD300_STEPS, neg_pos_ratio=3.0)),
    train=Train(
        epochs=232, batch_size=32, optimizer="sgd", learning_rate=1e-3, momentum=0.9,
        weight_decay=5e-4, weight_decay_mode="coupled", schedule="warmup_multistep", warmup_epochs=1,
        warmup_factor=0.001, milestones=(155, 193), gamma=0.1,
        cls_loss="ce", box_loss="smooth_l1", early_stopping_patience=0),
    eval=Eval(batch_size=16, every=10),
    export=Export(quantize=("float32", "int8"), representative_samples=200),
)
