"""R4: industrial defect detection with Faster R-CNN R50-FPN: small, dense objects.

Defects (scratches, pits, inclusions) are mostly under 32 x 32 px and many per image. The
guide's settings for them:

* the smallest anchor 8 px: anchor sizes 8, 16, 32, 64, 128 on P2-P6 (M7; torchvision's
  32 ... 512 leave a 10 px defect with no anchor of IoU 0.5);
* a 512-wide box head (two FC layers of 512 instead of 1024, M4 / M7);
* CutMix (``data.batch_augment``: with p 0.5 a rectangle of another image of the batch and
  its defects are pasted in), on top of D3's flip, rotation, colour and blur;
* RPN NMS 0.6 and up to 200 detections per image for dense defects;
* the guide's schedule (cosine restarts 5 + 10 epochs, clip 5, FP16, loss weights cls 1.5 /
  loc 1.0), early stopping on bbox AP over a 10 % hold-out of the training split.

    python -m kft.run recipes/fasterrcnn_defects.py --set data.root=/data/neu_det

The short side is 800 px (image_size; long side up to 1333): defect images are often small
(NEU-DET: 200 x 200), so this upsamples them 4x, which is what lets 8 px anchors on a stride-4
level see a 2 px scratch. For anchors fitted to your boxes instead, ``--set
model.frcnn.anchor_sizes=[] --set model.frcnn.fit_anchors=true``.
"""

from kft.config import Data, Eval, Export, FasterRCNNSettings, Model, Recipe, Train

RECIPE = Recipe(
    name="fasterrcnn_defects",
    task="detection",
    description="Faster R-CNN R50-FPN for small dense defects: 8 px anchors, 512 head, CutMix (R4)",
    data=Data(root="", format="auto", image_size=800, max_size=1333, resize="keep_aspect",
              train_split="train", val_split="val", max_instances=200,
              detection_augment="default", batch_augment="cutmix", val_fraction=0.1),
    model=Model(arch="fasterrcnn_resnet50_fpn", preset="resnet_50_imagenet",
                frcnn=FasterRCNNSettings(anchor_sizes=((8,), (16,), (32,), (64,), (128,)),
                                         rpn_nms_threshold=0.6, representation_size=512)),
    train=Train(
        epochs=15, batch_size=4, optimizer="sgd", learning_rate=0.005, momentum=0.9,
        weight_decay=1e-4, schedule="cosine_restarts", restart_epochs=5, restart_mult=2.0,
        min_lr=1e-6, warmup_epochs=1, clipnorm=5.0, mixed_precision="float16",
        trainable_stages=("layer2", "layer3", "layer4"), cls_weight=1.5, loc_weight=1.0,
        early_stopping_patience=4, monitor="val_bbox_AP"),
    eval=Eval(batch_size=4, every=1, score_threshold=0.05, nms_iou_threshold=0.5,
              max_detections=200),
    export=Export(quantize=("float32", "int8"), representative_samples=100),
)
