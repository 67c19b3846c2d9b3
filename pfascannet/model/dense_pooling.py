"""The dense pooling layer (Fig. 2a, Sec. 2.2).

Patch mode (training, alpha = 1): X'_i of a 692 patch (150, 62, 18 px at
levels 3, 4, 5) is centre-cropped to the {1/4, 1/2, 1/1} "local-to-global"
region (``geometry.POOL_WINDOW``: 38, 32, 18 px, margins 56, 15, 0) and
average-pooled to a single value per channel; the nominal pooling strides are
{128, 64, 32} feature px, i.e. 512 input px at every level.

Dense mode (inference, alpha > 1): the same crop and window, stride divided
by alpha.  On an ROI of side LR = 692 + (512/alpha)(Lm - 1), output pixel
(u, v) averages exactly the window that the patch classifier would average
on the 692 patch at offset (512/alpha)(u, v): the detector is the patch
classifier scanned at stride 512/alpha, without recomputing the overlaps.
"""

from __future__ import annotations

import keras
from keras import ops

from pfascannet import geometry


@keras.saving.register_keras_serializable(package="pfascannet")
class DensePooling(keras.layers.Layer):
    """Centre crop by ``margin`` then average pool ``window`` at stride ``stride_train / alpha``.

    Input [N, H, W, C] -> output [N, (H - 2 margin - window) // stride + 1, ..., C].

    Args:
      margin: feature px cropped from each side (patch-mode centre crop).
      window: pooling window k_i (feature px).
      stride_train: pooling stride s_i at alpha = 1 (128, 64, 32).
      alpha: dense coefficient (``geometry.VALID_ALPHAS``).
    """

    def __init__(self, margin: int, window: int, stride_train: int, alpha: int = 1, **kwargs):
        super().__init__(**kwargs)
        geometry.check_alpha(alpha)
        if stride_train % alpha:
            raise geometry.GeometryError(f"stride {stride_train} is not divisible by alpha={alpha}")
        if margin < 0 or window < 1:
            raise geometry.GeometryError(f"DensePooling needs margin >= 0 and window >= 1, got {margin}, {window}")
        self.margin = int(margin)
        self.window = int(window)
        self.stride_train = int(stride_train)
        self.alpha = int(alpha)

    @property
    def stride(self) -> int:
        """Pooling stride in feature px at this alpha."""
        return self.stride_train // self.alpha

    def call(self, x):
        m = self.margin
        if m:
            x = x[:, m:-m, m:-m, :]
        return ops.average_pool(x, pool_size=self.window, strides=self.stride, padding="valid")

    def _side(self, n):
        if n is None:
            return None
        n = n - 2 * self.margin - self.window
        return n // self.stride + 1 if n >= 0 else 0

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        return (n, self._side(h), self._side(w), c)

    def get_config(self):
        config = super().get_config()
        config.update(margin=self.margin, window=self.window, stride_train=self.stride_train, alpha=self.alpha)
        return config


def dense_pooling_for_level(level: int, alpha: int) -> DensePooling:
    """The DensePooling layer of head level 3, 4 or 5, named ``dense_pool{level}``."""
    return DensePooling(
        margin=geometry.pool_margin(level),
        window=geometry.POOL_WINDOW[level],
        stride_train=geometry.POOL_STRIDE_TRAIN[level],
        alpha=alpha,
        name=f"dense_pool{level}",
    )
