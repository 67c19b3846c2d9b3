"""The decoder: boundary-aware modules, deconvolutions, deep supervision (Fig. 1, Fig. 2b, Sec. 2.3).

Training only; the exported detector does not contain it.  Bottom-up path
(``shared/DESIGN.md`` section 1):

    S8 = X'4 + pad(deconv(X'5))            supervised at stride 8
    S4 = crop(X'3) + pad(deconv(BM(S8)))   supervised at stride 4
    S2 = crop(X'2) + deconv(BM(S4))        supervised at stride 2

BM(x) = x + conv3x3(relu(conv3x3(x))) (Fig. 2b).  The deconvolutions are
4x4, stride 2, ``same`` (output side 2n); the decoder may pad because the
detector never sees it.

Regions (692 patch, all maps centred on the patch centre, which stays at
the centre because every trunk/PFE op is symmetric and valid):

| name        | stride | side | patch px covered | 512-mask px covered | target from the mask |
|-------------|--------|------|------------------|---------------------|----------------------|
| seg_stride8 | 8      | 62   | [98, 594)        | [8, 504)            | crop 8 px per side, 8x8 average |
| seg_stride4 | 4      | 128  | [90, 602)        | [0, 512)            | 4x4 average |
| seg_stride2 | 2      | 256  | [90, 602)        | [0, 512)            | 2x2 average |

Why these: X'4 (62 px at stride 8) covers only the centred 496 px of the patch,
the largest stride-8 region inside the mask, so the coarsest scale keeps all of
X'4 and the upsampled X'5 (36 px, covering the centred 288) is zero-padded by 13
around it; X'3 (150) and X'2 (326) cover more than the mask, so they are
centre-cropped (by 11 and 35) to exactly the mask, and the upsampled
124 px map of S8 is padded by 2 to 128.  Cell j of each map is the
``stride`` x ``stride`` block j of the mask region above, so the target is the
block average: the tumour fraction of that cell (soft labels at boundaries).
``decoder_targets`` computes exactly this; the training pipeline must use it.
"""

from __future__ import annotations

import keras
from keras import ops

from pfascannet import geometry
from pfascannet.model.config import SCORE_CHANNELS, ModelConfig

# name -> (stride in patch px, side in map px, crop of the 512 mask per side in mask px)
DECODER_SCALES = {
    "seg_stride8": (8, 62, 8),
    "seg_stride4": (4, 128, 0),
    "seg_stride2": (2, 256, 0),
}
"""The three deep-supervision maps: stride, side and the mask crop their target uses."""

# Crops / pads inside the decoder (feature px), derived from the sides of a 692 patch.
_X4_SIDE = geometry.pfe_sides(geometry.PATCH_PX)[4]  # 62
_X5_UP_PAD = (_X4_SIDE - 2 * geometry.pfe_sides(geometry.PATCH_PX)[5]) // 2  # (62 - 36) / 2 = 13
_X3_CROP = (geometry.pfe_sides(geometry.PATCH_PX)[3] - geometry.MASK_PX // 4) // 2  # (150 - 128) / 2 = 11
_S8_UP_PAD = (geometry.MASK_PX // 4 - 2 * _X4_SIDE) // 2  # (128 - 124) / 2 = 2
_X2_CROP = (geometry.pfe_sides(geometry.PATCH_PX)[2] - geometry.MASK_PX // 2) // 2  # (326 - 256) / 2 = 35


def boundary_aware_module(x, name: str, config: ModelConfig):
    """BM of Fig. 2b: x + conv3x3(relu(conv3x3(x))), shape-preserving."""
    y = keras.layers.Conv2D(config.bm_channels, 3, padding="same", activation="relu", name=f"{name}_conv1")(x)
    y = keras.layers.Conv2D(SCORE_CHANNELS, 3, padding="same", name=f"{name}_conv2")(y)
    return keras.layers.Add(name=f"{name}_sum")([x, y])


def _deconv(x, name: str):
    return keras.layers.Conv2DTranspose(SCORE_CHANNELS, 4, strides=2, padding="same", name=name)(x)


def build_decoder(pfe_maps: dict, config: ModelConfig) -> dict:
    """The bottom-up decoder on X'2..X'5 of a 692 patch.

    Args:
      pfe_maps: {2: X'2 [N,326,326,2], 3: X'3 [N,150,150,2], 4: X'4 [N,62,62,2], 5: X'5 [N,18,18,2]}.
      config: gives the BM width.

    Returns:
      {name: softmax probabilities [N, side, side, 2]} for the names of
      ``DECODER_SCALES`` (channel 1 = tumour).
    """
    up5 = _deconv(pfe_maps[5], "dec_up5")
    up5 = keras.layers.ZeroPadding2D(_X5_UP_PAD, name="dec_pad5")(up5)
    s8 = keras.layers.Add(name="dec_s8")([pfe_maps[4], up5])

    up4 = _deconv(boundary_aware_module(s8, "bm4", config), "dec_up4")
    up4 = keras.layers.ZeroPadding2D(_S8_UP_PAD, name="dec_pad4")(up4)
    x3 = keras.layers.Cropping2D(_X3_CROP, name="dec_crop3")(pfe_maps[3])
    s4 = keras.layers.Add(name="dec_s4")([x3, up4])

    up3 = _deconv(boundary_aware_module(s4, "bm3", config), "dec_up3")
    x2 = keras.layers.Cropping2D(_X2_CROP, name="dec_crop2")(pfe_maps[2])
    s2 = keras.layers.Add(name="dec_s2")([x2, up3])

    scores = {"seg_stride8": s8, "seg_stride4": s4, "seg_stride2": s2}
    return {name: keras.layers.Softmax(name=name)(s) for name, s in scores.items()}


def decoder_targets(mask) -> dict:
    """Deep-supervision targets from the 512x512 mask centred in the 692 patch.

    Args:
      mask: tumour mask [N, 512, 512] or [N, 512, 512, 1], values in [0, 1]
        (1 = tumour; a bool or 0/1 integer mask is fine).  Works on NumPy
        arrays and, under the TensorFlow backend, inside ``tf.data``.

    Returns:
      {name: tumour fraction [N, side, side, 1] float32} for the names and
      regions of ``DECODER_SCALES`` (62, 128 and 256 px).
    """
    mask = ops.cast(mask, "float32")
    if len(ops.shape(mask)) == 3:
        mask = ops.expand_dims(mask, -1)
    side = ops.shape(mask)[1]
    if side is not None and (side != geometry.MASK_PX or ops.shape(mask)[2] != geometry.MASK_PX):
        raise geometry.GeometryError(
            f"decoder targets need a {geometry.MASK_PX}x{geometry.MASK_PX} mask, got {tuple(ops.shape(mask))}"
        )
    out = {}
    for name, (stride, _side, crop) in DECODER_SCALES.items():
        m = mask[:, crop:geometry.MASK_PX - crop, crop:geometry.MASK_PX - crop, :]
        out[name] = ops.average_pool(m, pool_size=stride, strides=stride, padding="valid")
    return out
