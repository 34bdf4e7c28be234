"""The one dispatch from a detection format name to its reader."""

from __future__ import annotations

DETECTION_FORMATS = ("voc", "coco", "cityscapes")


def read_detection(fmt: str, root, split: str, *, class_names=None, check_images: str = "full",
                   cache_dir=None):
    """One split of a detection dataset in ``fmt`` as a
    :class:`~kft.data.readers.detection.DetectionSplit`.

    ``root``: a folder, or for VOC a list of folders read as one split (07+12).
    ``class_names``: VOC only (``None``: the 20 VOC classes).
    """
    if fmt == "voc":
        from kft.data.readers.voc import read_voc

        return read_voc(root, split, class_names=class_names, check_images=check_images,
                        cache_dir=cache_dir)
    if fmt == "coco":
        from kft.data.readers.coco import read_coco

        return read_coco(root, split, check_images=check_images, cache_dir=cache_dir)
    if fmt == "cityscapes":
        from kft.data.readers.cityscapes import read_cityscapes

        return read_cityscapes(root, split, check_images=check_images, cache_dir=cache_dir)
    raise ValueError(f"data.format={fmt!r} must be one of {list(DETECTION_FORMATS)}")
