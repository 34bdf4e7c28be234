import keras
import numpy as np
import pytest

from kft.models.backbones.resnet import build_resnet_backbone, stage_names, stage_of
from kft.models.classifier import ResNetClassifier


def test_output_shape_and_logits_dtype(tiny_classifier):
    y = tiny_classifier(np.zeros((2, 64, 64, 3), "float32"))
    assert tuple(y.shape) == (2, 3)
    assert y.dtype == "float32"


@pytest.mark.parametrize("arch,params", [("resnet18", 11_176_512), ("resnet50", 23_561_152)])
def test_standard_depths_have_torchvision_parameter_counts(arch, params):
    # torchvision resnet18/50 without fc: 11,176,512 / 23,508,032 trainable + BN buffers.
    backbone = build_resnet_backbone(arch, 64)
    trainable = sum(int(np.prod(v.shape)) for v in backbone.trainable_weights)
    expected = {"resnet18": 11_176_512, "resnet50": 23_508_032}[arch]
    assert trainable == expected
    assert stage_names(backbone) == ["stem", "layer1", "layer2", "layer3", "layer4"]


def test_stage_of_names():
    assert stage_of("stack2_block0_1_conv/kernel") == "layer3"
    assert stage_of("backbone/stack0_block1_2_bn/gamma") == "layer1"
    assert stage_of("conv1_bn/gamma") == "stem"
    assert stage_of("post_bn/gamma", "layer4") == "layer4"


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_config_and_save_round_trip(tmp_path, head):
    model = ResNetClassifier.from_arch("resnet_tiny", num_classes=5, image_size=64, head=head,
                                       se_stages=("layer2",))
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    y = model.predict_on_batch(x)
    clone = ResNetClassifier.from_config(model.get_config())
    assert clone.count_params() == model.count_params()
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert isinstance(loaded, ResNetClassifier)
    assert loaded.head == head and loaded.se_stages == ("layer2",)
    np.testing.assert_allclose(loaded.predict_on_batch(x), y, atol=1e-5)


def test_mlp_head_layers():
    model = ResNetClassifier.from_arch("resnet_tiny", num_classes=4, image_size=64, head="mlp",
                                       head_units=32)
    names = [layer.name for layer in model.layers]
    assert names[-5:] == ["head_dense", "head_bn", "head_relu", "head_dropout", "predictions"]
    assert model.get_layer("head_dense").units == 32


def test_se_block_starts_as_identity():
    keras.utils.set_random_seed(1)
    plain = ResNetClassifier.from_arch("resnet_tiny", num_classes=3, image_size=64)
    with_se = ResNetClassifier.from_arch("resnet_tiny", num_classes=3, image_size=64,
                                         se_stages=("layer1", "layer3"), se_reduction=16)
    for v in plain.weights:  # same backbone + head weights
        match = [w for w in with_se.weights if w.path == v.path]
        match[0].assign(v)
    x = np.random.default_rng(1).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(with_se.predict_on_batch(x), plain.predict_on_batch(x), atol=1e-4)
    squeeze = with_se.get_layer("se_layer1").squeeze
    assert squeeze.units == 64 // 16


def test_unknown_se_stage_is_rejected():
    with pytest.raises(ValueError, match="se_stages"):
        ResNetClassifier.from_arch("resnet_tiny", num_classes=3, image_size=64,
                                   se_stages=("layer9",))


def test_overfits_one_batch(tiny_classifier, colour_batch):
    x, y = colour_batch
    tiny_classifier.compile(keras.optimizers.Adam(3e-3),
                            keras.losses.CategoricalCrossentropy(from_logits=True),
                            metrics=["accuracy"])
    first = tiny_classifier.evaluate(x, y, verbose=0)[0]
    tiny_classifier.fit(x, y, epochs=40, batch_size=12, verbose=0)
    loss, acc = tiny_classifier.evaluate(x, y, verbose=0)
    assert loss < first * 0.2 and acc == 1.0
