"""The ROI plan of eq. (1), lesion candidates and contours, ensemble pooling."""

from __future__ import annotations

import numpy as np
import pytest

from pfascannet import geometry
from pfascannet.inference import ensemble, lesions, plan as plan_lib, scan_settings


def _coverage(plan: plan_lib.RoiPlan) -> np.ndarray:
    count = np.zeros(plan.map_shape, np.int64)
    for k in range(len(plan)):
        r0, r1, c0, c1 = plan.roi_window(k)
        count[r0:r1, c0:c1] += 1
    return count


def test_paper_plan_is_camelyon_level5_grid():
    g = geometry.ScanGeometry()  # alpha 16, LR 2708
    p = plan_lib.make_plan((10_000, 7_000), g)
    assert p.stride_px == 32 and p.tile_px == 64
    assert p.map_shape == (219, 313)  # ceil(7000/32), ceil(10000/32)
    assert p.grid_shape == (4, 5)
    # ROI (i, j) sits at j*2048 - 330: its first output cell is level-0 [2048 j, 2048 j + 32).
    k = int(np.flatnonzero((p.rois_rowcol == [1, 2]).all(1))[0])
    assert p.roi_xy(k) == (2 * 2048 - 330, 2048 - 330)
    assert p.roi_xy(0) == (-330, -330)
    assert (_coverage(p) == 1).all()


def test_every_tissue_pixel_once_and_empty_rois_skipped():
    g = geometry.ScanGeometry(16, geometry.roi_px(8, 16))
    w, h = 2000, 1500
    tissue = np.zeros((-(-h // 32), -(-w // 32)), bool)
    tissue[5:9, 3:20] = True
    tissue[40:, 55:] = True  # the slide's corner, incl. the partial last cells
    p = plan_lib.make_plan((w, h), g, tissue, 32)
    cov = _coverage(p)
    on_map = plan_lib.tissue_on_map(tissue, 32, (w, h), p.stride_px)
    assert (cov[on_map] == 1).all()
    assert cov.max() == 1
    assert len(p) < p.grid_shape[0] * p.grid_shape[1]
    for k in range(len(p)):
        r0, r1, c0, c1 = p.roi_window(k)
        assert on_map[r0:r1, c0:c1].any()


def test_tissue_resampling_any_overlap():
    # A 32-px mask onto a 64-px map (scan level 1) and a 16-px map (alpha 32).
    tissue = np.zeros((4, 5), bool)  # a 150 x 100 slide at ds 32
    tissue[1, 3] = True  # level-0 [96,128) x [32,64)
    on64 = plan_lib.tissue_on_map(tissue, 32, (150, 100), 64)
    assert on64.shape == (2, 3) and on64.sum() == 1 and on64[0, 1]
    on16 = plan_lib.tissue_on_map(tissue, 32, (150, 100), 16)
    assert on16.shape == (7, 10) and on16[2:4, 6:8].all() and on16.sum() == 4
    with pytest.raises(plan_lib.PlanError, match="expected"):
        plan_lib.tissue_on_map(np.zeros((3, 5), bool), 32, (150, 100), 32)


def test_no_tissue_no_rois():
    p = plan_lib.make_plan((500, 500), geometry.ScanGeometry(), np.zeros((16, 16), bool), 32)
    assert len(p) == 0 and p.map_shape == (16, 16)


def test_level_downsample():
    assert plan_lib.level_downsample((1.0, 2.0004, 4.001), 1) == 2
    with pytest.raises(plan_lib.PlanError):
        plan_lib.level_downsample((1.0, 2.5), 1)
    with pytest.raises(plan_lib.PlanError):
        plan_lib.level_downsample((1.0,), 1)


def test_auto_roi_is_largest_that_fits():
    lr = plan_lib.auto_roi_px(16, memory_budget_bytes=4 * 2**30, batch=1, bytes_per_input_px=768)
    assert 768 * lr * lr <= 4 * 2**30 < 768 * (lr + 32) ** 2 or lr == geometry.roi_px(256, 16)
    geometry.ScanGeometry(16, lr)
    assert plan_lib.auto_roi_px(16, 1e12, max_tile_px=64) == 2708
    with pytest.raises(plan_lib.PlanError, match="does not fit"):
        plan_lib.auto_roi_px(16, 1e6)


def test_nms_golden():
    m = np.zeros((10, 10), np.float32)
    m[2, 2], m[2, 4], m[7, 7], m[9, 0] = 0.9, 0.8, 0.7, 0.4
    # radius 2.5 map px: (2,4) is 2 px from (2,2) and suppressed; (9,0) is under the threshold.
    found = lesions.nms_lesions(m, 32, threshold=0.5, radius_um=2.5 * 32 * 0.243, mpp=0.243)
    assert [(round(f.confidence, 3), f.x, f.y) for f in found] == [(0.9, 80, 80), (0.7, 240, 240)]
    found = lesions.nms_lesions(m, 32, threshold=0.3, radius_um=1.5 * 32 * 0.243, mpp=0.243)
    assert [(f.x, f.y) for f in found] == [(80, 80), (144, 80), (240, 240), (16, 304)]


def test_contours_follow_cell_edges_with_holes():
    m = np.zeros((8, 8), np.float32)
    m[1:6, 1:6] = 0.9
    m[2:4, 2:4] = 0.0
    m[7, 7] = 0.6
    cs = lesions.lesion_contours(m, 32, threshold=0.5)
    assert len(cs) == 2
    assert sorted(map(tuple, cs[0].outer[:-1].tolist())) == [(32, 32), (32, 192), (192, 32), (192, 192)]
    assert len(cs[0].holes) == 1
    assert sorted(map(tuple, cs[0].holes[0][:-1].tolist())) == [(64, 64), (64, 128), (128, 64), (128, 128)]
    assert cs[0].area_px == 21 * 32 * 32
    assert sorted(map(tuple, cs[1].outer[:-1].tolist())) == [(224, 224), (224, 256), (256, 224), (256, 256)]
    assert lesions.lesion_contours(np.zeros((3, 3)), 32) == []


def test_pool_to_stride_and_ensemble():
    fine = np.arange(15, dtype=np.float32).reshape(3, 5)
    pooled = ensemble.pool_to_stride(fine, 2, (2, 3))
    expected = np.array([[(0 + 1 + 5 + 6) / 4, (2 + 3 + 7 + 8) / 4, (4 + 9) / 2], [(10 + 11) / 2, (12 + 13) / 2, 14]])
    np.testing.assert_allclose(pooled, expected)
    coarse = np.ones((2, 3), np.float32)
    np.testing.assert_allclose(ensemble.ensemble_maps([fine, coarse], [16, 32], (2, 3)), (expected + 1) / 2)
    with pytest.raises(scan_settings.ScanError, match="nest"):
        ensemble.ensemble_maps([fine, coarse], [24, 32], (2, 3))
