"""The paper's starting point: the trunk initialised from ImageNet VGG16 (Sec. 3).

Zhao et al. fine-tune an ImageNet-pretrained VGG16 (SGD, lr 1e-4).  Our trunk
(``model.trunk``) is VGG16 conv1..conv5 without padding, with the layer names
of ``keras.applications.VGG16`` (``block{b}_conv{c}``), so the 13 kernels and
biases copy across by name.  Two things must travel with them:

- the input convention those weights were trained with: Keras' VGG16 expects
  ``keras.applications.vgg16.preprocess_input`` ("caffe": RGB -> BGR, minus
  the ImageNet channel means, no scaling), not the project's [-1, 1].  It is
  built into the model (``CaffeNormalisation``, chosen by
  ``ModelConfig.input_convention``), so every export takes raw RGB 0..255
  and no caller can forget it;
- the paper's widths (64, 128, 256, 512, 512): other widths cannot take them.

``keras.applications.VGG16(weights="imagenet")`` downloads the weights file on
the user's machine the first time (to ``~/.keras/models``); a path to a saved
VGG16 weights file works offline, which is how the tests run.
"""

from __future__ import annotations

import os

import keras
from keras import ops

from pfascannet.errors import PfaError
from pfascannet.model.config import ModelConfig
from pfascannet.model.trunk import CONVS_PER_BLOCK

IMAGENET_BGR_MEAN = (103.939, 116.779, 123.68)
"""Per-channel means (B, G, R) that ``keras.applications.vgg16.preprocess_input`` subtracts."""

IMAGENET_WIDTHS = ModelConfig.paper().widths
"""VGG16's conv block widths (the paper's config): the only widths ImageNet weights fit."""


class ImagenetInitError(PfaError, ValueError):
    """ImageNet weights that cannot be loaded into this model."""


@keras.saving.register_keras_serializable(package="pfascannet")
class CaffeNormalisation(keras.layers.Layer):
    """RGB 0..255 -> BGR minus the ImageNet means (``vgg16.preprocess_input``, "caffe").

    Written with ``keras.ops`` only, so it runs under every backend and in
    every export.  Input and output [N, H, W, 3].
    """

    def call(self, x):
        x = ops.cast(x, self.compute_dtype)
        bgr = ops.flip(x, axis=-1)
        mean = ops.convert_to_tensor(IMAGENET_BGR_MEAN, dtype=self.compute_dtype)
        return bgr - ops.reshape(mean, (1, 1, 1, 3))

    def compute_output_shape(self, input_shape):
        return input_shape


def trunk_layer_names() -> list[str]:
    """``block{b}_conv{c}`` for VGG16's 13 convolutions, in order."""
    return [f"block{b}_conv{c}" for b, convs in enumerate(CONVS_PER_BLOCK, start=1) for c in range(1, convs + 1)]


def imagenet_vgg16(weights: str = "imagenet") -> keras.Model:
    """``keras.applications.VGG16`` without the top, with ``weights``.

    Args:
      weights: ``"imagenet"`` (Keras fetches the file on first use) or a path
        to a weights file saved from ``VGG16(include_top=False)``.

    Raises:
      ImagenetInitError: a path that does not exist or does not fit VGG16.
    """
    if weights != "imagenet" and not os.path.isfile(weights):
        raise ImagenetInitError(f"{weights}: no such VGG16 weights file (or pass 'imagenet')")
    try:
        return keras.applications.VGG16(include_top=False, weights=weights, input_shape=(None, None, 3))
    except (ValueError, OSError) as e:
        raise ImagenetInitError(f"{weights}: cannot be loaded as VGG16 weights without the top: {e}") from None


def load_imagenet_trunk(model: keras.Model, weights: str = "imagenet") -> int:
    """Copies VGG16's 13 conv kernels and biases into ``model``'s trunk, by name.

    Args:
      model: a detector or training model built with the paper's widths and
        ``input_convention="caffe"``.
      weights: as for ``imagenet_vgg16``.

    Returns:
      The number of layers copied (13).

    Raises:
      ImagenetInitError: other widths, the wrong input convention, or weights
        that do not fit.
    """
    names = trunk_layer_names()
    layers = {layer.name: layer for layer in model.layers}
    missing = [n for n in names if n not in layers]
    if missing:
        raise ImagenetInitError(f"model {model.name!r} has no trunk layers {missing}")
    widths = tuple(layers[f"block{b}_conv1"].filters for b in range(1, 6))
    if widths != IMAGENET_WIDTHS:
        raise ImagenetInitError(
            f"ImageNet VGG16 weights need the paper's widths {IMAGENET_WIDTHS}; model {model.name!r} has {widths}"
        )
    if not any(isinstance(layer, CaffeNormalisation) for layer in model.layers):
        raise ImagenetInitError(
            f"model {model.name!r} does not normalise its input the way ImageNet VGG16 expects: "
            "build it with ModelConfig(input_convention='caffe')"
        )
    vgg = imagenet_vgg16(weights)
    source = {layer.name: layer for layer in vgg.layers}
    for name in names:
        layers[name].set_weights(source[name].get_weights())
    return len(names)
