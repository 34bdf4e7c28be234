"""R2 from COCO: torchvision's COCO-trained Faster R-CNN R50-FPN fine-tuned on your classes.

No Keras library has COCO-pretrained two-stage weights; kft converts torchvision's. Once, where
the checkpoint is (``kft convert`` reads ``.pth`` with torch installed, or an ``.npz`` export)::

    kft convert torchvision fasterrcnn_resnet50_fpn_coco-258fb6c6.pth -o coco_frcnn.keras

then fine-tune on a dataset of your own (VOC, COCO / CVAT / Roboflow JSON or YOLO txt; the
format is detected)::

    python -m kft.run recipes/fasterrcnn_r50fpn_coco_finetune.py \\
        --set data.root=/data/my_dataset --set model.load_from=coco_frcnn.keras

Everything but the class-dependent box predictor (cls_score, bbox_pred) starts from COCO;
load_report.json lists what was reused and what is new. The guide's settings (R2):

* learning rate 1/10 of the pretraining one: torchvision trained with 0.02 for 16 images per
  step, so 0.002 x 4 / 16 = 5e-4 at batch 4, one warm-up epoch;
* cosine annealing with warm restarts T_0 = 5 epochs, T_mult = 2, eta_min = 1e-6 (T3):
  5 + 10 = 15 epochs; gradient clipping at 5.0 (T4); FP16 with loss scaling (T5);
* RPN NMS 0.6 (M7), box-head loss weights cls 1.5 / loc 1.0 (T8);
* stem and layer1 frozen (torchvision's three trainable stages, T1);
* early stopping on bbox AP (T7) over a 10 % hold-out of the training split; metrics.json
  is on the val split, untouched;
* keep-aspect resize 800 / 1333 on a 1344 x 1344 canvas (the converted model's).
"""

from kft.config import Data, Eval, Export, FasterRCNNSettings, Model, Recipe, Train

RECIPE = Recipe(
    name="fasterrcnn_r50fpn_coco_finetune",
    task="detection",
    description="Faster R-CNN R50-FPN from torchvision's COCO weights, the guide's settings (R2)",
    data=Data(root="", format="auto", image_size=800, max_size=1333, resize="keep_aspect",
              train_split="train", val_split="val", max_instances=100,
              detection_augment="default", val_fraction=0.1),
    model=Model(arch="fasterrcnn_resnet50_fpn", load_from="coco_frcnn.keras",
                frcnn=FasterRCNNSettings(rpn_nms_threshold=0.6)),
    train=Train(
        epochs=15, batch_size=4, optimizer="sgd", learning_rate=5e-4, momentum=0.9,
        weight_decay=1e-4, schedule="cosine_restarts", restart_epochs=5, restart_mult=2.0,
        min_lr=1e-6, warmup_epochs=1, clipnorm=5.0, mixed_precision="float16",
        trainable_stages=("layer2", "layer3", "layer4"), cls_weight=1.5, loc_weight=1.0,
        early_stopping_patience=4, monitor="val_bbox_AP"),
    eval=Eval(batch_size=4, every=1, score_threshold=0.05, nms_iou_threshold=0.5),
    export=Export(quantize=("float32", "int8"), representative_samples=100),
)
