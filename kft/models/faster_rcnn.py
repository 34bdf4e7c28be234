"""Faster R-CNN (Ren et al. 2015) with an FPN (Lin et al. 2017), as torchvision's ``FasterRCNN``.

Composition (each part passed in, with a documented default)::

    images [B, H, W, 3] 0..255
      -> backbone            dict of named levels (normalisation inside the backbone)
      -> neck (FPN)          dict of pyramid levels, one width (256)
      -> rpn_head            objectness [B, N], deltas [B, N, 4] on rcnn_anchors
      -> generate_proposals  P proposals per image (static, padded)
      -> RoIAlign            [B, P, 7, 7, 256] from the roi levels (multi-level)
      -> box_head            [B * P, 1024]   (two FC, or convs + FC)
      -> box_predictor       class logits [B, P, C + 1], class-specific deltas [B, P, 4 (C + 1)]
      -> BoxDecoder          detections (DESIGN.md dict), in input-image pixels

``model(images)`` runs the first stage and returns what the loss needs
(:data:`RAW_KEYS` plus the roi levels as ``"feature_<name>"``); :meth:`FasterRCNN.decode` runs
the second stage on the proposals and decodes, so ``model.predict`` / :meth:`detect` /
export give detections and ``model.fit`` trains both stages: :meth:`compute_loss` builds the
RPN targets, samples RoIs from the proposals plus the ground truth, runs the box head on the
sampled RoIs only (512 per image, not all proposals) and adds the four losses.

Labels: kft's labels are 0-based foreground classes; inside the box head class ``k`` is logit
``k + 1`` and logit 0 is background (torchvision's layout, so its weights load unchanged).

The network input is static ``(H, W)`` (``Detector.resize = "keep_aspect"``: kft's pipeline
scales an image to fit and pads bottom / right). Proposals and detections are clipped to the
input frame, torchvision clips to the unpadded image; the two agree on unpadded inputs.
"""

from __future__ import annotations

import keras
from keras import ops

from kft.models.detector import Detector
from kft.models.heads import box as box_heads
from kft.models.heads.rpn import (
    NMS_THRESHOLD,
    POST_NMS_TOP_N,
    PRE_NMS_TOP_N,
    TORCHVISION_ASPECT_RATIOS,
    RPNHead,
    generate_proposals,
    rpn_loss,
)
from kft.models.necks.fpn import FPN
from kft.ops.anchors import num_anchors_per_location, rcnn_anchors
from kft.ops.roi_align import multilevel_roi_align

RAW_KEYS = ("objectness", "rpn_deltas", "proposals", "proposal_valid")
LOSS_KEYS = ("rpn_objectness", "rpn_box", "roi_cls", "roi_box")
BOX_HEADS = ("mlp", "conv_fc")
ARCHS = {
    "fasterrcnn_resnet50_fpn": {"backbone": "resnet", "frozen_bn": True},
    "fasterrcnn_resnet50_fpn_v2": {"backbone": "resnet", "frozen_bn": False,
                                   "fpn_norm": "batch", "rpn_conv_depth": 2,
                                   "box_head": "conv_fc"},
    "fasterrcnn_mobilenet_v3_large_fpn": {
        "backbone": "mobilenet_v3", "frozen_bn": True,
        "anchor_sizes": ((32, 64, 128, 256, 512),) * 3,
        "aspect_ratios": (TORCHVISION_ASPECT_RATIOS,) * 3, "rpn_score_threshold": 0.05},
    "fasterrcnn_resnext101_32x8d_fpn": {"backbone": "resnet", "depth": "resnext101_32x8d",
                                        "frozen_bn": True},
    "fasterrcnn_resnet_tiny_fpn": {"backbone": "resnet", "frozen_bn": False,
                                   "fpn_channels": 64,
                                   "anchor_sizes": ((16,), (32,), (64,), (128,)),
                                   "representation_size": 256},
}
"""torchvision's settings per architecture (the tiny one is kft's, for tests)."""


class ArchError(ValueError):
    """An unknown or inconsistent ``model.arch`` (the CLI prints it as one line)."""


@keras.saving.register_keras_serializable(package="kft")
class FasterRCNN(Detector, keras.Model):
    """Two-stage detector (see the module docstring).

    Args:
        backbone: a ``keras.Model`` from images ``[B, H, W, 3]`` (0..255) to a dict of feature
            maps, with ``level_names`` (finest first) and ``strides`` attributes
            (:func:`kft.models.backbones.resnet.resnet_fpn_body`, ...).
        num_classes: foreground classes ``C``.
        neck: an :class:`~kft.models.necks.fpn.FPN` (default ``FPN()`` on all backbone
            levels with the extra max-pool level, torchvision's ResNet FPN).
        anchor_sizes: one entry per pyramid level (FPN output), each a size or a tuple of
            sizes in pixels (default 32, 64, ... one per level, doubling).
        aspect_ratios: width / height ratios (default torchvision's, :data:`TORCHVISION_
            ASPECT_RATIOS`), for all levels or one tuple per level.
        roi_levels: names of the pyramid levels RoIAlign pools from (default: every FPN
            output except the extra level; levels of equal stride pool from the first only,
            as torchvision's ``MultiScaleRoIAlign`` maps them).
        rpn_conv_depth: shared 3x3 convs in the RPN head (1; v2: 2).
        rpn_pre_nms_top_n / rpn_post_nms_top_n: ``(training, testing)`` proposal counts per
            level before NMS / per image after it (2000 / 1000 as torchvision).
        rpn_nms_threshold, rpn_score_threshold, rpn_min_size: proposal filtering.
        rpn_batch_size_per_image, rpn_positive_fraction, rpn_fg_iou_threshold,
        rpn_bg_iou_threshold: RPN training (256, 0.5, 0.7, 0.3).
        box_head: ``"mlp"`` (two FC of ``representation_size``), ``"conv_fc"`` (four 3x3
            convs with BatchNorm + one FC, torchvision's v2), or a layer mapping
            ``[N, 7, 7, C]`` RoI features to ``[N, D]``.
        representation_size: FC width of the box head (1024; the guide's 512 for small
            objects).
        roi_output_size, sampling_ratio: RoIAlign (7, 2).
        box_batch_size_per_image, box_positive_fraction, box_fg_iou_threshold,
        box_bg_iou_threshold, box_weights: RoI sampling and box coding (512, 0.25, 0.5, 0.5,
            (10, 10, 5, 5)).
        box_score_threshold, box_nms_threshold, max_detections: the decoder (0.05, 0.5, 100).
        cls_weight, loc_weight: weights of the box head's classification / regression losses
            (the guide's 1.5 / 1.0; torchvision 1 / 1). rpn_weight scales both RPN losses.
        ohem_fraction: train the box head on the hardest fraction of sampled RoIs (T10: 0.3).
        cls_loss / box_loss: ``"ce"`` or ``"focal"``; ``"smooth_l1"`` or ``"giou"`` (T8).
        seed: seed of the samplers' generators (None: random).
        arch: the :data:`ARCHS` name :meth:`from_arch` built it as (``"custom"`` otherwise);
            the torchvision converter reads it.
        min_size, max_size: the keep-aspect resize kft's pipeline applies for this model
            (torchvision's ``min_size`` / ``max_size``: short side ``min_size``, long side at
            most ``max_size``, padded to the input); default: the input's sides.
    """

    resize = "keep_aspect"

    def __init__(self, backbone, num_classes, *, neck=None, anchor_sizes=None,
                 aspect_ratios=TORCHVISION_ASPECT_RATIOS, roi_levels=None, rpn_conv_depth=1,
                 rpn_pre_nms_top_n=(PRE_NMS_TOP_N["training"], PRE_NMS_TOP_N["testing"]),
                 rpn_post_nms_top_n=(POST_NMS_TOP_N["training"], POST_NMS_TOP_N["testing"]),
                 rpn_nms_threshold=NMS_THRESHOLD, rpn_score_threshold=0.0, rpn_min_size=1e-3,
                 rpn_batch_size_per_image=256, rpn_positive_fraction=0.5,
                 rpn_fg_iou_threshold=0.7, rpn_bg_iou_threshold=0.3,
                 box_head="mlp", representation_size=1024, roi_output_size=7,
                 sampling_ratio=2, box_batch_size_per_image=512, box_positive_fraction=0.25,
                 box_fg_iou_threshold=0.5, box_bg_iou_threshold=0.5,
                 box_weights=(10.0, 10.0, 5.0, 5.0), box_score_threshold=0.05,
                 box_nms_threshold=0.5, max_detections=100, cls_weight=1.0, loc_weight=1.0,
                 rpn_weight=1.0, ohem_fraction=None, cls_loss="ce", box_loss="smooth_l1",
                 seed=None, arch="custom", min_size=None, max_size=None, **kwargs):
        super().__init__(**kwargs)
        self.arch = str(arch)
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.backbone = backbone
        self.neck = neck if neck is not None else FPN(name="fpn")
        self.image_size = tuple(int(v) for v in backbone.input_shape[1:3])
        self.num_classes = int(num_classes)
        self.min_size = int(min_size or min(self.image_size))
        self.max_size = int(max_size or max(self.image_size))
        if not self.min_size <= self.max_size or self.max_size > max(self.image_size):
            raise ValueError(f"need min_size <= max_size <= the input side, got min_size="
                             f"{self.min_size}, max_size={self.max_size} for an input of "
                             f"{self.image_size}")
        level_names = tuple(backbone.level_names)
        strides = tuple(int(s) for s in backbone.strides)
        self.pyramid_names = tuple(self.neck.output_names(level_names))
        # pyramid strides: the backbone's, then the extra level's (twice the last used one)
        stride_of = dict(zip(level_names, strides, strict=True))
        used = [n for n in self.pyramid_names if n in stride_of]
        self.pyramid_strides = tuple(stride_of[n] for n in used) + (
            (2 * stride_of[used[-1]],) * (len(self.pyramid_names) - len(used)))
        if anchor_sizes is None:
            anchor_sizes = tuple((32 * 2 ** i,) for i in range(len(self.pyramid_names)))
        self.anchor_sizes = tuple(tuple(float(v) for v in s) if isinstance(s, (tuple, list))
                                  else (float(s),) for s in anchor_sizes)
        if len(self.anchor_sizes) != len(self.pyramid_names):
            raise ValueError(f"anchor_sizes has {len(self.anchor_sizes)} entries for the "
                             f"{len(self.pyramid_names)} pyramid levels {self.pyramid_names}")
        self.aspect_ratios = _ratios(aspect_ratios)
        per_location = set(num_anchors_per_location(self.anchor_sizes, self.aspect_ratios))
        if len(per_location) != 1:
            raise ValueError("every pyramid level needs the same number of anchors per "
                             f"location (the RPN head is shared), got {sorted(per_location)}")
        if roi_levels is None:
            roi_levels = tuple(n for n in self.pyramid_names if n in stride_of)
        self.roi_levels = tuple(roi_levels)
        unknown = [n for n in self.roi_levels if n not in self.pyramid_names]
        if unknown:
            raise ValueError(f"roi_levels {unknown} are not pyramid levels "
                             f"{self.pyramid_names}")
        pyramid_stride = dict(zip(self.pyramid_names, self.pyramid_strides, strict=True))
        self.roi_strides = tuple(pyramid_stride[n] for n in self.roi_levels)
        if len(set(self.roi_strides)) < len(self.roi_strides):   # MobileNetV3: two stride-32
            self._pool_levels = self.roi_levels[:1]
        else:
            self._pool_levels = self.roi_levels
        self._pool_strides = tuple(pyramid_stride[n] for n in self._pool_levels)

        # === Settings ===
        self.rpn_conv_depth = int(rpn_conv_depth)
        self.rpn_pre_nms_top_n = tuple(int(v) for v in rpn_pre_nms_top_n)
        self.rpn_post_nms_top_n = tuple(int(v) for v in rpn_post_nms_top_n)
        self.rpn_nms_threshold = float(rpn_nms_threshold)
        self.rpn_score_threshold = float(rpn_score_threshold)
        self.rpn_min_size = float(rpn_min_size)
        self.rpn_batch_size_per_image = int(rpn_batch_size_per_image)
        self.rpn_positive_fraction = float(rpn_positive_fraction)
        self.rpn_fg_iou_threshold = float(rpn_fg_iou_threshold)
        self.rpn_bg_iou_threshold = float(rpn_bg_iou_threshold)
        self.box_head_kind = box_head if isinstance(box_head, str) else "custom"
        self.representation_size = int(representation_size)
        self.roi_output_size = int(roi_output_size)
        self.sampling_ratio = int(sampling_ratio)
        self.box_batch_size_per_image = int(box_batch_size_per_image)
        self.box_positive_fraction = float(box_positive_fraction)
        self.box_fg_iou_threshold = float(box_fg_iou_threshold)
        self.box_bg_iou_threshold = float(box_bg_iou_threshold)
        self.box_weights = tuple(float(v) for v in box_weights)
        self.box_score_threshold = float(box_score_threshold)
        self.box_nms_threshold = float(box_nms_threshold)
        self.max_detections = int(max_detections)
        self.cls_weight = float(cls_weight)
        self.loc_weight = float(loc_weight)
        self.rpn_weight = float(rpn_weight)
        self.ohem_fraction = None if ohem_fraction in (None, 0) else float(ohem_fraction)
        self.cls_loss = cls_loss
        self.box_loss = box_loss
        self.seed = seed
        #: RoIAlign kernel (not saved: a runtime choice, see _roi_implementation)
        self.roi_align_implementation = "auto"

        # === Layers ===
        self.rpn_head = RPNHead(per_location.pop(), conv_depth=self.rpn_conv_depth,
                                name="rpn_head")
        if isinstance(box_head, str):
            if box_head not in BOX_HEADS:
                raise ValueError(f"box_head={box_head!r} must be one of {BOX_HEADS} or a layer")
            self.box_head = (box_heads.TwoMLPHead(self.representation_size, name="box_head")
                             if box_head == "mlp" else
                             box_heads.ConvFCHead(fc_dims=(self.representation_size,),
                                                  name="box_head"))
        else:
            self.box_head = box_head
        self.box_predictor = box_heads.BoxPredictor(self.num_classes, name="box_predictor")
        self.decoder = box_heads.BoxDecoder(
            self.num_classes, self.image_size, weights=self.box_weights,
            score_threshold=self.box_score_threshold, nms_threshold=self.box_nms_threshold,
            max_detections=self.max_detections, name="decoder")
        self._rpn_seed = keras.random.SeedGenerator(seed, name="rpn_sampler_seed")
        self._roi_seed = keras.random.SeedGenerator(None if seed is None else seed + 1,
                                                    name="roi_sampler_seed")
        self.loss_trackers = {k: keras.metrics.Mean(name=k) for k in LOSS_KEYS}

        # === Build (static shapes: anchors depend on the feature sizes) ===
        images = keras.Input((*self.image_size, 3), name="images")
        pyramid = self.neck(backbone(images))
        shapes = [tuple(int(d) for d in pyramid[n].shape[1:3]) for n in self.pyramid_names]
        self.anchors = rcnn_anchors(self.image_size, shapes, self.anchor_sizes,
                                    self.aspect_ratios)
        self.rpn_head.build([tuple(pyramid[n].shape) for n in self.pyramid_names])
        self.num_anchors_per_level = self.rpn_head.num_anchors_per_level(
            [tuple(pyramid[n].shape) for n in self.pyramid_names])
        channels = int(pyramid[self.roi_levels[0]].shape[-1])
        roi_shape = (None, self.roi_output_size, self.roi_output_size, channels)
        self.box_head.build(roi_shape)
        self.box_predictor.build(tuple(self.box_head.compute_output_shape(roi_shape)))
        self.built = True

    @classmethod
    def from_arch(cls, arch: str, num_classes: int, *, image_size=800, preset: str = "",
                  backbone_weights=None, frozen_bn: bool | None = None, se_stages=(),
                  se_reduction: int = 16, separable_stages=(), **kwargs) -> FasterRCNN:
        """A detector of :data:`ARCHS` with torchvision's settings for it.

        * ``fasterrcnn_resnet50_fpn``: keras-hub ResNet-50 (frozen BatchNorm), FPN P2-P5 + P6,
          anchors 32..512 one per level, RPN with one 3x3 conv, two-FC box head 1024.
        * ``fasterrcnn_resnet50_fpn_v2``: trainable BatchNorm, FPN with BatchNorm, RPN with two
          3x3 convs, box head of four 3x3 convs with BatchNorm + one FC 1024.
        * ``fasterrcnn_mobilenet_v3_large_fpn``: torchvision's MobileNetV3-Large body (two
          stride-32 levels), FPN + pool level, 5 sizes x 3 ratios per level, RPN score
          threshold 0.05.
        * ``fasterrcnn_resnext101_32x8d_fpn``: the v1 detector on kft's ResNeXt-101 32x8d
          (grouped 3x3 convolutions, frozen BatchNorm; the guide's high-accuracy backbone),
          as torchvision's ``resnet_fpn_backbone("resnext101_32x8d")`` builds it.
        * ``fasterrcnn_resnet_tiny_fpn``: kft's three-stage ResNet (tests, quick starts).

        ``image_size``: the static input, a side or ``(H, W)``, multiples of 32 (torchvision's
        800 / 1333 keep-aspect resize fits a 1344 x 1344 canvas). ``preset``: a keras-hub
        ResNet preset (name or local folder) for the ResNet-50 backbones; ``backbone_weights``:
        a torchvision ImageNet state dict (``.npz``; ``.pth`` with torch) of the backbone:
        ``mobilenet_v3_large``, ``resnext101_32x8d``, ``resnet50``.
        ``frozen_bn`` overrides the arch's BatchNorm choice. Backbone surgery (M6, ResNet
        backbones): ``se_stages`` / ``se_reduction`` / ``separable_stages`` of
        :class:`~kft.models.backbones.resnet.ResNetFPNBody`. ``kwargs`` go to
        :class:`FasterRCNN` (anchor_sizes, thresholds, losses, ...).
        """
        from kft.models.backbones.resnet import resnet_fpn_body

        if arch not in ARCHS:
            raise ArchError(f"arch={arch!r} is not a Faster R-CNN; choose from {list(ARCHS)}")
        size = (int(image_size), int(image_size)) if isinstance(image_size, (int, float)) \
            else tuple(int(v) for v in image_size)
        bad = [v for v in size if v % 32 or v < 32]
        if bad:
            raise ArchError(f"arch={arch} needs an image size of multiples of 32 (FPN "
                            f"strides), got {size}")
        settings = dict(ARCHS[arch])
        settings.update(kwargs)
        frozen = settings.pop("frozen_bn") if frozen_bn is None else bool(frozen_bn)
        depth = settings.pop("depth", "resnet_tiny" if arch == "fasterrcnn_resnet_tiny_fpn"
                             else "resnet50")
        if settings.pop("backbone") == "mobilenet_v3":
            from kft.models.backbones.mobilenet_v3_fpn import mobilenet_v3_fpn_body

            if se_stages or separable_stages:
                raise ArchError(f"arch={arch}: se_stages / separable_stages (M6 surgery) are "
                                "for the ResNet backbones; MobileNetV3 has SE blocks and "
                                "depthwise convolutions already")
            backbone = mobilenet_v3_fpn_body(size, weights=backbone_weights, frozen_bn=frozen)
            neck = FPN(levels=tuple(backbone.level_names), extra="max_pool", extra_name="pool",
                       name="fpn")
        else:
            backbone = resnet_fpn_body(depth, size, preset=preset, frozen_bn=frozen,
                                       weights=backbone_weights, se_stages=se_stages,
                                       se_reduction=se_reduction,
                                       separable_stages=separable_stages)
            neck = FPN(settings.pop("fpn_channels", 256), levels=tuple(backbone.level_names),
                       norm=settings.pop("fpn_norm", None), name="fpn")
        settings.pop("fpn_norm", None)
        settings.pop("fpn_channels", None)
        return cls(backbone, num_classes, neck=neck, arch=arch, **settings)

    def resize_args(self) -> dict:
        """Keep-aspect resize to ``(min_size, max_size)``, padded to the static input."""
        return {"image_size": (self.min_size, self.max_size), "resize": "keep_aspect",
                "pad_size": self.image_size}

    @property
    def input_shape(self) -> tuple:
        """``(None, H, W, 3)``: the static image input (a subclassed model has no symbolic
        input, so this mirrors the functional detectors' attribute)."""
        return (None, *self.image_size, 3)

    # --- network ---------------------------------------------------------------------------

    def call(self, images, training=False):
        """First stage: ``{"objectness" [B, N], "rpn_deltas" [B, N, 4], "proposals" [B, P, 4],
        "proposal_valid" [B, P], "feature_<level>" ...}`` with ``P`` the training or testing
        post-NMS count."""
        pyramid = self.neck(self.backbone(images, training=training), training=training)
        objectness, deltas = self.rpn_head([pyramid[n] for n in self.pyramid_names])
        mode = 0 if training else 1
        proposals = generate_proposals(
            objectness, deltas, self.anchors, self.num_anchors_per_level, self.image_size,
            pre_nms_top_n=self.rpn_pre_nms_top_n[mode],
            post_nms_top_n=self.rpn_post_nms_top_n[mode], nms_threshold=self.rpn_nms_threshold,
            min_size=self.rpn_min_size, score_threshold=self.rpn_score_threshold)
        out = {"objectness": objectness, "rpn_deltas": deltas, "proposals": proposals["boxes"],
               "proposal_valid": proposals["valid"]}
        out.update({f"feature_{n}": pyramid[n] for n in self._pool_levels})
        return out

    def box_stage(self, raw: dict, rois, training=False):
        """Second stage on ``rois`` float32 ``[B, R, 4]``: ``(class_logits [B, R, C + 1],
        box_deltas [B, R, 4 (C + 1)])`` in float32."""
        features = [raw[f"feature_{n}"] for n in self._pool_levels]
        pooled = multilevel_roi_align(features, rois, strides=self._pool_strides,
                                      output_size=self.roi_output_size,
                                      sampling_ratio=self.sampling_ratio,
                                      implementation=self._roi_implementation())
        s, channels = self.roi_output_size, pooled.shape[-1]
        count = ops.shape(rois)[1]
        x = self.box_head(ops.reshape(pooled, (-1, s, s, channels)), training=training)
        logits, deltas = self.box_predictor(x)
        k = self.num_classes + 1
        return (ops.reshape(ops.cast(logits, "float32"), (-1, count, k)),
                ops.reshape(ops.cast(deltas, "float32"), (-1, count, 4 * k)))

    def _roi_implementation(self) -> str:
        """``roi_align_implementation``: ``"auto"`` pools with TensorFlow's crop_and_resize
        (1.5x faster forward and backward here) on the TensorFlow backend and with the
        gather path elsewhere; export sets ``"gather"`` (TFLite builtins only)."""
        choice = self.roi_align_implementation
        if choice == "auto":
            return "crop_and_resize" if keras.backend.backend() == "tensorflow" else "gather"
        return choice

    # --- training ---------------------------------------------------------------------------

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """RPN losses (256 sampled anchors) + box-head losses (512 sampled RoIs per image from
        the proposals and the ground truth); crowd boxes (``y["iscrowd"]``) are never matched
        and anchors / RoIs lying on them are ignored."""
        gt_boxes = ops.cast(y["boxes"], "float32")
        gt_labels = ops.cast(y["labels"], "int32")
        crowd = y.get("iscrowd")
        rpn = rpn_loss(y_pred["objectness"], y_pred["rpn_deltas"], self.anchors, gt_boxes,
                       gt_labels, gt_crowd=crowd,
                       batch_size_per_image=self.rpn_batch_size_per_image,
                       positive_fraction=self.rpn_positive_fraction,
                       fg_iou_threshold=self.rpn_fg_iou_threshold,
                       bg_iou_threshold=self.rpn_bg_iou_threshold, seed=self._rpn_seed)
        sample = box_heads.roi_targets(
            y_pred["proposals"], y_pred["proposal_valid"], gt_boxes, gt_labels, gt_crowd=crowd,
            batch_size_per_image=self.box_batch_size_per_image,
            positive_fraction=self.box_positive_fraction,
            fg_iou_threshold=self.box_fg_iou_threshold,
            bg_iou_threshold=self.box_bg_iou_threshold, weights=self.box_weights,
            seed=self._roi_seed)
        logits, deltas = self.box_stage(y_pred, sample["rois"], training=training)
        box = box_heads.box_head_loss(
            logits, deltas, sample["labels"], sample["targets"], sample["valid"],
            cls_weight=self.cls_weight, loc_weight=self.loc_weight,
            ohem_fraction=self.ohem_fraction, cls_loss=self.cls_loss, box_loss=self.box_loss,
            rois=sample["rois"], weights=self.box_weights)
        parts = {"rpn_objectness": rpn["rpn_objectness"], "rpn_box": rpn["rpn_box"],
                 "roi_cls": box["cls_loss"], "roi_box": box["box_loss"]}
        for key, value in parts.items():
            self.loss_trackers[key].update_state(value)
        loss = (self.rpn_weight * (parts["rpn_objectness"] + parts["rpn_box"])
                + box["loss"])
        if self.losses:
            loss = loss + ops.sum(self.losses)
        return loss

    @property
    def metrics(self):
        return [*super().metrics, *self.loss_trackers.values()]

    # --- inference --------------------------------------------------------------------------

    def decode(self, raw: dict) -> dict:
        """First-stage outputs -> detections: box head on every proposal, then
        :class:`~kft.models.heads.box.BoxDecoder`."""
        logits, deltas = self.box_stage(raw, raw["proposals"], training=False)
        return self.decoder(logits, deltas, raw["proposals"], raw["proposal_valid"])

    def inference_model(self) -> keras.Model:
        images = keras.Input((*self.image_size, 3), name="images")
        return keras.Model(images, _Detect(self, name="detect")(images),
                           name=f"{self.name}_inference")

    # --- config -----------------------------------------------------------------------------

    def get_config(self):
        return {
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "num_classes": self.num_classes,
            "neck": keras.saving.serialize_keras_object(self.neck),
            "anchor_sizes": [list(s) for s in self.anchor_sizes],
            "aspect_ratios": [list(r) if isinstance(r, tuple) else r
                              for r in self.aspect_ratios],
            "roi_levels": list(self.roi_levels),
            "rpn_conv_depth": self.rpn_conv_depth,
            "rpn_pre_nms_top_n": list(self.rpn_pre_nms_top_n),
            "rpn_post_nms_top_n": list(self.rpn_post_nms_top_n),
            "rpn_nms_threshold": self.rpn_nms_threshold,
            "rpn_score_threshold": self.rpn_score_threshold,
            "rpn_min_size": self.rpn_min_size,
            "rpn_batch_size_per_image": self.rpn_batch_size_per_image,
            "rpn_positive_fraction": self.rpn_positive_fraction,
            "rpn_fg_iou_threshold": self.rpn_fg_iou_threshold,
            "rpn_bg_iou_threshold": self.rpn_bg_iou_threshold,
            "box_head": (self.box_head_kind if self.box_head_kind != "custom"
                         else keras.saving.serialize_keras_object(self.box_head)),
            "representation_size": self.representation_size,
            "roi_output_size": self.roi_output_size,
            "sampling_ratio": self.sampling_ratio,
            "box_batch_size_per_image": self.box_batch_size_per_image,
            "box_positive_fraction": self.box_positive_fraction,
            "box_fg_iou_threshold": self.box_fg_iou_threshold,
            "box_bg_iou_threshold": self.box_bg_iou_threshold,
            "box_weights": list(self.box_weights),
            "box_score_threshold": self.box_score_threshold,
            "box_nms_threshold": self.box_nms_threshold,
            "max_detections": self.max_detections,
            "cls_weight": self.cls_weight,
            "loc_weight": self.loc_weight,
            "rpn_weight": self.rpn_weight,
            "ohem_fraction": self.ohem_fraction,
            "cls_loss": self.cls_loss,
            "box_loss": self.box_loss,
            "seed": self.seed,
            "arch": self.arch,
            "min_size": self.min_size,
            "max_size": self.max_size,
            "name": self.name,
            "trainable": self.trainable,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("backbone", "neck"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        if isinstance(config.get("box_head"), dict):
            config["box_head"] = keras.saving.deserialize_keras_object(config["box_head"])
        return cls(**config)


class _Detect(keras.layers.Layer):
    """``images -> detector.detect(images)`` as one layer, for a functional inference graph."""

    def __init__(self, detector, **kwargs):
        super().__init__(**kwargs)
        self.detector = detector

    def call(self, images):
        return self.detector.detect(images)


def _ratios(aspect_ratios):
    if all(isinstance(r, (tuple, list)) for r in aspect_ratios):
        return tuple(tuple(float(v) for v in r) for r in aspect_ratios)
    return tuple(float(v) for v in aspect_ratios)
