"""The FCN's numbers: eq. (1) both ways and the feature sides DESIGN.md tabulates."""

import pytest

from pfascannet import geometry as g


def test_paper_numbers_follow_from_eq1():
    # LR = 692 + (Lm - 1) * Sp/alpha with LR 2708, Lm 64 forces Sp/alpha = 32.
    assert g.output_stride_px(16) == 32
    assert g.roi_px(64, 16) == 2708
    assert g.tile_px(2708, 16) == 64
    assert g.roi_stride_px(2708, 16) == 2048  # SR = (Sp/alpha) * Lm
    assert g.tile_px(2708, 32) == 127
    assert g.tile_px(692, 1) == 1  # training: one output per patch


def test_feature_sides_match_design_table():
    assert g.feature_sides(692) == {1: 688, 2: 340, 3: 164, 4: 76, 5: 32}
    assert g.feature_sides(2708) == {1: 2704, 2: 1348, 3: 668, 4: 328, 5: 158}
    assert {k: v for k, v in g.pfe_sides(692).items() if k >= 3} == {3: 150, 4: 62, 5: 18}
    assert {k: v for k, v in g.pfe_sides(2708).items() if k >= 3} == {3: 654, 4: 314, 5: 144}


def test_dense_pooling_gives_lm_at_every_level():
    # After the centre crop, pooling window k and stride s/alpha give Lm at
    # every head level, so M3 + M4 + M5 line up pixel for pixel.
    for alpha in (16, 32):
        for lr in (g.roi_px(64, alpha), g.roi_px(40, alpha)):
            sides = g.pfe_sides(lr)
            for level in g.HEAD_LEVELS:
                cropped = sides[level] - 2 * g.pool_margin(level)
                lm = (cropped - g.POOL_WINDOW[level]) // g.pool_stride(level, alpha) + 1
                assert lm == g.tile_px(lr, alpha), (alpha, lr, level)


def test_map_origin_centres_cells_on_patch_centres():
    assert g.map_origin_px(16) == 330
    assert g.map_origin_px(32) == 346 - 8


@pytest.mark.parametrize("alpha", [0, 3, 64, 16.0, True, "16"])
def test_bad_alpha_is_refused_with_the_valid_ones_named(alpha):
    with pytest.raises(g.GeometryError, match="alpha must be one of"):
        g.output_stride_px(alpha)


@pytest.mark.parametrize("lr", [2700, 691, 2709])
def test_roi_off_the_grid_is_refused(lr):
    with pytest.raises(g.GeometryError, match="does not fit the grid"):
        g.tile_px(lr, 16)


def test_scan_geometry_validates():
    geo = g.ScanGeometry(alpha=16, roi_px=2708)
    assert (geo.tile_px, geo.stride_px, geo.roi_step_px) == (64, 32, 2048)
    with pytest.raises(g.GeometryError):
        g.ScanGeometry(alpha=16, roi_px=2000)
