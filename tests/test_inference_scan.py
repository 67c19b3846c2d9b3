"""The streaming scanner against an oracle of the detector's geometry (§2.2, eq. (1)).

The oracle's output pixel (u, v) of an ROI is the mean intensity of the
centre 32x32 block of the 692 patch at offset (stride*u, stride*v): exactly the
invariant the real FCN obeys (DESIGN.md §1).  At alpha 16 that block is the
map cell itself, so the stitched map must equal the slide's 32x32 block means
(white outside the slide) at every pixel, edges and ROI borders included.
"""

from __future__ import annotations

import csv
import json
import logging
import os

import numpy as np
import pytest

from pfascannet import geometry
from pfascannet.inference import engine, ensemble, lesions, model_run, scan_settings, slide_list
from pfascannet.inference.plan import make_plan
from pfascannet.slide.reader import SlideReader
from tests.scan_support import LM, SLIDE_WH, OracleDetector, direct_map, write_slide


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("slides") / "patient_000_node_0.tif")
    write_slide(path)
    return path


def _run(alpha: int = 16, lm: int = LM) -> model_run.ModelRun:
    lr = geometry.roi_px(lm, alpha)
    return model_run.ModelRun(OracleDetector(alpha, lr), geometry.ScanGeometry(alpha, lr), name="oracle")


QUIET = dict(progress=False, heatmap=False, tissue="all", checkpoint_every_s=0.0, workers=2, batch=3)


def test_oracle_map_equals_direct_function_everywhere(slide_path):
    run = _run()
    with SlideReader(slide_path) as reader:
        image = reader.read_region((0, 0), 0, reader.dimensions)
        plan = make_plan(reader.dimensions, run.grid)
    prob_map, stats = engine.scan_map(slide_path, run, plan, scan_settings.ScanSettings(**QUIET))
    expected = direct_map(image, 32)
    assert prob_map.shape == expected.shape == (22, 32)
    # ROI borders every LM pixels and the slide's right/bottom edges are all in here.
    np.testing.assert_allclose(prob_map, expected, rtol=0, atol=1e-6)
    assert stats.n_rois == len(plan) == 6 * 8
    assert run.detector.rois_seen == len(plan)


def test_oracle_at_scan_level_1(slide_path):
    run = _run()
    with SlideReader(slide_path) as reader:
        image1 = reader.read_level(1)
        plan = make_plan(reader.dimensions, run.grid, scan_level=1, downsample=2)
    prob_map, _ = engine.scan_map(slide_path, run, plan, scan_settings.ScanSettings(**dict(QUIET, scan_level=1)))
    assert plan.stride_px == 64
    np.testing.assert_allclose(prob_map, direct_map(image1, 32), rtol=0, atol=1e-6)


def test_tissue_only_rois_are_scanned(slide_path):
    run = _run()
    with SlideReader(slide_path) as reader:
        image = reader.read_region((0, 0), 0, reader.dimensions)
        dims = reader.dimensions
    # Tissue only in the bottom-right corner cell of the 32-px mask.
    tissue = np.zeros((-(-dims[1] // 32), -(-dims[0] // 32)), bool)
    tissue[-1, -1] = True
    plan = make_plan(dims, run.grid, tissue, 32)
    assert len(plan) == 1
    prob_map, _ = engine.scan_map(slide_path, run, plan, scan_settings.ScanSettings(**QUIET))
    expected = direct_map(image, 32)
    r0, r1, c0, c1 = plan.roi_window(0)
    np.testing.assert_allclose(prob_map[r0:r1, c0:c1], expected[r0:r1, c0:c1], atol=1e-6)
    outside = np.ones_like(prob_map, bool)
    outside[r0:r1, c0:c1] = False
    assert not prob_map[outside].any()


def test_patch_mode_matches_dense(slide_path):
    dense = _run()
    grid = dense.grid
    patch = model_run.ModelRun(OracleDetector(1, geometry.PATCH_PX), grid, mode="patch", name="oracle-patch")
    with SlideReader(slide_path) as reader:
        plan = make_plan(reader.dimensions, grid)
    a, _ = engine.scan_map(slide_path, dense, plan, scan_settings.ScanSettings(**QUIET))
    b, _ = engine.scan_map(slide_path, patch, plan, scan_settings.ScanSettings(**dict(QUIET, patch_batch=5)))
    np.testing.assert_allclose(a, b, atol=1e-6)
    # one 692 patch per map pixel, through the detector's patch classifier
    assert patch.detector.patches_seen == len(plan) * LM * LM and patch.detector.rois_seen == 0


def test_killed_scan_resumes_to_the_same_map(slide_path, tmp_path):
    options = scan_settings.ScanSettings(**QUIET)
    full = engine.scan_slides(slide_path, [_run()], str(tmp_path / "full"), options)
    assert full.ok

    class Killed(Exception):
        pass

    out = str(tmp_path / "resumed")
    partial = os.path.join(out, "partial", "patient_000_node_0.m0.npz")

    def kill_after(n_done):
        # With checkpoint_every_s=0 the checkpoint on disk is already up to
        # date here, so a SIGKILL at this point would lose nothing.
        with np.load(partial) as ckpt:
            assert int(ckpt["done"].sum()) == n_done
        if n_done >= 12:
            raise Killed

    summary = engine.scan_slides(slide_path, [_run()], out, options, on_batch=kill_after)
    assert [r.status for r in summary.results] == ["failed"]
    assert not summary.ok
    assert os.path.exists(os.path.join(out, "partial", "patient_000_node_0.m0.npz"))
    assert not os.path.exists(os.path.join(out, "maps", "patient_000_node_0.npy"))

    second = _run()
    summary = engine.scan_slides(slide_path, [second], out, options)
    assert summary.ok and summary.results[0].stats[0].n_resumed == 12
    assert second.detector.rois_seen == 48 - 12  # only the rest was computed
    a = np.load(os.path.join(tmp_path / "full", "maps", "patient_000_node_0.npy"))
    b = np.load(os.path.join(out, "maps", "patient_000_node_0.npy"))
    assert np.array_equal(a, b)
    assert not os.path.exists(os.path.join(out, "partial", "patient_000_node_0.m0.npz"))

    # A third run finds the slide done and computes nothing.
    third = _run()
    summary = engine.scan_slides(slide_path, [third], out, options)
    assert summary.results[0].status == "skipped" and third.detector.rois_seen == 0


def test_bad_slide_fails_clearly_and_others_go_on(slide_path, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="pfascannet")
    folder = tmp_path / "slides"
    folder.mkdir()
    os.symlink(slide_path, folder / "patient_000_node_0.tif")
    (folder / "patient_000_node_1.tif").write_bytes(b"II*\x00 this is not a tiff at all" * 10)
    (folder / "patient_000_node_2.tif").write_bytes(b"")
    out = str(tmp_path / "out")
    summary = engine.scan_slides(str(folder), [_run()], out, scan_settings.ScanSettings(**dict(QUIET, tissue="otsu")))
    status = {r.slide: r.status for r in summary.results}
    assert status == {"patient_000_node_0": "done", "patient_000_node_1": "failed", "patient_000_node_2": "failed"}
    assert not summary.ok
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2 and errors[0].startswith("error: patient_000_node_1:") and "patient_000_node_1.tif" in errors[0]
    err = caplog.text
    assert "empty file" in err and "2 failed" in err
    with open(os.path.join(out, "slide_scores.csv")) as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["name", "probability"] and [r[0] for r in rows[1:]] == ["patient_000_node_0"]


def test_outputs_layout_and_formats(slide_path, tmp_path):
    out = str(tmp_path / "scan")
    options = scan_settings.ScanSettings(**dict(QUIET, heatmap=True, threshold=0.52))
    summary = engine.scan_slides(slide_path, [_run()], out, options)
    assert summary.ok
    sid = "patient_000_node_0"
    prob_map = np.load(os.path.join(out, "maps", f"{sid}.npy"))
    assert prob_map.dtype == np.float32
    with open(os.path.join(out, "maps", f"{sid}.json")) as f:
        meta = json.load(f)
    assert meta["stride_px"] == 32 and meta["alpha"] == 16 and meta["dimensions"] == list(SLIDE_WH)
    assert abs(meta["mpp"] - 0.243) < 1e-6 and meta["slide_score"] == pytest.approx(float(prob_map.max()))
    # Lesion CSV: confidence,X,Y at cell centres, no header; every local maximum of the map down
    # to the candidate floor, not the contours' 0.52 threshold (ARCHITECTURE.md).
    with open(os.path.join(out, "lesions", f"{sid}.csv")) as f:
        rows = [line.strip().split(",") for line in f if line.strip()]
    assert rows, "noise around 0.5 must give candidates"
    assert len(rows) == len(lesions.lesion_candidates(prob_map, 32, dimensions_xy=SLIDE_WH))
    for conf, x, y in rows:
        r, c = int(y) // 32, int(x) // 32
        assert float(conf) >= lesions.CANDIDATE_FLOOR and 0 <= int(x) < SLIDE_WH[0] and 0 <= int(y) < SLIDE_WH[1]
        assert prob_map[r, c] == pytest.approx(float(conf), abs=1e-6)
        assert prob_map[r, c] == prob_map[max(r - 1, 0):r + 2, max(c - 1, 0):c + 2].max()
    with open(os.path.join(out, "contours", f"{sid}.geojson")) as f:
        gj = json.load(f)
    assert gj["type"] == "FeatureCollection" and gj["features"]
    ring = gj["features"][0]["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1] and gj["features"][0]["properties"]["objectType"] == "annotation"
    from pfascannet.slide.annotations import read_asap_xml

    assert len(read_asap_xml(os.path.join(out, "contours", f"{sid}.xml"))) >= len(gj["features"])
    with SlideReader(os.path.join(out, "maps", f"{sid}_map.tif")) as tif:
        assert tif.dimensions == (prob_map.shape[1], prob_map.shape[0])
        grey = tif.read_level(0)[..., 0]
    np.testing.assert_array_equal(grey, np.rint(prob_map * 255).astype(np.uint8))
    assert os.path.getsize(os.path.join(out, "heatmaps", f"{sid}.png")) > 1000
    with open(os.path.join(out, "slide_scores.csv")) as f:
        assert f.read().splitlines()[1].startswith(f"{sid},")


def test_ensemble_of_alpha_16_and_32_on_the_32px_grid(slide_path, tmp_path):
    runs = [_run(16, 4), _run(32, 8)]
    out = str(tmp_path / "ens")
    assert engine.scan_slides(slide_path, runs, out, scan_settings.ScanSettings(**QUIET)).ok
    prob_map = np.load(os.path.join(out, "maps", "patient_000_node_0.npy"))
    with SlideReader(slide_path) as reader:
        image = reader.read_region((0, 0), 0, reader.dimensions)
    # alpha 32: 16-px cells of 32x32 blocks centred on them, pooled 2x2 onto the 32-px grid.
    h, w = image.shape[:2]
    padded = np.full((h + 64, w + 64, 3), 255, np.float64)
    padded[8 : 8 + h, 8 : 8 + w] = image  # block of 16-px cell c starts at 16c - 8
    fine = np.array(
        [
            [padded[16 * r : 16 * r + 32, 16 * c : 16 * c + 32].mean() / 255 for c in range(-(-w // 16))]
            for r in range(-(-h // 16))
        ]
    )
    pooled = ensemble.pool_to_stride(fine, 2, (22, 32))
    expected = (direct_map(image, 32) + pooled) / 2
    np.testing.assert_allclose(prob_map, expected, atol=1e-5)

    # Killed in the second member: the rerun redoes neither the first member nor the done batches.
    calls = []

    def kill(n_done):
        calls.append(n_done)
        if len(calls) == 16 + 2:  # member 0 has 48 ROIs = 16 batches of 3
            raise KeyboardInterrupt

    out2 = str(tmp_path / "ens_killed")
    with pytest.raises(KeyboardInterrupt):
        engine.scan_slides(slide_path, [_run(16, 4), _run(32, 8)], out2, scan_settings.ScanSettings(**QUIET), on_batch=kill)
    again = [_run(16, 4), _run(32, 8)]
    summary = engine.scan_slides(slide_path, again, out2, scan_settings.ScanSettings(**QUIET))
    assert summary.ok and [r.detector.rois_seen for r in again] == [0, 48 - 6]
    assert np.array_equal(np.load(os.path.join(out2, "maps", "patient_000_node_0.npy")), prob_map)


def test_list_and_shard(tmp_path):
    names = [f"patient_{k:03d}_node_{k % 5}.tif" for k in range(11)]
    listing = tmp_path / "slides.txt"
    listing.write_text("# a comment\n" + "\n".join(names) + "\n" + names[0] + "\n")
    paths = slide_list.list_slides(str(listing))
    assert len(paths) == 11 and paths == sorted(paths)
    shards = [slide_list.shard_slides(paths, (i, 3)) for i in range(3)]
    flat = [p for s in shards for p in s]
    assert sorted(flat) == paths and len(set(flat)) == len(flat)
    assert [len(s) for s in shards] == [4, 4, 3]
    assert slide_list.parse_shard("2/3") == (2, 3)
    for bad in ("3/3", "x", "1/0", "-1/2"):
        with pytest.raises(scan_settings.ScanError):
            slide_list.parse_shard(bad)
    dup = tmp_path / "dup.txt"
    dup.write_text("a/x.tif\nb/x.tif\n")
    with pytest.raises(scan_settings.ScanError, match="share the id"):
        slide_list.list_slides(str(dup))


def test_level_whose_openslide_downsample_is_not_whole_is_refused(tmp_path, caplog):
    path = str(tmp_path / "odd.tif")
    write_slide(path, wh=(1001, 701))
    options = scan_settings.ScanSettings(**dict(QUIET, scan_level=1))
    summary = engine.scan_slides(path, [_run()], str(tmp_path / "out"), options)
    assert not summary.ok
    assert "scan at level 0" in summary.results[0].message
    assert any("scan at level 0" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    assert engine.scan_slides(path, [_run()], str(tmp_path / "out0"), scan_settings.ScanSettings(**QUIET)).ok


@pytest.mark.slow  # a full scan of an 11k x 5.5k synthetic slide; 13 s under load
def test_cohort_slide_at_paper_geometry(cohort, tmp_path):
    """A Camelyon-like JPEG slide, Otsu tissue, 2708 ROIs: exact where scanned, and no tumour left unscanned."""
    from pfascannet.slide.annotations import read_mask_level

    sid = "patient_000_node_1"  # the macro slide, about 11k x 5.5k
    path = str(cohort / "images" / f"{sid}.tif")
    run = model_run.ModelRun(OracleDetector(16, 2708), geometry.ScanGeometry(), name="oracle")
    summary = engine.scan_slides(path, [run], str(tmp_path), scan_settings.ScanSettings(**dict(QUIET, tissue="otsu")))
    assert summary.ok
    prob_map = np.load(tmp_path / "maps" / f"{sid}.npy")
    members = json.loads((tmp_path / "maps" / f"{sid}.json").read_text())["members"][0]
    assert members["roi_px"] == 2708 and members["tile_px"] == 64
    assert 0 < members["n_rois"] <= members["n_rois_grid"]
    scanned = prob_map > 0  # the oracle is > 0 wherever it ran (white glass gives 1.0)
    tumour = read_mask_level(cohort / "masks" / f"{sid}_mask.tif", 32) > 0
    assert tumour.any() and tumour.shape == prob_map.shape
    assert scanned[tumour].all()
    rng = np.random.default_rng(0)
    rows, cols = np.nonzero(scanned)
    with SlideReader(path) as reader:
        for k in rng.choice(len(rows), 40, replace=False):
            r, c = int(rows[k]), int(cols[k])
            cell = reader.read_region((32 * c, 32 * r), 0, (32, 32))
            assert prob_map[r, c] == pytest.approx(cell.astype(np.float64).mean() / 255.0, abs=1e-6)


def test_heatmap_tints_tissue_only(slide_path, tmp_path, monkeypatch):
    from pfascannet.inference import outputs
    from pfascannet.inference.plan import tissue_on_map

    with SlideReader(slide_path) as reader:
        dims = reader.dimensions
    # Tissue in a 3 x 5 block of 32-px cells: the ROIs over it hold glass too.
    tissue = np.zeros((-(-dims[1] // 32), -(-dims[0] // 32)), bool)
    tissue[5:8, 10:15] = True
    seen = {}

    def capture(path, thumbnail, prob_map, scanned=None, title="", opacity=0.55):
        seen["scanned"] = scanned

    monkeypatch.setattr(outputs, "write_heatmap_png", capture)
    options = scan_settings.ScanSettings(**dict(QUIET, heatmap=True, tissue=lambda reader: tissue))
    result = engine.scan_slide(slide_path, [_run()], str(tmp_path / "S"), options)
    assert result.status == "done"
    on_map = tissue_on_map(tissue, 32, dims, 32)
    roi_cover = make_plan(dims, _run().grid, tissue, 32)
    # Tinted: exactly the tissue; the glass of the scanned ROIs stays untinted.
    np.testing.assert_array_equal(seen["scanned"], on_map)
    assert len(roi_cover) * LM * LM > on_map.sum() == 15
