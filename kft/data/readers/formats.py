"""The one dispatch from a detection format name to its reader."""

from __future__ import annotations

DETECTION_FORMATS = ("voc", "coco", "yolo", "cityscapes")


def read_detection(fmt: str, root, split: str, *, class_names=None, check_images: str = "full",
                   cache_dir=None, image_dir=None, report=None):
    """One split of a detection dataset in ``fmt`` as a
    :class:`~kft.data.readers.detection.DetectionSplit`.

    ``root``: a folder, or for VOC a list of folders read as one split (07+12).
    ``class_names``: VOC and YOLO (``None``: VOC infers them, see
    :func:`~kft.data.readers.voc.infer_voc_class_names`; YOLO takes ``data.yaml``'s); COCO and
    Cityscapes use the dataset's own list.
    ``image_dir``: COCO only (``None``: found, see
    :func:`~kft.data.readers.layout.find_coco_files`).
    ``report``: a :class:`~kft.data.report.DataReport` to add to (a new one when ``None``).
    """
    if fmt == "voc":
        from kft.data.readers.voc import read_voc

        return read_voc(root, split, class_names=class_names, check_images=check_images,
                        cache_dir=cache_dir, report=report)
    if fmt == "coco":
        from kft.data.readers.coco import read_coco

        return read_coco(root, split, image_dir=image_dir, check_images=check_images,
                         cache_dir=cache_dir, report=report)
    if fmt == "yolo":
        from kft.data.readers.yolo import read_yolo

        return read_yolo(root, split, class_names=class_names, check_images=check_images,
                         cache_dir=cache_dir, report=report)
    if fmt == "cityscapes":
        from kft.data.readers.cityscapes import read_cityscapes

        return read_cityscapes(root, split, check_images=check_images, cache_dir=cache_dir,
                               report=report)
    raise ValueError(f"data.format={fmt!r} must be one of {list(DETECTION_FORMATS)}")
