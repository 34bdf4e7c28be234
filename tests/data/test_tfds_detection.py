"""read_tfds_detection offline: tiny TFDS builders shaped like ``voc`` and ``coco``, prepared
into tmp_path and loaded by name."""

from xml.etree import ElementTree as ET

import numpy as np
import pytest
import tensorflow_datasets as tfds

from kft.data.readers.detection import load_image
from kft.data.readers.tfds import TFDSNotPreparedError
from kft.data.readers.tfds_detection import detection_keys, read_tfds_detection
from kft.data.readers.voc import read_voc
from kft.data.shapes import SHAPE_CLASSES, make_shapes_detection

CLASSES = list(SHAPE_CLASSES[:3])


def _voc_objects(xml_path):
    """Objects as TFDS's voc builder makes them: 1-based values divided by the size."""
    root = ET.parse(xml_path).getroot()
    w, h = float(root.findtext("size/width")), float(root.findtext("size/height"))
    objects = []
    for obj in root.iter("object"):
        xmin, ymin, xmax, ymax = (float(obj.findtext(f"bndbox/{t}"))
                                  for t in ("xmin", "ymin", "xmax", "ymax"))
        objects.append({"bbox": tfds.features.BBox(ymin / h, xmin / w, ymax / h, xmax / w),
                        "label": obj.findtext("name"),
                        "is_difficult": obj.findtext("difficult") == "1"})
    return objects


class KftTinyVoc(tfds.core.GeneratorBasedBuilder):
    """kft's shapes dataset (VOC layout) written with the features of TFDS's ``voc``."""

    VERSION = tfds.core.Version("1.0.0")
    VOC_ROOT = None  # set by the fixture

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(),
            "image/filename": tfds.features.Text(),
            "objects": tfds.features.Sequence({
                "bbox": tfds.features.BBoxFeature(),
                "label": tfds.features.ClassLabel(names=CLASSES),
                "is_difficult": np.bool_,
            }),
        }))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        root = self.VOC_ROOT
        for stem in (root / "ImageSets/Main/trainval.txt").read_text().split():
            yield stem, {"image": root / "JPEGImages" / f"{stem}.jpg",
                         "image/filename": f"{stem}.jpg",
                         "objects": _voc_objects(root / "Annotations" / f"{stem}.xml")}


class KftTinyCoco(tfds.core.GeneratorBasedBuilder):
    """Two images with the ``coco`` features (``image/id``, ``is_crowd``); one has no objects."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "image/id": np.int64,
            "objects": tfds.features.Sequence({
                "bbox": tfds.features.BBoxFeature(),
                "label": tfds.features.ClassLabel(names=["a", "b"]),
                "is_crowd": np.bool_,
            }),
        }))

    def _split_generators(self, dl_manager):
        return {"validation": self._generate_examples()}

    def _generate_examples(self):
        image = np.zeros((20, 40, 3), np.uint8)
        yield 0, {"image": image, "image/id": 7, "objects": [
            {"bbox": tfds.features.BBox(0.25, 0.5, 1.0, 0.75), "label": 1, "is_crowd": True}]}
        yield 1, {"image": image, "image/id": 9, "objects": []}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tfds")
    voc = make_shapes_detection(tmp / "shapes", classes=CLASSES, num_train=3, num_val=1,
                                image_size=(32, 40)) / "VOC"
    KftTinyVoc.VOC_ROOT = voc
    KftTinyVoc(data_dir=str(tmp / "data")).download_and_prepare()
    KftTinyCoco(data_dir=str(tmp / "data")).download_and_prepare()
    return tmp / "data", voc


def test_voc_like_dataset_matches_the_voc_reader(prepared):
    data_dir, voc = prepared
    ds, class_names, n = read_tfds_detection("kft_tiny_voc", "train", data_dir=data_dir,
                                             one_based=True)
    assert class_names == CLASSES and n == 4
    reference = {r.image_id.split("/")[1] + ".jpg": r
                 for r in read_voc(voc, "trainval", class_names=CLASSES).records}
    examples = list(ds.as_numpy_iterator())
    assert len(examples) == 4
    for ex in examples:
        record = reference[ex["image_id"].decode()]
        assert ex["image"].dtype == np.uint8 and ex["image"].shape == (32, 40, 3)
        np.testing.assert_allclose(ex["boxes"], record.boxes, atol=1e-4)
        assert ex["boxes"].dtype == np.float32 and ex["labels"].dtype == np.int32
        assert ex["labels"].tolist() == record.labels.tolist()
        assert ex["difficult"].tolist() == record.difficult.tolist()
        assert not ex["iscrowd"].any()
        # Same JPEG; TF and PIL decoders differ by a few levels.
        diff = np.abs(ex["image"].astype(int) - load_image(record).astype(int))
        assert diff.mean() < 4


def test_coco_like_dataset_and_errors(prepared):
    data_dir, _ = prepared
    ds, class_names, n = read_tfds_detection("kft_tiny_coco", "validation", data_dir=data_dir)
    assert class_names == ["a", "b"] and n == 2
    first, empty = list(ds.as_numpy_iterator())
    assert first["image_id"] == 7 and empty["image_id"] == 9
    np.testing.assert_allclose(first["boxes"], [[20, 5, 30, 20]], atol=1e-4)
    assert first["labels"].tolist() == [1] and first["iscrowd"].tolist() == [True]
    assert first["difficult"].tolist() == [False]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
    with pytest.raises(ValueError, match="no split 'train'"):
        read_tfds_detection("kft_tiny_coco", "train", data_dir=data_dir)
    with pytest.raises(TFDSNotPreparedError, match="kft_tiny_coco"):
        read_tfds_detection("kft_tiny_coco", "validation", data_dir=data_dir / "elsewhere")


def test_a_classification_dataset_is_refused():
    features = tfds.features.FeaturesDict({"image": tfds.features.Image(shape=(8, 8, 3)),
                                           "label": tfds.features.ClassLabel(num_classes=2)})
    with pytest.raises(ValueError, match="BBoxFeature"):
        detection_keys(features, "cifar10")
