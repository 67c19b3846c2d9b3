"""Shared by the slide tests: a small pyramidal slide whose tissue is known exactly."""

from __future__ import annotations

import numpy as np

from pfascannet.slide.tiff_writer import write_pyramid_tiff

W, H = 2400, 1700
TISSUE_RGB = (205, 110, 170)


def tissue_truth(x, y):
    """An elliptical section with round fat vacuoles (white), and a speck of dust."""
    inside = ((x - 1150) / 900) ** 2 + ((y - 850) / 600) ** 2 < 1
    fat = np.zeros_like(inside)
    for cx, cy in ((900, 700), (1400, 1000), (1200, 500)):
        fat |= (x - cx) ** 2 + (y - cy) ** 2 < 40**2
    return inside, fat


def write_test_slide(path, mpp=0.243, seed=0):
    """A small JPEG pyramidal slide: pink noisy tissue with fat holes on noisy white glass, plus dust."""
    rng = np.random.default_rng(seed)

    def source(x, y, w, h):
        yy, xx = np.mgrid[y:y + h, x:x + w]
        inside, fat = tissue_truth(xx, yy)
        tile = np.full((h, w, 3), 242, np.int16) + rng.integers(-8, 8, (h, w, 1))
        tile[inside & ~fat] = np.array(TISSUE_RGB) + rng.integers(-25, 25, (int((inside & ~fat).sum()), 3))
        dust = (xx - 2250) ** 2 + (yy - 200) ** 2 < 12**2  # ~6 µm: debris, not tissue
        tile[dust] = (90, 60, 110)
        return np.clip(tile, 0, 255).astype(np.uint8)

    write_pyramid_tiff(path, (W, H), source, mpp=mpp, min_side_px=64, tiff_tile_px=256)
    return path
