"""SSD and SSDLite detectors (M3): backbone levels -> SSD head -> (training) matching + multibox
loss, (inference) one decoder layer = decode + softmax + per-class NMS.

Data contract (shared/DESIGN.md): ``x`` float32 images ``[B, H, W, 3]`` in 0..255 pixels, ``y``
``{"boxes": f32[B, M, 4] xyxy pixels, "labels": i32[B, M]}`` padded with label -1.
``model(x)`` returns the raw ``{"cls_logits": [B, A, C + 1], "box_deltas": [B, A, 4]}``;
``model.predict(x)`` returns ``{"boxes" [B, D, 4], "scores" [B, D], "labels" [B, D],
"num_detections" [B]}`` in input-image pixels, padded to ``D = max_detections``.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from kft.losses import ssd_multibox_loss
from kft.models.detector import Detector
from kft.models.heads.ssd import SSDHead
from kft.ops.anchors import (
    SSD300_ASPECT_RATIOS,
    SSD300_SIZES,
    SSD512_ASPECT_RATIOS,
    SSD512_SIZES,
    SSDLITE320_SIZES,
    SSDLITE_ASPECT_RATIOS,
    num_boxes_per_location,
    ssd_default_boxes,
)
from kft.ops.box_coder import SSD_VARIANCES, decode
from kft.ops.boxes import clip_boxes
from kft.ops.matcher import match, targets
from kft.ops.nms import batched_nms


class ArchError(ValueError):
    """An ``arch`` that does not exist, or an image size the arch cannot take."""


SSD_ARCHS = ("ssd300_vgg16", "ssd512_vgg16", "ssdlite_mobilenet_v2", "ssdlite_mobilenet_v3")


@keras.saving.register_keras_serializable(package="kft")
class SSDDecoder(layers.Layer):
    """Raw SSD outputs -> padded detections (the one post-processing path for predict/export).

    Inputs ``cls_logits [B, A, C + 1]`` (column 0 background) and ``box_deltas [B, A, 4]``;
    output the detection dict of the module docstring. ``anchors`` are ``[A, 4]`` xyxy pixels.
    """

    def __init__(self, anchors, image_size, variances=SSD_VARIANCES, score_threshold=0.01,
                 iou_threshold=0.45, max_per_class=100, max_detections=100, **kwargs):
        super().__init__(**kwargs)
        self.anchors = np.asarray(anchors, np.float32)
        self.image_size = tuple(int(s) for s in image_size)
        self.variances = tuple(float(v) for v in variances)
        self.score_threshold = float(score_threshold)
        self.iou_threshold = float(iou_threshold)
        self.max_per_class = int(max_per_class)
        self.max_detections = int(max_detections)

    def call(self, cls_logits, box_deltas):
        # The anchor count is known here even when the traced input is not: Keras' predict
        # functions retrace a new batch size (a partial last batch) with every dimension
        # relaxed to None, which would leave NMS without its static K.
        num_anchors = self.anchors.shape[0]
        cls_logits = ops.reshape(cls_logits, (-1, num_anchors, cls_logits.shape[-1]))
        box_deltas = ops.reshape(box_deltas, (-1, num_anchors, 4))
        scores = ops.softmax(ops.cast(cls_logits, "float32"), axis=-1)[..., 1:]
        boxes = decode(ops.cast(box_deltas, "float32"), self.anchors, self.variances)
        boxes = clip_boxes(boxes, self.image_size[0], self.image_size[1])
        return batched_nms(boxes, scores, iou_threshold=self.iou_threshold,
                           score_threshold=self.score_threshold,
                           max_per_class=self.max_per_class,
                           max_detections=self.max_detections)

    def get_config(self):
        return {**super().get_config(), "anchors": self.anchors.tolist(),
                "image_size": list(self.image_size), "variances": list(self.variances),
                "score_threshold": self.score_threshold, "iou_threshold": self.iou_threshold,
                "max_per_class": self.max_per_class, "max_detections": self.max_detections}


@keras.saving.register_keras_serializable(package="kft")
class SSD(Detector, keras.Model):
    """SSD / SSDLite detector (a :class:`~kft.models.detector.Detector`).

    Parts, each with a documented default: the ``backbone`` (passed in), the ``head``
    (``"conv"``, ``"depthwise"`` or an :class:`~kft.models.heads.ssd.SSDHead` instance), the
    default boxes (``sizes`` / ``aspect_ratios`` / ``steps``, :func:`~kft.ops.anchors.
    ssd_default_boxes`) and the decoder (:class:`SSDDecoder` with ``score_threshold`` /
    ``nms_iou_threshold`` / ``max_detections``).

    Args:
        backbone: a ``keras.Model`` returning a dict of feature maps whose ``level_names``
            attribute lists them finest first (``kft.models.backbones.vgg.ssd_vgg16``,
            ``kft.models.backbones.mobilenet.ssdlite_mobilenet_v2`` ...).
        num_classes: foreground classes.
        sizes: ``L + 1`` default-box sizes as fractions of the image side (None: the paper's
            linear rule from ``min_ratio`` 0.2 to ``max_ratio`` 0.9).
        aspect_ratios: ``L`` tuples of extra aspect ratios per level.
        steps: ``L`` strides in pixels placing the default-box centres (the paper's Caffe
            ``(8, 16, 32, 64, 100, 300)`` for SSD300); None: image size / feature size.
        head: ``"conv"`` (SSD), ``"depthwise"`` (SSDLite), or an ``SSDHead`` built for
            ``num_classes`` and these aspect ratios' boxes per location.
        iou_threshold: matching threshold (0.5); ``neg_pos_ratio``: hard negatives per positive.
        cls_loss / box_loss: ``"ce"`` or ``"focal"``; ``"smooth_l1"`` or ``"giou"``.
        cls_weight / loc_weight: loss weights (the guide's 1.5 / 1.0).
        score_threshold, nms_iou_threshold, max_detections: the decoder's settings.
    """

    def __init__(self, backbone, num_classes, *, sizes=None, aspect_ratios=None, steps=None,
                 head="conv",
                 variances=SSD_VARIANCES, iou_threshold=0.5, neg_pos_ratio=3.0, cls_loss="ce",
                 box_loss="smooth_l1", cls_weight=1.0, loc_weight=1.0, label_smoothing=0.0,
                 score_threshold=0.01, nms_iou_threshold=0.45, max_detections=100, **kwargs):
        level_names = list(backbone.level_names)
        if aspect_ratios is None:
            aspect_ratios = (SSD300_ASPECT_RATIOS if len(level_names) == 6
                             else ((2, 3),) * len(level_names))
        aspect_ratios = tuple(tuple(float(r) for r in level) for level in aspect_ratios)
        # === Layers ===
        self.backbone = backbone
        per_location = num_boxes_per_location(aspect_ratios)
        if isinstance(head, SSDHead):
            if (head.num_classes != int(num_classes)
                    or head.boxes_per_location != list(per_location)):
                raise ValueError(
                    f"the SSDHead given predicts {head.num_classes} classes with "
                    f"{head.boxes_per_location} boxes per location; this SSD needs "
                    f"{int(num_classes)} and {list(per_location)}")
            self.ssd_head = head
        else:
            self.ssd_head = SSDHead(num_classes, per_location, kind=head, name="ssd_head")
        # === Functional model ===
        h, w = backbone.input_shape[1:3]
        images = keras.Input((h, w, 3), name="images")
        features = backbone(images)
        levels = [features[name] for name in level_names]
        cls_logits, box_deltas = self.ssd_head(levels)
        super().__init__(inputs=images,
                         outputs={"cls_logits": cls_logits, "box_deltas": box_deltas}, **kwargs)
        # === Config ===
        self.num_classes = int(num_classes)
        self.image_size = (int(h), int(w))
        self.sizes = None if sizes is None else tuple(float(s) for s in sizes)
        self.aspect_ratios = aspect_ratios
        self.steps = None if not steps else tuple(int(v) for v in steps)
        self.head = head if isinstance(head, str) else "custom"
        self.variances = tuple(float(v) for v in variances)
        self.iou_threshold = float(iou_threshold)
        self.neg_pos_ratio = float(neg_pos_ratio)
        self.cls_loss = cls_loss
        self.box_loss = box_loss
        self.cls_weight = float(cls_weight)
        self.loc_weight = float(loc_weight)
        self.label_smoothing = float(label_smoothing)
        self.score_threshold = float(score_threshold)
        self.nms_iou_threshold = float(nms_iou_threshold)
        self.max_detections = int(max_detections)
        feature_shapes = [tuple(int(d) for d in lv.shape[1:3]) for lv in levels]
        self.anchors = ssd_default_boxes(self.image_size, feature_shapes, sizes=self.sizes,
                                         aspect_ratios=aspect_ratios, steps=self.steps)
        self.decoder = SSDDecoder(self.anchors, self.image_size, self.variances,
                                  self.score_threshold, self.nms_iou_threshold,
                                  max_detections=self.max_detections, name="decoder")
        self.cls_loss_tracker = keras.metrics.Mean(name="cls_loss")
        self.box_loss_tracker = keras.metrics.Mean(name="box_loss")

    @classmethod
    def from_arch(cls, arch: str, num_classes: int, *, image_size: int | None = None,
                  width_multiplier: float = 1.0, backbone_weights=None, sizes=None,
                  aspect_ratios=None, **kwargs) -> SSD:
        """A detector of ``SSD_ARCHS`` with its published defaults.

        * ``ssd300_vgg16`` / ``ssd512_vgg16``: VGG16 (300 / 512 px only), conv head, the
          paper's default boxes (``SSD300_SIZES`` / ``SSD512_SIZES``) and aspect ratios;
          ``backbone_weights`` a keras.applications VGG16 ImageNet ``.h5`` (fc6/fc7 are
          subsampled from its fc layers).
        * ``ssdlite_mobilenet_v2`` / ``_v3``: SSDLite (any ``image_size`` >= 32; 320 in the
          paper), MobileNet width ``width_multiplier``, depthwise head, ``SSDLITE320_SIZES``;
          ``backbone_weights`` a keras.applications ``include_top=False`` weights file.

        ``sizes`` / ``aspect_ratios`` override the defaults; other ``kwargs`` go to
        :class:`SSD` (``steps``, losses, decoder settings).
        """
        from kft.models.backbones.mobilenet import ssdlite_mobilenet_v2, ssdlite_mobilenet_v3
        from kft.models.backbones.vgg import load_vgg16_imagenet, ssd_vgg16

        if arch in ("ssd300_vgg16", "ssd512_vgg16"):
            side = 300 if arch == "ssd300_vgg16" else 512
            if image_size not in (None, side):
                raise ArchError(f"arch={arch} takes {side} px images: set "
                                 f"data.image_size={side}")
            backbone = ssd_vgg16(side)
            if backbone_weights:
                load_vgg16_imagenet(backbone, backbone_weights)
            default_sizes, default_ratios = ((SSD300_SIZES, SSD300_ASPECT_RATIOS) if side == 300
                                             else (SSD512_SIZES, SSD512_ASPECT_RATIOS))
            head = "conv"
        elif arch in ("ssdlite_mobilenet_v2", "ssdlite_mobilenet_v3"):
            build = ssdlite_mobilenet_v2 if arch.endswith("v2") else ssdlite_mobilenet_v3
            backbone = build(image_size or 320, alpha=width_multiplier,
                             weights=backbone_weights or None)
            default_sizes, default_ratios, head = (SSDLITE320_SIZES, SSDLITE_ASPECT_RATIOS,
                                                   "depthwise")
        else:
            raise ArchError(f"arch={arch!r} is not a detector; choose from {list(SSD_ARCHS)}")
        return cls(backbone, num_classes, sizes=sizes or default_sizes,
                   aspect_ratios=aspect_ratios or default_ratios, head=head, **kwargs)

    # --- training ---------------------------------------------------------------------------

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Matching (best prior per object + IoU >= threshold; anchors on crowd boxes, given
        as ``y["iscrowd"]``, ignored), encoding and the multibox loss with 3:1 hard negative
        mining, normalised by the number of positives."""
        gt_boxes = ops.cast(y["boxes"], "float32")
        gt_labels = ops.cast(y["labels"], "int32")
        index, _ = match(gt_boxes, gt_labels, self.anchors, iou_threshold=self.iou_threshold,
                         gt_crowd=y.get("iscrowd"))
        cls_t, box_t, _ = targets(gt_boxes, gt_labels, self.anchors, index, self.variances)
        out = ssd_multibox_loss(
            y_pred["cls_logits"], y_pred["box_deltas"], cls_t, box_t,
            neg_pos_ratio=self.neg_pos_ratio, cls_loss=self.cls_loss, box_loss=self.box_loss,
            cls_weight=self.cls_weight, loc_weight=self.loc_weight,
            label_smoothing=self.label_smoothing, anchors=self.anchors,
            decode_fn=self._decode_fn if self.box_loss == "giou" else None)
        self.cls_loss_tracker.update_state(out["cls_loss"])
        self.box_loss_tracker.update_state(out["box_loss"])
        loss = out["loss"]
        if self.losses:
            loss = loss + ops.sum(self.losses)
        return loss

    def _decode_fn(self, deltas, anchors):
        return decode(deltas, anchors, self.variances)

    # --- inference --------------------------------------------------------------------------

    def decode(self, raw):
        """Raw ``{"cls_logits", "box_deltas"}`` -> detections (:class:`SSDDecoder`)."""
        return self.decoder(raw["cls_logits"], raw["box_deltas"])

    # --- config -----------------------------------------------------------------------------

    def get_config(self):
        return {
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "num_classes": self.num_classes,
            "sizes": None if self.sizes is None else list(self.sizes),
            "aspect_ratios": [list(a) for a in self.aspect_ratios],
            "steps": None if self.steps is None else list(self.steps),
            "head": (self.head if self.head != "custom"
                     else keras.saving.serialize_keras_object(self.ssd_head)),
            "variances": list(self.variances),
            "iou_threshold": self.iou_threshold,
            "neg_pos_ratio": self.neg_pos_ratio,
            "cls_loss": self.cls_loss,
            "box_loss": self.box_loss,
            "cls_weight": self.cls_weight,
            "loc_weight": self.loc_weight,
            "label_smoothing": self.label_smoothing,
            "score_threshold": self.score_threshold,
            "nms_iou_threshold": self.nms_iou_threshold,
            "max_detections": self.max_detections,
            "name": self.name,
            "trainable": self.trainable,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        if isinstance(config.get("head"), dict):
            config["head"] = keras.saving.deserialize_keras_object(config["head"])
        return cls(**config)
