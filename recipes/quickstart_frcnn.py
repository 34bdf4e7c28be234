"""R10 for two-stage detectors: a Faster R-CNN quick start, offline, minutes on a laptop CPU.

    python -m kft.run recipes/quickstart_frcnn.py

1. Writes kft's generated shapes detection dataset (five classes: circle, square, triangle,
   star, ring; GENERATED.txt says the images are drawn, not real) to data/generated/shapes_det
   if it is missing (the same data as recipes/quickstart.py).
2. Fine-tunes a small Faster R-CNN (kft's three-stage ResNet + FPN, 128 px canvas, images
   scaled to fit with their aspect ratio kept) from the checkpoint shipped in
   pretrained/frcnn_shapes11.keras, which tools/make_quickstart_checkpoint.py --model frcnn
   trained on eleven OTHER shape classes (6000 images of their own seed): backbone, FPN, RPN
   and box head transfer; the class scores and the class-specific box regression are
   re-initialised (load_report.json). The file's SHA-256 is checked before loading. Five
   epochs: what fits the five-minute budget on two CPU cores (not tuned on the val split).
3. Evaluates COCO AP on the val split in original pixels, writes training curves, per-class AP
   and a prediction gallery, exports a full-integer INT8 TFLite model (RoIAlign and NMS as
   TFLite builtins) and compares its AP with the Keras model (export/report.json); kft export
   runs/quickstart_frcnn --formats float32,int8 adds the float32 file.
"""

from kft.config import Data, Eval, Export, FasterRCNNSettings, Model, Recipe, Train

RECIPE = Recipe(
    name="quickstart_frcnn",
    task="detection",
    description="Faster R-CNN (tiny ResNet-FPN) fine-tuned on generated shapes from a shipped "
                "checkpoint, INT8 TFLite",
    data=Data(root="data/generated/shapes_det/VOC", format="voc", generate="shapes",
              class_names=("circle", "square", "triangle", "star", "ring"), image_size=128,
              resize="keep_aspect", generate_num_train=1200, generate_num_val=100,
              train_split="train", val_split="val", max_instances=8,
              detection_augment="default"),
    model=Model(arch="fasterrcnn_resnet_tiny_fpn", bn_momentum=0.9,
                load_from="pretrained/frcnn_shapes11.keras",
                load_from_hash="sha256:"
                "591400f0984ff473cbc737b01a78fb4e33b937eeff5ad09e5a4d8f45be0f9bd9",
                # CPU-sized second stage: fewer proposals and RoIs than torchvision's
                # 2000 / 1000 and 512, a 256-wide box head
                frcnn=FasterRCNNSettings(rpn_pre_nms_top_n=(600, 300),
                                         rpn_post_nms_top_n=(300, 100),
                                         box_batch_size_per_image=128,
                                         representation_size=256)),
    train=Train(epochs=5, batch_size=16, optimizer="adamw", learning_rate=2e-3,
                weight_decay=1e-4, schedule="cosine_restarts", restart_epochs=5,
                restart_mult=1.0, min_lr=1e-5, warmup_steps=20, clipnorm=5.0,
                early_stopping_patience=0),
    eval=Eval(batch_size=50, every=5, score_threshold=0.05, nms_iou_threshold=0.5),
    export=Export(quantize=("int8",), representative_samples=100),
)
