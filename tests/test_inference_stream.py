"""The streaming scan (``inference.stream``): the ROI scan's map, with no row of any layer computed twice.

Each streamed map is compared with the ROI scan of the same slide, model and
plan: the detector's layers run on the same input pixels either way (the
central invariant, DESIGN.md §1), so float32 maps agree within 1e-5 and
bfloat16 maps within ``precision.EQUIVALENCE_TOLERANCE`` (both are 0.0 on
this project's CPU; bfloat16 edge ROIs too, since every ROI side gets its own
static-shape graph, ``xla.static_graphs``).  The slide is a generated cohort slide (real JPEG tiles
and tissue); the detector is the ``tiny`` config with seeded weights and a
classifier spread over (0, 1) on that slide, so a misplaced or mis-stitched
row shows.
"""

from __future__ import annotations

import numpy as np
import pytest

from pfascannet import geometry
from pfascannet.inference import detectors, engine, model_run, scan_settings, stream
from pfascannet.inference.plan import make_plan
from pfascannet.model.config import ModelConfig
from pfascannet.model.detector import build_detector
from pfascannet.model.precision import EQUIVALENCE_TOLERANCE
from pfascannet.slide.reader import SlideReader
from tests.model_support import randomise_weights, spread_classifier

SLIDE = "patient_001_node_0"  # the micro slide: ~4k px, tissue with edges and glass
TILE = 16  # Lm: LR 1172 at alpha 16, 932 at alpha 32; many ROIs, several strips


def _slide(cohort) -> str:
    return str(cohort / "images" / f"{SLIDE}.tif")


@pytest.fixture(scope="module")
def weights(cohort):
    config = ModelConfig.tiny()
    model = build_detector(config, alpha=16)
    randomise_weights(model, 0)
    with SlideReader(_slide(cohort)) as reader:
        w, h = reader.dimensions
        roi = reader.read_region((w // 2 - 650, h // 2 - 650), 0, (1300, 1300))
    spread_classifier(model, config, roi)
    return config, model.get_weights()


def _run(weights, alpha: int, precision: str) -> model_run.ModelRun:
    config, values = weights
    model = build_detector(config, alpha=alpha, precision=precision)
    model.set_weights(values)
    lr = geometry.roi_px(TILE, alpha)
    return model_run.ModelRun(detectors.KerasDetector(model, alpha, lr), geometry.ScanGeometry(alpha, lr),
                              name="tiny", digest="tiny-seed0")


def _scan(path, run, out, **kw) -> tuple[np.ndarray, dict]:
    options = scan_settings.ScanSettings(heatmap=False, progress=False, **kw)
    result = engine.scan_slides(path, [run], str(out), options).results[0]
    assert result.status == "done", result.message
    return np.load(out / "maps" / f"{SLIDE}.npy"), result.meta


@pytest.mark.parametrize(
    "alpha,precision,edge_rois",
    [(16, "float32", True), (32, "float32", False), (16, "bfloat16", True), (32, "bfloat16", False)],
)
def test_streamed_map_equals_the_roi_scan(cohort, weights, tmp_path, alpha, precision, edge_rois):
    run = _run(weights, alpha, precision)
    roi_map, roi_meta = _scan(_slide(cohort), run, tmp_path / "rois", edge_rois=edge_rois)
    streamed, meta = _scan(_slide(cohort), run, tmp_path / "stream", edge_rois=edge_rois,
                           stream=True, stream_rows=4, stream_width=3 * TILE)
    planned = roi_map > 0
    assert planned.sum() > 500 and roi_map[planned].std() > 0.05  # a map that shows misplaced rows
    assert ((streamed > 0) == planned).all()  # the same pixels planned, the rest 0
    tolerance = 1e-5 if precision == "float32" else EQUIVALENCE_TOLERANCE[precision]
    assert np.abs(streamed - roi_map).max() <= tolerance
    assert meta["fingerprint"]["stream"] == {"rows": 4, "width": 3 * TILE}
    assert "stream" not in roi_meta["fingerprint"]
    # Less computed than the ROIs' overlapping borders.
    assert meta["timing"][0]["input_px"] < roi_meta["timing"][0]["input_px"]


def test_streamed_scan_resumes_to_the_same_map(cohort, weights, tmp_path):
    run = _run(weights, 16, "float32")
    kw = dict(stream=True, stream_rows=4, stream_width=3 * TILE, checkpoint_every_s=0.0)
    whole, _ = _scan(_slide(cohort), run, tmp_path / "whole", **kw)

    calls = []

    def stop(done):
        calls.append(done)
        if len(calls) == 7:  # part way down a strip: the halos are in the checkpoint
            raise KeyboardInterrupt

    options = scan_settings.ScanSettings(heatmap=False, progress=False, **kw)
    with pytest.raises(KeyboardInterrupt):
        engine.scan_slides(_slide(cohort), [run], str(tmp_path / "killed"), options, on_batch=stop)
    with np.load(tmp_path / "killed" / "partial" / f"{SLIDE}.m0.npz") as ckpt:
        assert int(ckpt["position"][1]) > 0 and any(k.startswith("s_op") for k in ckpt.files)
    result = engine.scan_slides(_slide(cohort), [run], str(tmp_path / "killed"), options).results[0]
    assert result.status == "done" and result.stats[0].n_resumed == calls[-1]
    resumed = np.load(tmp_path / "killed" / "maps" / f"{SLIDE}.npy")
    assert np.array_equal(resumed, whole)


def test_strips_cover_every_planned_pixel_once():
    grid = geometry.ScanGeometry(16, geometry.roi_px(8, 16))
    dims = (32 * 90, 32 * 60)
    tissue = np.zeros((60, 90), bool)
    tissue[2:30, 3:70] = True
    tissue[45:47, 80:82] = True  # a speck far below: its own run
    plan = make_plan(dims, grid, tissue, 32, split=2)
    runs = stream.plan_strips(plan, width_px=24)
    count = np.zeros(plan.map_shape, int)
    for w in runs:
        count[w.u0:w.u1, w.v0:w.v1] += 1
        assert w.v1 - w.v0 <= 24
    assert count.max() == 1
    need = plan.planned_mask()
    assert (count[need] == 1).all()
    owners = sorted(k for w in runs for k in w.rois)
    assert owners == list(range(len(plan)))
    streamed = sum(w.input_px(grid.alpha, 4) for w in runs)
    assert streamed < plan.input_px()
    bounds = stream.chunk_bounds(10, 16, 4)
    assert bounds == [0, 128, 256, 384, 512, 640, 768, 896, 1024, 660 + 384]  # 12 rows computed for 10


def test_stream_refuses_what_it_cannot_run(cohort, weights, tmp_path):
    run = _run(weights, 16, "float32")
    patch = model_run.ModelRun(run.detector, run.grid, mode="patch", name="tiny", digest="tiny")

    class NoLayers:
        alpha, roi_px, tile_px, stride_px, digest = 16, run.grid.roi_px, TILE, 32, "x"

        def predict(self, rois):
            return np.zeros((len(rois), TILE, TILE), np.float32)

    bare = model_run.ModelRun(NoLayers(), run.grid, name="saved", digest="saved")
    options = scan_settings.ScanSettings(heatmap=False, progress=False, stream=True)
    for r, words in ((patch, "patch by patch"), (bare, "SavedModel")):
        result = engine.scan_slides(_slide(cohort), [r], str(tmp_path / r.name), options).results[0]
        assert result.status == "failed" and words in result.message
    with pytest.raises(scan_settings.ScanError, match="stream_rows"):
        scan_settings.ScanSettings(stream_rows=0)
