"""The numbers of the PFA-ScanNet FCN, derived in one place.

Eq. (1) of Zhao et al., MICCAI 2019:

    LR = Lp + (Lm - 1) * Sp / alpha
    SR = (Sp / alpha) * Lm

With the training patch Lp = 692, the paper's ROI LR = 2708 and probability
tile Lm = 64 give Sp / alpha = 32; with alpha = 16, Sp = 512 (see
``shared/DESIGN.md`` section 1).  The detector trunk is Fast ScanNet's
no-padding VGG16 (conv1..conv5, 2x2 max-pool after blocks 1-4), so feature
level i has stride 2**(i-1) and the training pooling strides {128, 64, 32}
at levels {3, 4, 5} all equal 512 input pixels.

Central invariant: output pixel (u, v) of an ROI whose top-left is (x0, y0)
in level-0 pixels equals the patch classifier applied to the 692 patch with
top-left (x0 + stride*u, y0 + stride*v), i.e. centred at +346 from there.

All coordinates here are in input (scan-level) pixels; ``xy`` order is
(column, row).
"""

from __future__ import annotations

import dataclasses

from pfascannet.errors import PfaError

PATCH_PX = 692
"""Training patch side Lp (input pixels)."""

MASK_PX = 512
"""Side of the segmentation mask centred in each training patch."""

MASK_OFFSET_PX = (PATCH_PX - MASK_PX) // 2
"""Offset of the 512 mask inside the 692 patch (90 px)."""

PATCH_CENTRE_PX = PATCH_PX // 2
"""Offset from a patch's top-left corner to the pixel its label refers to (346)."""

PATCH_STRIDE_TRAIN_PX = 512
"""Sp: the output stride of the detector at alpha = 1."""

PAPER_ROI_PX = 2708
"""The paper's inference ROI side LR (Implementation Details)."""

PAPER_ALPHA = 16
"""The paper's dense coefficient for its reported speed."""

VALID_ALPHAS = (1, 2, 4, 8, 16, 32)
"""Dense coefficients whose pooling strides stay whole (32 / alpha >= 1)."""

# Feature levels used by the detector head, with their trunk stride (input px
# per feature px), training pooling stride (feature px), and pooling window
# (feature px).  Windows are the paper's {1/4, 1/2, 1/1} "local-to-global"
# regions of the 692-patch maps X'3, X'4, X'5 (150, 62, 18), rounded so the
# centre-crop margin is whole.
HEAD_LEVELS = (3, 4, 5)
TRUNK_STRIDE = {1: 1, 2: 2, 3: 4, 4: 8, 5: 16}
POOL_STRIDE_TRAIN = {3: 128, 4: 64, 5: 32}
POOL_WINDOW = {3: 38, 4: 32, 5: 18}

GLOBAL_CONV_K = 15
"""Kernel length of the separable global convolution in PFE."""

# Valid 3x3 convolutions per VGG16 block (each trims 2 px).
_CONVS_PER_BLOCK = (2, 2, 3, 3, 3)


class GeometryError(PfaError, ValueError):
    """An alpha or ROI size that the detector's grid cannot serve."""


def check_alpha(alpha: int) -> int:
    """Returns alpha if it is a valid dense coefficient, else raises."""
    if isinstance(alpha, bool) or not isinstance(alpha, int) or alpha not in VALID_ALPHAS:
        raise GeometryError(
            f"alpha must be one of {VALID_ALPHAS} (a power of two that keeps "
            f"the pooling strides 128/64/32 whole), got {alpha!r}"
        )
    return alpha


def output_stride_px(alpha: int) -> int:
    """Sp / alpha: input pixels between neighbouring output pixels."""
    return PATCH_STRIDE_TRAIN_PX // check_alpha(alpha)


def map_origin_px(alpha: int) -> int:
    """Offset from an ROI's top-left to the top-left of its first output cell.

    Output pixel (u, v) of an ROI at (x0, y0) is the patch centred at
    (x0 + 346 + stride*u, ...); we let it stand for the stride x stride cell
    centred there, whose top-left is at x0 + 346 - stride/2 + stride*u.  A
    scan that places ROIs at ``k * SR - map_origin_px`` therefore gives a map
    whose pixel (r, c) covers level-0 cell [stride*c, stride*(c+1)) x
    [stride*r, stride*(r+1)): at alpha 16 exactly Camelyon's level-5 grid.
    """
    return PATCH_CENTRE_PX - output_stride_px(alpha) // 2


def pool_stride(level: int, alpha: int) -> int:
    """Dense pooling stride (feature px) of head level 3, 4 or 5 at alpha."""
    return POOL_STRIDE_TRAIN[level] // check_alpha(alpha)


def roi_px(lm: int, alpha: int) -> int:
    """Eq. (1): ROI side LR for a probability tile of Lm x Lm at alpha."""
    if isinstance(lm, bool) or not isinstance(lm, int) or lm < 1:
        raise GeometryError(f"the probability tile side Lm must be an integer >= 1, got {lm!r}")
    return PATCH_PX + (lm - 1) * output_stride_px(alpha)


def tile_px(lr: int, alpha: int) -> int:
    """Eq. (1) inverted: probability tile side Lm of an LR x LR ROI at alpha."""
    stride = output_stride_px(alpha)
    if isinstance(lr, bool) or not isinstance(lr, int) or lr < PATCH_PX or (lr - PATCH_PX) % stride:
        raise GeometryError(
            f"ROI side {lr!r} does not fit the grid at alpha={alpha}: it must be "
            f"{PATCH_PX} + {stride}*k for an integer k >= 0 "
            f"(e.g. {roi_px(64, alpha) if alpha >= 16 else roi_px(8, alpha)})"
        )
    return (lr - PATCH_PX) // stride + 1


def roi_stride_px(lr: int, alpha: int) -> int:
    """Eq. (1): SR, the step between neighbouring ROIs so outputs tile exactly."""
    return output_stride_px(alpha) * tile_px(lr, alpha)


def feature_sides(lr: int) -> dict[int, int]:
    """Side length of X1..X5 (conv1_2 .. conv5_3) for an LR x LR input.

    Raises GeometryError where a 2x2 max-pool would see an odd side (that
    would silently drop a row and break dense/patch equivalence).
    """
    side = lr
    sides = {}
    for block, convs in enumerate(_CONVS_PER_BLOCK, start=1):
        if block > 1:
            if side % 2:
                raise GeometryError(f"input side {lr} gives an odd map ({side}) before pool {block - 1}")
            side //= 2
        side -= 2 * convs
        if side < 1:
            raise GeometryError(f"input side {lr} is too small for the VGG16 trunk")
        sides[block] = side
    return sides


def pfe_sides(lr: int) -> dict[int, int]:
    """Side of X'_i after the separable k=15 global convolution (valid)."""
    return {level: side - (GLOBAL_CONV_K - 1) for level, side in feature_sides(lr).items()}


def pool_margin(level: int) -> int:
    """Centre-crop margin of X'_level before dense pooling (patch mode)."""
    n = pfe_sides(PATCH_PX)[level]
    k = POOL_WINDOW[level]
    if (n - k) % 2:
        raise GeometryError(f"pool window {k} does not leave a whole margin in {n}")
    return (n - k) // 2


@dataclasses.dataclass(frozen=True)
class ScanGeometry:
    """The geometry of one dense scan: alpha and the ROI side.

    Attributes:
      alpha: dense coefficient.
      roi_px: LR, ROI side in scan-level pixels.
    """

    alpha: int = PAPER_ALPHA
    roi_px: int = PAPER_ROI_PX

    def __post_init__(self):
        check_alpha(self.alpha)
        tile_px(self.roi_px, self.alpha)  # validates
        feature_sides(self.roi_px)

    @property
    def stride_px(self) -> int:
        """Scan-level pixels per output pixel."""
        return output_stride_px(self.alpha)

    @property
    def tile_px(self) -> int:
        """Lm: output pixels per ROI side."""
        return tile_px(self.roi_px, self.alpha)

    @property
    def roi_step_px(self) -> int:
        """SR: the step between ROIs."""
        return self.stride_px * self.tile_px
