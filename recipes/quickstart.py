"""R10: the detection quick start, offline, a few minutes on a laptop CPU.

    python -m kft.run recipes/quickstart.py

1. Writes kft's generated shapes detection dataset (five classes: circle, square, triangle,
   star, ring; GENERATED.txt says the images are drawn, not real) to data/generated/shapes_det
   if it is missing.
2. Fine-tunes SSDLite-MobileNetV2 (width 0.35, 128 px) from the checkpoint shipped in
   pretrained/ssdlite_shapes11.keras, which tools/make_quickstart_checkpoint.py trained on
   eleven OTHER shape classes (cross, hexagon, diamond, pentagon, arrow, heart, semicircle,
   tee, ell, trapezoid, crescent; 6000 images of their own seed): backbone, extra layers and
   box regressor transfer, the class head is re-initialised (see load_report.json). The file's
   SHA-256 is checked before loading. The epoch count and learning rate were chosen by
   tools/tune_quickstart.py on tuning data of other seeds, not on the val split reported here
   (pretrained/quickstart_tuning.json).
3. Evaluates COCO AP on the val split in original pixels, writes training curves, per-class AP
   and a prediction gallery, exports a full-integer INT8 TFLite model (uint8 camera bytes in,
   post-processing inside) and compares its AP with the Keras model (export/report.json), and
   prints a summary.
"""

from kft.config import Data, Eval, Export, Model, Recipe, Train

RECIPE = Recipe(
    name="quickstart",
    task="detection",
    description="SSDLite-MobileNetV2 0.35 fine-tuned on generated shapes, ending in INT8 TFLite",
    data=Data(root="data/generated/shapes_det/VOC", format="voc", generate="shapes",
              class_names=("circle", "square", "triangle", "star", "ring"), image_size=128,
              generate_num_train=1200, generate_num_val=100, train_split="train",
              val_split="val", max_instances=8, detection_augment="default"),
    model=Model(arch="ssdlite_mobilenet_v2", width_multiplier=0.35,
                # BN statistics follow the fine-tuned weights within the short run
                # (keras.applications' 0.999 lags ~1000 steps behind them)
                bn_momentum=0.9,
                load_from="pretrained/ssdlite_shapes11.keras",
                load_from_hash="sha256:"
                "9666ac226fa063d18c9fd078377daf2833d4c9b5b53ebe54259c70c340cd6d8f"),
    # batch 32, lr 4e-3, 8 epochs: the best on tuning data of batch 16 / 32, lr 2e-3 to 8e-3
    # and 6 / 8 / 10 epochs (pretrained/quickstart_tuning.json)
    train=Train(epochs=8, batch_size=32, optimizer="adamw", learning_rate=4e-3,
                weight_decay=1e-4, schedule="cosine_restarts", restart_epochs=8,
                restart_mult=1.0, min_lr=1e-5, warmup_steps=20, clipnorm=10.0,
                early_stopping_patience=0),
    eval=Eval(batch_size=50, every=3),
    # the phone file only (kft export runs/quickstart --formats float32,int8 adds the float32
    # one): the report compares it with the Keras model
    export=Export(quantize=("int8",), representative_samples=100),
)
