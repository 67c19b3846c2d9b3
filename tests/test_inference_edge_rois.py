"""Edge ROIs (tissue-aware ROI placement): quarter-tile ROIs at the tissue's edge give the same map for less work.

By the central invariant (DESIGN.md §1) an ROI of eq. (1) placed at a
sub-tile of a whole ROI's tile outputs exactly that sub-tile's pixels; the
plan uses such ROIs where the tissue-holding quarters cost fewer input
pixels than the whole ROI.
"""

from __future__ import annotations

import numpy as np

from pfascannet import geometry
from pfascannet.inference import detectors, engine, export, model_run, scan_settings
from pfascannet.inference.plan import edge_split, make_plan
from tests.scan_support import OracleDetector, write_slide

GRID = geometry.ScanGeometry(16, 692 + 32 * 7)  # Lm = 8: quarter tiles of 4 map px, LR 916 -> 788


def _coverage(plan) -> np.ndarray:
    count = np.zeros(plan.map_shape, int)
    for k in range(len(plan)):
        r0, r1, c0, c1 = plan.roi_window(k)
        count[r0:r1, c0:c1] += 1
    return count


def test_edge_rois_cover_the_tissue_once_for_fewer_pixels():
    dims = (32 * 40, 32 * 24)  # a 40 x 24 map: 5 x 3 ROIs of 8 x 8
    tissue = np.zeros((24, 40), bool)  # at downsample 32: one mask pixel per map pixel
    tissue[2:14, 3:21] = True  # a block that ends inside ROIs
    tissue[20, 37] = True  # a speck in the last ROI's corner
    whole = make_plan(dims, GRID, tissue, 32)
    edges = make_plan(dims, GRID, tissue, 32, split=2)
    assert edge_split(GRID) == 2 and edges.edge_roi_px == 692 + 32 * 3
    assert len(edges.edge_rowcol) > 0 and edges.n_whole < whole.n_whole
    cov = _coverage(edges)
    assert cov.max() == 1  # no map pixel computed twice
    assert (cov[tissue] == 1).all()  # every tissue pixel computed
    assert edges.input_px() < whole.input_px()
    # The speck's ROI is one quarter: 788^2 instead of 916^2 input pixels.
    k = [k for k in range(len(edges)) if edges.roi_window(k)[:3:2] == (20, 36)]
    assert len(k) == 1 and edges.roi_side_px(k[0]) == 788
    # An edge ROI sits where the whole ROI's sub-tile is: same origin rule.
    r0, _, c0, _ = edges.roi_window(k[0])
    assert edges.roi_xy(k[0]) == (32 * c0 - geometry.map_origin_px(16), 32 * r0 - geometry.map_origin_px(16))
    assert edges.describe()["n_edge_rois"] == len(edges.edge_rowcol)
    assert "n_edge_rois" not in whole.describe()  # plans without edge ROIs describe themselves as before
    assert make_plan(dims, GRID, None, 32, split=2).n_whole == whole.grid_shape[0] * whole.grid_shape[1]
    assert edge_split(geometry.ScanGeometry(16, 1204)) == 1  # Lm 17 does not halve


def _tissue(reader):
    w, h = reader.dimensions
    mask = np.zeros((-(-h // 32), -(-w // 32)), bool)
    mask[3:20, 5:30] = True  # a block whose edges fall inside ROIs
    mask[33, 45] = True  # a speck near the corner
    return mask


class EdgeOracle(OracleDetector):
    def at_roi_px(self, side_px):
        return EdgeOracle(self.alpha, side_px)


def test_scan_with_edge_rois_gives_the_same_map(tmp_path):
    slide = str(tmp_path / "slide.tif")
    write_slide(slide, wh=(1500, 1100))
    maps, plans = {}, {}
    for on in (False, True):
        det = EdgeOracle(16, GRID.roi_px)
        run = model_run.ModelRun(det, GRID, name="oracle", digest="oracle")
        opts = scan_settings.ScanSettings(batch=2, heatmap=False, progress=False, edge_rois=on, tissue=_tissue)
        out = str(tmp_path / f"scan_{on}")
        result = engine.scan_slides(slide, [run], out, opts).results[0]
        assert result.status == "done"
        maps[on] = np.load(f"{out}/maps/slide.npy")
        plans[on] = result.meta["members"][0]
    assert plans[True]["n_edge_rois"] > 0 and "n_edge_rois" not in plans[False]
    computed = maps[True] != 0
    # Wherever the edge plan computed a pixel, it equals the whole-ROI scan's.
    np.testing.assert_array_equal(maps[True][computed], maps[False][computed])
    # What it left out is glass-only sub-tiles the whole ROIs computed for nothing.
    assert (maps[False] != 0).sum() > computed.sum()


def test_detector_at_a_smaller_side_gives_the_whole_rois_pixels(tmp_path):
    from tests.model_support import equivalence_case  # noqa: PLC0415

    config, patch_model, roi = equivalence_case(seed=1, roi_px=1460)  # Lm 25
    out = tmp_path / "export"
    export.export_detector(patch_model, config, out, alpha=16, roi_px=1460)
    for fmt in ("keras", "savedmodel"):
        det = detectors.load_detector(out, format=fmt)
        whole = det.predict(roi[None])[0]
        small = det.at_roi_px(692 + 32 * 8)  # Lm 9: the top-left 9 x 9 of the whole tile
        assert small.roi_px == 948 and small.digest == det.digest
        np.testing.assert_allclose(small.predict(roi[None, :948, :948])[0], whole[:9, :9], atol=1e-5)
        run = model_run.ModelRun(det, geometry.ScanGeometry(16, 1460), digest="d")
        assert model_run.plan_split(run, scan_settings.ScanSettings()) == 1  # Lm 25 does not halve
    assert np.ptp(whole) > 0.3
