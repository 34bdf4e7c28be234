"""R3: traffic-sign detection with Faster R-CNN R50-FPN: small objects, anchors from the data.

Traffic-sign sets (GTSDB: 1360 x 800 street photos, signs of 16-128 px, 43 classes) have
objects far smaller than COCO's, so torchvision's anchors (32 px at the finest level) match
them poorly. This recipe:

* fits one anchor size per FPN level to the training boxes as the pipeline scales them
  (``model.frcnn.fit_anchors``, M7; the run prints IoU coverage before / after and records
  the sizes in config.json);
* keeps the photo's full width: short side 800, long side up to 1360 (a 1376 x 1376 canvas),
  so a 16 px sign stays 16 px;
* RPN NMS 0.6 (M7) and a 512-wide box head (M7's small-object setting);
* augments without horizontal flips (``orientation``: a mirrored "turn left" sign is a "turn
  right" sign), with D3's rotation, colour and blur;
* trains with the guide's schedule (cosine restarts 5 + 10 epochs, clip 5, FP16, loss weights
  cls 1.5 / loc 1.0), early stopping on bbox AP over a 10 % hold-out of the training split.

    python -m kft.run recipes/fasterrcnn_traffic_signs.py --set data.root=/data/gtsdb_coco

Backbone: keras-hub's ImageNet ResNet-50 (``model.preset``). Starting from torchvision's
COCO detector is better still (its RPN and box head already know objects): convert it
(``kft convert torchvision``, see recipes/fasterrcnn_r50fpn_coco_finetune.py) and add
``--set model.load_from=coco_frcnn.keras --set model.preset=`` (the fitted anchors keep the
RPN's weights; only their sizes change).
"""

from kft.config import Data, Eval, Export, FasterRCNNSettings, Model, Recipe, Train

RECIPE = Recipe(
    name="fasterrcnn_traffic_signs",
    task="detection",
    description="Faster R-CNN R50-FPN for traffic signs: anchors fitted to the data (R3)",
    data=Data(root="", format="auto", image_size=800, max_size=1360, resize="keep_aspect",
              train_split="train", val_split="val", max_instances=50,
              detection_augment="orientation", val_fraction=0.1),
    model=Model(arch="fasterrcnn_resnet50_fpn", preset="resnet_50_imagenet",
                frcnn=FasterRCNNSettings(fit_anchors=True, rpn_nms_threshold=0.6,
                                         representation_size=512)),
    train=Train(
        epochs=15, batch_size=4, optimizer="sgd", learning_rate=0.005, momentum=0.9,
        weight_decay=1e-4, schedule="cosine_restarts", restart_epochs=5, restart_mult=2.0,
        min_lr=1e-6, warmup_epochs=1, clipnorm=5.0, mixed_precision="float16",
        trainable_stages=("layer2", "layer3", "layer4"), cls_weight=1.5, loc_weight=1.0,
        early_stopping_patience=4, monitor="val_bbox_AP"),
    eval=Eval(batch_size=4, every=1, score_threshold=0.05, nms_iou_threshold=0.5),
    export=Export(quantize=("float32", "int8"), representative_samples=100),
)
