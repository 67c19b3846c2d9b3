"""Tissue detection: Otsu on saturation at low resolution, then morphology.

PFA-ScanNet scans only tissue (Sec. 2.4 / Fig. 1: ROIs are placed over the
tissue region), as every Camelyon pipeline does. The paper does not say how
tissue is found; we use the method NCRF and CLAM use, because it is robust
across stains and scanners and needs no training:

1. Read the slide on the grid of ``downsample`` (level 5 = 32 level-0 px a
   pixel for Camelyon, or the scan's output stride).
2. Saturation (HSV ``S``), median-blurred: glass and white background are
   unsaturated whatever their brightness, H&E tissue is pink/purple. (Optical
   density would also flag dark grey debris and pen ink as tissue.)
3. Otsu's threshold on the blurred saturation, but never below
   ``min_saturation``: on a slide that is nearly all glass Otsu would
   otherwise split the noise of the background.
4. Closing (joins tissue across pale fat vacuoles and tears), opening (drops
   speckle and dust), filling holes smaller than ``max_hole_um2`` (fat and
   vessels inside a node are tissue), removing components smaller than
   ``min_object_um2`` (debris, dust).

Morphology sizes are physical (µm, converted with the slide's mpp, or
Camelyon's ``LEVEL0_MPP`` when the slide carries none) so the mask does not
change character with the downsample asked for.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Optional

import cv2
import numpy as np

from pfascannet import io_utils
from pfascannet.camelyon import LEVEL0_MPP
from pfascannet.errors import PfaError

if TYPE_CHECKING:  # pragma: no cover
    from pfascannet.slide.reader import SlideReader


class TissueError(PfaError):
    """Bad tissue-detection settings or an unreadable tissue PNG."""


def tissue_mask(
    reader: "SlideReader",
    downsample: float = 32,
    *,
    min_saturation: int = 20,
    blur_um: float = 30.0,
    closing_um: float = 60.0,
    opening_um: float = 30.0,
    max_hole_um2: float = 250.0**2,
    min_object_um2: float = 100.0**2,
) -> np.ndarray:
    """Tissue mask of a slide on the grid of ``downsample``.

    Pixel ``(r, c)`` is level-0 cell ``[ds*c, ds*(c+1)) x [ds*r, ds*(r+1))``
    (the grid of :func:`pfascannet.slide.annotations.rasterize` and of the
    probability maps), so a scan with output stride ``s`` passes ``downsample=s``.

    Args:
      reader: an open :class:`~pfascannet.slide.reader.SlideReader`.
      downsample: level-0 pixels per mask pixel (32 = Camelyon's level 5).
      min_saturation: floor of the Otsu threshold on saturation (0..255).
      blur_um: median-blur window side before thresholding.
      closing_um: diameter of the closing disk.
      opening_um: diameter of the opening disk.
      max_hole_um2: background holes inside tissue smaller than this are filled.
      min_object_um2: tissue components smaller than this are removed.

    Returns:
      bool ``(ceil(H / downsample), ceil(W / downsample))``, True = tissue.
    """
    ds = float(downsample)
    if not ds > 0 or not math.isfinite(ds):
        raise TissueError(f"downsample must be a positive number, got {downsample}")
    if not 0 <= min_saturation <= 255:
        raise TissueError(f"min_saturation must be in 0..255, got {min_saturation}")
    rgb = reader.read_at_downsample(ds)
    mpp = reader.mpp if reader.mpp is not None else LEVEL0_MPP
    return tissue_mask_from_rgb(
        rgb,
        um_per_px=mpp * ds,
        min_saturation=min_saturation,
        blur_um=blur_um,
        closing_um=closing_um,
        opening_um=opening_um,
        max_hole_um2=max_hole_um2,
        min_object_um2=min_object_um2,
    )


def tissue_mask_from_rgb(
    rgb: np.ndarray,
    um_per_px: float,
    *,
    min_saturation: int = 20,
    blur_um: float = 30.0,
    closing_um: float = 60.0,
    opening_um: float = 30.0,
    max_hole_um2: float = 250.0**2,
    min_object_um2: float = 100.0**2,
) -> np.ndarray:
    """The tissue mask of an RGB uint8 ``(h, w, 3)`` image whose pixels are ``um_per_px`` wide.

    See :func:`tissue_mask`; this is its image-only half, for thumbnails
    already in memory.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise TissueError(f"expected an RGB uint8 (h, w, 3) image, got {rgb.dtype} {rgb.shape}")
    if not um_per_px > 0:
        raise TissueError(f"um_per_px must be > 0, got {um_per_px}")
    h, w = rgb.shape[:2]
    if h == 0 or w == 0:
        return np.zeros((h, w), dtype=bool)
    sat = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2HSV)[..., 1]
    k = _odd(blur_um / um_per_px)
    if k >= 3:
        sat = cv2.medianBlur(sat, min(k, 255))
    otsu, _ = cv2.threshold(sat, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    mask = (sat > max(float(otsu), float(min_saturation))).astype(np.uint8)
    k = _odd(closing_um / um_per_px)
    if k >= 3:
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    k = _odd(opening_um / um_per_px)
    if k >= 3:
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    px_area = um_per_px**2
    mask = _fill_small_holes(mask, max_hole_um2 / px_area)
    mask = _remove_small_objects(mask, min_object_um2 / px_area)
    return mask.astype(bool)


def _odd(size: float) -> int:
    """The odd integer nearest ``size`` (kernel sides must be odd)."""
    k = int(round(size))
    return k if k % 2 else k + 1 if k > 0 else 1


def _remove_small_objects(mask: np.ndarray, min_area_px: float) -> np.ndarray:
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_area_px
    keep[0] = False  # label 0 is the background
    return keep[labels].astype(np.uint8)


def _fill_small_holes(mask: np.ndarray, max_area_px: float) -> np.ndarray:
    # Background components not touching the border are holes; 4-connectivity
    # for the background pairs with 8-connectivity for tissue.
    background = (mask == 0).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(background, connectivity=4)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    fill = stats[:, cv2.CC_STAT_AREA] < max_area_px
    fill[0] = False  # label 0 is the tissue itself
    fill[border] = False
    out = mask.copy()
    out[fill[labels]] = 1
    return out


def save_tissue_png(path: str | os.PathLike, mask: np.ndarray) -> None:
    """Saves a tissue mask as a PNG (255 = tissue, 0 = background), atomically."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise TissueError(f"tissue mask must be 2-D, got shape {mask.shape}")
    with io_utils.atomic_path(path, suffix=".png") as tmp:
        if not cv2.imwrite(tmp, np.where(mask > 0, 255, 0).astype(np.uint8)):
            raise TissueError(f"{os.fspath(path)}: could not write PNG")


def read_tissue_png(path: str | os.PathLike, shape: Optional[tuple[int, int]] = None) -> np.ndarray:
    """Reads a tissue PNG (non-zero = tissue) as bool ``(h, w)``; checks ``shape`` if given."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise TissueError(f"{path}: no such tissue mask file")
    img = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise TissueError(f"{path}: not a readable PNG")
    if shape is not None and img.shape != tuple(shape):
        raise TissueError(f"{path}: tissue mask is {img.shape[1]}x{img.shape[0]}, expected {shape[1]}x{shape[0]}")
    return img > 0
