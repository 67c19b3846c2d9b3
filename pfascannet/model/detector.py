"""PFA-ScanNet's detector and its training model (Fig. 1, Sec. 2.1-2.3).

Detector: normalise (``ModelConfig.input_convention``) -> no-padding VGG16 conv1..conv5 -> PFE on X3, X4, X5
-> DensePooling (stride s_i / alpha) -> M3 + M4 + M5 -> 1x1 conv (2) ->
softmax.  Built at alpha = 1 on a 692 patch it is the patch classifier (one
output); built at alpha on an ROI of side LR = 692 + (512/alpha)(Lm - 1)
(eq. (1)) it returns the Lm x Lm map whose pixel (u, v) equals the patch
classifier on the 692 patch at offset (512/alpha)(u, v) in the ROI
(``shared/DESIGN.md`` section 1).  The same weights serve every alpha: layers
are matched by name (``transfer_weights``).

Training model: the detector at alpha = 1 on [N, 692, 692, 3] plus PFE on X2
and the decoder (``decoder.py``), returning a dict of the classifier and the
three deep-supervision maps, for the synergistic loss of eq. (3).
"""

from __future__ import annotations

import keras

from pfascannet import geometry
from pfascannet.model.config import SCORE_CHANNELS, ConfigError, ModelConfig
from pfascannet.model.decoder import build_decoder
from pfascannet.model.dense_pooling import dense_pooling_for_level
from pfascannet.model.imagenet import CaffeNormalisation
from pfascannet.model.pfe import pfe_block
from pfascannet.model.precision import dtype_policy
from pfascannet.model.trunk import vgg16_trunk

TUMOUR_CHANNEL = 1
"""Channel of the softmax outputs that is the tumour probability."""


def _normalise(x, config: ModelConfig):
    # RGB 0..255 (uint8 or float) -> the trunk's input convention; inside the
    # model so every export takes raw pixels and no caller can forget or double
    # the normalisation.  "caffe" is what ImageNet VGG16 weights expect.
    # Always float32 (``precision.py``): under mixed precision the first
    # convolution casts its result to the compute type.
    if config.input_convention == "caffe":
        return CaffeNormalisation(name="normalise", dtype="float32")(x)
    return keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="normalise", dtype="float32")(x)


def _detector_head(pfe_maps: dict, alpha: int):
    pooled = [dense_pooling_for_level(level, alpha)(pfe_maps[level]) for level in geometry.HEAD_LEVELS]
    m = keras.layers.Add(name="pyramid_sum")(pooled)
    logits = keras.layers.Conv2D(SCORE_CHANNELS, 1, name="classifier_conv")(m)
    # float32 whatever the policy (``precision.py``): probabilities near 0 and
    # 1 are what the lesion candidates and the FROC sweep look at.
    return keras.layers.Softmax(name="probabilities", dtype="float32")(logits)


def build_detector(
    config: ModelConfig, alpha: int = 1, input_px: int | None = None, precision: str | None = None
) -> keras.Model:
    """The detector at dense coefficient ``alpha``.

    Args:
      config: widths.
      alpha: dense coefficient (1, 2, 4, 8, 16, 32); output stride 512/alpha px.
      input_px: fixed input side LR, or None for any side on the grid (one
        model serves every ROI size; a side off the grid fails in the
        pyramid sum).  Validated against eq. (1) when given.
      precision: "float32", "bfloat16" or "float16" (``model.precision``:
        mixed precision, softmax and normalisation in float32); None: Keras'
        global dtype policy as it is.

    Returns:
      Model RGB [N, LR, LR, 3] (0..255, uint8 or float) -> softmax
      [N, Lm, Lm, 2] (float32), channel 1 = tumour.
    """
    if precision is not None:
        with dtype_policy(precision):
            return build_detector(config, alpha, input_px)
    geometry.check_alpha(alpha)
    if input_px is not None:
        geometry.ScanGeometry(alpha=alpha, roi_px=input_px)  # eq. (1) and even pooling sides
    inputs = keras.Input((input_px, input_px, 3), name="rgb")
    feats = vgg16_trunk(_normalise(inputs, config), config)
    pfe_maps = {level: pfe_block(feats[level], level) for level in geometry.HEAD_LEVELS}
    probs = _detector_head(pfe_maps, alpha)
    return keras.Model(inputs, probs, name=f"pfascannet_detector_{config.name}_alpha{alpha}")


def build_patch_classifier(config: ModelConfig, precision: str | None = None) -> keras.Model:
    """The detector at alpha = 1 on one 692 patch: [N, 692, 692, 3] -> [N, 1, 1, 2]."""
    return build_detector(config, alpha=1, input_px=geometry.PATCH_PX, precision=precision)


def build_training_model(config: ModelConfig) -> keras.Model:
    """Detector + decoder for synergistic learning (eq. (3)).

    Returns:
      Model [N, 692, 692, 3] (0..255) -> dict:
        ``classifier``: softmax [N, 2] (the detector's single output per patch),
        ``seg_stride8``: [N, 62, 62, 2], ``seg_stride4``: [N, 128, 128, 2],
        ``seg_stride2``: [N, 256, 256, 2] (decoder maps, see
        ``decoder.DECODER_SCALES`` for the mask region each covers).
    """
    inputs = keras.Input((geometry.PATCH_PX, geometry.PATCH_PX, 3), name="rgb")
    feats = vgg16_trunk(_normalise(inputs, config), config)
    pfe_maps = {level: pfe_block(feats[level], level) for level in (2, *geometry.HEAD_LEVELS)}
    probs = _detector_head(pfe_maps, alpha=1)
    outputs = {"classifier": keras.layers.Reshape((SCORE_CHANNELS,), name="classifier")(probs)}
    outputs.update(build_decoder(pfe_maps, config))
    return keras.Model(inputs, outputs, name=f"pfascannet_training_{config.name}")


def transfer_weights(src: keras.Model, dst: keras.Model) -> int:
    """Copies the weights of every layer of ``dst`` that has weights from ``src``'s layer of the same name.

    Training weights (``build_training_model``) thereby serve the detector at
    any alpha, and a detector's weights a detector at another alpha.  Layers
    of ``src`` absent from ``dst`` (the decoder) are ignored.

    Returns:
      The number of layers copied.

    Raises:
      ConfigError: a weighted layer of ``dst`` is missing in ``src`` or its
        weights have other shapes (e.g. models of different configs).
    """
    src_layers = {layer.name: layer for layer in src.layers}
    copied = 0
    for layer in dst.layers:
        if not layer.weights:
            continue
        other = src_layers.get(layer.name)
        if other is None:
            raise ConfigError(f"layer {layer.name!r} of {dst.name!r} has no namesake in {src.name!r}")
        values = other.get_weights()
        shapes = [tuple(w.shape) for w in layer.weights]
        if [tuple(v.shape) for v in values] != shapes:
            raise ConfigError(
                f"layer {layer.name!r}: weights {[tuple(v.shape) for v in values]} in {src.name!r} "
                f"do not fit {shapes} in {dst.name!r} (different configs?)"
            )
        layer.set_weights(values)
        copied += 1
    return copied


def detector_macs(side_px: int, config: ModelConfig, alpha: int = 1) -> int:
    """Multiply-accumulates of one detector forward pass on a ``side_px`` square input.

    Trunk (``trunk.trunk_macs``; 2.17e12 for a 2708 ROI at the paper's widths)
    plus the PFE convolutions at levels 3-5 and the 1x1 classifier; average
    pooling is additions only and not counted.
    """
    from pfascannet.model.trunk import trunk_macs  # noqa: PLC0415

    k = geometry.GLOBAL_CONV_K
    macs = trunk_macs(side_px, config)
    sides = geometry.feature_sides(side_px)
    for level in geometry.HEAD_LEVELS:
        n, c = sides[level], config.widths[level - 1]
        first = (n - k + 1) * n * k * c * SCORE_CHANNELS  # 15x1 or 1x15 on X_i
        second = (n - k + 1) ** 2 * k * SCORE_CHANNELS * SCORE_CHANNELS
        macs += 2 * (first + second)
    lm = geometry.tile_px(side_px, alpha)
    return macs + lm * lm * SCORE_CHANNELS * SCORE_CHANNELS
