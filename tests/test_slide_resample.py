"""The resolution contract (``slide.resample``): every slide read at the model's pixel size.

A 20x copy of a slide (every level halved, mpp doubled) must scan to the same
map as the original on the same level-0 cells of its own; reads must agree
wherever they overlap (ROIs, edge ROIs, patches); the dense map must still
equal the patch classifier's on the resampled grid.
"""

from __future__ import annotations

import json
import os
from fractions import Fraction

import numpy as np
import pytest

from pfascannet import geometry
from pfascannet.inference import engine, model_run, scan_settings
from pfascannet.slide.reader import SlideReader
from pfascannet.slide.resample import ReadPlan, ResampleError, plan_read
from pfascannet.synthetic.rescale import rescale_slide
from tests.scan_support import LM, OracleDetector, direct_map, write_slide

LEVELS3 = (1.0, 2.0, 4.0)


def test_plan_read_picks_the_level_just_finer_and_the_filter():
    up = plan_read(0.486, 0.243, LEVELS3)  # a 20x slide for a 40x model: no finer level, upsample
    assert (up.level, up.scale, up.filter) == (0, Fraction(1, 2), "bicubic")
    assert up.stride_px(32) == 16 and up.realised_mpp == pytest.approx(0.243)
    down = plan_read(0.243, 0.486, LEVELS3)  # a 40x slide for a 20x model: level 1 pixel for pixel
    assert (down.level, down.scale, down.native) == (1, 2, True)
    utrecht = plan_read(0.226, 0.243, LEVELS3)  # CAMELYON16's Utrecht scanner
    assert (utrecht.level, utrecht.scale, utrecht.filter) == (0, Fraction(17, 16), "gaussian+bilinear")
    assert utrecht.stride_px(32) == 34 and abs(utrecht.realised_mpp / 0.243 - 1) < 1 / 64
    same = plan_read(0.2431, 0.243, LEVELS3)  # within half a map step: native, as before
    assert same.native and same.level == 0 and same.stride_px(32) == 32
    assert plan_read(None, 0.243, LEVELS3).native and plan_read(0.5, None, LEVELS3).native
    # A level OpenSlide does not map exactly is never read.
    assert plan_read(0.243, 0.486, LEVELS3, (1.0, 2.0004, 4.0)).level == 0
    with pytest.raises(ResampleError, match="multiples"):
        plan_read(0.3, 0.243, LEVELS3, map_strides_px=(32, 48))


class ArrayReader:
    """An in-memory level 0 with OpenSlide's read_region contract (white off the slide)."""

    def __init__(self, image):
        self.image = image

    def read_region(self, xy, level, size):
        assert level == 0
        (x, y), (w, h) = xy, size
        out = np.full((h, w, 3), 255, np.uint8)
        H, W = self.image.shape[:2]
        xa, ya, xb, yb = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
        if xb > xa and yb > ya:
            out[ya - y : yb - y, xa - x : xb - x] = self.image[ya:yb, xa:xb]
        return out


@pytest.mark.parametrize("scale", [Fraction(1, 2), Fraction(17, 16), Fraction(31, 32), Fraction(3, 2)])
def test_reads_agree_wherever_they_overlap(scale):
    image = np.random.default_rng(1).integers(0, 256, (900, 900, 3), dtype=np.uint8)
    reader, plan = ArrayReader(image), ReadPlan(0, 1, scale, 0.3, 0.3 * float(scale))
    roi = plan.read(reader, (-40, -30), 500)
    # An edge ROI or a patch inside it, read on its own, is bit for bit the same pixels.
    np.testing.assert_array_equal(plan.read(reader, (-40 + 123, -30 + 77), (200, 150)), roi[77:227, 123:323])
    # The sampler's level-0 read of the same field of view (origin a whole level-0 pixel) too.
    u0 = 32
    x0 = u0 * scale
    if x0.denominator == 1:
        np.testing.assert_array_equal(plan.read_level0(reader, (int(x0), int(x0)), 100), plan.read(reader, (u0, u0), 100))


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    """A 1000 x 700 slide at 0.243 um/px, its half-resolution copy (0.486) and a 0.226 um/px copy."""
    d = tmp_path_factory.mktemp("resample")
    original = str(d / "patient_000_node_0.tif")
    image = write_slide(original)
    half = str(d / "half" / "patient_000_node_0.tif")
    fine = str(d / "fine" / "patient_000_node_0.tif")
    os.makedirs(os.path.dirname(half))
    os.makedirs(os.path.dirname(fine))
    rescale_slide(original, half, 0.486, workers=1)
    rescale_slide(original, fine, 0.226, workers=1)
    return {"image": image, "original": original, "half": half, "fine": fine}


def _oracle(alpha=16, lm=LM, mode="dense", training_mpp=0.243):
    lr = geometry.roi_px(lm, alpha)
    det = OracleDetector(alpha, lr) if mode == "dense" else OracleDetector(1, geometry.PATCH_PX)
    det.training_mpp = training_mpp
    return model_run.ModelRun(det, geometry.ScanGeometry(alpha, lr), mode=mode, name=f"oracle-{mode}")


QUIET = dict(progress=False, heatmap=False, tissue="all", checkpoint_every_s=0.0, workers=2, batch=3)


def _scan(path, out, run, **kw):
    summary = engine.scan_slides(path, [run], str(out), scan_settings.ScanSettings(**dict(QUIET, **kw)))
    assert summary.ok, summary.text()
    with open(os.path.join(out, "maps", "patient_000_node_0.json"), encoding="utf-8") as f:
        meta = json.load(f)
    return np.load(os.path.join(out, "maps", "patient_000_node_0.npy")), meta


def test_half_resolution_copy_scans_to_the_originals_map(slides, tmp_path):
    with SlideReader(slides["half"]) as r:
        assert r.mpp == pytest.approx(0.486) and r.dimensions == (500, 350)
    prob, meta = _scan(slides["half"], tmp_path / "half", _oracle())
    # The same 32 x 32 cells of tissue as the original's map, on the copy's own level-0 pixels.
    expected = direct_map(slides["image"], 32)
    assert prob.shape == expected.shape == (22, 32)
    assert meta["stride_px"] == 16 and meta["read"]["scale"] == "1/2" and meta["read"]["filter"] == "bicubic"
    assert meta["fingerprint"]["read"] == meta["read"] and not meta["warnings"]
    # A 2x2 mean then bicubic up: cell means of noise agree to a few percent, far closer than any other cell.
    err = np.abs(prob - expected)
    assert err.mean() < 0.01 and err.max() < 0.05
    assert np.abs(prob - np.roll(expected, 1, axis=1)).mean() > 5 * err.mean()
    # Read pixel for pixel (--scan_level 0, the behaviour before): half the cells, and a warning.
    native, meta_native = _scan(slides["half"], tmp_path / "native", _oracle(), scan_level=0)
    assert native.shape == (11, 16) and any("cells appear" in w for w in meta_native["warnings"])


def test_utrecht_pixel_size_copy(slides, tmp_path):
    prob, meta = _scan(slides["fine"], tmp_path / "fine", _oracle())
    with SlideReader(slides["fine"]) as r:
        w, h = r.dimensions
    assert meta["stride_px"] == 34 and prob.shape == (-(-h // 34), -(-w // 34))
    expected = direct_map(slides["image"], 32)
    # Cell (r, c) covers the copy's [34c, 34c + 34): on the original, [31.6c, 31.6c + 31.6) -- the cell
    # means drift by under a pixel a cell from the original's 32-px grid, so compare the top-left corner.
    err = np.abs(prob[:8, :8] - expected[:8, :8])
    assert err.mean() < 0.03


@pytest.mark.parametrize("copy", ["half", "fine"])
def test_dense_equals_patch_classifier_on_the_resampled_grid(slides, copy, tmp_path):
    dense, _ = _scan(slides[copy], tmp_path / "dense", _oracle())
    patch, meta = _scan(slides[copy], tmp_path / "patch", _oracle(mode="patch"), patch_batch=7)
    assert meta["read"]["ratio"] != 1.0
    np.testing.assert_allclose(dense, patch, rtol=0, atol=1e-6)


def test_edge_rois_equal_whole_rois_on_the_resampled_grid(slides, tmp_path):
    class Servable(OracleDetector):
        def at_roi_px(self, side):
            d = Servable(self.alpha, side)
            d.training_mpp = self.training_mpp
            return d

    lr = geometry.roi_px(LM, 16)
    det = Servable(16, lr)
    det.training_mpp = 0.243
    run = model_run.ModelRun(det, geometry.ScanGeometry(16, lr), name="oracle")

    def tissue(reader):  # scattered tissue cells, so many ROIs hold tissue in one or two quarters only
        w, h = reader.dimensions
        r, c = np.mgrid[: -(-h // 32), : -(-w // 32)]
        return (r * 7 + c * 3) % 5 == 0

    whole, _ = _scan(slides["half"], tmp_path / "whole", run, edge_rois=False, tissue=tissue)
    edges, meta = _scan(slides["half"], tmp_path / "edges", run, edge_rois=True, tissue=tissue)
    assert any(m.get("n_edge_rois") for m in meta["members"])
    planned = edges != 0
    np.testing.assert_array_equal(edges[planned], whole[planned])
