"""R2: Faster R-CNN ResNet-50-FPN fine-tuned on Pascal VOC 07+12 with the guide's settings.

Faster R-CNN (Ren et al., 2015) with an FPN (Lin et al., 2017), torchvision's
``fasterrcnn_resnet50_fpn`` structure (frozen BatchNorm, P2-P6, 2000 / 1000 proposals, 512 RoIs
per image, two-FC box head) on an ImageNet ResNet-50. The guide's fine-tuning settings:

* cosine annealing with warm restarts, T_0 = 5 epochs, T_mult = 2, eta_min = 1e-6 (T3):
  5 + 10 = 15 epochs;
* gradient clipping at norm 5.0 (T4), FP16 mixed precision with loss scaling (T5);
* RPN NMS 0.6 instead of 0.7 (M7), box-head loss weights cls 1.5 / loc 1.0;
* stem and layer1 frozen (torchvision's default of three trainable stages, T1), SGD momentum
  0.9, lr 0.02 x 4 / 16 (torchvision's 0.02 for 16 images per step, scaled to 4), weight decay
  1e-4, one warm-up epoch;
* early stopping on val bbox AP (T7) over a held-out slice of trainval (the reported metrics
  are on VOC07 test, untouched);
* keep-aspect resize 800 / 1333 on a 1344 x 1344 canvas, horizontal flips.

    python -m kft.run recipes/fasterrcnn_r50fpn_voc.py \\
        --set data.root=/data/VOCdevkit/VOC2007,/data/VOCdevkit/VOC2012 \\
        --set data.val_root=/data/VOCdevkit/VOC2007 \\
        --set model.preset=/models/resnet_50_imagenet

``model.preset`` is keras-hub's ``resnet_50_imagenet`` (a name downloads it once; offline, a
folder written by ``Backbone.save_to_preset``). To start from torchvision's COCO detector instead,
see ``recipes/fasterrcnn_r50fpn_coco_finetune.py``.
"""

from kft.config import Data, Eval, Export, FasterRCNNSettings, Model, Recipe, Train

RECIPE = Recipe(
    name="fasterrcnn_r50fpn_voc",
    task="detection",
    description="Faster R-CNN R50-FPN, VOC07+12 trainval, the guide's settings (R2)",
    data=Data(root="", format="auto", image_size=800, max_size=1333, resize="keep_aspect",
              train_split="trainval", val_split="test", max_instances=64,
              detection_augment="default", val_fraction=0.05),
    model=Model(arch="fasterrcnn_resnet50_fpn", preset="resnet_50_imagenet",
                frcnn=FasterRCNNSettings(rpn_nms_threshold=0.6)),
    train=Train(
        epochs=15, batch_size=4, optimizer="sgd", learning_rate=0.005, momentum=0.9,
        weight_decay=1e-4, schedule="cosine_restarts", restart_epochs=5, restart_mult=2.0,
        min_lr=1e-6, warmup_epochs=1, clipnorm=5.0, mixed_precision="float16",
        trainable_stages=("layer2", "layer3", "layer4"), cls_weight=1.5, loc_weight=1.0,
        early_stopping_patience=4, monitor="val_bbox_AP"),
    eval=Eval(batch_size=4, every=1, score_threshold=0.05, nms_iou_threshold=0.5),
    export=Export(quantize=("float32", "int8"), representative_samples=100),
)
