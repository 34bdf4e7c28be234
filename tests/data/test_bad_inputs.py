"""A corpus of bad inputs for the VOC, COCO and Cityscapes readers.

Each case writes a small dataset with one defect and says what must happen: a report entry
whose path ends with the named file and whose field/reason names the problem, a counter, or a
clear error naming the file. Whatever the reader returns must then load without crashing
(image via PIL and via tf.io.decode_image, masks when present).
"""

import json
from dataclasses import dataclass

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kft.data.readers.cityscapes import read_cityscapes
from kft.data.readers.coco import read_coco
from kft.data.readers.detection import to_example
from kft.data.readers.voc import read_voc

H, W = 24, 32
NAMES = ["circle", "square"]


@dataclass
class Expect:
    kind: str  # "skip" | "convert" | "error" | "count" | "usable"
    file: str = ""  # the report entry's path / the error message must end with / contain it
    text: str = ""  # must appear in the entry's field + reason, or in the error message
    count: str = ""  # for kind == "count": a counter that must be 1 or more


CASES = {}


def case(name, expect):
    def register(build):
        CASES[name] = (build, expect)
        return build
    return register


# ---------------------------------------------------------------------------- image writers

def rgb(value=90):
    return Image.fromarray(np.full((H, W, 3), value, np.uint8))


def write_image(path, kind="jpeg"):
    """Writes a 32x24 image of the given kind (or a broken file) to ``path``."""
    if kind == "jpeg":
        rgb().save(path, format="JPEG")
    elif kind == "exif":
        exif = Image.Exif()
        exif[0x0112] = 8
        rgb().save(path, format="JPEG", exif=exif.tobytes())
    elif kind == "rgba":
        arr = np.dstack([np.full((H, W, 3), 90, np.uint8), np.full((H, W), 255, np.uint8)])
        arr[:, :4, 3] = 0
        Image.fromarray(arr).save(path, format="PNG")
    elif kind == "cmyk":
        rgb().convert("CMYK").save(path, format="JPEG")
    elif kind == "gray16":
        Image.fromarray(np.full((H, W), 3000, np.uint16)).save(path, format="PNG")
    elif kind == "gray":
        rgb().convert("L").save(path, format="JPEG")
    elif kind == "truncated":
        rgb().save(path, format="JPEG")
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not an image\n")
    else:
        raise ValueError(kind)


# ---------------------------------------------------------------------------------- VOC

def obj(name="circle", xmin="2", ymin="2", xmax="10", ymax="10", difficult="0", bndbox=True):
    """One <object>; a None value leaves that element out."""
    parts = [f"<name>{name}</name>" if name is not None else "",
             f"<difficult>{difficult}</difficult>" if difficult is not None else ""]
    if bndbox:
        coords = "".join(f"<{t}>{v}</{t}>" for t, v in
                         (("xmin", xmin), ("ymin", ymin), ("xmax", xmax), ("ymax", ymax))
                         if v is not None)
        parts.append(f"<bndbox>{coords}</bndbox>")
    return "<object>" + "".join(parts) + "</object>"


def xml(*objects, width=W, height=H, filename="bad.jpg", size=True):
    size_xml = (f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"
                if size else "")
    return (f"<annotation><filename>{filename}</filename>{size_xml}{''.join(objects)}"
            "</annotation>")


def voc(tmp, bad_xml=None, image="jpeg", image_name="bad.jpg", split_lines=None,
        class_names=NAMES, **kw):
    """A VOC root with a good image and a 'bad' one; returns the reader call."""
    root = tmp / "VOC2007"
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / d).mkdir(parents=True)
    write_image(root / "JPEGImages" / "good.jpg")
    (root / "Annotations" / "good.xml").write_text(xml(obj(), filename="good.jpg"))
    if bad_xml is not None:
        (root / "Annotations" / "bad.xml").write_text(bad_xml)
    if image is not None:
        write_image(root / "JPEGImages" / image_name, image)
    lines = ["good", "bad"] if split_lines is None else split_lines
    (root / "ImageSets/Main/train.txt").write_text("\n".join(lines) + "\n")
    return lambda: read_voc(root, "train", class_names=class_names, **kw)


@case("voc_malformed_xml", Expect("skip", "bad.xml", "xml"))
def _(tmp):
    return voc(tmp, "<annotation><object><name>circle</name>")


@case("voc_xml_missing", Expect("skip", "bad.xml", "annotation"))
def _(tmp):
    return voc(tmp, None)


@case("voc_xml_not_utf8", Expect("skip", "bad.xml", "xml"))
def _(tmp):
    reader = voc(tmp, "")
    (tmp / "VOC2007/Annotations/bad.xml").write_bytes(b"<annotation>\xff\xfe</annot")
    return reader


@case("voc_image_missing", Expect("skip", "bad.jpg", "image"))
def _(tmp):
    return voc(tmp, xml(obj()), image=None)


@case("voc_unknown_class", Expect("skip", "bad.xml", "object[0].name"))
def _(tmp):
    return voc(tmp, xml(obj("zebra")))


@case("voc_unknown_class_strict", Expect("error", "bad.xml", "zebra"))
def _(tmp):
    return voc(tmp, xml(obj(), obj("zebra")), strict=True)


@case("voc_box_partly_outside", Expect("convert", "bad.xml", "object[0].bndbox"))
def _(tmp):
    return voc(tmp, xml(obj(xmax="100")))


@case("voc_box_entirely_outside", Expect("skip", "bad.xml", "outside"))
def _(tmp):
    return voc(tmp, xml(obj(xmin="50", xmax="60")))


@case("voc_zero_width_box", Expect("skip", "bad.xml", "degenerate"))
def _(tmp):
    return voc(tmp, xml(obj(xmin="5", xmax="4")))


@case("voc_negative_box", Expect("skip", "bad.xml", "degenerate"))
def _(tmp):
    return voc(tmp, xml(obj(xmin="12", xmax="3")))


@case("voc_nan_coordinate", Expect("skip", "bad.xml", "object[0].bndbox.ymin"))
def _(tmp):
    return voc(tmp, xml(obj(ymin="nan")))


@case("voc_inf_coordinate", Expect("skip", "bad.xml", "object[0].bndbox.xmax"))
def _(tmp):
    return voc(tmp, xml(obj(xmax="inf")))


@case("voc_non_numeric_coordinate", Expect("skip", "bad.xml", "object[0].bndbox.xmin"))
def _(tmp):
    return voc(tmp, xml(obj(xmin="abc")))


@case("voc_empty_coordinate", Expect("skip", "bad.xml", "object[0].bndbox.ymax"))
def _(tmp):
    return voc(tmp, xml(obj(ymax="")))


@case("voc_missing_bndbox", Expect("skip", "bad.xml", "object[0].bndbox"))
def _(tmp):
    return voc(tmp, xml(obj(bndbox=False)))


@case("voc_missing_xmax", Expect("skip", "bad.xml", "xmax"))
def _(tmp):
    return voc(tmp, xml(obj(xmax=None)))


@case("voc_missing_name", Expect("skip", "bad.xml", "object[0].name"))
def _(tmp):
    return voc(tmp, xml(obj(name=None)))


@case("voc_no_objects", Expect("count", count="images_without_objects"))
def _(tmp):
    return voc(tmp, xml())


@case("voc_size_mismatch", Expect("convert", "bad.xml", "size"))
def _(tmp):
    return voc(tmp, xml(obj(), width=640, height=480))


@case("voc_size_missing", Expect("convert", "bad.xml", "no usable image size"))
def _(tmp):
    return voc(tmp, xml(obj(), size=False))


@case("voc_size_not_numeric", Expect("convert", "bad.xml", "no usable image size"))
def _(tmp):
    return voc(tmp, xml(obj(), width="wide"))


@case("voc_difficult_not_a_flag", Expect("convert", "bad.xml", "difficult"))
def _(tmp):
    return voc(tmp, xml(obj(difficult="maybe")))


@case("voc_split_repeats_an_id", Expect("skip", "train.txt", "listed again"))
def _(tmp):
    return voc(tmp, xml(obj()), split_lines=["good", "bad", "good"])


@case("voc_split_file_missing", Expect("error", "test.txt", "['train']"))
def _(tmp):
    voc(tmp, xml(obj()))
    return lambda: read_voc(tmp / "VOC2007", "test", class_names=NAMES)


@case("voc_not_a_voc_folder", Expect("error", "VOC2007", "Annotations"))
def _(tmp):
    (tmp / "VOC2007" / "JPEGImages").mkdir(parents=True)
    return lambda: read_voc(tmp / "VOC2007", "train")


@case("voc_repeated_class_names", Expect("error", "", "repeated"))
def _(tmp):
    return voc(tmp, xml(obj()), class_names=["circle", "circle"])


@case("voc_exif_rotated_image", Expect("convert", "bad.jpg", "EXIF orientation"))
def _(tmp):
    return voc(tmp, xml(obj(), width=H, height=W), image="exif")


@case("voc_rgba_png", Expect("convert", "bad.png", "transparency"))
def _(tmp):
    return voc(tmp, xml(obj(), filename="bad.png"), image="rgba", image_name="bad.png")


@case("voc_cmyk_jpeg", Expect("convert", "bad.jpg", "CMYK"))
def _(tmp):
    return voc(tmp, xml(obj()), image="cmyk")


@case("voc_truncated_jpeg", Expect("skip", "bad.jpg", "decode"))
def _(tmp):
    return voc(tmp, xml(obj()), image="truncated")


@case("voc_empty_image_file", Expect("skip", "bad.jpg", "empty"))
def _(tmp):
    return voc(tmp, xml(obj()), image="empty")


@case("voc_text_named_jpg", Expect("skip", "bad.jpg", "not an image"))
def _(tmp):
    return voc(tmp, xml(obj()), image="text")


@case("voc_16bit_grayscale_png", Expect("usable"))
def _(tmp):
    return voc(tmp, xml(obj(), filename="bad.png"), image="gray16", image_name="bad.png")


@case("voc_grayscale_jpeg", Expect("usable"))
def _(tmp):
    return voc(tmp, xml(obj()), image="gray")


# --------------------------------------------------------------------------------- COCO

def coco_data():
    return {
        "images": [{"id": 1, "file_name": "a.jpg", "height": H, "width": W},
                   {"id": 2, "file_name": "b.jpg", "height": H, "width": W}],
        "categories": [{"id": 1, "name": "circle"}, {"id": 3, "name": "square"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [2, 2, 8, 8], "iscrowd": 0,
             "segmentation": [[2, 2, 10, 2, 10, 10, 2, 10]]},
            {"id": 11, "image_id": 2, "category_id": 3, "bbox": [4, 4, 6, 6], "iscrowd": 0,
             "segmentation": [[4, 4, 10, 4, 10, 10]]},
        ],
    }


def coco(tmp, change=None, text=None, images=("a.jpg", "b.jpg"), **kw):
    """A COCO root with two images; ``change(data)`` edits the JSON before it is written."""
    (tmp / "annotations").mkdir()
    (tmp / "train").mkdir()
    for name in images:
        write_image(tmp / "train" / name)
    data = coco_data()
    if change is not None:
        change(data)
    path = tmp / "annotations" / "instances_train.json"
    path.write_text(text if text is not None else json.dumps(data))
    return lambda: read_coco(tmp, "train", **kw)


def ann(data, **fields):
    data["annotations"][1].update(fields)


@case("coco_malformed_json", Expect("error", "instances_train.json", "line 1"))
def _(tmp):
    return coco(tmp, text='{"images": [}')


@case("coco_top_level_list", Expect("error", "instances_train.json", "top level"))
def _(tmp):
    return coco(tmp, text="[]")


@case("coco_annotation_file_missing", Expect("error", "instances_val.json", "JSON files"))
def _(tmp):
    coco(tmp)
    return lambda: read_coco(tmp, "val", image_dir=tmp / "train")


@case("coco_image_dir_missing", Expect("error", "val2017", "does not exist"))
def _(tmp):
    coco(tmp)
    return lambda: read_coco(annotation_file=tmp / "annotations/instances_train.json",
                             image_dir=tmp / "val2017")


@case("coco_images_missing", Expect("error", "instances_train.json", "images"))
def _(tmp):
    return coco(tmp, lambda d: d.pop("images"))


@case("coco_categories_missing", Expect("error", "instances_train.json", "categories"))
def _(tmp):
    return coco(tmp, lambda d: d.pop("categories"))


@case("coco_category_id_repeats", Expect("error", "instances_train.json", "categories[1].id"))
def _(tmp):
    return coco(tmp, lambda d: d["categories"][1].update(id=1))


@case("coco_category_without_name", Expect("error", "instances_train.json", "categories[0]"))
def _(tmp):
    return coco(tmp, lambda d: d["categories"][0].pop("name"))


@case("coco_duplicate_image_id", Expect("skip", "instances_train.json", "images[1].id"))
def _(tmp):
    return coco(tmp, lambda d: d["images"][1].update(id=1))


@case("coco_image_without_file_name", Expect("skip", "instances_train.json", "file_name"))
def _(tmp):
    return coco(tmp, lambda d: d["images"][1].pop("file_name"))


@case("coco_image_without_id", Expect("skip", "instances_train.json", "images[0].id"))
def _(tmp):
    return coco(tmp, lambda d: d["images"][0].pop("id"))


@case("coco_image_file_missing", Expect("skip", "b.jpg", "image"))
def _(tmp):
    return coco(tmp, images=("a.jpg",))


@case("coco_image_size_mismatch", Expect("convert", "instances_train.json", "images[id=2]"))
def _(tmp):
    return coco(tmp, lambda d: d["images"][1].update(height=480))


@case("coco_unknown_image_id", Expect("skip", "instances_train.json",
                                      "annotations[1].image_id"))
def _(tmp):
    return coco(tmp, lambda d: ann(d, image_id=99))


@case("coco_unknown_category_id", Expect("skip", "instances_train.json",
                                         "annotations[1].category_id"))
def _(tmp):
    return coco(tmp, lambda d: ann(d, category_id=2))


@case("coco_unknown_category_strict", Expect("error", "instances_train.json", "category id 2"))
def _(tmp):
    return coco(tmp, lambda d: ann(d, category_id=2), strict=True)


@case("coco_annotation_not_an_object", Expect("skip", "instances_train.json",
                                              "annotations[2]"))
def _(tmp):
    return coco(tmp, lambda d: d["annotations"].append(17))


@case("coco_bbox_negative_width", Expect("skip", "instances_train.json",
                                         "annotations[1].bbox"))
def _(tmp):
    return coco(tmp, lambda d: ann(d, bbox=[10, 4, -6, 6]))


@case("coco_bbox_missing", Expect("skip", "instances_train.json", "annotations[1].bbox"))
def _(tmp):
    return coco(tmp, lambda d: d["annotations"][1].pop("bbox"))


@case("coco_bbox_three_numbers", Expect("skip", "instances_train.json", "[x, y, width"))
def _(tmp):
    return coco(tmp, lambda d: ann(d, bbox=[1, 2, 3]))


@case("coco_bbox_null", Expect("skip", "instances_train.json", "not a finite number"))
def _(tmp):
    return coco(tmp, lambda d: ann(d, bbox=[1, None, 3, 4]))


@case("coco_bbox_text", Expect("skip", "instances_train.json", "not a finite number"))
def _(tmp):
    return coco(tmp, lambda d: ann(d, bbox=["1", "2", "x", "4"]))


@case("coco_bbox_nan", Expect("skip", "instances_train.json", "annotations[1].bbox"))
def _(tmp):
    return coco(tmp, lambda d: ann(d, bbox=[1, 2, float("nan"), 4]))


@case("coco_bbox_outside", Expect("convert", "instances_train.json", "clipped"))
def _(tmp):
    return coco(tmp, lambda d: ann(d, bbox=[20, 4, 40, 6]))


@case("coco_polygon_two_points", Expect("skip", "instances_train.json",
                                        "annotations[1].segmentation[0]"))
def _(tmp):
    return coco(tmp, lambda d: ann(d, segmentation=[[4, 4, 10, 10]]))


@case("coco_polygon_odd_length", Expect("skip", "instances_train.json", "odd number"))
def _(tmp):
    return coco(tmp, lambda d: ann(d, segmentation=[[4, 4, 10, 4, 10, 10, 4]]))


@case("coco_segmentation_empty", Expect("skip", "instances_train.json", "empty segmentation"))
def _(tmp):
    return coco(tmp, lambda d: ann(d, segmentation=[]))


@case("coco_segmentation_text", Expect("skip", "instances_train.json",
                                       "annotations[1].segmentation"))
def _(tmp):
    return coco(tmp, lambda d: ann(d, segmentation="polygon"))


@case("coco_rle_wrong_size", Expect("skip", "instances_train.json", "RLE size"))
def _(tmp):
    return coco(tmp, lambda d: ann(d, segmentation={"size": [10, 10], "counts": [100]}))


@case("coco_rle_bad_string", Expect("skip", "instances_train.json", "malformed"))
def _(tmp):
    return coco(tmp, lambda d: ann(d, segmentation={"size": [H, W], "counts": "!!~"}))


@case("coco_rle_wrong_total", Expect("skip", "instances_train.json", "sum to"))
def _(tmp):
    return coco(tmp, lambda d: ann(d, segmentation={"size": [H, W], "counts": [5, 5]}))


@case("coco_iscrowd_not_a_flag", Expect("convert", "instances_train.json", "iscrowd"))
def _(tmp):
    return coco(tmp, lambda d: ann(d, iscrowd="yes"))


@case("coco_image_without_annotations", Expect("count", count="images_without_objects"))
def _(tmp):
    return coco(tmp, lambda d: d["annotations"].pop(1))


# --------------------------------------------------------------------------- Cityscapes

FRAME = "aachen/aachen_000000_000001"


def cityscapes(tmp, objects=None, text=None, image=True, extra_image=False, size=(H, W)):
    gt = tmp / "gtFine/train" / f"{FRAME}_gtFine_polygons.json"
    gt.parent.mkdir(parents=True)
    left = tmp / "leftImg8bit/train/aachen"
    left.mkdir(parents=True)
    if image:
        rgb().save(tmp / "leftImg8bit/train" / f"{FRAME}_leftImg8bit.png")
    if extra_image:
        rgb().save(left / "aachen_000000_000002_leftImg8bit.png")
    objects = objects if objects is not None else [
        {"label": "car", "polygon": [[2, 2], [9, 2], [9, 8]]}]
    data = {"imgHeight": size[0], "imgWidth": size[1], "objects": objects}
    gt.write_text(text if text is not None else json.dumps(data))
    return lambda: read_cityscapes(tmp, "train")


@case("cityscapes_json_without_image", Expect("skip", "gtFine_polygons.json", "no image"))
def _(tmp):
    return cityscapes(tmp, image=False)


@case("cityscapes_image_without_json", Expect("skip", "000002_leftImg8bit.png", "annotation"))
def _(tmp):
    return cityscapes(tmp, extra_image=True)


@case("cityscapes_malformed_json", Expect("skip", "gtFine_polygons.json", "line 1"))
def _(tmp):
    return cityscapes(tmp, text='{"objects": [')


@case("cityscapes_polygon_two_points", Expect("skip", "gtFine_polygons.json",
                                              "objects[0].polygon"))
def _(tmp):
    return cityscapes(tmp, [{"label": "car", "polygon": [[2, 2], [9, 8]]}])


@case("cityscapes_polygon_outside", Expect("convert", "gtFine_polygons.json", "clipped"))
def _(tmp):
    return cityscapes(tmp, [{"label": "bus", "polygon": [[20, -5], [50, -5], [50, 10]]}])


@case("cityscapes_polygon_missing", Expect("skip", "gtFine_polygons.json",
                                           "objects[0].polygon"))
def _(tmp):
    return cityscapes(tmp, [{"label": "person"}])


@case("cityscapes_polygon_not_numeric", Expect("skip", "gtFine_polygons.json",
                                               "not a finite number"))
def _(tmp):
    return cityscapes(tmp, [{"label": "rider", "polygon": [[2, 2], ["x", 2], [9, 8]]}])


@case("cityscapes_size_mismatch", Expect("convert", "gtFine_polygons.json", "imgHeight"))
def _(tmp):
    return cityscapes(tmp, size=(1024, 2048))


@case("cityscapes_objects_missing", Expect("skip", "gtFine_polygons.json", "objects"))
def _(tmp):
    return cityscapes(tmp, text=json.dumps({"imgHeight": H, "imgWidth": W}))


@case("cityscapes_other_labels", Expect("count", count="objects_ignored_label"))
def _(tmp):
    return cityscapes(tmp, [{"label": "road", "polygon": [[0, 0], [9, 0], [9, 9]]}])


@case("cityscapes_split_missing", Expect("error", "gtFine/val", "['train']"))
def _(tmp):
    cityscapes(tmp)
    return lambda: read_cityscapes(tmp, "val")


# --------------------------------------------------------------------------------- tests

def _entries(report):
    data = report.to_dict()
    return ([("skip", e["path"], f"{e['field']} {e['reason']}") for e in data["skipped"]]
            + [("convert", e["path"], e["reason"]) for e in data["converted"]])


def _loads_without_crashing(split):
    for record in split.records:
        example = to_example(record, with_masks=record.segmentation is not None)
        assert example["image"].shape == (record.height, record.width, 3)
        decoded = tf.io.decode_image(tf.io.read_file(record.image_path), channels=3,
                                     expand_animations=False)
        assert tuple(decoded.shape) == (record.height, record.width, 3)
        assert np.all(example["boxes"][:, 2:] <= [record.width, record.height])
        assert np.all(example["boxes"][:, 2:] > example["boxes"][:, :2])


def test_the_corpus_is_large_enough():
    reported = [n for n, (_, e) in CASES.items() if e.kind != "usable"]
    assert len(reported) >= 30
    assert {n.split("_")[0] for n in reported} == {"voc", "coco", "cityscapes"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_reported_or_refused(name, tmp_path):
    build, expect = CASES[name]
    read = build(tmp_path)
    if expect.kind == "error":
        with pytest.raises((ValueError, FileNotFoundError)) as info:
            read()
        assert expect.file in str(info.value) and expect.text in str(info.value), info.value
        return
    split = read()
    _loads_without_crashing(split)
    if expect.kind == "count":
        assert split.report.counts.get(expect.count, 0) >= 1, split.report.counts
    elif expect.kind == "usable":
        assert len(split) == 2 and split.report.to_dict()["num_skipped"] == 0
    else:
        matches = [e for e in _entries(split.report) if e[0] == expect.kind
                   and e[1].endswith(expect.file) and expect.text in e[2]]
        assert matches, _entries(split.report)
