"""Candidate views (``inference.views``): each lesion candidate scored again over its patch's orientations.

What a user relies on:
- a candidate's confidence is the mean of the patch classifier over the
  patch's rotations and mirror images (checked against the slide's pixels
  directly, with a detector that does see orientation), so it does not
  depend on how the glass lay on the scanner;
- only candidates at or above ``VIEWS_FLOOR`` are re-scored; the map, the
  contours and the candidates' positions stay the single view's;
- the slide score is the most confident candidate;
- the views are part of the map's fingerprint, and a threshold change keeps
  them without calling the model.
"""

from __future__ import annotations

import numpy as np
import pytest

from pfascannet import geometry
from pfascannet.evaluation import submission
from pfascannet.inference import engine, lesions, model_run, outputs, scan_settings, views
from tests.scan_support import BLOCK_PX, LM, OracleDetector, write_slide

SID = "patient_000_node_0"
QUIET = dict(progress=False, heatmap=False, tissue="all", checkpoint_every_s=0.0, workers=2, batch=3)
LO = geometry.PATCH_CENTRE_PX - BLOCK_PX // 2
SIDE = 2 * BLOCK_PX  # the off-centre blocks lie this far from the centre block


class SkewedOracle(OracleDetector):
    """The oracle reading the block ``SIDE`` px above the patch centre: its output depends on orientation."""

    def __init__(self, alpha: int, roi_px: int, forbid: bool = False):
        super().__init__(alpha, roi_px)
        self.forbid = forbid

    def _block(self, x: np.ndarray, r: int, c: int) -> np.ndarray:
        return x[:, r - SIDE : r - SIDE + BLOCK_PX, c : c + BLOCK_PX].astype(np.float64).mean(axis=(1, 2, 3)) / 255

    def predict(self, rois):
        if self.forbid:
            raise AssertionError("the model was called")
        out = np.empty((rois.shape[0], self.tile_px, self.tile_px), np.float32)
        for u in range(self.tile_px):
            for v in range(self.tile_px):
                out[:, u, v] = self._block(rois, LO + self.stride_px * u, LO + self.stride_px * v)
        return out

    def predict_patches(self, patches):
        if self.forbid:
            raise AssertionError("the model was called (candidate views)")
        self.patches_seen += len(patches)
        return self._block(patches, LO, LO).astype(np.float32)


def _run(forbid: bool = False) -> model_run.ModelRun:
    lr = geometry.roi_px(LM, 16)
    return model_run.ModelRun(SkewedOracle(16, lr, forbid), geometry.ScanGeometry(16, lr), name="skewed",
                              digest="skewed")


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("views_slides") / f"{SID}.tif")
    return path, write_slide(path, wh=(2600, 1500))  # room for several maxima 187 um apart


def _scan(path, out, run=None, **options):
    summary = engine.scan_slides(path, [run or _run()], str(out),
                                 scan_settings.ScanSettings(**dict(QUIET, **options)))
    assert summary.ok, summary.text()
    return summary.results[0]


def _side_blocks(image: np.ndarray, row: int, col: int, stride: int) -> dict:
    """The four blocks around the centre of map cell (row, col)'s patch, straight from the image (white outside)."""
    pad = geometry.PATCH_PX
    padded = np.pad(image.astype(np.float64), ((pad, pad), (pad, pad), (0, 0)), constant_values=255)
    top = row * stride - geometry.map_origin_px(16) + pad
    left = col * stride - geometry.map_origin_px(16) + pad

    def block(dr, dc):
        r, c = top + LO + dr, left + LO + dc
        return padded[r : r + BLOCK_PX, c : c + BLOCK_PX].mean() / 255

    return {"above": block(-SIDE, 0), "below": block(SIDE, 0), "left": block(0, -SIDE), "right": block(0, SIDE)}


def _candidates(out) -> np.ndarray:
    return submission.read_detections_csv(outputs.map_paths(str(out), SID)["lesions"])


@pytest.mark.parametrize("n_views, expected", [
    (8, lambda b: np.mean([b["above"], b["below"], b["left"], b["right"]])),  # each side block twice
    (4, lambda b: np.mean([b["above"], b["below"]])),  # the mirrors and the half turn
    (2, lambda b: b["above"]),  # the mirror image keeps the block above the centre
])
def test_a_candidates_confidence_is_the_mean_over_its_patchs_orientations(slide, tmp_path, n_views, expected):
    path, image = slide
    result = _scan(path, tmp_path / "S", candidate_views=n_views)
    stride = int(result.meta["stride_px"])
    prob_map = np.load(outputs.map_paths(str(tmp_path / "S"), SID)["npy"])
    det = _candidates(tmp_path / "S")
    rr, cc, values = lesions.local_maxima(prob_map, stride, mpp=result.meta["mpp"])
    assert len(det) == len(rr) > 3
    # Same cells as the single view's candidates (clipped centres stay in their cell).
    assert sorted(zip(det[:, 2].astype(int) // stride, det[:, 1].astype(int) // stride)) == sorted(zip(rr, cc))
    rescored = 0
    for conf, x, y in det:
        r, c = int(y) // stride, int(x) // stride
        single = float(prob_map[r, c])
        if single >= views.VIEWS_FLOOR:
            assert conf == pytest.approx(expected(_side_blocks(image, r, c, stride)), abs=2e-6)
            rescored += 1
        else:
            assert conf == pytest.approx(single, abs=1e-6)
    assert rescored == len(det)  # the noise's maxima all lie above the floor
    assert list(det[:, 0]) == sorted(det[:, 0], reverse=True)
    sidecar = outputs.read_sidecar(str(tmp_path / "S"), SID)
    assert sidecar["slide_score"] == pytest.approx(det[:, 0].max(), abs=1e-6)
    assert sidecar["candidate_views"]["views"] == n_views


def test_the_orientations_are_a_group_so_a_turned_slide_scores_the_same():
    patch = np.random.default_rng(0).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    for n in (2, 4, 8):
        base = {v.tobytes() for v in views.orientations(patch, n)}
        assert len(base) == n
        for v in views.orientations(patch, n):  # every member's orientations are the same set
            assert {w.tobytes() for w in views.orientations(np.ascontiguousarray(v), n)} == base
    turned = {v.tobytes() for v in views.orientations(np.ascontiguousarray(np.rot90(patch)), 8)}
    assert turned == {v.tobytes() for v in views.orientations(patch, 8)}
    assert views.orientations(patch, 1)[0] is patch
    with pytest.raises(scan_settings.ScanError, match="one of"):
        views.orientations(patch, 3)


def test_views_one_keeps_the_maps_values_and_another_view_count_is_another_map(slide, tmp_path):
    path, _ = slide
    out = tmp_path / "S"
    one = _scan(path, out, candidate_views=1)
    prob_map = np.load(outputs.map_paths(str(out), SID)["npy"])
    det = _candidates(out)
    stride = int(one.meta["stride_px"])
    for conf, x, y in det:
        assert conf == pytest.approx(float(prob_map[int(y) // stride, int(x) // stride]), abs=1e-6)
    assert one.meta["slide_score"] == pytest.approx(float(prob_map.max()), abs=1e-6)
    assert "candidate_views" not in one.meta["fingerprint"] and "candidate_views" not in one.meta

    run = _run()
    eight = _scan(path, out, run=run, candidate_views=8)
    assert eight.status == "done" and eight.stats  # the map was made again, with its views
    assert eight.meta["fingerprint"]["candidate_views"]["views"] == 8
    assert run.detector.patches_seen == 8 * len(det)
    assert not np.array_equal(_candidates(out)[:, 0], det[:, 0])


def test_a_new_threshold_keeps_the_views_without_calling_the_model(slide, tmp_path):
    path, _ = slide
    out = tmp_path / "S"
    _scan(path, out, threshold=0.45)
    before = _candidates(out)
    again = _scan(path, out, run=_run(forbid=True), threshold=0.9)
    assert again.status == "done" and again.message.startswith("lesions and heatmap redone")
    np.testing.assert_array_equal(_candidates(out), before)
