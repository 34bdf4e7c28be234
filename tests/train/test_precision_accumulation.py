import keras
import numpy as np

from kft.config import Train
from kft.models.classifier import ResNetClassifier
from kft.tasks.classification import compile_model
from kft.train.optimizers import LayerwiseSGD


def test_mixed_float16_trains_with_loss_scaling(colour_batch):
    keras.config.set_dtype_policy("mixed_float16")
    model = ResNetClassifier.from_arch("resnet_tiny", num_classes=3, image_size=64)
    assert model.get_layer("backbone").get_layer("conv1_conv").compute_dtype == "float16"
    compile_model(model, Train(optimizer="sgd", learning_rate=0.01, clipnorm=5.0,
                               layer_lrs={"layer3": 0.001}), steps_per_epoch=2, num_classes=3)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert isinstance(model.optimizer.inner_optimizer, LayerwiseSGD)
    x, y = colour_batch
    history = model.fit(x, y, epochs=3, batch_size=6, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert model.predict_on_batch(x).dtype == np.float32


def test_gradient_accumulation_updates_every_k_steps(colour_batch):
    model = ResNetClassifier.from_arch("resnet_tiny", num_classes=3, image_size=64)
    compile_model(model, Train(optimizer="sgd", learning_rate=0.05, grad_accum_steps=4,
                               weight_decay=0.0), steps_per_epoch=4, num_classes=3)
    x, y = colour_batch
    kernel = model.get_layer("predictions").kernel
    snapshots = [kernel.numpy().copy()]
    for i in range(4):
        model.train_on_batch(x[i * 3:(i + 1) * 3], y[i * 3:(i + 1) * 3])
        snapshots.append(kernel.numpy().copy())
    for i in range(1, 4):  # accumulating: no update yet
        np.testing.assert_array_equal(snapshots[i], snapshots[0])
    assert not np.array_equal(snapshots[4], snapshots[0])
