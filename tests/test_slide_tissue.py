"""Tissue detection (Otsu on saturation + morphology) against known tissue."""

import numpy as np
import pytest

from pfascannet.slide.reader import SlideReader
from pfascannet.slide.tissue import (
    TissueError,
    read_tissue_png,
    save_tissue_png,
    tissue_mask,
    tissue_mask_from_rgb,
)
from tests.slide_support import H, W, tissue_truth, write_test_slide


def iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory):
    return write_test_slide(tmp_path_factory.mktemp("tissue") / "slide.tif", seed=3)


def truth_at(ds):
    """The section (fat holes count as tissue) sampled at cell centres of the ds grid."""
    rows, cols = -(-H // ds), -(-W // ds)
    yy, xx = np.mgrid[0:rows, 0:cols] * ds + (ds - 1) / 2
    inside, _ = tissue_truth(xx, yy)
    return inside


@pytest.mark.parametrize("ds", [32, 16])
def test_tissue_mask_matches_the_section(slide_path, ds):
    with SlideReader(slide_path) as r:
        mask = tissue_mask(r, downsample=ds)
    assert mask.dtype == bool and mask.shape == (-(-H // ds), -(-W // ds))
    assert iou(mask, truth_at(ds)) >= 0.95
    # Fat vacuoles inside the section are filled; the dust speck is removed.
    assert mask[700 // ds, 900 // ds] and mask[1000 // ds, 1400 // ds]
    assert not mask[200 // ds, 2250 // ds]


def test_blank_glass_has_no_tissue():
    rng = np.random.default_rng(0)
    glass = np.clip(240 + rng.normal(0, 4, (80, 120, 3)), 0, 255).astype(np.uint8)
    assert not tissue_mask_from_rgb(glass, um_per_px=7.8).any()


def test_small_holes_filled_large_background_kept():
    img = np.full((200, 200, 3), 245, np.uint8)
    img[20:180, 20:180] = (200, 90, 160)
    img[40:44, 40:44] = 245  # a 31 µm fat vacuole: tissue
    img[80:160, 80:160] = 245  # a 620 µm gap: background
    mask = tissue_mask_from_rgb(img, um_per_px=7.776, closing_um=0, opening_um=0, blur_um=0)
    assert mask[42, 42] and not mask[120, 120] and mask[30, 30] and not mask[5, 5]


def test_bad_input():
    with pytest.raises(TissueError, match="RGB uint8"):
        tissue_mask_from_rgb(np.zeros((4, 4)), um_per_px=1)
    with pytest.raises(TissueError, match="um_per_px"):
        tissue_mask_from_rgb(np.zeros((4, 4, 3), np.uint8), um_per_px=0)


def test_png_round_trip(tmp_path, slide_path):
    with SlideReader(slide_path) as r:
        mask = tissue_mask(r)
    path = tmp_path / "tissue" / "slide_tissue.png"
    save_tissue_png(path, mask)
    np.testing.assert_array_equal(read_tissue_png(path, mask.shape), mask)
    with pytest.raises(TissueError, match="expected"):
        read_tissue_png(path, (3, 3))
    with pytest.raises(TissueError, match="no such tissue mask"):
        read_tissue_png(tmp_path / "none.png")
