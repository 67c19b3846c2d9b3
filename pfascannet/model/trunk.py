"""The no-padding VGG16 trunk, conv1..conv5 (Sec. 2.2; Fast ScanNet's FCN).

Every convolution is 3x3 ``valid`` with ReLU; a 2x2 max-pool (stride 2)
follows blocks 1-4 and none follows block 5; the fully connected layers of
VGG16 (and Fast ScanNet's three fully convolutional ones) are removed.  So
feature level i has stride 2**(i-1) input pixels (``geometry.TRUNK_STRIDE``).
No padding anywhere is what makes the detector an exact patch classifier
scanned at a fixed stride (``shared/DESIGN.md`` section 1): for a 692 patch
the sides of X1..X5 are 688, 340, 164, 76, 32; for a 2708 ROI 2704, 1348,
668, 328, 158 (``geometry.feature_sides``).

Layer names follow ``keras.applications.VGG16`` (``block{b}_conv{c}``) so
ImageNet weights can be copied by name where they are available.
"""

from __future__ import annotations

import keras

from pfascannet import geometry
from pfascannet.model.config import ModelConfig

CONVS_PER_BLOCK = geometry._CONVS_PER_BLOCK  # (2, 2, 3, 3, 3): VGG16


def vgg16_trunk(x, config: ModelConfig) -> dict[int, "keras.KerasTensor"]:
    """Applies conv1..conv5 to ``x`` and returns the pyramid {level: X_level}.

    Args:
      x: normalised image tensor [N, H, W, 3].
      config: gives the widths of the five blocks.

    Returns:
      {1: X1, ..., 5: X5}, X_i = the last conv of block i (before pooling),
      [N, H_i, W_i, widths[i-1]].
    """
    feats = {}
    for block, (convs, width) in enumerate(zip(CONVS_PER_BLOCK, config.widths), start=1):
        if block > 1:
            x = keras.layers.MaxPooling2D(2, strides=2, padding="valid", name=f"block{block - 1}_pool")(x)
        for c in range(1, convs + 1):
            x = keras.layers.Conv2D(
                width, 3, padding="valid", activation="relu", name=f"block{block}_conv{c}"
            )(x)
        feats[block] = x
    return feats


def trunk_macs(side_px: int, config: ModelConfig) -> int:
    """Multiply-accumulates of the trunk on one ``side_px`` square input.

    At the paper's widths a 2708 ROI costs 2.17e12 (``shared/DESIGN.md``).
    """
    macs = 0
    side, cin = side_px, 3
    for block, (convs, width) in enumerate(zip(CONVS_PER_BLOCK, config.widths), start=1):
        if block > 1:
            side //= 2
        for _ in range(convs):
            side -= 2
            macs += side * side * 9 * cin * width
            cin = width
    return macs
