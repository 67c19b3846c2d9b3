"""Test helpers of the scanner tests: an oracle detector of the FCN's geometry and small test slides.

The oracle's output pixel (u, v) of an ROI is the mean intensity of the
centre 32x32 block of the 692 patch at offset (stride*u, stride*v): exactly the
invariant the real FCN obeys (DESIGN.md §1).
"""

from __future__ import annotations

import numpy as np

from pfascannet import geometry
from pfascannet.slide.tiff_writer import write_pyramid_tiff

BLOCK_PX = 32
SLIDE_WH = (1000, 700)  # not multiples of 32: the last map row/column runs past the slide
LM = 4  # small ROIs so the grid has many ROI borders


class OracleDetector:
    """A numpy detector of the FCN's geometry whose output is a known function of its input."""

    def __init__(self, alpha: int, roi_px: int):
        self.alpha, self.roi_px = alpha, roi_px
        self.stride_px = geometry.output_stride_px(alpha)
        self.tile_px = geometry.tile_px(roi_px, alpha)
        self.calls = 0
        self.rois_seen = 0
        self.patches_seen = 0

    def predict(self, rois: np.ndarray) -> np.ndarray:
        assert rois.dtype == np.uint8 and rois.shape[1:] == (self.roi_px, self.roi_px, 3)
        self.calls += 1
        self.rois_seen += rois.shape[0]
        lo = geometry.PATCH_CENTRE_PX - BLOCK_PX // 2
        out = np.empty((rois.shape[0], self.tile_px, self.tile_px), np.float32)
        for u in range(self.tile_px):
            for v in range(self.tile_px):
                r, c = lo + self.stride_px * u, lo + self.stride_px * v
                block = rois[:, r : r + BLOCK_PX, c : c + BLOCK_PX].astype(np.float64)
                out[:, u, v] = block.mean(axis=(1, 2, 3)) / 255.0
        return out

    def predict_patches(self, patches: np.ndarray) -> np.ndarray:
        """The patch classifier of the same function (the candidate views): its centre block's mean."""
        assert patches.dtype == np.uint8 and patches.shape[1:] == (geometry.PATCH_PX, geometry.PATCH_PX, 3)
        self.patches_seen += patches.shape[0]
        lo = geometry.PATCH_CENTRE_PX - BLOCK_PX // 2
        return (patches[:, lo : lo + BLOCK_PX, lo : lo + BLOCK_PX].astype(np.float64).mean(axis=(1, 2, 3))
                / 255.0).astype(np.float32)


def direct_map(image: np.ndarray, cell_px: int) -> np.ndarray:
    """The oracle's function computed straight from the image: cell means, white beyond the edge."""
    h, w = image.shape[:2]
    rows, cols = -(-h // cell_px), -(-w // cell_px)
    padded = np.full((rows * cell_px, cols * cell_px, 3), 255, np.float64)
    padded[:h, :w] = image
    return (padded.reshape(rows, cell_px, cols, cell_px, 3).mean(axis=(1, 3, 4)) / 255.0).astype(np.float32)


def write_slide(path: str, wh=SLIDE_WH, seed: int = 0) -> np.ndarray:
    """A small lossless two-level TIFF of smoothed noise (every shift shows)."""
    rng = np.random.default_rng(seed)
    w, h = wh
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    image[: h // 3, : w // 4] = 255  # some glass: the tissue test skips it

    def tiles(x, y, tw, th):
        out = np.full((th, tw, 3), 255, np.uint8)
        part = image[y : y + th, x : x + tw]
        out[: part.shape[0], : part.shape[1]] = part
        return out

    write_pyramid_tiff(path, (w, h), tiles, tiff_tile_px=256, compression="deflate", num_levels=2, workers=1)
    return image


def slide_without_mpp(path, description=None):
    """A 400 x 300 slide that carries no pixel size."""
    image = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    write_pyramid_tiff(
        path, (400, 300), lambda x, y, w, h: np.ascontiguousarray(image[y : y + h, x : x + w]), tiff_tile_px=256,
        compression="deflate", num_levels=1, mpp=None, workers=1, description=description,
    )
