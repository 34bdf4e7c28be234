import hashlib

import keras
import numpy as np
import pytest

from kft.models.backbones.resnet import build_resnet_backbone
from kft.models.classifier import ResNetClassifier
from kft.models.weights import (
    WeightsError,
    is_class_dependent,
    load_from,
    source_class_names,
    summarize,
)


def _tiny(num_classes, **kw):
    return ResNetClassifier.from_arch("resnet_tiny", num_classes=num_classes, image_size=64, **kw)


def _var(model, path):
    return next(v for v in model.weights if v.path == path).numpy()


def test_load_from_keras_file_with_a_new_head(tmp_path):
    keras.utils.set_random_seed(0)
    source = _tiny(3)
    source.save(tmp_path / "src.keras")
    keras.utils.set_random_seed(1)
    target = _tiny(5)
    report = load_from(target, str(tmp_path / "src.keras"))
    assert {m["path"] for m in report["shape_mismatch"]} == {"predictions/kernel",
                                                             "predictions/bias"}
    assert report["new"] == []
    np.testing.assert_array_equal(_var(target, "stack2_block0_2_conv/kernel"),
                                  _var(source, "stack2_block0_2_conv/kernel"))
    assert not np.array_equal(_var(target, "predictions/kernel")[:, :3],
                              _var(source, "predictions/kernel"))
    # An MLP head on the target: its layers are reported as new.
    report = load_from(_tiny(5, head="mlp"), str(tmp_path / "src.keras"))
    assert "head_dense/kernel" in report["new"]


def test_checksum_is_verified(tmp_path):
    model = _tiny(3)
    path = tmp_path / "m.keras"
    model.save(path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    assert load_from(_tiny(3), str(path), f"sha256:{sha}")["checksum"] == f"sha256:{sha}"
    load_from(_tiny(3), str(path), f"MD5:{md5.upper()}")
    with pytest.raises(WeightsError, match="checksum mismatch"):
        load_from(_tiny(3), str(path), "md5:" + "0" * 32)
    with pytest.raises(WeightsError, match="sha256:<hex>"):
        load_from(_tiny(3), str(path), "deadbeef")


def test_local_preset_folder(tmp_path):
    keras.utils.set_random_seed(2)
    backbone = build_resnet_backbone("resnet_tiny", 64)
    backbone.save_to_preset(str(tmp_path / "preset"))
    # As the backbone preset of a new classifier ...
    model = ResNetClassifier.from_arch("resnet_tiny", num_classes=4, image_size=64,
                                       preset=str(tmp_path / "preset"))
    np.testing.assert_array_equal(_var(model, "conv1_conv/kernel"),
                                  _var(backbone, "conv1_conv/kernel"))
    # ... and through load_from: the backbone loads, the head stays new.
    report = load_from(_tiny(4), str(tmp_path / "preset"))
    assert "conv1_conv/kernel" in report["loaded"]
    assert "predictions/kernel" in report["new"]


def test_unusable_sources_fail_clearly(tmp_path):
    with pytest.raises(WeightsError, match="no such file"):
        load_from(_tiny(3), str(tmp_path / "missing.keras"))
    (tmp_path / "junk.keras").write_bytes(b"not a zip")
    with pytest.raises(WeightsError, match="junk.keras"):
        load_from(_tiny(3), str(tmp_path / "junk.keras"))
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(WeightsError, match="not a kft run directory"):
        load_from(_tiny(3), str(tmp_path / "empty_dir"))


def test_keras_applications_resnet50_file(tmp_path):
    keras.utils.set_random_seed(3)
    apps = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(64, 64, 3))
    rng = np.random.default_rng(0)
    for layer in apps.layers:  # non-trivial biases and BN statistics
        for w in layer.weights:
            if "bias" in w.path or "moving_mean" in w.path:
                w.assign(rng.normal(0, 0.1, w.shape).astype("float32"))
    path = tmp_path / "resnet50_notop.weights.h5"
    apps.save_weights(path)

    model = ResNetClassifier.from_arch("resnet50", num_classes=3, image_size=64)
    report = load_from(model, str(path))
    assert len(report["loaded"]) == len([v for v in model.backbone.weights])
    # The stem computes the same function: the conv bias is folded into conv1_bn.
    x = rng.uniform(-1, 1, (2, 64, 64, 3)).astype("float32")
    ours = keras.Model(model.backbone.input, model.backbone.get_layer("conv1_relu").output)
    theirs = keras.Model(apps.input, apps.get_layer("conv1_relu").output)
    np.testing.assert_allclose(ours(x), theirs(x), atol=1e-3)
    with pytest.raises(WeightsError, match="ResNet-50/101/152"):
        load_from(_tiny(3), str(path))


def test_missing_preset_fails_with_a_clear_error(tmp_path):
    with pytest.raises(WeightsError, match="(?s)model.preset=.*local preset folder"):
        ResNetClassifier.from_arch("resnet_tiny", num_classes=3, image_size=64,
                                   preset=str(tmp_path / "no_such_preset"))


def test_same_class_count_other_names_reinitialises_the_class_layers(tmp_path):
    import json

    keras.utils.set_random_seed(0)
    run = tmp_path / "run"
    run.mkdir()
    source = _tiny(3)
    source.save(run / "model.keras")
    (run / "class_names.json").write_text(json.dumps(["cat", "dog", "bird"]))
    head = ("predictions/kernel", "predictions/bias")
    # other classes, same count: the head stays new, the backbone is loaded
    keras.utils.set_random_seed(1)
    target = _tiny(3)
    fresh = _var(target, "predictions/kernel")
    report = load_from(target, str(run), class_names=["car", "bus", "van"])
    assert sorted(report["reinitialised"]) == sorted(head)
    assert report["classes"] == {"source": ["cat", "dog", "bird"],
                                 "model": ["car", "bus", "van"], "same": False}
    np.testing.assert_array_equal(_var(target, "predictions/kernel"), fresh)
    np.testing.assert_array_equal(_var(target, "stack2_block0_2_conv/kernel"),
                                  _var(source, "stack2_block0_2_conv/kernel"))
    assert "class-dependent variables kept new" in summarize(report)
    # a reordering is other classes too (logit k means another class)
    assert load_from(_tiny(3), str(run / "model.keras"),
                     class_names=["dog", "cat", "bird"])["reinitialised"]
    # the same classes, or names unknown on either side: everything that fits is loaded
    for spec, names in [(run, ["cat", "dog", "bird"]), (run, None)]:
        target = _tiny(3)
        report = load_from(target, str(spec), class_names=names)
        assert report["reinitialised"] == [] and set(head) <= set(report["loaded"])
        np.testing.assert_array_equal(_var(target, "predictions/kernel"),
                                      _var(source, "predictions/kernel"))
    bare = tmp_path / "bare.keras"
    source.save(bare)
    assert load_from(_tiny(3), str(bare), class_names=["car", "bus", "van"])["reinitialised"] == []
    # the record beside a shipped file names its classes
    (tmp_path / "bare.json").write_text(json.dumps({"classes": ["cat", "dog", "bird"]}))
    assert source_class_names(str(bare)) == ["cat", "dog", "bird"]
    assert sorted(load_from(_tiny(3), str(bare), class_names=["a", "b", "c"])["reinitialised"]) \
        == sorted(head)
    # other classes and another count: the head is a shape mismatch, not a re-init
    report = load_from(_tiny(4), str(run), class_names=["a", "b", "c", "d"])
    assert {m["path"] for m in report["shape_mismatch"]} == {"predictions/kernel"} | (
        {"predictions/bias"})
    assert report["reinitialised"] == []


def test_ssd_class_predictors_are_the_class_dependent_variables():
    from kft.models.ssd import SSD

    model = SSD.from_arch("ssdlite_mobilenet_v2", num_classes=3, image_size=96,
                          width_multiplier=0.35)
    flagged = sorted(v.path for v in model.weights if is_class_dependent(v.path))
    assert flagged and all("/cls_" in p and p.rsplit("/", 2)[-2].endswith("_pw")
                           for p in flagged), flagged
    # kernel and bias of every class predictor, one per level; nothing of the box branch
    levels = len(model.ssd_head.cls_predictors)
    assert len(flagged) == 2 * levels
    assert not any(is_class_dependent(v.path) for v in model.weights if "box_" in v.path)
