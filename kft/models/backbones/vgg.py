"""SSD's VGG-16 feature extractor (Liu et al., "SSD: Single Shot MultiBox Detector", 2016).

The network is the one of the paper and of torchvision's ``ssd300_vgg16``:

* VGG-16 ``conv1_1`` ... ``conv5_3`` (3x3 convolutions with bias, ReLU), named as in
  ``keras.applications.VGG16`` (``block1_conv1`` ... ``block5_conv3``, pools ``block1_pool`` ...)
  so that ImageNet weights copy across by name (:func:`load_vgg16_imagenet`);
* ``block3_pool`` rounds up (Caffe/torch ``ceil_mode``: 75 -> 38 at 300 px) and ``block5_pool``
  is 3x3 stride 1 (keeps 19x19);
* ``conv4_3`` is L2-normalised across channels with a learnable per-channel scale starting at 20
  (:class:`L2Normalization`);
* ``fc6`` is a 3x3 convolution with dilation 6 and ``fc7`` a 1x1 convolution, both 1024 wide
  (the paper's subsampled fully connected layers, see :func:`subsample_fc6`);
* extra layers ``convN_1`` (1x1) -> ``convN_2`` (3x3) shrink the map down to 1x1.

Feature levels (``model.level_names`` gives the order; ``model(images)`` returns a dict):

=========  ======  ===========  ===========
level      depth   300 px       512 px
=========  ======  ===========  ===========
conv4_3    512     38x38        64x64
fc7        1024    19x19        32x32
conv8_2    512     10x10        16x16
conv9_2    256     5x5          8x8
conv10_2   256     3x3          4x4
conv11_2   256     1x1          2x2
conv12_2   256     --           1x1
=========  ======  ===========  ===========

The input is float32 RGB pixels in 0..255; the normalisation the weights expect is the first
layer (:class:`ImageNormalization`):

* ``"caffe"`` (default): RGB -> BGR, minus the ImageNet mean (103.939, 116.779, 123.68), no
  scaling -- ``keras.applications.vgg16.preprocess_input``. Pairs with the keras.applications
  VGG16 weights (``vgg16_weights_tf_dim_ordering_tf_kernels[_notop].h5``) and with the original
  Caffe SSD / ``VGG_ILSVRC_16_layers_fc_reduced`` weights, which are all Caffe conversions.
* ``"torch"``: RGB, ``(x / 255 - (0.485, 0.456, 0.406)) / (0.229, 0.224, 0.225)``. Pairs with
  torchvision's ``vgg16(weights="IMAGENET1K_V1")`` converted to Keras layout.
* ``"torchvision_ssd"``: RGB minus (123, 117, 104), no scaling -- what torchvision's
  ``ssd300_vgg16`` feeds its ``vgg16_features`` (Caffe weights with the input channels in RGB).
* ``"none"``: the caller normalises.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import keras
import numpy as np
from keras import layers, ops

# Output filters of the VGG-16 convolutions, block by block (keras.applications' blocks 1-5).
VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
VGG16_CONV_NAMES = tuple(
    f"block{b + 1}_conv{i + 1}" for b, block in enumerate(VGG16_BLOCKS) for i in range(len(block))
)

# Extra layers per image size: (name, 1x1 filters, 3x3 filters, kernel, stride, padding).
# 300: conv8/conv9 halve with padding 1, conv10/conv11 are unpadded (5 -> 3 -> 1).
# 512: conv8 ... conv11 halve with padding 1 and conv12_2 is a 4x4 kernel with padding 1
# (2 -> 1), as in the Caffe SSD512 prototxt.
EXTRA_LAYERS = {
    300: (("conv8", 256, 512, 3, 2, 1), ("conv9", 128, 256, 3, 2, 1),
          ("conv10", 128, 256, 3, 1, 0), ("conv11", 128, 256, 3, 1, 0)),
    512: (("conv8", 256, 512, 3, 2, 1), ("conv9", 128, 256, 3, 2, 1),
          ("conv10", 128, 256, 3, 2, 1), ("conv11", 128, 256, 3, 2, 1),
          ("conv12", 128, 256, 4, 1, 1)),
}

# mode -> (mean, std, reverse channels); mean/std in 0..255 units and in the *output* order.
NORMALIZATIONS = {
    "caffe": ((103.939, 116.779, 123.68), (1.0, 1.0, 1.0), True),
    "torch": ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375), False),
    "torchvision_ssd": ((123.0, 117.0, 104.0), (1.0, 1.0, 1.0), False),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), False),
}


@keras.saving.register_keras_serializable(package="kft")
class ImageNormalization(layers.Layer):
    """Pixels ``[B, H, W, 3]`` in 0..255 (RGB) -> ``(x[..., order] - mean) / std``.

    ``mode`` is a key of ``NORMALIZATIONS``; ``"caffe"`` equals
    ``keras.applications.vgg16.preprocess_input``.
    """

    def __init__(self, mode: str = "caffe", **kwargs):
        super().__init__(**kwargs)
        if mode not in NORMALIZATIONS:
            raise ValueError(f"normalization={mode!r} is not one of {sorted(NORMALIZATIONS)}")
        self.mode = mode
        mean, std, self.reverse = NORMALIZATIONS[mode]
        self.mean = np.asarray(mean, "float32")
        self.inv_std = 1.0 / np.asarray(std, "float32")

    def call(self, images):
        x = ops.cast(images, "float32")
        if self.reverse:
            x = ops.flip(x, axis=-1)
        x = (x - self.mean) * self.inv_std
        return ops.cast(x, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="kft")
class L2Normalization(layers.Layer):
    """``scale * x / max(||x||_2, epsilon)`` over the channel axis (ParseNet; SSD's conv4_3).

    Input and output ``[B, H, W, C]``; ``scale`` is a learnable ``[C]`` vector initialised to
    ``scale_init`` (20 in SSD). The norm is computed in float32 so that a float16 sum of 512
    squared activations cannot overflow under mixed precision.
    """

    def __init__(self, scale_init: float = 20.0, epsilon: float = 1e-12, **kwargs):
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.scale_init = float(scale_init)
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        self.scale = self.add_weight(
            name="scale", shape=(input_shape[-1],), dtype="float32",
            initializer=keras.initializers.Constant(self.scale_init))

    def call(self, x):
        x32 = ops.cast(x, "float32")
        norm = ops.sqrt(ops.sum(ops.square(x32), axis=-1, keepdims=True))
        y = x32 / ops.maximum(norm, self.epsilon) * ops.cast(self.scale, "float32")
        return ops.cast(y, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "scale_init": self.scale_init, "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="kft")
class SSDVGG16(keras.Model):
    """SSD's VGG-16 backbone: images ``[B, S, S, 3]`` (0..255 RGB) -> dict of feature levels.

    Args:
        image_size: 300 (SSD300, 6 levels) or 512 (SSD512, 7 levels).
        normalization: a key of ``NORMALIZATIONS`` (see the module docstring for which weights
            each pairs with).

    ``level_names`` lists the levels from the finest (``conv4_3``) to the coarsest. Build it with
    :func:`ssd_vgg16`; load ImageNet weights with :func:`load_vgg16_imagenet`.
    """

    def __init__(self, image_size: int = 300, normalization: str = "caffe", **kwargs):
        if image_size not in EXTRA_LAYERS:
            raise ValueError(f"image_size={image_size!r}: SSD's VGG16 is defined for "
                             f"{sorted(EXTRA_LAYERS)}")
        images = keras.Input((image_size, image_size, 3), name="images")
        x = ImageNormalization(normalization, name="normalize")(images)
        levels = {}
        for b, block in enumerate(VGG16_BLOCKS):
            for i, filters in enumerate(block):
                x = layers.Conv2D(filters, 3, padding="same", activation="relu",
                                  name=f"block{b + 1}_conv{i + 1}")(x)
            if b == 3:
                levels["conv4_3"] = L2Normalization(20.0, name="conv4_3_norm")(x)
            if b == 4:
                pool = layers.MaxPooling2D(3, strides=1, padding="same", name="block5_pool")
            else:
                # "same" pooling of an odd side rounds up like ceil_mode: 75 -> 38 at 300 px.
                pool = layers.MaxPooling2D(2, strides=2, padding="same" if b == 2 else "valid",
                                           name=f"block{b + 1}_pool")
            x = pool(x)
        x = layers.Conv2D(1024, 3, padding="same", dilation_rate=6, activation="relu",
                          name="fc6")(x)
        x = layers.Conv2D(1024, 1, activation="relu", name="fc7")(x)
        levels["fc7"] = x
        for name, mid, filters, kernel, stride, pad in EXTRA_LAYERS[image_size]:
            x = layers.Conv2D(mid, 1, activation="relu", name=f"{name}_1")(x)
            if pad:
                x = layers.ZeroPadding2D(pad, name=f"{name}_2_pad")(x)
            x = layers.Conv2D(filters, kernel, strides=stride, activation="relu",
                              name=f"{name}_2")(x)
            levels[f"{name}_2"] = x
        super().__init__(inputs=images, outputs=levels, **kwargs)
        self.image_size = image_size
        self.normalization = normalization
        self.level_names = tuple(levels)

    def stage_names(self) -> list[str]:
        """Backbone stages bottom-up (``block1`` ... ``block5``, ``fc`` = the converted fc6/fc7),
        as ``train.trainable_stages`` / ``layer_lrs`` name them."""
        return [f"block{b + 1}" for b in range(len(VGG16_BLOCKS))] + ["fc"]

    def stage_of(self, layer_name: str) -> str | None:
        """The stage of a layer; ``None`` for the extra layers (new, always trained)."""
        if layer_name.startswith("block"):
            return layer_name.split("_", 1)[0]
        if layer_name == "conv4_3_norm":
            return "block4"
        if layer_name in ("fc6", "fc7"):
            return "fc"
        return None

    def get_config(self):
        return {"image_size": self.image_size, "normalization": self.normalization,
                "name": self.name, "trainable": self.trainable}


def ssd_vgg16(image_size: int = 300, *, normalization: str = "caffe",
              name: str = "vgg16_ssd") -> SSDVGG16:
    """SSD300 (``image_size=300``) or SSD512 (``512``) VGG-16 backbone, randomly initialised.

    Returns an :class:`SSDVGG16`; ``model(images)`` is ``{level: [B, h, w, C]}`` in the order of
    ``model.level_names`` (see the module docstring for the shapes).
    """
    return SSDVGG16(image_size, normalization, name=name)


# --------------------------------------------------------------------------------------------
# Weights


def subsample_fc6(kernel, bias, *, grid: int = 7, step: int = 3, out_step: int = 4):
    """VGG's ``fc1`` -> SSD's atrous ``fc6`` kernel (Liu et al. 2016, section 3).

    Args:
        kernel: ``[grid * grid * C, N]`` Dense kernel applied to the channels-last flattening of a
            ``[grid, grid, C]`` map (keras.applications VGG16: ``[25088, 4096]``, 7x7x512).
        bias: ``[N]``.
        grid: side of the flattened map. ``step``: spatial subsampling, 7 -> 3 taps at rows and
            columns 0, 3, 6, i.e. -96, 0, +96 px around the centre on VGG's stride-32 ``pool5``;
            SSD's ``fc6`` sees a stride-16 map (``block5_pool`` keeps the resolution), where
            96 px is 6 cells: hence the dilation 6. ``out_step``: keep every ``out_step``-th
            output unit (4096 -> 1024).

    Returns:
        ``(kernel [ceil(grid/step), ceil(grid/step), C, ceil(N/out_step)], bias [...])``;
        ``[3, 3, 512, 1024]`` and ``[1024]`` for VGG16.
    """
    kernel, bias = np.asarray(kernel), np.asarray(bias)
    rows, units = kernel.shape
    channels, rest = divmod(rows, grid * grid)
    if rest:
        raise ValueError(f"fc1 kernel {kernel.shape}: rows are not a {grid}x{grid}xC flattening")
    k = kernel.reshape(grid, grid, channels, units)[::step, ::step, :, ::out_step]
    return np.ascontiguousarray(k), bias[::out_step].copy()


def subsample_fc7(kernel, bias, *, step: int = 4):
    """VGG's ``fc2`` ``[M, N]`` -> SSD's ``fc7`` 1x1 kernel ``[1, 1, M/step, N/step]``.

    Keeps every ``step``-th input and output unit (4096x4096 -> 1x1x1024x1024), the inputs
    matching the units :func:`subsample_fc6` keeps.
    """
    kernel, bias = np.asarray(kernel), np.asarray(bias)
    k = kernel[::step, ::step]
    return np.ascontiguousarray(k[None, None]), bias[::step].copy()


def read_h5_layer_weights(path: str | Path) -> dict[str, list[np.ndarray]]:
    """``{layer name: [arrays in the layer's weight order]}`` from a Keras weights ``.h5`` file.

    Reads both layouts: the legacy one of the keras.applications downloads and of Keras 2
    (``layer_names`` / ``weight_names`` attributes, also under ``model_weights/`` of a full-model
    ``.h5``), and Keras 3's ``.weights.h5`` (``layers/<group>/vars/<i>`` with the layer's name
    in the ``vars`` group's ``name`` attribute; nested models are walked).
    """
    from kft.models.weights import WeightsError

    out: dict[str, list[np.ndarray]] = {}
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise WeightsError(f"{path}: cannot open as HDF5: {e}") from e
    with f:
        root = f["model_weights"] if "model_weights" in f else f
        if "layer_names" in root.attrs:
            for lname in root.attrs["layer_names"]:
                lname = _text(lname)
                group = root[lname]
                out[lname] = [np.asarray(group[_text(w)]) for w in group.attrs["weight_names"]]
        elif "layers" in root:
            _walk_keras3(root["layers"], out)
        else:
            raise WeightsError(f"{path}: not a Keras weights file (no layer_names attribute "
                               "and no layers/ group)")
    return out


def _walk_keras3(group, out):
    for key in group:
        sub = group[key]
        if not isinstance(sub, h5py.Group):
            continue
        variables = sub.get("vars")
        if isinstance(variables, h5py.Group) and len(variables):
            name = _text(variables.attrs.get("name", key))
            out[name] = [np.asarray(variables[i]) for i in sorted(variables, key=int)]
        if isinstance(sub.get("layers"), h5py.Group):
            _walk_keras3(sub["layers"], out)


def _text(value) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def _kernel_bias(arrays):
    """Splits a Dense/Conv layer's arrays into (kernel, bias) by rank, whatever the file order."""
    kernels = [a for a in arrays if a.ndim > 1]
    biases = [a for a in arrays if a.ndim == 1]
    if len(kernels) != 1 or len(biases) != 1:
        raise ValueError(f"expected a kernel and a bias, got shapes {[a.shape for a in arrays]}")
    return kernels[0], biases[0]


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


def load_vgg16_imagenet(model, weights_path: str | Path,
                        fc_weights_path: str | Path | None = None) -> dict:
    """Copies keras.applications VGG16 weights into an SSD VGG16 (or a model containing one).

    Args:
        model: an :class:`SSDVGG16`, or any model whose (possibly nested) layers include
            ``block1_conv1`` ... ``block5_conv3`` (and ``fc6``/``fc7``).
        weights_path: a VGG16 weights ``.h5`` file (legacy or Keras 3 layout), with or without
            the top: ``block1_conv1`` ... ``block5_conv3`` are copied by name. When the file
            also holds ``fc1``/``fc2`` (``include_top=True``), they are subsampled into
            ``fc6``/``fc7`` (:func:`subsample_fc6`, :func:`subsample_fc7`).
        fc_weights_path: another file to take ``fc1``/``fc2`` from (e.g. the full
            ``vgg16_weights_tf_dim_ordering_tf_kernels.h5`` next to a ``_notop`` file).

    The weights are Caffe conversions: build the model with ``normalization="caffe"``.

    Returns:
        ``{"loaded": [layer names], "new": [layer names left as initialised], "source": str}``.
        ``conv4_3_norm``, ``fc6``/``fc7`` without fully connected weights, and the extra layers
        are ``new``.
    """
    from kft.models.weights import WeightsError

    source = read_h5_layer_weights(weights_path)
    missing = [n for n in VGG16_CONV_NAMES if n not in source]
    if missing:
        raise WeightsError(f"{weights_path}: not a VGG16 weights file; missing {missing[:4]} "
                           f"(has {sorted(source)[:6]} ...)")
    values = {name: list(_kernel_bias(source[name])) for name in VGG16_CONV_NAMES}
    fc_source = read_h5_layer_weights(fc_weights_path) if fc_weights_path else source
    if "fc1" in fc_source and "fc2" in fc_source:
        values["fc6"] = list(subsample_fc6(*_kernel_bias(fc_source["fc1"])))
        values["fc7"] = list(subsample_fc7(*_kernel_bias(fc_source["fc2"])))
    elif fc_weights_path:
        raise WeightsError(f"{fc_weights_path}: no fc1/fc2 layers (a VGG16 include_top=True "
                           "weights file is needed for fc6/fc7)")

    by_name = {layer.name: layer for layer in _all_layers(model) if layer.weights}
    absent = [n for n in values if n not in by_name]
    if absent:
        raise WeightsError(f"the model has no layers {absent}; is it an SSD VGG16?")
    for name, arrays in values.items():
        layer = by_name[name]
        want = [tuple(w.shape) for w in layer.weights]
        got = [tuple(a.shape) for a in arrays]
        if want != got:
            raise WeightsError(f"{name}: weights file has shapes {got}, the model {want}")
        layer.set_weights(arrays)
    return {"loaded": list(values), "new": [n for n in by_name if n not in values],
            "source": str(weights_path)}
