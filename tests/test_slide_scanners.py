"""Slides from scanners other than ours: an Aperio-style SVS and a generic TIFF at 0.25 and 0.5 um/px.

Written with tifffile the way other tools write them (not with the project's
own writer), opened by OpenSlide as ``aperio`` (the pixel size in the
ImageDescription's ``MPP =`` field) or ``generic-tiff`` (resolution tags),
then scanned at the model's 0.243 um/px: the read plan, the map grid and the
lesion points in each slide's own level-0 pixels.  A slide smaller than one
692 patch, and one whose tissue runs off its edges, scan without a traceback.
"""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import tifffile

from pfascannet import geometry
from pfascannet.data import sampling
from pfascannet.inference import engine, model_run, scan_settings
from pfascannet.slide.reader import SlideReader
from tests.scan_support import LM, OracleDetector


def _tissue_image(w, h, seed=0):
    """Pink tissue with darker nuclei-like spots over the whole frame (it runs off every edge)."""
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.uint8)
    img[...] = (226, 160, 200)
    ys, xs = rng.integers(0, h, 400), rng.integers(0, w, 400)
    for y, x in zip(ys, xs):
        img[max(0, y - 3): y + 3, max(0, x - 3): x + 3] = (90, 40, 130)
    return img


def write_aperio(path, img, mpp):
    h, w = img.shape[:2]
    desc = (f"Aperio Image Library v12.0.5\n{w}x{h} [0,0 {w}x{h}] (256x256) JPEG/RGB Q=90|AppMag = "
            f"{20 if mpp > 0.4 else 40}|MPP = {mpp:.4f}|ScanScope ID = SS0001")
    with tifffile.TiffWriter(path) as tw:
        tw.write(img, tile=(256, 256), photometric="rgb", compression="jpeg", description=desc, metadata=None)
        half = np.ascontiguousarray(img[::2, ::2])
        tw.write(half, tile=(256, 256), photometric="rgb", compression="jpeg",
                 description=f"Aperio Image Library v12.0.5\n{w}x{h} -> {half.shape[1]}x{half.shape[0]}", metadata=None)


def write_generic(path, img, mpp, levels=2):
    with tifffile.TiffWriter(path) as tw:
        for k in range(levels):
            level = np.ascontiguousarray(img[:: 2**k, :: 2**k])
            px_per_cm = 1e4 / (mpp * 2**k)
            tw.write(level, tile=(256, 256) if min(level.shape[:2]) >= 256 else (16, 16), photometric="rgb",
                     compression="zlib", resolution=(px_per_cm, px_per_cm), resolutionunit="CENTIMETER",
                     subfiletype=1 if k else 0)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("scanners")
    img = _tissue_image(900, 640)
    write_aperio(str(d / "aperio_025.svs"), img, 0.25)
    write_aperio(str(d / "aperio_050.svs"), img, 0.4990)
    write_generic(str(d / "generic_025.tif"), img, 0.25)
    write_generic(str(d / "generic_050.tif"), img, 0.5)
    write_generic(str(d / "tiny_0243.tif"), _tissue_image(300, 200, seed=1), 0.243, levels=1)
    return d


def _oracle():
    lr = geometry.roi_px(LM, 16)
    det = OracleDetector(16, lr)
    det.training_mpp = 0.243
    return model_run.ModelRun(det, geometry.ScanGeometry(16, lr), name="oracle")


@pytest.mark.parametrize("name, vendor, mpp, stride, filt", [
    ("aperio_025.svs", "aperio", 0.25, 31, "bicubic"),
    ("aperio_050.svs", "aperio", 0.499, 16, "bicubic"),
    ("generic_025.tif", "generic-tiff", 0.25, 31, "bicubic"),
    ("generic_050.tif", "generic-tiff", 0.5, 16, "bicubic"),
    ("tiny_0243.tif", "generic-tiff", 0.243, 32, "none"),
])
def test_scanned_at_the_models_pixel_size(folder, tmp_path, name, vendor, mpp, stride, filt):
    path = str(folder / name)
    with SlideReader(path) as r:
        assert r.properties["openslide.vendor"] == vendor
        assert r.mpp == pytest.approx(mpp, rel=1e-3)
        w, h = r.dimensions
    # The tiny slide (73 x 49 um) is smaller than the tissue detector's smallest object (100 um square):
    # scanned whole with --tissue=all (off-slide parts read as white glass), see the test below for Otsu.
    tissue = "all" if name.startswith("tiny") else "otsu"
    options = scan_settings.ScanSettings(progress=False, heatmap=False, checkpoint_every_s=0.0, tissue=tissue)
    summary = engine.scan_slides(path, [_oracle()], str(tmp_path), options)
    assert summary.ok, summary.text()
    sid = os.path.splitext(name)[0]
    with open(tmp_path / "maps" / f"{sid}.json", encoding="utf-8") as f:
        meta = json.load(f)
    prob = np.load(tmp_path / "maps" / f"{sid}.npy")
    assert meta["stride_px"] == stride and meta["read"]["filter"] == filt
    assert abs(meta["read"]["realised_mpp"] / 0.243 - 1) < 0.035
    assert prob.shape == (-(-h // stride), -(-w // stride)) and prob.max() > 0
    # Lesion points (every local maximum) in the slide's own level-0 pixels.
    with open(tmp_path / "lesions" / f"{sid}.csv", newline="", encoding="utf-8") as f:
        points = [(float(p), int(x), int(y)) for p, x, y in csv.reader(f)]
    assert points and all(0 <= x < w and 0 <= y < h for _, x, y in points)


def test_a_slide_smaller_than_the_tissue_detector_sees_says_so_in_one_line(folder, tmp_path):
    options = scan_settings.ScanSettings(progress=False, heatmap=False)
    summary = engine.scan_slides(str(folder / "tiny_0243.tif"), [_oracle()], str(tmp_path), options)
    assert summary.ok and summary.results[0].status == "done"
    (warning,) = summary.results[0].warnings
    assert "no tissue found" in warning and "--tissue=all" in warning
    assert np.load(tmp_path / "maps" / "tiny_0243.npy").max() == 0


def test_a_slide_smaller_than_a_patch_trains(folder):
    entry = sampling.SlideEntry("tiny_0243", str(folder / "tiny_0243.tif"))
    truth = sampling.PatchSampler([entry]).truth("tiny_0243")
    x, y = truth.top_left((150, 100))  # the patch runs off all four edges
    assert (x, y) == (150 - geometry.PATCH_CENTRE_PX, 100 - geometry.PATCH_CENTRE_PX)
    with SlideReader(entry.image_path) as reader:
        patch = truth.read_patch(reader, (x, y))
    assert patch.shape == (692, 692, 3)
    assert (patch[:50, :50] == 255).all()  # glass beyond the slide
    assert (patch[346, 346] != 255).any()  # tissue at the centre
