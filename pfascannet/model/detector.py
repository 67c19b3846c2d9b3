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

Both are registered functional subclasses (``PfaScanNetDetector``,
``PfaScanNetTrainingModel``) whose ``get_config`` holds the ``ModelConfig``,
alpha and the pixel size of the training slides, so an export rebuilds itself
and the scanner can check a slide's pixel size against the model's.
"""

from __future__ import annotations

import contextlib
import math

import keras

from pfascannet import geometry
from pfascannet.camelyon import LEVEL0_MPP
from pfascannet.model.config import SCORE_CHANNELS, ConfigError, ModelConfig
from pfascannet.model.decoder import build_decoder
from pfascannet.model.dense_pooling import dense_pooling_for_level
from pfascannet.model.imagenet import CaffeNormalisation
from pfascannet.model.pfe import pfe_block
from pfascannet.model.precision import dtype_policy, model_precision
from pfascannet.model.trunk import trunk_macs, vgg16_trunk

TUMOUR_CHANNEL = 1
"""Channel of the softmax outputs that is the tumour probability."""

TRAINING_MPP = LEVEL0_MPP
"""Default ``training_mpp``: Camelyon's level-0 pixel size (um/px), what every shipped model was trained at."""


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


@keras.saving.register_keras_serializable(package="pfascannet")
class PfaScanNetDetector(keras.Model):
    """The detector at dense coefficient ``alpha``, a functional model that carries its own config.

    KerasHub's backbone pattern: the graph is built with the functional API in
    ``__init__``, and ``get_config`` returns the constructor's arguments, so a
    saved ``.keras`` file rebuilds itself (widths, ``bm_channels``, config
    name, input convention, alpha, precision) and says at which pixel size
    it was trained.  Layer names are the same at every alpha and in the
    training model, so weights are matched by name (``transfer_weights``).

    Args:
      widths: output channels of VGG16 conv1..conv5 (``ModelConfig.widths``).
      bm_channels: width of the decoder's boundary-aware modules; the
        detector has no decoder, but keeps it so its config is whole.
      config_name: the ``ModelConfig`` name (``paper``, ``tiny``, ...).
      input_convention: ``"unit"`` or ``"caffe"`` (``ModelConfig``).
      alpha: dense coefficient (1, 2, 4, 8, 16, 32); output stride 512/alpha px.
      input_px: fixed input side LR, or None for any side on the grid (one
        model serves every ROI size; a side off the grid fails in the
        pyramid sum).  Validated against eq. (1) when given.
      training_mpp: microns per pixel of the slides the weights were trained
        on (Camelyon level 0: 0.243); the scanner warns when a slide's
        differs by more than 10 % (``inference.export_meta.mpp_mismatch``).
      precision: "float32", "bfloat16" or "float16" (``model.precision``:
        mixed precision, softmax and normalisation in float32); None: Keras'
        global dtype policy as it is.

    Call: RGB [N, LR, LR, 3] (0..255, uint8 or float) -> softmax
    [N, Lm, Lm, 2] (float32), channel 1 = tumour, LR = 692 + (512/alpha)(Lm - 1).
    """

    def __init__(
        self,
        widths=ModelConfig.widths,
        bm_channels: int = ModelConfig.bm_channels,
        config_name: str = ModelConfig.name,
        input_convention: str = ModelConfig.input_convention,
        alpha: int = 1,
        input_px: int | None = None,
        training_mpp: float = TRAINING_MPP,
        precision: str | None = None,
        **kwargs,
    ):
        config = ModelConfig(name=config_name, widths=widths, bm_channels=bm_channels, input_convention=input_convention)
        geometry.check_alpha(alpha)
        training_mpp = check_training_mpp(training_mpp)
        if input_px is not None:
            geometry.ScanGeometry(alpha=alpha, roi_px=input_px)  # eq. (1) and even pooling sides
        kwargs.setdefault("name", f"pfascannet_detector_{config.name}_alpha{alpha}")
        with _policy(precision):
            # === Functional model ===
            inputs = keras.Input((input_px, input_px, 3), name="rgb")
            feats = vgg16_trunk(_normalise(inputs, config), config)
            pfe_maps = {level: pfe_block(feats[level], level) for level in geometry.HEAD_LEVELS}
            probs = _detector_head(pfe_maps, alpha)
            super().__init__(inputs=inputs, outputs=probs, **kwargs)
        # === Config ===
        self.model_config = config
        self.alpha = int(alpha)
        self.training_mpp = training_mpp

    def get_config(self) -> dict:
        return {
            **_carried_config(self),
            "alpha": self.alpha,
            "input_px": self.input_shape[1],
            "precision": model_precision(self),
        }

    @classmethod
    def from_config(cls, config: dict) -> "PfaScanNetDetector":
        return cls(**config)


@keras.saving.register_keras_serializable(package="pfascannet")
class PfaScanNetTrainingModel(keras.Model):
    """Detector + decoder for synergistic learning (eq. (3)), carrying its config like the detector.

    Args: as ``PfaScanNetDetector`` (alpha is 1 and the input 692).

    Call: [N, 692, 692, 3] (0..255) -> dict:
      ``classifier``: softmax [N, 2] (the detector's single output per patch),
      ``seg_stride8``: [N, 62, 62, 2], ``seg_stride4``: [N, 128, 128, 2],
      ``seg_stride2``: [N, 256, 256, 2] (decoder maps, see
      ``decoder.DECODER_SCALES`` for the mask region each covers).
    """

    def __init__(
        self,
        widths=ModelConfig.widths,
        bm_channels: int = ModelConfig.bm_channels,
        config_name: str = ModelConfig.name,
        input_convention: str = ModelConfig.input_convention,
        training_mpp: float = TRAINING_MPP,
        **kwargs,
    ):
        config = ModelConfig(name=config_name, widths=widths, bm_channels=bm_channels, input_convention=input_convention)
        training_mpp = check_training_mpp(training_mpp)
        kwargs.setdefault("name", f"pfascannet_training_{config.name}")
        # === Functional model ===
        inputs = keras.Input((geometry.PATCH_PX, geometry.PATCH_PX, 3), name="rgb")
        feats = vgg16_trunk(_normalise(inputs, config), config)
        pfe_maps = {level: pfe_block(feats[level], level) for level in (2, *geometry.HEAD_LEVELS)}
        probs = _detector_head(pfe_maps, alpha=1)
        outputs = {"classifier": keras.layers.Reshape((SCORE_CHANNELS,), name="classifier")(probs)}
        outputs.update(build_decoder(pfe_maps, config))
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        # === Config ===
        self.model_config = config
        self.alpha = 1
        self.training_mpp = training_mpp

    def get_config(self) -> dict:
        return _carried_config(self)

    @classmethod
    def from_config(cls, config: dict) -> "PfaScanNetTrainingModel":
        return cls(**config)


def _config_args(config: ModelConfig) -> dict:
    return {
        "widths": list(config.widths),
        "bm_channels": config.bm_channels,
        "config_name": config.name,
        "input_convention": config.input_convention,
    }


def _carried_config(model) -> dict:
    """The ``get_config`` both model classes share: name, the ModelConfig's fields, training pixel size."""
    return {"name": model.name, "trainable": model.trainable, **_config_args(model.model_config),
            "training_mpp": model.training_mpp}


def _policy(precision: str | None):
    return contextlib.nullcontext() if precision is None else dtype_policy(precision)


def check_training_mpp(mpp) -> float:
    """``mpp`` as a float if it is a positive finite number of microns per pixel, else raises."""
    ok = isinstance(mpp, (int, float)) and not isinstance(mpp, bool) and math.isfinite(mpp) and mpp > 0
    if not ok:
        raise ConfigError(f"training_mpp must be a positive number of microns per pixel, got {mpp!r}")
    return float(mpp)


def build_detector(
    config: ModelConfig,
    alpha: int = 1,
    input_px: int | None = None,
    precision: str | None = None,
    training_mpp: float = TRAINING_MPP,
) -> PfaScanNetDetector:
    """The detector of ``config`` at dense coefficient ``alpha`` (``PfaScanNetDetector``).

    Args:
      config: widths.
      alpha: dense coefficient (1, 2, 4, 8, 16, 32); output stride 512/alpha px.
      input_px: fixed input side LR, or None for any side on the grid.
      precision: "float32", "bfloat16", "float16", or None (Keras' global policy).
      training_mpp: the pixel size (um/px) the weights were or will be trained at.

    Returns:
      Model RGB [N, LR, LR, 3] (0..255, uint8 or float) -> softmax
      [N, Lm, Lm, 2] (float32), channel 1 = tumour.
    """
    return PfaScanNetDetector(
        **_config_args(config), alpha=alpha, input_px=input_px, training_mpp=training_mpp, precision=precision
    )


def build_patch_classifier(config: ModelConfig, precision: str | None = None) -> PfaScanNetDetector:
    """The detector at alpha = 1 on one 692 patch: [N, 692, 692, 3] -> [N, 1, 1, 2]."""
    return build_detector(config, alpha=1, input_px=geometry.PATCH_PX, precision=precision)


def build_training_model(config: ModelConfig, training_mpp: float = TRAINING_MPP) -> PfaScanNetTrainingModel:
    """Detector + decoder for synergistic learning (eq. (3)); see ``PfaScanNetTrainingModel``."""
    return PfaScanNetTrainingModel(**_config_args(config), training_mpp=training_mpp)


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
