"""Parameter-efficient Feature Extraction (PFE), Fig. 2a and Sec. 2.1.

X_i passes through a separable, symmetric "global convolution" (Peng et al.,
large kernel matters): a 15x1 -> 1x15 branch and a 1x15 -> 15x1 branch, each
with 2 outputs (Fig. 2a: "Conv 15x1, 2"), summed into the score map
X'_i.  No nonlinearity, as in the global convolution network.  All four
convolutions are ``valid`` so the detector keeps its exact patch equivalence:
X'_i is X_i minus 14 px per side (``geometry.pfe_sides``).  X'_i then feeds
the dense pooling layer (detector, levels 3-5) and the decoder (levels 2-5).
"""

from __future__ import annotations

import keras

from pfascannet import geometry
from pfascannet.model.config import SCORE_CHANNELS


def pfe_block(x, level: int):
    """Returns X'_level = (15x1 -> 1x15)(X) + (1x15 -> 15x1)(X).

    Args:
      x: X_level [N, H, W, C].
      level: feature level (2..5), used in the layer names ``pfe{level}_*``.

    Returns:
      X'_level [N, H - 14, W - 14, 2].
    """
    k = geometry.GLOBAL_CONV_K
    ch = SCORE_CHANNELS
    a = keras.layers.Conv2D(ch, (k, 1), padding="valid", name=f"pfe{level}_a_{k}x1")(x)
    a = keras.layers.Conv2D(ch, (1, k), padding="valid", name=f"pfe{level}_a_1x{k}")(a)
    b = keras.layers.Conv2D(ch, (1, k), padding="valid", name=f"pfe{level}_b_1x{k}")(x)
    b = keras.layers.Conv2D(ch, (k, 1), padding="valid", name=f"pfe{level}_b_{k}x1")(b)
    return keras.layers.Add(name=f"pfe{level}_sum")([a, b])
