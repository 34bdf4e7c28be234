"""The base every kft detector shares (SSD / SSDLite now; Faster and Mask R-CNN next).

A :class:`Detector` is a ``keras.Model`` whose call returns the raw network outputs (what the
loss reads) and whose :meth:`Detector.detect` returns detections: the network, then
:meth:`Detector.decode` (box decoding, scores, NMS) inside the same graph, so ``predict``,
evaluation, ``kft predict`` and TFLite export share one post-processing path.

Data contract (shared/DESIGN.md): images float32 ``[B, H, W, 3]`` in 0..255 pixels; targets
``{"boxes": f32[B, M, 4] xyxy pixels, "labels": i32[B, M]}`` padded with label -1 (optionally
``"iscrowd"``). Detections (:data:`DETECTION_KEYS`): ``boxes [B, D, 4]`` xyxy in input-image
pixels, ``scores [B, D]``, ``labels [B, D]`` (0-based, -1 padding), ``num_detections [B]``.

A subclass sets :attr:`Detector.resize` (how kft's pipeline sizes images for it: one of
``kft.data.detection_pipeline.RESIZE_MODES``) and implements :meth:`decode`; it may override
:meth:`detect` when decoding needs more than the raw outputs (a two-stage detector's second
stage).
"""

from __future__ import annotations

import keras

DETECTION_KEYS = ("boxes", "scores", "labels", "num_detections")


class Detector:
    """Base of kft's detectors (see the module docstring), mixed in before ``keras.Model``:
    ``class SSD(Detector, keras.Model)``.

    It is deliberately not a ``keras.Model`` subclass itself: when a model subclass is built
    functionally (``super().__init__(inputs=..., outputs=...)``, as SSD is), Keras rewrites the
    ``__bases__`` of every class up its hierarchy to put ``Functional`` in place of ``Model``;
    a shared ``keras.Model`` base would pass that on to the subclassed detectors (Faster R-CNN,
    whose ``__init__`` then fails with "Functional.__init__() missing 'inputs'") as soon as an
    SSD had been built in the same process.
    """

    #: the image resize kft's pipeline applies for this model ("fixed": stretched to the
    #: static input size; "keep_aspect": scaled to fit and padded)
    resize = "fixed"
    output_keys = DETECTION_KEYS

    def fit(self, *args, **kwargs):
        """``keras.Model.fit``, with the optimizer's variables made before the first step.

        Without a distribution strategy, Keras' TensorFlow trainer builds an unbuilt optimizer
        inside the first traced train step; a ``tf.function`` that creates variables is traced
        twice, and a detector's train step is costly to trace (SSDLite-MobileNetV2 on 2 CPU
        cores: the first ``fit`` step took 64 s, 32 s with the optimizer built first). The
        optimizer is built on ``self.trainable_variables``, the variables Keras would give it
        at that point, so behaviour is unchanged.

        BatchNormalization layers train with the fused kernel meanwhile
        (:func:`kft.train.fused_bn.fused_batch_norms`: same results, a third off an SSDLite
        step on CPU).
        """
        from kft.train.fused_bn import fused_batch_norms

        optimizer = getattr(self, "optimizer", None)
        if optimizer is not None and not optimizer.built:
            optimizer.build(self.trainable_variables)
        with fused_batch_norms(self):
            return super().fit(*args, **kwargs)

    def decode(self, raw: dict) -> dict:
        """Raw outputs of ``self(images)`` -> the detection dict (each detector defines it)."""
        raise TypeError(f"{type(self).__name__} does not define decode(): a Detector subclass "
                        "maps its raw outputs to detections there")

    def detect(self, images) -> dict:
        """Detections for float32 images ``[B, H, W, 3]`` (0..255), in inference mode."""
        return self.decode(self(images, training=False))

    def predict_step(self, data):
        x = data[0] if isinstance(data, (tuple, list)) else data
        return self.detect(x)

    def inference_model(self) -> keras.Model:
        """A functional model ``images -> detections`` (one graph: network + decoding)."""
        images = keras.Input(self.input_shape[1:], name="images")
        return keras.Model(images, self.decode(self(images)), name=f"{self.name}_inference")

    def resize_args(self) -> dict:
        """How kft's pipeline sizes images for this model: the keywords of
        ``kft.data.detection_pipeline.detection_batches`` / ``resize_image`` (training,
        evaluation, ``kft predict`` and export all read them from here or the recipe)."""
        return {"image_size": self.input_size, "resize": self.resize}

    @property
    def input_size(self) -> tuple[int, int]:
        """``(H, W)`` of the static image input."""
        h, w = self.input_shape[1:3]
        return int(h), int(w)
