"""The lightweight Faster R-CNN: MobileNetV3-Large-FPN on Pascal VOC 07+12, shipped as INT8.

torchvision's ``fasterrcnn_mobilenet_v3_large_320_fpn`` setting: the MobileNetV3-Large body
(frozen BatchNorm) tapped at its two stride-32 outputs, FPN + a pooled level, five anchor sizes x
three ratios per level, 150 proposals at test time, RPN score threshold 0.05, images resized to
320 / 640 (here on a 640 x 640 canvas). Training as the R50 recipe (cosine restarts 5 / x2, clip
5, loss weights 1.5 / 1.0), lr 0.02 scaled to a batch of 8. Exports float32 and full-integer
INT8 TFLite with the post-processing inside, and compares their VOC07-test AP with Keras.

    python -m kft.run recipes/fasterrcnn_mobilenet_v3_fpn_voc.py \\
        --set data.root=/data/VOCdevkit/VOC2007,/data/VOCdevkit/VOC2012 \\
        --set data.val_root=/data/VOCdevkit/VOC2007 \\
        --set model.backbone_weights=mobilenet_v3_large_imagenet.npz

``model.backbone_weights``: torchvision's ``mobilenet_v3_large(weights="IMAGENET1K_V1")`` state
dict saved as ``.npz`` (``numpy.savez(path, **{k: v.numpy() for k, v in sd.items()})``, where
torch is installed).
"""

from kft.config import Data, Eval, Export, FasterRCNNSettings, Model, Recipe, Train

RECIPE = Recipe(
    name="fasterrcnn_mobilenet_v3_fpn_voc",
    task="detection",
    description="Faster R-CNN MobileNetV3-Large-FPN 320, VOC07+12, INT8 TFLite",
    data=Data(root="", format="auto", image_size=320, max_size=640, resize="keep_aspect",
              train_split="trainval", val_split="test", max_instances=64,
              detection_augment="default"),
    model=Model(arch="fasterrcnn_mobilenet_v3_large_fpn",
                frcnn=FasterRCNNSettings(rpn_pre_nms_top_n=(2000, 150),
                                         rpn_post_nms_top_n=(2000, 150))),
    train=Train(
        epochs=15, batch_size=8, optimizer="sgd", learning_rate=0.01, momentum=0.9,
        weight_decay=1e-4, schedule="cosine_restarts", restart_epochs=5, restart_mult=2.0,
        min_lr=1e-6, warmup_epochs=1, clipnorm=5.0, cls_weight=1.5, loc_weight=1.0,
        trainable_stages=("stride16", "stride32", "last_conv"), early_stopping_patience=0),
    eval=Eval(batch_size=8, every=3, score_threshold=0.05, nms_iou_threshold=0.5),
    export=Export(quantize=("float32", "int8"), representative_samples=100),
)
